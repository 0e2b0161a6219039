
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * Callbacks: a message POSTed with a "callback" URL is relayed from an
 * endpoint of its own, which outlives the request (answered 202 at once),
 * and its final reply is POSTed to that URL with libcurl.  libcurl runs
 * on its multi-socket API inside nginx's event loop: its sockets become
 * nginx connections with level-triggered events, its one timer an nginx
 * timer; no thread and no blocking call (host names of the allowed
 * prefixes are resolved when the configuration is read, and handed to
 * libcurl, whose resolver would otherwise start a thread).
 *
 * A delivery is signed (HMAC-SHA256 over the timestamp, a dot and the
 * body), keeps its id across attempts, and is retried with exponential
 * backoff and jitter after connection errors, timeouts, 408, 429 and
 * 5xx, no sooner than Retry-After says; any other answer is final.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "ngx_http_openclaw_callback.h"
#include "ngx_http_openclaw_relay.h"
#include "ngx_http_openclaw_headers.h"


#define NGX_HTTP_OPENCLAW_CALLBACK_BACKOFF_MAX  60000
#define NGX_HTTP_OPENCLAW_CALLBACK_RETRY_MAX    600      /* seconds */
#define NGX_HTTP_OPENCLAW_CALLBACK_URL_MAX      2048
#define NGX_HTTP_OPENCLAW_CALLBACK_HOLD         250


typedef struct ngx_http_openclaw_delivery_s  ngx_http_openclaw_delivery_t;

struct ngx_http_openclaw_delivery_s {
    ngx_queue_t                     link;
    ngx_pool_t                     *pool;
    ngx_log_t                       log;
    ngx_http_openclaw_endpoint_t    ep;
    ngx_http_openclaw_loc_conf_t   *conf;
    ngx_event_t                     ev;        /* the run ended, a retry */

    CURL                           *easy;
    struct curl_slist              *headers;
    char                           *url;       /* NUL-terminated */
    ngx_str_t                       body;      /* the final reply */
    ngx_str_t                       id;        /* the message's, as JSON */
    u_char                          delivery[33];

    ngx_uint_t                      attempt;
    long                            status;    /* of the last attempt */
    time_t                          retry_after;
    char                            error[CURL_ERROR_SIZE];

    unsigned                        progress:1; /* deliver progress too */
    unsigned                        ended:1;   /* the final reply came */
    unsigned                        relayed:1; /* an endpoint of the relay */
    unsigned                        sending:1; /* in the multi handle */
};


typedef struct {
    CURLM                          *multi;
    ngx_event_t                     timer;     /* libcurl's */
    ngx_event_t                     hold;      /* shutdown, for the runs */
    ngx_queue_t                     waiting;   /* runs in flight */
    ngx_queue_t                     sending;   /* deliveries */
    ngx_uint_t                      pending;   /* both */
    ngx_http_openclaw_callback_stats_t  *stats;
    unsigned                        ready:1;
} ngx_http_openclaw_callback_worker_t;


static ngx_int_t ngx_http_openclaw_callback_init(ngx_log_t *log);
static ngx_int_t ngx_http_openclaw_callback_send(
    ngx_http_openclaw_endpoint_t *ep, u_char *data, size_t len);
static void ngx_http_openclaw_callback_progress(
    ngx_http_openclaw_delivery_t *parent, u_char *data, size_t len);
static ngx_http_openclaw_delivery_t *ngx_http_openclaw_callback_new(
    ngx_http_openclaw_loc_conf_t *conf, ngx_str_t *url, ngx_str_t *id);
static void ngx_http_openclaw_callback_ended(ngx_event_t *ev);
static void ngx_http_openclaw_callback_attempt(ngx_event_t *ev);
static ngx_int_t ngx_http_openclaw_callback_sign(
    ngx_http_openclaw_delivery_t *d);
static void ngx_http_openclaw_callback_done(ngx_http_openclaw_delivery_t *d,
    CURLcode rc);
static void ngx_http_openclaw_callback_free(ngx_http_openclaw_delivery_t *d);
static void ngx_http_openclaw_callback_hold(ngx_event_t *ev);
static int ngx_http_openclaw_callback_socket(CURL *easy, curl_socket_t s,
    int what, void *userp, void *socketp);
static int ngx_http_openclaw_callback_timer(CURLM *multi, long timeout_ms,
    void *userp);
static void ngx_http_openclaw_callback_socket_handler(ngx_event_t *ev);
static void ngx_http_openclaw_callback_timer_handler(ngx_event_t *ev);
static void ngx_http_openclaw_callback_check(void);
static size_t ngx_http_openclaw_callback_header(char *buf, size_t size,
    size_t n, void *data);
static size_t ngx_http_openclaw_callback_discard(char *buf, size_t size,
    size_t n, void *data);
static u_char *ngx_http_openclaw_callback_log_error(ngx_log_t *log,
    u_char *buf, size_t len);
static void ngx_http_openclaw_callback_cleanup_slist(void *data);


static ngx_http_openclaw_callback_worker_t  ngx_http_openclaw_callback_worker;

/* until the worker has its status slot */
static ngx_http_openclaw_callback_stats_t   ngx_http_openclaw_callback_nostats;


/*
 * A prefix is scheme://host[:port]/...: the authority must end where the
 * prefix says, or "https://hooks.example.com" would let callbacks go to
 * hooks.example.com.attacker.net.  Its host is resolved here, once.
 */

char *
ngx_http_openclaw_callback_allow(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_openclaw_loc_conf_t *olcf = conf;

    u_char              *p, *e, *slash, *last;
    size_t               skip;
    ngx_url_t            u;
    in_port_t            port;
    ngx_str_t           *value, *prefix;
    ngx_uint_t           i, k;
    ngx_pool_cleanup_t  *cln;
    struct curl_slist   *list;
    u_char               entry[8 * (NGX_SOCKADDR_STRLEN + 3) + 300];
    u_char               addr[NGX_SOCKADDR_STRLEN];

    if (olcf->callback_allow == NGX_CONF_UNSET_PTR) {
        olcf->callback_allow = ngx_array_create(cf->pool, 2,
                                                sizeof(ngx_str_t));
        if (olcf->callback_allow == NULL) {
            return NGX_CONF_ERROR;
        }

        cln = ngx_pool_cleanup_add(cf->pool, 0);
        if (cln == NULL) {
            return NGX_CONF_ERROR;
        }

        cln->handler = ngx_http_openclaw_callback_cleanup_slist;
        cln->data = (struct curl_slist **) &olcf->callback_resolve;
    }

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {

        if (value[i].len > 8
            && ngx_strncasecmp(value[i].data, (u_char *) "https://", 8) == 0)
        {
            skip = 8;
            port = 443;

        } else if (value[i].len > 7
                   && ngx_strncasecmp(value[i].data, (u_char *) "http://", 7)
                      == 0)
        {
            skip = 7;
            port = 80;

        } else {
            goto invalid;
        }

        p = value[i].data + skip;
        last = value[i].data + value[i].len;
        slash = ngx_strlchr(p, last, '/');

        if (slash == NULL || slash == p || ngx_strlchr(p, slash, '@')) {
            goto invalid;
        }

        ngx_memzero(&u, sizeof(ngx_url_t));
        u.url.data = p;
        u.url.len = slash - p;
        u.default_port = port;

        if (ngx_parse_url(cf->pool, &u) != NGX_OK || u.naddrs == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "%s in callback prefix \"%V\"",
                               u.err ? u.err : "no address", &value[i]);
            return NGX_CONF_ERROR;
        }

        prefix = ngx_array_push(olcf->callback_allow);
        if (prefix == NULL) {
            return NGX_CONF_ERROR;
        }

        *prefix = value[i];

        /*
         * libcurl takes these addresses instead of resolving the host,
         * all in one entry: a second entry of a host and port replaces
         * the first
         */

        e = ngx_snprintf(entry, sizeof(entry) - 1, "%V:%d:", &u.host,
                         (int) (u.no_port ? port : u.port));

        for (k = 0; k < u.naddrs && k < 8; k++) {
            p = addr;

            if (k) {
                *p++ = ',';
            }

            if (u.addrs[k].sockaddr->sa_family == AF_INET6) {
                *p++ = '[';
            }

            p += ngx_sock_ntop(u.addrs[k].sockaddr, u.addrs[k].socklen, p,
                               NGX_SOCKADDR_STRLEN - 3, 0);

            if (u.addrs[k].sockaddr->sa_family == AF_INET6) {
                *p++ = ']';
            }

            e = ngx_snprintf(e, entry + sizeof(entry) - 1 - e, "%*s",
                             p - addr, addr);
        }

        *e = '\0';

        list = curl_slist_append(olcf->callback_resolve, (char *) entry);
        if (list == NULL) {
            return NGX_CONF_ERROR;
        }

        olcf->callback_resolve = list;
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid callback prefix \"%V\": expected "
                       "http:// or https://, a host, and a path that "
                       "starts with \"/\" (https://hooks.example.com/)",
                       &value[i]);

    return NGX_CONF_ERROR;
}


static void
ngx_http_openclaw_callback_cleanup_slist(void *data)
{
    struct curl_slist  **list = data;

    if (*list) {
        curl_slist_free_all(*list);
        *list = NULL;
    }
}


ngx_int_t
ngx_http_openclaw_callback_allowed(ngx_http_openclaw_loc_conf_t *conf,
    ngx_str_t *url, const char **err)
{
    size_t      i;
    u_char     *p;
    ngx_str_t  *prefix;
    ngx_uint_t  n;

    if (conf->callback_allow == NULL) {
        *err = "callbacks are not enabled on this location "
               "(openclaw_bridge_callback_allow)";
        return NGX_DECLINED;
    }

    if (url->len > NGX_HTTP_OPENCLAW_CALLBACK_URL_MAX) {
        *err = "callback URL longer than 2048 bytes";
        return NGX_DECLINED;
    }

    for (i = 0; i < url->len; i++) {
        if (url->data[i] <= ' ' || url->data[i] >= 0x7f) {
            *err = "the callback URL has a space, a control or a "
                   "non-ASCII character";
            return NGX_DECLINED;
        }
    }

    /*
     * A path may not climb out of its prefix: libcurl squashes dot
     * segments ("/hooks/../admin" goes to "/admin"), and receivers decode
     * "%2e" and may take a backslash for a slash.
     */

    for (i = 0; i + 1 < url->len; i++) {
        p = url->data + i;

        if ((p[0] == '/' && p[1] == '.'
             && (i + 2 == url->len || p[2] == '/' || p[2] == '?'
                 || p[2] == '#'
                 || (p[2] == '.'
                     && (i + 3 == url->len || p[3] == '/' || p[3] == '?'
                         || p[3] == '#'))))
            || (p[0] == '%' && i + 2 < url->len && p[1] == '2'
                && (p[2] == 'e' || p[2] == 'E'))
            || p[0] == '\\')
        {
            *err = "the callback URL has a dot segment, an encoded dot or "
                   "a backslash";
            return NGX_DECLINED;
        }
    }

    prefix = conf->callback_allow->elts;

    for (n = 0; n < conf->callback_allow->nelts; n++) {
        if (url->len >= prefix[n].len
            && ngx_strncmp(url->data, prefix[n].data, prefix[n].len) == 0)
        {
            return NGX_OK;
        }
    }

    *err = "the callback URL is not under a prefix allowed on this "
           "location (openclaw_bridge_callback_allow)";

    return NGX_DECLINED;
}


static ngx_int_t
ngx_http_openclaw_callback_init(ngx_log_t *log)
{
    ngx_http_openclaw_callback_worker_t  *w;

    w = &ngx_http_openclaw_callback_worker;

    if (w->ready) {
        return NGX_OK;
    }

    /* workers have no threads: done here, at the first callback */

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        ngx_log_error(NGX_LOG_ALERT, log, 0, "curl_global_init() failed");
        return NGX_ERROR;
    }

    w->multi = curl_multi_init();
    if (w->multi == NULL) {
        curl_global_cleanup();
        ngx_log_error(NGX_LOG_ALERT, log, 0, "curl_multi_init() failed");
        return NGX_ERROR;
    }

    curl_multi_setopt(w->multi, CURLMOPT_SOCKETFUNCTION,
                      ngx_http_openclaw_callback_socket);
    curl_multi_setopt(w->multi, CURLMOPT_TIMERFUNCTION,
                      ngx_http_openclaw_callback_timer);

    w->timer.handler = ngx_http_openclaw_callback_timer_handler;
    w->timer.log = ngx_cycle->log;
    w->timer.data = w;

    w->hold.handler = ngx_http_openclaw_callback_hold;
    w->hold.log = ngx_cycle->log;
    w->hold.data = w;

    ngx_queue_init(&w->waiting);
    ngx_queue_init(&w->sending);

    if (w->stats == NULL) {
        w->stats = &ngx_http_openclaw_callback_nostats;
    }

    w->ready = 1;

    return NGX_OK;
}


ngx_int_t
ngx_http_openclaw_callback_start(ngx_http_request_t *r, ngx_str_t *agent,
    ngx_str_t *uid, ngx_str_t *sender, ngx_str_t *body, ngx_str_t *url,
    ngx_str_t *id, ngx_uint_t progress, ngx_str_t *reply, ngx_str_t *session,
    ngx_str_t *delivery)
{
    u_char                               *p;
    ngx_pool_t                           *pool;
    ngx_http_openclaw_loc_conf_t         *conf;
    ngx_http_openclaw_delivery_t         *d;
    ngx_http_openclaw_callback_worker_t  *w;

    w = &ngx_http_openclaw_callback_worker;
    conf = ngx_http_get_module_loc_conf(r, ngx_http_openclaw_bridge_module);

    if (ngx_http_openclaw_callback_init(r->connection->log) != NGX_OK) {
        return NGX_ERROR;
    }

    if (w->pending >= NGX_HTTP_OPENCLAW_CALLBACK_QUEUE) {
        return NGX_BUSY;
    }

    d = ngx_http_openclaw_callback_new(conf, url, id);
    if (d == NULL) {
        return NGX_ERROR;
    }

    pool = d->pool;
    d->progress = progress;

    d->ev.handler = ngx_http_openclaw_callback_ended;
    d->ev.data = d;
    d->ev.log = &d->log;

    d->ep.send = ngx_http_openclaw_callback_send;
    d->ep.data = d;
    d->ep.log = &d->log;
    d->ep.conf = conf;

    if (ngx_http_openclaw_relay_endpoint(&d->ep, pool, agent, uid, sender)
        != NGX_OK)
    {
        ngx_destroy_pool(pool);
        return NGX_ERROR;
    }

    d->relayed = 1;
    ngx_queue_insert_tail(&w->waiting, &d->link);
    w->pending++;
    w->stats->pending = w->pending;

    (void) ngx_http_openclaw_relay_message(&d->ep, 0, body->data, body->len);

    if (d->ended && d->ev.posted) {

        /* answered at once: bad input, not a callback */

        ngx_delete_posted_event(&d->ev);

        reply->data = ngx_pnalloc(r->pool, d->body.len);
        if (reply->data == NULL) {
            ngx_http_openclaw_callback_free(d);
            return NGX_ERROR;
        }

        reply->len = d->body.len;
        ngx_memcpy(reply->data, d->body.data, d->body.len);

        ngx_http_openclaw_callback_free(d);
        return NGX_DONE;
    }

    p = ngx_pnalloc(r->pool, d->ep.session.len + sizeof(d->delivery));
    if (p == NULL) {
        return NGX_ERROR;
    }

    session->data = p;
    session->len = d->ep.session.len;
    p = ngx_cpymem(p, d->ep.session.data, d->ep.session.len);

    delivery->data = p;
    delivery->len = sizeof(d->delivery) - 1;
    ngx_memcpy(p, d->delivery, delivery->len);

    /* a run held on shutdown still ends, with its error, and is sent */

    if (!w->hold.timer_set) {
        ngx_add_timer(&w->hold, NGX_HTTP_OPENCLAW_CALLBACK_HOLD);
    }

    return NGX_OK;
}


/* a delivery with its own pool, log and id, to "url" */

static ngx_http_openclaw_delivery_t *
ngx_http_openclaw_callback_new(ngx_http_openclaw_loc_conf_t *conf,
    ngx_str_t *url, ngx_str_t *id)
{
    ngx_pool_t                    *pool;
    ngx_http_openclaw_delivery_t  *d;
    u_char                         rnd[16];

    pool = ngx_create_pool(1024, ngx_cycle->log);
    if (pool == NULL) {
        return NULL;
    }

    d = ngx_pcalloc(pool, sizeof(ngx_http_openclaw_delivery_t));
    if (d == NULL) {
        ngx_destroy_pool(pool);
        return NULL;
    }

    d->pool = pool;
    d->conf = conf;

    /* the request is gone long before the delivery: a log of its own */

    d->log = *ngx_cycle->log;
    d->log.handler = ngx_http_openclaw_callback_log_error;
    d->log.data = d;
    d->log.action = "delivering a callback";
    pool->log = &d->log;

    d->url = ngx_pnalloc(pool, url->len + 1);
    d->id.data = ngx_pnalloc(pool, id->len + 1);

    if (d->url == NULL || d->id.data == NULL
        || RAND_bytes(rnd, sizeof(rnd)) != 1)
    {
        ngx_destroy_pool(pool);
        return NULL;
    }

    (void) ngx_cpystrn((u_char *) d->url, url->data, url->len + 1);
    ngx_hex_dump(d->delivery, rnd, sizeof(rnd));

    d->id.len = id->len;
    ngx_memcpy(d->id.data, id->data, id->len);

    return d;
}


/*
 * A progress, asked for with "callbackProgress": a delivery of its own,
 * sent at once; deliveries are not ordered among themselves (a retry
 * may overtake), so receivers keep the longest "content".  Not when the
 * queue is full: the final reply matters more.
 */

static void
ngx_http_openclaw_callback_progress(ngx_http_openclaw_delivery_t *parent,
    u_char *data, size_t len)
{
    ngx_str_t                             url;
    ngx_http_openclaw_delivery_t         *d;
    ngx_http_openclaw_callback_worker_t  *w;

    w = &ngx_http_openclaw_callback_worker;

    if (w->pending >= NGX_HTTP_OPENCLAW_CALLBACK_QUEUE) {
        ngx_log_error(NGX_LOG_INFO, &parent->log, 0,
                      "callback of a progress dropped: %ui deliveries "
                      "pending", w->pending);
        return;
    }

    url.data = (u_char *) parent->url;
    url.len = ngx_strlen(parent->url);

    d = ngx_http_openclaw_callback_new(parent->conf, &url, &parent->id);
    if (d == NULL) {
        return;
    }

    d->body.data = ngx_pnalloc(d->pool, len);
    if (d->body.data == NULL) {
        ngx_destroy_pool(d->pool);
        return;
    }

    ngx_memcpy(d->body.data, data, len);
    d->body.len = len;
    d->ended = 1;

    d->ev.handler = ngx_http_openclaw_callback_attempt;
    d->ev.data = d;
    d->ev.log = &d->log;

    ngx_queue_insert_tail(&w->sending, &d->link);
    w->pending++;
    w->stats->pending = w->pending;

    ngx_http_openclaw_callback_attempt(&d->ev);
}


/* the relay's replies: the last one is delivered, progress if asked */

static ngx_int_t
ngx_http_openclaw_callback_send(ngx_http_openclaw_endpoint_t *ep,
    u_char *data, size_t len)
{
    ngx_http_openclaw_delivery_t  *d;

    d = ep->data;

    if (d->ended) {
        return NGX_ERROR;
    }

    if (len > sizeof("{\"type\":\"progress\"") - 1
        && ngx_strncmp(data, "{\"type\":\"progress\"",
                       sizeof("{\"type\":\"progress\"") - 1) == 0)
    {
        if (d->progress) {
            ngx_http_openclaw_callback_progress(d, data, len);
        }

        return NGX_OK;
    }

    /* the scratch buffer of the JSON writer is reused at once */

    d->body.data = ngx_pnalloc(d->pool, len);
    if (d->body.data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(d->body.data, data, len);
    d->body.len = len;
    d->ended = 1;

    /* the relay still holds the run: the endpoint goes outside of it */

    ngx_post_event(&d->ev, &ngx_posted_events);

    return NGX_OK;
}


static void
ngx_http_openclaw_callback_ended(ngx_event_t *ev)
{
    ngx_http_openclaw_delivery_t         *d;
    ngx_http_openclaw_callback_worker_t  *w;

    d = ev->data;
    w = &ngx_http_openclaw_callback_worker;

    d->relayed = 0;
    ngx_http_openclaw_relay_gone(&d->ep);

    ngx_queue_remove(&d->link);
    ngx_queue_insert_tail(&w->sending, &d->link);

    d->ev.handler = ngx_http_openclaw_callback_attempt;
    ngx_http_openclaw_callback_attempt(&d->ev);
}


static void
ngx_http_openclaw_callback_attempt(ngx_event_t *ev)
{
    CURLMcode                      mrc;
    ngx_http_openclaw_delivery_t  *d;
    ngx_http_openclaw_loc_conf_t  *conf;

    d = ev->data;
    conf = d->conf;

    d->attempt++;
    d->status = 0;
    d->retry_after = 0;
    d->error[0] = '\0';

    if (d->easy == NULL) {
        d->easy = curl_easy_init();
        if (d->easy == NULL) {
            ngx_http_openclaw_callback_done(d, CURLE_OUT_OF_MEMORY);
            return;
        }

        curl_easy_setopt(d->easy, CURLOPT_URL, d->url);
        curl_easy_setopt(d->easy, CURLOPT_PRIVATE, d);
        curl_easy_setopt(d->easy, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(d->easy, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(d->easy, CURLOPT_FOLLOWLOCATION, 0L);
        curl_easy_setopt(d->easy, CURLOPT_PATH_AS_IS, 1L);
        curl_easy_setopt(d->easy, CURLOPT_SSL_VERIFYPEER, 1L);
        curl_easy_setopt(d->easy, CURLOPT_SSL_VERIFYHOST, 2L);
        curl_easy_setopt(d->easy, CURLOPT_ERRORBUFFER, d->error);
        curl_easy_setopt(d->easy, CURLOPT_POST, 1L);
        curl_easy_setopt(d->easy, CURLOPT_POSTFIELDS, d->body.data);
        curl_easy_setopt(d->easy, CURLOPT_POSTFIELDSIZE,
                         (long) d->body.len);
        curl_easy_setopt(d->easy, CURLOPT_TIMEOUT_MS,
                         (long) conf->callback_timeout);
        curl_easy_setopt(d->easy, CURLOPT_HEADERFUNCTION,
                         ngx_http_openclaw_callback_header);
        curl_easy_setopt(d->easy, CURLOPT_HEADERDATA, d);
        curl_easy_setopt(d->easy, CURLOPT_WRITEFUNCTION,
                         ngx_http_openclaw_callback_discard);
        curl_easy_setopt(d->easy, CURLOPT_USERAGENT,
                         "ngx_http_openclaw_bridge_module");

        /* a connection per attempt: nothing is left open between them */

        curl_easy_setopt(d->easy, CURLOPT_FORBID_REUSE, 1L);

        if (conf->callback_resolve) {
            curl_easy_setopt(d->easy, CURLOPT_RESOLVE,
                             conf->callback_resolve);
        }

        if (conf->callback_ssl_trusted_certificate.len) {
            curl_easy_setopt(d->easy, CURLOPT_CAINFO,
                         (char *) conf->callback_ssl_trusted_certificate.data);
        }
    }

    /* a new timestamp and signature for each attempt, the same id */

    if (ngx_http_openclaw_callback_sign(d) != NGX_OK) {
        ngx_http_openclaw_callback_done(d, CURLE_OUT_OF_MEMORY);
        return;
    }

    curl_easy_setopt(d->easy, CURLOPT_HTTPHEADER, d->headers);

    mrc = curl_multi_add_handle(ngx_http_openclaw_callback_worker.multi,
                                d->easy);

    if (mrc != CURLM_OK) {
        ngx_log_error(NGX_LOG_ALERT, &d->log, 0,
                      "curl_multi_add_handle() failed: %s",
                      curl_multi_strerror(mrc));
        ngx_http_openclaw_callback_done(d, CURLE_FAILED_INIT);
        return;
    }

    d->sending = 1;
}


/*
 * X-OpenClaw-Signature: sha256=<hex of HMAC-SHA256(secret, "<timestamp>."
 * + body)>, where <timestamp> is X-OpenClaw-Timestamp: receivers check
 * both, and refuse old timestamps, so that a delivery cannot be replayed.
 */

static ngx_int_t
ngx_http_openclaw_callback_sign(ngx_http_openclaw_delivery_t *d)
{
    u_char             *p, *buf;
    unsigned int        n;
    ngx_str_t          *secret;
    struct curl_slist  *list, *next;
    u_char              ts[NGX_TIME_T_LEN + 1];
    u_char              mac[EVP_MAX_MD_SIZE];
    u_char              line[256];
    size_t              tslen;

    if (d->headers) {
        curl_slist_free_all(d->headers);
        d->headers = NULL;
    }

    tslen = ngx_sprintf(ts, "%T", ngx_time()) - ts;

    list = NULL;

#define ngx_http_openclaw_callback_add(fmt, ...)                              \
    p = ngx_snprintf(line, sizeof(line) - 1, fmt, __VA_ARGS__);               \
    *p = '\0';                                                                \
    next = curl_slist_append(list, (char *) line);                            \
    if (next == NULL) {                                                       \
        goto failed;                                                          \
    }                                                                         \
    list = next

    ngx_http_openclaw_callback_add("Content-Type: %s", "application/json");

    /* no "Expect: 100-continue" round trip for a body of over 1 KiB */

    ngx_http_openclaw_callback_add("Expect:%s", "");
    ngx_http_openclaw_callback_add("X-OpenClaw-Delivery: %s", d->delivery);
    ngx_http_openclaw_callback_add("X-OpenClaw-Attempt: %ui", d->attempt);
    ngx_http_openclaw_callback_add("X-OpenClaw-Timestamp: %*s", tslen, ts);

    secret = &d->conf->callback_secret;

    if (secret->len) {

        /* the one-shot HMAC(): OpenSSL 3 deprecates its HMAC_CTX */

        buf = ngx_alloc(tslen + 1 + d->body.len, &d->log);
        if (buf == NULL) {
            goto failed;
        }

        p = ngx_cpymem(buf, ts, tslen);
        *p++ = '.';
        p = ngx_cpymem(p, d->body.data, d->body.len);

        n = 0;

        if (HMAC(EVP_sha256(), secret->data, (int) secret->len, buf,
                 p - buf, mac, &n)
            == NULL)
        {
            ngx_free(buf);
            goto failed;
        }

        ngx_free(buf);

        p = ngx_cpymem(line, "X-OpenClaw-Signature: sha256=",
                       sizeof("X-OpenClaw-Signature: sha256=") - 1);
        p = ngx_hex_dump(p, mac, n);
        *p = '\0';

        next = curl_slist_append(list, (char *) line);
        if (next == NULL) {
            goto failed;
        }

        list = next;
    }

#undef ngx_http_openclaw_callback_add

    d->headers = list;

    return NGX_OK;

failed:

    if (list) {
        curl_slist_free_all(list);
    }

    return NGX_ERROR;
}


/* an attempt has ended: done, or tried again later */

static void
ngx_http_openclaw_callback_done(ngx_http_openclaw_delivery_t *d,
    CURLcode rc)
{
    ngx_msec_t                     delay, backoff;
    ngx_uint_t                     retry;
    ngx_http_openclaw_loc_conf_t  *conf;

    conf = d->conf;

    if (d->sending) {
        curl_multi_remove_handle(ngx_http_openclaw_callback_worker.multi,
                                 d->easy);
        d->sending = 0;
    }

    if (rc == CURLE_OK && d->status >= 200 && d->status < 300) {
        ngx_log_error(NGX_LOG_INFO, &d->log, 0,
                      "callback delivered, status %i, attempt %ui",
                      (ngx_int_t) d->status, d->attempt);
        ngx_http_openclaw_callback_worker.stats->delivered++;
        ngx_http_openclaw_callback_free(d);
        return;
    }

    if (rc == CURLE_OK) {
        retry = (d->status >= 500 || d->status == 408 || d->status == 429);

    } else {
        /* a certificate refused now is refused at every attempt */

        retry = (rc != CURLE_OUT_OF_MEMORY && rc != CURLE_FAILED_INIT
                 && rc != CURLE_UNSUPPORTED_PROTOCOL
                 && rc != CURLE_URL_MALFORMAT
                 && rc != CURLE_PEER_FAILED_VERIFICATION
                 && rc != CURLE_SSL_CACERT_BADFILE);
    }

    if (!retry || d->attempt >= conf->callback_attempts) {
        ngx_log_error(NGX_LOG_ERR, &d->log, 0,
                      "callback not delivered after %ui attempt%s: %s%s "
                      "%i", d->attempt, d->attempt == 1 ? "" : "s",
                      rc == CURLE_OK ? "status" : curl_easy_strerror(rc),
                      rc == CURLE_OK ? "" : ", status",
                      (ngx_int_t) d->status);
        ngx_http_openclaw_callback_worker.stats->failed++;
        ngx_http_openclaw_callback_free(d);
        return;
    }

    /* "equal jitter": half the backoff, plus up to the other half */

    backoff = conf->callback_backoff << ngx_min(d->attempt - 1, 16);
    backoff = ngx_min(backoff, NGX_HTTP_OPENCLAW_CALLBACK_BACKOFF_MAX);

    delay = backoff / 2 + ngx_random() % (backoff / 2 + 1);

    if (d->retry_after) {
        delay = ngx_max(delay, (ngx_msec_t) d->retry_after * 1000);
    }

    ngx_log_error(NGX_LOG_INFO, &d->log, 0,
                  "callback attempt %ui failed (%s%s%i%s%s), again in %M ms",
                  d->attempt,
                  rc == CURLE_OK ? "status " : curl_easy_strerror(rc),
                  rc == CURLE_OK ? "" : ", status ", (ngx_int_t) d->status,
                  d->error[0] ? ": " : "", d->error, delay);

    ngx_http_openclaw_callback_worker.stats->retries++;

    ngx_add_timer(&d->ev, delay);
}


static void
ngx_http_openclaw_callback_free(ngx_http_openclaw_delivery_t *d)
{
    ngx_http_openclaw_callback_worker_t  *w;

    w = &ngx_http_openclaw_callback_worker;

    if (d->ev.timer_set) {
        ngx_del_timer(&d->ev);
    }

    if (d->ev.posted) {
        ngx_delete_posted_event(&d->ev);
    }

    if (d->relayed) {
        d->relayed = 0;
        ngx_http_openclaw_relay_gone(&d->ep);
    }

    if (d->easy) {
        if (d->sending) {
            curl_multi_remove_handle(w->multi, d->easy);
        }

        curl_easy_cleanup(d->easy);
    }

    if (d->headers) {
        curl_slist_free_all(d->headers);
    }

    ngx_queue_remove(&d->link);
    w->pending--;
    w->stats->pending = w->pending;

    ngx_destroy_pool(d->pool);
}


/*
 * Graceful shutdown closes the gateway link at once, and a worker exits
 * once only cancelable timers are left: while a callback's run is in
 * flight, this timer (not cancelable) holds the worker, and when it is
 * exiting gives the runs their errors, which are then delivered.
 */

static void
ngx_http_openclaw_callback_hold(ngx_event_t *ev)
{
    ngx_queue_t                          *q, *next;
    ngx_http_openclaw_delivery_t         *d;
    ngx_http_openclaw_callback_worker_t  *w;

    w = ev->data;

    if (ngx_exiting || ngx_terminate) {
        for (q = ngx_queue_head(&w->waiting);
             q != ngx_queue_sentinel(&w->waiting);
             q = next)
        {
            next = ngx_queue_next(q);
            d = ngx_queue_data(q, ngx_http_openclaw_delivery_t, link);

            if (!d->ended) {
                ngx_http_openclaw_relay_closing(&d->ep,
                                                "server shutting down");
            }
        }
    }

    if (!ngx_queue_empty(&w->waiting)) {
        ngx_add_timer(&w->hold, NGX_HTTP_OPENCLAW_CALLBACK_HOLD);
    }
}


/* libcurl's sockets as nginx connections, with level-triggered events */

static int
ngx_http_openclaw_callback_socket(CURL *easy, curl_socket_t s, int what,
    void *userp, void *socketp)
{
    ngx_connection_t  *c;

    c = socketp;

    if (what == CURL_POLL_REMOVE) {
        if (c == NULL) {
            return 0;
        }

        /* libcurl closes the socket itself, after this */

        if (c->read->active) {
            ngx_del_event(c->read, NGX_READ_EVENT, 0);
        }

        if (c->write->active) {
            ngx_del_event(c->write, NGX_WRITE_EVENT, 0);
        }

        if (c->read->posted) {
            ngx_delete_posted_event(c->read);
        }

        if (c->write->posted) {
            ngx_delete_posted_event(c->write);
        }

        ngx_free_connection(c);
        c->fd = (ngx_socket_t) -1;

        curl_multi_assign(ngx_http_openclaw_callback_worker.multi, s, NULL);

        return 0;
    }

    if (c == NULL) {
        c = ngx_get_connection(s, ngx_cycle->log);
        if (c == NULL) {
            return -1;
        }

        c->read->handler = ngx_http_openclaw_callback_socket_handler;
        c->write->handler = ngx_http_openclaw_callback_socket_handler;
        c->read->log = c->log;
        c->write->log = c->log;

        curl_multi_assign(ngx_http_openclaw_callback_worker.multi, s, c);
    }

    if ((what & CURL_POLL_IN) && !c->read->active) {
        if (ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            return -1;
        }

    } else if (!(what & CURL_POLL_IN) && c->read->active) {
        if (ngx_del_event(c->read, NGX_READ_EVENT, 0) != NGX_OK) {
            return -1;
        }
    }

    if ((what & CURL_POLL_OUT) && !c->write->active) {
        if (ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            return -1;
        }

    } else if (!(what & CURL_POLL_OUT) && c->write->active) {
        if (ngx_del_event(c->write, NGX_WRITE_EVENT, 0) != NGX_OK) {
            return -1;
        }
    }

    return 0;
}


/*
 * libcurl's one timer.  It holds the worker on shutdown (not cancelable)
 * only while a delivery is in progress, so that an idle libcurl does not.
 */

static int
ngx_http_openclaw_callback_timer(CURLM *multi, long timeout_ms, void *userp)
{
    ngx_http_openclaw_callback_worker_t  *w;

    w = &ngx_http_openclaw_callback_worker;

    if (w->timer.timer_set) {
        ngx_del_timer(&w->timer);
    }

    if (timeout_ms < 0) {
        return 0;
    }

    w->timer.cancelable = ngx_queue_empty(&w->sending);

    ngx_add_timer(&w->timer, (ngx_msec_t) timeout_ms);

    return 0;
}


static void
ngx_http_openclaw_callback_socket_handler(ngx_event_t *ev)
{
    int                running;
    ngx_connection_t  *c;

    c = ev->data;

    (void) curl_multi_socket_action(ngx_http_openclaw_callback_worker.multi,
                                    c->fd,
                                    ev->write ? CURL_CSELECT_OUT
                                              : CURL_CSELECT_IN,
                                    &running);

    ngx_http_openclaw_callback_check();
}


static void
ngx_http_openclaw_callback_timer_handler(ngx_event_t *ev)
{
    int  running;

    (void) curl_multi_socket_action(ngx_http_openclaw_callback_worker.multi,
                                    CURL_SOCKET_TIMEOUT, 0, &running);

    ngx_http_openclaw_callback_check();
}


static void
ngx_http_openclaw_callback_check(void)
{
    int                            left;
    long                           status;
    CURLMsg                       *msg;
    ngx_http_openclaw_delivery_t  *d;

    while ((msg = curl_multi_info_read(ngx_http_openclaw_callback_worker.multi,
                                       &left))
           != NULL)
    {
        if (msg->msg != CURLMSG_DONE) {
            continue;
        }

        d = NULL;
        (void) curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE,
                                 (char **) &d);

        if (d == NULL) {
            continue;
        }

        status = 0;
        (void) curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE,
                                 &status);
        d->status = status;

        ngx_http_openclaw_callback_done(d, msg->data.result);
    }
}


/* Retry-After: seconds, or an HTTP date */

static size_t
ngx_http_openclaw_callback_header(char *buf, size_t size, size_t n,
    void *data)
{
    ngx_http_openclaw_delivery_t *d = data;

    long            secs;
    size_t          len;
    time_t          t;
    const uint8_t  *value;

    if (!ngx_http_openclaw_header_value((uint8_t *) buf, size * n,
                                        "Retry-After", &value, &len))
    {
        return size * n;
    }

    secs = ngx_http_openclaw_delta_seconds(value, len,
                                      NGX_HTTP_OPENCLAW_CALLBACK_RETRY_MAX);

    if (secs < 0) {
        t = ngx_parse_http_time((u_char *) value, len);

        if (t == NGX_ERROR) {
            return size * n;
        }

        secs = (t > ngx_time()) ? t - ngx_time() : 0;
    }

    d->retry_after = ngx_min(secs, NGX_HTTP_OPENCLAW_CALLBACK_RETRY_MAX);

    return size * n;
}


static size_t
ngx_http_openclaw_callback_discard(char *buf, size_t size, size_t n,
    void *data)
{
    return size * n;
}


static u_char *
ngx_http_openclaw_callback_log_error(ngx_log_t *log, u_char *buf, size_t len)
{
    u_char                        *p;
    ngx_http_openclaw_delivery_t  *d;

    p = buf;

    if (log->action) {
        p = ngx_snprintf(p, len, " while %s", log->action);
        len -= p - buf;
        buf = p;
    }

    d = log->data;

    p = ngx_snprintf(p, len, ", callback: %s, delivery: %s, message id: %V",
                     d->url, d->delivery, &d->id);

    return p;
}


void
ngx_http_openclaw_callback_set_stats(ngx_http_openclaw_callback_stats_t *stats)
{
    ngx_http_openclaw_callback_worker.stats = stats;
}


void
ngx_http_openclaw_callback_exit_process(ngx_cycle_t *cycle)
{
    ngx_queue_t                          *q;
    ngx_http_openclaw_delivery_t         *d;
    ngx_http_openclaw_callback_worker_t  *w;

    w = &ngx_http_openclaw_callback_worker;

    if (!w->ready) {
        return;
    }

    while (!ngx_queue_empty(&w->sending)) {
        q = ngx_queue_head(&w->sending);
        d = ngx_queue_data(q, ngx_http_openclaw_delivery_t, link);

        ngx_log_error(NGX_LOG_ERR, &d->log, 0,
                      "callback not delivered: the worker is exiting, "
                      "after %ui attempt%s", d->attempt,
                      d->attempt == 1 ? "" : "s");
        w->stats->failed++;
        ngx_http_openclaw_callback_free(d);
    }

    /* runs still in flight (a fast shutdown): nobody will answer them */

    while (!ngx_queue_empty(&w->waiting)) {
        q = ngx_queue_head(&w->waiting);
        d = ngx_queue_data(q, ngx_http_openclaw_delivery_t, link);

        ngx_log_error(NGX_LOG_ERR, &d->log, 0,
                      "callback not delivered: the worker is exiting "
                      "before the reply");
        w->stats->failed++;
        ngx_http_openclaw_callback_free(d);
    }

    if (w->timer.timer_set) {
        ngx_del_timer(&w->timer);
    }

    if (w->hold.timer_set) {
        ngx_del_timer(&w->hold);
    }

    curl_multi_cleanup(w->multi);
    curl_global_cleanup();

    w->ready = 0;
}
