
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#ifndef _NGX_HTTP_OPENCLAW_RELAY_H_INCLUDED_
#define _NGX_HTTP_OPENCLAW_RELAY_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_openclaw_bridge.h"
#include "ngx_http_openclaw_message.h"
#include "ngx_http_openclaw_endpoint.h"
#include "ngx_http_openclaw_metrics.h"


/* counters for the status and metrics endpoints */

typedef struct {
    ngx_uint_t                  clients;
    ngx_uint_t                  runs;
    ngx_uint_t                  waiting;
    ngx_uint_t                  messages_in;
    ngx_uint_t                  messages_out;
    ngx_uint_t                  completed;
    ngx_uint_t                  errors_input;
    ngx_uint_t                  errors_gateway;
    ngx_uint_t                  errors_timeout;
    ngx_uint_t                  errors_link;
    ngx_uint_t                  errors_overload;
    ngx_uint_t                  pushed;     /* runs the agent started */
    ngx_uint_t                  undelivered;    /* ... that reached nobody */

    /* from the message to its first progress, and to its complete */
    ngx_http_openclaw_histogram_t  first_progress;
    ngx_http_openclaw_histogram_t  complete;
} ngx_http_openclaw_relay_stats_t;


ngx_int_t ngx_http_openclaw_relay_init_process(ngx_cycle_t *cycle,
    ngx_http_openclaw_main_conf_t *omcf);
void ngx_http_openclaw_relay_set_stats(ngx_http_openclaw_relay_stats_t *stats);
void ngx_http_openclaw_relay_count_out(void);

/*
 * NGX_DECLINED when "agent", "uid" or "sender" cannot be part of a
 * session key: letters, digits, "-", "_" and "." only, and bounded.
 */
ngx_int_t ngx_http_openclaw_relay_check(ngx_str_t *agent, ngx_str_t *uid,
    ngx_str_t *sender);

/*
 * A new endpoint of the location "ep->conf", for "agent", "uid" and
 * "sender" (which may be empty): NGX_DECLINED when one of them is not a
 * valid part of a session key, NGX_ERROR without memory.
 */
ngx_int_t ngx_http_openclaw_relay_endpoint(ngx_http_openclaw_endpoint_t *ep,
    ngx_pool_t *pool, ngx_str_t *agent, ngx_str_t *uid, ngx_str_t *sender);

/* a complete message from an endpoint; "binary" when it is not text */
ngx_int_t ngx_http_openclaw_relay_message(ngx_http_openclaw_endpoint_t *ep,
    ngx_uint_t binary, u_char *data, size_t len);

/* a message the transport could not take, answered with "error" */
ngx_int_t ngx_http_openclaw_relay_refuse(ngx_http_openclaw_endpoint_t *ep,
    const char *error);

/*
 * The transport is closing the endpoint but can still send: every
 * message in flight gets its error now.
 */
void ngx_http_openclaw_relay_closing(ngx_http_openclaw_endpoint_t *ep,
    const char *reason);

/* the endpoint is gone: its runs are dropped (and aborted, if so set) */
void ngx_http_openclaw_relay_gone(ngx_http_openclaw_endpoint_t *ep);

/* called by the gateway link */
void ngx_http_openclaw_relay_link_up(ngx_uint_t protocol);
void ngx_http_openclaw_relay_link_down(void);
void ngx_http_openclaw_relay_chat_event(ngx_http_openclaw_jv_t *payload);

/*
 * A reply of the documented shape; NULL fields are left out.  "content"
 * and "delta" are escaped JSON text already, "id" is JSON as the client
 * wrote it.
 */
ngx_int_t ngx_http_openclaw_relay_reply(ngx_http_openclaw_endpoint_t *ep,
    const char *type, ngx_str_t *content, ngx_str_t *delta, ngx_str_t *error,
    ngx_str_t *session, ngx_str_t *id);



#endif /* _NGX_HTTP_OPENCLAW_RELAY_H_INCLUDED_ */
