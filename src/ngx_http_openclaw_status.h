
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#ifndef _NGX_HTTP_OPENCLAW_STATUS_H_INCLUDED_
#define _NGX_HTTP_OPENCLAW_STATUS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_openclaw_bridge.h"
#include "ngx_http_openclaw_gateway.h"
#include "ngx_http_openclaw_relay.h"
#include "ngx_http_openclaw_sessions.h"
#include "ngx_http_openclaw_callback.h"


/*
 * Each worker's figures live in a slot of a small shared zone, written by
 * that worker only, so that any worker can answer the status request.
 */

typedef struct {
    ngx_pid_t                        pid;
    time_t                           started;
    ngx_http_openclaw_link_info_t    link;
    ngx_http_openclaw_relay_stats_t  relay;
    ngx_http_openclaw_callback_stats_t  callbacks;
} ngx_http_openclaw_worker_status_t;


typedef struct {
    ngx_str_t                        name;
    ngx_http_openclaw_zone_info_t    info;
} ngx_http_openclaw_zone_status_t;


/* the names of the link's states, by ngx_http_openclaw_link_state_e */
extern const char  *ngx_http_openclaw_link_states[];


ngx_int_t ngx_http_openclaw_status_zone(ngx_conf_t *cf,
    ngx_http_openclaw_main_conf_t *omcf);

/* the calling worker's slot; NULL when every slot is taken */
ngx_http_openclaw_worker_status_t *ngx_http_openclaw_status_attach(
    ngx_cycle_t *cycle, ngx_http_openclaw_main_conf_t *omcf);
void ngx_http_openclaw_status_detach(void);

/*
 * This worker saw the end of the agent's run "run_id" and "delivered" it
 * (or may have: a message's hand-over) or not: NGX_OK when it is the last
 * worker to say, and no worker delivered it.
 */
ngx_int_t ngx_http_openclaw_status_run_end(ngx_str_t *run_id,
    ngx_uint_t delivered);

/*
 * What the status and metrics endpoints report: copies of the live
 * workers' slots (ngx_http_openclaw_worker_status_t), taken without a
 * lock, and the sessions zones of the running configuration
 * (ngx_http_openclaw_zone_status_t).  NULL without memory.
 */
ngx_array_t *ngx_http_openclaw_status_workers(
    ngx_http_openclaw_main_conf_t *omcf, ngx_pool_t *pool);
ngx_array_t *ngx_http_openclaw_status_zones(ngx_pool_t *pool);

/*
 * What both endpoints do first (method, body, the figures) and last (the
 * answer, whole in one buffer): NGX_OK or what the handler returns.
 */
ngx_int_t ngx_http_openclaw_status_read(ngx_http_request_t *r,
    ngx_array_t **workers, ngx_array_t **zones);
ngx_int_t ngx_http_openclaw_status_send(ngx_http_request_t *r, ngx_buf_t *b,
    ngx_str_t *type);

ngx_int_t ngx_http_openclaw_status_handler(ngx_http_request_t *r);


#endif /* _NGX_HTTP_OPENCLAW_STATUS_H_INCLUDED_ */
