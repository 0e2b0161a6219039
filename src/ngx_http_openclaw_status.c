
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_openclaw_status.h"
#include "ngx_http_openclaw_hub.h"
#include "ngx_http_openclaw_identity.h"
#include "ngx_http_openclaw_runs.h"


/* old and new workers overlap during a reload: room for both */
#define NGX_HTTP_OPENCLAW_STATUS_SLOTS  256

/*
 * The ends of the agent's runs that the workers are saying whether they
 * delivered: a run's word is complete within moments, as every link gets
 * the same events, so a few runs at a time are enough.
 */
#define NGX_HTTP_OPENCLAW_STATUS_ENDS   128

/*
 * A worker's entry: its figures take about 600 bytes at most, and its
 * last error up to six times its size once escaped (a control byte is
 * written as \u00XX).
 */
#define NGX_HTTP_OPENCLAW_STATUS_WORKER                                       \
    (1280 + 6 * NGX_HTTP_OPENCLAW_LINK_ERRLEN)


/* a run of the agent that ended: which workers said so, and what */

typedef struct {
    uint32_t                            hash;
    u_char                              len;
    u_char                              delivered;
    u_char                              done;
    u_char                              run_id[NGX_HTTP_OPENCLAW_RUN_ID_MAX];
    u_char                              said[NGX_HTTP_OPENCLAW_STATUS_SLOTS
                                             / 8];
} ngx_http_openclaw_status_end_t;


typedef struct {
    ngx_uint_t                          nslots;
    ngx_http_openclaw_worker_status_t   slots[NGX_HTTP_OPENCLAW_STATUS_SLOTS];
    ngx_uint_t                          next_end;
    ngx_http_openclaw_status_end_t      ends[NGX_HTTP_OPENCLAW_STATUS_ENDS];
} ngx_http_openclaw_status_sh_t;


static ngx_int_t ngx_http_openclaw_status_init_zone(ngx_shm_zone_t *zone,
    void *data);
static u_char *ngx_http_openclaw_status_hub(u_char *p,
    ngx_http_openclaw_hub_status_t *hs, ngx_uint_t i);
static u_char *ngx_http_openclaw_status_worker(u_char *p,
    ngx_http_openclaw_worker_status_t *ws);


static ngx_http_openclaw_worker_status_t  *ngx_http_openclaw_status_slot;
static ngx_slab_pool_t                    *ngx_http_openclaw_status_shpool;

const char  *ngx_http_openclaw_link_states[] = {
    "down", "connecting", "upgrading", "challenge", "hello", "ready"
};


ngx_int_t
ngx_http_openclaw_status_zone(ngx_conf_t *cf,
    ngx_http_openclaw_main_conf_t *omcf)
{
    size_t      size;
    ngx_str_t   name;

    if (omcf->status) {
        return NGX_OK;
    }

    ngx_str_set(&name, "openclaw_bridge_status");

    size = ngx_align(sizeof(ngx_http_openclaw_status_sh_t), ngx_pagesize)
           + 8 * ngx_pagesize;

    omcf->status = ngx_shared_memory_add(cf, &name, size,
                                         &ngx_http_openclaw_bridge_module);
    if (omcf->status == NULL) {
        return NGX_ERROR;
    }

    omcf->status->init = ngx_http_openclaw_status_init_zone;
    omcf->status->data = omcf;

    return NGX_OK;
}


static ngx_int_t
ngx_http_openclaw_status_init_zone(ngx_shm_zone_t *zone, void *data)
{
    ngx_slab_pool_t                *shpool;
    ngx_http_openclaw_status_sh_t  *sh;

    shpool = (ngx_slab_pool_t *) zone->shm.addr;

    if (data) {

        /* the old generation's slots stay: its workers are still there */

        return NGX_OK;
    }

    if (zone->shm.exists) {
        return NGX_OK;
    }

    sh = ngx_slab_calloc(shpool, sizeof(ngx_http_openclaw_status_sh_t));
    if (sh == NULL) {
        return NGX_ERROR;
    }

    sh->nslots = NGX_HTTP_OPENCLAW_STATUS_SLOTS;
    shpool->data = sh;

    return NGX_OK;
}


ngx_http_openclaw_worker_status_t *
ngx_http_openclaw_status_attach(ngx_cycle_t *cycle,
    ngx_http_openclaw_main_conf_t *omcf)
{
    ngx_uint_t                          i;
    ngx_slab_pool_t                    *shpool;
    ngx_http_openclaw_status_sh_t      *sh;
    ngx_http_openclaw_worker_status_t  *ws;

    if (omcf->status == NULL) {
        return NULL;
    }

    shpool = (ngx_slab_pool_t *) omcf->status->shm.addr;
    sh = shpool->data;
    ws = NULL;

    ngx_shmtx_lock(&shpool->mutex);

    /* a slot is free when its worker is gone, even without a goodbye */

    for (i = 0; i < sh->nslots; i++) {
        if (sh->slots[i].pid == 0
            || (kill(sh->slots[i].pid, 0) == -1 && ngx_errno == NGX_ESRCH))
        {
            ws = &sh->slots[i];
            ngx_memzero(ws, sizeof(ngx_http_openclaw_worker_status_t));
            ws->pid = ngx_pid;
            ws->started = ngx_time();
            break;
        }
    }

    ngx_shmtx_unlock(&shpool->mutex);

    if (ws == NULL) {
        ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                      "no free slot in openclaw_bridge_status: this worker "
                      "is left out of the status");
    }

    ngx_http_openclaw_status_slot = ws;
    ngx_http_openclaw_status_shpool = ws ? shpool : NULL;

    return ws;
}


/*
 * Every worker's link gets every run's events, and each worker delivers
 * the run to its own endpoints only: a run reached nobody when every
 * worker with its link up said it did not deliver it.  The last one to
 * say so decides, once.  A worker whose link goes down before the run's
 * end never says: a later word decides without it, and without one the
 * run is not counted, which is the better error for a count of losses.
 */

ngx_int_t
ngx_http_openclaw_status_run_end(ngx_str_t *run_id, ngx_uint_t delivered)
{
    u_char                              bit;
    uint32_t                            hash;
    ngx_int_t                           rc;
    ngx_uint_t                          i, me, said, up;
    ngx_slab_pool_t                    *shpool;
    ngx_http_openclaw_status_sh_t      *sh;
    ngx_http_openclaw_status_end_t     *end;
    ngx_http_openclaw_worker_status_t  *ws;

    shpool = ngx_http_openclaw_status_shpool;

    if (shpool == NULL || run_id->len > NGX_HTTP_OPENCLAW_RUN_ID_MAX) {
        return NGX_DECLINED;
    }

    sh = shpool->data;
    me = ngx_http_openclaw_status_slot - sh->slots;
    bit = (u_char) (1 << (me % 8));
    hash = ngx_murmur_hash2(run_id->data, run_id->len);

    /* the workers whose link would have got the run's end, this one too */

    up = 1;

    for (i = 0; i < sh->nslots; i++) {
        ws = &sh->slots[i];

        if (i != me && ws->pid != 0
            && ws->link.state == NGX_HTTP_OPENCLAW_LINK_READY
            && !(kill(ws->pid, 0) == -1 && ngx_errno == NGX_ESRCH))
        {
            up++;
        }
    }

    rc = NGX_DECLINED;

    ngx_shmtx_lock(&shpool->mutex);

    end = NULL;

    for (i = 0; i < NGX_HTTP_OPENCLAW_STATUS_ENDS; i++) {
        if (sh->ends[i].hash == hash && sh->ends[i].len == run_id->len
            && ngx_memcmp(sh->ends[i].run_id, run_id->data, run_id->len)
               == 0)
        {
            end = &sh->ends[i];
            break;
        }
    }

    if (end == NULL) {
        end = &sh->ends[sh->next_end];
        sh->next_end = (sh->next_end + 1) % NGX_HTTP_OPENCLAW_STATUS_ENDS;

        ngx_memzero(end, sizeof(ngx_http_openclaw_status_end_t));
        end->hash = hash;
        end->len = (u_char) run_id->len;
        ngx_memcpy(end->run_id, run_id->data, run_id->len);
    }

    /* a second error event of the same run is no second word */

    if (end->done || (end->said[me / 8] & bit)) {
        goto done;
    }

    end->said[me / 8] |= bit;

    if (delivered) {
        end->delivered = 1;
    }

    said = 0;

    for (i = 0; i < sizeof(end->said); i++) {
        for (bit = end->said[i]; bit; bit &= bit - 1) {
            said++;
        }
    }

    if (said >= up) {
        end->done = 1;

        if (!end->delivered) {
            rc = NGX_OK;
        }
    }

done:

    ngx_shmtx_unlock(&shpool->mutex);

    return rc;
}


void
ngx_http_openclaw_status_detach(void)
{
    if (ngx_http_openclaw_status_slot) {
        ngx_http_openclaw_status_slot->pid = 0;
        ngx_http_openclaw_status_slot = NULL;
    }
}


ngx_array_t *
ngx_http_openclaw_status_workers(ngx_http_openclaw_main_conf_t *omcf,
    ngx_pool_t *pool)
{
    ngx_uint_t                          i, live;
    ngx_array_t                        *a;
    ngx_slab_pool_t                    *shpool;
    ngx_http_openclaw_status_sh_t      *sh;
    ngx_http_openclaw_worker_status_t  *ws, *copy;

    sh = NULL;
    live = 0;

    if (omcf->status) {
        shpool = (ngx_slab_pool_t *) omcf->status->shm.addr;
        sh = shpool->data;

        /* room for the slots in use now, not for all of them */

        for (i = 0; i < sh->nslots; i++) {
            if (sh->slots[i].pid) {
                live++;
            }
        }
    }

    a = ngx_array_create(pool, live ? live : 1,
                         sizeof(ngx_http_openclaw_worker_status_t));
    if (a == NULL) {
        return NULL;
    }

    for (i = 0; sh && i < sh->nslots && a->nelts < live; i++) {

        ws = &sh->slots[i];

        /* a worker killed outside nginx's control never freed its slot */

        if (ws->pid == 0
            || (kill(ws->pid, 0) == -1 && ngx_errno == NGX_ESRCH))
        {
            continue;
        }

        /*
         * A plain copy: the owner may be writing, a torn figure is fine.
         * A worker that started since the count is in the next answer.
         */

        copy = ngx_array_push(a);
        if (copy == NULL) {
            return NULL;
        }

        *copy = *ws;
    }

    return a;
}


ngx_array_t *
ngx_http_openclaw_status_zones(ngx_pool_t *pool)
{
    ngx_uint_t                        i;
    ngx_array_t                      *a;
    ngx_list_part_t                  *part;
    ngx_shm_zone_t                   *zone;
    ngx_http_openclaw_zone_status_t  *zs;

    a = ngx_array_create(pool, 4, sizeof(ngx_http_openclaw_zone_status_t));
    if (a == NULL) {
        return NULL;
    }

    for (part = (ngx_list_part_t *) &ngx_cycle->shared_memory.part;
         part;
         part = part->next)
    {
        zone = part->elts;

        for (i = 0; i < part->nelts; i++) {
            if (!ngx_http_openclaw_sessions_zone_of(&zone[i])) {
                continue;
            }

            zs = ngx_array_push(a);
            if (zs == NULL) {
                return NULL;
            }

            zs->name = zone[i].shm.name;
            ngx_http_openclaw_sessions_info(&zone[i], &zs->info);
        }
    }

    return a;
}


/*
 * The start of a GET of the status or the metrics: the request is
 * checked, and the figures are taken.  NGX_OK, or what to return.
 */

ngx_int_t
ngx_http_openclaw_status_read(ngx_http_request_t *r, ngx_array_t **workers,
    ngx_array_t **zones)
{
    ngx_int_t                       rc;
    ngx_http_openclaw_main_conf_t  *omcf;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    omcf = ngx_http_get_module_main_conf(r, ngx_http_openclaw_bridge_module);

    *workers = ngx_http_openclaw_status_workers(omcf, r->pool);
    *zones = ngx_http_openclaw_status_zones(r->pool);

    if (*workers == NULL || *zones == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return NGX_OK;
}


/* the answer, whole in "b", with its content type */

ngx_int_t
ngx_http_openclaw_status_send(ngx_http_request_t *r, ngx_buf_t *b,
    ngx_str_t *type)
{
    ngx_int_t    rc;
    ngx_chain_t  out;

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = b->last - b->pos;
    r->headers_out.content_type = *type;
    r->headers_out.content_type_len = type->len;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


ngx_int_t
ngx_http_openclaw_status_handler(ngx_http_request_t *r)
{
    u_char                             *p;
    size_t                              size;
    ngx_int_t                           rc;
    ngx_buf_t                          *b;
    ngx_uint_t                          i;
    ngx_str_t                           type;
    ngx_array_t                        *workers, *zones, *hubs;
    ngx_http_openclaw_hub_status_t     *hs;
    ngx_http_openclaw_zone_status_t    *zs;
    ngx_http_openclaw_main_conf_t      *omcf;
    ngx_http_openclaw_worker_status_t  *ws;

    rc = ngx_http_openclaw_status_read(r, &workers, &zones);

    if (rc != NGX_OK) {
        return rc;
    }

    omcf = ngx_http_get_module_main_conf(r, ngx_http_openclaw_bridge_module);

    ws = workers->elts;
    zs = zones->elts;

    hubs = ngx_http_openclaw_hub_links(r->pool);
    if (hubs == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    hs = hubs->elts;

    size = sizeof("{\"identity\":,\"workers\":[],\"zones\":[],"
                  "\"hubs\":[]}\n")
           + NGX_HTTP_OPENCLAW_IDENTITY_STATUS_LEN
           + workers->nelts * NGX_HTTP_OPENCLAW_STATUS_WORKER;

    for (i = 0; i < zones->nelts; i++) {
        size += 512 + zs[i].name.len;
    }

    /* escaped, a byte takes at most six */

    for (i = 0; i < hubs->nelts; i++) {
        size += 256 + 6 * (hs[i].url.len + hs[i].location.len + hs[i].uid.len
                           + sizeof(hs[i].last_error));
    }

    b = ngx_create_temp_buf(r->pool, size);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_cpymem(b->last, "{\"identity\":", 12);
    p = ngx_http_openclaw_identity_status(omcf->identity, p);
    p = ngx_cpymem(p, ",\"workers\":[", 12);

    for (i = 0; i < workers->nelts; i++) {
        if (i) {
            *p++ = ',';
        }

        p = ngx_http_openclaw_status_worker(p, &ws[i]);
    }

    p = ngx_cpymem(p, "],\"zones\":[", 11);

    for (i = 0; i < zones->nelts; i++) {
        p = ngx_sprintf(p, "%s{\"name\":\"%V\",\"size\":%uz,"
                        "\"free\":%uz,\"sessions\":%ui,"
                        "\"evicted\":%ui}",
                        i ? "," : "", &zs[i].name,
                        zs[i].info.size, zs[i].info.free,
                        zs[i].info.sessions, zs[i].info.evicted);
    }

    p = ngx_cpymem(p, "],\"hubs\":[", 10);

    for (i = 0; i < hubs->nelts; i++) {
        p = ngx_http_openclaw_status_hub(p, &hs[i], i);
    }

    p = ngx_cpymem(p, "]}\n", 3);

    b->last = p;

    ngx_str_set(&type, "application/json");

    return ngx_http_openclaw_status_send(r, b, &type);
}


static u_char *
ngx_http_openclaw_status_hub(u_char *p, ngx_http_openclaw_hub_status_t *hs,
    ngx_uint_t i)
{
    p = ngx_cpymem(p, i ? ",{\"url\":\"" : "{\"url\":\"", i ? 9 : 8);
    p = (u_char *) ngx_escape_json(p, hs->url.data, hs->url.len);
    p = ngx_cpymem(p, "\",\"location\":\"", 14);
    p = (u_char *) ngx_escape_json(p, hs->location.data, hs->location.len);
    p = ngx_cpymem(p, "\",\"uid\":\"", 9);
    p = (u_char *) ngx_escape_json(p, hs->uid.data, hs->uid.len);

    p = ngx_sprintf(p, "\",\"state\":\"%s\",\"pid\":%P,\"since\":%T,"
                    "\"reconnects\":%ui,\"queued\":%ui,\"dropped\":%ui,"
                    "\"last_error\":\"",
                    ngx_http_openclaw_hub_states[hs->state], hs->pid,
                    hs->since, hs->reconnects, hs->queued, hs->dropped);

    p = (u_char *) ngx_escape_json(p, hs->last_error,
                                   ngx_strlen(hs->last_error));

    return ngx_cpymem(p, "\"}", 2);
}


static u_char *
ngx_http_openclaw_status_worker(u_char *p,
    ngx_http_openclaw_worker_status_t *ws)
{
    size_t                           len;
    ngx_http_openclaw_link_info_t   *link;
    ngx_http_openclaw_relay_stats_t *rs;

    link = &ws->link;
    rs = &ws->relay;

    len = ngx_strnlen(link->last_error, sizeof(link->last_error));

    p = ngx_sprintf(p, "{\"pid\":%P,\"started\":%T,"
                    "\"link\":{\"state\":\"%s\",\"protocol\":%ui,"
                    "\"since\":%T,\"reconnects\":%ui,\"last_error\":\"",
                    ws->pid, ws->started,
                    ngx_http_openclaw_link_states[link->state],
                    link->protocol, link->since, link->reconnects);

    p = (u_char *) ngx_escape_json(p, link->last_error, len);

    p = ngx_sprintf(p, "\"},\"clients\":%ui,\"messages_in\":%ui,"
                    "\"messages_out\":%ui,\"completed\":%ui,"
                    "\"runs_in_flight\":%ui,\"waiting_for_link\":%ui,"
                    "\"agent_runs\":%ui,\"agent_runs_undelivered\":%ui,"
                    "\"errors\":{\"input\":%ui,"
                    "\"gateway\":%ui,\"timeout\":%ui,\"link\":%ui,"
                    "\"overload\":%ui},"
                    "\"callbacks\":{\"pending\":%ui,\"delivered\":%ui,"
                    "\"failed\":%ui,\"retries\":%ui}}",
                    rs->clients, rs->messages_in, rs->messages_out,
                    rs->completed, rs->runs, rs->waiting, rs->pushed,
                    rs->undelivered,
                    rs->errors_input,
                    rs->errors_gateway, rs->errors_timeout, rs->errors_link,
                    rs->errors_overload, ws->callbacks.pending,
                    ws->callbacks.delivered, ws->callbacks.failed,
                    ws->callbacks.retries);

    return p;
}
