
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * The gateway link: each worker keeps one WebSocket connection to the
 * OpenClaw Gateway, made with nginx's own connect and SSL code, and
 * multiplexes every client of the worker over it.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <openssl/rand.h>
#include <cjson/cJSON.h>

#include "ngx_http_openclaw_gateway.h"
#include "ngx_http_openclaw_identity.h"
#include "ngx_http_openclaw_relay.h"
#include "ngx_http_openclaw_ws.h"


#define NGX_HTTP_OPENCLAW_GW_READ_SIZE      65536
#define NGX_HTTP_OPENCLAW_GW_HEADER_MAX     8192
#define NGX_HTTP_OPENCLAW_GW_KEEP_SIZE      (1024 * 1024)

/* frames before hello-ok are small; hello-ok itself is about 16 KB */
#define NGX_HTTP_OPENCLAW_GW_HELLO_MAX      (1024 * 1024)
#define NGX_HTTP_OPENCLAW_GW_PAYLOAD_MAX    (64 * 1024 * 1024)

#define NGX_HTTP_OPENCLAW_GW_BACKOFF_MIN    1000
#define NGX_HTTP_OPENCLAW_GW_BACKOFF_MAX    30000
#define NGX_HTTP_OPENCLAW_GW_STABLE         10000
#define NGX_HTTP_OPENCLAW_GW_TICK_DEFAULT   30000

#define NGX_HTTP_OPENCLAW_GW_VERSION        "0.1.0"

/*
 * Masking keys are taken from a pool that RAND_bytes() fills a thousand
 * frames at a time: a call costs about a microsecond whatever its size
 * (it calls getpid() each time, among others), 7% of a worker's time
 * under load when made for each frame.
 */
#define NGX_HTTP_OPENCLAW_GW_RANDOM         4096


typedef struct {
    ngx_http_openclaw_main_conf_t  *conf;
    ngx_log_t                       log;
    ngx_pool_t                     *pool;
    ngx_peer_connection_t           peer;
    ngx_connection_t               *connection;
    ngx_uint_t                      addr;

    ngx_http_openclaw_link_info_t  *info;

    ngx_http_openclaw_ws_parser_t   parser;

    u_char                         *in;
    u_char                          key[24];
    ngx_buf_t                      *header;

    u_char                         *msg;
    size_t                          msg_len;
    size_t                          msg_size;

    u_char                         *out;
    u_char                         *out_pos;
    u_char                         *out_last;
    size_t                          out_size;

    u_char                          random[NGX_HTTP_OPENCLAW_GW_RANDOM];
    size_t                          random_pos;

    ngx_queue_t                     rpcs;       /* in flight, oldest
                                                   first */
    ngx_uint_t                      next_id;

    ngx_event_t                     reconnect;
    ngx_event_t                     watchdog;

    ngx_msec_t                      backoff;
    ngx_msec_t                      retry_after;
    ngx_msec_t                      ready_at;
    ngx_msec_t                      last_rx;

    ngx_uint_t                      failures;
} ngx_http_openclaw_gateway_t;


static void ngx_http_openclaw_gateway_connect(ngx_event_t *ev);
static void ngx_http_openclaw_gateway_connected(
    ngx_http_openclaw_gateway_t *gw);
#if (NGX_HTTP_SSL)
static void ngx_http_openclaw_gateway_ssl_init(
    ngx_http_openclaw_gateway_t *gw);
static void ngx_http_openclaw_gateway_ssl_handshake(ngx_connection_t *c);
static ngx_int_t ngx_http_openclaw_gateway_check_name(ngx_connection_t *c,
    ngx_http_openclaw_main_conf_t *omcf);
#endif
static void ngx_http_openclaw_gateway_upgrade(ngx_http_openclaw_gateway_t *gw);
static void ngx_http_openclaw_gateway_read_handler(ngx_event_t *rev);
static void ngx_http_openclaw_gateway_write_handler(ngx_event_t *wev);
static ngx_int_t ngx_http_openclaw_gateway_response(
    ngx_http_openclaw_gateway_t *gw, u_char *pos, size_t len,
    size_t *used);
static ngx_int_t ngx_http_openclaw_gateway_frames(
    ngx_http_openclaw_gateway_t *gw, u_char *pos, size_t len);
static ngx_int_t ngx_http_openclaw_gateway_message(
    ngx_http_openclaw_gateway_t *gw, u_char *data, size_t len);
static ngx_int_t ngx_http_openclaw_gateway_event(
    ngx_http_openclaw_gateway_t *gw, ngx_http_openclaw_jv_t *event,
    ngx_http_openclaw_jv_t *payload);
static ngx_int_t ngx_http_openclaw_gateway_response_frame(
    ngx_http_openclaw_gateway_t *gw, ngx_http_openclaw_jv_t *frame,
    ngx_http_openclaw_jv_t *id);
static ngx_int_t ngx_http_openclaw_gateway_hello(
    ngx_http_openclaw_gateway_t *gw, cJSON *frame);
static ngx_int_t ngx_http_openclaw_gateway_send_connect(
    ngx_http_openclaw_gateway_t *gw, ngx_http_openclaw_jv_t *challenge);
static ngx_int_t ngx_http_openclaw_gateway_frame(
    ngx_http_openclaw_gateway_t *gw, ngx_uint_t opcode, u_char *data,
    size_t len, u_char *prefix, size_t plen, u_char *suffix, size_t slen);
static ngx_int_t ngx_http_openclaw_gateway_flush(
    ngx_http_openclaw_gateway_t *gw);
static void ngx_http_openclaw_gateway_watchdog(ngx_event_t *ev);
static void ngx_http_openclaw_gateway_fail(ngx_http_openclaw_gateway_t *gw,
    ngx_uint_t level, const char *fmt, ...);
static void ngx_http_openclaw_gateway_set_error(
    ngx_http_openclaw_gateway_t *gw, u_char *text, size_t len);
static void ngx_http_openclaw_gateway_close(ngx_http_openclaw_gateway_t *gw,
    ngx_uint_t code);
static void ngx_http_openclaw_gateway_schedule(
    ngx_http_openclaw_gateway_t *gw);
static void ngx_http_openclaw_gateway_drop_rpcs(
    ngx_http_openclaw_gateway_t *gw);
static ngx_int_t ngx_http_openclaw_gateway_random(
    ngx_http_openclaw_gateway_t *gw, u_char *buf, size_t n);
static u_char *ngx_http_openclaw_gateway_log_error(ngx_log_t *log,
    u_char *buf, size_t len);


static ngx_http_openclaw_gateway_t  *ngx_http_openclaw_gw;


ngx_int_t
ngx_http_openclaw_gateway_init_process(ngx_cycle_t *cycle,
    ngx_http_openclaw_main_conf_t *omcf, ngx_http_openclaw_link_info_t *info)
{
    ngx_http_openclaw_gateway_t  *gw;

    gw = ngx_pcalloc(cycle->pool, sizeof(ngx_http_openclaw_gateway_t));
    if (gw == NULL) {
        return NGX_ERROR;
    }

    gw->conf = omcf;
    gw->info = info;

    gw->log = *cycle->log;
    gw->log.handler = ngx_http_openclaw_gateway_log_error;
    gw->log.data = gw;
    gw->log.action = "connecting to the OpenClaw gateway";

    gw->in = ngx_alloc(NGX_HTTP_OPENCLAW_GW_READ_SIZE, cycle->log);
    if (gw->in == NULL) {
        return NGX_ERROR;
    }

    ngx_queue_init(&gw->rpcs);

    gw->random_pos = sizeof(gw->random);
    gw->backoff = NGX_HTTP_OPENCLAW_GW_BACKOFF_MIN;
    gw->info->state = NGX_HTTP_OPENCLAW_LINK_DOWN;
    gw->info->since = ngx_time();
    gw->info->last_error[0] = '\0';

    gw->reconnect.handler = ngx_http_openclaw_gateway_connect;
    gw->reconnect.data = gw;
    gw->reconnect.log = &gw->log;
    gw->reconnect.cancelable = 1;

    gw->watchdog.handler = ngx_http_openclaw_gateway_watchdog;
    gw->watchdog.data = gw;
    gw->watchdog.log = &gw->log;
    gw->watchdog.cancelable = 1;

    ngx_http_openclaw_gw = gw;

    /* a little jitter so that workers do not all knock at once */

    ngx_add_timer(&gw->reconnect, 1 + ngx_random() % 100);

    return NGX_OK;
}


void
ngx_http_openclaw_gateway_exit_process(ngx_cycle_t *cycle)
{
    ngx_queue_t                  *q;
    ngx_http_openclaw_rpc_t      *rpc;
    ngx_http_openclaw_gateway_t  *gw;

    gw = ngx_http_openclaw_gw;

    if (gw == NULL) {
        return;
    }

    if (gw->connection) {
        ngx_http_openclaw_gateway_close(gw, NGX_HTTP_OPENCLAW_WS_GOING_AWAY);
    }

    if (gw->reconnect.timer_set) {
        ngx_del_timer(&gw->reconnect);
    }

    if (gw->watchdog.timer_set) {
        ngx_del_timer(&gw->watchdog);
    }

    /* the requests are forgotten: their owners go with the process */

    while (!ngx_queue_empty(&gw->rpcs)) {
        q = ngx_queue_head(&gw->rpcs);
        ngx_queue_remove(q);

        rpc = ngx_queue_data(q, ngx_http_openclaw_rpc_t, queue);
        rpc->id = 0;
    }

    /*
     * The buffers outlive the links (closing one keeps them for the
     * next), and gw itself goes with the cycle's pool: nothing else
     * would free them.
     */

    ngx_free(gw->in);

    if (gw->out) {
        ngx_free(gw->out);
    }

    if (gw->msg) {
        ngx_free(gw->msg);
    }

    ngx_http_openclaw_gw = NULL;
}


const char *
ngx_http_openclaw_gateway_last_error(void)
{
    if (ngx_http_openclaw_gw == NULL
        || ngx_http_openclaw_gw->info->last_error[0] == '\0')
    {
        return "no attempt finished yet";
    }

    return (const char *) ngx_http_openclaw_gw->info->last_error;
}


static void
ngx_http_openclaw_gateway_connect(ngx_event_t *ev)
{
    ngx_int_t                       rc;
    ngx_addr_t                     *addr;
    ngx_connection_t               *c;
    ngx_http_openclaw_gateway_t    *gw;
    ngx_http_openclaw_main_conf_t  *omcf;

    gw = ev->data;
    omcf = gw->conf;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    gw->pool = ngx_create_pool(1024, &gw->log);
    if (gw->pool == NULL) {
        ngx_http_openclaw_gateway_schedule(gw);
        return;
    }

    addr = &omcf->u.addrs[gw->addr++ % omcf->u.naddrs];

    ngx_memzero(&gw->peer, sizeof(ngx_peer_connection_t));

    gw->peer.sockaddr = addr->sockaddr;
    gw->peer.socklen = addr->socklen;
    gw->peer.name = &addr->name;
    gw->peer.get = ngx_event_get_peer;
    gw->peer.log = &gw->log;
    gw->peer.log_error = NGX_ERROR_ERR;

    gw->log.action = "connecting to the OpenClaw gateway";
    gw->info->state = NGX_HTTP_OPENCLAW_LINK_CONNECTING;

    rc = ngx_event_connect_peer(&gw->peer);

    if (rc == NGX_ERROR || rc == NGX_BUSY || rc == NGX_DECLINED) {
        if (gw->peer.connection) {
            ngx_close_connection(gw->peer.connection);
            gw->peer.connection = NULL;
        }

        ngx_destroy_pool(gw->pool);
        gw->pool = NULL;

        ngx_http_openclaw_gateway_fail(gw, NGX_LOG_WARN,
                                       "connect() to the gateway failed");
        return;
    }

    c = gw->peer.connection;
    gw->connection = c;

    c->data = gw;
    c->pool = gw->pool;
    c->log = &gw->log;
    c->read->log = c->log;
    c->write->log = c->log;
    c->read->handler = ngx_http_openclaw_gateway_read_handler;
    c->write->handler = ngx_http_openclaw_gateway_write_handler;

    /* graceful shutdown finds the link through the idle flag */
    c->idle = 1;

    ngx_http_openclaw_ws_parser_init(&gw->parser, 0,
                                     NGX_HTTP_OPENCLAW_GW_HELLO_MAX);
    gw->msg_len = 0;
    gw->out_pos = gw->out;
    gw->out_last = gw->out;

    ngx_add_timer(c->write, omcf->connect_timeout);

    if (rc == NGX_OK) {
        ngx_http_openclaw_gateway_connected(gw);
    }
}


static void
ngx_http_openclaw_gateway_connected(ngx_http_openclaw_gateway_t *gw)
{
    ngx_connection_t  *c;

    c = gw->connection;

#if (NGX_HTTP_SSL)
    if (gw->conf->tls && c->ssl == NULL) {
        ngx_http_openclaw_gateway_ssl_init(gw);
        return;
    }
#endif

    ngx_http_openclaw_gateway_upgrade(gw);
}


#if (NGX_HTTP_SSL)

static void
ngx_http_openclaw_gateway_ssl_init(ngx_http_openclaw_gateway_t *gw)
{
    ngx_int_t                       rc;
    ngx_connection_t               *c;
    ngx_http_openclaw_main_conf_t  *omcf;

    c = gw->connection;
    omcf = gw->conf;

    gw->log.action = "TLS handshake with the OpenClaw gateway";

    if (ngx_ssl_create_connection(omcf->ssl, c,
                                  NGX_SSL_BUFFER|NGX_SSL_CLIENT)
        != NGX_OK)
    {
        ngx_http_openclaw_gateway_fail(gw, NGX_LOG_ERR,
                                       "cannot create a TLS connection");
        return;
    }

    /* ssl_name is NUL-terminated; an address is never sent as SNI */

    if (omcf->ssl_server_name && !omcf->ssl_ip) {

        if (SSL_set_tlsext_host_name(c->ssl->connection,
                                     (char *) omcf->ssl_name.data)
            == 0)
        {
            ngx_http_openclaw_gateway_fail(gw, NGX_LOG_ERR,
                                           "SSL_set_tlsext_host_name() "
                                           "failed");
            return;
        }
    }

    rc = ngx_ssl_handshake(c);

    if (rc == NGX_AGAIN) {
        c->ssl->handler = ngx_http_openclaw_gateway_ssl_handshake;
        return;
    }

    ngx_http_openclaw_gateway_ssl_handshake(c);
}


static void
ngx_http_openclaw_gateway_ssl_handshake(ngx_connection_t *c)
{
    long                            rc;
    ngx_http_openclaw_gateway_t    *gw;
    ngx_http_openclaw_main_conf_t  *omcf;

    gw = c->data;
    omcf = gw->conf;

    if (!c->ssl->handshaked) {
        ngx_http_openclaw_gateway_fail(gw, NGX_LOG_ERR,
                                       "TLS handshake with the gateway "
                                       "failed");
        return;
    }

    if (omcf->ssl_verify) {
        rc = SSL_get_verify_result(c->ssl->connection);

        if (rc != X509_V_OK) {
            ngx_http_openclaw_gateway_fail(gw, NGX_LOG_ERR,
                                   "gateway TLS certificate verify error: "
                                   "(%l:%s)", rc,
                                   X509_verify_cert_error_string(rc));
            return;
        }

        if (ngx_http_openclaw_gateway_check_name(c, omcf) != NGX_OK) {
            ngx_http_openclaw_gateway_fail(gw, NGX_LOG_ERR,
                                   "gateway TLS certificate does not match "
                                   "\"%V\"", &omcf->ssl_name);
            return;
        }
    }

    c->read->handler = ngx_http_openclaw_gateway_read_handler;
    c->write->handler = ngx_http_openclaw_gateway_write_handler;

    ngx_http_openclaw_gateway_upgrade(gw);
}


/* nginx's own check compares DNS names only: an address is an IP entry */

static ngx_int_t
ngx_http_openclaw_gateway_check_name(ngx_connection_t *c,
    ngx_http_openclaw_main_conf_t *omcf)
{
    int    rc;
    X509  *cert;

    if (!omcf->ssl_ip) {
        return ngx_ssl_check_host(c, &omcf->ssl_name);
    }

    cert = SSL_get1_peer_certificate(c->ssl->connection);
    if (cert == NULL) {
        return NGX_ERROR;
    }

    rc = X509_check_ip_asc(cert, (char *) omcf->ssl_name.data, 0);

    X509_free(cert);

    return rc == 1 ? NGX_OK : NGX_ERROR;
}

#endif


/* the client side of the opening handshake (RFC 6455 4.1) */

static void
ngx_http_openclaw_gateway_upgrade(ngx_http_openclaw_gateway_t *gw)
{
    size_t                          len;
    u_char                          raw[16], *p;
    ngx_str_t                       src, dst;
    ngx_http_openclaw_main_conf_t  *omcf;

    omcf = gw->conf;

    gw->log.action = "upgrading the connection to the OpenClaw gateway";
    gw->info->state = NGX_HTTP_OPENCLAW_LINK_UPGRADING;

    if (ngx_http_openclaw_gateway_random(gw, raw, sizeof(raw)) != NGX_OK) {
        ngx_http_openclaw_gateway_fail(gw, NGX_LOG_ALERT,
                                       "no random bytes for the WebSocket "
                                       "key");
        return;
    }

    src.data = raw;
    src.len = sizeof(raw);
    dst.data = gw->key;
    ngx_encode_base64(&dst, &src);

    /*
     * No Origin and no forwarding headers: the gateway would take the
     * connection for a remote one and clear its scopes.
     */

    len = sizeof("GET  HTTP/1.1" CRLF "Host: " CRLF
                 "Upgrade: websocket" CRLF "Connection: Upgrade" CRLF
                 "Sec-WebSocket-Key: " CRLF
                 "Sec-WebSocket-Version: 13" CRLF
                 "User-Agent: nginx-openclaw-bridge/"
                 NGX_HTTP_OPENCLAW_GW_VERSION CRLF CRLF) - 1
          + omcf->uri.len + omcf->host.len + sizeof(gw->key);

    gw->header = ngx_create_temp_buf(gw->pool,
                                     ngx_max(len,
                                             NGX_HTTP_OPENCLAW_GW_HEADER_MAX));
    if (gw->header == NULL) {
        ngx_http_openclaw_gateway_fail(gw, NGX_LOG_ERR, "out of memory");
        return;
    }

    p = ngx_sprintf(gw->header->pos,
                    "GET %V HTTP/1.1" CRLF "Host: %V" CRLF
                    "Upgrade: websocket" CRLF "Connection: Upgrade" CRLF
                    "Sec-WebSocket-Key: %*s" CRLF
                    "Sec-WebSocket-Version: 13" CRLF
                    "User-Agent: nginx-openclaw-bridge/"
                    NGX_HTTP_OPENCLAW_GW_VERSION CRLF CRLF,
                    &omcf->uri, &omcf->host, dst.len, gw->key);

    if (ngx_http_openclaw_gateway_frame(gw, 0, gw->header->pos,
                                        p - gw->header->pos, NULL, 0,
                                        NULL, 0)
        != NGX_OK)
    {
        ngx_http_openclaw_gateway_fail(gw, NGX_LOG_ERR, "out of memory");
        return;
    }

    gw->header->last = gw->header->pos;

    if (gw->connection->write->timer_set) {
        ngx_del_timer(gw->connection->write);
    }

    ngx_add_timer(gw->connection->read, omcf->request_timeout);

    (void) ngx_http_openclaw_gateway_flush(gw);
}


static void
ngx_http_openclaw_gateway_write_handler(ngx_event_t *wev)
{
    int                           err;
    socklen_t                     len;
    ngx_connection_t             *c;
    ngx_http_openclaw_gateway_t  *gw;

    c = wev->data;
    gw = c->data;

    if (wev->timedout) {
        ngx_http_openclaw_gateway_fail(gw, NGX_LOG_WARN,
                                       gw->info->state
                                       == NGX_HTTP_OPENCLAW_LINK_CONNECTING
                                       ? "gateway connect timed out"
                                       : "gateway is not reading");
        return;
    }

    if (gw->info->state == NGX_HTTP_OPENCLAW_LINK_CONNECTING) {

        err = 0;
        len = sizeof(int);

        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, (void *) &err, &len)
            == -1)
        {
            err = ngx_socket_errno;
        }

        if (err) {
            ngx_http_openclaw_gateway_fail(gw, NGX_LOG_WARN,
                                           "connect() to the gateway failed "
                                           "(%d: %s)", err, strerror(err));
            return;
        }

        ngx_http_openclaw_gateway_connected(gw);
        return;
    }

    (void) ngx_http_openclaw_gateway_flush(gw);
}


static void
ngx_http_openclaw_gateway_read_handler(ngx_event_t *rev)
{
    size_t                        used;
    ssize_t                       n;
    ngx_int_t                     rc;
    ngx_connection_t             *c;
    ngx_http_openclaw_gateway_t  *gw;

    c = rev->data;
    gw = c->data;

    if (c->close) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0,
                       "openclaw gateway link closed for shutdown");
        ngx_http_openclaw_gateway_close(gw, NGX_HTTP_OPENCLAW_WS_GOING_AWAY);
        ngx_http_openclaw_relay_link_down();
        return;
    }

    if (rev->timedout) {
        ngx_http_openclaw_gateway_fail(gw, NGX_LOG_WARN,
                                       "gateway handshake timed out");
        return;
    }

    if (gw->info->state == NGX_HTTP_OPENCLAW_LINK_CONNECTING) {
        return;
    }

    while (rev->ready) {

        n = c->recv(c, gw->in, NGX_HTTP_OPENCLAW_GW_READ_SIZE);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == 0 || n == NGX_ERROR) {
            ngx_http_openclaw_gateway_fail(gw, NGX_LOG_WARN,
                                           "gateway closed the connection");
            return;
        }

        gw->last_rx = ngx_current_msec;

        used = 0;

        if (gw->info->state == NGX_HTTP_OPENCLAW_LINK_UPGRADING) {
            rc = ngx_http_openclaw_gateway_response(gw, gw->in, n, &used);

            if (rc == NGX_ERROR) {
                return;
            }
        }

        if ((size_t) n > used
            && ngx_http_openclaw_gateway_frames(gw, gw->in + used, n - used)
               != NGX_OK)
        {
            return;
        }
    }

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_http_openclaw_gateway_fail(gw, NGX_LOG_ERR,
                                       "cannot wait for gateway input");
        return;
    }

    if (gw->out_pos != gw->out_last) {
        (void) ngx_http_openclaw_gateway_flush(gw);
    }
}


/*
 * Collects the 101 response; "*used" tells how many bytes belonged to it,
 * the rest are the first frames.  NGX_AGAIN: more is needed; NGX_ERROR:
 * the link has failed.
 */

static ngx_int_t
ngx_http_openclaw_gateway_response(ngx_http_openclaw_gateway_t *gw,
    u_char *pos, size_t len, size_t *used)
{
    u_char      *p, *end, *line, *colon, *value, *last;
    size_t       n, have;
    ngx_buf_t   *b;
    ngx_str_t    key;
    ngx_uint_t   accepted, upgrade;
    u_char       expect[NGX_HTTP_OPENCLAW_WS_ACCEPT_LEN];

    b = gw->header;

    have = b->last - b->pos;
    n = ngx_min(len, (size_t) (b->end - b->last));
    b->last = ngx_cpymem(b->last, pos, n);

    end = ngx_strlcasestrn(b->pos, b->last, (u_char *) CRLF CRLF, 4 - 1);

    if (end == NULL) {
        if (b->last == b->end) {
            ngx_http_openclaw_gateway_fail(gw, NGX_LOG_ERR,
                                           "gateway sent too long a "
                                           "response header");
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

        ngx_http_openclaw_gateway_fail(gw, NGX_LOG_ERR,
                                       "gateway refused the WebSocket "
                                       "upgrade: \"%*s\"",
                                       (size_t) ((line ? line : end)
                                                 - b->pos),
                                       b->pos);
        return NGX_ERROR;
    }

    key.data = gw->key;
    key.len = sizeof(gw->key);

    if (ngx_http_openclaw_ws_accept(key.data, key.len, expect) != 0) {
        ngx_http_openclaw_gateway_fail(gw, NGX_LOG_ALERT,
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
        ngx_http_openclaw_gateway_fail(gw, NGX_LOG_ERR,
                                       "gateway sent a 101 without a valid "
                                       "%s",
                                       accepted ? "Upgrade header"
                                                : "Sec-WebSocket-Accept");
        return NGX_ERROR;
    }

    gw->info->state = NGX_HTTP_OPENCLAW_LINK_CHALLENGE;
    gw->log.action = "waiting for the gateway's connect.challenge";

    return NGX_OK;
}


static ngx_int_t
ngx_http_openclaw_gateway_frames(ngx_http_openclaw_gateway_t *gw,
    u_char *pos, size_t len)
{
    size_t                        n, need, size;
    u_char                       *last, *msg;
    ngx_http_openclaw_ws_rc_e     rc;
    ngx_http_openclaw_ws_event_t  ev;

    last = pos + len;

    for ( ;; ) {

        rc = ngx_http_openclaw_ws_parse(&gw->parser, pos, last - pos, &n, &ev);
        pos += n;

        switch (rc) {

        case NGX_HTTP_OPENCLAW_WS_AGAIN:
            return NGX_OK;

        case NGX_HTTP_OPENCLAW_WS_ERROR:
            ngx_http_openclaw_gateway_fail(gw, NGX_LOG_ERR,
                                           "gateway sent an invalid "
                                           "WebSocket frame: %s", ev.reason);
            return NGX_ERROR;

        case NGX_HTTP_OPENCLAW_WS_CONTROL:

            if (ev.opcode == NGX_HTTP_OPENCLAW_WS_PING) {
                if (ngx_http_openclaw_gateway_frame(gw,
                                                NGX_HTTP_OPENCLAW_WS_PONG,
                                                ev.data, ev.len, NULL, 0,
                                                NULL, 0)
                    != NGX_OK)
                {
                    ngx_http_openclaw_gateway_fail(gw, NGX_LOG_ERR,
                                                   "cannot answer a ping");
                    return NGX_ERROR;
                }

                continue;
            }

            if (ev.opcode == NGX_HTTP_OPENCLAW_WS_PONG) {
                continue;
            }

            ngx_http_openclaw_gateway_fail(gw, NGX_LOG_WARN,
                                           "gateway closed the link with "
                                           "%ui \"%*s\"",
                                           (ngx_uint_t) ev.code, ev.len,
                                           ev.data);
            return NGX_ERROR;

        default: /* NGX_HTTP_OPENCLAW_WS_DATA */

            if (ev.first && ev.last) {
                if (ngx_http_openclaw_gateway_message(gw, ev.data, ev.len)
                    != NGX_OK)
                {
                    return NGX_ERROR;
                }

                continue;
            }

            need = gw->msg_len + ev.len + (size_t) gw->parser.remaining;

            if (need > gw->msg_size) {
                size = ngx_max(need, 2 * gw->msg_size);

                msg = ngx_alloc(size, &gw->log);
                if (msg == NULL) {
                    ngx_http_openclaw_gateway_fail(gw, NGX_LOG_ERR,
                                                   "out of memory");
                    return NGX_ERROR;
                }

                if (gw->msg) {
                    ngx_memcpy(msg, gw->msg, gw->msg_len);
                    ngx_free(gw->msg);
                }

                gw->msg = msg;
                gw->msg_size = size;
            }

            ngx_memcpy(gw->msg + gw->msg_len, ev.data, ev.len);
            gw->msg_len += ev.len;

            if (!ev.last) {
                continue;
            }

            n = gw->msg_len;
            gw->msg_len = 0;

            if (ngx_http_openclaw_gateway_message(gw, gw->msg, n) != NGX_OK) {
                return NGX_ERROR;
            }
        }
    }
}


static ngx_int_t
ngx_http_openclaw_gateway_message(ngx_http_openclaw_gateway_t *gw,
    u_char *data, size_t len)
{
    ngx_http_openclaw_jv_t        frame, m[4];
    ngx_http_openclaw_jv_node_t   nodes[64];
    ngx_http_openclaw_jv_index_t  index;

    static const char                   *names[4] = {
        "type", "event", "payload", "id"
    };
    static ngx_http_openclaw_jv_names_t  members =
                                        ngx_http_openclaw_jv_names(names);

    /* a chat event has some 30 strings, its text four containers deep */

    index.nodes = nodes;
    index.size = 64;

    if (ngx_http_openclaw_jv_parse(data, len, &frame, &index) != 0
        || frame.type != NGX_HTTP_OPENCLAW_JSON_OBJECT)
    {
        ngx_log_error(NGX_LOG_WARN, &gw->log, 0,
                      "gateway sent a frame that is not a JSON object, "
                      "ignored");
        return NGX_OK;
    }

    (void) ngx_http_openclaw_jv_lookup(&frame, &members, m);

    if (ngx_http_openclaw_jv_is(&m[0], "event")) {
        return ngx_http_openclaw_gateway_event(gw, &m[1], &m[2]);
    }

    if (ngx_http_openclaw_jv_is(&m[0], "res")) {
        return ngx_http_openclaw_gateway_response_frame(gw, &frame, &m[3]);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_openclaw_gateway_event(ngx_http_openclaw_gateway_t *gw,
    ngx_http_openclaw_jv_t *event, ngx_http_openclaw_jv_t *payload)
{
    u_char                  buf[32];
    ngx_http_openclaw_jv_t  ms;

    if (ngx_http_openclaw_jv_is(event, "chat")) {
        if (gw->info->state == NGX_HTTP_OPENCLAW_LINK_READY
            && payload->type == NGX_HTTP_OPENCLAW_JSON_OBJECT)
        {
            ngx_http_openclaw_relay_chat_event(payload);
        }

        return NGX_OK;
    }

    if (ngx_http_openclaw_jv_is(event, "connect.challenge")) {

        if (gw->info->state != NGX_HTTP_OPENCLAW_LINK_CHALLENGE) {
            return NGX_OK;
        }

        return ngx_http_openclaw_gateway_send_connect(gw, payload);
    }

    if (ngx_http_openclaw_jv_is(event, "shutdown")) {

        if (ngx_http_openclaw_jv_get(payload, "restartExpectedMs", &ms) == 0
            && ms.type == NGX_HTTP_OPENCLAW_JSON_NUMBER
            && ms.len < sizeof(buf))
        {
            ngx_memcpy(buf, ms.start, ms.len);
            buf[ms.len] = '\0';

            gw->retry_after = ngx_min((ngx_msec_t) ngx_max(
                                          strtod((char *) buf, NULL), 0),
                                      600000);
        }

        ngx_log_error(NGX_LOG_NOTICE, &gw->log, 0,
                      "gateway is shutting down");
        return NGX_OK;
    }

    /* tick, health, presence, agent, ...: only signs of life here */

    return NGX_OK;
}


static ngx_int_t
ngx_http_openclaw_gateway_response_frame(ngx_http_openclaw_gateway_t *gw,
    ngx_http_openclaw_jv_t *frame, ngx_http_openclaw_jv_t *id)
{
    cJSON                    *json;
    ngx_int_t                 rc;
    ngx_uint_t                n;
    ngx_queue_t              *q;
    const uint8_t            *p, *last;
    ngx_http_openclaw_rpc_t  *rpc;

    if (id->type != NGX_HTTP_OPENCLAW_JSON_STRING || id->escaped) {
        return NGX_OK;
    }

    if (gw->info->state == NGX_HTTP_OPENCLAW_LINK_HELLO
        && ngx_http_openclaw_jv_is(id, "connect"))
    {
        /* once per connection: the full tree is worth it here */

        json = cJSON_ParseWithLength((const char *) frame->start, frame->len);
        rc = ngx_http_openclaw_gateway_hello(gw, json);
        cJSON_Delete(json);

        return rc;
    }

    if (id->size < 5 || ngx_strncmp(id->data, "ocb-", 4) != 0) {
        return NGX_OK;
    }

    n = 0;
    last = id->data + id->size;

    for (p = id->data + 4; p < last && *p >= '0' && *p <= '9'; p++) {
        n = n * 10 + (*p - '0');
    }

    if (p != last) {
        return NGX_OK;
    }

    /*
     * Requests are queued in the order of their ids and the gateway
     * answers mostly in that order: the answer is for the oldest request,
     * or one of the next few.
     */

    for (q = ngx_queue_head(&gw->rpcs);
         q != ngx_queue_sentinel(&gw->rpcs);
         q = ngx_queue_next(q))
    {
        rpc = ngx_queue_data(q, ngx_http_openclaw_rpc_t, queue);

        if (rpc->id < n) {
            continue;
        }

        if (rpc->id > n) {
            break;
        }

        ngx_queue_remove(q);
        rpc->id = 0;

        rpc->handler(rpc, frame);

        return NGX_OK;
    }

    /* a response to a forgotten or fire-and-forget request */

    return NGX_OK;
}


/*
 * The connect request.  Its params are a closed schema on both protocol
 * generations, so only fields that 3 and 4 share are sent.  The
 * challenge's nonce and ts go into the device's signature, if any.
 */

static ngx_int_t
ngx_http_openclaw_gateway_send_connect(ngx_http_openclaw_gateway_t *gw,
    ngx_http_openclaw_jv_t *challenge)
{
    char                           *text;
    cJSON                          *req, *params, *client, *scopes, *auth;
    int64_t                         ts;
    ngx_int_t                       rc;
    ngx_http_openclaw_jv_t          nonce, t;
    ngx_http_openclaw_main_conf_t  *omcf;
    u_char                          instance[64], digits[32];

    omcf = gw->conf;

    req = cJSON_CreateObject();
    if (req == NULL) {
        goto failed;
    }

    ngx_sprintf(instance, "nginx-%P-%ui%Z", ngx_pid, (ngx_uint_t) ngx_worker);

    if (cJSON_AddStringToObject(req, "type", "req") == NULL
        || cJSON_AddStringToObject(req, "id", "connect") == NULL
        || cJSON_AddStringToObject(req, "method", "connect") == NULL
        || (params = cJSON_AddObjectToObject(req, "params")) == NULL
        || cJSON_AddNumberToObject(params, "minProtocol", 3) == NULL
        || cJSON_AddNumberToObject(params, "maxProtocol", 4) == NULL
        || (client = cJSON_AddObjectToObject(params, "client")) == NULL
        || cJSON_AddStringToObject(client, "id", "gateway-client") == NULL
        || cJSON_AddStringToObject(client, "displayName", "nginx-openclaw")
           == NULL
        || cJSON_AddStringToObject(client, "version",
                                   NGX_HTTP_OPENCLAW_GW_VERSION) == NULL
        || cJSON_AddStringToObject(client, "platform", "linux") == NULL
        || cJSON_AddStringToObject(client, "mode", "backend") == NULL
        || cJSON_AddStringToObject(client, "instanceId", (char *) instance)
           == NULL
        || cJSON_AddStringToObject(params, "role", "operator") == NULL
        || (scopes = cJSON_AddArrayToObject(params, "scopes")) == NULL
        || cJSON_AddArrayToObject(params, "caps") == NULL
        || (auth = cJSON_AddObjectToObject(params, "auth")) == NULL
        || cJSON_AddStringToObject(params, "userAgent",
                                   "nginx-openclaw-bridge/"
                                   NGX_HTTP_OPENCLAW_GW_VERSION) == NULL)
    {
        goto failed;
    }

    cJSON_AddItemToArray(scopes, cJSON_CreateString("operator.read"));
    cJSON_AddItemToArray(scopes, cJSON_CreateString("operator.write"));

    if (omcf->admin) {
        cJSON_AddItemToArray(scopes, cJSON_CreateString("operator.admin"));
    }

    if (omcf->secret.len) {
        if (cJSON_AddStringToObject(auth, omcf->secret_is_password
                                          ? "password" : "token",
                                    (char *) omcf->secret.data)
            == NULL)
        {
            goto failed;
        }
    }

    ts = 0;

    if (ngx_http_openclaw_jv_get(challenge, "ts", &t) == 0
        && t.type == NGX_HTTP_OPENCLAW_JSON_NUMBER && t.len < sizeof(digits))
    {
        ngx_memcpy(digits, t.start, t.len);
        digits[t.len] = '\0';
        ts = strtoll((char *) digits, NULL, 10);
    }

    if (ngx_http_openclaw_jv_get(challenge, "nonce", &nonce) != 0
        || nonce.type != NGX_HTTP_OPENCLAW_JSON_STRING || nonce.escaped)
    {
        nonce.data = NULL;
        nonce.size = 0;
    }

    if (ngx_http_openclaw_identity_sign(omcf->identity, params,
                                        (u_char *) nonce.data, nonce.size,
                                        ts, &gw->log)
        != NGX_OK)
    {
        goto failed;
    }

    text = cJSON_PrintUnformatted(req);
    cJSON_Delete(req);
    req = NULL;

    if (text == NULL) {
        goto failed;
    }

    /* the frame holds the secret: it is never logged */

    rc = ngx_http_openclaw_gateway_frame(gw, NGX_HTTP_OPENCLAW_WS_TEXT,
                                         (u_char *) text, ngx_strlen(text),
                                         NULL, 0, NULL, 0);

    ngx_explicit_memzero(text, ngx_strlen(text));
    cJSON_free(text);

    if (rc != NGX_OK) {
        goto failed;
    }

    gw->info->state = NGX_HTTP_OPENCLAW_LINK_HELLO;
    gw->log.action = "authenticating to the OpenClaw gateway";

    return ngx_http_openclaw_gateway_flush(gw) == NGX_ERROR
           ? NGX_ERROR : NGX_OK;

failed:

    cJSON_Delete(req);
    ngx_http_openclaw_gateway_fail(gw, NGX_LOG_ERR,
                                   "cannot build the connect request");
    return NGX_ERROR;
}


static ngx_int_t
ngx_http_openclaw_gateway_hello(ngx_http_openclaw_gateway_t *gw,
    cJSON *frame)
{
    cJSON       *ok, *payload, *error, *item, *scopes, *policy, *details;
    cJSON       *message, *code;
    ngx_uint_t   write, level;

    ok = cJSON_GetObjectItemCaseSensitive(frame, "ok");

    if (!cJSON_IsTrue(ok)) {
        error = cJSON_GetObjectItemCaseSensitive(frame, "error");
        code = cJSON_GetObjectItemCaseSensitive(error, "code");
        message = cJSON_GetObjectItemCaseSensitive(error, "message");
        details = cJSON_GetObjectItemCaseSensitive(error, "details");
        item = cJSON_GetObjectItemCaseSensitive(error, "retryAfterMs");

        if (cJSON_IsNumber(item) && item->valuedouble > 0
            && item->valuedouble < 600000)
        {
            gw->retry_after = (ngx_msec_t) item->valuedouble;
        }

        item = cJSON_GetObjectItemCaseSensitive(details, "code");

        /* pairing, device signature and device token: the identity's */

        level = ngx_http_openclaw_identity_refused(gw->conf->identity, error,
                                                   &gw->log);

        if (level == 0) {
            level = cJSON_IsString(code)
                    && ngx_strcmp(code->valuestring, "UNAVAILABLE") == 0
                    ? NGX_LOG_WARN : NGX_LOG_ERR;
        }

        ngx_http_openclaw_gateway_fail(gw, level,
                               "gateway refused connect: %s %s (%s)",
                               cJSON_IsString(code) ? code->valuestring : "",
                               cJSON_IsString(message)
                               ? message->valuestring : "",
                               cJSON_IsString(item) ? item->valuestring
                                                    : "no details");
        return NGX_ERROR;
    }

    payload = cJSON_GetObjectItemCaseSensitive(frame, "payload");
    item = cJSON_GetObjectItemCaseSensitive(payload, "protocol");

    if (!cJSON_IsNumber(item)
        || (item->valueint != 3 && item->valueint != 4))
    {
        ngx_http_openclaw_gateway_fail(gw, NGX_LOG_ERR,
                                       "gateway chose an unsupported "
                                       "protocol");
        return NGX_ERROR;
    }

    gw->info->protocol = item->valueint;

    /* a "successful" connect without write scope is useless: say so */

    scopes = cJSON_GetObjectItemCaseSensitive(
                 cJSON_GetObjectItemCaseSensitive(payload, "auth"), "scopes");
    write = 0;

    cJSON_ArrayForEach(item, scopes) {
        if (cJSON_IsString(item)
            && (ngx_strcmp(item->valuestring, "operator.write") == 0
                || ngx_strcmp(item->valuestring, "operator.admin") == 0))
        {
            write = 1;
        }
    }

    if (!write) {
        gw->retry_after = NGX_HTTP_OPENCLAW_GW_BACKOFF_MAX;
        ngx_http_openclaw_gateway_fail(gw, NGX_LOG_ERR,
                                       "gateway granted no operator.write "
                                       "scope, the link cannot relay "
                                       "messages: a gateway that is not "
                                       "reached over loopback needs a "
                                       "paired device identity");
        return NGX_ERROR;
    }

    ngx_http_openclaw_identity_hello(gw->conf->identity, payload, &gw->log);

    gw->info->tick_interval = NGX_HTTP_OPENCLAW_GW_TICK_DEFAULT;
    gw->info->max_payload = NGX_HTTP_OPENCLAW_GW_PAYLOAD_MAX;

    policy = cJSON_GetObjectItemCaseSensitive(payload, "policy");

    item = cJSON_GetObjectItemCaseSensitive(policy, "tickIntervalMs");
    if (cJSON_IsNumber(item) && item->valuedouble >= 100
        && item->valuedouble <= 3600000)
    {
        gw->info->tick_interval = (ngx_msec_t) item->valuedouble;
    }

    /* any limit is taken: the gateway closes the link on a larger frame */

    item = cJSON_GetObjectItemCaseSensitive(policy, "maxPayload");
    if (cJSON_IsNumber(item) && item->valuedouble >= 1
        && item->valuedouble < NGX_HTTP_OPENCLAW_GW_PAYLOAD_MAX)
    {
        gw->info->max_payload = (size_t) item->valuedouble;
    }

    gw->parser.max_message = NGX_HTTP_OPENCLAW_GW_PAYLOAD_MAX;

    if (gw->connection->read->timer_set) {
        ngx_del_timer(gw->connection->read);
    }

    ngx_add_timer(&gw->watchdog, gw->info->tick_interval);

    gw->info->state = NGX_HTTP_OPENCLAW_LINK_READY;
    gw->info->since = ngx_time();

    /* an error of an earlier attempt no longer says anything of the link */

    gw->info->last_error[0] = '\0';
    gw->ready_at = ngx_current_msec;
    gw->retry_after = 0;
    gw->log.action = "relaying to the OpenClaw gateway";

    ngx_log_error(NGX_LOG_NOTICE, &gw->log, 0,
                  "gateway link up, protocol %ui%s",
                  gw->info->protocol,
                  gw->failures ? ", after reconnecting" : "");

    gw->failures = 0;

    ngx_http_openclaw_relay_link_up(gw->info->protocol);

    return NGX_OK;
}


size_t
ngx_http_openclaw_gateway_max_params(const char *method)
{
    size_t                        envelope;
    ngx_http_openclaw_gateway_t  *gw;

    gw = ngx_http_openclaw_gw;

    if (gw == NULL || gw->info->state != NGX_HTTP_OPENCLAW_LINK_READY) {
        return NGX_MAX_SIZE_T_VALUE;
    }

    /* what ngx_http_openclaw_gateway_call() adds, with the longest id */

    envelope = sizeof("{\"type\":\"req\",\"id\":\"ocb-\",\"method\":\"\","
                      "\"params\":}") - 1
               + NGX_INT_T_LEN + ngx_strlen(method);

    if (gw->info->max_payload <= envelope) {
        return 0;
    }

    return gw->info->max_payload - envelope;
}


size_t
ngx_http_openclaw_gateway_max_payload(void)
{
    if (ngx_http_openclaw_gw == NULL) {
        return 0;
    }

    return ngx_http_openclaw_gw->info->max_payload;
}


ngx_int_t
ngx_http_openclaw_gateway_call(ngx_http_openclaw_rpc_t *rpc,
    const char *method, u_char *params, size_t len)
{
    u_char                       *p, *d;
    size_t                        n;
    ngx_uint_t                    id, v;
    ngx_http_openclaw_gateway_t  *gw;
    u_char                        prefix[160], digits[NGX_INT_T_LEN];

    gw = ngx_http_openclaw_gw;

    if (gw == NULL || gw->info->state != NGX_HTTP_OPENCLAW_LINK_READY) {
        return NGX_DECLINED;
    }

    id = ++gw->next_id;

    /* once per message: by hand, not through ngx_snprintf() */

    d = digits + sizeof(digits);
    v = id;

    do {
        *--d = (u_char) ('0' + v % 10);
        v /= 10;
    } while (v);

    /* the methods are this module's own names: a few words long */

    n = ngx_strlen(method);

    if (n > 64) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(prefix, "{\"type\":\"req\",\"id\":\"ocb-",
                   sizeof("{\"type\":\"req\",\"id\":\"ocb-") - 1);
    p = ngx_cpymem(p, d, digits + sizeof(digits) - d);
    p = ngx_cpymem(p, "\",\"method\":\"", sizeof("\",\"method\":\"") - 1);
    p = ngx_cpymem(p, method, n);
    p = ngx_cpymem(p, "\",\"params\":", sizeof("\",\"params\":") - 1);

    if (ngx_http_openclaw_gateway_frame(gw, NGX_HTTP_OPENCLAW_WS_TEXT,
                                        params, len, prefix, p - prefix,
                                        (u_char *) "}", 1)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (rpc) {
        rpc->id = id;
        ngx_queue_insert_tail(&gw->rpcs, &rpc->queue);
    }

    if (!gw->connection->write->posted) {
        ngx_post_event(gw->connection->write, &ngx_posted_events);
    }

    return NGX_OK;
}


void
ngx_http_openclaw_gateway_cancel(ngx_http_openclaw_rpc_t *rpc)
{
    if (rpc->id) {
        ngx_queue_remove(&rpc->queue);
    }

    rpc->id = 0;
}


size_t
ngx_http_openclaw_gateway_queued(void)
{
    ngx_http_openclaw_gateway_t  *gw;

    gw = ngx_http_openclaw_gw;

    if (gw == NULL) {
        return 0;
    }

    return gw->out_last - gw->out_pos;
}


/*
 * Queues one masked frame: "prefix", "data" and "suffix" make up its
 * payload, so that a request envelope never needs a copy of its params.
 * Opcode 0 queues raw bytes (the HTTP upgrade request).
 */

static ngx_int_t
ngx_http_openclaw_gateway_frame(ngx_http_openclaw_gateway_t *gw,
    ngx_uint_t opcode, u_char *data, size_t len, u_char *prefix, size_t plen,
    u_char *suffix, size_t slen)
{
    size_t   need, size, used, total;
    u_char  *out, *payload, key[4];

    total = plen + len + slen;
    need = NGX_HTTP_OPENCLAW_WS_MAX_HEADER + total;

    if ((size_t) (gw->out + gw->out_size - gw->out_last) < need) {

        used = gw->out_last - gw->out_pos;

        /*
         * What a partial send left is moved down when it fills at most
         * half the buffer and the frame fits: growing instead doubled the
         * buffer at every wrap of a link the gateway reads slowly, however
         * little was pending, and moving more would cost a copy of the
         * backlog per frame.
         */

        if (gw->out && used <= gw->out_size / 2
            && gw->out_size - used >= need)
        {
            ngx_memmove(gw->out, gw->out_pos, used);

        } else {
            size = ngx_max(used + need, ngx_max(2 * gw->out_size, 16384));

            out = ngx_alloc(size, &gw->log);
            if (out == NULL) {
                return NGX_ERROR;
            }

            if (gw->out) {
                ngx_memcpy(out, gw->out_pos, used);
                ngx_free(gw->out);
            }

            gw->out = out;
            gw->out_size = size;
        }

        gw->out_pos = gw->out;
        gw->out_last = gw->out + used;
    }

    if (opcode == 0) {
        gw->out_last = ngx_cpymem(gw->out_last, data, len);
        return NGX_OK;
    }

    if (ngx_http_openclaw_gateway_random(gw, key, 4) != NGX_OK) {
        return NGX_ERROR;
    }

    gw->out_last += ngx_http_openclaw_ws_frame_header(gw->out_last, opcode,
                                                      1, total, key);
    payload = gw->out_last;

    if (plen) {
        gw->out_last = ngx_cpymem(gw->out_last, prefix, plen);
    }

    if (len) {
        gw->out_last = ngx_cpymem(gw->out_last, data, len);
    }

    if (slen) {
        gw->out_last = ngx_cpymem(gw->out_last, suffix, slen);
    }

    ngx_http_openclaw_ws_mask(payload, total, key, 0);

    return NGX_OK;
}


static ngx_int_t
ngx_http_openclaw_gateway_flush(ngx_http_openclaw_gateway_t *gw)
{
    ssize_t            n;
    ngx_event_t       *wev;
    ngx_connection_t  *c;

    c = gw->connection;

    if (c == NULL) {
        return NGX_ERROR;
    }

    wev = c->write;

    while (gw->out_pos < gw->out_last) {

        n = c->send(c, gw->out_pos, gw->out_last - gw->out_pos);

        if (n == NGX_ERROR) {
            ngx_http_openclaw_gateway_fail(gw, NGX_LOG_WARN,
                                           "send() to the gateway failed");
            return NGX_ERROR;
        }

        if (n == NGX_AGAIN || n == 0) {
            if (!wev->timer_set) {
                ngx_add_timer(wev, gw->conf->request_timeout);
            }

            if (ngx_handle_write_event(wev, 0) != NGX_OK) {
                ngx_http_openclaw_gateway_fail(gw, NGX_LOG_ERR,
                                               "cannot wait to write to the "
                                               "gateway");
                return NGX_ERROR;
            }

            return NGX_AGAIN;
        }

        gw->out_pos += n;
    }

    gw->out_pos = gw->out;
    gw->out_last = gw->out;

    /*
     * A backlog the gateway took long to read leaves a large buffer: it
     * goes once all is sent, and one loop's requests never need as much.
     */

    if (gw->out_size > NGX_HTTP_OPENCLAW_GW_KEEP_SIZE) {
        ngx_free(gw->out);
        gw->out = NULL;
        gw->out_pos = NULL;
        gw->out_last = NULL;
        gw->out_size = 0;
    }

    if (wev->timer_set) {
        ngx_del_timer(wev);
    }

    return NGX_OK;
}


static void
ngx_http_openclaw_gateway_watchdog(ngx_event_t *ev)
{
    ngx_msec_t                    silent;
    ngx_http_openclaw_gateway_t  *gw;

    gw = ev->data;

    if (gw->info->state != NGX_HTTP_OPENCLAW_LINK_READY) {
        return;
    }

    silent = ngx_current_msec - gw->last_rx;

    if (silent > 2 * gw->info->tick_interval) {
        ngx_http_openclaw_gateway_fail(gw, NGX_LOG_WARN,
                                       "gateway silent for %M ms, over two "
                                       "tick intervals", silent);
        return;
    }

    ngx_add_timer(&gw->watchdog, gw->info->tick_interval);
}


/*
 * Ends the current connection and schedules the next attempt.  The first
 * failure after the link was up is logged at "level"; while it stays
 * down, further failures go to the debug log only, so an outage does not
 * flood error.log.
 */

static void
ngx_http_openclaw_gateway_fail(ngx_http_openclaw_gateway_t *gw,
    ngx_uint_t level, const char *fmt, ...)
{
    u_char      *p;
    va_list      args;
    ngx_uint_t   was_ready;
    u_char       text[NGX_MAX_ERROR_STR];

    va_start(args, fmt);
    p = ngx_vslprintf(text, text + sizeof(text), fmt, args);
    va_end(args);

    ngx_http_openclaw_gateway_set_error(gw, text, p - text);

    was_ready = (gw->info->state == NGX_HTTP_OPENCLAW_LINK_READY);

    if (gw->failures == 0) {
        ngx_log_error(level, &gw->log, 0, "%s%s", gw->info->last_error,
                      was_ready ? ", link lost" : "");

    } else {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, &gw->log, 0,
                       "openclaw gateway still down: %s",
                       gw->info->last_error);
    }

    gw->failures++;

    if (was_ready && ngx_current_msec - gw->ready_at
                     >= NGX_HTTP_OPENCLAW_GW_STABLE)
    {
        gw->backoff = NGX_HTTP_OPENCLAW_GW_BACKOFF_MIN;
    }

    if (gw->connection) {
        ngx_http_openclaw_gateway_close(gw, was_ready ? 4000 : 0);
    }

    ngx_http_openclaw_gateway_drop_rpcs(gw);

    if (was_ready) {
        ngx_http_openclaw_relay_link_down();
    }

    ngx_http_openclaw_gateway_schedule(gw);
}


static void
ngx_http_openclaw_gateway_close(ngx_http_openclaw_gateway_t *gw,
    ngx_uint_t code)
{
    u_char             payload[2];
    ngx_connection_t  *c;

    c = gw->connection;

    /* a courtesy close frame, sent only if the socket takes it at once */

    if (code && gw->info->state >= NGX_HTTP_OPENCLAW_LINK_CHALLENGE) {
        payload[0] = (u_char) (code >> 8);
        payload[1] = (u_char) code;

        gw->out_pos = gw->out;
        gw->out_last = gw->out;

        if (ngx_http_openclaw_gateway_frame(gw, NGX_HTTP_OPENCLAW_WS_CLOSE,
                                            payload, 2, NULL, 0, NULL, 0)
            == NGX_OK)
        {
            (void) c->send(c, gw->out_pos, gw->out_last - gw->out_pos);
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
    gw->connection = NULL;

    if (gw->pool) {
        ngx_destroy_pool(gw->pool);
        gw->pool = NULL;
    }

    if (gw->watchdog.timer_set) {
        ngx_del_timer(&gw->watchdog);
    }

    gw->out_pos = gw->out;
    gw->out_last = gw->out;
    gw->msg_len = 0;
    gw->header = NULL;

    if (gw->msg_size > NGX_HTTP_OPENCLAW_GW_READ_SIZE) {
        ngx_free(gw->msg);
        gw->msg = NULL;
        gw->msg_size = 0;
    }

    gw->info->state = NGX_HTTP_OPENCLAW_LINK_DOWN;
    gw->info->since = ngx_time();
}


/*
 * Keeps "text" as the link's last error, whole when it fits; a longer one
 * (a gateway's own words quoted in it) loses its end after a whole word,
 * marked "...", so that no reader takes half a word for the reason.
 */

static void
ngx_http_openclaw_gateway_set_error(ngx_http_openclaw_gateway_t *gw,
    u_char *text, size_t len)
{
    u_char  *p, *cut, *last_error;
    size_t   max;

    last_error = gw->info->last_error;
    max = sizeof(gw->info->last_error) - 1;

    if (len <= max) {
        ngx_memcpy(last_error, text, len);
        last_error[len] = '\0';
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

    p = ngx_cpymem(last_error, text, cut - text);
    p = ngx_cpymem(p, "...", sizeof("...") - 1);
    *p = '\0';
}


static void
ngx_http_openclaw_gateway_schedule(ngx_http_openclaw_gateway_t *gw)
{
    ngx_msec_t  delay;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    /* "equal jitter": half the backoff, plus up to the other half */

    delay = gw->backoff / 2 + ngx_random() % (gw->backoff / 2 + 1);

    gw->backoff = ngx_min(2 * gw->backoff, NGX_HTTP_OPENCLAW_GW_BACKOFF_MAX);

    if (gw->retry_after > delay) {
        delay = gw->retry_after;
    }

    gw->retry_after = 0;
    gw->info->reconnects++;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, &gw->log, 0,
                   "openclaw gateway reconnect in %M ms", delay);

    ngx_add_timer(&gw->reconnect, delay);
}


static void
ngx_http_openclaw_gateway_drop_rpcs(ngx_http_openclaw_gateway_t *gw)
{
    ngx_queue_t              *q;
    ngx_http_openclaw_rpc_t  *rpc;

    while (!ngx_queue_empty(&gw->rpcs)) {
        q = ngx_queue_head(&gw->rpcs);
        rpc = ngx_queue_data(q, ngx_http_openclaw_rpc_t, queue);

        ngx_queue_remove(q);
        rpc->id = 0;

        rpc->handler(rpc, NULL);
    }
}


/*
 * Masking keys must be unpredictable (RFC 6455 10.3): not ngx_random(),
 * and no byte of the pool is used twice, even when RAND_bytes() fails.
 */

static ngx_int_t
ngx_http_openclaw_gateway_random(ngx_http_openclaw_gateway_t *gw, u_char *buf,
    size_t n)
{
    if (gw->random_pos + n > sizeof(gw->random)) {
        if (RAND_bytes(gw->random, sizeof(gw->random)) != 1) {
            ngx_log_error(NGX_LOG_ALERT, &gw->log, 0, "RAND_bytes() failed");
            return NGX_ERROR;
        }

        gw->random_pos = 0;
    }

    ngx_memcpy(buf, gw->random + gw->random_pos, n);
    gw->random_pos += n;

    return NGX_OK;
}


static u_char *
ngx_http_openclaw_gateway_log_error(ngx_log_t *log, u_char *buf, size_t len)
{
    u_char                       *p;
    ngx_http_openclaw_gateway_t  *gw;

    p = buf;

    if (log->action) {
        p = ngx_snprintf(buf, len, " while %s", log->action);
        len -= p - buf;
        buf = p;
    }

    gw = log->data;

    p = ngx_snprintf(buf, len, ", gateway: %V", &gw->conf->url);

    return p;
}
