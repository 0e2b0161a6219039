
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * Inbound WebSocket clients as endpoints of the relay: the location's
 * agent, uid and sender give the endpoint its identity before the
 * upgrade, so that a bad one is a plain 400; then the client's messages
 * go to the relay, and the relay's replies to the client.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_openclaw_inbound.h"
#include "ngx_http_openclaw_client.h"
#include "ngx_http_openclaw_relay.h"


static ngx_int_t ngx_http_openclaw_inbound_message(
    ngx_http_openclaw_client_t *cl, ngx_uint_t opcode, u_char *data,
    size_t len);
static ngx_int_t ngx_http_openclaw_inbound_send(
    ngx_http_openclaw_endpoint_t *ep, u_char *data, size_t len);
static void ngx_http_openclaw_inbound_closing(ngx_http_openclaw_client_t *cl,
    const char *reason);
static void ngx_http_openclaw_inbound_gone(ngx_http_openclaw_client_t *cl);


ngx_int_t
ngx_http_openclaw_inbound_handler(ngx_http_request_t *r)
{
    ngx_int_t                      rc;
    ngx_str_t                      agent, uid, sender;
    ngx_http_openclaw_client_t    *cl;
    ngx_http_openclaw_endpoint_t  *ep;
    ngx_http_openclaw_loc_conf_t  *conf;

    conf = ngx_http_get_module_loc_conf(r, ngx_http_openclaw_bridge_module);

    ngx_str_null(&agent);
    ngx_str_null(&uid);
    ngx_str_null(&sender);

    if ((conf->agent
         && ngx_http_complex_value(r, conf->agent, &agent) != NGX_OK)
        || (conf->uid && ngx_http_complex_value(r, conf->uid, &uid) != NGX_OK)
        || (conf->sender
            && ngx_http_complex_value(r, conf->sender, &sender) != NGX_OK))
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ep = ngx_pcalloc(r->pool, sizeof(ngx_http_openclaw_endpoint_t));
    if (ep == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ep->conf = conf;

    /* checked before the upgrade; the relay counts it from here on */

    rc = ngx_http_openclaw_relay_check(&agent, &uid, &sender);

    if (rc != NGX_OK) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "openclaw_bridge: invalid agent id, uid or sender "
                      "(letters, digits, \"-\", \"_\" and \".\" only)");
        return NGX_HTTP_BAD_REQUEST;
    }

    rc = ngx_http_openclaw_client_handler(r,
                                          ngx_http_openclaw_inbound_message);

    if (rc != NGX_DONE) {
        return rc;
    }

    cl = ngx_http_get_module_ctx(r, ngx_http_openclaw_bridge_module);

    ep->send = ngx_http_openclaw_inbound_send;
    ep->data = cl;
    ep->log = r->connection->log;
    ep->push = 1;

    if (ngx_http_openclaw_relay_endpoint(ep, r->pool, &agent, &uid, &sender)
        != NGX_OK)
    {
        ngx_http_openclaw_client_close(cl, NGX_HTTP_OPENCLAW_WS_INTERNAL,
                                       "out of memory");
        return NGX_DONE;
    }

    cl->data = ep;
    cl->gone = ngx_http_openclaw_inbound_gone;
    cl->closing = ngx_http_openclaw_inbound_closing;

    return NGX_DONE;
}


static ngx_int_t
ngx_http_openclaw_inbound_message(ngx_http_openclaw_client_t *cl,
    ngx_uint_t opcode, u_char *data, size_t len)
{
    return ngx_http_openclaw_relay_message(cl->data,
                                           opcode != NGX_HTTP_OPENCLAW_WS_TEXT,
                                           data, len);
}


static ngx_int_t
ngx_http_openclaw_inbound_send(ngx_http_openclaw_endpoint_t *ep,
    u_char *data, size_t len)
{
    return ngx_http_openclaw_client_send(ep->data, NGX_HTTP_OPENCLAW_WS_TEXT,
                                         data, len);
}


static void
ngx_http_openclaw_inbound_closing(ngx_http_openclaw_client_t *cl,
    const char *reason)
{
    ngx_http_openclaw_relay_closing(cl->data, reason);
}


static void
ngx_http_openclaw_inbound_gone(ngx_http_openclaw_client_t *cl)
{
    ngx_http_openclaw_relay_gone(cl->data);
}
