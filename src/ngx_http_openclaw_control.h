
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#ifndef _NGX_HTTP_OPENCLAW_CONTROL_H_INCLUDED_
#define _NGX_HTTP_OPENCLAW_CONTROL_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_openclaw_relay.h"


/* session.list, session.get, session.reset and session.delete */
ngx_int_t ngx_http_openclaw_control(ngx_http_openclaw_endpoint_t *ep,
    ngx_http_openclaw_inbound_t *in);

/* the server closes the connection: pending requests get their error */
void ngx_http_openclaw_control_closing(ngx_http_openclaw_endpoint_t *ep,
    const char *reason);

/* the connection is gone: pending requests are dropped */
void ngx_http_openclaw_control_gone(ngx_http_openclaw_endpoint_t *ep);


#endif /* _NGX_HTTP_OPENCLAW_CONTROL_H_INCLUDED_ */
