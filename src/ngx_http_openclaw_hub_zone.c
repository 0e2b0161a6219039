
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_openclaw_bridge.h"
#include "ngx_http_openclaw_hub_zone.h"


/*
 * A holder that has said nothing for this long is taken for stuck or
 * gone even if its pid lives (pids are reused); it drops the link itself
 * when it wakes and finds the slot taken.
 */
#define NGX_HTTP_OPENCLAW_HUB_STALE  30


typedef struct {
    ngx_http_openclaw_hub_slot_t  slots[NGX_HTTP_OPENCLAW_HUB_SLOTS];
} ngx_http_openclaw_hub_shm_t;


typedef struct {
    ngx_queue_t                 queue;
    ngx_pid_t                   pid;
    size_t                      len;
    u_char                      id[1];
} ngx_http_openclaw_hub_flight_t;


static ngx_int_t ngx_http_openclaw_hub_zone_init(ngx_shm_zone_t *zone,
    void *data);
static ngx_uint_t ngx_http_openclaw_hub_zone_alive(ngx_pid_t pid);
static void ngx_http_openclaw_hub_zone_forget(
    ngx_http_openclaw_hub_hold_t *hold);
static ngx_int_t ngx_http_openclaw_hub_zone_pair(
    ngx_http_openclaw_hub_hold_t *hold, u_char *data, size_t len,
    ngx_uint_t take);
static uint64_t ngx_http_openclaw_hub_hash(uint64_t h, u_char *p, size_t n);


/*
 * One zone of a fixed size and name, so that every reload finds the slots
 * of the links that its old workers still hold.
 */

ngx_shm_zone_t *
ngx_http_openclaw_hub_zone_add(ngx_conf_t *cf)
{
    ngx_str_t        name;
    ngx_shm_zone_t  *zone;

    ngx_str_set(&name, "openclaw_bridge_hubs");

    zone = ngx_shared_memory_add(cf, &name,
                                 sizeof(ngx_http_openclaw_hub_shm_t)
                                 + 4 * 1024 * 1024,
                                 &ngx_http_openclaw_bridge_module);
    if (zone == NULL) {
        return NULL;
    }

    zone->init = ngx_http_openclaw_hub_zone_init;
    zone->noreuse = 0;

    return zone;
}


static ngx_int_t
ngx_http_openclaw_hub_zone_init(ngx_shm_zone_t *zone, void *data)
{
    ngx_slab_pool_t              *shpool;
    ngx_http_openclaw_hub_shm_t  *sh;

    if (data) {
        zone->data = data;
        return NGX_OK;
    }

    shpool = (ngx_slab_pool_t *) zone->shm.addr;

    if (zone->shm.exists) {
        zone->data = shpool->data;
        return NGX_OK;
    }

    sh = ngx_slab_calloc(shpool, sizeof(ngx_http_openclaw_hub_shm_t));
    if (sh == NULL) {
        return NGX_ERROR;
    }

    shpool->data = sh;
    zone->data = sh;

    return NGX_OK;
}


ngx_atomic_uint_t
ngx_http_openclaw_hub_zone_key(ngx_str_t *location, ngx_str_t *url)
{
    uint64_t  h;

    h = ngx_http_openclaw_hub_hash(14695981039346656037ULL, location->data,
                                   location->len);
    h = ngx_http_openclaw_hub_hash(h, (u_char *) "", 1);
    h = ngx_http_openclaw_hub_hash(h, url->data, url->len);

    return (ngx_atomic_uint_t) (h ? h : 1);
}


ngx_int_t
ngx_http_openclaw_hub_zone_slot(ngx_shm_zone_t *zone, ngx_atomic_uint_t key,
    ngx_atomic_uint_t *keys, ngx_uint_t n, ngx_http_openclaw_hub_hold_t *hold)
{
    ngx_uint_t                     i, j, pass, locked;
    ngx_slab_pool_t               *shpool;
    ngx_atomic_uint_t              old;
    ngx_http_openclaw_hub_shm_t   *sh;
    ngx_http_openclaw_hub_slot_t  *slot;

    sh = zone->data;

    /*
     * The passes are one step for all workers: two workers starting
     * together would otherwise both miss the link's slot in pass 0 and
     * each name a free one after it, two holders of one link.  (Not held
     * over the slot's own lock below: zone_start takes them the other
     * way round.)
     */

    shpool = (ngx_slab_pool_t *) zone->shm.addr;
    ngx_shmtx_lock(&shpool->mutex);
    locked = 1;

    for (pass = 0; pass < 3; pass++) {

        for (i = 0; i < NGX_HTTP_OPENCLAW_HUB_SLOTS; i++) {
            slot = &sh->slots[i];
            old = slot->key;

            if (pass == 0) {
                if (old != key) {
                    continue;
                }

                goto found;
            }

            if (pass == 1) {
                if (old != 0 || !ngx_atomic_cmp_set(&slot->key, 0, key)) {
                    continue;
                }

                goto taken;
            }

            /*
             * Every slot is named: one of a link that no configuration
             * has any more, whose holders are gone, is given again.
             */

            for (j = 0; j < n; j++) {
                if (keys[j] == old) {
                    break;
                }
            }

            if (j < n
                || (slot->owner
                    && ngx_http_openclaw_hub_zone_alive(slot->owner))
                || (slot->draining
                    && ngx_http_openclaw_hub_zone_alive(slot->draining))
                || !ngx_atomic_cmp_set(&slot->key, old, key))
            {
                continue;
            }

            goto taken;
        }
    }

    ngx_shmtx_unlock(&shpool->mutex);

    return NGX_ERROR;

taken:

    ngx_shmtx_unlock(&shpool->mutex);
    locked = 0;

    /* the records of a link that no configuration has any more go */

    hold->shpool = (ngx_slab_pool_t *) zone->shm.addr;
    hold->slot = slot;
    hold->mutex.spin = (ngx_uint_t) -1;

    if (ngx_shmtx_create(&hold->mutex, &slot->lock, NULL) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_shmtx_lock(&hold->mutex);
    ngx_http_openclaw_hub_zone_forget(hold);
    ngx_shmtx_unlock(&hold->mutex);

    slot->owner = 0;
    slot->up = 0;
    slot->draining = 0;
    slot->state = NGX_HTTP_OPENCLAW_HUB_DOWN;
    slot->since = ngx_time();
    slot->reconnects = 0;
    slot->queued = 0;
    slot->dropped = 0;
    slot->last_error[0] = '\0';

found:

    if (locked) {
        ngx_shmtx_unlock(&shpool->mutex);
    }

    hold->shpool = (ngx_slab_pool_t *) zone->shm.addr;
    hold->slot = slot;
    hold->mutex.spin = (ngx_uint_t) -1;

    if (ngx_shmtx_create(&hold->mutex, &slot->lock, NULL) != NGX_OK) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_openclaw_hub_zone_claim(ngx_http_openclaw_hub_hold_t *hold)
{
    ngx_pid_t                      owner;
    ngx_http_openclaw_hub_slot_t  *slot;

    slot = hold->slot;
    owner = (ngx_pid_t) slot->owner;

    if (owner == ngx_pid) {
        slot->beat = ngx_time();
        return NGX_OK;
    }

    if (ngx_exiting || ngx_quit || ngx_terminate) {
        return NGX_DECLINED;
    }

    if (owner
        && ngx_http_openclaw_hub_zone_alive(owner)
        && ngx_time() - (time_t) slot->beat < NGX_HTTP_OPENCLAW_HUB_STALE)
    {
        return NGX_DECLINED;
    }

    if (!ngx_atomic_cmp_set(&slot->owner, owner, ngx_pid)) {
        return NGX_DECLINED;
    }

    slot->beat = ngx_time();

    if (owner) {

        /* a holder killed inside the lock must not keep it */

        ngx_shmtx_force_unlock(&hold->mutex, owner);

        if ((ngx_pid_t) slot->up == owner) {
            slot->up = 0;
        }

        if ((ngx_pid_t) slot->draining == owner) {
            slot->draining = 0;
        }
    }

    return NGX_OK;
}


void
ngx_http_openclaw_hub_zone_release(ngx_http_openclaw_hub_hold_t *hold,
    ngx_uint_t delivering)
{
    ngx_http_openclaw_hub_slot_t  *slot;

    slot = hold->slot;

    if ((ngx_pid_t) slot->owner != ngx_pid) {
        return;
    }

    /* first: every frame is then taken by one of the two links */

    if (delivering) {
        slot->draining = ngx_pid;
        slot->state = NGX_HTTP_OPENCLAW_HUB_DRAINING;

    } else {
        if ((ngx_pid_t) slot->up == ngx_pid) {
            slot->up = 0;
        }

        slot->state = NGX_HTTP_OPENCLAW_HUB_DOWN;
    }

    ngx_memory_barrier();

    (void) ngx_atomic_cmp_set(&slot->owner, ngx_pid, 0);
}


void
ngx_http_openclaw_hub_zone_drained(ngx_http_openclaw_hub_hold_t *hold)
{
    ngx_http_openclaw_hub_slot_t  *slot;

    slot = hold->slot;

    (void) ngx_atomic_cmp_set(&slot->up, ngx_pid, 0);
    (void) ngx_atomic_cmp_set(&slot->draining, ngx_pid, 0);
}


ngx_int_t
ngx_http_openclaw_hub_zone_twin(ngx_http_openclaw_hub_hold_t *hold,
    u_char *data, size_t len)
{
    return ngx_http_openclaw_hub_zone_pair(hold, data, len, 0);
}


ngx_int_t
ngx_http_openclaw_hub_zone_take(ngx_http_openclaw_hub_hold_t *hold,
    u_char *data, size_t len)
{
    return ngx_http_openclaw_hub_zone_pair(hold, data, len, 1);
}


static ngx_int_t
ngx_http_openclaw_hub_zone_pair(ngx_http_openclaw_hub_hold_t *hold,
    u_char *data, size_t len, ngx_uint_t take)
{
    time_t                         now;
    uint64_t                       h;
    ngx_uint_t                     i;
    ngx_http_openclaw_hub_slot_t  *slot;

    slot = hold->slot;

    /* one link, the usual case: nothing to share */

    if (slot->draining == 0) {
        return NGX_OK;
    }

    h = ngx_http_openclaw_hub_hash(14695981039346656037ULL, data, len);

    ngx_shmtx_lock(&hold->mutex);

    now = ngx_time();

    for (i = 0; i < NGX_HTTP_OPENCLAW_HUB_SEEN; i++) {
        if (slot->seen[i] == h
            && slot->seen_pid[i] != 0
            && slot->seen_pid[i] != ngx_pid
            && now - slot->seen_time[i] <= NGX_HTTP_OPENCLAW_HUB_SEEN_TIME)
        {
            /* the other link's copy of this frame: paired, and used up */

            slot->seen_pid[i] = 0;
            ngx_shmtx_unlock(&hold->mutex);
            return NGX_DECLINED;
        }
    }

    if (!take) {
        ngx_shmtx_unlock(&hold->mutex);
        return NGX_OK;
    }

    slot->seen[slot->seen_next] = h;
    slot->seen_pid[slot->seen_next] = ngx_pid;
    slot->seen_time[slot->seen_next] = now;
    slot->seen_next = (slot->seen_next + 1) % NGX_HTTP_OPENCLAW_HUB_SEEN;

    ngx_shmtx_unlock(&hold->mutex);

    return NGX_OK;
}


void
ngx_http_openclaw_hub_zone_start(ngx_http_openclaw_hub_hold_t *hold,
    ngx_str_t *id)
{
    size_t                           len;
    ngx_http_openclaw_hub_slot_t    *slot;
    ngx_http_openclaw_hub_flight_t  *f;

    slot = hold->slot;
    len = ngx_min(id->len, NGX_HTTP_OPENCLAW_HUB_IDLEN);

    ngx_shmtx_lock(&hold->mutex);

    if (slot->flights.next == NULL) {
        ngx_queue_init(&slot->flights);
    }

    if (slot->nflights >= NGX_HTTP_OPENCLAW_HUB_FLIGHTS) {
        ngx_shmtx_unlock(&hold->mutex);
        return;
    }

    f = ngx_slab_alloc(hold->shpool,
                       offsetof(ngx_http_openclaw_hub_flight_t, id) + len);

    if (f) {
        f->pid = ngx_pid;
        f->len = (id->len <= NGX_HTTP_OPENCLAW_HUB_IDLEN) ? len : 0;
        ngx_memcpy(f->id, id->data, f->len);

        ngx_queue_insert_tail(&slot->flights, &f->queue);
        slot->nflights++;
    }

    ngx_shmtx_unlock(&hold->mutex);
}


void
ngx_http_openclaw_hub_zone_end(ngx_http_openclaw_hub_hold_t *hold,
    ngx_str_t *id)
{
    size_t                           len;
    ngx_queue_t                     *q;
    ngx_http_openclaw_hub_slot_t    *slot;
    ngx_http_openclaw_hub_flight_t  *f;

    slot = hold->slot;
    len = (id && id->len <= NGX_HTTP_OPENCLAW_HUB_IDLEN) ? id->len : 0;

    ngx_shmtx_lock(&hold->mutex);

    if (slot->flights.next == NULL) {
        ngx_shmtx_unlock(&hold->mutex);
        return;
    }

    for (q = ngx_queue_head(&slot->flights);
         q != ngx_queue_sentinel(&slot->flights);
         q = ngx_queue_next(q))
    {
        f = ngx_queue_data(q, ngx_http_openclaw_hub_flight_t, queue);

        if (f->pid == ngx_pid && f->len == len
            && (len == 0 || ngx_memcmp(f->id, id->data, len) == 0))
        {
            ngx_queue_remove(q);
            slot->nflights--;
            ngx_slab_free(hold->shpool, f);
            break;
        }
    }

    ngx_shmtx_unlock(&hold->mutex);
}


ngx_uint_t
ngx_http_openclaw_hub_zone_orphans(ngx_http_openclaw_hub_hold_t *hold,
    ngx_http_openclaw_hub_orphan_t *out, ngx_uint_t n)
{
    ngx_uint_t                       i;
    ngx_queue_t                     *q, *next;
    ngx_http_openclaw_hub_slot_t    *slot;
    ngx_http_openclaw_hub_flight_t  *f;

    slot = hold->slot;

    if (slot->nflights == 0) {
        return 0;
    }

    i = 0;

    ngx_shmtx_lock(&hold->mutex);

    for (q = ngx_queue_head(&slot->flights);
         q != ngx_queue_sentinel(&slot->flights) && i < n;
         q = next)
    {
        next = ngx_queue_next(q);
        f = ngx_queue_data(q, ngx_http_openclaw_hub_flight_t, queue);

        if (f->pid == ngx_pid || ngx_http_openclaw_hub_zone_alive(f->pid)) {
            continue;
        }

        out[i].len = f->len;
        ngx_memcpy(out[i].id, f->id, f->len);
        i++;

        ngx_queue_remove(q);
        slot->nflights--;
        ngx_slab_free(hold->shpool, f);
    }

    ngx_shmtx_unlock(&hold->mutex);

    return i;
}


/* under the lock */

static void
ngx_http_openclaw_hub_zone_forget(ngx_http_openclaw_hub_hold_t *hold)
{
    ngx_queue_t                     *q;
    ngx_http_openclaw_hub_slot_t    *slot;
    ngx_http_openclaw_hub_flight_t  *f;

    slot = hold->slot;

    if (slot->flights.next == NULL) {
        ngx_queue_init(&slot->flights);
        slot->nflights = 0;
        return;
    }

    while (!ngx_queue_empty(&slot->flights)) {
        q = ngx_queue_head(&slot->flights);
        f = ngx_queue_data(q, ngx_http_openclaw_hub_flight_t, queue);
        ngx_queue_remove(q);
        ngx_slab_free(hold->shpool, f);
    }

    slot->nflights = 0;
}


static ngx_uint_t
ngx_http_openclaw_hub_zone_alive(ngx_pid_t pid)
{
    return kill(pid, 0) == 0 || ngx_errno == NGX_EPERM;
}


/* FNV-1a: frames and names, not secrets */

static uint64_t
ngx_http_openclaw_hub_hash(uint64_t h, u_char *p, size_t n)
{
    while (n--) {
        h ^= *p++;
        h *= 1099511628211ULL;
    }

    return h;
}
