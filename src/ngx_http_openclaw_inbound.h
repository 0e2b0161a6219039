
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#ifndef _NGX_HTTP_OPENCLAW_INBOUND_H_INCLUDED_
#define _NGX_HTTP_OPENCLAW_INBOUND_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


/* the content handler of openclaw_bridge locations */
ngx_int_t ngx_http_openclaw_inbound_handler(ngx_http_request_t *r);


#endif /* _NGX_HTTP_OPENCLAW_INBOUND_H_INCLUDED_ */
