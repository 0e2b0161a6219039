
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#ifndef _NGX_HTTP_OPENCLAW_ENDPOINT_H_INCLUDED_
#define _NGX_HTTP_OPENCLAW_ENDPOINT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_openclaw_bridge.h"
#include "ngx_http_openclaw_message.h"


/*
 * An endpoint: whatever a client reaches the relay through (an inbound
 * WebSocket, later a hub link or an HTTP request), as the relay sees it.
 * The transport sets "send", "data", "log" and "conf" (and may set
 * "track"); the relay keeps
 * the rest.  "send" queues one reply, JSON text, and must never call
 * back into the relay before it returns: the relay sends from inside
 * runs and requests that it still holds.
 */

typedef struct ngx_http_openclaw_endpoint_s  ngx_http_openclaw_endpoint_t;

typedef ngx_int_t (*ngx_http_openclaw_endpoint_send_pt)(
    ngx_http_openclaw_endpoint_t *ep, u_char *data, size_t len);

/*
 * Optional, for a transport that must answer for messages beyond its
 * worker's life (a hub link taken over after a crash): a message was
 * taken ("end" clear), or the reply that ends it was sent ("end" set);
 * "id" is the client's id as JSON, empty without one.
 */
typedef void (*ngx_http_openclaw_endpoint_track_pt)(
    ngx_http_openclaw_endpoint_t *ep, ngx_uint_t end, ngx_str_t *id);

struct ngx_http_openclaw_endpoint_s {
    ngx_http_openclaw_endpoint_send_pt  send;
    ngx_http_openclaw_endpoint_track_pt track;
    void                               *data;
    ngx_log_t                          *log;
    ngx_http_openclaw_loc_conf_t       *conf;

    ngx_queue_t                         runs;
    ngx_queue_t                         controls;
    ngx_uint_t                          nruns;
    ngx_queue_t                         sessions;   /* with runs, in a zone */
    ngx_uint_t                          nsessions;
    ngx_http_openclaw_scope_t           scope;
    ngx_str_t                           sender;

    /*
     * Runs the agent starts on its sessions: "push" while the transport
     * takes them, "push_uid" when every session of its uid is its users'
     * (a hub link stands for its uid as a whole).
     */
    ngx_queue_t                         push_link;
    unsigned                            push:1;
    unsigned                            push_uid:1;

    /* what happened on it, for the log */
    ngx_str_t                           session;    /* the last one used */
    ngx_uint_t                          messages_in;
    ngx_uint_t                          messages_out;   /* replies written */
    ngx_uint_t                          errors;     /* of them, errors */
};


#endif /* _NGX_HTTP_OPENCLAW_ENDPOINT_H_INCLUDED_ */
