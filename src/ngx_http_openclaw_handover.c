
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * Hand-overs (gateway-protocol.md 13.9): a gateway may end a run without
 * its text, a protocol 3 one to answer a message that reached a busy
 * session, either after a restart, and stream the reply in a run of its
 * own choosing on the same session.  The relay's run then waits for that
 * run; this file keeps the runs nobody here owns that may be it, and
 * finds the run that waits in a session.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_openclaw_handover.h"


/* unowned runs remembered for adoption, and for how long */
#define NGX_HTTP_OPENCLAW_STRAYS        16
#define NGX_HTTP_OPENCLAW_STRAY_TTL     30000


static ngx_uint_t ngx_http_openclaw_handover_in(ngx_http_openclaw_run_t *run,
    ngx_str_t *session);
static void ngx_http_openclaw_handover_free(ngx_http_openclaw_stray_t *s);


static ngx_http_openclaw_stray_t
    ngx_http_openclaw_strays[NGX_HTTP_OPENCLAW_STRAYS];


void
ngx_http_openclaw_handover_remember(ngx_str_t *run_id, ngx_str_t *session,
    ngx_uint_t ended, ngx_str_t *text, ngx_str_t *media)
{
    ngx_uint_t                  i, oldest;
    ngx_http_openclaw_stray_t  *s, *strays;

    if (run_id->len > NGX_HTTP_OPENCLAW_RUN_ID_MAX
        || session->len > NGX_HTTP_OPENCLAW_SESSION_MAX)
    {
        return;
    }

    strays = ngx_http_openclaw_strays;
    s = NULL;
    oldest = 0;

    for (i = 0; i < NGX_HTTP_OPENCLAW_STRAYS; i++) {
        if (strays[i].run_id_len == run_id->len
            && ngx_strncmp(strays[i].run_id, run_id->data, run_id->len) == 0)
        {
            s = &strays[i];
            break;
        }

        if (strays[i].seen < strays[oldest].seen) {
            oldest = i;
        }
    }

    if (s == NULL) {
        s = &strays[oldest];

        ngx_http_openclaw_handover_free(s);

        ngx_memzero(s, sizeof(ngx_http_openclaw_stray_t));
        ngx_memcpy(s->run_id, run_id->data, run_id->len);
        s->run_id_len = run_id->len;
        ngx_memcpy(s->session, session->data, session->len);
        s->session_len = session->len;
    }

    s->seen = ngx_current_msec;

    if (ended) {
        s->ended = 1;
    }

    /* the final's images and files, for the run that adopts it later */

    if (media->len && s->media == NULL) {
        s->media = ngx_alloc(media->len, ngx_cycle->log);

        if (s->media) {
            ngx_memcpy(s->media, media->data, media->len);
            s->media_len = media->len;
        }
    }

    /* an event without text leaves the text of the one before */

    if (text->len == 0) {
        return;
    }

    if (s->text) {
        ngx_free(s->text);
    }

    s->text = ngx_alloc(text->len, ngx_cycle->log);
    s->text_len = 0;

    if (s->text) {
        ngx_memcpy(s->text, text->data, text->len);
        s->text_len = text->len;
    }
}


ngx_http_openclaw_stray_t *
ngx_http_openclaw_handover_find(ngx_str_t *session)
{
    ngx_uint_t                  i;
    ngx_http_openclaw_stray_t  *s;

    for (i = 0; i < NGX_HTTP_OPENCLAW_STRAYS; i++) {
        s = &ngx_http_openclaw_strays[i];

        if (s->run_id_len
            && ngx_current_msec - s->seen < NGX_HTTP_OPENCLAW_STRAY_TTL
            && s->session_len == session->len
            && ngx_strncmp(s->session, session->data, session->len) == 0)
        {
            return s;
        }
    }

    return NULL;
}


void
ngx_http_openclaw_handover_forget(ngx_http_openclaw_stray_t *stray)
{
    stray->run_id_len = 0;

    ngx_http_openclaw_handover_free(stray);
}


static void
ngx_http_openclaw_handover_free(ngx_http_openclaw_stray_t *s)
{
    if (s->text) {
        ngx_free(s->text);
        s->text = NULL;
        s->text_len = 0;
    }

    if (s->media) {
        ngx_free(s->media);
        s->media = NULL;
        s->media_len = 0;
    }
}


ngx_http_openclaw_run_t *
ngx_http_openclaw_handover_waiter(ngx_queue_t *sent, ngx_str_t *session)
{
    ngx_queue_t              *q;
    ngx_http_openclaw_run_t  *run;

    for (q = ngx_queue_head(sent);
         q != ngx_queue_sentinel(sent);
         q = ngx_queue_next(q))
    {
        run = ngx_queue_data(q, ngx_http_openclaw_run_t, link);

        if (run->state == NGX_HTTP_OPENCLAW_RUN_ADOPTING
            && ngx_http_openclaw_handover_in(run, session))
        {
            return run;
        }
    }

    return NULL;
}


void
ngx_http_openclaw_handover_settle(ngx_queue_t *sent, ngx_str_t *session,
    ngx_msec_t grace)
{
    ngx_queue_t              *q;
    ngx_http_openclaw_run_t  *run;

    for (q = ngx_queue_head(sent);
         q != ngx_queue_sentinel(sent);
         q = ngx_queue_next(q))
    {
        run = ngx_queue_data(q, ngx_http_openclaw_run_t, link);

        if (run->state != NGX_HTTP_OPENCLAW_RUN_ADOPTING
            && ngx_http_openclaw_handover_in(run, session))
        {
            return;
        }
    }

    for (q = ngx_queue_head(sent);
         q != ngx_queue_sentinel(sent);
         q = ngx_queue_next(q))
    {
        run = ngx_queue_data(q, ngx_http_openclaw_run_t, link);

        if (run->state == NGX_HTTP_OPENCLAW_RUN_ADOPTING
            && ngx_http_openclaw_handover_in(run, session)
            && ngx_http_openclaw_runs_expires(run) > ngx_current_msec + grace)
        {
            ngx_http_openclaw_runs_arm(run, grace);
        }
    }
}


static ngx_uint_t
ngx_http_openclaw_handover_in(ngx_http_openclaw_run_t *run,
    ngx_str_t *session)
{
    return run->session.len == session->len
           && ngx_strncmp(run->session.data, session->data, session->len)
              == 0;
}
