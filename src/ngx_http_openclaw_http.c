
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * HTTP requests as endpoints of the relay (openclaw_bridge_http): the
 * body of a POST is one message of the client protocol, and its replies
 * come back as one JSON answer once the message has ended, or, for a
 * client that accepts text/event-stream, as Server-Sent Events, one per
 * reply.  A request is an endpoint of its own, as a WebSocket connection
 * is: a client that goes away before the end has its run aborted the
 * same way.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_openclaw_http.h"
#include "ngx_http_openclaw_relay.h"
#include "ngx_http_openclaw_json.h"
#include "ngx_http_openclaw_callback.h"
#include "ngx_http_openclaw_headers.h"


typedef struct {
    ngx_http_openclaw_endpoint_t    ep;
    ngx_http_request_t             *r;
    ngx_event_t                     end;       /* posted: the request ends
                                                  outside the relay */
    ngx_event_handler_pt            read_handler;
    ngx_str_t                       agent;
    ngx_str_t                       uid;
    ngx_str_t                       sender;
    ngx_str_t                       reply;     /* the last one, a copy */
    ngx_uint_t                      status;
    off_t                           queued;    /* event bytes passed on */
    off_t                           base;      /* c->sent as they began */
    ngx_chain_t                    *free;      /* event buffers, sent */
    ngx_chain_t                    *busy;      /* and being sent */

    unsigned                        sse:1;
    unsigned                        streaming:1;
    unsigned                        ended:1;   /* the message has ended */
    unsigned                        failed:1;  /* the client cannot be
                                                  written to any more */
    unsigned                        relayed:1; /* an endpoint of the relay */
    unsigned                        watching:1;
} ngx_http_openclaw_http_ctx_t;


typedef struct {
    ngx_str_t                       prefix;
    ngx_uint_t                      status;
} ngx_http_openclaw_http_error_t;


static ngx_int_t ngx_http_openclaw_http_content_type(ngx_http_request_t *r);
static ngx_uint_t ngx_http_openclaw_http_accepts_sse(ngx_http_request_t *r);
static ngx_http_openclaw_http_ctx_t *ngx_http_openclaw_http_get_ctx(
    ngx_http_request_t *r);
static void ngx_http_openclaw_http_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_openclaw_http_read_body(ngx_http_request_t *r,
    ngx_str_t *body);
static ngx_int_t ngx_http_openclaw_http_callback(ngx_http_request_t *r,
    ngx_http_openclaw_http_ctx_t *ctx, ngx_str_t *body);
static ngx_int_t ngx_http_openclaw_http_send(ngx_http_openclaw_endpoint_t *ep,
    u_char *data, size_t len);
static ngx_int_t ngx_http_openclaw_http_event(ngx_http_openclaw_http_ctx_t *ctx,
    u_char *data, size_t len, ngx_uint_t last);
static ngx_buf_t *ngx_http_openclaw_http_buf(
    ngx_http_openclaw_http_ctx_t *ctx, size_t n);
static ngx_int_t ngx_http_openclaw_http_stream(
    ngx_http_openclaw_http_ctx_t *ctx);
static void ngx_http_openclaw_http_end_handler(ngx_event_t *ev);
static void ngx_http_openclaw_http_writer(ngx_http_request_t *r);
static ngx_int_t ngx_http_openclaw_http_schedule(ngx_http_request_t *r);
static ngx_int_t ngx_http_openclaw_http_answer(ngx_http_request_t *r,
    ngx_uint_t status, u_char *data, size_t len);
static ngx_int_t ngx_http_openclaw_http_answer_json(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *json);
static ngx_int_t ngx_http_openclaw_http_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *error);
static void ngx_http_openclaw_http_watch(ngx_http_openclaw_http_ctx_t *ctx);
static void ngx_http_openclaw_http_unwatch(ngx_http_openclaw_http_ctx_t *ctx);
static void ngx_http_openclaw_http_read(ngx_event_t *rev);
static void ngx_http_openclaw_http_cleanup(void *data);


/*
 * The relay's errors, as README lists them, by the status that says the
 * same to an HTTP client; any other error is the client's input (400).
 * Matched on the start of the error text, which no message varies.
 */

static ngx_http_openclaw_http_error_t  ngx_http_openclaw_http_errors[] = {
    { ngx_string("gateway refused "), NGX_HTTP_BAD_GATEWAY },
    { ngx_string("gateway reports the run as "), NGX_HTTP_BAD_GATEWAY },
    { ngx_string("agent error: "), NGX_HTTP_BAD_GATEWAY },
    { ngx_string("agent run aborted"), NGX_HTTP_BAD_GATEWAY },
    { ngx_string("the gateway already answered "), NGX_HTTP_BAD_GATEWAY },
    { ngx_string("the gateway ended the run "), NGX_HTTP_BAD_GATEWAY },
    { ngx_string("gateway not connected"), NGX_HTTP_SERVICE_UNAVAILABLE },
    { ngx_string("gateway link lost "), NGX_HTTP_SERVICE_UNAVAILABLE },
    { ngx_string("the gateway link went down "),
      NGX_HTTP_SERVICE_UNAVAILABLE },
    { ngx_string("cannot send the message to the gateway"),
      NGX_HTTP_SERVICE_UNAVAILABLE },
    { ngx_string("the worker has "), NGX_HTTP_SERVICE_UNAVAILABLE },
    { ngx_string("connection closing "), NGX_HTTP_SERVICE_UNAVAILABLE },
    { ngx_string("no reply from the agent within "),
      NGX_HTTP_GATEWAY_TIME_OUT },
    { ngx_string("gateway did not acknowledge "), NGX_HTTP_GATEWAY_TIME_OUT },
    { ngx_string("gateway did not answer in time"),
      NGX_HTTP_GATEWAY_TIME_OUT },
    { ngx_string("message too large for the gateway"),
      NGX_HTTP_REQUEST_ENTITY_TOO_LARGE },
    { ngx_string("a message with this id is already in flight"),
      NGX_HTTP_CONFLICT },
    { ngx_string("Session not found"), NGX_HTTP_NOT_FOUND },
    { ngx_string("out of memory"), NGX_HTTP_INTERNAL_SERVER_ERROR },
    { ngx_null_string, 0 }
};


ngx_int_t
ngx_http_openclaw_http_handler(ngx_http_request_t *r)
{
    ngx_int_t                      rc;
    ngx_table_elt_t               *h;
    ngx_pool_cleanup_t            *cln;
    ngx_http_openclaw_loc_conf_t  *conf;
    ngx_http_openclaw_http_ctx_t  *ctx;

    if (r != r->main) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    conf = ngx_http_get_module_loc_conf(r, ngx_http_openclaw_bridge_module);

    if (r->method != NGX_HTTP_POST) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "Allow");
        ngx_str_set(&h->value, "POST");

        return ngx_http_openclaw_http_error(r, NGX_HTTP_NOT_ALLOWED,
                                            "method not allowed: POST a "
                                            "message as JSON");
    }

    if (ngx_http_openclaw_http_content_type(r) != NGX_OK) {
        return ngx_http_openclaw_http_error(r,
                                            NGX_HTTP_UNSUPPORTED_MEDIA_TYPE,
                                            "the message must be sent as "
                                            "Content-Type: application/json");
    }

    /* a length known in advance is refused before a byte is read */

    if (r->headers_in.content_length_n > (off_t) conf->max_message_size) {
        return ngx_http_openclaw_http_error(r,
                                            NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                            "message too large "
                                            "(openclaw_bridge_max_message_"
                                            "size)");
    }

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_openclaw_http_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->r = r;
    ctx->ep.conf = conf;
    ctx->sse = ngx_http_openclaw_http_accepts_sse(r);

    if ((conf->agent
         && ngx_http_complex_value(r, conf->agent, &ctx->agent) != NGX_OK)
        || (conf->uid
            && ngx_http_complex_value(r, conf->uid, &ctx->uid) != NGX_OK)
        || (conf->sender
            && ngx_http_complex_value(r, conf->sender, &ctx->sender)
               != NGX_OK))
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_openclaw_relay_check(&ctx->agent, &ctx->uid, &ctx->sender)
        != NGX_OK)
    {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "openclaw_bridge_http: invalid agent id, uid or "
                      "sender (letters, digits, \"-\", \"_\" and \".\" "
                      "only)");
        return ngx_http_openclaw_http_error(r, NGX_HTTP_BAD_REQUEST,
                                            "invalid agent id, uid or sender");
    }

    /*
     * The module's ctx slot holds WebSocket clients, which the log
     * variables read: a request finds its own through its cleanup.
     */

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_openclaw_http_cleanup;
    cln->data = ctx;

    rc = ngx_http_read_client_request_body(r, ngx_http_openclaw_http_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


/* application/json, with parameters (charset) or not */

static ngx_int_t
ngx_http_openclaw_http_content_type(ngx_http_request_t *r)
{
    ngx_str_t  *type;

    if (r->headers_in.content_type == NULL) {
        return NGX_DECLINED;
    }

    type = &r->headers_in.content_type->value;

    return ngx_http_openclaw_media_is(type->data, type->len,
                                      "application/json")
           ? NGX_OK : NGX_DECLINED;
}


/* "Accept: text/event-stream", among others or alone, and not q=0 */

static ngx_uint_t
ngx_http_openclaw_http_accepts_sse(ngx_http_request_t *r)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == sizeof("Accept") - 1
            && ngx_strncasecmp(h[i].key.data, (u_char *) "Accept",
                               sizeof("Accept") - 1) == 0
            && ngx_http_openclaw_accepts(h[i].value.data, h[i].value.len,
                                         "text/event-stream"))
        {
            return 1;
        }
    }

    return 0;
}


static ngx_http_openclaw_http_ctx_t *
ngx_http_openclaw_http_get_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t  *cln;

    for (cln = r->pool->cleanup; cln; cln = cln->next) {
        if (cln->handler == ngx_http_openclaw_http_cleanup) {
            return cln->data;
        }
    }

    return NULL;
}


ngx_http_openclaw_endpoint_t *
ngx_http_openclaw_http_endpoint(ngx_http_request_t *r)
{
    ngx_http_openclaw_http_ctx_t  *ctx;

    ctx = ngx_http_openclaw_http_get_ctx(r);

    /* the endpoint is the request's until its pool goes, after the log */

    return (ctx && ctx->relayed) ? &ctx->ep : NULL;
}


static void
ngx_http_openclaw_http_body(ngx_http_request_t *r)
{
    ngx_int_t                      rc;
    ngx_str_t                      body;
    ngx_connection_t              *c;
    ngx_http_openclaw_http_ctx_t  *ctx;

    c = r->connection;
    ctx = ngx_http_openclaw_http_get_ctx(r);

    if (ctx == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    rc = ngx_http_openclaw_http_read_body(r, &body);

    if (rc != NGX_OK) {
        if (rc == NGX_DECLINED) {
            rc = ngx_http_openclaw_http_error(r,
                                         NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                         "message too large "
                                         "(openclaw_bridge_max_message_size)");
        } else {
            rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_http_finalize_request(r, rc);
        return;
    }

    /* the link is closing for the shutdown: nothing could answer it */

    if (ngx_exiting || ngx_terminate) {
        rc = ngx_http_openclaw_http_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                          "server shutting down; send the "
                                          "message again");
        ngx_http_finalize_request(r, rc);
        return;
    }

    rc = ngx_http_openclaw_http_callback(r, ctx, &body);

    if (rc != NGX_DECLINED) {
        ngx_http_finalize_request(r, rc);
        return;
    }

    ctx->ep.send = ngx_http_openclaw_http_send;
    ctx->ep.data = ctx;
    ctx->ep.log = c->log;

    if (ngx_http_openclaw_relay_endpoint(&ctx->ep, r->pool, &ctx->agent,
                                         &ctx->uid, &ctx->sender)
        != NGX_OK)
    {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ctx->relayed = 1;

    ctx->end.handler = ngx_http_openclaw_http_end_handler;
    ctx->end.data = ctx;
    ctx->end.log = c->log;

    /* a client that goes away is noticed, and its run aborted */

    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_request_empty_handler;

    ngx_http_openclaw_http_watch(ctx);

    (void) ngx_http_openclaw_relay_message(&ctx->ep, 0, body.data, body.len);

    if (ctx->ended || ctx->failed) {

        /* answered at once (bad input): the posted end does the rest */
        return;
    }

    if (ctx->sse) {
        if (ngx_http_openclaw_http_stream(ctx) != NGX_OK) {
            ctx->failed = 1;
            ngx_post_event(&ctx->end, &ngx_posted_events);
            return;
        }
    }

    /* the client may have gone while the body was read */

    if (c->read->pending_eof) {
        ngx_http_test_reading(r);
    }
}


/*
 * The body as one piece of memory: a body that nginx kept in a temporary
 * file (beyond client_body_buffer_size) is read back.  NGX_DECLINED when
 * it is larger than a message may be.
 */

static ngx_int_t
ngx_http_openclaw_http_read_body(ngx_http_request_t *r, ngx_str_t *body)
{
    off_t                          len;
    u_char                        *p;
    ssize_t                        n;
    ngx_buf_t                     *b;
    ngx_chain_t                   *cl;
    ngx_http_openclaw_loc_conf_t  *conf;

    conf = ngx_http_get_module_loc_conf(r, ngx_http_openclaw_bridge_module);

    ngx_str_null(body);

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        return NGX_OK;
    }

    len = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        len += ngx_buf_size(cl->buf);
    }

    if (len > (off_t) conf->max_message_size) {
        return NGX_DECLINED;
    }

    cl = r->request_body->bufs;

    if (cl->next == NULL && !cl->buf->in_file) {
        body->data = cl->buf->pos;
        body->len = cl->buf->last - cl->buf->pos;
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, (size_t) len + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    body->data = p;

    for ( /* void */ ; cl; cl = cl->next) {
        b = cl->buf;

        /* a chunked body ends in a buffer of nothing */

        if (ngx_buf_size(b) == 0) {
            continue;
        }

        if (b->in_file) {
            n = ngx_read_file(b->file, p, (size_t) (b->file_last - b->file_pos),
                              b->file_pos);

            if (n != b->file_last - b->file_pos) {
                ngx_log_error(NGX_LOG_CRIT, r->connection->log, 0,
                              "openclaw_bridge_http: cannot read the body "
                              "back from \"%V\"", &b->file->name);
                return NGX_ERROR;
            }

            p += n;
            continue;
        }

        p = ngx_cpymem(p, b->pos, b->last - b->pos);
    }

    body->len = p - body->data;

    return NGX_OK;
}


/*
 * A message with a "callback" URL (or any, where the location names one
 * with openclaw_bridge_callback_url) is answered 202 at once, and its
 * reply POSTed to the URL later, with its progress if the message has
 * "callbackProgress": true; a URL elsewhere than the location allows is
 * refused before anything runs.  NGX_DECLINED: no callback, the request
 * waits or streams.
 */

static ngx_int_t
ngx_http_openclaw_http_callback(ngx_http_request_t *r,
    ngx_http_openclaw_http_ctx_t *ctx, ngx_str_t *body)
{
    ngx_int_t                  rc;
    ngx_str_t                  url, id, reply, session, delivery, out;
    ngx_uint_t                 progress;
    const char                *err;
    ngx_http_openclaw_jv_t     v, cb, jid, jp;
    ngx_http_openclaw_json_t   j;

    /* not JSON, not an object: the relay says so as it does for all */

    if (ngx_http_openclaw_jv_parse(body->data, body->len, &v, NULL) != 0
        || v.type != NGX_HTTP_OPENCLAW_JSON_OBJECT)
    {
        return NGX_DECLINED;
    }

    if (ngx_http_openclaw_jv_get(&v, "callback", &cb) != 0) {

        /* the location's own, for a request that does not ask to stream */

        if (ctx->ep.conf->callback_url.len == 0 || ctx->sse) {
            return NGX_DECLINED;
        }

        url = ctx->ep.conf->callback_url;

    } else {
        if (cb.type != NGX_HTTP_OPENCLAW_JSON_STRING || cb.size == 0) {
            return ngx_http_openclaw_http_error(r, NGX_HTTP_BAD_REQUEST,
                                        "field \"callback\" must be a URL");
        }

        url.data = ngx_pnalloc(r->pool, cb.size);
        if (url.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        url.len = ngx_http_openclaw_jv_decode(&cb, url.data);
    }

    ngx_str_null(&id);

    if (ngx_http_openclaw_jv_get(&v, "id", &jid) == 0
        && (jid.type == NGX_HTTP_OPENCLAW_JSON_STRING
            || jid.type == NGX_HTTP_OPENCLAW_JSON_NUMBER))
    {
        id.data = (u_char *) jid.start;
        id.len = jid.len;
    }

    progress = (ngx_http_openclaw_jv_get(&v, "callbackProgress", &jp) == 0
                && jp.type == NGX_HTTP_OPENCLAW_JSON_TRUE);

    if (ngx_http_openclaw_callback_allowed(ctx->ep.conf, &url, &err)
        != NGX_OK)
    {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "openclaw_bridge_http: callback \"%V\" refused: %s",
                      &url, err);
        return ngx_http_openclaw_http_error(r, NGX_HTTP_BAD_REQUEST, err);
    }

    rc = ngx_http_openclaw_callback_start(r, &ctx->agent, &ctx->uid,
                                          &ctx->sender, body, &url, &id,
                                          progress, &reply, &session,
                                          &delivery);

    switch (rc) {

    case NGX_OK:
        break;

    case NGX_DONE:
        return ngx_http_openclaw_http_answer(r,
                               ngx_http_openclaw_http_status(reply.data,
                                                             reply.len),
                               reply.data, reply.len);

    case NGX_BUSY:
        return ngx_http_openclaw_http_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                            "too many callbacks pending in "
                                            "this worker: try again later");

    default:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    j.log = r->connection->log;

    ngx_http_openclaw_json_begin(&j, "accepted");
    ngx_http_openclaw_json_string(&j, "session", session.data, session.len);

    if (id.len) {
        ngx_http_openclaw_json_raw(&j, "id", id.data, id.len);
    }

    ngx_http_openclaw_json_string(&j, "delivery", delivery.data,
                                  delivery.len);

    if (ngx_http_openclaw_json_end(&j, &out) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_openclaw_http_answer_json(r, NGX_HTTP_ACCEPTED, &out);
}


/*
 * A reply of the relay.  It must not call back into the relay, which
 * sends from inside runs it still holds: what ends the request is posted.
 */

static ngx_int_t
ngx_http_openclaw_http_send(ngx_http_openclaw_endpoint_t *ep, u_char *data,
    size_t len)
{
    ngx_uint_t                     last;
    ngx_http_openclaw_http_ctx_t  *ctx;

    ctx = ep->data;

    if (ctx->ended || ctx->failed) {
        return NGX_ERROR;
    }

    /* the replies are one line: {"type":"progress",... */

    last = !(len > sizeof("{\"type\":\"progress\"") - 1
             && ngx_strncmp(data, "{\"type\":\"progress\"",
                            sizeof("{\"type\":\"progress\"") - 1) == 0);

    if (ctx->streaming) {
        if (ngx_http_openclaw_http_event(ctx, data, len, last) != NGX_OK) {
            ctx->failed = 1;
            ngx_post_event(&ctx->end, &ngx_posted_events);
            return NGX_ERROR;
        }

    } else if (!last) {

        /* a wait for the whole reply: the progress is not needed */

        return NGX_OK;

    } else {

        /* the scratch buffer of the JSON writer is reused at once */

        ctx->reply.data = ngx_pnalloc(ctx->r->pool, len + 1);
        if (ctx->reply.data == NULL) {
            ctx->failed = 1;
            ngx_post_event(&ctx->end, &ngx_posted_events);
            return NGX_ERROR;
        }

        ngx_memcpy(ctx->reply.data, data, len);
        ctx->reply.data[len] = LF;
        ctx->reply.len = len + 1;
        ctx->status = ngx_http_openclaw_http_status(data, len);
    }

    if (last) {
        ctx->ended = 1;
        ngx_post_event(&ctx->end, &ngx_posted_events);
    }

    return NGX_OK;
}


/* "event: <type>" and "data: <reply>", flushed, as EventSource reads them */

static ngx_int_t
ngx_http_openclaw_http_event(ngx_http_openclaw_http_ctx_t *ctx, u_char *data,
    size_t len, ngx_uint_t last)
{
    u_char                        *p, *type, *end;
    size_t                         n;
    ngx_int_t                      rc;
    ngx_buf_t                     *b;
    ngx_chain_t                   *cl;
    ngx_connection_t              *c;
    ngx_http_request_t            *r;

    r = ctx->r;
    c = r->connection;

    /* the type is the first member, a plain word: {"type":"..." */

    type = data + sizeof("{\"type\":\"") - 1;
    end = ngx_strlchr(type, data + len, '"');

    if (end == NULL || len < sizeof("{\"type\":\"") - 1) {
        return NGX_ERROR;
    }

    /* a client that does not read is not buffered for without bound */

    if (ctx->queued - (c->sent - ctx->base)
        > (off_t) ctx->ep.conf->send_buffer)
    {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "openclaw_bridge_http: the client does not read its "
                      "event stream (openclaw_bridge_send_buffer), closing");
        return NGX_ERROR;
    }

    n = sizeof("event: ") - 1 + (end - type) + sizeof("\ndata: ") - 1 + len
        + sizeof("\n\n") - 1;

    b = ngx_http_openclaw_http_buf(ctx, n);
    if (b == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(b->last, "event: ", sizeof("event: ") - 1);
    p = ngx_cpymem(p, type, end - type);
    p = ngx_cpymem(p, "\ndata: ", sizeof("\ndata: ") - 1);
    p = ngx_cpymem(p, data, len);
    p = ngx_cpymem(p, "\n\n", sizeof("\n\n") - 1);
    b->last = p;

    b->flush = 1;
    b->last_buf = last;
    b->last_in_chain = 1;

    cl = ngx_alloc_chain_link(r->pool);
    if (cl == NULL) {
        return NGX_ERROR;
    }

    cl->buf = b;
    cl->next = NULL;

    ctx->queued += n;

    rc = ngx_http_output_filter(r, cl);

    ngx_chain_update_chains(r->pool, &ctx->free, &ctx->busy, &cl,
                            (ngx_buf_tag_t) &ngx_http_openclaw_bridge_module);

    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    return ngx_http_openclaw_http_schedule(r);
}


/*
 * A buffer for an event of "n" bytes.  Every reply carries the whole text
 * so far, so that a stream's events grow: a buffer per event from the
 * request's pool would take memory that grows with the square of the
 * reply.  Sent buffers are reused, a new one has room to grow by half,
 * and one outgrown is freed (the pool's large allocations are).
 */

static ngx_buf_t *
ngx_http_openclaw_http_buf(ngx_http_openclaw_http_ctx_t *ctx, size_t n)
{
    size_t        size;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    while (ctx->free) {
        cl = ctx->free;
        ctx->free = cl->next;
        b = cl->buf;
        ngx_free_chain(ctx->r->pool, cl);

        if ((size_t) (b->end - b->start) >= n) {
            b->pos = b->start;
            b->last = b->start;
            return b;
        }

        (void) ngx_pfree(ctx->r->pool, b->start);
    }

    size = ngx_max(n + n / 2, 1024);

    b = ngx_create_temp_buf(ctx->r->pool, size);
    if (b == NULL) {
        return NULL;
    }

    b->tag = (ngx_buf_tag_t) &ngx_http_openclaw_bridge_module;

    return b;
}


/* the 200 and the headers of the event stream, sent at once */

static ngx_int_t
ngx_http_openclaw_http_stream(ngx_http_openclaw_http_ctx_t *ctx)
{
    ngx_int_t            rc;
    ngx_table_elt_t     *h;
    ngx_http_request_t  *r;

    r = ctx->r;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = -1;
    ngx_str_set(&r->headers_out.content_type, "text/event-stream");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Cache-Control");
    ngx_str_set(&h->value, "no-cache");

    /* a proxy in front (nginx's own among them) must not hold events */

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "X-Accel-Buffering");
    ngx_str_set(&h->value, "no");

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK) {
        return NGX_ERROR;
    }

    rc = ngx_http_send_special(r, NGX_HTTP_FLUSH);

    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    ctx->streaming = 1;
    ctx->base = r->connection->sent;

    return ngx_http_openclaw_http_schedule(r);
}


/* output left over is written as the client reads, under send_timeout */

static ngx_int_t
ngx_http_openclaw_http_schedule(ngx_http_request_t *r)
{
    ngx_event_t               *wev;
    ngx_connection_t          *c;
    ngx_http_core_loc_conf_t  *clcf;

    c = r->connection;
    wev = c->write;

    if (!r->buffered && !c->buffered && !r->postponed) {
        if (wev->timer_set) {
            ngx_del_timer(wev);
        }

        return NGX_OK;
    }

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    r->write_event_handler = ngx_http_openclaw_http_writer;

    if (!wev->delayed && !wev->timer_set) {
        ngx_add_timer(wev, clcf->send_timeout);
    }

    if (ngx_handle_write_event(wev, clcf->send_lowat) != NGX_OK) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_http_openclaw_http_writer(ngx_http_request_t *r)
{
    ngx_int_t                      rc;
    ngx_event_t                   *wev;
    ngx_chain_t                   *out;
    ngx_connection_t              *c;
    ngx_http_openclaw_http_ctx_t  *ctx;

    c = r->connection;
    wev = c->write;

    if (wev->timedout) {
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "client timed out");
        c->timedout = 1;
        ngx_http_finalize_request(r, NGX_HTTP_REQUEST_TIME_OUT);
        return;
    }

    rc = ngx_http_output_filter(r, NULL);

    ctx = ngx_http_openclaw_http_get_ctx(r);

    if (ctx) {
        out = NULL;
        ngx_chain_update_chains(r->pool, &ctx->free, &ctx->busy, &out,
                            (ngx_buf_tag_t) &ngx_http_openclaw_bridge_module);
    }

    if (rc == NGX_ERROR || ngx_http_openclaw_http_schedule(r) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_ERROR);
        return;
    }
}


/* the message has ended, or the client cannot be written to: out of it */

static void
ngx_http_openclaw_http_end_handler(ngx_event_t *ev)
{
    ngx_int_t                      rc;
    ngx_connection_t              *c;
    ngx_http_request_t            *r;
    ngx_http_openclaw_http_ctx_t  *ctx;

    ctx = ev->data;
    r = ctx->r;
    c = r->connection;

    ngx_http_openclaw_http_unwatch(ctx);

    if (ctx->failed) {
        rc = NGX_ERROR;

    } else if (ctx->streaming) {

        /* the last event went with the end of the stream */

        rc = NGX_OK;

    } else {
        rc = ngx_http_openclaw_http_answer(r, ctx->status, ctx->reply.data,
                                           ctx->reply.len);
    }

    ngx_http_finalize_request(r, rc);

    /* a terminated request ends in a posted request: outside any handler */

    ngx_http_run_posted_requests(c);
}


/*
 * JSON the writer holds only until its next use: copied into the
 * request's pool, with the line feed that ends a body of ours.
 */

static ngx_int_t
ngx_http_openclaw_http_answer_json(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *json)
{
    u_char  *p;

    p = ngx_pnalloc(r->pool, json->len + 1);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(p, json->data, json->len);
    p[json->len] = LF;

    return ngx_http_openclaw_http_answer(r, status, p, json->len + 1);
}


static ngx_int_t
ngx_http_openclaw_http_answer(ngx_http_request_t *r, ngx_uint_t status,
    u_char *data, size_t len)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    r->headers_out.status = status;
    r->headers_out.content_length_n = len;
    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->pos = data;
    b->last = data + len;
    b->memory = 1;
    b->last_buf = 1;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/*
 * An answer of nginx's own (method, type, size), in the error shape of
 * the relay's, so that clients parse one kind of error.
 */

static ngx_int_t
ngx_http_openclaw_http_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *error)
{
    ngx_int_t                  rc;
    ngx_str_t                  out;
    ngx_http_openclaw_json_t   j;

    if (r->request_body == NULL) {

        /* from the content handler: the body is read, and dropped, first */

        rc = ngx_http_discard_request_body(r);

        if (rc != NGX_OK) {
            return rc;
        }
    }

    j.log = r->connection->log;

    ngx_http_openclaw_json_begin(&j, "error");
    ngx_http_openclaw_json_string(&j, "error", (u_char *) error,
                                  ngx_strlen(error));

    if (ngx_http_openclaw_json_end(&j, &out) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_openclaw_http_answer_json(r, status, &out);
}


ngx_uint_t
ngx_http_openclaw_http_status(u_char *data, size_t len)
{
    ngx_http_openclaw_jv_t           v, error;
    ngx_http_openclaw_http_error_t  *e;

    if (ngx_http_openclaw_jv_parse(data, len, &v, NULL) != 0
        || ngx_http_openclaw_jv_get(&v, "error", &error) != 0
        || error.type != NGX_HTTP_OPENCLAW_JSON_STRING)
    {
        return NGX_HTTP_OK;
    }

    for (e = ngx_http_openclaw_http_errors; e->prefix.len; e++) {
        if (error.size >= e->prefix.len
            && ngx_strncmp(error.data, e->prefix.data, e->prefix.len) == 0)
        {
            return e->status;
        }
    }

    return NGX_HTTP_BAD_REQUEST;
}


/*
 * Graceful shutdown (a reload too) closes the gateway link at once, and
 * wakes every idle connection: a request waiting for its reply is marked
 * so, so that it gets its error at once rather than after the request
 * timeout, as a WebSocket client does.  Its read handler is nginx's own
 * otherwise.
 */

static void
ngx_http_openclaw_http_watch(ngx_http_openclaw_http_ctx_t *ctx)
{
    ngx_connection_t  *c;

    c = ctx->r->connection;

#if (NGX_HTTP_V2)
    if (ctx->r->stream) {
        return;
    }
#endif

    ctx->read_handler = c->read->handler;
    c->read->handler = ngx_http_openclaw_http_read;
    c->idle = 1;
    ctx->watching = 1;
}


static void
ngx_http_openclaw_http_unwatch(ngx_http_openclaw_http_ctx_t *ctx)
{
    ngx_connection_t  *c;

    if (!ctx->watching) {
        return;
    }

    c = ctx->r->connection;

    c->read->handler = ctx->read_handler;
    c->idle = 0;
    ctx->watching = 0;
}


static void
ngx_http_openclaw_http_read(ngx_event_t *rev)
{
    ngx_connection_t              *c;
    ngx_http_request_t            *r;
    ngx_event_handler_pt           handler;
    ngx_http_openclaw_http_ctx_t  *ctx;

    c = rev->data;
    r = c->data;
    ctx = ngx_http_openclaw_http_get_ctx(r);

    handler = ctx->read_handler;

    /* worker_shutdown_timeout has run out (c->error): nginx's own way */

    if (c->close && !c->error) {
        c->close = 0;
        ngx_http_openclaw_http_unwatch(ctx);

        if (!ctx->ended && !ctx->failed) {
            ngx_http_openclaw_relay_closing(&ctx->ep, "server shutting down");
        }

        /*
         * A worker that is shutting down exits before it gets to posted
         * events when no timer holds it: the answer is written here.
         */

        if (ctx->end.posted) {
            ngx_delete_posted_event(&ctx->end);
            ngx_http_openclaw_http_end_handler(&ctx->end);
        }

        return;
    }

    handler(rev);
}


static void
ngx_http_openclaw_http_cleanup(void *data)
{
    ngx_http_openclaw_http_ctx_t  *ctx = data;

    if (ctx->end.posted) {
        ngx_delete_posted_event(&ctx->end);
    }

    ngx_http_openclaw_http_unwatch(ctx);

    /* a run still in flight has lost its client: aborted, if so set */

    if (ctx->relayed) {
        ctx->relayed = 0;
        ctx->failed = 1;
        ngx_http_openclaw_relay_gone(&ctx->ep);
    }
}
