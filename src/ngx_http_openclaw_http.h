
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#ifndef _NGX_HTTP_OPENCLAW_HTTP_H_INCLUDED_
#define _NGX_HTTP_OPENCLAW_HTTP_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_openclaw_endpoint.h"


/* the content handler of openclaw_bridge_http locations */
ngx_int_t ngx_http_openclaw_http_handler(ngx_http_request_t *r);

/*
 * The HTTP status that answers a reply of the relay, JSON text: 200 for
 * a complete or a control reply, else the status its error text names.
 */
ngx_uint_t ngx_http_openclaw_http_status(u_char *data, size_t len);

/*
 * The endpoint of a request of an openclaw_bridge_http location whose
 * message went to the relay (waited for or streamed), for the variables;
 * NULL for any other request.
 */
ngx_http_openclaw_endpoint_t *ngx_http_openclaw_http_endpoint(
    ngx_http_request_t *r);


#endif /* _NGX_HTTP_OPENCLAW_HTTP_H_INCLUDED_ */
