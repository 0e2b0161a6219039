
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#ifndef _NGX_HTTP_OPENCLAW_GATEWAY_H_INCLUDED_
#define _NGX_HTTP_OPENCLAW_GATEWAY_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_openclaw_bridge.h"
#include "ngx_http_openclaw_json.h"


typedef struct ngx_http_openclaw_rpc_s  ngx_http_openclaw_rpc_t;

/*
 * "res" is the gateway's whole response frame, valid during the call
 * only, or NULL when the link was lost before it came.
 */
typedef void (*ngx_http_openclaw_rpc_pt)(ngx_http_openclaw_rpc_t *rpc,
    ngx_http_openclaw_jv_t *res);

struct ngx_http_openclaw_rpc_s {
    ngx_queue_t                 queue;
    ngx_uint_t                  id;         /* 0: not in flight */
    ngx_http_openclaw_rpc_pt    handler;
    void                       *data;
};


typedef enum {
    NGX_HTTP_OPENCLAW_LINK_DOWN = 0,
    NGX_HTTP_OPENCLAW_LINK_CONNECTING,
    NGX_HTTP_OPENCLAW_LINK_UPGRADING,
    NGX_HTTP_OPENCLAW_LINK_CHALLENGE,
    NGX_HTTP_OPENCLAW_LINK_HELLO,
    NGX_HTTP_OPENCLAW_LINK_READY
} ngx_http_openclaw_link_state_e;


/*
 * Room for the longest reason the module writes (a TLS name mismatch
 * names the configured host) with a gateway's refusal quoted in it; a
 * longer one is cut after a whole word.  The relay quotes it in errors
 * of its own of at most 512 bytes, with about 50 of text around it.
 */
#define NGX_HTTP_OPENCLAW_LINK_ERRLEN  384


/* the link's state, kept where the status endpoint can read it */

typedef struct {
    ngx_http_openclaw_link_state_e  state;
    ngx_uint_t                      protocol;
    ngx_msec_t                      tick_interval;
    size_t                          max_payload;
    time_t                          since;
    ngx_uint_t                      reconnects;
    u_char                          last_error[NGX_HTTP_OPENCLAW_LINK_ERRLEN];
} ngx_http_openclaw_link_info_t;


/*
 * What the link tells the layer that relays over it, registered by the
 * module before init_process, so that the link calls nothing above it.
 * "chat_event" is the payload of a chat event, valid during the call.
 * A link kept at shutdown is closed by the worker's exit.
 */

typedef struct {
    void                      (*up)(ngx_uint_t protocol);
    void                      (*down)(void);
    void                      (*chat_event)(ngx_http_openclaw_jv_t *payload);

    /* optional: the worker shuts down; non-zero keeps the link open */
    ngx_uint_t                (*keep)(void);
} ngx_http_openclaw_gateway_handlers_t;


void ngx_http_openclaw_gateway_set_handlers(
    const ngx_http_openclaw_gateway_handlers_t *handlers);
ngx_int_t ngx_http_openclaw_gateway_init_process(ngx_cycle_t *cycle,
    ngx_http_openclaw_main_conf_t *omcf, ngx_http_openclaw_link_info_t *info);
void ngx_http_openclaw_gateway_exit_process(ngx_cycle_t *cycle);

/*
 * Sends a request whose params are already JSON text.  NGX_DECLINED: the
 * link is not ready.  With an "rpc" the response is delivered to it,
 * without one it is dropped.
 */
ngx_int_t ngx_http_openclaw_gateway_call(ngx_http_openclaw_rpc_t *rpc,
    const char *method, u_char *params, size_t len);

/*
 * The largest params a request of "method" may carry, so that its frame
 * stays within the gateway's policy.maxPayload: a larger frame makes the
 * gateway close the link.  NGX_MAX_SIZE_T_VALUE while the link is not
 * ready, and the limit not known.
 */
size_t ngx_http_openclaw_gateway_max_params(const char *method);

/* the gateway's policy.maxPayload, for errors that name it */
size_t ngx_http_openclaw_gateway_max_payload(void);

/* forgets a pending request: its response, if any, will be dropped */
void ngx_http_openclaw_gateway_cancel(ngx_http_openclaw_rpc_t *rpc);

/* bytes queued towards the gateway and not yet sent */
size_t ngx_http_openclaw_gateway_queued(void);

/* why the link is not up, for the errors of messages that waited */
const char *ngx_http_openclaw_gateway_last_error(void);


#endif /* _NGX_HTTP_OPENCLAW_GATEWAY_H_INCLUDED_ */
