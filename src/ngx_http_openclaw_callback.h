
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#ifndef _NGX_HTTP_OPENCLAW_CALLBACK_H_INCLUDED_
#define _NGX_HTTP_OPENCLAW_CALLBACK_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_openclaw_bridge.h"


/* a worker's figures, in its status slot */

typedef struct {
    ngx_uint_t                      pending;   /* accepted, not yet done */
    ngx_uint_t                      delivered;
    ngx_uint_t                      failed;    /* after the last attempt */
    ngx_uint_t                      retries;
} ngx_http_openclaw_callback_stats_t;


/* pending deliveries a worker holds: past them a callback is refused */
#define NGX_HTTP_OPENCLAW_CALLBACK_QUEUE  10000


/* openclaw_bridge_callback_allow prefix ... */
char *ngx_http_openclaw_callback_allow(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/*
 * "url" is under one of the location's allowed prefixes: NGX_OK, else
 * NGX_DECLINED with "*err" saying why.
 */
ngx_int_t ngx_http_openclaw_callback_allowed(
    ngx_http_openclaw_loc_conf_t *conf, ngx_str_t *url, const char **err);

/*
 * Relays the message "body" from an endpoint of its own, outside the
 * request, and POSTs its final reply to "url" (and each progress, with
 * "progress"); "id" is the message's id, as JSON, for the log.  NGX_OK:
 * accepted, with the session key and the delivery id in "session" and
 * "delivery";
 * NGX_DONE: the relay answered at once (bad input), the reply, to
 * answer the request with, is in "reply"; NGX_BUSY: the worker's queue
 * of deliveries is full; NGX_ERROR.  All copied into "r"'s pool.
 */
ngx_int_t ngx_http_openclaw_callback_start(ngx_http_request_t *r,
    ngx_str_t *agent, ngx_str_t *uid, ngx_str_t *sender, ngx_str_t *body,
    ngx_str_t *url, ngx_str_t *id, ngx_uint_t progress, ngx_str_t *reply,
    ngx_str_t *session, ngx_str_t *delivery);

void ngx_http_openclaw_callback_set_stats(
    ngx_http_openclaw_callback_stats_t *stats);

void ngx_http_openclaw_callback_exit_process(ngx_cycle_t *cycle);


#endif /* _NGX_HTTP_OPENCLAW_CALLBACK_H_INCLUDED_ */
