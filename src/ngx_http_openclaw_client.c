
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_openclaw_client.h"


/*
 * The parser always consumes all it is given and copies what must
 * outlive a read (partial headers, control payloads, fragments), so one
 * read buffer serves every client of the worker.
 */
#define NGX_HTTP_OPENCLAW_READ_SIZE    65536

/*
 * Output and reassembly buffers above this are freed once drained; an
 * output buffer only when what it held was small for it, so that a client
 * whose replies come in large batches does not grow it again each time.
 */
#define NGX_HTTP_OPENCLAW_KEEP_SIZE    16384


static ngx_int_t ngx_http_openclaw_client_check(ngx_http_request_t *r,
    ngx_str_t *key);
static ngx_int_t ngx_http_openclaw_client_has_token(ngx_str_t *value,
    const char *token, size_t len);
static ngx_int_t ngx_http_openclaw_client_origin_allowed(
    ngx_http_openclaw_loc_conf_t *conf, ngx_str_t *origin);
static ngx_int_t ngx_http_openclaw_client_refuse(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *line, const char *why);
static ngx_int_t ngx_http_openclaw_client_add_header(ngx_http_request_t *r,
    const char *name, u_char *value, size_t len);
static ngx_int_t ngx_http_openclaw_client_accept(ngx_http_request_t *r,
    ngx_str_t *key);
static void ngx_http_openclaw_client_read_handler(ngx_event_t *rev);
static void ngx_http_openclaw_client_write_handler(ngx_event_t *wev);
static void ngx_http_openclaw_client_read(ngx_http_openclaw_client_t *cl);
static void ngx_http_openclaw_client_process(ngx_http_openclaw_client_t *cl,
    u_char *pos, size_t len);
static void ngx_http_openclaw_client_message(ngx_http_openclaw_client_t *cl,
    ngx_http_openclaw_ws_event_t *ev);
static void ngx_http_openclaw_client_control(ngx_http_openclaw_client_t *cl,
    ngx_http_openclaw_ws_event_t *ev);
static void ngx_http_openclaw_client_advance(ngx_http_openclaw_client_t *cl);
static ngx_int_t ngx_http_openclaw_client_frame(
    ngx_http_openclaw_client_t *cl, ngx_uint_t opcode, u_char *data,
    size_t len);
static void ngx_http_openclaw_client_fail(ngx_http_openclaw_client_t *cl,
    ngx_uint_t code, const char *reason);
static void ngx_http_openclaw_client_closed_with(
    ngx_http_openclaw_client_t *cl, ngx_uint_t code, u_char *reason,
    size_t len);
static void ngx_http_openclaw_client_sent_close(
    ngx_http_openclaw_client_t *cl, u_char *payload, size_t n);
static void ngx_http_openclaw_client_post_write(
    ngx_http_openclaw_client_t *cl);
static ngx_int_t ngx_http_openclaw_client_flush(
    ngx_http_openclaw_client_t *cl);
static void ngx_http_openclaw_client_keepalive(ngx_event_t *ev);
static void ngx_http_openclaw_client_idle(ngx_event_t *ev);
static void ngx_http_openclaw_client_closing(ngx_event_t *ev);
static void ngx_http_openclaw_client_finalize(ngx_http_openclaw_client_t *cl,
    ngx_int_t rc);
static void ngx_http_openclaw_client_cleanup(void *data);


static u_char  ngx_http_openclaw_read_buffer[NGX_HTTP_OPENCLAW_READ_SIZE];

static ngx_str_t  ngx_http_openclaw_426 = ngx_string("426 Upgrade Required");


ngx_int_t
ngx_http_openclaw_client_handler(ngx_http_request_t *r,
    ngx_http_openclaw_message_pt handler)
{
    ngx_int_t                      rc;
    ngx_str_t                      key;
    ngx_connection_t              *c;
    ngx_pool_cleanup_t            *cln;
    ngx_http_core_loc_conf_t      *clcf;
    ngx_http_openclaw_client_t    *cl;
    ngx_http_openclaw_loc_conf_t  *conf;

    c = r->connection;

    ngx_str_null(&key);

    /* NGX_DECLINED: nothing to refuse */

    rc = ngx_http_openclaw_client_check(r, &key);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    conf = ngx_http_get_module_loc_conf(r, ngx_http_openclaw_bridge_module);

    cl = ngx_pcalloc(r->pool, sizeof(ngx_http_openclaw_client_t));
    if (cl == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_openclaw_client_cleanup;
    cln->data = cl;

    cl->request = r;
    cl->connection = c;
    cl->conf = conf;
    cl->handler = handler;
    cl->last_active = ngx_current_msec;

    ngx_http_openclaw_ws_parser_init(&cl->parser, 1, conf->max_message_size);

    ngx_http_set_ctx(r, cl, ngx_http_openclaw_bridge_module);

    rc = ngx_http_openclaw_client_accept(r, &key);
    if (rc != NGX_OK) {
        return rc;
    }

    /* from here on the connection speaks WebSocket and is ours */

    r->main->count++;
    cl->upgraded = 1;

    c->log->action = "relaying WebSocket messages";

    c->read->handler = ngx_http_openclaw_client_read_handler;
    c->write->handler = ngx_http_openclaw_client_write_handler;

    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (clcf->tcp_nodelay && ngx_tcp_nodelay(c) != NGX_OK) {
        cl->state = NGX_HTTP_OPENCLAW_FLUSHING;
        ngx_post_event(c->write, &ngx_posted_events);
        return NGX_DONE;
    }

    cl->keepalive.handler = ngx_http_openclaw_client_keepalive;
    cl->keepalive.data = cl;
    cl->keepalive.log = c->log;
    cl->keepalive.cancelable = 1;

    cl->idle.handler = ngx_http_openclaw_client_idle;
    cl->idle.data = cl;
    cl->idle.log = c->log;
    cl->idle.cancelable = 1;

    /* a close handshake in progress must hold off the worker's exit */

    cl->close_timer.handler = ngx_http_openclaw_client_closing;
    cl->close_timer.data = cl;
    cl->close_timer.log = c->log;

    if (conf->ping_interval) {
        ngx_add_timer(&cl->keepalive, conf->ping_interval);
    }

    if (conf->idle_timeout) {
        ngx_add_timer(&cl->idle, conf->idle_timeout);
    }

    if (ngx_exiting || ngx_terminate) {
        ngx_http_openclaw_client_close(cl, NGX_HTTP_OPENCLAW_WS_GOING_AWAY,
                                       "server shutting down");
        return NGX_DONE;
    }

    /* graceful shutdown finds open clients through the idle flag */

    c->idle = 1;

    /*
     * Bytes that came with the request headers are frame data; they are
     * parsed from a posted event, once this handler has returned and the
     * request can be finalized safely.
     */

    ngx_post_event(c->read, &ngx_posted_events);

    if (r->out || c->buffered) {
        ngx_post_event(c->write, &ngx_posted_events);
    }

    return NGX_DONE;
}


static ngx_int_t
ngx_http_openclaw_client_check(ngx_http_request_t *r, ngx_str_t *key)
{
    ngx_uint_t                     i, upgrade, connection, keys, versions,
                                   origins;
    ngx_str_t                     *version, *origin;
    ngx_list_part_t               *part;
    ngx_table_elt_t               *h;
    ngx_http_openclaw_loc_conf_t  *conf;

    conf = ngx_http_get_module_loc_conf(r, ngx_http_openclaw_bridge_module);

    if (r != r->main) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "openclaw_bridge cannot serve a subrequest");
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (r->method != NGX_HTTP_GET) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "WebSocket handshake with method \"%V\"",
                      &r->method_name);

        if (ngx_http_openclaw_client_add_header(r, "Allow", (u_char *) "GET",
                                                3)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return NGX_HTTP_NOT_ALLOWED;
    }

    upgrade = 0;
    connection = 0;
    keys = 0;
    versions = 0;
    origins = 0;
    version = NULL;
    origin = NULL;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].hash == 0) {
            continue;
        }

        switch (h[i].key.len) {

        case sizeof("Upgrade") - 1:
            if (ngx_strncmp(h[i].lowcase_key, "upgrade", 7) == 0
                && ngx_http_openclaw_client_has_token(&h[i].value,
                                                      "websocket", 9))
            {
                upgrade = 1;
            }
            break;

        case sizeof("Connection") - 1:
            if (ngx_strncmp(h[i].lowcase_key, "connection", 10) == 0
                && ngx_http_openclaw_client_has_token(&h[i].value,
                                                      "upgrade", 7))
            {
                connection = 1;
            }
            break;

        case sizeof("Sec-WebSocket-Key") - 1:
            if (ngx_strncmp(h[i].lowcase_key, "sec-websocket-key", 17) == 0) {
                keys++;
                *key = h[i].value;
            }
            break;

        case sizeof("Sec-WebSocket-Version") - 1:
            if (ngx_strncmp(h[i].lowcase_key, "sec-websocket-version", 21)
                == 0)
            {
                versions++;
                version = &h[i].value;
            }
            break;

        case sizeof("Origin") - 1:
            if (ngx_strncmp(h[i].lowcase_key, "origin", 6) == 0) {
                origins++;
                origin = &h[i].value;
            }
            break;
        }
    }

    if (!upgrade || !connection) {
        return ngx_http_openclaw_client_refuse(r, 426,
                                         &ngx_http_openclaw_426,
                                         "this location only accepts "
                                         "WebSocket connections");
    }

    if (r->http_version != NGX_HTTP_VERSION_11
#if (NGX_HTTP_V2)
        || r->stream
#endif
       )
    {
        return ngx_http_openclaw_client_refuse(r, 426,
                                         &ngx_http_openclaw_426,
                                         "WebSocket needs HTTP/1.1");
    }

    if (versions != 1 || version->len != 2
        || ngx_strncmp(version->data, "13", 2) != 0)
    {
        return ngx_http_openclaw_client_refuse(r, 426,
                                         &ngx_http_openclaw_426,
                                         "unsupported Sec-WebSocket-Version");
    }

    if (keys != 1
        || ngx_http_openclaw_ws_key_valid(key->data, key->len) != 0)
    {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "WebSocket handshake without a valid "
                      "Sec-WebSocket-Key");
        return NGX_HTTP_BAD_REQUEST;
    }

    if (r->headers_in.content_length_n > 0 || r->headers_in.chunked) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "WebSocket handshake with a request body");
        return NGX_HTTP_BAD_REQUEST;
    }

    if (origins > 1) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "WebSocket handshake with several Origin headers");
        return NGX_HTTP_FORBIDDEN;
    }

    if (origin && !ngx_http_openclaw_client_origin_allowed(conf, origin)) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "WebSocket handshake from origin \"%V\" not allowed",
                      origin);
        return NGX_HTTP_FORBIDDEN;
    }

    return NGX_DECLINED;
}


/* RFC 9110 token lists: comma separated, optional whitespace, any case */

static ngx_int_t
ngx_http_openclaw_client_has_token(ngx_str_t *value, const char *token,
    size_t len)
{
    u_char  *p, *last, *start, *end;

    p = value->data;
    last = p + value->len;

    while (p < last) {

        while (p < last && (*p == ' ' || *p == '\t' || *p == ',')) {
            p++;
        }

        start = p;

        while (p < last && *p != ',') {
            p++;
        }

        end = p;

        while (end > start && (end[-1] == ' ' || end[-1] == '\t')) {
            end--;
        }

        if ((size_t) (end - start) == len
            && ngx_strncasecmp(start, (u_char *) token, len) == 0)
        {
            return 1;
        }
    }

    return 0;
}


static ngx_int_t
ngx_http_openclaw_client_origin_allowed(ngx_http_openclaw_loc_conf_t *conf,
    ngx_str_t *origin)
{
    ngx_uint_t   i;
    ngx_str_t   *allowed;

    if (conf->origins == NULL) {
        return 1;
    }

    allowed = conf->origins->elts;

    for (i = 0; i < conf->origins->nelts; i++) {
        if (allowed[i].len == origin->len
            && ngx_strncasecmp(allowed[i].data, origin->data, origin->len)
               == 0)
        {
            return 1;
        }
    }

    return 0;
}


/*
 * nginx has no error page for 426, and RFC 6455 wants the supported
 * version in it, so the response is made here.  The connection is not
 * kept alive: bytes a client sent after its upgrade request, expecting
 * success, must not be read as HTTP (RFC 9931).
 */

static ngx_int_t
ngx_http_openclaw_client_refuse(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *line, const char *why)
{
    size_t        len;
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "WebSocket handshake refused: %s", why);

    if (ngx_http_discard_request_body(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* RFC 9110 7.8: whoever sends Upgrade lists it in Connection too */

    if (ngx_http_openclaw_client_add_header(r, "Sec-WebSocket-Version",
                                            (u_char *) "13", 2)
        != NGX_OK
        || ngx_http_openclaw_client_add_header(r, "Upgrade",
                                               (u_char *) "websocket", 9)
           != NGX_OK
        || ngx_http_openclaw_client_add_header(r, "Connection",
                                               (u_char *) "upgrade", 7)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->keepalive = 0;

    len = ngx_strlen(why);

    b = ngx_create_temp_buf(r->pool, len + 1);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_cpymem(b->last, why, len);
    *b->last++ = LF;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = status;
    r->headers_out.status_line = *line;
    r->headers_out.content_length_n = len + 1;
    ngx_str_set(&r->headers_out.content_type, "text/plain");
    r->headers_out.content_type_len = r->headers_out.content_type.len;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


static ngx_int_t
ngx_http_openclaw_client_add_header(ngx_http_request_t *r, const char *name,
    u_char *value, size_t len)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key.data = (u_char *) name;
    h->key.len = ngx_strlen(name);
    h->value.data = value;
    h->value.len = len;

    return NGX_OK;
}


static ngx_int_t
ngx_http_openclaw_client_accept(ngx_http_request_t *r, ngx_str_t *key)
{
    u_char     *accept;
    ngx_int_t   rc;

    accept = ngx_pnalloc(r->pool, NGX_HTTP_OPENCLAW_WS_ACCEPT_LEN);
    if (accept == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_openclaw_ws_accept(key->data, key->len, accept) != 0) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "Sec-WebSocket-Accept computation failed");
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->headers_out.status = NGX_HTTP_SWITCHING_PROTOCOLS;
    ngx_str_set(&r->headers_out.status_line, "101 Switching Protocols");

    /* -1, not 0: a 1xx response must not carry Content-Length */
    r->headers_out.content_length_n = -1;
    r->headers_out.content_type.len = 0;
    r->keepalive = 0;

    if (ngx_http_openclaw_client_add_header(r, "Upgrade",
                                            (u_char *) "websocket", 9)
        != NGX_OK
        || ngx_http_openclaw_client_add_header(r, "Sec-WebSocket-Accept",
                                         accept,
                                         NGX_HTTP_OPENCLAW_WS_ACCEPT_LEN)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK) {
        return rc;
    }

    /* the header must not wait below postpone_output for a body */

    if (ngx_http_send_special(r, NGX_HTTP_FLUSH) == NGX_ERROR) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_http_openclaw_client_read_handler(ngx_event_t *rev)
{
    ngx_connection_t            *c;
    ngx_http_request_t          *r;
    ngx_http_openclaw_client_t  *cl;

    c = rev->data;
    r = c->data;
    cl = ngx_http_get_module_ctx(r, ngx_http_openclaw_bridge_module);

    if (c->close) {

        /* worker_shutdown_timeout has run out: no more courtesy */

        if (c->error || cl->state != NGX_HTTP_OPENCLAW_OPEN) {
            ngx_http_openclaw_client_finalize(cl, NGX_ERROR);
            return;
        }

        /*
         * Graceful shutdown or reload: say so to the client.  This runs
         * outside the event loop, which would not get to a posted write
         * before the close timer: the frame is written here.
         */

        c->close = 0;

        ngx_http_openclaw_client_close(cl, NGX_HTTP_OPENCLAW_WS_GOING_AWAY,
                                       "server shutting down");

        (void) ngx_http_openclaw_client_flush(cl);
        return;
    }

    ngx_http_openclaw_client_read(cl);
}


static void
ngx_http_openclaw_client_write_handler(ngx_event_t *wev)
{
    ngx_connection_t            *c;
    ngx_http_request_t          *r;
    ngx_http_openclaw_client_t  *cl;

    c = wev->data;
    r = c->data;
    cl = ngx_http_get_module_ctx(r, ngx_http_openclaw_bridge_module);

    if (wev->timedout) {
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "client timed out reading WebSocket messages");
        c->timedout = 1;
        ngx_http_openclaw_client_finalize(cl, NGX_ERROR);
        return;
    }

    if (cl->overflow && cl->state == NGX_HTTP_OPENCLAW_OPEN) {
        ngx_http_openclaw_client_close(cl, NGX_HTTP_OPENCLAW_WS_POLICY,
                                       "client too slow, send buffer full");
    }

    if (ngx_http_openclaw_client_flush(cl) != NGX_OK) {
        return;
    }

    /* reading was paused while output was pending: resume it */

    if (c->read->ready || r->header_in->pos < r->header_in->last) {
        ngx_http_openclaw_client_read(cl);
    }
}


static void
ngx_http_openclaw_client_read(ngx_http_openclaw_client_t *cl)
{
    ssize_t              n;
    ngx_buf_t           *b;
    ngx_event_t         *rev;
    ngx_connection_t    *c;

    c = cl->connection;
    rev = c->read;

    /*
     * Like proxying, a client that does not take its output gets no more
     * of its input read: its own backlog stops it.
     */

    if (cl->state >= NGX_HTTP_OPENCLAW_FLUSHING || cl->out_pos != cl->out_last)
    {
        return;
    }

    cl->reading = 1;

    b = cl->request->header_in;

    if (b->pos < b->last) {
        n = b->last - b->pos;
        ngx_http_openclaw_client_process(cl, b->pos, n);
        b->pos = b->last;
    }

    while (rev->ready
           && cl->state < NGX_HTTP_OPENCLAW_FLUSHING
           && cl->out_pos == cl->out_last)
    {
        n = c->recv(c, ngx_http_openclaw_read_buffer,
                    NGX_HTTP_OPENCLAW_READ_SIZE);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == 0 || n == NGX_ERROR) {
            ngx_log_error(NGX_LOG_INFO, c->log, 0,
                          "client closed the connection without a "
                          "WebSocket close frame");
            cl->reading = 0;
            c->error = 1;
            ngx_http_openclaw_client_finalize(cl, NGX_ERROR);
            return;
        }

        ngx_http_openclaw_client_process(cl, ngx_http_openclaw_read_buffer,
                                         n);

        if (cl->out_pos != cl->out_last
            && ngx_http_openclaw_client_flush(cl) == NGX_DONE)
        {
            return;
        }
    }

    cl->reading = 0;

    if (cl->out_pos != cl->out_last
        || cl->state == NGX_HTTP_OPENCLAW_FLUSHING)
    {
        if (ngx_http_openclaw_client_flush(cl) == NGX_DONE) {
            return;
        }
    }

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_http_openclaw_client_finalize(cl, NGX_ERROR);
    }
}


static void
ngx_http_openclaw_client_process(ngx_http_openclaw_client_t *cl,
    u_char *pos, size_t len)
{
    size_t                        n;
    u_char                       *last;
    ngx_http_openclaw_ws_rc_e     rc;
    ngx_http_openclaw_ws_event_t  ev;

    last = pos + len;

    while (cl->state < NGX_HTTP_OPENCLAW_FLUSHING) {

        rc = ngx_http_openclaw_ws_parse(&cl->parser, pos, last - pos, &n, &ev);
        pos += n;

        switch (rc) {

        case NGX_HTTP_OPENCLAW_WS_DATA:
            ngx_http_openclaw_client_message(cl, &ev);
            break;

        case NGX_HTTP_OPENCLAW_WS_CONTROL:
            ngx_http_openclaw_client_control(cl, &ev);
            break;

        case NGX_HTTP_OPENCLAW_WS_ERROR:
            ngx_log_error(NGX_LOG_INFO, cl->connection->log, 0,
                          "client sent an invalid WebSocket frame: %s",
                          ev.reason);
            ngx_http_openclaw_client_fail(cl, ev.code, ev.reason);
            return;

        default: /* NGX_HTTP_OPENCLAW_WS_AGAIN */
            return;
        }
    }
}


static void
ngx_http_openclaw_client_message(ngx_http_openclaw_client_t *cl,
    ngx_http_openclaw_ws_event_t *ev)
{
    size_t   need, size;
    u_char  *msg;

    /* after our close frame only the peer's close matters */

    if (cl->state != NGX_HTTP_OPENCLAW_OPEN) {
        return;
    }

    if (ev->first && ev->last) {
        cl->last_active = ngx_current_msec;
        (void) cl->handler(cl, ev->opcode, ev->data, ev->len);
        return;
    }

    need = cl->msg_len + ev->len + (size_t) cl->parser.remaining;

    if (need > cl->msg_size) {
        size = ngx_max(need, ngx_max(2 * cl->msg_size, 4096));

        if (cl->conf->max_message_size && size > cl->conf->max_message_size)
        {
            size = ngx_max(need, cl->conf->max_message_size);
        }

        msg = ngx_alloc(size, cl->connection->log);
        if (msg == NULL) {
            ngx_http_openclaw_client_fail(cl, NGX_HTTP_OPENCLAW_WS_INTERNAL,
                                          "out of memory");
            return;
        }

        if (cl->msg) {
            ngx_memcpy(msg, cl->msg, cl->msg_len);
            ngx_free(cl->msg);
        }

        cl->msg = msg;
        cl->msg_size = size;
    }

    ngx_memcpy(cl->msg + cl->msg_len, ev->data, ev->len);
    cl->msg_len += ev->len;

    if (!ev->last) {
        return;
    }

    cl->last_active = ngx_current_msec;

    (void) cl->handler(cl, ev->opcode, cl->msg, cl->msg_len);

    /* the handler may have closed the client, but "cl" lives on */

    cl->msg_len = 0;

    if (cl->msg_size > NGX_HTTP_OPENCLAW_KEEP_SIZE) {
        ngx_free(cl->msg);
        cl->msg = NULL;
        cl->msg_size = 0;
    }
}


static void
ngx_http_openclaw_client_control(ngx_http_openclaw_client_t *cl,
    ngx_http_openclaw_ws_event_t *ev)
{
    switch (ev->opcode) {

    case NGX_HTTP_OPENCLAW_WS_PING:
        if (cl->state == NGX_HTTP_OPENCLAW_OPEN
            && ngx_http_openclaw_client_frame(cl, NGX_HTTP_OPENCLAW_WS_PONG,
                                              ev->data, ev->len)
               != NGX_OK)
        {
            ngx_http_openclaw_client_fail(cl, NGX_HTTP_OPENCLAW_WS_INTERNAL,
                                          "out of memory");
        }

        return;

    case NGX_HTTP_OPENCLAW_WS_PONG:
        if (cl->awaiting_pong) {
            cl->awaiting_pong = 0;

            if (cl->conf->ping_interval) {
                ngx_add_timer(&cl->keepalive, cl->conf->ping_interval);
            }
        }

        return;

    default: /* NGX_HTTP_OPENCLAW_WS_CLOSE */

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, cl->connection->log, 0,
                       "openclaw client close frame %ui, state %d",
                       (ngx_uint_t) ev->code, cl->state);

        ngx_http_openclaw_client_closed_with(cl, ev->code, ev->data,
                                             ev->len);

        if (cl->state == NGX_HTTP_OPENCLAW_OPEN) {

            /* echo the code, as RFC 6455 5.5.1 suggests */

            ngx_http_openclaw_client_fail(cl,
                          ev->code == NGX_HTTP_OPENCLAW_WS_NO_STATUS
                          ? 0 : ev->code, "");
            return;
        }

        cl->state = NGX_HTTP_OPENCLAW_FLUSHING;
        return;
    }
}


/* queues a frame; the caller arranges for it to be flushed */

static ngx_int_t
ngx_http_openclaw_client_frame(ngx_http_openclaw_client_t *cl,
    ngx_uint_t opcode, u_char *data, size_t len)
{
    size_t   need, size, used, head;
    u_char  *out;

    need = NGX_HTTP_OPENCLAW_WS_MAX_HEADER + len;

    if ((size_t) (cl->out + cl->out_size - cl->out_last) < need) {

        used = cl->out_last - cl->out_pos;
        head = cl->out_head - cl->out_pos;

        /* moving more than half the buffer per frame would cost more */

        if (cl->out && cl->out_pos != cl->out && used <= cl->out_size / 2
            && cl->out_size - used >= need)
        {
            ngx_memmove(cl->out, cl->out_pos, used);

        } else {
            size = ngx_max(used + need, ngx_max(2 * cl->out_size, 4096));

            out = ngx_alloc(size, cl->connection->log);
            if (out == NULL) {
                return NGX_ERROR;
            }

            if (cl->out) {
                ngx_memcpy(out, cl->out_pos, used);
                ngx_free(cl->out);
            }

            cl->out = out;
            cl->out_size = size;
        }

        cl->out_pos = cl->out;
        cl->out_head = cl->out + head;
        cl->out_last = cl->out + used;
    }

    cl->out_last += ngx_http_openclaw_ws_frame_header(cl->out_last, opcode,
                                                      1, len, NULL);

    if (len) {
        cl->out_last = ngx_cpymem(cl->out_last, data, len);
    }

    if (cl->out_head == cl->out_pos) {
        cl->out_head = cl->out_last;
    }

    return NGX_OK;
}


/*
 * The frame being written is done: "out_head" moves to the end of the
 * frame that "out_pos" is in, read from its header (ours: unmasked).
 */

static void
ngx_http_openclaw_client_advance(ngx_http_openclaw_client_t *cl)
{
    u_char    *p;
    uint64_t   len;

    while (cl->out_head <= cl->out_pos && cl->out_head < cl->out_last) {
        p = cl->out_head;
        len = p[1] & 0x7f;

        if (len == 126) {
            len = ((uint64_t) p[2] << 8) | p[3];
            p += 4;

        } else if (len == 127) {
            len = ((uint64_t) p[2] << 56) | ((uint64_t) p[3] << 48)
                  | ((uint64_t) p[4] << 40) | ((uint64_t) p[5] << 32)
                  | ((uint64_t) p[6] << 24) | ((uint64_t) p[7] << 16)
                  | ((uint64_t) p[8] << 8) | p[9];
            p += 10;

        } else {
            p += 2;
        }

        cl->out_head = p + len;
    }
}


ngx_int_t
ngx_http_openclaw_client_send(ngx_http_openclaw_client_t *cl,
    ngx_uint_t opcode, u_char *data, size_t len)
{
    size_t  behind;

    if (cl->state != NGX_HTTP_OPENCLAW_OPEN) {
        return NGX_DECLINED;
    }

    if (cl->overflow) {
        return NGX_ERROR;
    }

    /*
     * The frame being written does not count: however large one reply
     * is, a client that reads gets it and the next one.  The close is
     * left to the write handler, because the caller may be inside a run
     * or a request that closing would end under it.
     */

    behind = cl->out_head < cl->out_last ? cl->out_last - cl->out_head : 0;

    if (behind >= cl->conf->send_buffer) {
        ngx_log_error(NGX_LOG_INFO, cl->connection->log, 0,
                      "client is not reading: %uz bytes of WebSocket "
                      "messages queued, closing",
                      (size_t) (cl->out_last - cl->out_pos));
        cl->overflow = 1;
        ngx_post_event(cl->connection->write, &ngx_posted_events);
        return NGX_ERROR;
    }

    if (ngx_http_openclaw_client_frame(cl, opcode, data, len) != NGX_OK) {
        ngx_http_openclaw_client_fail(cl, NGX_HTTP_OPENCLAW_WS_INTERNAL,
                                      "out of memory");
        return NGX_ERROR;
    }

    cl->last_active = ngx_current_msec;

    ngx_http_openclaw_client_post_write(cl);

    return NGX_OK;
}


void
ngx_http_openclaw_client_close(ngx_http_openclaw_client_t *cl,
    ngx_uint_t code, const char *reason)
{
    size_t                         n;
    u_char                         payload[NGX_HTTP_OPENCLAW_WS_MAX_CONTROL];
    ngx_http_openclaw_closing_pt   closing;

    if (cl->state != NGX_HTTP_OPENCLAW_OPEN) {
        return;
    }

    closing = cl->closing;

    if (closing) {
        cl->closing = NULL;
        closing(cl, reason);

        /* answering may itself have overflowed the queue and closed */

        if (cl->state != NGX_HTTP_OPENCLAW_OPEN) {
            return;
        }
    }

    n = ngx_http_openclaw_ws_close_payload(payload, code, reason,
                                           ngx_strlen(reason));

    ngx_http_openclaw_client_sent_close(cl, payload, n);

    cl->state = NGX_HTTP_OPENCLAW_CLOSING;
    cl->connection->idle = 0;

    if (ngx_http_openclaw_client_frame(cl, NGX_HTTP_OPENCLAW_WS_CLOSE,
                                       payload, n)
        != NGX_OK)
    {
        cl->state = NGX_HTTP_OPENCLAW_FLUSHING;
    }

    ngx_add_timer(&cl->close_timer, cl->conf->close_timeout);

    ngx_http_openclaw_client_post_write(cl);
}


/*
 * "Fail the WebSocket connection" (RFC 6455 7.1.7): a close frame, then the
 * TCP connection is closed as soon as it is flushed.  Also used to answer
 * the peer's close.
 */

static void
ngx_http_openclaw_client_fail(ngx_http_openclaw_client_t *cl,
    ngx_uint_t code, const char *reason)
{
    size_t   n;
    u_char   payload[NGX_HTTP_OPENCLAW_WS_MAX_CONTROL];

    if (cl->state >= NGX_HTTP_OPENCLAW_FLUSHING) {
        return;
    }

    if (cl->state == NGX_HTTP_OPENCLAW_OPEN) {
        n = ngx_http_openclaw_ws_close_payload(payload, code, reason,
                                               ngx_strlen(reason));

        ngx_http_openclaw_client_sent_close(cl, payload, n);

        (void) ngx_http_openclaw_client_frame(cl, NGX_HTTP_OPENCLAW_WS_CLOSE,
                                              payload, n);

        ngx_add_timer(&cl->close_timer, cl->conf->close_timeout);
    }

    cl->state = NGX_HTTP_OPENCLAW_FLUSHING;
    cl->connection->idle = 0;

    ngx_http_openclaw_client_post_write(cl);
}


/* a close frame's payload as it was written: code, then reason */

static void
ngx_http_openclaw_client_sent_close(ngx_http_openclaw_client_t *cl,
    u_char *payload, size_t n)
{
    if (n < 2) {
        ngx_http_openclaw_client_closed_with(cl,
                                             NGX_HTTP_OPENCLAW_WS_NO_STATUS,
                                             NULL, 0);
        return;
    }

    ngx_http_openclaw_client_closed_with(cl, (payload[0] << 8) | payload[1],
                                         payload + 2, n - 2);
}


/*
 * The close that says how the connection ended is the first one, sent or
 * received: the other side's answer only echoes it.
 */

static void
ngx_http_openclaw_client_closed_with(ngx_http_openclaw_client_t *cl,
    ngx_uint_t code, u_char *reason, size_t len)
{
    if (cl->close_code) {
        return;
    }

    cl->close_code = code;
    cl->close_text_len = ngx_min(len, sizeof(cl->close_text));

    if (cl->close_text_len) {
        ngx_memcpy(cl->close_text, reason, cl->close_text_len);
    }
}


static void
ngx_http_openclaw_client_post_write(ngx_http_openclaw_client_t *cl)
{
    ngx_event_t  *wev;

    /* the read loop flushes by itself */

    if (cl->reading) {
        return;
    }

    wev = cl->connection->write;

    if (!wev->posted) {
        ngx_post_event(wev, &ngx_posted_events);
    }
}


/*
 * NGX_OK: all written; NGX_AGAIN: waiting for the socket; NGX_DONE: the
 * request was finalized and nothing of it may be touched.
 */

static ngx_int_t
ngx_http_openclaw_client_flush(ngx_http_openclaw_client_t *cl)
{
    size_t                     held;
    ssize_t                    n;
    ngx_event_t               *wev;
    ngx_connection_t          *c;
    ngx_http_request_t        *r;
    ngx_http_core_loc_conf_t  *clcf;

    c = cl->connection;
    r = cl->request;
    wev = c->write;

    if (cl->state == NGX_HTTP_OPENCLAW_DONE) {
        return NGX_DONE;
    }

    /* the 101 response may still be on its way through the filters */

    if (r->out || c->buffered) {
        if (ngx_http_output_filter(r, NULL) == NGX_ERROR) {
            ngx_http_openclaw_client_finalize(cl, NGX_ERROR);
            return NGX_DONE;
        }

        if (r->out || c->buffered) {
            goto again;
        }
    }

    while (cl->out_pos < cl->out_last) {

        n = c->send(c, cl->out_pos, cl->out_last - cl->out_pos);

        if (n == NGX_ERROR) {
            c->error = 1;
            ngx_http_openclaw_client_finalize(cl, NGX_ERROR);
            return NGX_DONE;
        }

        if (n == NGX_AGAIN || n == 0) {
            goto again;
        }

        cl->out_pos += n;

        ngx_http_openclaw_client_advance(cl);

        if (wev->timer_set) {
            ngx_del_timer(wev);
        }
    }

    held = cl->out_last - cl->out;

    cl->out_pos = cl->out;
    cl->out_head = cl->out;
    cl->out_last = cl->out;

    if (cl->out_size > NGX_HTTP_OPENCLAW_KEEP_SIZE
        && held <= cl->out_size / 4)
    {
        ngx_free(cl->out);
        cl->out = NULL;
        cl->out_pos = NULL;
        cl->out_head = NULL;
        cl->out_last = NULL;
        cl->out_size = 0;
    }

    if (wev->timer_set) {
        ngx_del_timer(wev);
    }

    if (cl->state == NGX_HTTP_OPENCLAW_FLUSHING) {
        ngx_http_openclaw_client_finalize(cl, NGX_DONE);
        return NGX_DONE;
    }

    return NGX_OK;

again:

    if (!wev->timer_set) {
        clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);
        ngx_add_timer(wev, clcf->send_timeout);
    }

    if (ngx_handle_write_event(wev, 0) != NGX_OK) {
        ngx_http_openclaw_client_finalize(cl, NGX_ERROR);
        return NGX_DONE;
    }

    return NGX_AGAIN;
}


static void
ngx_http_openclaw_client_keepalive(ngx_event_t *ev)
{
    ngx_http_openclaw_client_t  *cl;

    cl = ev->data;

    if (cl->state != NGX_HTTP_OPENCLAW_OPEN) {
        return;
    }

    if (cl->awaiting_pong) {
        ngx_log_error(NGX_LOG_INFO, cl->connection->log, 0,
                      "client did not answer a WebSocket ping in time");
        ngx_http_openclaw_client_close(cl, NGX_HTTP_OPENCLAW_WS_POLICY,
                                       "pong timeout");
        return;
    }

    if (ngx_http_openclaw_client_frame(cl, NGX_HTTP_OPENCLAW_WS_PING, NULL, 0)
        != NGX_OK)
    {
        ngx_http_openclaw_client_fail(cl, NGX_HTTP_OPENCLAW_WS_INTERNAL,
                                      "out of memory");
        return;
    }

    cl->awaiting_pong = 1;
    ngx_add_timer(&cl->keepalive, cl->conf->pong_timeout);

    ngx_http_openclaw_client_post_write(cl);
}


static void
ngx_http_openclaw_client_idle(ngx_event_t *ev)
{
    ngx_msec_t                   elapsed;
    ngx_http_openclaw_client_t  *cl;

    cl = ev->data;

    if (cl->state != NGX_HTTP_OPENCLAW_OPEN) {
        return;
    }

    /* activity only moves a timestamp: the timer is re-armed lazily */

    elapsed = ngx_current_msec - cl->last_active;

    if (elapsed < cl->conf->idle_timeout) {
        ngx_add_timer(&cl->idle, cl->conf->idle_timeout - elapsed);
        return;
    }

    ngx_log_error(NGX_LOG_INFO, cl->connection->log, 0,
                  "WebSocket client idle for %M ms, closing", elapsed);

    ngx_http_openclaw_client_close(cl, NGX_HTTP_OPENCLAW_WS_GOING_AWAY,
                                   "idle timeout");
}


static void
ngx_http_openclaw_client_closing(ngx_event_t *ev)
{
    ngx_http_openclaw_client_t  *cl;

    cl = ev->data;

    ngx_log_error(NGX_LOG_INFO, cl->connection->log, 0,
                  "WebSocket close handshake timed out");

    ngx_http_openclaw_client_finalize(cl, NGX_ERROR);
}


static void
ngx_http_openclaw_client_finalize(ngx_http_openclaw_client_t *cl,
    ngx_int_t rc)
{
    ngx_connection_t  *c;

    if (cl->state == NGX_HTTP_OPENCLAW_DONE) {
        return;
    }

    cl->state = NGX_HTTP_OPENCLAW_DONE;
    cl->connection->idle = 0;

    if (cl->keepalive.timer_set) {
        ngx_del_timer(&cl->keepalive);
    }

    if (cl->idle.timer_set) {
        ngx_del_timer(&cl->idle);
    }

    if (cl->close_timer.timer_set) {
        ngx_del_timer(&cl->close_timer);
    }

    c = cl->connection;

    ngx_http_finalize_request(cl->request, rc);

    /* termination is posted: nothing else runs posted requests for us */

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_openclaw_client_cleanup(void *data)
{
    ngx_http_openclaw_client_t  *cl = data;

    if (cl->gone) {
        cl->gone(cl);
    }

    if (cl->keepalive.timer_set) {
        ngx_del_timer(&cl->keepalive);
    }

    if (cl->idle.timer_set) {
        ngx_del_timer(&cl->idle);
    }

    if (cl->close_timer.timer_set) {
        ngx_del_timer(&cl->close_timer);
    }

    if (cl->msg) {
        ngx_free(cl->msg);
    }

    if (cl->out) {
        ngx_free(cl->out);
    }
}
