
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * Hub links as endpoints of the relay.  The configuration resolves each
 * "openclaw_bridge_hub" of a location with the location's final settings
 * (they cannot depend on a request: there is none); in each worker a link
 * object waits for its slot in the hub zone, dials while it holds it,
 * hands what arrives to the relay and sends the relay's replies, kept
 * in a bounded queue while the link is down.  At shutdown a link that
 * still owes replies stays open (and keeps the gateway link) until they
 * are sent, while the new owner's link takes the new messages.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_openclaw_hub.h"
#include "ngx_http_openclaw_hub_zone.h"
#include "ngx_http_openclaw_wsclient.h"
#include "ngx_http_openclaw_endpoint.h"
#include "ngx_http_openclaw_relay.h"


#define NGX_HTTP_OPENCLAW_HUB_TICK      200

/*
 * How long a draining worker holds a frame it read after the new holder's
 * link came up: the new link has its copy by then, if the hub sent it one.
 */
#define NGX_HTTP_OPENCLAW_HUB_DEFER     300
#define NGX_HTTP_OPENCLAW_HUB_VERSION   NGX_HTTP_OPENCLAW_VERSION


typedef struct {
    ngx_queue_t                     queue;
    ngx_str_t                       ends;       /* the id of the message
                                                   it ends, if it does */
    unsigned                        end:1;
    size_t                          len;
    u_char                          data[1];
} ngx_http_openclaw_hub_reply_t;


/* a frame a draining worker holds before it decides whose it is */

typedef struct {
    ngx_queue_t                     queue;
    ngx_msec_t                      at;
    ngx_uint_t                      opcode;
    size_t                          len;
    u_char                          data[1];
} ngx_http_openclaw_hub_frame_t;


/* what became of the last reply sent, for its end record */

typedef enum {
    NGX_HTTP_OPENCLAW_HUB_SENT = 0,
    NGX_HTTP_OPENCLAW_HUB_QUEUED,
    NGX_HTTP_OPENCLAW_HUB_DROPPED,
    NGX_HTTP_OPENCLAW_HUB_LEFT          /* to the next holder */
} ngx_http_openclaw_hub_fate_e;


typedef struct {
    ngx_http_openclaw_hub_conf_t   *conf;
    ngx_http_openclaw_hub_hold_t    hold;
    ngx_http_openclaw_wsclient_t    ws;
    ngx_http_openclaw_endpoint_t    ep;

    ngx_event_t                     tick;       /* claims, heartbeats */
    ngx_event_t                     drain;      /* keeps an exiting worker */
    ngx_msec_t                      drain_start;

    ngx_queue_t                     replies;    /* kept while down */
    ngx_queue_t                     held;       /* frames, while draining */
    ngx_uint_t                      nreplies;
    size_t                          queued;     /* the replies' bytes */
    ngx_http_openclaw_hub_fate_e    fate;
    ngx_uint_t                      ticks;

    u_char                          error[NGX_HTTP_OPENCLAW_HUB_ERRLEN];

    unsigned                        holder:1;
    unsigned                        draining:1;
    unsigned                        closing:1;  /* holds no more frames */
} ngx_http_openclaw_hub_t;


static ngx_int_t ngx_http_openclaw_hub_resolve(ngx_conf_t *cf,
    ngx_http_openclaw_loc_conf_t *conf, ngx_http_openclaw_hub_conf_t *hc);
static ngx_int_t ngx_http_openclaw_hub_literal(ngx_conf_t *cf,
    ngx_http_openclaw_hub_conf_t *hc, ngx_http_complex_value_t *cv,
    const char *directive, ngx_str_t *value);
#if (NGX_HTTP_SSL)
static ngx_int_t ngx_http_openclaw_hub_ssl(ngx_conf_t *cf,
    ngx_http_openclaw_loc_conf_t *conf);
#endif
static ngx_int_t ngx_http_openclaw_hub_headers(ngx_pool_t *pool,
    ngx_http_openclaw_hub_conf_t *hc, ngx_str_t *headers);
static ngx_int_t ngx_http_openclaw_hub_endpoint(ngx_http_openclaw_hub_t *hub);
static void ngx_http_openclaw_hub_tick(ngx_event_t *ev);
static void ngx_http_openclaw_hub_shutdown(ngx_http_openclaw_hub_t *hub,
    ngx_uint_t halt);
static void ngx_http_openclaw_hub_drain(ngx_event_t *ev);
static void ngx_http_openclaw_hub_publish(ngx_http_openclaw_hub_t *hub);
static ngx_int_t ngx_http_openclaw_hub_open(ngx_http_openclaw_wsclient_t *ws);
static ngx_int_t ngx_http_openclaw_hub_message(
    ngx_http_openclaw_wsclient_t *ws, ngx_uint_t opcode, u_char *data,
    size_t len);
static ngx_int_t ngx_http_openclaw_hub_oversized(
    ngx_http_openclaw_wsclient_t *ws, ngx_uint_t opcode, size_t size);
static void ngx_http_openclaw_hub_closed(ngx_http_openclaw_wsclient_t *ws,
    ngx_uint_t failed);
static void ngx_http_openclaw_hub_progress(ngx_http_openclaw_wsclient_t *ws);
static ngx_uint_t ngx_http_openclaw_hub_keep(ngx_http_openclaw_wsclient_t *ws);
static ngx_int_t ngx_http_openclaw_hub_send(ngx_http_openclaw_endpoint_t *ep,
    u_char *data, size_t len);
static void ngx_http_openclaw_hub_track(ngx_http_openclaw_endpoint_t *ep,
    ngx_uint_t end, ngx_str_t *id);
static void ngx_http_openclaw_hub_orphans(ngx_http_openclaw_hub_t *hub);
static void ngx_http_openclaw_hub_free(ngx_http_openclaw_hub_reply_t *rp);
static void ngx_http_openclaw_hub_hold_frame(ngx_http_openclaw_hub_t *hub,
    ngx_uint_t opcode, u_char *data, size_t len);
static void ngx_http_openclaw_hub_release_frames(ngx_http_openclaw_hub_t *hub,
    ngx_uint_t all);
static void ngx_http_openclaw_hub_handle(ngx_http_openclaw_hub_t *hub,
    ngx_uint_t opcode, u_char *data, size_t len);
static ngx_uint_t ngx_http_openclaw_hub_owes(ngx_http_openclaw_hub_t *hub);
static void ngx_http_openclaw_hub_drop(ngx_http_openclaw_hub_t *hub,
    size_t len, const char *why);


static ngx_array_t  *ngx_http_openclaw_hubs;    /* this worker's links */

/* for a link that claims its slot late (see init_process) */
static ngx_atomic_uint_t  *ngx_http_openclaw_hub_keys;
static ngx_uint_t          ngx_http_openclaw_hub_nkeys;
static ngx_shm_zone_t     *ngx_http_openclaw_hub_shm;

const char  *ngx_http_openclaw_hub_states[] = {
    "down", "connecting", "ready", "draining", NULL
};


/* openclaw_bridge_hub ws://host[:port]/path; */

char *
ngx_http_openclaw_hub(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_openclaw_loc_conf_t *olcf = conf;

    ngx_str_t                      *value;
    ngx_http_openclaw_hub_conf_t   *hc;
    ngx_http_openclaw_main_conf_t  *omcf;

    value = cf->args->elts;

    if (!((value[1].len > 5
           && ngx_strncasecmp(value[1].data, (u_char *) "ws://", 5) == 0)
          || (value[1].len > 6
              && ngx_strncasecmp(value[1].data, (u_char *) "wss://", 6)
                 == 0)))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid hub URL \"%V\" in \"%V\": it must start "
                           "with ws:// or wss://", &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    if (olcf->hubs == NULL) {
        olcf->hubs = ngx_array_create(cf->pool, 2,
                                      sizeof(ngx_http_openclaw_hub_conf_t));
        if (olcf->hubs == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    hc = ngx_array_push(olcf->hubs);
    if (hc == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(hc, sizeof(ngx_http_openclaw_hub_conf_t));

    hc->url = value[1];
    hc->file = cf->conf_file->file.name.data;
    hc->line = cf->conf_file->line;

    /* hub links relay to the gateway as the inbound clients do */

    omcf = ngx_http_conf_get_module_main_conf(cf,
                                            ngx_http_openclaw_bridge_module);
    omcf->used = 1;

    return NGX_CONF_OK;
}


/* openclaw_bridge_hub_header Name value; for hubs that authenticate */

char *
ngx_http_openclaw_hub_header(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_openclaw_loc_conf_t *olcf = conf;

    u_char        *p;
    ngx_str_t     *value;
    ngx_keyval_t  *kv;

    value = cf->args->elts;

    for (p = value[1].data; p < value[1].data + value[1].len; p++) {
        if (*p <= ' ' || *p == ':' || *p >= 0x7f) {
            goto invalid;
        }
    }

    for (p = value[2].data; p < value[2].data + value[2].len; p++) {
        if (*p == CR || *p == LF || *p == '\0') {
            goto invalid;
        }
    }

    if (value[1].len == 0) {
        goto invalid;
    }

    if (olcf->hub_headers == NULL || olcf->hub_headers == NGX_CONF_UNSET_PTR)
    {
        olcf->hub_headers = ngx_array_create(cf->pool, 2,
                                             sizeof(ngx_keyval_t));
        if (olcf->hub_headers == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    kv = ngx_array_push(olcf->hub_headers);
    if (kv == NULL) {
        return NGX_CONF_ERROR;
    }

    kv->key = value[1];
    kv->value = value[2];

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid header \"%V: %V\" in \"%V\"", &value[1],
                       &value[2], &cmd->name);
    return NGX_CONF_ERROR;
}


char *
ngx_http_openclaw_hub_merge(ngx_conf_t *cf, ngx_http_openclaw_loc_conf_t *prev,
    ngx_http_openclaw_loc_conf_t *conf)
{
    ngx_uint_t                       i, j;
    ngx_http_core_loc_conf_t        *clcf;
    ngx_http_openclaw_hub_conf_t    *hc, **hp, **all;
    ngx_http_openclaw_main_conf_t   *omcf;

    ngx_conf_merge_ptr_value(conf->hub_headers, prev->hub_headers, NULL);
    ngx_conf_merge_size_value(conf->hub_queue, prev->hub_queue,
                              1024 * 1024);
    ngx_conf_merge_value(conf->hub_ssl_verify, prev->hub_ssl_verify, 1);
    ngx_conf_merge_str_value(conf->hub_ssl_trusted_certificate,
                             prev->hub_ssl_trusted_certificate, "");

    if (conf->hubs == NULL) {
        return NGX_CONF_OK;
    }

    omcf = ngx_http_conf_get_module_main_conf(cf,
                                            ngx_http_openclaw_bridge_module);
    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (omcf->hubs == NULL) {
        omcf->hubs = ngx_array_create(cf->pool, 4,
                                      sizeof(ngx_http_openclaw_hub_conf_t *));
        if (omcf->hubs == NULL) {
            return NGX_CONF_ERROR;
        }

        omcf->hub_zone = ngx_http_openclaw_hub_zone_add(cf);
        if (omcf->hub_zone == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    hc = conf->hubs->elts;

    for (i = 0; i < conf->hubs->nelts; i++) {

        hc[i].conf = conf;
        hc[i].location = clcf->name;

        if (ngx_http_openclaw_hub_resolve(cf, conf, &hc[i]) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        all = omcf->hubs->elts;

        for (j = 0; j < omcf->hubs->nelts; j++) {
            if (all[j]->dial.len == hc[i].dial.len
                && ngx_strncmp(all[j]->dial.data, hc[i].dial.data,
                               hc[i].dial.len) == 0)
            {
                ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                              "hub link \"%V\" is configured twice, in "
                              "%s:%ui and %s:%ui: a hub would answer "
                              "each message once per link", &hc[i].dial,
                              all[j]->file, all[j]->line, hc[i].file,
                              hc[i].line);
                return NGX_CONF_ERROR;
            }
        }

        if (omcf->hubs->nelts >= NGX_HTTP_OPENCLAW_HUB_SLOTS) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "too many hub links, at most %d, in %s:%ui",
                          NGX_HTTP_OPENCLAW_HUB_SLOTS, hc[i].file,
                          hc[i].line);
            return NGX_CONF_ERROR;
        }

        hp = ngx_array_push(omcf->hubs);
        if (hp == NULL) {
            return NGX_CONF_ERROR;
        }

        *hp = &hc[i];
    }

#if (NGX_HTTP_SSL)
    for (i = 0; i < conf->hubs->nelts; i++) {
        if (hc[i].tls) {
            if (ngx_http_openclaw_hub_ssl(cf, conf) != NGX_OK) {
                return NGX_CONF_ERROR;
            }

            break;
        }
    }
#endif

    return NGX_CONF_OK;
}


/*
 * The URL as dialled: the uid appended as the Go bridge does, "?uid=" or
 * "&uid=", unless the URL names it already (the "/ws/<uid>" form or a
 * uid argument of its own).
 */

static ngx_int_t
ngx_http_openclaw_hub_resolve(ngx_conf_t *cf,
    ngx_http_openclaw_loc_conf_t *conf, ngx_http_openclaw_hub_conf_t *hc)
{
    u_char        *p, *q, *last;
    size_t         skip, len;
    in_port_t      port;
    ngx_str_t      tail, none, *bad;
    ngx_uint_t     i, named;
    const char    *name;
    ngx_keyval_t  *kv;

    if (ngx_http_openclaw_hub_literal(cf, hc, conf->agent,
                                      "openclaw_bridge_agent_id", &hc->agent)
        != NGX_OK
        || ngx_http_openclaw_hub_literal(cf, hc, conf->uid,
                                         "openclaw_bridge_uid", &hc->uid)
           != NGX_OK
        || ngx_http_openclaw_hub_literal(cf, hc, conf->sender,
                                         "openclaw_bridge_sender",
                                         &hc->sender)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    /* each on its own, so that the error names the directive */

    none.len = 0;
    none.data = NULL;

    if (ngx_http_openclaw_relay_check(&hc->agent, &none, &none) != NGX_OK) {
        bad = &hc->agent;
        name = "openclaw_bridge_agent_id";

    } else if (ngx_http_openclaw_relay_check(&none, &hc->uid, &none)
               != NGX_OK)
    {
        bad = &hc->uid;
        name = "openclaw_bridge_uid";

    } else if (ngx_http_openclaw_relay_check(&none, &none, &hc->sender)
               != NGX_OK)
    {
        bad = &hc->sender;
        name = "openclaw_bridge_sender";

    } else {
        bad = NULL;
        name = NULL;
    }

    if (bad) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "invalid \"%s\" value \"%V\" for the hub \"%V\" "
                      "in %s:%ui: letters, digits, \"-\", \"_\" and \".\" "
                      "only", name, bad, &hc->url, hc->file, hc->line);
        return NGX_ERROR;
    }

    /* the uid, unless the URL names it already */

    named = 0;
    last = hc->url.data + hc->url.len;
    q = ngx_strlchr(hc->url.data, last, '?');

    if (hc->uid.len) {
        tail.data = (q ? q : last) - hc->uid.len;
        tail.len = hc->uid.len;

        if (tail.data > hc->url.data && tail.data[-1] == '/'
            && ngx_strncmp(tail.data, hc->uid.data, hc->uid.len) == 0)
        {
            named = 1;
        }

        if (q && (ngx_strstrn(q, "?uid=", 5 - 1) != NULL
                  || ngx_strstrn(q, "&uid=", 5 - 1) != NULL))
        {
            named = 1;
        }
    }

    if (hc->uid.len && !named) {
        len = hc->url.len + sizeof("?uid=") - 1
              + hc->uid.len + 2 * ngx_escape_uri(NULL, hc->uid.data,
                                                 hc->uid.len,
                                                 NGX_ESCAPE_ARGS);

        p = ngx_pnalloc(cf->pool, len);
        if (p == NULL) {
            return NGX_ERROR;
        }

        hc->dial.data = p;
        p = ngx_cpymem(p, hc->url.data, hc->url.len);
        p = ngx_cpymem(p, q ? "&uid=" : "?uid=", 5);
        p = (u_char *) ngx_escape_uri(p, hc->uid.data, hc->uid.len,
                                      NGX_ESCAPE_ARGS);
        hc->dial.len = p - hc->dial.data;

    } else {
        hc->dial = hc->url;
    }

    if (hc->dial.data[2] == ':' || hc->dial.data[2] == '/') {
        skip = 5;       /* ws:// */
        port = 80;

    } else {
#if (NGX_HTTP_SSL)
        skip = 6;
        port = 443;
        hc->tls = 1;
#else
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "wss:// in \"openclaw_bridge_hub\" needs nginx built "
                      "with the SSL module, in %s:%ui", hc->file, hc->line);
        return NGX_ERROR;
#endif
    }

    hc->u.url.data = hc->dial.data + skip;
    hc->u.url.len = hc->dial.len - skip;
    hc->u.default_port = port;
    hc->u.uri_part = 1;

    if (ngx_parse_url(cf->pool, &hc->u) != NGX_OK || hc->u.naddrs == 0) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "%s in hub URL \"%V\" of \"openclaw_bridge_hub\" "
                      "in %s:%ui",
                      hc->u.err ? hc->u.err : "no address", &hc->url,
                      hc->file, hc->line);
        return NGX_ERROR;
    }

    hc->uri = hc->u.uri;

    if (hc->uri.len == 0) {
        ngx_str_set(&hc->uri, "/");

    } else if (hc->uri.data[0] == '?') {

        /* ws://host?uid=x: a request line needs its path */

        p = ngx_pnalloc(cf->pool, hc->uri.len + 1);
        if (p == NULL) {
            return NGX_ERROR;
        }

        *p = '/';
        ngx_memcpy(p + 1, hc->uri.data, hc->uri.len);
        hc->uri.data = p;
        hc->uri.len++;
    }

    if (hc->u.no_port || hc->u.port == port) {
        hc->host = hc->u.host;

    } else {
        hc->host.data = ngx_pnalloc(cf->pool, hc->u.host.len + 7);
        if (hc->host.data == NULL) {
            return NGX_ERROR;
        }

        hc->host.len = ngx_sprintf(hc->host.data, "%V:%d", &hc->u.host,
                                   (int) hc->u.port)
                       - hc->host.data;
    }

    if (ngx_http_openclaw_wsclient_ssl_name(cf->pool, &hc->u.host,
                                            &hc->ssl_name, &hc->ssl_ip)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    hc->key = ngx_http_openclaw_hub_zone_key(&hc->location, &hc->dial);

    /* the extra headers, each with its CRLF, after our own */

    if (conf->hub_headers) {
        kv = conf->hub_headers->elts;

        for (i = 0; i < conf->hub_headers->nelts; i++) {
            if ((kv[i].key.len == 4
                 && ngx_strncasecmp(kv[i].key.data, (u_char *) "Host", 4)
                    == 0)
                || (kv[i].key.len == 7
                    && ngx_strncasecmp(kv[i].key.data, (u_char *) "Upgrade",
                                       7) == 0)
                || (kv[i].key.len == 10
                    && ngx_strncasecmp(kv[i].key.data,
                                       (u_char *) "Connection", 10) == 0)
                || (kv[i].key.len > 14
                    && ngx_strncasecmp(kv[i].key.data,
                                       (u_char *) "Sec-WebSocket-", 14)
                       == 0))
            {
                ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                              "\"openclaw_bridge_hub_header %V\" would "
                              "replace a header of the WebSocket upgrade, "
                              "for the hub in %s:%ui", &kv[i].key, hc->file,
                              hc->line);
                return NGX_ERROR;
            }
        }
    }

    return NGX_OK;
}


/* values with variables need a request, and a hub link has none */

static ngx_int_t
ngx_http_openclaw_hub_literal(ngx_conf_t *cf, ngx_http_openclaw_hub_conf_t *hc,
    ngx_http_complex_value_t *cv, const char *directive, ngx_str_t *value)
{
    if (cv == NULL) {
        ngx_str_null(value);
        return NGX_OK;
    }

    if (cv->lengths) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"%s\" with variables cannot be used in a location "
                      "with \"openclaw_bridge_hub\" (%s:%ui): a hub link "
                      "has no request to take them from", directive,
                      hc->file, hc->line);
        return NGX_ERROR;
    }

    *value = cv->value;

    return NGX_OK;
}


#if (NGX_HTTP_SSL)

static ngx_int_t
ngx_http_openclaw_hub_ssl(ngx_conf_t *cf, ngx_http_openclaw_loc_conf_t *conf)
{
    conf->hub_ssl = ngx_http_openclaw_wsclient_ssl(cf, conf->hub_ssl_verify,
                                           &conf->hub_ssl_trusted_certificate);

    return conf->hub_ssl ? NGX_OK : NGX_ERROR;
}

#endif


ngx_int_t
ngx_http_openclaw_hub_init_process(ngx_cycle_t *cycle,
    ngx_http_openclaw_main_conf_t *omcf)
{
    ngx_uint_t                      i;
    ngx_atomic_uint_t              *keys;
    ngx_http_openclaw_hub_t        *hub;
    ngx_http_openclaw_hub_conf_t  **hc;
    ngx_http_openclaw_wsclient_t   *ws;

    if (omcf->hubs == NULL) {
        return NGX_OK;
    }

    ngx_http_openclaw_hubs = ngx_array_create(cycle->pool, omcf->hubs->nelts,
                                              sizeof(ngx_http_openclaw_hub_t));
    if (ngx_http_openclaw_hubs == NULL) {
        return NGX_ERROR;
    }

    hc = omcf->hubs->elts;

    keys = ngx_palloc(cycle->pool, omcf->hubs->nelts * sizeof(*keys));
    if (keys == NULL) {
        return NGX_ERROR;
    }

    ngx_http_openclaw_hub_keys = keys;
    ngx_http_openclaw_hub_nkeys = omcf->hubs->nelts;
    ngx_http_openclaw_hub_shm = omcf->hub_zone;

    for (i = 0; i < omcf->hubs->nelts; i++) {
        keys[i] = hc[i]->key;
    }

    for (i = 0; i < omcf->hubs->nelts; i++) {

        hub = ngx_array_push(ngx_http_openclaw_hubs);
        if (hub == NULL) {
            return NGX_ERROR;
        }

        ngx_memzero(hub, sizeof(ngx_http_openclaw_hub_t));

        hub->conf = hc[i];
        ngx_queue_init(&hub->replies);
        ngx_queue_init(&hub->held);

        /*
         * The old generation's links may still hold the slots this one
         * needs (a reload to other links): the link waits for one, on its
         * tick, rather than the worker failing to start.
         */

        if (ngx_http_openclaw_hub_zone_slot(omcf->hub_zone, hc[i]->key, keys,
                                            omcf->hubs->nelts, &hub->hold)
            != NGX_OK)
        {
            hub->hold.slot = NULL;

            ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                          "no free slot for the hub link \"%V\" in the hub "
                          "zone yet, waiting for the old links to go",
                          &hc[i]->dial);
        }

        ws = &hub->ws;

        ws->url = &hc[i]->u;
        ws->host = hc[i]->host;
        ws->uri = hc[i]->uri;

#if (NGX_HTTP_SSL)
        ws->ssl = hc[i]->tls ? hc[i]->conf->hub_ssl : NULL;
#endif
        ws->ssl_name = hc[i]->ssl_name;
        ws->ssl_verify = hc[i]->conf->hub_ssl_verify;
        ws->ssl_server_name = 1;
        ws->ssl_ip = hc[i]->ssl_ip;

        ws->connect_timeout = omcf->connect_timeout;
        ws->timeout = omcf->request_timeout;
        ws->max_message = hc[i]->conf->max_message_size;
        ws->ping_interval = hc[i]->conf->ping_interval;
        ws->pong_timeout = hc[i]->conf->pong_timeout;

        ws->name = "hub";
        ws->title = "WebSocket hub";
        ws->log_name = hc[i]->dial;

        ws->error = hub->error;
        ws->error_size = sizeof(hub->error);

        ws->open = ngx_http_openclaw_hub_open;
        ws->message = ngx_http_openclaw_hub_message;
        ws->oversized = ngx_http_openclaw_hub_oversized;
        ws->closed = ngx_http_openclaw_hub_closed;
        ws->progress = ngx_http_openclaw_hub_progress;
        ws->keep = ngx_http_openclaw_hub_keep;
        ws->data = hub;

        if (ngx_http_openclaw_hub_headers(cycle->pool, hc[i], &ws->headers)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        if (ngx_http_openclaw_wsclient_init(ws, cycle) != NGX_OK) {
            return NGX_ERROR;
        }

        hub->tick.handler = ngx_http_openclaw_hub_tick;
        hub->tick.data = hub;
        hub->tick.log = &ws->log;
        hub->tick.cancelable = 1;

        /* not cancelable: it keeps an exiting worker until delivered */

        hub->drain.handler = ngx_http_openclaw_hub_drain;
        hub->drain.data = hub;
        hub->drain.log = &ws->log;

        ngx_add_timer(&hub->tick, ngx_random() % 50);
    }

    return NGX_OK;
}


/*
 * No Origin: a hub is no browser's page.  The Go bridge sent nothing
 * else either; hubs that authenticate get their headers.
 */

static ngx_int_t
ngx_http_openclaw_hub_headers(ngx_pool_t *pool,
    ngx_http_openclaw_hub_conf_t *hc, ngx_str_t *headers)
{
    u_char        *p;
    size_t         len;
    ngx_uint_t     i;
    ngx_keyval_t  *kv;
    ngx_array_t   *extra;

    extra = hc->conf->hub_headers;

    len = sizeof("User-Agent: nginx-openclaw-bridge/"
                 NGX_HTTP_OPENCLAW_HUB_VERSION CRLF) - 1;

    kv = extra ? extra->elts : NULL;

    for (i = 0; extra && i < extra->nelts; i++) {
        len += kv[i].key.len + sizeof(": " CRLF) - 1 + kv[i].value.len;
    }

    p = ngx_pnalloc(pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    headers->data = p;

    p = ngx_cpymem(p, "User-Agent: nginx-openclaw-bridge/"
                      NGX_HTTP_OPENCLAW_HUB_VERSION CRLF,
                   sizeof("User-Agent: nginx-openclaw-bridge/"
                          NGX_HTTP_OPENCLAW_HUB_VERSION CRLF) - 1);

    for (i = 0; extra && i < extra->nelts; i++) {
        p = ngx_sprintf(p, "%V: %V" CRLF, &kv[i].key, &kv[i].value);
    }

    headers->len = p - headers->data;

    return NGX_OK;
}


void
ngx_http_openclaw_hub_exit_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                      i, n;
    ngx_queue_t                    *q;
    ngx_http_openclaw_hub_t        *hub;
    ngx_http_openclaw_hub_reply_t  *rp;

    if (ngx_http_openclaw_hubs == NULL) {
        return;
    }

    hub = ngx_http_openclaw_hubs->elts;

    for (i = 0; i < ngx_http_openclaw_hubs->nelts; i++) {

        if (hub[i].holder || hub[i].draining) {
            ngx_http_openclaw_hub_zone_drained(&hub[i].hold);
            ngx_http_openclaw_hub_zone_release(&hub[i].hold, 0);
        }

        ngx_http_openclaw_wsclient_stop(&hub[i].ws);

        /* the link is closed: held frames are freed, not handled */
        ngx_http_openclaw_hub_release_frames(&hub[i], 1);

        if (hub[i].tick.timer_set) {
            ngx_del_timer(&hub[i].tick);
        }

        if (hub[i].drain.timer_set) {
            ngx_del_timer(&hub[i].drain);
        }

        n = 0;

        while (!ngx_queue_empty(&hub[i].replies)) {
            q = ngx_queue_head(&hub[i].replies);
            ngx_queue_remove(q);
            rp = ngx_queue_data(q, ngx_http_openclaw_hub_reply_t, queue);
            ngx_http_openclaw_hub_free(rp);
            n++;
        }

        if (n) {
            ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                          "hub link \"%V\": %ui replies kept for it were "
                          "never delivered: the link was down when the "
                          "worker exited", &hub[i].conf->dial, n);
        }
    }

    ngx_http_openclaw_hubs = NULL;
}


/*
 * The endpoint: the location's identity, fixed for the link, made by the
 * worker that first holds it, so that a worker counts only the links it
 * serves among its clients.
 */

static ngx_int_t
ngx_http_openclaw_hub_endpoint(ngx_http_openclaw_hub_t *hub)
{
    ngx_str_t                      agent;
    ngx_http_openclaw_hub_conf_t  *hc;

    hc = hub->conf;

    hub->ep.conf = hc->conf;
    hub->ep.send = ngx_http_openclaw_hub_send;
    hub->ep.track = ngx_http_openclaw_hub_track;
    hub->ep.data = hub;
    hub->ep.log = &hub->ws.log;

    agent = hc->agent;

    if (ngx_http_openclaw_relay_endpoint(&hub->ep, ngx_cycle->pool, &agent,
                                         &hc->uid, &hc->sender)
        != NGX_OK)
    {
        hub->ep.conf = NULL;
        return NGX_ERROR;
    }

    /*
     * One link carries all end users of the uid, and the hub does not say
     * which one sent a message: without a sender identity the link's own
     * part is "hub", and a message with neither session nor peer gets a
     * session of its own, as the Go bridge gave it, rather than one
     * conversation shared by every user of the hub.
     */

    if (hc->sender.len == 0) {
        ngx_str_set(&hub->ep.scope.fallback, "hub");
        hub->ep.sender = hub->ep.scope.fallback;
    }

    hub->ep.scope.fallback_per_message = 1;
    hub->ep.push_uid = (hc->uid.len != 0);

    return NGX_OK;
}


static void
ngx_http_openclaw_hub_tick(ngx_event_t *ev)
{
    ngx_http_openclaw_hub_t  *hub;

    hub = ev->data;

    if (ngx_exiting || ngx_quit || ngx_terminate) {
        ngx_http_openclaw_hub_shutdown(hub, 1);
        return;
    }

    if (hub->hold.slot == NULL) {

        /* still no slot (see init_process) */

        if (ngx_http_openclaw_hub_zone_slot(ngx_http_openclaw_hub_shm,
                                            hub->conf->key,
                                            ngx_http_openclaw_hub_keys,
                                            ngx_http_openclaw_hub_nkeys,
                                            &hub->hold)
            != NGX_OK)
        {
            hub->hold.slot = NULL;
            ngx_add_timer(&hub->tick, NGX_HTTP_OPENCLAW_HUB_TICK);
            return;
        }

        ngx_log_error(NGX_LOG_NOTICE, &hub->ws.log, 0,
                      "the hub link has a slot in the hub zone");
    }

    if (ngx_http_openclaw_hub_zone_claim(&hub->hold) == NGX_OK) {

        if (!hub->holder) {

            if (hub->ep.conf == NULL
                && ngx_http_openclaw_hub_endpoint(hub) != NGX_OK)
            {
                ngx_http_openclaw_hub_zone_release(&hub->hold, 0);
                ngx_add_timer(&hub->tick, NGX_HTTP_OPENCLAW_HUB_TICK);
                return;
            }

            hub->holder = 1;
            hub->ep.push = 1;

            ngx_log_error(NGX_LOG_NOTICE, &hub->ws.log, 0,
                          "this worker holds the hub link");

            hub->ws.backoff = NGX_HTTP_OPENCLAW_WSCLIENT_BACKOFF_MIN;
            ngx_http_openclaw_wsclient_start(&hub->ws);
        }

        ngx_http_openclaw_hub_publish(hub);

        /* a second after another holder died, its messages get ends */

        if (++hub->ticks % 5 == 0
            && hub->ws.state == NGX_HTTP_OPENCLAW_WSCLIENT_READY)
        {
            ngx_http_openclaw_hub_orphans(hub);
        }

    } else if (hub->holder) {

        /* taken over while this worker did not answer: the other has it */

        hub->holder = 0;
        hub->ep.push = 0;

        ngx_log_error(NGX_LOG_WARN, &hub->ws.log, 0,
                      "another worker took the hub link over, closing "
                      "this one");

        ngx_http_openclaw_wsclient_halt(&hub->ws);
    }

    ngx_add_timer(&hub->tick, NGX_HTTP_OPENCLAW_HUB_TICK);
}


/*
 * The worker exits (reload, quit): the link is released at once, so that
 * a worker of the new generation dials; while this one still owes
 * replies, its link stays open for them, but new messages are left to
 * the new holder.
 */

static void
ngx_http_openclaw_hub_shutdown(ngx_http_openclaw_hub_t *hub, ngx_uint_t halt)
{
    if (!hub->holder) {
        return;
    }

    hub->holder = 0;
    hub->ep.push = 0;

    if (ngx_http_openclaw_hub_owes(hub)
        && hub->ws.state == NGX_HTTP_OPENCLAW_WSCLIENT_READY)
    {
        hub->draining = 1;
        hub->drain_start = ngx_current_msec;

        ngx_http_openclaw_hub_zone_release(&hub->hold, 1);

        ngx_log_error(NGX_LOG_NOTICE, &hub->ws.log, 0,
                      "the worker exits: the hub link stays open for the "
                      "replies of %ui runs in flight, new messages go to "
                      "the next holder", hub->ep.nruns);

        ngx_add_timer(&hub->drain, NGX_HTTP_OPENCLAW_HUB_TICK / 2);
        return;
    }

    ngx_http_openclaw_hub_zone_release(&hub->hold, 0);

    if (halt) {
        ngx_http_openclaw_wsclient_halt(&hub->ws);
    }
}


static void
ngx_http_openclaw_hub_drain(ngx_event_t *ev)
{
    ngx_http_openclaw_hub_t  *hub;

    hub = ev->data;

    ngx_http_openclaw_hub_release_frames(hub, 0);

    if (hub->ws.state == NGX_HTTP_OPENCLAW_WSCLIENT_READY
        && (ngx_http_openclaw_hub_owes(hub)
            || hub->ws.out_pos != hub->ws.out_last
            || !ngx_queue_empty(&hub->held)))
    {
        /*
         * Nothing owed but frames held: with the hub's users still
         * talking there would always be some, so none is held any more,
         * and the link closes once those are decided.
         */

        if (!ngx_http_openclaw_hub_owes(hub)
            && hub->ws.out_pos == hub->ws.out_last)
        {
            hub->closing = 1;
        }

        ngx_add_timer(&hub->drain, NGX_HTTP_OPENCLAW_HUB_TICK / 2);
        return;
    }

    ngx_log_error(NGX_LOG_NOTICE, &hub->ws.log, 0,
                  "hub link closed after %M ms for its last replies",
                  ngx_current_msec - hub->drain_start);

    hub->draining = 0;
    ngx_http_openclaw_wsclient_halt(&hub->ws);
    ngx_http_openclaw_hub_zone_drained(&hub->hold);
}


static void
ngx_http_openclaw_hub_publish(ngx_http_openclaw_hub_t *hub)
{
    size_t                          len;
    ngx_uint_t                      state;
    ngx_http_openclaw_hub_slot_t   *slot;

    slot = hub->hold.slot;

    if ((ngx_pid_t) slot->owner != ngx_pid) {
        return;
    }

    switch (hub->ws.state) {

    case NGX_HTTP_OPENCLAW_WSCLIENT_READY:
        state = NGX_HTTP_OPENCLAW_HUB_READY;
        break;

    case NGX_HTTP_OPENCLAW_WSCLIENT_DOWN:
        state = NGX_HTTP_OPENCLAW_HUB_DOWN;
        break;

    default:
        state = NGX_HTTP_OPENCLAW_HUB_CONNECTING;
        break;
    }

    if (slot->state != state) {
        slot->state = state;
        slot->since = ngx_time();
    }

    slot->reconnects = hub->ws.reconnects;
    slot->queued = hub->nreplies;

    len = ngx_strnlen(hub->error, sizeof(hub->error) - 1);

    if (state == NGX_HTTP_OPENCLAW_HUB_READY) {
        len = 0;
    }

    ngx_memcpy(slot->last_error, hub->error, len);
    slot->last_error[len] = '\0';
}


static ngx_int_t
ngx_http_openclaw_hub_open(ngx_http_openclaw_wsclient_t *ws)
{
    ngx_queue_t                    *q;
    ngx_http_openclaw_hub_t        *hub;
    ngx_http_openclaw_hub_reply_t  *rp;

    hub = ws->data;

    ngx_http_openclaw_wsclient_ready(ws, hub->conf->conf->max_message_size);

    hub->hold.slot->up = ngx_pid;

    ws->log.action = "relaying for the WebSocket hub";

    ngx_log_error(NGX_LOG_NOTICE, &ws->log, 0, "hub link is up");

    /* what was kept while it was down, in order */

    while (!ngx_queue_empty(&hub->replies)) {
        q = ngx_queue_head(&hub->replies);
        rp = ngx_queue_data(q, ngx_http_openclaw_hub_reply_t, queue);

        if (ngx_http_openclaw_wsclient_send(ws, NGX_HTTP_OPENCLAW_WS_TEXT,
                                            rp->data, rp->len, NULL, 0,
                                            NULL, 0)
            != NGX_OK)
        {
            break;
        }

        ngx_queue_remove(q);
        hub->nreplies--;
        hub->queued -= rp->len;

        if (rp->end) {
            ngx_http_openclaw_hub_zone_end(&hub->hold, &rp->ends);
        }

        ngx_http_openclaw_hub_free(rp);
    }

    ngx_http_openclaw_hub_publish(hub);

    return NGX_OK;
}


static ngx_int_t
ngx_http_openclaw_hub_message(ngx_http_openclaw_wsclient_t *ws,
    ngx_uint_t opcode, u_char *data, size_t len)
{
    ngx_pid_t                 up;
    ngx_http_openclaw_hub_t  *hub;

    hub = ws->data;

    if (hub->draining) {

        /*
         * The new holder's link is up: the frame is most likely its copy's
         * twin, and the new holder's to handle.  But the hub may have sent
         * it to this link alone, before the new one existed, and this
         * worker read it late: it is held a moment, and handled here only
         * if the new link took no copy meanwhile.
         */

        up = (ngx_pid_t) hub->hold.slot->up;

        if (up && up != ngx_pid) {
            if (!hub->closing) {
                ngx_http_openclaw_hub_hold_frame(hub, opcode, data, len);
            }

            return NGX_OK;
        }

    } else if (!hub->holder) {
        return NGX_OK;
    }

    ngx_http_openclaw_hub_handle(hub, opcode, data, len);

    return NGX_OK;
}


static void
ngx_http_openclaw_hub_hold_frame(ngx_http_openclaw_hub_t *hub,
    ngx_uint_t opcode, u_char *data, size_t len)
{
    ngx_http_openclaw_hub_frame_t  *f;

    f = ngx_alloc(offsetof(ngx_http_openclaw_hub_frame_t, data) + len,
                  &hub->ws.log);

    if (f == NULL) {

        /* without memory to wait, it is taken now, at the worst twice */

        ngx_http_openclaw_hub_handle(hub, opcode, data, len);
        return;
    }

    f->at = ngx_current_msec;
    f->opcode = opcode;
    f->len = len;
    ngx_memcpy(f->data, data, len);

    ngx_queue_insert_tail(&hub->held, &f->queue);
}


/* the held frames that waited long enough */

static void
ngx_http_openclaw_hub_release_frames(ngx_http_openclaw_hub_t *hub,
    ngx_uint_t all)
{
    ngx_queue_t                    *q, *next;
    ngx_http_openclaw_hub_frame_t  *f;

    for (q = ngx_queue_head(&hub->held);
         q != ngx_queue_sentinel(&hub->held);
         q = next)
    {
        next = ngx_queue_next(q);
        f = ngx_queue_data(q, ngx_http_openclaw_hub_frame_t, queue);

        if (all || hub->ws.state != NGX_HTTP_OPENCLAW_WSCLIENT_READY) {
            ngx_queue_remove(q);
            ngx_free(f);
            continue;
        }

        /* the new link took its copy: nothing to wait for */

        if (ngx_http_openclaw_hub_zone_twin(&hub->hold, f->data, f->len)
            != NGX_OK)
        {
            ngx_queue_remove(q);
            ngx_free(f);
            continue;
        }

        if (ngx_current_msec - f->at < NGX_HTTP_OPENCLAW_HUB_DEFER) {
            continue;
        }

        ngx_queue_remove(q);
        ngx_http_openclaw_hub_handle(hub, f->opcode, f->data, f->len);
        ngx_free(f);
    }
}


static void
ngx_http_openclaw_hub_handle(ngx_http_openclaw_hub_t *hub, ngx_uint_t opcode,
    u_char *data, size_t len)
{
    if (ngx_http_openclaw_hub_zone_take(&hub->hold, data, len) != NGX_OK) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, &hub->ws.log, 0,
                       "openclaw hub message taken by the other link");
        return;
    }

    /* a reply it cannot send is counted where it is dropped */

    (void) ngx_http_openclaw_relay_message(&hub->ep,
                                           opcode != NGX_HTTP_OPENCLAW_WS_TEXT,
                                           data, len);
}


/* one user's oversized message must not cut the hub's other users off */

static ngx_int_t
ngx_http_openclaw_hub_oversized(ngx_http_openclaw_wsclient_t *ws,
    ngx_uint_t opcode, size_t size)
{
    u_char                    text[128];
    ngx_http_openclaw_hub_t  *hub;

    hub = ws->data;

    if (!hub->holder && !hub->draining) {
        return NGX_OK;
    }

    (void) ngx_sprintf(text, "message too big: %uz bytes, at most %uz%Z",
                       size, hub->conf->conf->max_message_size);

    (void) ngx_http_openclaw_relay_refuse(&hub->ep, (const char *) text);

    return NGX_OK;
}


static void
ngx_http_openclaw_hub_closed(ngx_http_openclaw_wsclient_t *ws,
    ngx_uint_t failed)
{
    ngx_http_openclaw_hub_t  *hub;

    hub = ws->data;

    (void) ngx_atomic_cmp_set(&hub->hold.slot->up, ngx_pid, 0);

    ngx_http_openclaw_hub_publish(hub);
}


static void
ngx_http_openclaw_hub_progress(ngx_http_openclaw_wsclient_t *ws)
{
    ngx_http_openclaw_hub_publish(ws->data);
}


static ngx_uint_t
ngx_http_openclaw_hub_keep(ngx_http_openclaw_wsclient_t *ws)
{
    ngx_http_openclaw_hub_t  *hub;

    hub = ws->data;

    /* the link's own connection: the caller closes it unless kept */

    ngx_http_openclaw_hub_shutdown(hub, 0);

    return hub->draining;
}


ngx_uint_t
ngx_http_openclaw_hub_delivering(void)
{
    ngx_uint_t                i, n;
    ngx_http_openclaw_hub_t  *hub;

    if (ngx_http_openclaw_hubs == NULL) {
        return 0;
    }

    hub = ngx_http_openclaw_hubs->elts;
    n = 0;

    for (i = 0; i < ngx_http_openclaw_hubs->nelts; i++) {
        ngx_http_openclaw_hub_shutdown(&hub[i], 1);
        n += hub[i].draining;
    }

    return n;
}


/* the endpoint's "send": never calls back into the relay */

static ngx_int_t
ngx_http_openclaw_hub_send(ngx_http_openclaw_endpoint_t *ep, u_char *data,
    size_t len)
{
    size_t                          pending;
    ngx_http_openclaw_hub_t        *hub;
    ngx_http_openclaw_hub_reply_t  *rp;

    hub = ep->data;

    if (hub->ws.state == NGX_HTTP_OPENCLAW_WSCLIENT_READY) {

        pending = hub->ws.out_last - hub->ws.out_pos;

        if (pending + len > hub->conf->conf->hub_queue) {
            ngx_http_openclaw_hub_drop(hub, len, "the hub is not reading "
                                       "and the output queue is full");
            hub->fate = NGX_HTTP_OPENCLAW_HUB_DROPPED;
            return NGX_OK;
        }

        if (ngx_http_openclaw_wsclient_send(&hub->ws,
                                            NGX_HTTP_OPENCLAW_WS_TEXT,
                                            data, len, NULL, 0, NULL, 0)
            != NGX_OK)
        {
            ngx_http_openclaw_hub_drop(hub, len, "out of memory");
            hub->fate = NGX_HTTP_OPENCLAW_HUB_DROPPED;
            return NGX_OK;
        }

        hub->fate = NGX_HTTP_OPENCLAW_HUB_SENT;
        return NGX_OK;
    }

    if (hub->draining || ngx_exiting) {

        /* the message stays on record: the next holder ends it */

        ngx_log_error(NGX_LOG_WARN, &hub->ws.log, 0,
                      "a reply of %uz bytes is left undelivered: the "
                      "link is down and the worker exits", len);
        hub->fate = NGX_HTTP_OPENCLAW_HUB_LEFT;
        return NGX_OK;
    }

    if (hub->queued + len > hub->conf->conf->hub_queue) {
        ngx_http_openclaw_hub_drop(hub, len, "the link is down and "
                                   "openclaw_bridge_hub_queue is full");
        hub->fate = NGX_HTTP_OPENCLAW_HUB_DROPPED;
        return NGX_OK;
    }

    rp = ngx_alloc(offsetof(ngx_http_openclaw_hub_reply_t, data) + len,
                   &hub->ws.log);
    if (rp == NULL) {
        ngx_http_openclaw_hub_drop(hub, len, "out of memory");
        hub->fate = NGX_HTTP_OPENCLAW_HUB_DROPPED;
        return NGX_OK;
    }

    ngx_str_null(&rp->ends);
    rp->end = 0;
    rp->len = len;
    ngx_memcpy(rp->data, data, len);

    ngx_queue_insert_tail(&hub->replies, &rp->queue);
    hub->nreplies++;
    hub->queued += len;
    hub->fate = NGX_HTTP_OPENCLAW_HUB_QUEUED;

    ngx_http_openclaw_hub_publish(hub);

    return NGX_OK;
}


/*
 * The record of a message ends when its last reply is on the link, or
 * counted as dropped; a reply kept while the link is down ends it when
 * sent; one left by an exiting worker keeps it for the next holder.
 */

static void
ngx_http_openclaw_hub_track(ngx_http_openclaw_endpoint_t *ep, ngx_uint_t end,
    ngx_str_t *id)
{
    ngx_str_t                       none;
    ngx_queue_t                    *q;
    ngx_http_openclaw_hub_t        *hub;
    ngx_http_openclaw_hub_reply_t  *rp;

    hub = ep->data;

    if (id == NULL) {
        ngx_str_set(&none, "");
        id = &none;
    }

    if (!end) {
        ngx_http_openclaw_hub_zone_start(&hub->hold, id);
        return;
    }

    switch (hub->fate) {

    case NGX_HTTP_OPENCLAW_HUB_LEFT:
        return;

    case NGX_HTTP_OPENCLAW_HUB_QUEUED:
        q = ngx_queue_last(&hub->replies);
        rp = ngx_queue_data(q, ngx_http_openclaw_hub_reply_t, queue);

        rp->end = 1;

        if (id->len) {
            rp->ends.data = ngx_alloc(id->len, &hub->ws.log);

            if (rp->ends.data) {
                ngx_memcpy(rp->ends.data, id->data, id->len);
                rp->ends.len = id->len;
            }
        }

        return;

    default:
        ngx_http_openclaw_hub_zone_end(&hub->hold, id);
        return;
    }
}


/* the messages of a holder that died get their end from this one */

static void
ngx_http_openclaw_hub_orphans(ngx_http_openclaw_hub_t *hub)
{
    ngx_str_t                        id, error;
    ngx_uint_t                       i, n;
    ngx_http_openclaw_hub_orphan_t   orphans[16];

    if (hub->ep.conf == NULL) {
        return;
    }

    ngx_str_set(&error, "the worker relaying this message exited before "
                        "its reply; send it again with the same id");

    do {
        n = ngx_http_openclaw_hub_zone_orphans(&hub->hold, orphans, 16);

        for (i = 0; i < n; i++) {
            id.data = orphans[i].id;
            id.len = orphans[i].len;

            ngx_log_error(NGX_LOG_WARN, &hub->ws.log, 0,
                          "the message %V of a worker that exited ends in "
                          "an error", &id);

            (void) ngx_http_openclaw_relay_reply(&hub->ep, "error", NULL,
                                                 NULL, &error, NULL, &id);
        }

    } while (n == 16);
}


static void
ngx_http_openclaw_hub_free(ngx_http_openclaw_hub_reply_t *rp)
{
    if (rp->ends.data) {
        ngx_free(rp->ends.data);
    }

    ngx_free(rp);
}


static ngx_uint_t
ngx_http_openclaw_hub_owes(ngx_http_openclaw_hub_t *hub)
{
    if (hub->ep.conf == NULL) {
        return 0;
    }

    return hub->ep.nruns || !ngx_queue_empty(&hub->ep.controls);
}


static void
ngx_http_openclaw_hub_drop(ngx_http_openclaw_hub_t *hub, size_t len,
    const char *why)
{
    hub->hold.slot->dropped++;

    ngx_log_error(NGX_LOG_WARN, &hub->ws.log, 0,
                  "a reply of %uz bytes was dropped: %s", len, why);
}


/* copies of the links' slots, read without a lock, for status and metrics */

ngx_array_t *
ngx_http_openclaw_hub_links(ngx_pool_t *pool)
{
    ngx_uint_t                       i, n;
    ngx_array_t                     *links;
    ngx_http_openclaw_hub_t         *hub;
    ngx_http_openclaw_hub_slot_t    *slot;
    ngx_http_openclaw_hub_status_t  *hs;

    n = ngx_http_openclaw_hubs ? ngx_http_openclaw_hubs->nelts : 0;

    links = ngx_array_create(pool, ngx_max(n, 1),
                             sizeof(ngx_http_openclaw_hub_status_t));
    if (links == NULL) {
        return NULL;
    }

    hub = n ? ngx_http_openclaw_hubs->elts : NULL;

    for (i = 0; i < n; i++) {
        slot = hub[i].hold.slot;

        hs = ngx_array_push(links);
        if (hs == NULL) {
            return NULL;
        }

        hs->url = hub[i].conf->dial;
        hs->location = hub[i].conf->location;
        hs->uid = hub[i].conf->uid;

        if (slot == NULL) {

            /* waiting for a slot: no worker has the link yet */

            hs->state = NGX_HTTP_OPENCLAW_HUB_DOWN;
            hs->pid = 0;
            hs->since = 0;
            hs->reconnects = 0;
            hs->queued = 0;
            hs->dropped = 0;
            (void) ngx_cpystrn(hs->last_error,
                               (u_char *) "waiting for a slot in the hub "
                               "zone, held by the old links",
                               sizeof(hs->last_error));
            continue;
        }
        hs->state = ngx_min(slot->state, NGX_HTTP_OPENCLAW_HUB_DRAINING);
        hs->pid = (ngx_pid_t) (slot->owner ? slot->owner : slot->draining);
        hs->since = (time_t) slot->since;
        hs->reconnects = slot->reconnects;
        hs->queued = slot->queued;
        hs->dropped = slot->dropped;

        /* a copy, cut where the writer may be */

        ngx_memcpy(hs->last_error, slot->last_error,
                   sizeof(hs->last_error));
        hs->last_error[sizeof(hs->last_error) - 1] = '\0';
    }

    return links;
}
