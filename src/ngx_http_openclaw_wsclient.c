
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <openssl/rand.h>

#include "ngx_http_openclaw_wsclient.h"


#define NGX_HTTP_OPENCLAW_WSCLIENT_KEEP_SIZE  (1024 * 1024)
#define NGX_HTTP_OPENCLAW_WSCLIENT_READ_SIZE    65536
#define NGX_HTTP_OPENCLAW_WSCLIENT_HEADER_MAX   8192

/* a link that lasted this long starts its backoff afresh when lost */
#define NGX_HTTP_OPENCLAW_WSCLIENT_STABLE       10000

/* the close code of a link that failed once ready (private use) */
#define NGX_HTTP_OPENCLAW_WSCLIENT_LOST         4000


static void ngx_http_openclaw_wsclient_connect(ngx_event_t *ev);
static void ngx_http_openclaw_wsclient_keepalive(ngx_event_t *ev);
static void ngx_http_openclaw_wsclient_connected(
    ngx_http_openclaw_wsclient_t *ws);
#if (NGX_HTTP_SSL)
static void ngx_http_openclaw_wsclient_ssl_init(
    ngx_http_openclaw_wsclient_t *ws);
static void ngx_http_openclaw_wsclient_ssl_handshake(ngx_connection_t *c);
static ngx_int_t ngx_http_openclaw_wsclient_check_name(ngx_connection_t *c,
    ngx_http_openclaw_wsclient_t *ws);
#endif
static void ngx_http_openclaw_wsclient_upgrade(
    ngx_http_openclaw_wsclient_t *ws);
static void ngx_http_openclaw_wsclient_read_handler(ngx_event_t *rev);
static void ngx_http_openclaw_wsclient_write_handler(ngx_event_t *wev);
static ngx_int_t ngx_http_openclaw_wsclient_response(
    ngx_http_openclaw_wsclient_t *ws, u_char *pos, size_t len,
    size_t *used);
static ngx_int_t ngx_http_openclaw_wsclient_frames(
    ngx_http_openclaw_wsclient_t *ws, u_char *pos, size_t len);
static ngx_int_t ngx_http_openclaw_wsclient_frame(
    ngx_http_openclaw_wsclient_t *ws, ngx_uint_t opcode, u_char *data,
    size_t len, u_char *prefix, size_t plen, u_char *suffix, size_t slen);
static ngx_int_t ngx_http_openclaw_wsclient_flush(
    ngx_http_openclaw_wsclient_t *ws);
static void ngx_http_openclaw_wsclient_set_error(
    ngx_http_openclaw_wsclient_t *ws, u_char *text, size_t len);
static void ngx_http_openclaw_wsclient_close(ngx_http_openclaw_wsclient_t *ws,
    ngx_uint_t code);
static void ngx_http_openclaw_wsclient_schedule(
    ngx_http_openclaw_wsclient_t *ws);
static void ngx_http_openclaw_wsclient_progress(
    ngx_http_openclaw_wsclient_t *ws);
static ngx_int_t ngx_http_openclaw_wsclient_random(
    ngx_http_openclaw_wsclient_t *ws, u_char *buf, size_t n);
static char *ngx_http_openclaw_wsclient_action(ngx_pool_t *pool,
    const char *what, const char *title);
static u_char *ngx_http_openclaw_wsclient_log_error(ngx_log_t *log,
    u_char *buf, size_t len);


#if (NGX_HTTP_SSL)

ngx_ssl_t *
ngx_http_openclaw_wsclient_ssl(ngx_conf_t *cf, ngx_flag_t verify,
    ngx_str_t *trusted)
{
    ngx_str_t            ciphers;
    ngx_ssl_t           *ssl;
    ngx_pool_cleanup_t  *cln;

    ssl = ngx_pcalloc(cf->pool, sizeof(ngx_ssl_t));
    if (ssl == NULL) {
        return NULL;
    }

    ssl->log = cf->log;

    if (ngx_ssl_create(ssl, NGX_SSL_TLSv1_2|NGX_SSL_TLSv1_3, NULL) != NGX_OK) {
        return NULL;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        ngx_ssl_cleanup_ctx(ssl);
        return NULL;
    }

    cln->handler = ngx_ssl_cleanup_ctx;
    cln->data = ssl;

    ngx_str_set(&ciphers, "DEFAULT");

    if (ngx_ssl_ciphers(cf, ssl, &ciphers, 0) != NGX_OK) {
        return NULL;
    }

    if (!verify) {
        return ssl;
    }

    /* verification is on by default: the system's CAs unless told */

    if (trusted->len) {
        if (ngx_ssl_trusted_certificate(cf, ssl, trusted, 4) != NGX_OK) {
            return NULL;
        }

    } else if (SSL_CTX_set_default_verify_paths(ssl->ctx) != 1) {
        ngx_ssl_error(NGX_LOG_EMERG, cf->log, 0,
                      "SSL_CTX_set_default_verify_paths() failed");
        return NULL;
    }

    return ssl;
}

#endif


ngx_int_t
ngx_http_openclaw_wsclient_ssl_name(ngx_pool_t *pool, ngx_str_t *host,
    ngx_str_t *name, ngx_uint_t *ip)
{
    u_char     *p;
    ngx_str_t   n;
#if (NGX_HAVE_INET6)
    u_char      addr[16];
#endif

    n = *host;

    if (n.len > 2 && n.data[0] == '[' && n.data[n.len - 1] == ']') {
        n.data++;
        n.len -= 2;
    }

    *ip = (ngx_inet_addr(n.data, n.len) != INADDR_NONE);

#if (NGX_HAVE_INET6)
    if (!*ip) {
        *ip = (ngx_inet6_addr(n.data, n.len, addr) == NGX_OK);
    }
#endif

    p = ngx_pnalloc(pool, n.len + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    (void) ngx_cpystrn(p, n.data, n.len + 1);

    name->data = p;
    name->len = n.len;

    return NGX_OK;
}


ngx_int_t
ngx_http_openclaw_wsclient_init(ngx_http_openclaw_wsclient_t *ws,
    ngx_cycle_t *cycle)
{
    ws->connecting = ngx_http_openclaw_wsclient_action(cycle->pool,
                                                       "connecting to",
                                                       ws->title);
    ws->securing = ngx_http_openclaw_wsclient_action(cycle->pool,
                                                     "TLS handshake with",
                                                     ws->title);
    ws->upgrading = ngx_http_openclaw_wsclient_action(cycle->pool,
                                                      "upgrading the "
                                                      "connection to",
                                                      ws->title);

    if (ws->connecting == NULL || ws->securing == NULL
        || ws->upgrading == NULL)
    {
        return NGX_ERROR;
    }

    ws->log = *cycle->log;
    ws->log.handler = ngx_http_openclaw_wsclient_log_error;
    ws->log.data = ws;
    ws->log.action = ws->connecting;

    ws->in = ngx_alloc(NGX_HTTP_OPENCLAW_WSCLIENT_READ_SIZE, cycle->log);
    if (ws->in == NULL) {
        return NGX_ERROR;
    }

    ws->state = NGX_HTTP_OPENCLAW_WSCLIENT_DOWN;
    ws->random_pos = sizeof(ws->random);
    ws->backoff = NGX_HTTP_OPENCLAW_WSCLIENT_BACKOFF_MIN;
    ws->error[0] = '\0';

    ws->reconnect.handler = ngx_http_openclaw_wsclient_connect;
    ws->reconnect.data = ws;
    ws->reconnect.log = &ws->log;
    ws->reconnect.cancelable = 1;

    ws->keepalive.handler = ngx_http_openclaw_wsclient_keepalive;
    ws->keepalive.data = ws;
    ws->keepalive.log = &ws->log;
    ws->keepalive.cancelable = 1;

    return NGX_OK;
}


void
ngx_http_openclaw_wsclient_start(ngx_http_openclaw_wsclient_t *ws)
{
    /* a little jitter so that workers do not all knock at once */

    ngx_add_timer(&ws->reconnect, 1 + ngx_random() % 100);
}


void
ngx_http_openclaw_wsclient_halt(ngx_http_openclaw_wsclient_t *ws)
{
    if (ws->connection) {
        ngx_http_openclaw_wsclient_close(ws, NGX_HTTP_OPENCLAW_WS_GOING_AWAY);
    }

    if (ws->reconnect.timer_set) {
        ngx_del_timer(&ws->reconnect);
    }
}


void
ngx_http_openclaw_wsclient_stop(ngx_http_openclaw_wsclient_t *ws)
{
    ngx_http_openclaw_wsclient_halt(ws);

    /*
     * The buffers outlive the links (closing one keeps them for the
     * next), and the object itself goes with its owner: nothing else
     * would free them.
     */

    ngx_free(ws->in);
    ws->in = NULL;

    if (ws->out) {
        ngx_free(ws->out);
        ws->out = NULL;
    }

    if (ws->msg) {
        ngx_free(ws->msg);
        ws->msg = NULL;
    }
}


void
ngx_http_openclaw_wsclient_ready(ngx_http_openclaw_wsclient_t *ws,
    size_t max_message)
{
    /* an owner that hears of oversized messages skips them itself */

    ws->parser.max_message = ws->oversized ? 0 : max_message;
    ws->max_data = max_message;
    ws->skipping = 0;

    /* the handshake timeout ends here */

    if (ws->connection->read->timer_set) {
        ngx_del_timer(ws->connection->read);
    }

    if (ws->ping_interval) {
        ws->ping_at = 0;
        ngx_add_timer(&ws->keepalive, ws->ping_interval);
    }

    ws->state = NGX_HTTP_OPENCLAW_WSCLIENT_READY;
    ws->ready_at = ngx_current_msec;
    ws->retry_after = 0;
    ws->failures = 0;
}


static void
ngx_http_openclaw_wsclient_connect(ngx_event_t *ev)
{
    ngx_int_t                      rc;
    ngx_addr_t                    *addr;
    ngx_connection_t              *c;
    ngx_http_openclaw_wsclient_t  *ws;

    ws = ev->data;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    ws->pool = ngx_create_pool(1024, &ws->log);
    if (ws->pool == NULL) {
        ngx_http_openclaw_wsclient_schedule(ws);
        return;
    }

    addr = &ws->url->addrs[ws->addr++ % ws->url->naddrs];

    ngx_memzero(&ws->peer, sizeof(ngx_peer_connection_t));

    ws->peer.sockaddr = addr->sockaddr;
    ws->peer.socklen = addr->socklen;
    ws->peer.name = &addr->name;
    ws->peer.get = ngx_event_get_peer;
    ws->peer.log = &ws->log;
    ws->peer.log_error = NGX_ERROR_ERR;

    ws->log.action = ws->connecting;
    ws->state = NGX_HTTP_OPENCLAW_WSCLIENT_CONNECTING;
    ngx_http_openclaw_wsclient_progress(ws);

    rc = ngx_event_connect_peer(&ws->peer);

    if (rc == NGX_ERROR || rc == NGX_BUSY || rc == NGX_DECLINED) {
        if (ws->peer.connection) {
            ngx_close_connection(ws->peer.connection);
            ws->peer.connection = NULL;
        }

        ngx_destroy_pool(ws->pool);
        ws->pool = NULL;

        ngx_http_openclaw_wsclient_fail(ws, NGX_LOG_WARN,
                                        "connect() to the %s failed",
                                        ws->name);
        return;
    }

    c = ws->peer.connection;
    ws->connection = c;

    c->data = ws;
    c->pool = ws->pool;
    c->log = &ws->log;
    c->read->log = c->log;
    c->write->log = c->log;
    c->read->handler = ngx_http_openclaw_wsclient_read_handler;
    c->write->handler = ngx_http_openclaw_wsclient_write_handler;

    /* graceful shutdown finds the link through the idle flag */
    c->idle = 1;

    ngx_http_openclaw_ws_parser_init(&ws->parser, 0, ws->max_message);
    ws->msg_len = 0;
    ws->out_pos = ws->out;
    ws->out_last = ws->out;

    ngx_add_timer(c->write, ws->connect_timeout);

    if (rc == NGX_OK) {
        ngx_http_openclaw_wsclient_connected(ws);
    }
}


static void
ngx_http_openclaw_wsclient_connected(ngx_http_openclaw_wsclient_t *ws)
{
#if (NGX_HTTP_SSL)
    if (ws->ssl && ws->connection->ssl == NULL) {
        ngx_http_openclaw_wsclient_ssl_init(ws);
        return;
    }
#endif

    ngx_http_openclaw_wsclient_upgrade(ws);
}


#if (NGX_HTTP_SSL)

static void
ngx_http_openclaw_wsclient_ssl_init(ngx_http_openclaw_wsclient_t *ws)
{
    ngx_int_t          rc;
    ngx_connection_t  *c;

    c = ws->connection;

    ws->log.action = ws->securing;

    if (ngx_ssl_create_connection(ws->ssl, c, NGX_SSL_BUFFER|NGX_SSL_CLIENT)
        != NGX_OK)
    {
        ngx_http_openclaw_wsclient_fail(ws, NGX_LOG_ERR,
                                        "cannot create a TLS connection");
        return;
    }

    /* ssl_name is NUL-terminated; an address is never sent as SNI */

    if (ws->ssl_server_name && !ws->ssl_ip) {

        if (SSL_set_tlsext_host_name(c->ssl->connection,
                                     (char *) ws->ssl_name.data)
            == 0)
        {
            ngx_http_openclaw_wsclient_fail(ws, NGX_LOG_ERR,
                                            "SSL_set_tlsext_host_name() "
                                            "failed");
            return;
        }
    }

    rc = ngx_ssl_handshake(c);

    if (rc == NGX_AGAIN) {
        c->ssl->handler = ngx_http_openclaw_wsclient_ssl_handshake;
        return;
    }

    ngx_http_openclaw_wsclient_ssl_handshake(c);
}


static void
ngx_http_openclaw_wsclient_ssl_handshake(ngx_connection_t *c)
{
    long                           rc;
    ngx_http_openclaw_wsclient_t  *ws;

    ws = c->data;

    if (!c->ssl->handshaked) {
        ngx_http_openclaw_wsclient_fail(ws, NGX_LOG_ERR,
                                        "TLS handshake with the %s failed",
                                        ws->name);
        return;
    }

    if (ws->ssl_verify) {
        rc = SSL_get_verify_result(c->ssl->connection);

        if (rc != X509_V_OK) {
            ngx_http_openclaw_wsclient_fail(ws, NGX_LOG_ERR,
                                    "%s TLS certificate verify error: "
                                    "(%l:%s)", ws->name, rc,
                                    X509_verify_cert_error_string(rc));
            return;
        }

        if (ngx_http_openclaw_wsclient_check_name(c, ws) != NGX_OK) {
            ngx_http_openclaw_wsclient_fail(ws, NGX_LOG_ERR,
                                    "%s TLS certificate does not match "
                                    "\"%V\"", ws->name, &ws->ssl_name);
            return;
        }
    }

    c->read->handler = ngx_http_openclaw_wsclient_read_handler;
    c->write->handler = ngx_http_openclaw_wsclient_write_handler;

    ngx_http_openclaw_wsclient_upgrade(ws);
}


/* nginx's own check compares DNS names only: an address is an IP entry */

static ngx_int_t
ngx_http_openclaw_wsclient_check_name(ngx_connection_t *c,
    ngx_http_openclaw_wsclient_t *ws)
{
    int    rc;
    X509  *cert;

    if (!ws->ssl_ip) {
        return ngx_ssl_check_host(c, &ws->ssl_name);
    }

    cert = SSL_get1_peer_certificate(c->ssl->connection);
    if (cert == NULL) {
        return NGX_ERROR;
    }

    rc = X509_check_ip_asc(cert, (char *) ws->ssl_name.data, 0);

    X509_free(cert);

    return rc == 1 ? NGX_OK : NGX_ERROR;
}

#endif


/* the client side of the opening handshake (RFC 6455 4.1) */

static void
ngx_http_openclaw_wsclient_upgrade(ngx_http_openclaw_wsclient_t *ws)
{
    size_t     len;
    u_char     raw[16], *p;
    ngx_str_t  src, dst;

    ws->log.action = ws->upgrading;
    ws->state = NGX_HTTP_OPENCLAW_WSCLIENT_UPGRADING;
    ngx_http_openclaw_wsclient_progress(ws);

    if (ngx_http_openclaw_wsclient_random(ws, raw, sizeof(raw)) != NGX_OK) {
        ngx_http_openclaw_wsclient_fail(ws, NGX_LOG_ALERT,
                                        "no random bytes for the WebSocket "
                                        "key");
        return;
    }

    src.data = raw;
    src.len = sizeof(raw);
    dst.data = ws->key;
    ngx_encode_base64(&dst, &src);

    len = sizeof("GET  HTTP/1.1" CRLF "Host: " CRLF
                 "Upgrade: websocket" CRLF "Connection: Upgrade" CRLF
                 "Sec-WebSocket-Key: " CRLF
                 "Sec-WebSocket-Version: 13" CRLF CRLF) - 1
          + ws->uri.len + ws->host.len + sizeof(ws->key) + ws->headers.len;

    /* the same buffer collects the response */

    len = ngx_max(len, NGX_HTTP_OPENCLAW_WSCLIENT_HEADER_MAX);

    ws->header = ngx_create_temp_buf(ws->pool, len);
    if (ws->header == NULL) {
        ngx_http_openclaw_wsclient_fail(ws, NGX_LOG_ERR, "out of memory");
        return;
    }

    p = ngx_sprintf(ws->header->pos,
                    "GET %V HTTP/1.1" CRLF "Host: %V" CRLF
                    "Upgrade: websocket" CRLF "Connection: Upgrade" CRLF
                    "Sec-WebSocket-Key: %*s" CRLF
                    "Sec-WebSocket-Version: 13" CRLF "%V" CRLF,
                    &ws->uri, &ws->host, dst.len, ws->key, &ws->headers);

    if (ngx_http_openclaw_wsclient_frame(ws, 0, ws->header->pos,
                                         p - ws->header->pos, NULL, 0,
                                         NULL, 0)
        != NGX_OK)
    {
        ngx_http_openclaw_wsclient_fail(ws, NGX_LOG_ERR, "out of memory");
        return;
    }

    ws->header->last = ws->header->pos;

    if (ws->connection->write->timer_set) {
        ngx_del_timer(ws->connection->write);
    }

    /* the owner's handshake has the same time: ready() ends it */

    ngx_add_timer(ws->connection->read, ws->timeout);

    (void) ngx_http_openclaw_wsclient_flush(ws);
}


static void
ngx_http_openclaw_wsclient_write_handler(ngx_event_t *wev)
{
    int                            err;
    socklen_t                      len;
    ngx_connection_t              *c;
    ngx_http_openclaw_wsclient_t  *ws;

    c = wev->data;
    ws = c->data;

    if (wev->timedout) {
        ngx_http_openclaw_wsclient_fail(ws, NGX_LOG_WARN, "%s %s", ws->name,
                                        ws->state
                                        == NGX_HTTP_OPENCLAW_WSCLIENT_CONNECTING
                                        ? "connect timed out"
                                        : "is not reading");
        return;
    }

    if (ws->state == NGX_HTTP_OPENCLAW_WSCLIENT_CONNECTING) {

        err = 0;
        len = sizeof(int);

        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, (void *) &err, &len)
            == -1)
        {
            err = ngx_socket_errno;
        }

        if (err) {
            ngx_http_openclaw_wsclient_fail(ws, NGX_LOG_WARN,
                                            "connect() to the %s failed "
                                            "(%d: %s)", ws->name, err,
                                            strerror(err));
            return;
        }

        ngx_http_openclaw_wsclient_connected(ws);
        return;
    }

    (void) ngx_http_openclaw_wsclient_flush(ws);
}


static void
ngx_http_openclaw_wsclient_read_handler(ngx_event_t *rev)
{
    size_t                         used;
    ssize_t                        n;
    ngx_int_t                      rc;
    ngx_connection_t              *c;
    ngx_http_openclaw_wsclient_t  *ws;

    c = rev->data;
    ws = c->data;

    if (c->close) {

        if (ws->keep && !c->error && ws->keep(ws)) {
            ngx_log_debug1(NGX_LOG_DEBUG_HTTP, c->log, 0,
                           "openclaw %s link kept for its replies",
                           ws->name);
            c->close = 0;
            c->idle = 0;
            return;
        }

        if (ws->connection == NULL) {
            return;     /* the owner closed it meanwhile */
        }

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, c->log, 0,
                       "openclaw %s link closed for shutdown", ws->name);
        ngx_http_openclaw_wsclient_close(ws, NGX_HTTP_OPENCLAW_WS_GOING_AWAY);
        ws->closed(ws, 0);
        return;
    }

    if (rev->timedout) {
        ngx_http_openclaw_wsclient_fail(ws, NGX_LOG_WARN,
                                        "%s handshake timed out", ws->name);
        return;
    }

    if (ws->state == NGX_HTTP_OPENCLAW_WSCLIENT_CONNECTING) {
        return;
    }

    while (rev->ready) {

        n = c->recv(c, ws->in, NGX_HTTP_OPENCLAW_WSCLIENT_READ_SIZE);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == 0 || n == NGX_ERROR) {
            ngx_http_openclaw_wsclient_fail(ws, NGX_LOG_WARN,
                                            "%s closed the connection",
                                            ws->name);
            return;
        }

        ws->last_rx = ngx_current_msec;

        used = 0;

        if (ws->state == NGX_HTTP_OPENCLAW_WSCLIENT_UPGRADING) {
            rc = ngx_http_openclaw_wsclient_response(ws, ws->in, n, &used);

            if (rc == NGX_ERROR) {
                return;
            }
        }

        if ((size_t) n > used
            && ngx_http_openclaw_wsclient_frames(ws, ws->in + used, n - used)
               != NGX_OK)
        {
            return;
        }
    }

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_http_openclaw_wsclient_fail(ws, NGX_LOG_ERR,
                                        "cannot wait for %s input",
                                        ws->name);
        return;
    }

    if (ws->out_pos != ws->out_last) {
        (void) ngx_http_openclaw_wsclient_flush(ws);
    }
}


/*
 * Collects the 101 response; "*used" tells how many bytes belonged to it,
 * the rest are the first frames.  NGX_AGAIN: more is needed; NGX_ERROR:
 * the link has failed.
 */

static ngx_int_t
ngx_http_openclaw_wsclient_response(ngx_http_openclaw_wsclient_t *ws,
    u_char *pos, size_t len, size_t *used)
{
    u_char      *p, *end, *line, *colon, *value, *last;
    size_t       n, have;
    ngx_buf_t   *b;
    ngx_str_t    key;
    ngx_uint_t   accepted, upgrade;
    u_char       expect[NGX_HTTP_OPENCLAW_WS_ACCEPT_LEN];

    b = ws->header;

    have = b->last - b->pos;
    n = ngx_min(len, (size_t) (b->end - b->last));
    b->last = ngx_cpymem(b->last, pos, n);

    end = ngx_strlcasestrn(b->pos, b->last, (u_char *) CRLF CRLF, 4 - 1);

    if (end == NULL) {
        if (b->last == b->end) {
            ngx_http_openclaw_wsclient_fail(ws, NGX_LOG_ERR,
                                            "%s sent too long a response "
                                            "header", ws->name);
            return NGX_ERROR;
        }

        *used = len;
        return NGX_AGAIN;
    }

    end += 4;
    *used = (end - b->pos) - have;

    if (end - b->pos < 12
        || ngx_strncmp(b->pos, "HTTP/1.1 101", 12) != 0)
    {
        line = ngx_strlchr(b->pos, end, CR);

        ngx_http_openclaw_wsclient_fail(ws, NGX_LOG_ERR,
                                        "%s refused the WebSocket "
                                        "upgrade: \"%*s\"", ws->name,
                                        (size_t) ((line ? line : end)
                                                  - b->pos),
                                        b->pos);
        return NGX_ERROR;
    }

    key.data = ws->key;
    key.len = sizeof(ws->key);

    if (ngx_http_openclaw_ws_accept(key.data, key.len, expect) != 0) {
        ngx_http_openclaw_wsclient_fail(ws, NGX_LOG_ALERT,
                                        "Sec-WebSocket-Accept computation "
                                        "failed");
        return NGX_ERROR;
    }

    accepted = 0;
    upgrade = 0;

    for (p = ngx_strlchr(b->pos, end, LF) + 1; p < end; p = last + 1) {

        last = ngx_strlchr(p, end, LF);
        if (last == NULL) {
            break;
        }

        line = p;
        colon = ngx_strlchr(line, last, ':');
        if (colon == NULL) {
            continue;
        }

        value = colon + 1;
        while (value < last && (*value == ' ' || *value == '\t')) {
            value++;
        }

        n = last - value;
        while (n && (value[n - 1] == CR || value[n - 1] == ' ')) {
            n--;
        }

        if ((size_t) (colon - line) == sizeof("Sec-WebSocket-Accept") - 1
            && ngx_strncasecmp(line, (u_char *) "Sec-WebSocket-Accept",
                               colon - line) == 0)
        {
            accepted = (n == NGX_HTTP_OPENCLAW_WS_ACCEPT_LEN
                        && ngx_memcmp(value, expect, n) == 0);

        } else if ((size_t) (colon - line) == sizeof("Upgrade") - 1
                   && ngx_strncasecmp(line, (u_char *) "Upgrade", 7) == 0)
        {
            upgrade = (n == 9
                       && ngx_strncasecmp(value, (u_char *) "websocket", 9)
                          == 0);
        }
    }

    if (!accepted || !upgrade) {
        ngx_http_openclaw_wsclient_fail(ws, NGX_LOG_ERR,
                                        "%s sent a 101 without a valid %s",
                                        ws->name,
                                        accepted ? "Upgrade header"
                                                 : "Sec-WebSocket-Accept");
        return NGX_ERROR;
    }

    ws->state = NGX_HTTP_OPENCLAW_WSCLIENT_OPEN;

    return ws->open(ws);
}


static ngx_int_t
ngx_http_openclaw_wsclient_frames(ngx_http_openclaw_wsclient_t *ws,
    u_char *pos, size_t len)
{
    size_t                        n, need, size;
    u_char                       *last, *msg;
    ngx_http_openclaw_ws_rc_e     rc;
    ngx_http_openclaw_ws_event_t  ev;

    last = pos + len;

    for ( ;; ) {

        rc = ngx_http_openclaw_ws_parse(&ws->parser, pos, last - pos, &n, &ev);
        pos += n;

        switch (rc) {

        case NGX_HTTP_OPENCLAW_WS_AGAIN:
            return NGX_OK;

        case NGX_HTTP_OPENCLAW_WS_ERROR:
            ngx_http_openclaw_wsclient_fail(ws, NGX_LOG_ERR,
                                            "%s sent an invalid WebSocket "
                                            "frame: %s", ws->name,
                                            ev.reason);
            return NGX_ERROR;

        case NGX_HTTP_OPENCLAW_WS_CONTROL:

            if (ev.opcode == NGX_HTTP_OPENCLAW_WS_PING) {
                if (ngx_http_openclaw_wsclient_frame(ws,
                                                 NGX_HTTP_OPENCLAW_WS_PONG,
                                                 ev.data, ev.len, NULL, 0,
                                                 NULL, 0)
                    != NGX_OK)
                {
                    ngx_http_openclaw_wsclient_fail(ws, NGX_LOG_ERR,
                                                    "cannot answer a ping");
                    return NGX_ERROR;
                }

                continue;
            }

            if (ev.opcode == NGX_HTTP_OPENCLAW_WS_PONG) {
                continue;
            }

            ngx_http_openclaw_wsclient_fail(ws, NGX_LOG_WARN,
                                            "%s closed the link with "
                                            "%ui \"%*s\"", ws->name,
                                            (ngx_uint_t) ev.code, ev.len,
                                            ev.data);
            return NGX_ERROR;

        default: /* NGX_HTTP_OPENCLAW_WS_DATA */

            if (ws->oversized && ws->max_data
                && (ws->skipping
                    || ws->msg_len + ev.len + (size_t) ws->parser.remaining
                       > ws->max_data))
            {
                /* what is skipped is counted, and never kept */

                if (!ws->skipping) {
                    ws->skipping = 1;
                    ws->skipped = ws->msg_len;
                    ws->msg_len = 0;
                }

                ws->skipped += ev.len;

                if (!ev.last) {
                    continue;
                }

                ws->skipping = 0;

                if (ws->oversized(ws, ev.opcode, ws->skipped) != NGX_OK)
                {
                    return NGX_ERROR;
                }

                continue;
            }

            if (ev.first && ev.last) {
                if (ws->message(ws, ev.opcode, ev.data, ev.len) != NGX_OK) {
                    return NGX_ERROR;
                }

                continue;
            }

            need = ws->msg_len + ev.len + (size_t) ws->parser.remaining;

            if (need > ws->msg_size) {
                size = ngx_max(need, 2 * ws->msg_size);

                msg = ngx_alloc(size, &ws->log);
                if (msg == NULL) {
                    ngx_http_openclaw_wsclient_fail(ws, NGX_LOG_ERR,
                                                    "out of memory");
                    return NGX_ERROR;
                }

                if (ws->msg) {
                    ngx_memcpy(msg, ws->msg, ws->msg_len);
                    ngx_free(ws->msg);
                }

                ws->msg = msg;
                ws->msg_size = size;
            }

            ngx_memcpy(ws->msg + ws->msg_len, ev.data, ev.len);
            ws->msg_len += ev.len;

            if (!ev.last) {
                continue;
            }

            n = ws->msg_len;
            ws->msg_len = 0;

            if (ws->message(ws, ev.opcode, ws->msg, n) != NGX_OK) {
                return NGX_ERROR;
            }
        }
    }
}


ngx_int_t
ngx_http_openclaw_wsclient_send(ngx_http_openclaw_wsclient_t *ws,
    ngx_uint_t opcode, u_char *data, size_t len, u_char *prefix, size_t plen,
    u_char *suffix, size_t slen)
{
    if (ws->connection == NULL) {
        return NGX_ERROR;
    }

    if (ngx_http_openclaw_wsclient_frame(ws, opcode, data, len, prefix, plen,
                                         suffix, slen)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (!ws->connection->write->posted) {
        ngx_post_event(ws->connection->write, &ngx_posted_events);
    }

    return NGX_OK;
}


/*
 * Queues one masked frame: "prefix", "data" and "suffix" make up its
 * payload.  Opcode 0 queues raw bytes (the HTTP upgrade request).
 */

static ngx_int_t
ngx_http_openclaw_wsclient_frame(ngx_http_openclaw_wsclient_t *ws,
    ngx_uint_t opcode, u_char *data, size_t len, u_char *prefix, size_t plen,
    u_char *suffix, size_t slen)
{
    size_t   need, size, used, total;
    u_char  *out, *payload, key[4];

    total = plen + len + slen;
    need = NGX_HTTP_OPENCLAW_WS_MAX_HEADER + total;

    if ((size_t) (ws->out + ws->out_size - ws->out_last) < need) {

        used = ws->out_last - ws->out_pos;

        /*
         * What a partial send left is moved down when it fills at most
         * half the buffer and the frame fits: growing instead doubled the
         * buffer at every wrap of a link the peer reads slowly, however
         * little was pending, and moving more would cost a copy of the
         * backlog per frame.
         */

        if (ws->out && used <= ws->out_size / 2
            && ws->out_size - used >= need)
        {
            ngx_memmove(ws->out, ws->out_pos, used);

        } else {
            size = ngx_max(used + need, ngx_max(2 * ws->out_size, 16384));

            out = ngx_alloc(size, &ws->log);
            if (out == NULL) {
                return NGX_ERROR;
            }

            if (ws->out) {
                ngx_memcpy(out, ws->out_pos, used);
                ngx_free(ws->out);
            }

            ws->out = out;
            ws->out_size = size;
        }

        ws->out_pos = ws->out;
        ws->out_last = ws->out + used;
    }

    if (opcode == 0) {
        ws->out_last = ngx_cpymem(ws->out_last, data, len);
        return NGX_OK;
    }

    if (ngx_http_openclaw_wsclient_random(ws, key, 4) != NGX_OK) {
        return NGX_ERROR;
    }

    ws->out_last += ngx_http_openclaw_ws_frame_header(ws->out_last, opcode,
                                                      1, total, key);
    payload = ws->out_last;

    if (plen) {
        ws->out_last = ngx_cpymem(ws->out_last, prefix, plen);
    }

    if (len) {
        ws->out_last = ngx_cpymem(ws->out_last, data, len);
    }

    if (slen) {
        ws->out_last = ngx_cpymem(ws->out_last, suffix, slen);
    }

    ngx_http_openclaw_ws_mask(payload, total, key, 0);

    return NGX_OK;
}


static ngx_int_t
ngx_http_openclaw_wsclient_flush(ngx_http_openclaw_wsclient_t *ws)
{
    ssize_t            n;
    ngx_event_t       *wev;
    ngx_connection_t  *c;

    c = ws->connection;

    if (c == NULL) {
        return NGX_ERROR;
    }

    wev = c->write;

    while (ws->out_pos < ws->out_last) {

        n = c->send(c, ws->out_pos, ws->out_last - ws->out_pos);

        if (n == NGX_ERROR) {
            ngx_http_openclaw_wsclient_fail(ws, NGX_LOG_WARN,
                                            "send() to the %s failed",
                                            ws->name);
            return NGX_ERROR;
        }

        if (n == NGX_AGAIN || n == 0) {
            if (!wev->timer_set) {
                ngx_add_timer(wev, ws->timeout);
            }

            if (ngx_handle_write_event(wev, 0) != NGX_OK) {
                ngx_http_openclaw_wsclient_fail(ws, NGX_LOG_ERR,
                                                "cannot wait to write to "
                                                "the %s", ws->name);
                return NGX_ERROR;
            }

            return NGX_AGAIN;
        }

        ws->out_pos += n;
    }

    ws->out_pos = ws->out;
    ws->out_last = ws->out;

    /*
     * A backlog the peer took long to read leaves a large buffer: it goes
     * once all is sent, and one loop's requests never need as much.
     */

    if (ws->out_size > NGX_HTTP_OPENCLAW_WSCLIENT_KEEP_SIZE) {
        ngx_free(ws->out);
        ws->out = NULL;
        ws->out_pos = NULL;
        ws->out_last = NULL;
        ws->out_size = 0;
    }

    if (wev->timer_set) {
        ngx_del_timer(wev);
    }

    return NGX_OK;
}


/*
 * The first failure after the link was ready is logged at "level"; while
 * it stays down, further failures go to the debug log only, so an outage
 * does not flood error.log.
 */

void
ngx_http_openclaw_wsclient_fail(ngx_http_openclaw_wsclient_t *ws,
    ngx_uint_t level, const char *fmt, ...)
{
    u_char      *p;
    va_list      args;
    ngx_uint_t   was_ready;
    u_char       text[NGX_MAX_ERROR_STR];

    va_start(args, fmt);
    p = ngx_vslprintf(text, text + sizeof(text), fmt, args);
    va_end(args);

    ngx_http_openclaw_wsclient_set_error(ws, text, p - text);

    was_ready = (ws->state == NGX_HTTP_OPENCLAW_WSCLIENT_READY);

    if (ws->failures == 0) {
        ngx_log_error(level, &ws->log, 0, "%s%s", ws->error,
                      was_ready ? ", link lost" : "");

    } else {
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, &ws->log, 0,
                       "openclaw %s still down: %s", ws->name, ws->error);
    }

    ws->failures++;

    if (was_ready && ngx_current_msec - ws->ready_at
                     >= NGX_HTTP_OPENCLAW_WSCLIENT_STABLE)
    {
        ws->backoff = NGX_HTTP_OPENCLAW_WSCLIENT_BACKOFF_MIN;
    }

    if (ws->connection) {
        ngx_http_openclaw_wsclient_close(ws, was_ready
                                         ? NGX_HTTP_OPENCLAW_WSCLIENT_LOST
                                         : 0);
        ws->closed(ws, 1);
    }

    ngx_http_openclaw_wsclient_schedule(ws);
}


static void
ngx_http_openclaw_wsclient_close(ngx_http_openclaw_wsclient_t *ws,
    ngx_uint_t code)
{
    u_char             payload[2];
    ngx_connection_t  *c;

    c = ws->connection;

    /* a courtesy close frame, sent only if the socket takes it at once */

    if (code && ws->state >= NGX_HTTP_OPENCLAW_WSCLIENT_OPEN) {
        payload[0] = (u_char) (code >> 8);
        payload[1] = (u_char) code;

        ws->out_pos = ws->out;
        ws->out_last = ws->out;

        if (ngx_http_openclaw_wsclient_frame(ws, NGX_HTTP_OPENCLAW_WS_CLOSE,
                                             payload, 2, NULL, 0, NULL, 0)
            == NGX_OK)
        {
            (void) c->send(c, ws->out_pos, ws->out_last - ws->out_pos);
        }
    }

#if (NGX_HTTP_SSL)
    if (c->ssl) {
        c->ssl->no_wait_shutdown = 1;
        c->ssl->no_send_shutdown = 1;
        (void) ngx_ssl_shutdown(c);
    }
#endif

    ngx_close_connection(c);
    ws->connection = NULL;

    if (ws->keepalive.timer_set) {
        ngx_del_timer(&ws->keepalive);
    }

    ws->skipping = 0;

    if (ws->pool) {
        ngx_destroy_pool(ws->pool);
        ws->pool = NULL;
    }

    ws->out_pos = ws->out;
    ws->out_last = ws->out;
    ws->msg_len = 0;
    ws->header = NULL;

    if (ws->msg_size > NGX_HTTP_OPENCLAW_WSCLIENT_READ_SIZE) {
        ngx_free(ws->msg);
        ws->msg = NULL;
        ws->msg_size = 0;
    }

    ws->state = NGX_HTTP_OPENCLAW_WSCLIENT_DOWN;
}


/*
 * Keeps "text" as the link's last error, whole when it fits; a longer one
 * (a peer's own words quoted in it) loses its end after a whole word,
 * marked "...", so that no reader takes half a word for the reason.
 */

static void
ngx_http_openclaw_wsclient_set_error(ngx_http_openclaw_wsclient_t *ws,
    u_char *text, size_t len)
{
    u_char  *p, *cut;
    size_t   max;

    max = ws->error_size - 1;

    if (len <= max) {
        ngx_memcpy(ws->error, text, len);
        ws->error[len] = '\0';
        return;
    }

    cut = text + max - (sizeof("...") - 1);

    for (p = cut; p > text && *p != ' '; p--) { /* void */ }

    if (p > text + max / 2) {
        cut = p;

    } else {

        /* one long word: cut it, but not inside a UTF-8 sequence */

        while (cut > text && (*cut & 0xc0) == 0x80) {
            cut--;
        }
    }

    p = ngx_cpymem(ws->error, text, cut - text);
    p = ngx_cpymem(p, "...", sizeof("...") - 1);
    *p = '\0';
}


static void
ngx_http_openclaw_wsclient_schedule(ngx_http_openclaw_wsclient_t *ws)
{
    ngx_msec_t  delay;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    /* "equal jitter": half the backoff, plus up to the other half */

    delay = ws->backoff / 2 + ngx_random() % (ws->backoff / 2 + 1);

    ws->backoff = ngx_min(2 * ws->backoff,
                          NGX_HTTP_OPENCLAW_WSCLIENT_BACKOFF_MAX);

    if (ws->retry_after > delay) {
        delay = ws->retry_after;
    }

    ws->retry_after = 0;
    ws->reconnects++;
    ngx_http_openclaw_wsclient_progress(ws);

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, &ws->log, 0,
                   "openclaw %s reconnect in %M ms", ws->name, delay);

    ngx_add_timer(&ws->reconnect, delay);
}


static void
ngx_http_openclaw_wsclient_progress(ngx_http_openclaw_wsclient_t *ws)
{
    if (ws->progress) {
        ws->progress(ws);
    }
}


/*
 * Masking keys must be unpredictable (RFC 6455 10.3): not ngx_random(),
 * and no byte of the pool is used twice, even when RAND_bytes() fails.
 */

static ngx_int_t
ngx_http_openclaw_wsclient_random(ngx_http_openclaw_wsclient_t *ws,
    u_char *buf, size_t n)
{
    if (ws->random_pos + n > sizeof(ws->random)) {
        if (RAND_bytes(ws->random, sizeof(ws->random)) != 1) {
            ngx_log_error(NGX_LOG_ALERT, &ws->log, 0, "RAND_bytes() failed");
            return NGX_ERROR;
        }

        ws->random_pos = 0;
    }

    ngx_memcpy(buf, ws->random + ws->random_pos, n);
    ws->random_pos += n;

    return NGX_OK;
}


static char *
ngx_http_openclaw_wsclient_action(ngx_pool_t *pool, const char *what,
    const char *title)
{
    u_char  *p;

    p = ngx_pnalloc(pool, ngx_strlen(what) + ngx_strlen(title)
                          + sizeof("  the "));
    if (p == NULL) {
        return NULL;
    }

    (void) ngx_sprintf(p, "%s the %s%Z", what, title);

    return (char *) p;
}


static u_char *
ngx_http_openclaw_wsclient_log_error(ngx_log_t *log, u_char *buf, size_t len)
{
    u_char                        *p;
    ngx_http_openclaw_wsclient_t  *ws;

    p = buf;

    if (log->action) {
        p = ngx_snprintf(buf, len, " while %s", log->action);
        len -= p - buf;
        buf = p;
    }

    ws = log->data;

    p = ngx_snprintf(buf, len, ", %s: %V", ws->name, &ws->log_name);

    return p;
}


/*
 * Input of any kind shows the peer alive; after "ping_interval" of
 * silence a ping asks, and silence for "pong_timeout" after it fails the
 * link, which a peer that stopped reading, or a proxy that dropped the
 * connection without a word, would otherwise hold forever.
 */

static void
ngx_http_openclaw_wsclient_keepalive(ngx_event_t *ev)
{
    ngx_msec_t                     idle;
    ngx_http_openclaw_wsclient_t  *ws;

    ws = ev->data;

    if (ws->state != NGX_HTTP_OPENCLAW_WSCLIENT_READY) {
        return;
    }

    if (ws->ping_at && (ngx_msec_int_t) (ws->last_rx - ws->ping_at) < 0) {
        ngx_http_openclaw_wsclient_fail(ws, NGX_LOG_WARN,
                                        "%s did not answer a ping within "
                                        "%M ms", ws->name, ws->pong_timeout);
        return;
    }

    ws->ping_at = 0;
    idle = ngx_current_msec - ws->last_rx;

    if (idle < ws->ping_interval) {
        ngx_add_timer(&ws->keepalive, ws->ping_interval - idle);
        return;
    }

    if (ngx_http_openclaw_wsclient_send(ws, NGX_HTTP_OPENCLAW_WS_PING,
                                        NULL, 0, NULL, 0, NULL, 0)
        != NGX_OK)
    {
        ngx_http_openclaw_wsclient_fail(ws, NGX_LOG_ERR, "cannot send a "
                                        "ping to the %s", ws->name);
        return;
    }

    ws->ping_at = ngx_current_msec;
    ngx_add_timer(&ws->keepalive, ws->pong_timeout);
}
