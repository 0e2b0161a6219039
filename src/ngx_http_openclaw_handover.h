
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#ifndef _NGX_HTTP_OPENCLAW_HANDOVER_H_INCLUDED_
#define _NGX_HTTP_OPENCLAW_HANDOVER_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_openclaw_runs.h"
#include "ngx_http_openclaw_message.h"


/* a run no client here owns, seen recently: protocol 3 may hand it over */

typedef struct {
    u_char                          run_id[NGX_HTTP_OPENCLAW_RUN_ID_MAX];
    size_t                          run_id_len;
    u_char                          session[NGX_HTTP_OPENCLAW_SESSION_MAX];
    size_t                          session_len;
    ngx_msec_t                      seen;
    u_char                         *text;
    size_t                          text_len;
    u_char                         *media;     /* of its final, or NULL */
    size_t                          media_len;
    ngx_uint_t                      ended;
} ngx_http_openclaw_stray_t;


/*
 * An event of "run_id" in "session" that no run here owns: its latest
 * text (if any), whether it ended, and the media of its final (if any)
 * are kept a while, the oldest such run giving way to a new one.
 */
void ngx_http_openclaw_handover_remember(ngx_str_t *run_id,
    ngx_str_t *session, ngx_uint_t ended, ngx_str_t *text, ngx_str_t *media);

/* a stray of "session" seen recently, or NULL */
ngx_http_openclaw_stray_t *ngx_http_openclaw_handover_find(
    ngx_str_t *session);

/* the stray was adopted: it is no candidate any more */
void ngx_http_openclaw_handover_forget(ngx_http_openclaw_stray_t *stray);

/* the run of "session" among "sent" that waits for a hand-over, or NULL */
ngx_http_openclaw_run_t *ngx_http_openclaw_handover_waiter(ngx_queue_t *sent,
    ngx_str_t *session);

/*
 * Once no run of "session" among "sent" is still going, the runs of it
 * waiting for a hand-over wait "grace" at most.
 */
void ngx_http_openclaw_handover_settle(ngx_queue_t *sent, ngx_str_t *session,
    ngx_msec_t grace);


#endif /* _NGX_HTTP_OPENCLAW_HANDOVER_H_INCLUDED_ */
