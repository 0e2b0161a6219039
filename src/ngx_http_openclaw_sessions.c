
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * Sessions in shared memory, in the manner of limit_req: an rbtree keyed
 * by the session key's hash, an LRU queue, and nothing in the zone that
 * points into a worker.  The zone is reused on reload when its name and
 * size are unchanged, so sessions and their counters survive it.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_openclaw_bridge.h"
#include "ngx_http_openclaw_sessions.h"


#define NGX_HTTP_OPENCLAW_SESSION_LOG   128

/* a zone laid out by another version of the module is not reused */
#define NGX_HTTP_OPENCLAW_ZONE_MAGIC    0x6f636232
#define NGX_HTTP_OPENCLAW_ZONE_VERSION  2

/* twice per message: murmur takes four bytes a step, crc32_short half one */
#define ngx_http_openclaw_sessions_hash(key)                                  \
    ngx_murmur_hash2((key)->data, (key)->len)


typedef struct {
    u_char                      color;
    u_char                      dummy;
    u_short                     key_len;
    u_char                      agent_len;
    u_char                      uid_len;
    u_short                     sender_len;
    u_char                      error_len;
    ngx_queue_t                 queue;
    time_t                      created;
    time_t                      active;
    ngx_uint_t                  messages_in;
    ngx_uint_t                  messages_out;
    ngx_uint_t                  in_flight;
    ngx_pid_t                   owner;
    u_char                      error[NGX_HTTP_OPENCLAW_ERROR_MAX];
    u_char                      data[1];
} ngx_http_openclaw_session_node_t;


typedef struct {
    ngx_uint_t                  magic;
    ngx_uint_t                  version;
    ngx_rbtree_t                rbtree;
    ngx_rbtree_node_t           sentinel;
    ngx_queue_t                 queue;
    ngx_uint_t                  count;
    ngx_uint_t                  evicted;
} ngx_http_openclaw_sessions_sh_t;


typedef struct {
    ngx_http_openclaw_sessions_sh_t  *sh;
    ngx_slab_pool_t                  *shpool;
} ngx_http_openclaw_sessions_ctx_t;


static ngx_int_t ngx_http_openclaw_sessions_init_zone(ngx_shm_zone_t *zone,
    void *data);
static void ngx_http_openclaw_sessions_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
static ngx_http_openclaw_session_node_t *ngx_http_openclaw_sessions_lookup(
    ngx_http_openclaw_sessions_ctx_t *ctx, ngx_str_t *key, uint32_t hash);
static ngx_uint_t ngx_http_openclaw_sessions_evict(
    ngx_http_openclaw_sessions_ctx_t *ctx, u_char *evicted, size_t *len);
static ngx_int_t ngx_http_openclaw_sessions_copy(
    ngx_http_openclaw_session_node_t *sn, ngx_pool_t *pool,
    ngx_http_openclaw_session_t *s);


char *
ngx_http_openclaw_sessions_zone(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    u_char                            *p;
    ssize_t                            size;
    ngx_str_t                         *value, name, s;
    ngx_shm_zone_t                    *shm_zone;
    ngx_http_openclaw_sessions_ctx_t  *ctx;

    value = cf->args->elts;

    p = (u_char *) ngx_strchr(value[1].data, ':');

    if (p == NULL || p == value[1].data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid zone \"%V\": expected name:size, such "
                           "as sessions:10m", &value[1]);
        return NGX_CONF_ERROR;
    }

    name.data = value[1].data;
    name.len = p - name.data;

    s.data = p + 1;
    s.len = value[1].data + value[1].len - s.data;

    size = ngx_parse_size(&s);

    if (size == NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid zone size \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    if (size < (ssize_t) (8 * ngx_pagesize)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "zone \"%V\" is too small: at least %uz bytes",
                           &value[1], 8 * ngx_pagesize);
        return NGX_CONF_ERROR;
    }

    shm_zone = ngx_shared_memory_add(cf, &name, size,
                                     &ngx_http_openclaw_bridge_module);
    if (shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "duplicate zone \"%V\"", &name);
        return NGX_CONF_ERROR;
    }

    ctx = ngx_pcalloc(cf->pool, sizeof(ngx_http_openclaw_sessions_ctx_t));
    if (ctx == NULL) {
        return NGX_CONF_ERROR;
    }

    shm_zone->init = ngx_http_openclaw_sessions_init_zone;
    shm_zone->data = ctx;

    return NGX_CONF_OK;
}


char *
ngx_http_openclaw_sessions_use(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_openclaw_loc_conf_t *olcf = conf;

    ngx_str_t  *value;

    if (olcf->zone != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        olcf->zone = NULL;
        return NGX_CONF_OK;
    }

    /* size 0: a reference, resolved when the zone is declared */

    olcf->zone = ngx_shared_memory_add(cf, &value[1], 0,
                                       &ngx_http_openclaw_bridge_module);
    if (olcf->zone == NULL) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_openclaw_sessions_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_openclaw_sessions_ctx_t  *octx = data;

    size_t                             len;
    ngx_http_openclaw_sessions_ctx_t  *ctx;

    ctx = shm_zone->data;

    if (octx) {
        ctx->sh = octx->sh;
        ctx->shpool = octx->shpool;

        if (ctx->sh->magic == NGX_HTTP_OPENCLAW_ZONE_MAGIC
            && ctx->sh->version == NGX_HTTP_OPENCLAW_ZONE_VERSION)
        {
            return NGX_OK;
        }

        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                      "openclaw_bridge_zone \"%V\" was laid out by another "
                      "version of the module: restart nginx, or rename it",
                      &shm_zone->shm.name);
        return NGX_ERROR;
    }

    ctx->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        ctx->sh = ctx->shpool->data;
        return NGX_OK;
    }

    ctx->sh = ngx_slab_calloc(ctx->shpool,
                              sizeof(ngx_http_openclaw_sessions_sh_t));
    if (ctx->sh == NULL) {
        return NGX_ERROR;
    }

    ctx->shpool->data = ctx->sh;

    ctx->sh->magic = NGX_HTTP_OPENCLAW_ZONE_MAGIC;
    ctx->sh->version = NGX_HTTP_OPENCLAW_ZONE_VERSION;

    ngx_rbtree_init(&ctx->sh->rbtree, &ctx->sh->sentinel,
                    ngx_http_openclaw_sessions_insert_value);

    ngx_queue_init(&ctx->sh->queue);

    len = sizeof(" in openclaw_bridge_zone \"\"") + shm_zone->shm.name.len;

    ctx->shpool->log_ctx = ngx_slab_alloc(ctx->shpool, len);
    if (ctx->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(ctx->shpool->log_ctx, " in openclaw_bridge_zone \"%V\"%Z",
                &shm_zone->shm.name);

    /* running out of room is normal: the LRU session makes way */

    ctx->shpool->log_nomem = 0;

    return NGX_OK;
}


static void
ngx_http_openclaw_sessions_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t                 **p;
    ngx_http_openclaw_session_node_t   *sn, *snt;

    for ( ;; ) {

        if (node->key < temp->key) {
            p = &temp->left;

        } else if (node->key > temp->key) {
            p = &temp->right;

        } else {
            sn = (ngx_http_openclaw_session_node_t *) &node->color;
            snt = (ngx_http_openclaw_session_node_t *) &temp->color;

            p = (ngx_memn2cmp(sn->data, snt->data, sn->key_len,
                              snt->key_len) < 0)
                ? &temp->left : &temp->right;
        }

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


static ngx_http_openclaw_session_node_t *
ngx_http_openclaw_sessions_lookup(ngx_http_openclaw_sessions_ctx_t *ctx,
    ngx_str_t *key, uint32_t hash)
{
    ngx_int_t                          rc;
    ngx_rbtree_node_t                 *node, *sentinel;
    ngx_http_openclaw_session_node_t  *sn;

    node = ctx->sh->rbtree.root;
    sentinel = ctx->sh->rbtree.sentinel;

    while (node != sentinel) {

        if (hash < node->key) {
            node = node->left;
            continue;
        }

        if (hash > node->key) {
            node = node->right;
            continue;
        }

        sn = (ngx_http_openclaw_session_node_t *) &node->color;

        rc = ngx_memn2cmp(key->data, sn->data, key->len, sn->key_len);

        if (rc == 0) {
            return sn;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    return NULL;
}


/*
 * Frees the least recently used session with nothing in flight, looking
 * at a few from the tail; a session whose owning worker is gone (crashed,
 * so it never ran its cleanups) counts as idle.  Called locked.
 */

static ngx_uint_t
ngx_http_openclaw_sessions_evict(ngx_http_openclaw_sessions_ctx_t *ctx,
    u_char *evicted, size_t *len)
{
    ngx_uint_t                         n;
    ngx_queue_t                       *q;
    ngx_rbtree_node_t                 *node;
    ngx_http_openclaw_session_node_t  *sn;

    n = 0;

    for (q = ngx_queue_last(&ctx->sh->queue);
         q != ngx_queue_sentinel(&ctx->sh->queue) && n < 64;
         q = ngx_queue_prev(q), n++)
    {
        sn = ngx_queue_data(q, ngx_http_openclaw_session_node_t, queue);

        if (sn->in_flight
            && !(kill(sn->owner, 0) == -1 && ngx_errno == NGX_ESRCH))
        {
            continue;
        }

        *len = ngx_min(sn->key_len, *len);
        ngx_memcpy(evicted, sn->data, *len);

        ngx_queue_remove(q);

        node = (ngx_rbtree_node_t *)
                   ((u_char *) sn - offsetof(ngx_rbtree_node_t, color));

        ngx_rbtree_delete(&ctx->sh->rbtree, node);
        ngx_slab_free_locked(ctx->shpool, node);

        ctx->sh->count--;
        ctx->sh->evicted++;

        return 1;
    }

    return 0;
}


ngx_int_t
ngx_http_openclaw_sessions_start(ngx_shm_zone_t *zone, ngx_str_t *key,
    ngx_str_t *agent, ngx_str_t *uid, ngx_str_t *sender, ngx_uint_t owned)
{
    u_char                            *p;
    size_t                             size, n;
    uint32_t                           hash;
    ngx_uint_t                         evicted;
    ngx_rbtree_node_t                 *node;
    ngx_http_openclaw_sessions_ctx_t  *ctx;
    ngx_http_openclaw_session_node_t  *sn;
    u_char                             gone[NGX_HTTP_OPENCLAW_SESSION_LOG];

    ctx = zone->data;
    hash = ngx_http_openclaw_sessions_hash(key);
    evicted = 0;
    n = 0;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    sn = ngx_http_openclaw_sessions_lookup(ctx, key, hash);

    if (sn) {
        if (sn->uid_len != uid->len
            || ngx_memcmp(sn->data + sn->key_len + sn->agent_len, uid->data,
                          uid->len) != 0)
        {
            ngx_shmtx_unlock(&ctx->shpool->mutex);
            return NGX_ERROR;
        }

        if (owned
            && (sn->sender_len != ngx_min(sender->len, 65535)
                || ngx_memcmp(sn->data + sn->key_len + sn->agent_len
                              + sn->uid_len, sender->data, sn->sender_len)
                   != 0))
        {
            ngx_shmtx_unlock(&ctx->shpool->mutex);
            return NGX_BUSY;
        }

        ngx_queue_remove(&sn->queue);
        goto found;
    }

    size = offsetof(ngx_rbtree_node_t, color)
           + offsetof(ngx_http_openclaw_session_node_t, data)
           + key->len + ngx_min(agent->len, 255) + ngx_min(uid->len, 255)
           + ngx_min(sender->len, 65535);

    for ( ;; ) {
        node = ngx_slab_calloc_locked(ctx->shpool, size);

        if (node) {
            break;
        }

        n = sizeof(gone);

        if (!ngx_http_openclaw_sessions_evict(ctx, gone, &n)) {
            ngx_shmtx_unlock(&ctx->shpool->mutex);

            ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                          "openclaw_bridge_zone \"%V\" is full of sessions "
                          "with messages in flight", &zone->shm.name);
            return NGX_DECLINED;
        }

        evicted++;
    }

    node->key = hash;

    sn = (ngx_http_openclaw_session_node_t *) &node->color;

    sn->key_len = (u_short) key->len;
    sn->agent_len = (u_char) ngx_min(agent->len, 255);
    sn->uid_len = (u_char) ngx_min(uid->len, 255);
    sn->sender_len = (u_short) ngx_min(sender->len, 65535);

    p = ngx_cpymem(sn->data, key->data, key->len);
    p = ngx_cpymem(p, agent->data, sn->agent_len);
    p = ngx_cpymem(p, uid->data, sn->uid_len);
    ngx_memcpy(p, sender->data, sn->sender_len);

    sn->created = ngx_time();

    ngx_rbtree_insert(&ctx->sh->rbtree, node);
    ctx->sh->count++;

found:

    ngx_queue_insert_head(&ctx->sh->queue, &sn->queue);

    sn->active = ngx_time();
    sn->messages_in++;
    sn->in_flight++;
    sn->owner = ngx_pid;

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    if (evicted) {
        ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                      "openclaw_bridge_zone \"%V\" full: evicted %ui least "
                      "recently used session%s, the last \"%*s\"",
                      &zone->shm.name, evicted, evicted > 1 ? "s" : "",
                      n, gone);
    }

    return NGX_OK;
}


void
ngx_http_openclaw_sessions_end(ngx_shm_zone_t *zone, ngx_str_t *key,
    ngx_str_t *error)
{
    uint32_t                           hash;
    ngx_http_openclaw_sessions_ctx_t  *ctx;
    ngx_http_openclaw_session_node_t  *sn;

    ctx = zone->data;
    hash = ngx_http_openclaw_sessions_hash(key);

    ngx_shmtx_lock(&ctx->shpool->mutex);

    sn = ngx_http_openclaw_sessions_lookup(ctx, key, hash);

    if (sn) {
        sn->active = ngx_time();
        sn->messages_out++;

        if (sn->in_flight) {
            sn->in_flight--;
        }

        sn->error_len = (u_char) ngx_min(error->len,
                                         NGX_HTTP_OPENCLAW_ERROR_MAX);
        ngx_memcpy(sn->error, error->data, sn->error_len);
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);
}


ngx_int_t
ngx_http_openclaw_sessions_list(ngx_shm_zone_t *zone, ngx_str_t *agent,
    ngx_str_t *uid, ngx_str_t *sender, ngx_pool_t *pool, ngx_array_t *out)
{
    u_char                            *p;
    ngx_queue_t                       *q;
    ngx_http_openclaw_session_t       *s;
    ngx_http_openclaw_sessions_ctx_t  *ctx;
    ngx_http_openclaw_session_node_t  *sn;

    ctx = zone->data;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    for (q = ngx_queue_head(&ctx->sh->queue);
         q != ngx_queue_sentinel(&ctx->sh->queue);
         q = ngx_queue_next(q))
    {
        sn = ngx_queue_data(q, ngx_http_openclaw_session_node_t, queue);

        p = sn->data + sn->key_len;

        if (sn->agent_len != agent->len
            || ngx_memcmp(p, agent->data, agent->len) != 0)
        {
            continue;
        }

        p += sn->agent_len;

        if (sn->uid_len != uid->len || ngx_memcmp(p, uid->data, uid->len) != 0)
        {
            continue;
        }

        p += sn->uid_len;

        if (sender
            && (sn->sender_len != sender->len
                || ngx_memcmp(p, sender->data, sender->len) != 0))
        {
            continue;
        }

        s = ngx_array_push(out);

        if (s == NULL || ngx_http_openclaw_sessions_copy(sn, pool, s) != NGX_OK)
        {
            ngx_shmtx_unlock(&ctx->shpool->mutex);
            return NGX_ERROR;
        }
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    return NGX_OK;
}


ngx_int_t
ngx_http_openclaw_sessions_get(ngx_shm_zone_t *zone, ngx_str_t *key,
    ngx_pool_t *pool, ngx_http_openclaw_session_t *s)
{
    uint32_t                           hash;
    ngx_int_t                          rc;
    ngx_http_openclaw_sessions_ctx_t  *ctx;
    ngx_http_openclaw_session_node_t  *sn;

    ctx = zone->data;
    hash = ngx_http_openclaw_sessions_hash(key);

    ngx_shmtx_lock(&ctx->shpool->mutex);

    sn = ngx_http_openclaw_sessions_lookup(ctx, key, hash);

    rc = sn ? ngx_http_openclaw_sessions_copy(sn, pool, s) : NGX_DECLINED;

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    return rc;
}


void
ngx_http_openclaw_sessions_delete(ngx_shm_zone_t *zone, ngx_str_t *key)
{
    uint32_t                           hash;
    ngx_rbtree_node_t                 *node;
    ngx_http_openclaw_sessions_ctx_t  *ctx;
    ngx_http_openclaw_session_node_t  *sn;

    ctx = zone->data;
    hash = ngx_http_openclaw_sessions_hash(key);

    ngx_shmtx_lock(&ctx->shpool->mutex);

    sn = ngx_http_openclaw_sessions_lookup(ctx, key, hash);

    if (sn) {
        ngx_queue_remove(&sn->queue);

        node = (ngx_rbtree_node_t *)
                   ((u_char *) sn - offsetof(ngx_rbtree_node_t, color));

        ngx_rbtree_delete(&ctx->sh->rbtree, node);
        ngx_slab_free_locked(ctx->shpool, node);
        ctx->sh->count--;
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);
}


ngx_uint_t
ngx_http_openclaw_sessions_zone_of(ngx_shm_zone_t *zone)
{
    return zone->tag == &ngx_http_openclaw_bridge_module
           && zone->init == ngx_http_openclaw_sessions_init_zone;
}


void
ngx_http_openclaw_sessions_info(ngx_shm_zone_t *zone,
    ngx_http_openclaw_zone_info_t *info)
{
    ngx_http_openclaw_sessions_ctx_t  *ctx;

    ctx = zone->data;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    info->sessions = ctx->sh->count;
    info->evicted = ctx->sh->evicted;
    info->size = zone->shm.size;
    info->free = ctx->shpool->pfree * ngx_pagesize;

    ngx_shmtx_unlock(&ctx->shpool->mutex);
}


/* copies out of the zone: the pool allocation happens under the lock */

static ngx_int_t
ngx_http_openclaw_sessions_copy(ngx_http_openclaw_session_node_t *sn,
    ngx_pool_t *pool, ngx_http_openclaw_session_t *s)
{
    u_char  *p;
    size_t   len;

    len = sn->key_len + sn->agent_len + sn->uid_len + sn->sender_len
          + sn->error_len;

    p = ngx_pnalloc(pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(p, sn->data, len - sn->error_len);
    ngx_memcpy(p + len - sn->error_len, sn->error, sn->error_len);

    s->key.data = p;
    s->key.len = sn->key_len;
    p += sn->key_len;

    s->agent.data = p;
    s->agent.len = sn->agent_len;
    p += sn->agent_len;

    s->uid.data = p;
    s->uid.len = sn->uid_len;
    p += sn->uid_len;

    s->sender.data = p;
    s->sender.len = sn->sender_len;
    p += sn->sender_len;

    s->error.data = p;
    s->error.len = sn->error_len;

    s->created = sn->created;
    s->active = sn->active;
    s->messages_in = sn->messages_in;
    s->messages_out = sn->messages_out;
    s->in_flight = sn->in_flight;
    s->owner = sn->owner;

    return NGX_OK;
}
