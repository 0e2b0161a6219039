
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#ifndef _NGX_HTTP_OPENCLAW_VARIABLES_H_INCLUDED_
#define _NGX_HTTP_OPENCLAW_VARIABLES_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


/* $openclaw_session, $openclaw_close_code and the others, for the log */
ngx_int_t ngx_http_openclaw_variables_add(ngx_conf_t *cf);


#endif /* _NGX_HTTP_OPENCLAW_VARIABLES_H_INCLUDED_ */
