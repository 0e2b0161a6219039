
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * Runs the agent starts itself (a cron job, a reminder, a reply the
 * gateway delivers later, another operator's message) on a session of
 * this bridge: which endpoint of this worker may see them.  The relay
 * asks for runs that no client here started; a run the relay may be
 * waiting for (a hand-over of one of its own messages) never is one.
 */


#ifndef _NGX_HTTP_OPENCLAW_PUSH_H_INCLUDED_
#define _NGX_HTTP_OPENCLAW_PUSH_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_openclaw_endpoint.h"


ngx_int_t ngx_http_openclaw_push_init(ngx_cycle_t *cycle);

/* the endpoints of the worker, known from their first to their last day */
void ngx_http_openclaw_push_add(ngx_http_openclaw_endpoint_t *ep);
void ngx_http_openclaw_push_remove(ngx_http_openclaw_endpoint_t *ep);

/*
 * The run "run_id" in "session" is no run of a client here: the endpoint
 * that gets it, or NULL.
 */
ngx_http_openclaw_endpoint_t *ngx_http_openclaw_push_endpoint(
    ngx_str_t *run_id, ngx_str_t *session);

/*
 * A message of this worker is in flight in the run's session: the run may
 * be its hand-over, and is no agent's run, now or at any later event.
 */
void ngx_http_openclaw_push_not(ngx_str_t *run_id);

/*
 * The run "run_id" in "session", no client's run of any worker, ended
 * here, "delivered" to an endpoint of this worker (or given to a message
 * as its hand-over) or not.  A run of a webhook session that no worker
 * delivered is dropped: NGX_OK, once for all the workers, when this one
 * is the last to see the end.
 */
ngx_int_t ngx_http_openclaw_push_end(ngx_str_t *run_id, ngx_str_t *session,
    ngx_uint_t delivered);


#endif /* _NGX_HTTP_OPENCLAW_PUSH_H_INCLUDED_ */
