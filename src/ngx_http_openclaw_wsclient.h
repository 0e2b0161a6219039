
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * An outbound WebSocket link: a worker's own client connection to one
 * server, with nginx's connect and SSL code, the client side of the
 * opening handshake, masked frames, reassembled messages, an output
 * queue, and reconnects with backoff.  What is said over it belongs to
 * its owner, which registers handlers on the object, as the upstream
 * module calls u->process_header.
 */


#ifndef _NGX_HTTP_OPENCLAW_WSCLIENT_H_INCLUDED_
#define _NGX_HTTP_OPENCLAW_WSCLIENT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_openclaw_ws.h"


#define NGX_HTTP_OPENCLAW_WSCLIENT_BACKOFF_MIN    1000
#define NGX_HTTP_OPENCLAW_WSCLIENT_BACKOFF_MAX    30000

/*
 * Masking keys are taken from a pool that RAND_bytes() fills a thousand
 * frames at a time: a call costs about a microsecond whatever its size
 * (it calls getpid() each time, among others), 7% of a worker's time
 * under load when made for each frame.
 */
#define NGX_HTTP_OPENCLAW_WSCLIENT_RANDOM         4096


typedef struct ngx_http_openclaw_wsclient_s  ngx_http_openclaw_wsclient_t;


typedef enum {
    NGX_HTTP_OPENCLAW_WSCLIENT_DOWN = 0,
    NGX_HTTP_OPENCLAW_WSCLIENT_CONNECTING,
    NGX_HTTP_OPENCLAW_WSCLIENT_UPGRADING,
    NGX_HTTP_OPENCLAW_WSCLIENT_OPEN,        /* the owner's own handshake */
    NGX_HTTP_OPENCLAW_WSCLIENT_READY        /* the owner said so */
} ngx_http_openclaw_wsclient_state_e;


/*
 * The owner's handlers.  Those that return ngx_int_t return NGX_ERROR
 * once they have failed the link, NGX_OK otherwise.
 *
 * open: the upgrade completed (state OPEN).
 * message: one complete data message, valid during the call only.
 * closed: the connection is gone (state DOWN), "failed" set when it
 *     failed ("error" says why; the next attempt is scheduled after the
 *     call), clear when it was closed for the worker's shutdown.  An
 *     attempt that failed before it had a connection is not reported.
 * progress: optional; the link moved on before it is open (CONNECTING,
 *     UPGRADING), or the next attempt was scheduled ("reconnects"
 *     counted), for an owner that publishes them.
 * oversized: optional; once ready, a data message larger than
 *     "max_message" is skipped as it arrives and reported here, instead
 *     of failing the link (a hub carries many users: one user's message
 *     must not cut off the others).
 * keep: optional; the worker is shutting down and closes its idle
 *     connections: a non-zero answer keeps the link open (the owner
 *     still has replies to deliver over it, and stops it itself).
 */

typedef ngx_int_t (*ngx_http_openclaw_wsclient_open_pt)(
    ngx_http_openclaw_wsclient_t *ws);
typedef ngx_int_t (*ngx_http_openclaw_wsclient_message_pt)(
    ngx_http_openclaw_wsclient_t *ws, ngx_uint_t opcode, u_char *data,
    size_t len);
typedef void (*ngx_http_openclaw_wsclient_closed_pt)(
    ngx_http_openclaw_wsclient_t *ws, ngx_uint_t failed);
typedef void (*ngx_http_openclaw_wsclient_progress_pt)(
    ngx_http_openclaw_wsclient_t *ws);
typedef ngx_int_t (*ngx_http_openclaw_wsclient_oversized_pt)(
    ngx_http_openclaw_wsclient_t *ws, ngx_uint_t opcode, size_t size);
typedef ngx_uint_t (*ngx_http_openclaw_wsclient_keep_pt)(
    ngx_http_openclaw_wsclient_t *ws);


struct ngx_http_openclaw_wsclient_s {

    /* set by the owner before ngx_http_openclaw_wsclient_init() */

    ngx_url_t                              *url;       /* addresses */
    ngx_str_t                               host;      /* Host header */
    ngx_str_t                               uri;
    ngx_str_t                               headers;   /* each with CRLF */

#if (NGX_HTTP_SSL)
    ngx_ssl_t                              *ssl;       /* NULL: no TLS */
#endif
    ngx_str_t                               ssl_name;  /* NUL-terminated */
    ngx_flag_t                              ssl_verify;
    ngx_flag_t                              ssl_server_name;
    ngx_uint_t                              ssl_ip;    /* ssl_name is an
                                                          address */

    ngx_msec_t                              connect_timeout;
    ngx_msec_t                              timeout;   /* handshakes,
                                                          writes */
    size_t                                  max_message;  /* until ready */

    /* "gateway", in errors; "OpenClaw gateway", in log actions */
    const char                             *name;
    const char                             *title;
    ngx_str_t                               log_name;  /* the URL */

    /* the reason of the last failure, cut to fit: the owner's buffer */
    u_char                                 *error;
    size_t                                  error_size;

    ngx_http_openclaw_wsclient_open_pt      open;
    ngx_http_openclaw_wsclient_message_pt   message;
    ngx_http_openclaw_wsclient_closed_pt    closed;
    ngx_http_openclaw_wsclient_progress_pt  progress;
    ngx_http_openclaw_wsclient_oversized_pt oversized;
    ngx_http_openclaw_wsclient_keep_pt      keep;
    void                                   *data;

    /*
     * Once ready, a ping after "ping_interval" without input, and the
     * link fails when nothing comes within "pong_timeout"; 0: no pings.
     */
    ngx_msec_t                              ping_interval;
    ngx_msec_t                              pong_timeout;

    /* the owner may read these, and set retry_after */

    ngx_http_openclaw_wsclient_state_e      state;
    ngx_log_t                               log;
    ngx_connection_t                       *connection;
    ngx_msec_t                              last_rx;
    ngx_uint_t                              failures;  /* since ready */
    ngx_uint_t                              reconnects;
    ngx_msec_t                              retry_after;  /* the next
                                                             attempt waits
                                                             at least */

    /* the transport's own */

    ngx_pool_t                             *pool;
    ngx_peer_connection_t                   peer;
    ngx_uint_t                              addr;

    ngx_http_openclaw_ws_parser_t           parser;

    u_char                                 *in;
    u_char                                  key[24];
    ngx_buf_t                              *header;

    u_char                                 *msg;
    size_t                                  msg_len;
    size_t                                  msg_size;

    u_char                                 *out;
    u_char                                 *out_pos;
    u_char                                 *out_last;
    size_t                                  out_size;

    u_char                     random[NGX_HTTP_OPENCLAW_WSCLIENT_RANDOM];
    size_t                                  random_pos;

    ngx_event_t                             reconnect;
    ngx_event_t                             keepalive;
    ngx_msec_t                              ping_at;   /* 0: no ping
                                                          unanswered */
    size_t                                  max_data;  /* once ready */
    size_t                                  skipped;
    unsigned                                skipping:1;

    ngx_msec_t                              backoff;
    ngx_msec_t                              ready_at;

    char                                   *connecting;  /* log actions */
    char                                   *securing;
    char                                   *upgrading;
};


/*
 * Configuration: the TLS context of outbound links (TLS 1.2 and 1.3,
 * peers verified against "trusted", or the system's CAs, unless "verify"
 * is off), and the name a link checks its peer's certificate against:
 * NUL-terminated, without the brackets of an IPv6 literal, "ip" set for
 * an address (never sent as SNI, RFC 6066 3).
 */
#if (NGX_HTTP_SSL)
ngx_ssl_t *ngx_http_openclaw_wsclient_ssl(ngx_conf_t *cf, ngx_flag_t verify,
    ngx_str_t *trusted);
#endif
ngx_int_t ngx_http_openclaw_wsclient_ssl_name(ngx_pool_t *pool,
    ngx_str_t *host, ngx_str_t *name, ngx_uint_t *ip);

ngx_int_t ngx_http_openclaw_wsclient_init(ngx_http_openclaw_wsclient_t *ws,
    ngx_cycle_t *cycle);

/* the first attempt, after a little jitter */
void ngx_http_openclaw_wsclient_start(ngx_http_openclaw_wsclient_t *ws);

/*
 * Closes the link, if open, and cancels the next attempt: no handler is
 * called; ngx_http_openclaw_wsclient_start() may dial again.
 */
void ngx_http_openclaw_wsclient_halt(ngx_http_openclaw_wsclient_t *ws);

/* closes the link for good and frees its buffers */
void ngx_http_openclaw_wsclient_stop(ngx_http_openclaw_wsclient_t *ws);

/*
 * The owner's handshake completed: a failure from now on is a lost link,
 * the backoff starts afresh once it has lasted, and messages may be as
 * large as "max_message".
 */
void ngx_http_openclaw_wsclient_ready(ngx_http_openclaw_wsclient_t *ws,
    size_t max_message);

/*
 * Queues one frame whose payload is "prefix", "data" and "suffix", so
 * that an envelope never needs a copy of what it wraps; the queue is
 * written at the end of the event loop's turn, once for all frames queued
 * in it.
 */
ngx_int_t ngx_http_openclaw_wsclient_send(ngx_http_openclaw_wsclient_t *ws,
    ngx_uint_t opcode, u_char *data, size_t len, u_char *prefix, size_t plen,
    u_char *suffix, size_t slen);

/*
 * Ends the connection, keeps the formatted reason in "error", tells the
 * owner and schedules the next attempt.
 */
void ngx_http_openclaw_wsclient_fail(ngx_http_openclaw_wsclient_t *ws,
    ngx_uint_t level, const char *fmt, ...);


#endif /* _NGX_HTTP_OPENCLAW_WSCLIENT_H_INCLUDED_ */
