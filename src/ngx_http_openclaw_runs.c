
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * The run table of a worker: every message relayed is a run, found by
 * its run id at every gateway event, timed out from two lanes, and kept
 * in a block of its own.  The table knows nothing of what a run is for:
 * the relay is told of a run whose time is up through the "expired"
 * handler it registered.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_openclaw_runs.h"


/*
 * A run and its strings mostly fit in a block of a fixed size, and the
 * blocks of runs that ended are kept for the next ones, a few dozen at
 * most, so that a message costs no malloc() and free().  Under ASan a
 * cached block is poisoned but for its link, and a run sees only the
 * bytes it asked for, so that a use after the run ended, or past its
 * strings, is still seen.  The cache is left to the exit of the process:
 * ngx_http_openclaw_runs still points to it, and LeakSanitizer, with the
 * module kept mapped (t/asan/nodlclose.c), finds it reachable.
 */
#define NGX_HTTP_OPENCLAW_RUN_BLOCK     1024
#define NGX_HTTP_OPENCLAW_RUN_CACHE     64

#if (defined __SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#else
#define ASAN_POISON_MEMORY_REGION(addr, size)    ((void) (addr), (void) (size))
#define ASAN_UNPOISON_MEMORY_REGION(addr, size)  ((void) (addr), (void) (size))
#endif


typedef struct {
    ngx_queue_t                        *buckets;    /* runs by run id */
    ngx_uint_t                          nbuckets;   /* a power of 2 */
    ngx_uint_t                          nruns;
    ngx_http_openclaw_lane_t            lanes[2];   /* request, run */
    void                               *blocks;     /* of runs that ended */
    ngx_uint_t                          nblocks;
    ngx_http_openclaw_run_expired_pt    expired;
} ngx_http_openclaw_runs_t;


static ngx_int_t ngx_http_openclaw_runs_grow(ngx_log_t *log);
static void ngx_http_openclaw_runs_lane_expired(ngx_event_t *ev);
static void ngx_http_openclaw_runs_timer_expired(ngx_event_t *ev);


static ngx_http_openclaw_runs_t  ngx_http_openclaw_runs;


ngx_int_t
ngx_http_openclaw_runs_init(ngx_cycle_t *cycle, ngx_msec_t request_timeout,
    ngx_msec_t run_timeout, ngx_http_openclaw_run_expired_pt expired)
{
    ngx_uint_t                 i;
    ngx_http_openclaw_runs_t  *rl;

    rl = &ngx_http_openclaw_runs;

    rl->expired = expired;

    rl->lanes[0].timeout = request_timeout;
    rl->lanes[1].timeout = run_timeout;

    for (i = 0; i < 2; i++) {
        ngx_queue_init(&rl->lanes[i].runs);
        rl->lanes[i].timer.handler = ngx_http_openclaw_runs_lane_expired;
        rl->lanes[i].timer.data = &rl->lanes[i];
        rl->lanes[i].timer.log = cycle->log;
        rl->lanes[i].timer.cancelable = 1;
    }

    rl->nbuckets = 0;
    rl->nruns = 0;

    return ngx_http_openclaw_runs_grow(cycle->log);
}


ngx_uint_t
ngx_http_openclaw_runs_count(void)
{
    return ngx_http_openclaw_runs.nruns;
}


void
ngx_http_openclaw_runs_free(ngx_http_openclaw_run_t *run)
{
    ngx_http_openclaw_runs_t  *rl;

    rl = &ngx_http_openclaw_runs;

    ngx_queue_remove(&run->bucket);
    rl->nruns--;

    ngx_http_openclaw_runs_disarm(run);

    if (run->block && rl->nblocks < NGX_HTTP_OPENCLAW_RUN_CACHE) {
        *(void **) run = rl->blocks;
        rl->blocks = run;
        rl->nblocks++;

        /*
         * All but the link: LeakSanitizer ignores pointers in poisoned
         * memory, and would take every block after the first for a leak.
         */
        ASAN_POISON_MEMORY_REGION((u_char *) run + sizeof(void *),
                                  NGX_HTTP_OPENCLAW_RUN_BLOCK
                                  - sizeof(void *));
        return;
    }

    ngx_free(run);
}


/*
 * Runs are found by their run id at every gateway event: a hash table,
 * grown to keep about a run per bucket, takes one probe, where a tree
 * takes a dependent load per level.
 */

ngx_http_openclaw_run_t *
ngx_http_openclaw_runs_find(u_char *run_id, size_t len, uint32_t hash)
{
    ngx_queue_t                *b, *q;
    ngx_http_openclaw_run_t    *run;
    ngx_http_openclaw_runs_t   *rl;

    rl = &ngx_http_openclaw_runs;
    b = &rl->buckets[hash & (rl->nbuckets - 1)];

    for (q = ngx_queue_head(b); q != ngx_queue_sentinel(b);
         q = ngx_queue_next(q))
    {
        run = ngx_queue_data(q, ngx_http_openclaw_run_t, bucket);

        if (run->hash == hash && run->rid.len == len
            && ngx_memcmp(run->rid.data, run_id, len) == 0)
        {
            return run;
        }
    }

    return NULL;
}


void
ngx_http_openclaw_runs_index(ngx_http_openclaw_run_t *run)
{
    ngx_http_openclaw_runs_t   *rl;

    rl = &ngx_http_openclaw_runs;

    /* no room to grow: the chains get longer, nothing fails */

    if (rl->nruns >= rl->nbuckets) {
        (void) ngx_http_openclaw_runs_grow(ngx_cycle->log);
    }

    ngx_queue_insert_tail(&rl->buckets[run->hash & (rl->nbuckets - 1)],
                          &run->bucket);
    rl->nruns++;
}


void
ngx_http_openclaw_runs_rekey(ngx_http_openclaw_run_t *run, u_char *run_id,
    size_t len)
{
    ngx_queue_remove(&run->bucket);
    ngx_http_openclaw_runs.nruns--;

    ngx_memcpy(run->run_id, run_id, len);
    run->rid.len = len;
    run->hash = ngx_murmur_hash2(run->run_id, len);

    ngx_http_openclaw_runs_index(run);
}


static ngx_int_t
ngx_http_openclaw_runs_grow(ngx_log_t *log)
{
    ngx_uint_t                  i, n;
    ngx_queue_t                *buckets, *b, *q;
    ngx_http_openclaw_run_t    *run;
    ngx_http_openclaw_runs_t   *rl;

    rl = &ngx_http_openclaw_runs;

    n = rl->nbuckets ? 2 * rl->nbuckets : 256;

    buckets = ngx_alloc(n * sizeof(ngx_queue_t), log);
    if (buckets == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < n; i++) {
        ngx_queue_init(&buckets[i]);
    }

    for (i = 0; i < rl->nbuckets; i++) {
        b = &rl->buckets[i];

        while (!ngx_queue_empty(b)) {
            q = ngx_queue_head(b);
            ngx_queue_remove(q);

            run = ngx_queue_data(q, ngx_http_openclaw_run_t, bucket);
            ngx_queue_insert_tail(&buckets[run->hash & (n - 1)], q);
        }
    }

    if (rl->buckets) {
        ngx_free(rl->buckets);
    }

    rl->buckets = buckets;
    rl->nbuckets = n;

    return NGX_OK;
}


void
ngx_http_openclaw_runs_arm(ngx_http_openclaw_run_t *run, ngx_msec_t timeout)
{
    ngx_uint_t                  i;
    ngx_http_openclaw_lane_t   *lane;
    ngx_http_openclaw_runs_t   *rl;

    rl = &ngx_http_openclaw_runs;

    ngx_http_openclaw_runs_disarm(run);

    /*
     * ngx_current_msec never goes back, so a run put last expires no
     * sooner than those before it; a timeout of 0 expires now, and must
     * not be put back in the lane that is expiring
     */

    for (i = 0; i < 2 && timeout; i++) {
        lane = &rl->lanes[i];

        if (lane->timeout != timeout) {
            continue;
        }

        run->lane = lane;
        run->expires = ngx_current_msec + timeout;
        ngx_queue_insert_tail(&lane->runs, &run->lane_link);

        if (!lane->timer.timer_set) {
            ngx_add_timer(&lane->timer, timeout);
        }

        return;
    }

    ngx_add_timer(&run->timer, timeout);
}


void
ngx_http_openclaw_runs_disarm(ngx_http_openclaw_run_t *run)
{
    if (run->lane) {
        ngx_queue_remove(&run->lane_link);
        run->lane = NULL;
    }

    if (run->timer.timer_set) {
        ngx_del_timer(&run->timer);
    }
}


/* when the run times out; 0 if it is not armed */

ngx_msec_t
ngx_http_openclaw_runs_expires(ngx_http_openclaw_run_t *run)
{
    if (run->lane) {
        return run->expires;
    }

    if (run->timer.timer_set) {
        return run->timer.timer.key;
    }

    return 0;
}


static void
ngx_http_openclaw_runs_lane_expired(ngx_event_t *ev)
{
    ngx_queue_t               *q;
    ngx_msec_int_t             left;
    ngx_http_openclaw_run_t   *run;
    ngx_http_openclaw_lane_t  *lane;

    lane = ev->data;

    /* the head is taken anew each time: a timeout may end other runs */

    while (!ngx_queue_empty(&lane->runs)) {
        q = ngx_queue_head(&lane->runs);
        run = ngx_queue_data(q, ngx_http_openclaw_run_t, lane_link);

        left = (ngx_msec_int_t) (run->expires - ngx_current_msec);

        if (left > 0) {
            ngx_add_timer(&lane->timer, (ngx_msec_t) left);
            return;
        }

        ngx_queue_remove(q);
        run->lane = NULL;

        ngx_http_openclaw_runs.expired(run);
    }
}


static void
ngx_http_openclaw_runs_timer_expired(ngx_event_t *ev)
{
    ngx_http_openclaw_runs.expired(ev->data);
}


/* a zeroed run, with "size" bytes in all for it and its strings */

ngx_http_openclaw_run_t *
ngx_http_openclaw_runs_alloc(size_t size, ngx_log_t *log)
{
    void                       *p;
    ngx_uint_t                  block;
    ngx_http_openclaw_run_t    *run;
    ngx_http_openclaw_runs_t   *rl;

    rl = &ngx_http_openclaw_runs;

    block = (size <= NGX_HTTP_OPENCLAW_RUN_BLOCK);

    if (block && rl->blocks) {
        p = rl->blocks;
        rl->blocks = *(void **) p;
        rl->nblocks--;

    } else {
        p = ngx_alloc(block ? NGX_HTTP_OPENCLAW_RUN_BLOCK : size, log);
        if (p == NULL) {
            return NULL;
        }
    }

    if (block) {
        /* the rest of the block is out of bounds, as after malloc(size) */
        ASAN_UNPOISON_MEMORY_REGION(p, size);
        ASAN_POISON_MEMORY_REGION((u_char *) p + size,
                                  NGX_HTTP_OPENCLAW_RUN_BLOCK - size);
    }

    run = p;
    ngx_memzero(run, sizeof(ngx_http_openclaw_run_t));
    run->block = block;

    run->timer.handler = ngx_http_openclaw_runs_timer_expired;
    run->timer.data = run;
    run->timer.log = log;
    run->timer.cancelable = 1;

    return run;
}
