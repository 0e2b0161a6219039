
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#ifndef _NGX_HTTP_OPENCLAW_RELAY_H_INCLUDED_
#define _NGX_HTTP_OPENCLAW_RELAY_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_openclaw_bridge.h"
#include "ngx_http_openclaw_client.h"
#include "ngx_http_openclaw_message.h"


/* counters for the status endpoint */

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
} ngx_http_openclaw_relay_stats_t;


/* what the relay keeps for each client connection */

typedef struct {
    ngx_http_openclaw_client_t     *client;
    ngx_queue_t                     runs;
    ngx_queue_t                     controls;
    ngx_uint_t                      nruns;
    ngx_queue_t                     sessions;   /* with runs, in a zone */
    ngx_uint_t                      nsessions;
    ngx_http_openclaw_scope_t       scope;
    ngx_str_t                       sender;
} ngx_http_openclaw_peer_t;


ngx_int_t ngx_http_openclaw_relay_init_process(ngx_cycle_t *cycle,
    ngx_http_openclaw_main_conf_t *omcf);
void ngx_http_openclaw_relay_set_stats(ngx_http_openclaw_relay_stats_t *stats);
void ngx_http_openclaw_relay_count_out(void);

/* the content handler of openclaw_bridge locations */
ngx_int_t ngx_http_openclaw_relay_handler(ngx_http_request_t *r);

/* the message handler of its connections */
ngx_int_t ngx_http_openclaw_relay_message(ngx_http_openclaw_client_t *cl,
    ngx_uint_t opcode, u_char *data, size_t len);

/* called by the gateway link */
void ngx_http_openclaw_relay_link_up(ngx_uint_t protocol);
void ngx_http_openclaw_relay_link_down(void);
void ngx_http_openclaw_relay_chat_event(ngx_http_openclaw_jv_t *payload);

/*
 * A reply of the documented shape; NULL fields are left out.  "content"
 * and "delta" are escaped JSON text already, "id" is JSON as the client
 * wrote it.
 */
ngx_int_t ngx_http_openclaw_relay_reply(ngx_http_openclaw_client_t *cl,
    const char *type, ngx_str_t *content, ngx_str_t *delta, ngx_str_t *error,
    ngx_str_t *session, ngx_str_t *id);



#endif /* _NGX_HTTP_OPENCLAW_RELAY_H_INCLUDED_ */
