
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_openclaw_reply.h"


ngx_int_t
ngx_http_openclaw_reply(ngx_http_openclaw_endpoint_t *ep,
    ngx_http_openclaw_reply_t *rp)
{
    ngx_int_t                 rc;
    ngx_str_t                 out;
    ngx_http_openclaw_json_t  j;

    j.log = ep->log;

    ngx_http_openclaw_json_begin(&j, rp->type);

    if (rp->content) {
        ngx_http_openclaw_json_escaped(&j, "content", rp->content->data,
                                       rp->content->len);
    }

    if (rp->delta) {
        ngx_http_openclaw_json_escaped(&j, "delta", rp->delta->data,
                                       rp->delta->len);
    }

    if (rp->replace) {
        ngx_http_openclaw_json_raw(&j, "replace", (u_char *) "true", 4);
    }

    if (rp->data) {
        ngx_http_openclaw_json_raw(&j, "data", rp->data->data, rp->data->len);
    }

    if (rp->error) {
        ngx_http_openclaw_json_string(&j, "error", rp->error->data,
                                      rp->error->len);
    }

    if (rp->session) {
        ngx_http_openclaw_json_string(&j, "session", rp->session->data,
                                      rp->session->len);
    }

    /* a run the agent started answers no message: no id, its origin */

    if (rp->agent) {
        ngx_http_openclaw_json_raw(&j, "origin", (u_char *) "\"agent\"", 7);
    }

    /* the id goes back as the client wrote it, string or number */

    if (rp->id && rp->id->len) {
        ngx_http_openclaw_json_raw(&j, "id", rp->id->data, rp->id->len);
    }

    if (ngx_http_openclaw_json_end(&j, &out) != NGX_OK) {
        return NGX_ERROR;
    }

    rc = ep->send(ep, out.data, out.len);

    /* every reply but a progress ends a message */

    if (rc == NGX_OK && !rp->agent && ngx_strcmp(rp->type, "progress") != 0) {
        ep->messages_out++;

        if (ep->track) {
            ep->track(ep, 1, rp->id);
        }

        if (rp->error) {
            ep->errors++;
        }
    }

    return rc;
}
