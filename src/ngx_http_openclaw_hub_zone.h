
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * Which worker holds which hub link.  A hub sends every frame to every
 * socket of a uid: two links of one (URL, uid) would answer each message
 * twice, so one worker of all holds it, and another takes it over when
 * that one exits or dies.  Each link has a slot in a shared zone, named
 * by a hash of its location and URL so that a reload finds it again.
 */


#ifndef _NGX_HTTP_OPENCLAW_HUB_ZONE_H_INCLUDED_
#define _NGX_HTTP_OPENCLAW_HUB_ZONE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


#define NGX_HTTP_OPENCLAW_HUB_SLOTS     256
#define NGX_HTTP_OPENCLAW_HUB_SEEN      64
#define NGX_HTTP_OPENCLAW_HUB_SEEN_TIME 10      /* seconds a copy may lag */
#define NGX_HTTP_OPENCLAW_HUB_ERRLEN    256
#define NGX_HTTP_OPENCLAW_HUB_IDLEN     128
#define NGX_HTTP_OPENCLAW_HUB_FLIGHTS   4096


typedef enum {
    NGX_HTTP_OPENCLAW_HUB_DOWN = 0,
    NGX_HTTP_OPENCLAW_HUB_CONNECTING,
    NGX_HTTP_OPENCLAW_HUB_READY,
    NGX_HTTP_OPENCLAW_HUB_DRAINING
} ngx_http_openclaw_hub_state_e;


typedef struct {
    ngx_shmtx_sh_t              lock;       /* for "seen" */
    ngx_atomic_t                key;        /* 0: a free slot */

    ngx_atomic_t                owner;      /* the worker that holds it */
    ngx_atomic_t                beat;       /* its last sign of life */
    ngx_atomic_t                up;         /* whose link is ready */
    ngx_atomic_t                draining;   /* an old owner's, delivering */

    /* for the status, written by the owner */
    ngx_atomic_t                state;
    ngx_atomic_t                since;
    ngx_atomic_t                reconnects;
    ngx_atomic_t                queued;
    ngx_atomic_t                dropped;
    u_char                      last_error[NGX_HTTP_OPENCLAW_HUB_ERRLEN];

    /*
     * frames taken while two links overlap, by hash, with the worker
     * that took each and when: a copy pairs with one taken by the OTHER
     * link, moments before, never with one this link took (a user may
     * send the same bytes twice)
     */
    ngx_uint_t                  seen_next;
    uint64_t                    seen[NGX_HTTP_OPENCLAW_HUB_SEEN];
    ngx_pid_t                   seen_pid[NGX_HTTP_OPENCLAW_HUB_SEEN];
    time_t                      seen_time[NGX_HTTP_OPENCLAW_HUB_SEEN];

    /* messages taken and not yet ended, of every worker */
    ngx_queue_t                 flights;
    ngx_uint_t                  nflights;
} ngx_http_openclaw_hub_slot_t;


typedef struct {
    ngx_shmtx_t                 mutex;      /* per process */
    ngx_http_openclaw_hub_slot_t  *slot;
    ngx_slab_pool_t            *shpool;
} ngx_http_openclaw_hub_hold_t;


/* a message whose worker died before its end: its id, as JSON */

typedef struct {
    size_t                      len;
    u_char                      id[NGX_HTTP_OPENCLAW_HUB_IDLEN];
} ngx_http_openclaw_hub_orphan_t;


ngx_shm_zone_t *ngx_http_openclaw_hub_zone_add(ngx_conf_t *cf);

/* a link's name in the zone */
ngx_atomic_uint_t ngx_http_openclaw_hub_zone_key(ngx_str_t *location,
    ngx_str_t *url);

/*
 * The slot of "key", taken if it has none yet; "keys" (n of them) are
 * the running configuration's, whose slots are never given to another.
 * NGX_ERROR when every slot is taken.
 */
ngx_int_t ngx_http_openclaw_hub_zone_slot(ngx_shm_zone_t *zone,
    ngx_atomic_uint_t key, ngx_atomic_uint_t *keys, ngx_uint_t n,
    ngx_http_openclaw_hub_hold_t *hold);

/*
 * NGX_OK: the calling worker holds the link (and says it is alive);
 * NGX_DECLINED: another live worker does.  A holder that is gone (no such
 * process, or silent for long) is replaced.
 */
ngx_int_t ngx_http_openclaw_hub_zone_claim(ngx_http_openclaw_hub_hold_t *hold);

/*
 * The worker exits: another may take the link at once; "delivering" says
 * that this one keeps its link open meanwhile, for replies in flight.
 */
void ngx_http_openclaw_hub_zone_release(ngx_http_openclaw_hub_hold_t *hold,
    ngx_uint_t delivering);

/* the old owner has closed its link */
void ngx_http_openclaw_hub_zone_drained(ngx_http_openclaw_hub_hold_t *hold);

/*
 * While two links of one hub overlap, each frame arrives at both: the
 * first worker to take it handles it.  NGX_DECLINED: already taken.
 */
ngx_int_t ngx_http_openclaw_hub_zone_take(ngx_http_openclaw_hub_hold_t *hold,
    u_char *data, size_t len);

/*
 * NGX_DECLINED as take() would say, when the other link took the frame's
 * copy; NGX_OK, without taking it, when it has not (yet).
 */
ngx_int_t ngx_http_openclaw_hub_zone_twin(ngx_http_openclaw_hub_hold_t *hold,
    u_char *data, size_t len);


/*
 * A message taken by this worker is recorded until the reply that ends
 * it is sent, so that whoever holds the link after this worker died can
 * still end it.  Ids longer than NGX_HTTP_OPENCLAW_HUB_IDLEN are kept
 * cut (their error then carries no id).
 */
void ngx_http_openclaw_hub_zone_start(ngx_http_openclaw_hub_hold_t *hold,
    ngx_str_t *id);
void ngx_http_openclaw_hub_zone_end(ngx_http_openclaw_hub_hold_t *hold,
    ngx_str_t *id);

/*
 * Takes out up to "n" records of workers that are gone: the number
 * written to "orphans".
 */
ngx_uint_t ngx_http_openclaw_hub_zone_orphans(
    ngx_http_openclaw_hub_hold_t *hold, ngx_http_openclaw_hub_orphan_t *out,
    ngx_uint_t n);


#endif /* _NGX_HTTP_OPENCLAW_HUB_ZONE_H_INCLUDED_ */
