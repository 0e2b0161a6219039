
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_openclaw_bridge.h"
#include "ngx_http_openclaw_push.h"
#include "ngx_http_openclaw_runs.h"
#include "ngx_http_openclaw_sessions.h"
#include "ngx_http_openclaw_status.h"


/*
 * Runs first seen while a message of their session was in flight: they
 * may be its hand-over, so none of their later events makes them an
 * agent's run.
 */
#define NGX_HTTP_OPENCLAW_PUSH_NOT   64


typedef struct {
    ngx_queue_t                     endpoints;
    ngx_pool_t                     *pool;      /* for zone lookups */
    ngx_uint_t                      next;
    size_t                          len[NGX_HTTP_OPENCLAW_PUSH_NOT];
    u_char                          not[NGX_HTTP_OPENCLAW_PUSH_NOT]
                                       [NGX_HTTP_OPENCLAW_RUN_ID_MAX];
} ngx_http_openclaw_push_t;


typedef struct {
    ngx_shm_zone_t                 *zone;
    ngx_int_t                       rc;
    ngx_http_openclaw_session_t     s;
} ngx_http_openclaw_push_record_t;


static ngx_uint_t ngx_http_openclaw_push_webhook(ngx_str_t *session);
static ngx_uint_t ngx_http_openclaw_push_known(ngx_str_t *run_id);
static ngx_uint_t ngx_http_openclaw_push_under(ngx_str_t *session,
    ngx_str_t *part, size_t at);


static ngx_http_openclaw_push_t  ngx_http_openclaw_push;


ngx_int_t
ngx_http_openclaw_push_init(ngx_cycle_t *cycle)
{
    ngx_queue_init(&ngx_http_openclaw_push.endpoints);

    ngx_http_openclaw_push.pool = ngx_create_pool(4096, cycle->log);
    if (ngx_http_openclaw_push.pool == NULL) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


void
ngx_http_openclaw_push_add(ngx_http_openclaw_endpoint_t *ep)
{
    /* the newest first: the connection a user opened last */

    ngx_queue_insert_head(&ngx_http_openclaw_push.endpoints, &ep->push_link);
}


void
ngx_http_openclaw_push_remove(ngx_http_openclaw_endpoint_t *ep)
{
    ngx_queue_remove(&ep->push_link);
}


ngx_http_openclaw_endpoint_t *
ngx_http_openclaw_push_endpoint(ngx_str_t *run_id, ngx_str_t *session)
{
    size_t                            plen;
    ngx_queue_t                      *q;
    ngx_http_openclaw_endpoint_t     *ep, *found;
    ngx_http_openclaw_push_record_t   rec;

    /*
     * The agent's sessions of webhooks only, agent:<agent>:webhook...:
     * every run of the agent's other channels comes here too, and is
     * turned away before any endpoint is looked at.
     */

    if (!ngx_http_openclaw_push_webhook(session)
        || run_id->len > NGX_HTTP_OPENCLAW_RUN_ID_MAX
        || ngx_queue_empty(&ngx_http_openclaw_push.endpoints)
        || ngx_http_openclaw_push_known(run_id))
    {
        return NULL;
    }

    rec.zone = NULL;
    found = NULL;

    for (q = ngx_queue_head(&ngx_http_openclaw_push.endpoints);
         q != ngx_queue_sentinel(&ngx_http_openclaw_push.endpoints);
         q = ngx_queue_next(q))
    {
        ep = ngx_queue_data(q, ngx_http_openclaw_endpoint_t, push_link);

        plen = ep->scope.prefix.len;

        if (!ep->push
            || session->len <= plen + 1
            || ngx_strncmp(session->data, ep->scope.prefix.data, plen) != 0
            || session->data[plen] != ':')
        {
            continue;
        }

        /* with a zone, the session's record says whose it is */

        if (ep->conf->zone) {

            if (rec.zone != ep->conf->zone) {
                ngx_reset_pool(ngx_http_openclaw_push.pool);

                rec.zone = ep->conf->zone;
                rec.rc = ngx_http_openclaw_sessions_get(rec.zone, session,
                                                  ngx_http_openclaw_push.pool,
                                                  &rec.s);

                /* a message of another worker is in flight in it */

                if (rec.rc == NGX_OK && rec.s.in_flight) {
                    ngx_http_openclaw_push_not(run_id);
                    found = NULL;
                    break;
                }
            }

            if (rec.rc == NGX_OK) {
                if (ep->scope.shared
                    || (rec.s.sender.len == ep->sender.len
                        && ngx_strncmp(rec.s.sender.data, ep->sender.data,
                                       ep->sender.len) == 0))
                {
                    found = ep;
                    break;
                }

                continue;
            }
        }

        /* without a record: a sender's own part, or a hub link's uid */

        if (ep->push_uid
            || ngx_http_openclaw_push_under(session, &ep->scope.fallback,
                                            plen + 1))
        {
            found = ep;
            break;
        }
    }

    ngx_reset_pool(ngx_http_openclaw_push.pool);

    return found;
}


ngx_int_t
ngx_http_openclaw_push_end(ngx_str_t *run_id, ngx_str_t *session,
    ngx_uint_t delivered)
{
    if (!ngx_http_openclaw_push_webhook(session)) {
        return NGX_DECLINED;
    }

    /* a run that may be a message's hand-over is that message's */

    if (ngx_http_openclaw_push_known(run_id)) {
        delivered = 1;
    }

    return ngx_http_openclaw_status_run_end(run_id, delivered);
}


/* "session" has "part" at "at", whole or followed by more parts */

static ngx_uint_t
ngx_http_openclaw_push_under(ngx_str_t *session, ngx_str_t *part, size_t at)
{
    if (part->len == 0 || session->len < at + part->len
        || ngx_strncmp(session->data + at, part->data, part->len) != 0)
    {
        return 0;
    }

    return session->len == at + part->len
           || session->data[at + part->len] == ':';
}


static ngx_uint_t
ngx_http_openclaw_push_webhook(ngx_str_t *session)
{
    u_char  *p, *last;

    last = session->data + session->len;

    if (session->len < sizeof("agent:x:webhook:") - 1
        || ngx_strncmp(session->data, "agent:", 6) != 0)
    {
        return 0;
    }

    p = ngx_strlchr(session->data + 6, last, ':');

    return p && last - p > 8 && ngx_strncmp(p, ":webhook:", 9) == 0;
}


static ngx_uint_t
ngx_http_openclaw_push_known(ngx_str_t *run_id)
{
    ngx_uint_t                 i;
    ngx_http_openclaw_push_t  *p;

    p = &ngx_http_openclaw_push;

    for (i = 0; i < NGX_HTTP_OPENCLAW_PUSH_NOT; i++) {
        if (p->len[i] == run_id->len
            && ngx_memcmp(p->not[i], run_id->data, run_id->len) == 0)
        {
            return 1;
        }
    }

    return 0;
}


void
ngx_http_openclaw_push_not(ngx_str_t *run_id)
{
    ngx_http_openclaw_push_t  *p;

    p = &ngx_http_openclaw_push;

    ngx_memcpy(p->not[p->next], run_id->data, run_id->len);
    p->len[p->next] = run_id->len;
    p->next = (p->next + 1) % NGX_HTTP_OPENCLAW_PUSH_NOT;
}
