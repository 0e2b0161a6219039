
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * The status in Prometheus' text exposition format (version 0.0.4): the
 * figures of each worker, labelled with its pid, and the sessions zones,
 * labelled with their names.  Nothing is summed here: Prometheus sums
 * what it scrapes, and a worker's counters that end with it (a reload)
 * are a reset that rate() takes per series, not a sum going backwards.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_openclaw_metrics.h"
#include "ngx_http_openclaw_hub.h"
#include "ngx_http_openclaw_status.h"


/* the longest sample line: name, labels and a value */
#define NGX_HTTP_OPENCLAW_METRICS_LINE     192

/* the families' # HELP and # TYPE lines */
#define NGX_HTTP_OPENCLAW_METRICS_HEADERS  8192

/* the sample lines of one worker: the table, link states, histograms */
#define NGX_HTTP_OPENCLAW_METRICS_WORKER                                      \
    (80 * NGX_HTTP_OPENCLAW_METRICS_LINE)


typedef struct {
    const char                 *name;
    const char                 *type;
    const char                 *help;
    const char                 *label;      /* name="value", or NULL */
    size_t                      offset;     /* of an ngx_uint_t in a slot */
} ngx_http_openclaw_metric_t;


#define ngx_http_openclaw_slot(member)                                        \
    offsetof(ngx_http_openclaw_worker_status_t, member)


static u_char *ngx_http_openclaw_metrics_head(u_char *p, u_char *last,
    const char *name, const char *type, const char *help);
static u_char *ngx_http_openclaw_metrics_histogram(u_char *p, u_char *last,
    ngx_array_t *workers, const char *name, const char *help,
    size_t offset);
static u_char *ngx_http_openclaw_metrics_zones(u_char *p, u_char *last,
    ngx_array_t *zones);
static u_char *ngx_http_openclaw_metrics_hubs(u_char *p, u_char *last,
    ngx_array_t *hubs);
static u_char *ngx_http_openclaw_metrics_escape(u_char *p, u_char *last,
    ngx_str_t *value);


/*
 * Series of the same name follow each other, so that each family is one
 * group under its # HELP and # TYPE, as the format wants.
 */

static ngx_http_openclaw_metric_t  ngx_http_openclaw_metrics[] = {

    { "openclaw_bridge_clients", "gauge",
      "WebSocket clients connected to the worker.", NULL,
      ngx_http_openclaw_slot(relay.clients) },

    { "openclaw_bridge_messages_in_total", "counter",
      "Messages from clients, chat and session control.", NULL,
      ngx_http_openclaw_slot(relay.messages_in) },

    { "openclaw_bridge_messages_out_total", "counter",
      "Messages ended: by a complete, an error or a control reply, or "
      "unanswered when their client went away.", NULL,
      ngx_http_openclaw_slot(relay.messages_out) },

    { "openclaw_bridge_completed_total", "counter",
      "Chat messages answered with a complete reply.", NULL,
      ngx_http_openclaw_slot(relay.completed) },

    { "openclaw_bridge_errors_total", "counter",
      "Messages answered with an error, by kind: input (the client's), "
      "gateway, timeout, link (no gateway connection) and overload.",
      "kind=\"input\"",
      ngx_http_openclaw_slot(relay.errors_input) },

    { "openclaw_bridge_errors_total", NULL, NULL,
      "kind=\"gateway\"",
      ngx_http_openclaw_slot(relay.errors_gateway) },

    { "openclaw_bridge_errors_total", NULL, NULL,
      "kind=\"timeout\"",
      ngx_http_openclaw_slot(relay.errors_timeout) },

    { "openclaw_bridge_errors_total", NULL, NULL,
      "kind=\"link\"",
      ngx_http_openclaw_slot(relay.errors_link) },

    { "openclaw_bridge_errors_total", NULL, NULL,
      "kind=\"overload\"",
      ngx_http_openclaw_slot(relay.errors_overload) },

    { "openclaw_bridge_runs_in_flight", "gauge",
      "Chat messages in flight.", NULL,
      ngx_http_openclaw_slot(relay.runs) },

    { "openclaw_bridge_agent_runs_total", "counter",
      "Runs the agent started itself, delivered to the endpoint that owns "
      "their session.", NULL,
      ngx_http_openclaw_slot(relay.pushed) },

    { "openclaw_bridge_agent_runs_undelivered_total", "counter",
      "Runs the agent started itself on a webhook session that no endpoint "
      "got, counted once, by the last worker to see their end.", NULL,
      ngx_http_openclaw_slot(relay.undelivered) },

    { "openclaw_bridge_runs_waiting_for_link", "gauge",
      "Chat messages in flight that wait for the gateway connection.",
      NULL,
      ngx_http_openclaw_slot(relay.waiting) },

    { "openclaw_bridge_callbacks_pending", "gauge",
      "Callbacks accepted and not yet delivered or given up.", NULL,
      ngx_http_openclaw_slot(callbacks.pending) },

    { "openclaw_bridge_callbacks_total", "counter",
      "Callbacks done, by result: delivered, or failed after the last "
      "attempt.", "result=\"delivered\"",
      ngx_http_openclaw_slot(callbacks.delivered) },

    { "openclaw_bridge_callbacks_total", NULL, NULL,
      "result=\"failed\"",
      ngx_http_openclaw_slot(callbacks.failed) },

    { "openclaw_bridge_callback_retries_total", "counter",
      "Callback attempts that failed and were tried again.", NULL,
      ngx_http_openclaw_slot(callbacks.retries) },

    { "openclaw_bridge_link_reconnects_total", "counter",
      "Reconnects of the worker's gateway connection.", NULL,
      ngx_http_openclaw_slot(link.reconnects) },

    { "openclaw_bridge_link_protocol", "gauge",
      "Gateway protocol version of the connection's last handshake, 0 "
      "before the first.", NULL,
      ngx_http_openclaw_slot(link.protocol) },

    { NULL, NULL, NULL, NULL, 0 }
};


/* a sessions zone's figures: size, free, sessions and evicted, in order */

static ngx_http_openclaw_metric_t  ngx_http_openclaw_zone_metrics[] = {

    { "openclaw_bridge_zone_size_bytes", "gauge",
      "Size of the sessions zone.", NULL, 0 },

    { "openclaw_bridge_zone_free_bytes", "gauge",
      "Free space in the sessions zone.", NULL, 0 },

    { "openclaw_bridge_zone_sessions", "gauge",
      "Sessions recorded in the sessions zone.", NULL, 0 },

    { "openclaw_bridge_zone_evictions_total", "counter",
      "Sessions evicted from the full sessions zone.", NULL, 0 }
};


/* the upper bounds of the buckets but +Inf, in ms and as "le" */

static ngx_msec_t  ngx_http_openclaw_bounds[] = {
    5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000
};

static const char  *ngx_http_openclaw_le[] = {
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5",
    "10", "30", "60", "+Inf"
};


void
ngx_http_openclaw_metrics_observe(ngx_http_openclaw_histogram_t *h,
    ngx_msec_t ms)
{
    ngx_uint_t  i;

    for (i = 0; i < NGX_HTTP_OPENCLAW_HISTOGRAM_BUCKETS - 1; i++) {
        if (ms <= ngx_http_openclaw_bounds[i]) {
            break;
        }
    }

    h->buckets[i]++;
    h->sum += ms;
}


ngx_int_t
ngx_http_openclaw_metrics_handler(ngx_http_request_t *r)
{
    u_char                             *p, *last;
    size_t                              size;
    ngx_int_t                           rc;
    ngx_buf_t                          *b;
    ngx_uint_t                          i, k, state;
    ngx_str_t                           type;
    ngx_array_t                        *workers, *zones, *hubs;
    ngx_http_openclaw_metric_t         *m;
    ngx_http_openclaw_hub_status_t     *hs;
    ngx_http_openclaw_zone_status_t    *zs;
    ngx_http_openclaw_worker_status_t  *ws;

    rc = ngx_http_openclaw_status_read(r, &workers, &zones);

    if (rc != NGX_OK) {
        return rc;
    }

    ws = workers->elts;
    zs = zones->elts;

    /* a zone name may need escaping: twice its length at most */

    size = NGX_HTTP_OPENCLAW_METRICS_HEADERS
           + workers->nelts * NGX_HTTP_OPENCLAW_METRICS_WORKER;

    for (i = 0; i < zones->nelts; i++) {
        size += 4 * (NGX_HTTP_OPENCLAW_METRICS_LINE + 2 * zs[i].name.len);
    }

    hubs = ngx_http_openclaw_hub_links(r->pool);
    if (hubs == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    hs = hubs->elts;

    for (i = 0; i < hubs->nelts; i++) {
        size += 7 * (NGX_HTTP_OPENCLAW_METRICS_LINE
                     + 2 * (hs[i].url.len + hs[i].location.len
                            + hs[i].uid.len));
    }

    b = ngx_create_temp_buf(r->pool, size);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = b->last;
    last = b->end;

    p = ngx_http_openclaw_metrics_head(p, last,
                         "openclaw_bridge_worker_start_time_seconds", "gauge",
                         "When the worker started, in seconds since the "
                         "epoch.");

    for (i = 0; i < workers->nelts; i++) {
        p = ngx_slprintf(p, last,
                         "openclaw_bridge_worker_start_time_seconds"
                         "{pid=\"%P\"} %T\n", ws[i].pid, ws[i].started);
    }

    for (m = ngx_http_openclaw_metrics; m->name; m++) {

        if (m->type) {
            p = ngx_http_openclaw_metrics_head(p, last, m->name, m->type,
                                               m->help);
        }

        for (i = 0; i < workers->nelts; i++) {
            p = ngx_slprintf(p, last, "%s{pid=\"%P\"%s%s} %ui\n",
                             m->name, ws[i].pid, m->label ? "," : "",
                             m->label ? m->label : "",
                             *(ngx_uint_t *) ((u_char *) &ws[i]
                                              + m->offset));
        }
    }

    /* a state set: 1 for the state the connection is in, 0 for the others */

    p = ngx_http_openclaw_metrics_head(p, last, "openclaw_bridge_link_state",
                         "gauge",
                         "State of the worker's gateway connection: 1 for "
                         "the state it is in.");

    for (i = 0; i < workers->nelts; i++) {
        state = ws[i].link.state;

        for (k = 0; k <= NGX_HTTP_OPENCLAW_LINK_READY; k++) {
            p = ngx_slprintf(p, last, "openclaw_bridge_link_state"
                             "{pid=\"%P\",state=\"%s\"} %ui\n",
                             ws[i].pid, ngx_http_openclaw_link_states[k],
                             (ngx_uint_t) (k == state));
        }
    }

    p = ngx_http_openclaw_metrics_histogram(p, last, workers,
                         "openclaw_bridge_message_first_progress_seconds",
                         "Time from a chat message to its first progress "
                         "reply.",
                         ngx_http_openclaw_slot(relay.first_progress));

    p = ngx_http_openclaw_metrics_histogram(p, last, workers,
                         "openclaw_bridge_message_complete_seconds",
                         "Time from a chat message to its complete reply.",
                         ngx_http_openclaw_slot(relay.complete));

    p = ngx_http_openclaw_metrics_zones(p, last, zones);
    p = ngx_http_openclaw_metrics_hubs(p, last, hubs);

    if (p == last) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "openclaw_bridge_metrics: the answer did not fit in "
                      "%uz bytes", size);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = p;

    ngx_str_set(&type, "text/plain; version=0.0.4; charset=utf-8");

    return ngx_http_openclaw_status_send(r, b, &type);
}


static u_char *
ngx_http_openclaw_metrics_head(u_char *p, u_char *last, const char *name,
    const char *type, const char *help)
{
    return ngx_slprintf(p, last, "# HELP %s %s\n# TYPE %s %s\n",
                        name, help, name, type);
}


/* the buckets are kept apart; "le" counts everything up to its bound */

static u_char *
ngx_http_openclaw_metrics_histogram(u_char *p, u_char *last,
    ngx_array_t *workers, const char *name, const char *help, size_t offset)
{
    ngx_uint_t                          i, k, n;
    ngx_http_openclaw_histogram_t      *h;
    ngx_http_openclaw_worker_status_t  *ws;

    p = ngx_http_openclaw_metrics_head(p, last, name, "histogram", help);

    ws = workers->elts;

    for (i = 0; i < workers->nelts; i++) {
        h = (ngx_http_openclaw_histogram_t *) ((u_char *) &ws[i] + offset);
        n = 0;

        for (k = 0; k < NGX_HTTP_OPENCLAW_HISTOGRAM_BUCKETS; k++) {
            n += h->buckets[k];

            p = ngx_slprintf(p, last, "%s_bucket{pid=\"%P\",le=\"%s\"} %ui\n",
                             name, ws[i].pid, ngx_http_openclaw_le[k], n);
        }

        p = ngx_slprintf(p, last, "%s_sum{pid=\"%P\"} %ui.%03ui\n"
                         "%s_count{pid=\"%P\"} %ui\n",
                         name, ws[i].pid, h->sum / 1000, h->sum % 1000,
                         name, ws[i].pid, n);
    }

    return p;
}


static u_char *
ngx_http_openclaw_metrics_zones(u_char *p, u_char *last, ngx_array_t *zones)
{
    size_t                            value;
    ngx_uint_t                        i, k;
    ngx_http_openclaw_metric_t       *m;
    ngx_http_openclaw_zone_status_t  *zs;

    zs = zones->elts;

    for (k = 0; k < 4; k++) {
        m = &ngx_http_openclaw_zone_metrics[k];

        p = ngx_http_openclaw_metrics_head(p, last, m->name, m->type,
                                           m->help);

        for (i = 0; i < zones->nelts; i++) {

            switch (k) {
            case 0:
                value = zs[i].info.size;
                break;
            case 1:
                value = zs[i].info.free;
                break;
            case 2:
                value = zs[i].info.sessions;
                break;
            default:
                value = zs[i].info.evicted;
                break;
            }

            p = ngx_slprintf(p, last, "%s{zone=\"", m->name);
            p = ngx_http_openclaw_metrics_escape(p, last, &zs[i].name);
            p = ngx_slprintf(p, last, "\"} %uz\n", value);
        }
    }

    return p;
}


/* one series per hub link, whichever worker holds it */

static u_char *
ngx_http_openclaw_metrics_hubs(u_char *p, u_char *last, ngx_array_t *hubs)
{
    ngx_uint_t                       i, k, value;
    ngx_http_openclaw_metric_t      *m;
    ngx_http_openclaw_hub_status_t  *hs;

    static ngx_http_openclaw_metric_t  metrics[] = {
        { "openclaw_bridge_hub_link_state", "gauge",
          "State of a hub link: 1 for the state it is in.", NULL, 0 },
        { "openclaw_bridge_hub_reconnects_total", "counter",
          "Connection attempts of a hub link after the first.", NULL, 0 },
        { "openclaw_bridge_hub_replies_queued", "gauge",
          "Replies kept while a hub link is down.", NULL, 0 },
        { "openclaw_bridge_hub_replies_dropped_total", "counter",
          "Replies a hub link could not keep or send (counted and logged).",
          NULL, 0 }
    };

    hs = hubs->elts;

    for (k = 0; k < 4; k++) {
        m = &metrics[k];

        p = ngx_http_openclaw_metrics_head(p, last, m->name, m->type,
                                           m->help);

        for (i = 0; i < hubs->nelts; i++) {

            switch (k) {
            case 0:
                value = 0;
                break;
            case 1:
                value = hs[i].reconnects;
                break;
            case 2:
                value = hs[i].queued;
                break;
            default:
                value = hs[i].dropped;
                break;
            }

            do {
                p = ngx_slprintf(p, last, "%s{url=\"", m->name);
                p = ngx_http_openclaw_metrics_escape(p, last, &hs[i].url);
                p = ngx_slprintf(p, last, "\",location=\"");
                p = ngx_http_openclaw_metrics_escape(p, last,
                                                     &hs[i].location);
                p = ngx_slprintf(p, last, "\",uid=\"");
                p = ngx_http_openclaw_metrics_escape(p, last, &hs[i].uid);

                if (k != 0) {
                    p = ngx_slprintf(p, last, "\"} %ui\n", value);
                    break;
                }

                p = ngx_slprintf(p, last, "\",state=\"%s\"} %ui\n",
                                 ngx_http_openclaw_hub_states[value],
                                 (ngx_uint_t) (value == hs[i].state));

            } while (ngx_http_openclaw_hub_states[++value]);
        }
    }

    return p;
}


/* a label value: backslash, double quote and line feed are escaped */

static u_char *
ngx_http_openclaw_metrics_escape(u_char *p, u_char *last, ngx_str_t *value)
{
    u_char      c;
    ngx_uint_t  i;

    for (i = 0; i < value->len && last - p >= 2; i++) {
        c = value->data[i];

        if (c == '\\' || c == '"') {
            *p++ = '\\';
            *p++ = c;

        } else if (c == LF) {
            *p++ = '\\';
            *p++ = 'n';

        } else {
            *p++ = c;
        }
    }

    return p;
}
