
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#ifndef _NGX_HTTP_OPENCLAW_REPLY_H_INCLUDED_
#define _NGX_HTTP_OPENCLAW_REPLY_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_openclaw_endpoint.h"


/*
 * A reply to a client, of the documented shapes: chat replies (progress,
 * complete, error) and control replies ({type, data}, errors in
 * data.error and error).  NULL members are left out.  "content" and
 * "delta" are escaped JSON text already, "data" and "id" JSON as they
 * are, "error" and "session" plain text.
 */

typedef struct {
    const char                     *type;
    ngx_str_t                      *content;
    ngx_str_t                      *delta;
    ngx_str_t                      *data;
    ngx_str_t                      *error;
    ngx_str_t                      *session;
    ngx_str_t                      *id;
    unsigned                        replace:1;
    unsigned                        agent:1;    /* "origin":"agent" */
} ngx_http_openclaw_reply_t;


/* the one writer of client replies: JSON text to the endpoint */
ngx_int_t ngx_http_openclaw_reply(ngx_http_openclaw_endpoint_t *ep,
    ngx_http_openclaw_reply_t *rp);


#endif /* _NGX_HTTP_OPENCLAW_REPLY_H_INCLUDED_ */
