
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#ifndef _NGX_HTTP_OPENCLAW_RUNS_H_INCLUDED_
#define _NGX_HTTP_OPENCLAW_RUNS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_openclaw_endpoint.h"
#include "ngx_http_openclaw_gateway.h"


#define NGX_HTTP_OPENCLAW_RUN_ID_MAX    64


/* the relay's record of a session a connection has runs in */
typedef struct ngx_http_openclaw_held_s  ngx_http_openclaw_held_t;


typedef enum {
    NGX_HTTP_OPENCLAW_RUN_WAITING = 0,
    NGX_HTTP_OPENCLAW_RUN_SENT,
    NGX_HTTP_OPENCLAW_RUN_RUNNING,
    NGX_HTTP_OPENCLAW_RUN_ADOPTING,
    NGX_HTTP_OPENCLAW_RUN_HISTORY
} ngx_http_openclaw_run_state_e;


/*
 * Runs armed with the same timeout expire in the order they were armed:
 * each of the two timeouts every run uses keeps its runs in a queue,
 * oldest first, under one timer.  A run that ends leaves the queue at no
 * cost, where a timer of its own would cost two operations on the timer
 * tree per message.  The timer is not moved when its run ends before it:
 * it finds the next one when it fires.
 */

typedef struct {
    ngx_msec_t                      timeout;
    ngx_queue_t                     runs;
    ngx_event_t                     timer;
} ngx_http_openclaw_lane_t;


typedef struct {
    ngx_queue_t                     bucket;
    uint32_t                        hash;
    ngx_str_t                       rid;        /* run_id as a string */
    ngx_queue_t                     ep_link;
    ngx_queue_t                     link;
    ngx_http_openclaw_rpc_t         rpc;
    ngx_event_t                     timer;      /* a timeout of no lane */
    ngx_http_openclaw_lane_t       *lane;       /* or the lane it is in */
    ngx_queue_t                     lane_link;
    ngx_msec_t                      expires;    /* in the lane */
    ngx_http_openclaw_endpoint_t   *ep;
    ngx_http_openclaw_run_state_e   state;

    ngx_str_t                       session;
    ngx_str_t                       id;
    ngx_str_t                       params;
    ngx_shm_zone_t                 *zone;
    ngx_http_openclaw_held_t       *held;       /* with a zone and an ep */

    u_char                         *text;
    size_t                          text_len;
    size_t                          text_size;

    unsigned                        seen_text:1;
    unsigned                        block:1;
    unsigned                        push:1;     /* the agent started it */
    unsigned                        lost:1;     /* sent again, it failed:
                                                   its reply is looked for
                                                   in the history */

    u_char                          run_id[NGX_HTTP_OPENCLAW_RUN_ID_MAX];

    ngx_uint_t                      drops;      /* links lost while it was
                                                   in flight */
    ngx_msec_t                      start;      /* the message came */
} ngx_http_openclaw_run_t;


typedef void (*ngx_http_openclaw_run_expired_pt)(ngx_http_openclaw_run_t *run);


/*
 * The run table of a worker: runs by run id, their timeouts (two lanes,
 * "request" and "run", and a timer of its own for any other timeout),
 * and the blocks they live in.  "expired" is called for a run whose
 * timeout came; the run is disarmed by then.
 */
ngx_int_t ngx_http_openclaw_runs_init(ngx_cycle_t *cycle,
    ngx_msec_t request_timeout, ngx_msec_t run_timeout,
    ngx_http_openclaw_run_expired_pt expired);

/* a zeroed run, with "size" bytes in all for it and its strings */
ngx_http_openclaw_run_t *ngx_http_openclaw_runs_alloc(size_t size,
    ngx_log_t *log);

/* the run leaves the table and its timeouts, and its memory is reused */
void ngx_http_openclaw_runs_free(ngx_http_openclaw_run_t *run);

ngx_http_openclaw_run_t *ngx_http_openclaw_runs_find(u_char *run_id,
    size_t len, uint32_t hash);
void ngx_http_openclaw_runs_index(ngx_http_openclaw_run_t *run);
void ngx_http_openclaw_runs_rekey(ngx_http_openclaw_run_t *run,
    u_char *run_id, size_t len);

/* the runs in the table */
ngx_uint_t ngx_http_openclaw_runs_count(void);

/* "timeout" from now; 0 expires at once */
void ngx_http_openclaw_runs_arm(ngx_http_openclaw_run_t *run,
    ngx_msec_t timeout);
void ngx_http_openclaw_runs_disarm(ngx_http_openclaw_run_t *run);

/* when the run times out; 0 if it is not armed */
ngx_msec_t ngx_http_openclaw_runs_expires(ngx_http_openclaw_run_t *run);


#endif /* _NGX_HTTP_OPENCLAW_RUNS_H_INCLUDED_ */
