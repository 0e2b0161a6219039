
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * The relay: every accepted client message becomes a run on the gateway,
 * and the run's chat events stream back to exactly that client.  The
 * gateway broadcasts every session's events to every operator link, so a
 * run is found by the run id this module chose, and nothing else is ever
 * forwarded.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_openclaw_relay.h"
#include "ngx_http_openclaw_gateway.h"
#include "ngx_http_openclaw_message.h"
#include "ngx_http_openclaw_sessions.h"
#include "ngx_http_openclaw_control.h"
#include "ngx_http_openclaw_reply.h"
#include "ngx_http_openclaw_runs.h"
#include "ngx_http_openclaw_handover.h"
#include "ngx_http_openclaw_push.h"



/*
 * How long a run that ended without text waits for the run carrying its
 * reply once nothing else runs in its session (protocol 4 hands over
 * promptly; protocol 3 may take minutes, and waits run_timeout).
 */
#define NGX_HTTP_OPENCLAW_ADOPT_GRACE   15000

/*
 * A session in which a connection has runs, when its location has a zone:
 * the connection's sessions are counted as they come and go, where
 * counting them from its runs took a pass over the runs for each run.
 */

struct ngx_http_openclaw_held_s {
    ngx_queue_t                     link;
    ngx_uint_t                      runs;
    size_t                          len;
    u_char                          data[1];
};




/* the members of a chat event, found in one pass */

enum {
    C_RUN_ID = 0, C_STATE, C_MESSAGE, C_DELTA, C_REPLACE, C_ERROR, C_SESSION,
    C_N
};


typedef struct {
    ngx_http_openclaw_main_conf_t  *conf;
    ngx_queue_t                     waiting;
    ngx_queue_t                     sent;
    ngx_uint_t                      protocol;
    ngx_uint_t                      connections;
    ngx_uint_t                      adopting;
    ngx_http_openclaw_relay_stats_t *stats;
} ngx_http_openclaw_relay_t;


static ngx_uint_t ngx_http_openclaw_relay_bad_name(ngx_str_t *name,
    size_t max);
static ngx_http_openclaw_held_t *ngx_http_openclaw_relay_held(
    ngx_http_openclaw_endpoint_t *ep, ngx_str_t *session);
static ngx_http_openclaw_held_t *ngx_http_openclaw_relay_hold(
    ngx_http_openclaw_endpoint_t *ep, ngx_http_openclaw_held_t *held,
    ngx_str_t *session);
static void ngx_http_openclaw_relay_release(ngx_http_openclaw_endpoint_t *ep,
    ngx_http_openclaw_held_t *held);
static u_char *ngx_http_openclaw_relay_lower(u_char *dst, ngx_str_t *src);
static ngx_int_t ngx_http_openclaw_relay_chat(ngx_http_openclaw_endpoint_t *ep,
    ngx_http_openclaw_inbound_t *in);
static void ngx_http_openclaw_relay_send(ngx_http_openclaw_run_t *run);
static void ngx_http_openclaw_relay_acked(ngx_http_openclaw_rpc_t *rpc,
    ngx_http_openclaw_jv_t *res);
static const char *ngx_http_openclaw_relay_text(ngx_http_openclaw_jv_t *obj,
    const char *name, u_char *buf, size_t size, const char *none);
static const char *ngx_http_openclaw_relay_decode(ngx_http_openclaw_jv_t *v,
    u_char *buf, size_t size, const char *none);
static ngx_int_t ngx_http_openclaw_relay_lost(ngx_http_openclaw_run_t *run,
    const char *how, const char *why);
static void ngx_http_openclaw_relay_fetch(ngx_http_openclaw_run_t *run);
static ngx_int_t ngx_http_openclaw_relay_reply_in(
    ngx_http_openclaw_run_t *run, ngx_http_openclaw_jv_t *messages,
    ngx_http_openclaw_jv_t *reply);
static void ngx_http_openclaw_relay_history(ngx_http_openclaw_rpc_t *rpc,
    ngx_http_openclaw_jv_t *res);
static void ngx_http_openclaw_relay_run_event(ngx_http_openclaw_run_t *run,
    ngx_http_openclaw_jv_t *ev);
static ngx_int_t ngx_http_openclaw_relay_progress(
    ngx_http_openclaw_run_t *run, ngx_http_openclaw_jv_t *ev);
static ngx_int_t ngx_http_openclaw_relay_text_reply(
    ngx_http_openclaw_run_t *run, const char *type, ngx_str_t *content,
    ngx_str_t *delta, ngx_uint_t replaced, ngx_str_t *error);
static ngx_int_t ngx_http_openclaw_relay_retext(
    ngx_http_openclaw_run_t *run, ngx_str_t *text, ngx_uint_t replaced);
static ngx_uint_t ngx_http_openclaw_relay_extends(
    ngx_http_openclaw_run_t *run, ngx_str_t *text);
static ngx_int_t ngx_http_openclaw_relay_added(ngx_http_openclaw_run_t *run,
    ngx_str_t *added, ngx_uint_t replaced);
static ngx_int_t ngx_http_openclaw_relay_set_text(
    ngx_http_openclaw_run_t *run, u_char *text, size_t len);
static ngx_http_openclaw_run_t *ngx_http_openclaw_relay_adopt(
    ngx_http_openclaw_jv_t *ev, ngx_str_t *run_id);
static ngx_http_openclaw_run_t *ngx_http_openclaw_relay_push(
    ngx_http_openclaw_jv_t *ev, ngx_str_t *run_id);
static ngx_uint_t ngx_http_openclaw_relay_busy(ngx_str_t *session);
static ngx_int_t ngx_http_openclaw_relay_adopt_stray(
    ngx_http_openclaw_run_t *run);
static void ngx_http_openclaw_relay_settle(ngx_str_t *session);
static void ngx_http_openclaw_relay_end(ngx_str_t *run_id,
    ngx_http_openclaw_jv_t *ev, ngx_http_openclaw_run_t *run);
static ngx_uint_t ngx_http_openclaw_relay_empty(ngx_http_openclaw_jv_t *ev);
static void ngx_http_openclaw_relay_stray(ngx_str_t *run_id,
    ngx_http_openclaw_jv_t *ev);
static void ngx_http_openclaw_relay_timeout(ngx_http_openclaw_run_t *run);
static void ngx_http_openclaw_relay_abort(ngx_http_openclaw_run_t *run);
static void ngx_http_openclaw_relay_complete(ngx_http_openclaw_run_t *run,
    ngx_str_t *text, ngx_str_t *media);
static void ngx_http_openclaw_relay_final(ngx_http_openclaw_run_t *run,
    ngx_http_openclaw_jv_t *message, ngx_str_t *text);
static void ngx_http_openclaw_relay_fail(ngx_http_openclaw_run_t *run,
    const char *fmt, ...);
static void ngx_http_openclaw_relay_free(ngx_http_openclaw_run_t *run,
    ngx_str_t *error);


static ngx_http_openclaw_relay_t  ngx_http_openclaw_relay;


ngx_int_t
ngx_http_openclaw_relay_init_process(ngx_cycle_t *cycle,
    ngx_http_openclaw_main_conf_t *omcf)
{
    ngx_http_openclaw_relay_t  *rl;

    rl = &ngx_http_openclaw_relay;

    rl->conf = omcf;

    if (ngx_http_openclaw_runs_init(cycle, omcf->request_timeout,
                                    omcf->run_timeout,
                                    ngx_http_openclaw_relay_timeout)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_queue_init(&rl->waiting);
    ngx_queue_init(&rl->sent);

    return ngx_http_openclaw_push_init(cycle);
}


void
ngx_http_openclaw_relay_count_out(void)
{
    ngx_http_openclaw_relay.stats->messages_out++;
}


void
ngx_http_openclaw_relay_set_stats(ngx_http_openclaw_relay_stats_t *stats)
{
    ngx_http_openclaw_relay.stats = stats;
}


ngx_int_t
ngx_http_openclaw_relay_message(ngx_http_openclaw_endpoint_t *ep,
    ngx_uint_t binary, u_char *data, size_t len)
{
    ngx_int_t                     rc;
    ngx_str_t                     error;
    const char                   *err;
    ngx_http_openclaw_inbound_t   in;

    ngx_http_openclaw_relay.stats->messages_in++;
    ep->messages_in++;

    if (binary) {
        ngx_http_openclaw_relay.stats->errors_input++;
        ngx_str_set(&error, "binary messages are not supported: send the "
                            "message as JSON text");
        return ngx_http_openclaw_relay_reply(ep, "error", NULL, NULL, &error,
                                             NULL, NULL);
    }

    err = NULL;

    if (ngx_http_openclaw_message_parse(data, len, &in, &err) != NGX_OK) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ep->log, 0,
                       "openclaw bad message: %s", err);

        ngx_http_openclaw_relay.stats->errors_input++;
        error.data = (u_char *) err;
        error.len = ngx_strlen(err);

        rc = ngx_http_openclaw_relay_reply(ep, "error", NULL, NULL, &error,
                                           NULL, &in.id_json);
        return rc;
    }

    if (ep->track && in.type != NGX_HTTP_OPENCLAW_MSG_IGNORED) {
        ep->track(ep, 0, &in.id_json);
    }

    switch (in.type) {

    case NGX_HTTP_OPENCLAW_MSG_IGNORED:
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ep->log, 0,
                       "openclaw ignored a \"%V\" message", &in.type_name);

        /* not a message in: it gets no reply either */

        ngx_http_openclaw_relay.stats->messages_in--;
        ep->messages_in--;
        rc = NGX_OK;
        break;

    case NGX_HTTP_OPENCLAW_MSG_CHAT:
        rc = ngx_http_openclaw_relay_chat(ep, &in);
        break;

    default:
        rc = ngx_http_openclaw_control(ep, &in);
        break;
    }

    return rc;
}


/* they become parts of session keys: no separators, bounded */

ngx_int_t
ngx_http_openclaw_relay_check(ngx_str_t *agent, ngx_str_t *uid,
    ngx_str_t *sender)
{
    if (ngx_http_openclaw_relay_bad_name(agent, 64)
        || ngx_http_openclaw_relay_bad_name(uid, 128)
        || ngx_http_openclaw_relay_bad_name(sender, 200))
    {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/*
 * An endpoint's identity: its agent, uid and sender become parts of
 * session keys, so they are checked here, for every transport alike.
 */

ngx_int_t
ngx_http_openclaw_relay_endpoint(ngx_http_openclaw_endpoint_t *ep,
    ngx_pool_t *pool, ngx_str_t *agent, ngx_str_t *uid, ngx_str_t *sender)
{
    u_char                        *p;
    ngx_str_t                      main;
    ngx_http_openclaw_loc_conf_t  *conf;

    conf = ep->conf;

    if (agent->len == 0) {
        ngx_str_set(&main, "main");
        agent = &main;
    }

    if (ngx_http_openclaw_relay_check(agent, uid, sender) != NGX_OK) {
        return NGX_DECLINED;
    }

    ngx_queue_init(&ep->runs);
    ngx_queue_init(&ep->controls);
    ep->nruns = 0;

    ep->scope.scope = conf->scope;
    ep->scope.namespace = conf->namespace;
    ep->scope.shared = (conf->control == NGX_HTTP_OPENCLAW_CONTROL_ALL);

    ngx_queue_init(&ep->sessions);
    ep->nsessions = 0;

    p = ngx_pnalloc(pool, 2 * agent->len + 2 * uid->len + sender->len + 128);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ep->scope.agent.data = p;
    p = ngx_http_openclaw_relay_lower(p, agent);
    ep->scope.agent.len = p - ep->scope.agent.data;

    ep->scope.uid.data = p;
    p = ngx_http_openclaw_relay_lower(p, uid);
    ep->scope.uid.len = p - ep->scope.uid.data;

    ep->scope.prefix.data = p;
    p = ngx_sprintf(p, "agent:%V:webhook", &ep->scope.agent);

    if (uid->len) {
        p = ngx_sprintf(p, ":uid:%V", &ep->scope.uid);
    }

    ep->scope.prefix.len = p - ep->scope.prefix.data;

    /* an endpoint without a sender identity is a sender of its own */

    ep->scope.fallback.data = p;

    if (sender->len) {
        p = ngx_cpymem(p, "sender:", 7);
        p = ngx_http_openclaw_relay_lower(p, sender);

    } else {
        p = ngx_sprintf(p, "conn:%P-%ui", ngx_pid,
                        ++ngx_http_openclaw_relay.connections);
    }

    ep->scope.fallback.len = p - ep->scope.fallback.data;

    ep->sender.data = ep->scope.fallback.data;
    ep->sender.len = ep->scope.fallback.len;

    /* room for the last session key, kept for the log */

    ep->session.data = ngx_pnalloc(pool, NGX_HTTP_OPENCLAW_SESSION_MAX);
    if (ep->session.data == NULL) {
        return NGX_ERROR;
    }

    ep->session.len = 0;

    ngx_http_openclaw_push_add(ep);

    ngx_http_openclaw_relay.stats->clients++;

    return NGX_OK;
}


static ngx_uint_t
ngx_http_openclaw_relay_bad_name(ngx_str_t *name, size_t max)
{
    size_t  i;
    u_char  c;

    if (name->len > max) {
        return 1;
    }

    for (i = 0; i < name->len; i++) {
        c = name->data[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
              || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
        {
            return 1;
        }
    }

    return 0;
}


/*
 * The connection's record of "session", or NULL when it has no run there.
 * There are at most max_sessions records: a pass costs no more than that,
 * however many runs are in flight.
 */

static ngx_http_openclaw_held_t *
ngx_http_openclaw_relay_held(ngx_http_openclaw_endpoint_t *ep,
    ngx_str_t *session)
{
    ngx_queue_t               *q;
    ngx_http_openclaw_held_t  *held;

    for (q = ngx_queue_head(&ep->sessions);
         q != ngx_queue_sentinel(&ep->sessions);
         q = ngx_queue_next(q))
    {
        held = ngx_queue_data(q, ngx_http_openclaw_held_t, link);

        if (held->len == session->len
            && ngx_memcmp(held->data, session->data, session->len) == 0)
        {
            return held;
        }
    }

    return NULL;
}


/* one more run in "session": its record, made if needed, or NULL */

static ngx_http_openclaw_held_t *
ngx_http_openclaw_relay_hold(ngx_http_openclaw_endpoint_t *ep,
    ngx_http_openclaw_held_t *held, ngx_str_t *session)
{
    if (held == NULL) {
        held = ngx_alloc(sizeof(ngx_http_openclaw_held_t) + session->len,
                         ngx_cycle->log);
        if (held == NULL) {
            return NULL;
        }

        held->runs = 0;
        held->len = session->len;
        ngx_memcpy(held->data, session->data, session->len);

        ngx_queue_insert_tail(&ep->sessions, &held->link);
        ep->nsessions++;
    }

    held->runs++;

    return held;
}


static void
ngx_http_openclaw_relay_release(ngx_http_openclaw_endpoint_t *ep,
    ngx_http_openclaw_held_t *held)
{
    if (--held->runs) {
        return;
    }

    ngx_queue_remove(&held->link);
    ep->nsessions--;
    ngx_free(held);
}


static u_char *
ngx_http_openclaw_relay_lower(u_char *dst, ngx_str_t *src)
{
    size_t  i;

    for (i = 0; i < src->len; i++) {
        *dst++ = ngx_tolower(src->data[i]);
    }

    return dst;
}


static ngx_int_t
ngx_http_openclaw_relay_chat(ngx_http_openclaw_endpoint_t *ep,
    ngx_http_openclaw_inbound_t *in)
{
    u_char                         *p;
    size_t                          size, queued, max;
    uint32_t                        hash;
    ngx_int_t                       rc;
    ngx_uint_t                      advertised;
    ngx_str_t                       session, error, run_id, params;
    const char                     *err;
    ngx_http_openclaw_run_t        *run;
    ngx_http_openclaw_json_t        j;
    ngx_http_openclaw_held_t       *held;
    ngx_http_openclaw_relay_t      *rl;
    ngx_http_openclaw_loc_conf_t   *conf;
    u_char                          key[NGX_HTTP_OPENCLAW_SESSION_MAX];
    u_char                          rid[NGX_HTTP_OPENCLAW_RUN_ID_LEN];
    u_char                          buf[192];

    rl = &ngx_http_openclaw_relay;
    conf = ep->conf;
    held = NULL;

    if (ep->nruns >= conf->max_in_flight) {
        rl->stats->errors_input++;
        ngx_str_set(&error, "too many messages in flight on this "
                            "connection: wait for their replies");
        return ngx_http_openclaw_relay_reply(ep, "error", NULL, NULL, &error,
                                             NULL, &in->id_json);
    }

    /*
     * The gateway would refuse an image over its limit only after the
     * whole message crossed the link; the limit is the one of the last
     * hello-ok, so that a message waiting for the link is checked too.
     */

    if (in->nattachments) {
        max = ngx_http_openclaw_gateway_max_image(&advertised);

        if (in->largest_size > max) {
            rl->stats->errors_input++;
            error.data = buf;
            error.len = ngx_snprintf(buf, sizeof(buf), "attachments[%ui]"
                                     ".content is %uz bytes decoded, over "
                                     "the gateway's limit of %uz bytes for "
                                     "an image (%s)", in->largest,
                                     in->largest_size, max,
                                     advertised
                                     ? "policy.attachments.maxImageBytes"
                                     : "the gateway advertises none; "
                                       "protocol 3's")
                        - buf;
            return ngx_http_openclaw_relay_reply(ep, "error", NULL, NULL,
                                                 &error, NULL, &in->id_json);
        }
    }

    /*
     * Whatever the connections' own limits, what a worker holds is
     * bounded: past it a message costs nothing and reaches no gateway.
     */

    if (ngx_http_openclaw_runs_count() >= rl->conf->max_runs) {
        rl->stats->errors_overload++;
        error.data = buf;
        error.len = ngx_snprintf(buf, sizeof(buf), "the worker has %ui "
                                 "messages in flight, its limit "
                                 "(openclaw_gateway_max_runs): try again "
                                 "later", ngx_http_openclaw_runs_count())
                    - buf;
        return ngx_http_openclaw_relay_reply(ep, "error", NULL, NULL, &error,
                                             NULL, &in->id_json);
    }

    queued = ngx_http_openclaw_gateway_queued();

    if (queued >= rl->conf->max_queued) {
        rl->stats->errors_overload++;
        error.data = buf;
        error.len = ngx_snprintf(buf, sizeof(buf), "the worker has %uz "
                                 "bytes queued towards the gateway, its "
                                 "limit (openclaw_gateway_max_queued): try "
                                 "again later", queued)
                    - buf;
        return ngx_http_openclaw_relay_reply(ep, "error", NULL, NULL, &error,
                                             NULL, &in->id_json);
    }

    if (ngx_http_openclaw_message_session(in, &ep->scope, key, &session,
                                          &err)
        != NGX_OK)
    {
        rl->stats->errors_input++;
        error.data = (u_char *) err;
        error.len = ngx_strlen(err);
        return ngx_http_openclaw_relay_reply(ep, "error", NULL, NULL, &error,
                                             NULL, &in->id_json);
    }

    ngx_memcpy(ep->session.data, session.data, session.len);
    ep->session.len = session.len;

    ngx_http_openclaw_message_run_id(&session, &ep->sender, &in->id, rid);

    run_id.data = rid;
    run_id.len = NGX_HTTP_OPENCLAW_RUN_ID_LEN;

    /*
     * Run ids are hashed for every gateway event too: murmur takes four
     * bytes a step, where ngx_crc32_short() takes half a byte.
     */

    hash = ngx_murmur_hash2(rid, run_id.len);

    if (ngx_http_openclaw_runs_find(rid, run_id.len, hash) != NULL) {
        rl->stats->errors_input++;
        ngx_str_set(&error, "a message with this id is already in flight "
                            "in this session");
        return ngx_http_openclaw_relay_reply(ep, "error", NULL, NULL, &error,
                                             &session, &in->id_json);
    }

    if (conf->zone) {

        /*
         * A session with a message in flight is never evicted from the
         * zone: the sessions one connection holds so are bounded, so that
         * no client can fill the zone with hung runs.
         */

        held = ngx_http_openclaw_relay_held(ep, &session);

        if (held == NULL && ep->nsessions >= conf->max_sessions) {
            rl->stats->errors_input++;
            ngx_str_set(&error, "too many sessions with messages in flight "
                                "on this connection: wait for their replies");
            return ngx_http_openclaw_relay_reply(ep, "error", NULL, NULL,
                                                 &error, &session,
                                                 &in->id_json);
        }

        /*
         * A session is its first sender's; "all" shares the namespace
         * among the location's senders, and "global" is one session for
         * all of them on purpose.
         */

        rc = ngx_http_openclaw_sessions_start(conf->zone, &session,
                                 &ep->scope.agent, &ep->scope.uid,
                                 &ep->sender,
                                 conf->control != NGX_HTTP_OPENCLAW_CONTROL_ALL
                                 && conf->scope
                                    != NGX_HTTP_OPENCLAW_SCOPE_GLOBAL);

        if (rc != NGX_OK) {
            rl->stats->errors_input++;

            if (rc == NGX_DECLINED) {
                ngx_str_set(&error, "no room for the session: every session "
                                    "of the zone has messages in flight");

            } else if (rc == NGX_BUSY) {
                ngx_str_set(&error, "the session belongs to another sender");

            } else {
                ngx_str_set(&error, "the session belongs to another uid");
            }

            return ngx_http_openclaw_relay_reply(ep, "error", NULL, NULL,
                                                 &error, &session,
                                                 &in->id_json);
        }
    }

    /* the params are built once: a reconnect sends them again as they are */

    j.log = ep->log;
    ngx_http_openclaw_json_begin(&j, NULL);
    ngx_http_openclaw_json_string(&j, "sessionKey", session.data,
                                  session.len);
    ngx_http_openclaw_json_escaped(&j, "message", in->content.data,
                                   in->content.len);
    ngx_http_openclaw_json_escaped(&j, "idempotencyKey", rid, run_id.len);

    if (in->nattachments) {
        ngx_http_openclaw_json_raw(&j, "attachments", in->attachments.data,
                                   in->attachments.len);
    }

    if (ngx_http_openclaw_json_end(&j, &params) != NGX_OK) {
        return NGX_ERROR;
    }

    size = sizeof(ngx_http_openclaw_run_t) + session.len + in->id_json.len
           + params.len;

    run = NULL;

    if (conf->zone) {
        held = ngx_http_openclaw_relay_hold(ep, held, &session);
    }

    if (held || conf->zone == NULL) {
        run = ngx_http_openclaw_runs_alloc(size, ep->log);

        if (run == NULL && held) {
            ngx_http_openclaw_relay_release(ep, held);
        }
    }

    if (run == NULL) {
        ngx_str_set(&error, "out of memory");

        if (conf->zone) {
            ngx_http_openclaw_sessions_end(conf->zone, &session, &error);
        }

        return ngx_http_openclaw_relay_reply(ep, "error", NULL, NULL, &error,
                                             &session, &in->id_json);
    }

    p = (u_char *) (run + 1);

    run->session.data = p;
    run->session.len = session.len;
    p = ngx_cpymem(p, session.data, session.len);

    run->id.data = p;
    run->id.len = in->id_json.len;
    p = ngx_cpymem(p, in->id_json.data, in->id_json.len);

    run->params.data = p;
    run->params.len = params.len;
    ngx_memcpy(p, params.data, params.len);

    ngx_memcpy(run->run_id, rid, run_id.len);
    run->rid.data = run->run_id;
    run->rid.len = run_id.len;
    run->hash = hash;
    ngx_http_openclaw_runs_index(run);

    run->start = ngx_current_msec;
    run->zone = conf->zone;
    run->held = held;
    run->ep = ep;
    ngx_queue_insert_tail(&ep->runs, &run->ep_link);
    ep->nruns++;
    rl->stats->runs++;

    run->rpc.handler = ngx_http_openclaw_relay_acked;
    run->rpc.data = run;


    run->state = NGX_HTTP_OPENCLAW_RUN_WAITING;
    ngx_queue_insert_tail(&rl->waiting, &run->link);
    rl->stats->waiting++;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ep->log, 0,
                   "openclaw run %V in session \"%V\"", &run_id, &session);

    if (rl->protocol == 0) {

        /* the link is down: wait for it, but not in an unbounded queue */

        if (rl->stats->waiting > rl->conf->queue_size) {
            rl->stats->errors_link++;
            ngx_http_openclaw_relay_fail(run, "gateway not connected, and "
                                         "%ui messages are already waiting",
                                         rl->conf->queue_size);
            return NGX_OK;
        }

        ngx_http_openclaw_runs_arm(run, rl->conf->request_timeout);
        return NGX_OK;
    }

    ngx_http_openclaw_relay_send(run);

    return NGX_OK;
}


static void
ngx_http_openclaw_relay_send(ngx_http_openclaw_run_t *run)
{
    size_t                      max;
    ngx_int_t                   rc;
    ngx_http_openclaw_relay_t  *rl;

    rl = &ngx_http_openclaw_relay;

    /*
     * Over the gateway's maxPayload, the request would make the gateway
     * close the link, and go again after every reconnect.  The limit is
     * known once the link is up: a run that waited is checked then.
     */

    max = ngx_http_openclaw_gateway_max_params("chat.send");

    if (run->params.len > max) {
        rl->stats->errors_input++;
        ngx_http_openclaw_relay_fail(run, "message too large for the "
                                     "gateway: %uz bytes of chat.send "
                                     "params, where its maxPayload of %uz "
                                     "bytes leaves room for %uz",
                                     run->params.len,
                                     ngx_http_openclaw_gateway_max_payload(),
                                     max);
        return;
    }

    rc = ngx_http_openclaw_gateway_call(&run->rpc, "chat.send",
                                        run->params.data, run->params.len);

    if (rc == NGX_DECLINED) {
        if (ngx_http_openclaw_runs_expires(run) == 0) {
            ngx_http_openclaw_runs_arm(run, rl->conf->request_timeout);
        }

        return;
    }

    if (rc != NGX_OK) {
        ngx_http_openclaw_relay_fail(run, "cannot send the message to the "
                                     "gateway");
        return;
    }

    ngx_queue_remove(&run->link);
    ngx_queue_insert_tail(&rl->sent, &run->link);
    rl->stats->waiting--;

    run->state = NGX_HTTP_OPENCLAW_RUN_SENT;

    ngx_http_openclaw_runs_arm(run, rl->conf->request_timeout);
}


static void
ngx_http_openclaw_relay_acked(ngx_http_openclaw_rpc_t *rpc,
    ngx_http_openclaw_jv_t *res)
{
    ngx_str_t                   status;
    ngx_http_openclaw_jv_t      m[3], st;
    ngx_http_openclaw_run_t    *run;
    ngx_http_openclaw_relay_t  *rl;
    const char                 *reason;
    u_char                      code[64], message[256], st_text[32];

    static const char                   *names[3] = {
        "ok", "payload", "error"
    };
    static ngx_http_openclaw_jv_names_t  members =
                                        ngx_http_openclaw_jv_names(names);

    run = rpc->data;
    rl = &ngx_http_openclaw_relay;

    if (res == NULL) {

        /* the link went down: it is sent again when the link is back */

        return;
    }

    (void) ngx_http_openclaw_jv_lookup(res, &members, m);

    if (m[0].type != NGX_HTTP_OPENCLAW_JSON_TRUE) {

        if (ngx_http_openclaw_relay_lost(run, "refused",
                  ngx_http_openclaw_relay_text(&m[2], "message", message,
                                               sizeof(message), "no reason"))
            == NGX_DONE)
        {
            return;
        }

        rl->stats->errors_gateway++;

        ngx_http_openclaw_relay_fail(run, "gateway refused the message: "
                                     "%s: %s",
                  ngx_http_openclaw_relay_text(&m[2], "code", code,
                                               sizeof(code), "error"),
                  ngx_http_openclaw_relay_text(&m[2], "message", message,
                                               sizeof(message), "no reason"));
        return;
    }

    if (run->state == NGX_HTTP_OPENCLAW_RUN_SENT) {
        run->state = NGX_HTTP_OPENCLAW_RUN_RUNNING;
        ngx_http_openclaw_runs_arm(run, rl->conf->run_timeout);
    }

    /* the statuses are plain words: one spelt with escapes is none */

    ngx_str_null(&status);

    if (ngx_http_openclaw_jv_get(&m[1], "status", &st) == 0
        && st.type == NGX_HTTP_OPENCLAW_JSON_STRING && !st.escaped)
    {
        status.data = (u_char *) st.data;
        status.len = st.size;
    }

    if ((status.len == 7 && ngx_strncmp(status.data, "started", 7) == 0)
        || (status.len == 9 && ngx_strncmp(status.data, "in_flight", 9) == 0)
        || (status.len == 8 && ngx_strncmp(status.data, "accepted", 8) == 0))
    {
        return;
    }

    if (status.len == 2 && ngx_strncmp(status.data, "ok", 2) == 0) {

        /*
         * The gateway had already run this idempotency key, while the
         * link was down or for an earlier try of the same message: its
         * reply is in the session's history.
         */

        ngx_http_openclaw_relay_fetch(run);
        return;
    }

    rl->stats->errors_gateway++;

    reason = ngx_http_openclaw_relay_text(&m[1], "status", st_text,
                                          sizeof(st_text), "");

    ngx_http_openclaw_relay_fail(run, "gateway reports the run as \"%s\"",
                                 reason[0] ? reason : "unknown");
}


/*
 * A string member of "obj", decoded into "buf" (cut to fit) and
 * NUL-terminated, or "none" when there is no such string.
 */

static const char *
ngx_http_openclaw_relay_text(ngx_http_openclaw_jv_t *obj, const char *name,
    u_char *buf, size_t size, const char *none)
{
    ngx_http_openclaw_jv_t  v;

    if (ngx_http_openclaw_jv_get(obj, name, &v) != 0) {
        return none;
    }

    return ngx_http_openclaw_relay_decode(&v, buf, size, none);
}


static const char *
ngx_http_openclaw_relay_decode(ngx_http_openclaw_jv_t *v, u_char *buf,
    size_t size, const char *none)
{
    size_t   n;
    u_char  *tmp;

    if (v->type != NGX_HTTP_OPENCLAW_JSON_STRING) {
        return none;
    }

    if (v->size < size) {
        n = ngx_http_openclaw_jv_decode(v, buf);

    } else {
        tmp = ngx_alloc(v->size, ngx_cycle->log);
        if (tmp == NULL) {
            return none;
        }

        n = ngx_http_openclaw_jv_decode(v, tmp);
        n = ngx_min(n, size - 1);

        /* never cut a UTF-8 sequence in two */

        while (n && (tmp[n] & 0xc0) == 0x80) {
            n--;
        }

        ngx_memcpy(buf, tmp, n);
        ngx_free(tmp);
    }

    buf[n] = '\0';

    return (const char *) buf;
}


/*
 * A message sent again after the link came back, and refused or failed
 * there, may have its reply in the session's history all the same: a
 * gateway restarted after a SIGKILL (2026.9.6) recovers the cut turn in
 * a run of its own, and a worker whose link was still down saw none of
 * that run's events.  Protocol 4 marks the user's turn with the message's
 * run id, so the reply that follows it can be told from any other.
 */

static ngx_int_t
ngx_http_openclaw_relay_lost(ngx_http_openclaw_run_t *run, const char *how,
    const char *why)
{
    if (run->drops == 0 || run->push || run->lost
        || ngx_http_openclaw_relay.protocol != 4)
    {
        return NGX_DECLINED;
    }

    ngx_log_error(NGX_LOG_INFO, run->ep ? run->ep->log : ngx_cycle->log, 0,
                  "openclaw run %V %s after the link came back (%s), "
                  "looking for its reply in the session history",
                  &run->rid, how, why);

    run->lost = 1;
    ngx_http_openclaw_relay_fetch(run);

    return NGX_DONE;
}


static void
ngx_http_openclaw_relay_fetch(ngx_http_openclaw_run_t *run)
{
    ngx_str_t                 params;
    ngx_http_openclaw_json_t  j;

    j.log = ngx_cycle->log;
    ngx_http_openclaw_json_begin(&j, NULL);
    ngx_http_openclaw_json_string(&j, "sessionKey", run->session.data,
                                  run->session.len);
    ngx_http_openclaw_json_raw(&j, "limit", (u_char *) "50", 2);

    if (ngx_http_openclaw_json_end(&j, &params) != NGX_OK) {
        ngx_http_openclaw_relay_fail(run, "out of memory");
        return;
    }

    ngx_http_openclaw_gateway_cancel(&run->rpc);

    run->state = NGX_HTTP_OPENCLAW_RUN_HISTORY;
    run->rpc.handler = ngx_http_openclaw_relay_history;

    if (ngx_http_openclaw_gateway_call(&run->rpc, "chat.history",
                                       params.data, params.len)
        != NGX_OK)
    {
        ngx_http_openclaw_relay_fail(run, "gateway link lost while "
                                     "fetching the reply");
    }
}


/*
 * The reply to the run in the history, among the assistant messages that
 * did not end in an error: the one protocol 4 marks with the run's id, or
 * else the last one after the user's turn with the run's id, before the
 * turn of another message of this bridge (the gateway's own prompts, such
 * as a recovery's, come between).
 */

static ngx_int_t
ngx_http_openclaw_relay_reply_in(ngx_http_openclaw_run_t *run,
    ngx_http_openclaw_jv_t *messages, ngx_http_openclaw_jv_t *reply)
{
    ngx_uint_t              after, found;
    ngx_http_openclaw_jv_t  message, role, meta, id, key, stop;

    after = 0;
    found = 0;
    message.start = NULL;

    while (ngx_http_openclaw_jv_next(messages, &message) == 0) {

        if (ngx_http_openclaw_jv_get(&message, "role", &role) != 0) {
            continue;
        }

        if (ngx_http_openclaw_jv_is(&role, "user")) {

            if (ngx_http_openclaw_jv_get(&message, "idempotencyKey", &key)
                   != 0
                || key.type != NGX_HTTP_OPENCLAW_JSON_STRING
                || key.escaped)
            {
                continue;
            }

            if (key.size == run->rid.len + sizeof(":user") - 1
                && ngx_memcmp(key.data, run->rid.data, run->rid.len) == 0
                && ngx_memcmp(key.data + run->rid.len, ":user",
                              sizeof(":user") - 1) == 0)
            {
                after = 1;

            } else if (after && key.size > 3
                       && ngx_memcmp(key.data, "wh-", 3) == 0)
            {
                after = 0;
            }

            continue;
        }

        /*
         * A run that failed has an assistant message too, with its run id
         * (2026.9.6: "The agent run failed before producing a reply."):
         * it is no reply.
         */

        if (!ngx_http_openclaw_jv_is(&role, "assistant")
            || (ngx_http_openclaw_jv_get(&message, "stopReason", &stop) == 0
                && (ngx_http_openclaw_jv_is(&stop, "error")
                    || ngx_http_openclaw_jv_is(&stop, "aborted"))))
        {
            continue;
        }

        if (ngx_http_openclaw_jv_get(&message, "__openclaw", &meta) == 0
            && ngx_http_openclaw_jv_get(&meta, "runId", &id) == 0
            && id.type == NGX_HTTP_OPENCLAW_JSON_STRING
            && !id.escaped
            && id.size == run->rid.len
            && ngx_memcmp(id.data, run->rid.data, id.size) == 0)
        {
            *reply = message;
            return NGX_OK;
        }

        if (after) {
            *reply = message;
            found = 1;
        }
    }

    return found ? NGX_OK : NGX_DECLINED;
}


static void
ngx_http_openclaw_relay_history(ngx_http_openclaw_rpc_t *rpc,
    ngx_http_openclaw_jv_t *res)
{
    u_char                   *buf;
    ngx_str_t                 text;
    ngx_http_openclaw_jv_t    payload, messages, message;
    ngx_http_openclaw_run_t  *run;

    run = rpc->data;

    if (res == NULL) {
        ngx_http_openclaw_relay_fail(run, "gateway link lost while fetching "
                                     "the reply");
        return;
    }

    if (ngx_http_openclaw_jv_get(res, "payload", &payload) == 0
        && ngx_http_openclaw_jv_get(&payload, "messages", &messages) == 0
        && ngx_http_openclaw_relay_reply_in(run, &messages, &message)
           == NGX_OK)
    {
        if (ngx_http_openclaw_message_text(&message, &text, &buf) != NGX_OK) {
            ngx_http_openclaw_relay_fail(run, "out of memory");
            return;
        }

        ngx_http_openclaw_relay_final(run, &message, &text);

        if (buf) {
            ngx_free(buf);
        }

        return;
    }

    ngx_http_openclaw_relay.stats->errors_gateway++;

    if (run->lost) {
        ngx_http_openclaw_relay_fail(run, "the gateway failed this message "
                                     "when it was sent again after the link "
                                     "came back, and the session history "
                                     "has no reply to it");
        return;
    }

    ngx_http_openclaw_relay_fail(run, "the gateway already answered this "
                                 "message, and its reply is no longer in the "
                                 "session history");
}


void
ngx_http_openclaw_relay_link_up(ngx_uint_t protocol)
{
    ngx_queue_t                *q;
    ngx_http_openclaw_run_t    *run;
    ngx_http_openclaw_relay_t  *rl;

    rl = &ngx_http_openclaw_relay;
    rl->protocol = protocol;

    /* re-sent runs keep their key: the gateway answers "in_flight" */

    while (!ngx_queue_empty(&rl->waiting)) {
        q = ngx_queue_head(&rl->waiting);
        run = ngx_queue_data(q, ngx_http_openclaw_run_t, link);

        ngx_http_openclaw_runs_disarm(run);

        ngx_http_openclaw_relay_send(run);

        if (rl->protocol == 0) {
            return;
        }
    }
}


/* a run in flight at this many losses of the link is not sent again */
#define NGX_HTTP_OPENCLAW_RUN_DROPS     3


void
ngx_http_openclaw_relay_link_down(void)
{
    ngx_queue_t                *q, *next, given_up;
    ngx_http_openclaw_run_t    *run;
    ngx_http_openclaw_relay_t  *rl;

    rl = &ngx_http_openclaw_relay;
    rl->protocol = 0;

    ngx_queue_init(&given_up);

    for (q = ngx_queue_head(&rl->sent);
         q != ngx_queue_sentinel(&rl->sent);
         q = next)
    {
        next = ngx_queue_next(q);
        run = ngx_queue_data(q, ngx_http_openclaw_run_t, link);

        /* ended on the gateway, waiting for a hand-over: not sent again */

        if (run->state == NGX_HTTP_OPENCLAW_RUN_ADOPTING) {
            continue;
        }

        ngx_http_openclaw_gateway_cancel(&run->rpc);
        run->rpc.handler = ngx_http_openclaw_relay_acked;

        ngx_queue_remove(&run->link);
        rl->stats->waiting++;

        run->state = NGX_HTTP_OPENCLAW_RUN_WAITING;

        /*
         * A message in flight at every loss of the link may be what the
         * gateway cannot take: sent again each time, it would take the
         * runs of every client here down with it.
         */

        if (++run->drops >= NGX_HTTP_OPENCLAW_RUN_DROPS) {
            ngx_queue_insert_tail(&given_up, &run->link);
            continue;
        }

        ngx_queue_insert_tail(&rl->waiting, &run->link);

        /* the link has this long to come back before the client hears */

        ngx_http_openclaw_runs_arm(run, rl->conf->request_timeout);
    }

    /*
     * Their errors come after the walk: answering may close a client,
     * and free its other runs.
     */

    while (!ngx_queue_empty(&given_up)) {
        q = ngx_queue_head(&given_up);
        run = ngx_queue_data(q, ngx_http_openclaw_run_t, link);

        rl->stats->errors_link++;
        ngx_http_openclaw_relay_fail(run, "the gateway link went down %ui "
                                     "times while this message was in "
                                     "flight; not sent again", run->drops);
    }
}


void
ngx_http_openclaw_relay_chat_event(ngx_http_openclaw_jv_t *payload)
{
    ngx_str_t                 run_id;
    ngx_http_openclaw_jv_t    ev[C_N], *v;
    ngx_http_openclaw_run_t  *run;

    static const char                   *names[C_N] = {
        "runId", "state", "message", "deltaText", "replace", "errorMessage",
        "sessionKey"
    };
    static ngx_http_openclaw_jv_names_t  members =
                                        ngx_http_openclaw_jv_names(names);

    (void) ngx_http_openclaw_jv_lookup(payload, &members, ev);

    /* run ids this module makes need no escapes; others are not ours */

    v = &ev[C_RUN_ID];

    if (v->type != NGX_HTTP_OPENCLAW_JSON_STRING || v->escaped
        || v->size == 0 || v->size >= NGX_HTTP_OPENCLAW_RUN_ID_MAX)
    {
        return;
    }

    run_id.data = (u_char *) v->data;
    run_id.len = v->size;

    run = ngx_http_openclaw_runs_find(run_id.data, run_id.len,
                                       ngx_murmur_hash2(run_id.data,
                                                        run_id.len));

    if (run == NULL) {
        run = ngx_http_openclaw_relay_adopt(ev, &run_id);

        if (run == NULL) {
            run = ngx_http_openclaw_relay_push(ev, &run_id);
        }

        if (run == NULL) {
            ngx_http_openclaw_relay_end(&run_id, ev, NULL);
            ngx_http_openclaw_relay_stray(&run_id, ev);
            return;
        }
    }

    ngx_http_openclaw_relay_end(&run_id, ev, run);
    ngx_http_openclaw_relay_run_event(run, ev);
}


/*
 * The end of a run that no client started, whether this worker has it
 * ("run") or not: a run of the agent that no worker delivered is dropped,
 * not kept, and counted once among all the workers.
 */

static void
ngx_http_openclaw_relay_end(ngx_str_t *run_id, ngx_http_openclaw_jv_t *ev,
    ngx_http_openclaw_run_t *run)
{
    ngx_str_t                session;
    ngx_uint_t               delivered;
    ngx_http_openclaw_jv_t  *v;

    v = &ev[C_SESSION];

    if (v->type != NGX_HTTP_OPENCLAW_JSON_STRING || v->escaped
        || v->size == 0 || v->size > NGX_HTTP_OPENCLAW_SESSION_MAX
        || (run_id->len > 3 && ngx_strncmp(run_id->data, "wh-", 3) == 0)
        || !(ngx_http_openclaw_jv_is(&ev[C_STATE], "final")
             || ngx_http_openclaw_jv_is(&ev[C_STATE], "error")
             || ngx_http_openclaw_jv_is(&ev[C_STATE], "aborted")))
    {
        return;
    }

    session.data = (u_char *) v->data;
    session.len = v->size;

    /*
     * Beside a message in flight, it may be the message's reply; a final
     * with nothing in it loses nothing (a silent reply, or protocol 3's
     * hand-over of the turn to a run of its own, which is counted then).
     */

    delivered = run != NULL || ngx_http_openclaw_relay_busy(&session)
                || ngx_http_openclaw_relay_empty(ev);

    if (ngx_http_openclaw_push_end(run_id, &session, delivered) != NGX_OK) {
        return;
    }

    ngx_http_openclaw_relay.stats->undelivered++;

    ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                  "openclaw run %V of the agent in %V reached no endpoint: "
                  "dropped", run_id, &session);
}


static void
ngx_http_openclaw_relay_run_event(ngx_http_openclaw_run_t *run,
    ngx_http_openclaw_jv_t *ev)
{
    u_char                     *buf;
    ngx_http_openclaw_stray_t  *stray;
    ngx_str_t                   text;
    ngx_http_openclaw_jv_t     *state, *message;
    ngx_http_openclaw_relay_t  *rl;
    const char                 *why;
    u_char                      error[400];

    rl = &ngx_http_openclaw_relay;

    /* its reply is being fetched from the history: the run is over */

    if (run->state == NGX_HTTP_OPENCLAW_RUN_HISTORY) {
        return;
    }

    state = &ev[C_STATE];
    message = &ev[C_MESSAGE];

    if (ngx_http_openclaw_jv_is(state, "delta")) {
        if (ngx_http_openclaw_relay_progress(run, ev) != NGX_OK) {
            ngx_http_openclaw_relay_fail(run, "out of memory");
        }

        return;
    }

    if (ngx_http_openclaw_jv_is(state, "final")) {
        buf = NULL;

        if (message->type != NGX_HTTP_OPENCLAW_JSON_OBJECT) {
            text.data = run->text;
            text.len = run->text_len;

        } else if (ngx_http_openclaw_message_text(message, &text, &buf)
                   != NGX_OK)
        {
            ngx_http_openclaw_relay_fail(run, "out of memory");
            return;
        }

        /*
         * A final without its text hands the message over: protocol 3
         * answers a message that reached a busy session so, protocol 4
         * a message queued behind a running one, and either may end a
         * run cut by a gateway restart so; the reply then streams in a
         * run of the gateway's choosing on the same session.
         */

        if (run->state != NGX_HTTP_OPENCLAW_RUN_ADOPTING
            && (message->type != NGX_HTTP_OPENCLAW_JSON_OBJECT
                || (text.len == 0 && !run->seen_text)))
        {
            ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                           "openclaw run %V ended without text, waiting for "
                           "the run that carries its reply", &run->rid);

            if (buf) {
                ngx_free(buf);
            }

            run->state = NGX_HTTP_OPENCLAW_RUN_ADOPTING;
            rl->adopting++;

            ngx_http_openclaw_runs_arm(run, rl->conf->run_timeout);

            if (ngx_http_openclaw_relay_adopt_stray(run) == NGX_OK) {
                ngx_http_openclaw_relay_settle(&run->session);
            }

            return;
        }

        ngx_http_openclaw_relay_final(run, message, &text);

        if (buf) {
            ngx_free(buf);
        }

        return;
    }

    if (ngx_http_openclaw_jv_is(state, "error")) {

        /*
         * Sent again after the link went down, the message may fail as a
         * run of its own while the gateway, restarted, replays it in a run
         * of its choosing on the same session (seen with 2026.9.6 after a
         * SIGKILL): the reply is that run's.
         */

        stray = run->drops && !run->push
                && run->state != NGX_HTTP_OPENCLAW_RUN_ADOPTING
                ? ngx_http_openclaw_handover_find(&run->session) : NULL;

        if (stray && (stray->text_len || !stray->ended)) {
            ngx_log_error(NGX_LOG_INFO, run->ep ? run->ep->log
                                                : ngx_cycle->log, 0,
                          "openclaw run %V failed after the link came back, "
                          "its session's reply comes in a run of the "
                          "gateway's", &run->rid);

            run->state = NGX_HTTP_OPENCLAW_RUN_ADOPTING;
            rl->adopting++;

            if (ngx_http_openclaw_relay_adopt_stray(run) == NGX_DONE) {
                return;
            }

            run->state = NGX_HTTP_OPENCLAW_RUN_RUNNING;
            rl->adopting--;
        }

        why = ngx_http_openclaw_relay_decode(&ev[C_ERROR], error,
                                             sizeof(error), "the run failed");

        if (run->state != NGX_HTTP_OPENCLAW_RUN_ADOPTING
            && ngx_http_openclaw_relay_lost(run, "failed", why) == NGX_DONE)
        {
            return;
        }

        rl->stats->errors_gateway++;

        ngx_http_openclaw_relay_fail(run, "agent error: %s", why);
        return;
    }

    if (ngx_http_openclaw_jv_is(state, "aborted")) {
        rl->stats->errors_gateway++;
        ngx_http_openclaw_relay_fail(run, "agent run aborted");
        return;
    }

    /* "status" and anything newer: typing signals, nothing to relay */
}


/*
 * Clients get the cumulative text (what existing clients display) and
 * the new part.  The cumulative message is the truth; protocol 4's
 * deltaText is used only when a delta comes without it.  Texts stay
 * escaped as the gateway wrote them: its escaping is the same for the
 * same characters, so the escape of a text extended is the escape of the
 * text followed by the escape of the extension.
 */

static ngx_int_t
ngx_http_openclaw_relay_progress(ngx_http_openclaw_run_t *run,
    ngx_http_openclaw_jv_t *ev)
{
    u_char                  *buf;
    ngx_int_t                rc;
    ngx_str_t                text, added;
    ngx_uint_t               replaced;
    ngx_http_openclaw_jv_t  *message, *delta;

    buf = NULL;
    replaced = 0;

    message = &ev[C_MESSAGE];
    delta = &ev[C_DELTA];

    if (message->type == NGX_HTTP_OPENCLAW_JSON_OBJECT) {
        if (ngx_http_openclaw_message_text(message, &text, &buf) != NGX_OK) {
            return NGX_ERROR;
        }

    } else {
        if (delta->type != NGX_HTTP_OPENCLAW_JSON_STRING) {
            return NGX_OK;
        }

        added.data = (u_char *) delta->data;
        added.len = delta->size;

        if (ev[C_REPLACE].type != NGX_HTTP_OPENCLAW_JSON_TRUE) {
            if (ngx_http_openclaw_relay_set_text(run, NULL,
                                                 run->text_len + added.len)
                != NGX_OK)
            {
                return NGX_ERROR;
            }

            ngx_memcpy(run->text + run->text_len - added.len, added.data,
                       added.len);

            added.data = run->text + run->text_len - added.len;

            return ngx_http_openclaw_relay_added(run, &added, 0);
        }

        text = added;
        replaced = 1;
    }

    rc = ngx_http_openclaw_relay_retext(run, &text, replaced);

    if (buf) {
        ngx_free(buf);
    }

    return rc;
}


/*
 * The run's text is now "text": what it adds to the text the client has
 * goes out as a progress, or the whole of it with "replace" when it is
 * rewritten rather than extended.  Texts are compared escaped, as they
 * came: a whole escaped text ends on a whole escape, so a prefix of it is
 * a prefix of the decoded text too.
 */

static ngx_int_t
ngx_http_openclaw_relay_retext(ngx_http_openclaw_run_t *run, ngx_str_t *text,
    ngx_uint_t replaced)
{
    size_t     old, n;
    ngx_str_t  added;

    old = run->text_len;

    if (!replaced && ngx_http_openclaw_relay_extends(run, text)) {
        if (text->len == old) {
            return NGX_OK;
        }

        n = text->len - old;

    } else {
        n = text->len;
        replaced = 1;
    }

    if (ngx_http_openclaw_relay_set_text(run, text->data, text->len)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    added.data = run->text + (run->text_len - n);
    added.len = n;

    return ngx_http_openclaw_relay_added(run, &added, replaced);
}


/* "text" is the text the client has, maybe followed by more */

static ngx_uint_t
ngx_http_openclaw_relay_extends(ngx_http_openclaw_run_t *run, ngx_str_t *text)
{
    return text->len >= run->text_len
           && (run->text_len == 0
               || ngx_memcmp(text->data, run->text, run->text_len) == 0);
}


/* the text the client has grew by "added" (or is all of it, replaced) */

static ngx_int_t
ngx_http_openclaw_relay_added(ngx_http_openclaw_run_t *run, ngx_str_t *added,
    ngx_uint_t replaced)
{
    ngx_str_t  content;

    if (!run->seen_text) {
        ngx_http_openclaw_metrics_observe(
                             &ngx_http_openclaw_relay.stats->first_progress,
                             ngx_current_msec - run->start);
    }

    run->seen_text = 1;

    if (run->ep == NULL) {
        return NGX_OK;
    }

    content.data = run->text;
    content.len = run->text_len;

    (void) ngx_http_openclaw_relay_text_reply(run, "progress", &content,
                                              added, replaced, NULL);
    return NGX_OK;
}


/* a progress or a complete: the text, what is new in it, and if rewritten */

static ngx_int_t
ngx_http_openclaw_relay_text_reply(ngx_http_openclaw_run_t *run,
    const char *type, ngx_str_t *content, ngx_str_t *delta,
    ngx_uint_t replaced, ngx_str_t *error)
{
    ngx_http_openclaw_reply_t  rp;

    ngx_memzero(&rp, sizeof(ngx_http_openclaw_reply_t));

    rp.type = type;
    rp.content = content;
    rp.delta = delta;
    rp.replace = replaced;
    rp.error = error;
    rp.session = &run->session;
    rp.id = &run->id;
    rp.agent = run->push;

    return ngx_http_openclaw_reply(run->ep, &rp);
}


/* sets the run's text to "len" bytes, copied from "text" unless NULL */

static ngx_int_t
ngx_http_openclaw_relay_set_text(ngx_http_openclaw_run_t *run, u_char *text,
    size_t len)
{
    size_t   size;
    u_char  *p;

    if (len > run->text_size) {
        size = ngx_max(len, 2 * run->text_size);
        size = ngx_max(size, 256);

        p = ngx_alloc(size, ngx_cycle->log);
        if (p == NULL) {
            return NGX_ERROR;
        }

        if (run->text) {
            ngx_memcpy(p, run->text, run->text_len);
            ngx_free(run->text);
        }

        run->text = p;
        run->text_size = size;
    }

    if (text) {
        ngx_memcpy(run->text, text, len);
    }

    run->text_len = len;

    return NGX_OK;
}


/*
 * Protocol 3's hand-over: an event of an unknown run, on the session of a
 * run that ended empty, belongs to that run.
 */

static ngx_http_openclaw_run_t *
ngx_http_openclaw_relay_adopt(ngx_http_openclaw_jv_t *ev, ngx_str_t *run_id)
{
    ngx_str_t                   session;
    ngx_http_openclaw_jv_t     *v;
    ngx_http_openclaw_run_t    *run;
    ngx_http_openclaw_relay_t  *rl;

    rl = &ngx_http_openclaw_relay;
    v = &ev[C_SESSION];

    /* runs made here belong to their own message, maybe in another worker */

    if (rl->adopting == 0
        || v->type != NGX_HTTP_OPENCLAW_JSON_STRING || v->escaped
        || (run_id->len > 3 && ngx_strncmp(run_id->data, "wh-", 3) == 0))
    {
        return NULL;
    }

    session.data = (u_char *) v->data;
    session.len = v->size;

    run = ngx_http_openclaw_handover_waiter(&rl->sent, &session);

    if (run == NULL) {
        return NULL;
    }

    ngx_http_openclaw_runs_rekey(run, run_id->data, run_id->len);
    run->state = NGX_HTTP_OPENCLAW_RUN_RUNNING;
    rl->adopting--;
    ngx_http_openclaw_runs_arm(run, rl->conf->run_timeout);

    return run;
}


/*
 * The run with the reply may have started, or even ended, before.
 * NGX_OK: still waiting; NGX_DONE: adopted (and maybe finished already).
 */

/*
 * A run that no client here started, on a session an endpoint of this
 * worker may see (push.c says which): the agent started it itself, and
 * it streams to that endpoint as a run of its own, marked as the agent's.
 * A run that may be the hand-over of a message in flight in its session
 * is never one.
 */

static ngx_http_openclaw_run_t *
ngx_http_openclaw_relay_push(ngx_http_openclaw_jv_t *ev, ngx_str_t *run_id)
{
    ngx_str_t                      session;
    ngx_http_openclaw_jv_t        *v;
    ngx_http_openclaw_run_t       *run;
    ngx_http_openclaw_relay_t     *rl;
    ngx_http_openclaw_endpoint_t  *ep;

    rl = &ngx_http_openclaw_relay;
    v = &ev[C_SESSION];

    if (v->type != NGX_HTTP_OPENCLAW_JSON_STRING || v->escaped
        || v->size == 0 || v->size > NGX_HTTP_OPENCLAW_SESSION_MAX
        || (run_id->len > 3 && ngx_strncmp(run_id->data, "wh-", 3) == 0))
    {
        return NULL;
    }

    session.data = (u_char *) v->data;
    session.len = v->size;

    ep = ngx_http_openclaw_push_endpoint(run_id, &session);

    if (ep == NULL) {
        return NULL;
    }

    /*
     * Judged at the run's first event, whatever it is: protocol 4 starts
     * a run with "status" events, and a hand-over whose text comes only
     * after its message ended must not become the agent's then.
     */

    if (ngx_http_openclaw_relay_busy(&session)) {
        ngx_http_openclaw_push_not(run_id);
        return NULL;
    }

    /* a typing signal: the run is the agent's once it says something */

    if (!(ngx_http_openclaw_jv_is(&ev[C_STATE], "delta")
          || ngx_http_openclaw_jv_is(&ev[C_STATE], "final")
          || ngx_http_openclaw_jv_is(&ev[C_STATE], "error")))
    {
        return NULL;
    }

    run = ngx_http_openclaw_runs_alloc(sizeof(ngx_http_openclaw_run_t)
                                       + session.len, ep->log);
    if (run == NULL) {
        return NULL;
    }

    run->session.data = (u_char *) (run + 1);
    run->session.len = session.len;
    ngx_memcpy(run->session.data, session.data, session.len);

    ngx_str_set(&run->id, "");
    ngx_str_set(&run->params, "");

    ngx_memcpy(run->run_id, run_id->data, run_id->len);
    run->rid.data = run->run_id;
    run->rid.len = run_id->len;
    run->hash = ngx_murmur_hash2(run_id->data, run_id->len);
    ngx_http_openclaw_runs_index(run);

    run->push = 1;
    run->start = ngx_current_msec;
    run->ep = ep;
    ngx_queue_insert_tail(&ep->runs, &run->ep_link);
    ep->nruns++;
    rl->stats->runs++;
    rl->stats->pushed++;

    run->state = NGX_HTTP_OPENCLAW_RUN_RUNNING;
    ngx_queue_insert_tail(&rl->sent, &run->link);
    ngx_http_openclaw_runs_arm(run, rl->conf->run_timeout);

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ep->log, 0,
                   "openclaw run %V of the agent in %V", &run->rid,
                   &run->session);

    return run;
}


/* a message of this worker is in flight in "session" */

static ngx_uint_t
ngx_http_openclaw_relay_busy(ngx_str_t *session)
{
    ngx_queue_t              *q, *queues[2];
    ngx_uint_t                i;
    ngx_http_openclaw_run_t  *run;

    queues[0] = &ngx_http_openclaw_relay.sent;
    queues[1] = &ngx_http_openclaw_relay.waiting;

    for (i = 0; i < 2; i++) {
        for (q = ngx_queue_head(queues[i]);
             q != ngx_queue_sentinel(queues[i]);
             q = ngx_queue_next(q))
        {
            run = ngx_queue_data(q, ngx_http_openclaw_run_t, link);

            if (!run->push && run->session.len == session->len
                && ngx_strncmp(run->session.data, session->data,
                               session->len) == 0)
            {
                return 1;
            }
        }
    }

    return 0;
}


static ngx_int_t
ngx_http_openclaw_relay_adopt_stray(ngx_http_openclaw_run_t *run)
{
    ngx_str_t                   text, media;
    ngx_http_openclaw_relay_t  *rl;
    ngx_http_openclaw_stray_t  *stray;

    rl = &ngx_http_openclaw_relay;

    stray = ngx_http_openclaw_handover_find(&run->session);

    if (stray == NULL) {
        return NGX_OK;
    }

    ngx_http_openclaw_runs_rekey(run, stray->run_id, stray->run_id_len);

    run->state = NGX_HTTP_OPENCLAW_RUN_RUNNING;
    rl->adopting--;

    text.data = stray->text;
    text.len = stray->text_len;

    if (stray->ended) {
        media.data = stray->media;
        media.len = stray->media_len;

        ngx_http_openclaw_relay_complete(run, &text, &media);

    } else {
        ngx_http_openclaw_runs_arm(run, rl->conf->run_timeout);

        /*
         * The client may have seen the start of the reply already, from
         * the run before the hand-over: a text that goes on from it is
         * sent as what it adds, like any other progress.
         */

        if (text.len) {
            (void) ngx_http_openclaw_relay_retext(run, &text, 0);
        }
    }

    ngx_http_openclaw_handover_forget(stray);

    return NGX_DONE;
}


/*
 * Runs waiting for a hand-over in "session" wait a short grace once no
 * run of the session is still going here: protocol 4 starts the run with
 * the reply right after the one before it ends.
 */

static void
ngx_http_openclaw_relay_settle(ngx_str_t *session)
{
    ngx_http_openclaw_relay_t  *rl;

    rl = &ngx_http_openclaw_relay;

    if (rl->adopting == 0 || rl->protocol == 3) {
        return;
    }

    ngx_http_openclaw_handover_settle(&rl->sent, session,
                         ngx_min(NGX_HTTP_OPENCLAW_ADOPT_GRACE,
                                 rl->conf->run_timeout));
}


/* a final without text and without media */

static ngx_uint_t
ngx_http_openclaw_relay_empty(ngx_http_openclaw_jv_t *ev)
{
    u_char                  *buf;
    ngx_str_t                text;
    ngx_uint_t               empty;
    ngx_http_openclaw_jv_t  *message;

    message = &ev[C_MESSAGE];

    if (!ngx_http_openclaw_jv_is(&ev[C_STATE], "final")) {
        return 0;
    }

    if (message->type != NGX_HTTP_OPENCLAW_JSON_OBJECT) {
        return 1;
    }

    buf = NULL;

    if (ngx_http_openclaw_message_text(message, &text, &buf) != NGX_OK) {
        return 0;
    }

    empty = (text.len == 0);

    if (buf) {
        ngx_free(buf);
    }

    if (empty) {
        if (ngx_http_openclaw_message_media(message, &text, &buf) != NGX_OK) {
            return 0;
        }

        empty = (text.len == 0);

        if (buf) {
            ngx_free(buf);
        }
    }

    return empty;
}


/* remembers an unowned run briefly, in case protocol 3 hands it over */

static void
ngx_http_openclaw_relay_stray(ngx_str_t *run_id, ngx_http_openclaw_jv_t *ev)
{
    u_char                  *buf, *mbuf;
    ngx_str_t                session, text, media;
    ngx_uint_t               ended;
    ngx_http_openclaw_jv_t  *v, *message;

    v = &ev[C_SESSION];

    if (v->type != NGX_HTTP_OPENCLAW_JSON_STRING || v->escaped
        || v->size > NGX_HTTP_OPENCLAW_SESSION_MAX
        || (run_id->len > 3 && ngx_strncmp(run_id->data, "wh-", 3) == 0))
    {
        return;
    }

    session.data = (u_char *) v->data;
    session.len = v->size;

    v = &ev[C_STATE];
    message = &ev[C_MESSAGE];

    ended = ngx_http_openclaw_jv_is(v, "final")
            || ngx_http_openclaw_jv_is(v, "error")
            || ngx_http_openclaw_jv_is(v, "aborted");

    buf = NULL;
    mbuf = NULL;
    ngx_str_null(&media);

    if (message->type != NGX_HTTP_OPENCLAW_JSON_OBJECT
        || ngx_http_openclaw_message_text(message, &text, &buf) != NGX_OK)
    {
        ngx_str_null(&text);
    }

    /* a reply handed over after its end keeps what its final carried */

    if (message->type == NGX_HTTP_OPENCLAW_JSON_OBJECT
        && ngx_http_openclaw_jv_is(v, "final")
        && ngx_http_openclaw_message_media(message, &media, &mbuf) != NGX_OK)
    {
        ngx_str_null(&media);
    }

    ngx_http_openclaw_handover_remember(run_id, &session, ended, &text,
                                        &media);

    if (buf) {
        ngx_free(buf);
    }

    if (mbuf) {
        ngx_free(mbuf);
    }
}


static void
ngx_http_openclaw_relay_timeout(ngx_http_openclaw_run_t *run)
{
    ngx_str_t                   none;
    ngx_http_openclaw_relay_t  *rl;

    rl = &ngx_http_openclaw_relay;

    rl->stats->errors_timeout++;

    switch (run->state) {

    case NGX_HTTP_OPENCLAW_RUN_WAITING:
        ngx_http_openclaw_relay_fail(run, "gateway not connected within "
                                     "%M ms (%s)", rl->conf->request_timeout,
                                     ngx_http_openclaw_gateway_last_error());
        return;

    case NGX_HTTP_OPENCLAW_RUN_SENT:

        /*
         * Not aborted: the gateway may be only slow (protocol 3 stalls),
         * and the same message sent again finds its run by its key.
         */

        ngx_http_openclaw_relay_fail(run, "gateway did not acknowledge the "
                                     "message within %M ms",
                                     rl->conf->request_timeout);
        return;

    case NGX_HTTP_OPENCLAW_RUN_ADOPTING:

        /*
         * Nothing took over: a silent reply, or a message the gateway
         * folded into the reply of the run before it.
         */

        if (!run->seen_text) {
            ngx_str_set(&none, "");
            ngx_http_openclaw_relay_complete(run, &none, NULL);
            return;
        }

        ngx_http_openclaw_relay_fail(run, "the gateway ended the run without "
                                     "its final text");
        return;

    default:
        ngx_http_openclaw_relay_abort(run);
        ngx_http_openclaw_relay_fail(run, "no reply from the agent within "
                                     "%M ms", rl->conf->run_timeout);
        return;
    }
}


static void
ngx_http_openclaw_relay_abort(ngx_http_openclaw_run_t *run)
{
    ngx_str_t                 params;
    ngx_http_openclaw_json_t  j;

    if (run->state == NGX_HTTP_OPENCLAW_RUN_WAITING
        || ngx_exiting || ngx_terminate)
    {
        return;
    }

    j.log = ngx_cycle->log;
    ngx_http_openclaw_json_begin(&j, NULL);
    ngx_http_openclaw_json_string(&j, "sessionKey", run->session.data,
                                  run->session.len);
    ngx_http_openclaw_json_string(&j, "runId", run->rid.data,
                                  run->rid.len);

    if (ngx_http_openclaw_json_end(&j, &params) == NGX_OK) {
        (void) ngx_http_openclaw_gateway_call(NULL, "chat.abort",
                                              params.data, params.len);
    }
}


/*
 * The final text may go on from the last progress (a gateway coalesces
 * deltas, and its final can overtake the last of them) or rewrite it, as
 * a progress may: the complete carries what is new, possibly nothing, so
 * that a client's deltas, started over at each "replace", always add up
 * to the complete's content.
 */

static void
ngx_http_openclaw_relay_complete(ngx_http_openclaw_run_t *run,
    ngx_str_t *text, ngx_str_t *media)
{
    ngx_str_t                   delta;
    ngx_uint_t                  replaced;
    ngx_http_openclaw_reply_t   rp;
    ngx_http_openclaw_relay_t  *rl;

    rl = &ngx_http_openclaw_relay;

    if (!run->push) {
        rl->stats->completed++;
        ngx_http_openclaw_metrics_observe(&rl->stats->complete,
                                          ngx_current_msec - run->start);
    }

    if (run->ep) {
        delta = *text;
        replaced = !ngx_http_openclaw_relay_extends(run, text);

        if (!replaced) {
            delta.data += run->text_len;
            delta.len -= run->text_len;
        }

        /* the reply that ends the message */

        if (!run->push) {
            rl->stats->messages_out++;
        }

        ngx_memzero(&rp, sizeof(ngx_http_openclaw_reply_t));

        rp.type = "complete";
        rp.content = text;
        rp.delta = &delta;
        rp.replace = replaced;
        rp.session = &run->session;
        rp.id = &run->id;
        rp.agent = run->push;
        rp.media = media;

        (void) ngx_http_openclaw_reply(run->ep, &rp);
    }

    ngx_http_openclaw_relay_free(run, NULL);
}


/*
 * The final message ends the run with its text and, on the complete, the
 * blocks that are not text (images the agent made, files), which would
 * otherwise be lost: deltas carry the cumulative message, so media go
 * once, on the complete, and not again on every progress.
 */

static void
ngx_http_openclaw_relay_final(ngx_http_openclaw_run_t *run,
    ngx_http_openclaw_jv_t *message, ngx_str_t *text)
{
    u_char     *buf;
    ngx_str_t   media;

    if (message->type != NGX_HTTP_OPENCLAW_JSON_OBJECT
        || ngx_http_openclaw_message_media(message, &media, &buf) != NGX_OK)
    {
        ngx_str_null(&media);
        buf = NULL;
    }

    ngx_http_openclaw_relay_complete(run, text, &media);

    if (buf) {
        ngx_free(buf);
    }
}


static void
ngx_http_openclaw_relay_fail(ngx_http_openclaw_run_t *run,
    const char *fmt, ...)
{
    u_char     *p;
    va_list     args;
    ngx_str_t   error;
    u_char      buf[512];

    va_start(args, fmt);
    p = ngx_vslprintf(buf, buf + sizeof(buf), fmt, args);
    va_end(args);

    error.data = buf;
    error.len = p - buf;

    if (run->push) {
        if (run->ep) {
            (void) ngx_http_openclaw_relay_text_reply(run, "error", NULL,
                                                      NULL, 0, &error);
        }

    } else if (run->ep) {
        (void) ngx_http_openclaw_relay_reply(run->ep, "error", NULL,
                                             NULL, &error, &run->session,
                                             &run->id);
    }

    ngx_http_openclaw_relay_free(run, &error);
}


static void
ngx_http_openclaw_relay_free(ngx_http_openclaw_run_t *run, ngx_str_t *error)
{
    ngx_str_t                   none;
    ngx_http_openclaw_relay_t  *rl;

    rl = &ngx_http_openclaw_relay;

    if (run->zone) {
        ngx_str_set(&none, "");
        ngx_http_openclaw_sessions_end(run->zone, &run->session,
                                       error ? error : &none);
    }

    ngx_queue_remove(&run->link);

    if (run->state == NGX_HTTP_OPENCLAW_RUN_WAITING) {
        rl->stats->waiting--;
    }

    if (run->state == NGX_HTTP_OPENCLAW_RUN_ADOPTING) {
        rl->adopting--;
    }

    if (run->ep) {
        ngx_queue_remove(&run->ep_link);
        run->ep->nruns--;

        if (run->held) {
            ngx_http_openclaw_relay_release(run->ep, run->held);
        }
    }

    rl->stats->runs--;

    ngx_http_openclaw_gateway_cancel(&run->rpc);

    if (run->text) {
        ngx_free(run->text);
    }

    /* a run that ends may leave hand-overs of its session to wait less */

    if (rl->adopting) {
        ngx_http_openclaw_relay_settle(&run->session);
    }

    ngx_http_openclaw_runs_free(run);
}


ngx_int_t
ngx_http_openclaw_relay_reply(ngx_http_openclaw_endpoint_t *ep,
    const char *type, ngx_str_t *content, ngx_str_t *delta, ngx_str_t *error,
    ngx_str_t *session, ngx_str_t *id)
{
    ngx_http_openclaw_reply_t  rp;

    /* every message in ends in exactly one of these */

    if (type[0] != 'p') {
        ngx_http_openclaw_relay.stats->messages_out++;
    }

    ngx_memzero(&rp, sizeof(ngx_http_openclaw_reply_t));

    rp.type = type;
    rp.content = content;
    rp.delta = delta;
    rp.error = error;
    rp.session = session;
    rp.id = id;

    return ngx_http_openclaw_reply(ep, &rp);
}


/*
 * A message the transport could not take whole (larger than the
 * location allows, on a link that must stay open for others): it counts
 * as a message in, and ends in its error.
 */

ngx_int_t
ngx_http_openclaw_relay_refuse(ngx_http_openclaw_endpoint_t *ep,
    const char *error)
{
    ngx_str_t  text;

    ngx_http_openclaw_relay.stats->messages_in++;
    ngx_http_openclaw_relay.stats->errors_input++;
    ep->messages_in++;

    text.data = (u_char *) error;
    text.len = ngx_strlen(error);

    return ngx_http_openclaw_relay_reply(ep, "error", NULL, NULL, &text,
                                         NULL, NULL);
}


/*
 * The server is closing the connection (shutdown, idle or keepalive
 * timeout): every message in flight still gets its error.  Runs are not
 * aborted, so that the same message sent again, with the same id, finds
 * its run on the gateway.
 */

void
ngx_http_openclaw_relay_closing(ngx_http_openclaw_endpoint_t *ep,
    const char *reason)
{
    ngx_queue_t              *q;
    ngx_http_openclaw_run_t  *run;

    while (!ngx_queue_empty(&ep->runs)) {
        q = ngx_queue_head(&ep->runs);
        run = ngx_queue_data(q, ngx_http_openclaw_run_t, ep_link);

        ngx_http_openclaw_relay_fail(run, "connection closing (%s) before "
                                     "the reply; send the message again "
                                     "with the same id to get it", reason);
    }

    ngx_http_openclaw_control_closing(ep, reason);
}


/* the client is gone: its runs are aborted, if the location says so */

void
ngx_http_openclaw_relay_gone(ngx_http_openclaw_endpoint_t *ep)
{
    ngx_str_t                 gone;
    ngx_queue_t              *q;
    ngx_http_openclaw_run_t  *run;

    ngx_str_set(&gone, "the client went away before the reply");

    while (!ngx_queue_empty(&ep->runs)) {
        q = ngx_queue_head(&ep->runs);
        run = ngx_queue_data(q, ngx_http_openclaw_run_t, ep_link);

        /* the agent's own runs go on without the client */

        if (ep->conf->abort_on_disconnect && !run->push) {
            ngx_http_openclaw_relay_abort(run);
        }

        ngx_queue_remove(&run->ep_link);
        run->ep = NULL;
        ep->nruns--;

        if (run->held) {
            ngx_http_openclaw_relay_release(ep, run->held);
            run->held = NULL;
        }

        /* the message ended, unanswered: nobody is left to answer */

        if (!run->push) {
            ngx_http_openclaw_relay.stats->messages_out++;
        }

        ngx_http_openclaw_relay_free(run, &gone);
    }

    ngx_http_openclaw_control_gone(ep);
    ngx_http_openclaw_push_remove(ep);

    ngx_http_openclaw_relay.stats->clients--;
}
