/*
 * A fast fake OpenClaw Gateway for the benchmark (scenario A): single
 * thread, epoll, no JSON library.
 *
 *   fakegw [-l 127.0.0.1] -p PORT [-n DELTAS] [-k TOKEN] [-t TICK_MS] [-B]
 *          [-L LATENCY_MS]
 *
 * Each WebSocket connection gets the protocol of gateway-protocol.md
 * sections 2, 3 and 7, reduced to what a relay needs:
 *
 *   - connect.challenge as soon as the upgrade is done;
 *   - connect -> res hello-ok, protocol 4, the requested scopes echoed,
 *     policy {maxPayload 26214400, maxBufferedBytes 52428800,
 *     tickIntervalMs TICK_MS}; with -k, a connect whose auth.token differs
 *     is refused (INVALID_REQUEST, AUTH_TOKEN_MISMATCH) and closed 1008;
 *   - chat.send -> res {runId: idempotencyKey, status: "started"} at once,
 *     then DELTAS "delta" chat events (cumulative prefixes of the message)
 *     and one "final" chat event whose text is the request's message; the
 *     events carry runId = idempotencyKey and the request's sessionKey;
 *   - chat.abort -> res {ok, aborted, runIds: []};
 *   - any other method -> res ok:false INVALID_REQUEST;
 *   - a "tick" event every TICK_MS (default 30000) to every connection past
 *     hello-ok; pings get pongs, a close gets a close.
 *
 * With -B chat events go to every connection past hello-ok, as the real
 * gateway broadcasts them; by default only to the connection that sent
 * the chat.send.
 *
 * With -L a slow agent: chat.send is still acknowledged at once, but the
 * run's events (deltas and final) leave LATENCY_MS later, so that a relay
 * sending R runs a second holds R * LATENCY_MS / 1000 of them in flight.
 * The runs wait in one FIFO (the delay is the same for all).
 *
 * Requests are scanned, not parsed: the members of the request object and
 * of its "params" (and of params.auth) are walked with a skipper that
 * knows JSON strings and their escapes, and the string values are copied
 * raw (still escaped) into the replies, so any message text round-trips
 * exactly.  All the frames produced by one read are sent with one write.
 *
 * Prints "fakegw listening on HOST:PORT" on stdout, then "hello conn=N"
 * for each connect it accepts; counters on stderr at SIGTERM/SIGINT.
 */

#include "ws_common.h"

typedef struct gw_conn_s gw_conn_t;

struct gw_conn_s {
    srv_conn_t  *c;
    int          ready;
    uint64_t     seq;            /* event seq, per connection */
    gw_conn_t   *prev;
    gw_conn_t   *next;
};

typedef struct {
    const char  *type, *type_e;
    const char  *id, *id_e;                 /* raw, with quotes */
    const char  *method, *method_e;         /* raw, with quotes */
    const char  *session, *session_e;
    const char  *message, *message_e;
    const char  *key, *key_e;
    const char  *scopes, *scopes_e;
    const char  *token, *token_e;
    int          in_params;
} req_t;

/* a run whose events are due later (-L): its strings copied, raw */

typedef struct delayed_s  delayed_t;

struct delayed_s {
    delayed_t   *next;
    gw_conn_t   *g;              /* NULL: its connection is gone */
    uint64_t     due;            /* now_ns() */
    req_t        r;              /* key, session, message into text[] */
    char         text[];
};

static gw_conn_t  *ready_list;
static uint64_t    latency_ns;
static delayed_t  *delayed_head, *delayed_tail;
static uint64_t    n_delayed, max_delayed;
static int         ndeltas;
static int         broadcast;
static const char *token;
static int         tick_ms = 30000;
static uint64_t    now_wall;
static buf_t       sb;               /* scratch for building one frame */

static uint64_t    n_connect, n_chat, n_abort, n_bad, n_events, n_ticks;

/* ------------------------------------------------------------------ */

static inline void
sb_lit(const char *s)
{
    buf_append(&sb, s, strlen(s));
}

static inline void
sb_span(const char *p, const char *e)
{
    buf_append(&sb, p, (size_t) (e - p));
}

static inline void
sb_u64(uint64_t v)
{
    char    tmp[24];
    int     n = 0;
    char    out[24];

    do {
        tmp[n++] = (char) ('0' + v % 10);
        v /= 10;
    } while (v);

    for (int i = 0; i < n; i++) {
        out[i] = tmp[n - 1 - i];
    }

    buf_append(&sb, out, (size_t) n);
}

static void
sb_reset(void)
{
    sb.off = 0;
    sb.len = 0;
}

static void
gw_send_sb(gw_conn_t *g)
{
    srv_send(g->c, WS_OP_TEXT, sb.data, sb.len);
}

/* ------------------------------------------------------------------ */

static int
scan_member(const char *k, size_t klen, const char *v, const char *vend,
    int depth, void *ud)
{
    req_t  *r = ud;

    if (vend == NULL) {
        /* an object value: descend into params, and params.auth */
        if (depth == 0 && KEYIS(k, klen, "params")) {
            return 1;
        }
        if (depth == 1 && KEYIS(k, klen, "auth")) {
            return 1;
        }
        if (depth == 1 && KEYIS(k, klen, "scopes")) {
            return 0;
        }
        return 0;
    }

    if (depth == 0) {
        if (*v == '"') {
            if (KEYIS(k, klen, "type")) {
                r->type = v; r->type_e = vend;
            } else if (KEYIS(k, klen, "id")) {
                r->id = v; r->id_e = vend;
            } else if (KEYIS(k, klen, "method")) {
                r->method = v; r->method_e = vend;
            }
        }
        return 0;
    }

    if (depth == 1) {
        if (*v == '"') {
            if (KEYIS(k, klen, "sessionKey")) {
                r->session = v; r->session_e = vend;
            } else if (KEYIS(k, klen, "message")) {
                r->message = v; r->message_e = vend;
            } else if (KEYIS(k, klen, "idempotencyKey")) {
                r->key = v; r->key_e = vend;
            }
        } else if (*v == '[' && KEYIS(k, klen, "scopes")) {
            r->scopes = v; r->scopes_e = vend;
        }
        return 0;
    }

    if (depth == 2 && *v == '"' && KEYIS(k, klen, "token")) {
        r->token = v; r->token_e = vend;
    }

    return 0;
}

#define SPANIS(p, e, lit) \
    ((size_t) ((e) - (p)) == sizeof(lit) - 1 \
     && memcmp((p), (lit), sizeof(lit) - 1) == 0)

static void
res_error(gw_conn_t *g, req_t *r, const char *code, const char *msg)
{
    sb_reset();
    sb_lit("{\"type\":\"res\",\"id\":");
    if (r->id) {
        sb_span(r->id, r->id_e);
    } else {
        sb_lit("\"\"");
    }
    sb_lit(",\"ok\":false,\"error\":{\"code\":\"");
    sb_lit(code);
    sb_lit("\",\"message\":\"");
    sb_lit(msg);
    sb_lit("\"}}");
    gw_send_sb(g);
}

static void
gw_hello(gw_conn_t *g, req_t *r)
{
    if (token) {
        size_t  tl = strlen(token);

        if (r->token == NULL || (size_t) (r->token_e - r->token) != tl + 2
            || memcmp(r->token + 1, token, tl) != 0)
        {
            sb_reset();
            sb_lit("{\"type\":\"res\",\"id\":");
            sb_span(r->id, r->id_e);
            sb_lit(",\"ok\":false,\"error\":{\"code\":\"INVALID_REQUEST\","
                   "\"message\":\"unauthorized: gateway token mismatch\","
                   "\"details\":{\"code\":\"AUTH_TOKEN_MISMATCH\"}}}");
            gw_send_sb(g);
            srv_send(g->c, WS_OP_CLOSE, "\x03\xf0unauthorized", 14);
            g->c->closing = 1;
            fprintf(stderr, "fakegw: conn=%llu refused: token mismatch\n",
                    (unsigned long long) g->c->n);
            return;
        }
    }

    sb_reset();
    sb_lit("{\"type\":\"res\",\"id\":");
    sb_span(r->id, r->id_e);
    sb_lit(",\"ok\":true,\"payload\":{\"type\":\"hello-ok\",\"protocol\":4,"
           "\"server\":{\"version\":\"2026.9.6\",\"connId\":\"fakegw-");
    sb_u64(g->c->n);
    sb_lit("\"},\"features\":{\"methods\":[\"health\",\"chat.send\","
           "\"chat.abort\",\"chat.history\"],\"events\":["
           "\"connect.challenge\",\"chat\",\"tick\",\"shutdown\"]},"
           "\"snapshot\":{\"sessionDefaults\":{\"defaultAgentId\":\"main\","
           "\"mainKey\":\"main\",\"mainSessionKey\":\"agent:main:main\","
           "\"scope\":\"per-sender\"}},"
           "\"auth\":{\"method\":\"token\",\"role\":\"operator\",\"scopes\":");
    if (r->scopes) {
        sb_span(r->scopes, r->scopes_e);
    } else {
        sb_lit("[]");
    }
    sb_lit("},\"policy\":{\"maxPayload\":26214400,"
           "\"maxBufferedBytes\":52428800,\"tickIntervalMs\":");
    sb_u64((uint64_t) tick_ms);
    sb_lit("}}}");
    gw_send_sb(g);

    g->ready = 1;
    g->seq = 0;
    g->next = ready_list;
    if (ready_list) {
        ready_list->prev = g;
    }
    ready_list = g;
    n_connect++;

    printf("hello conn=%llu\n", (unsigned long long) g->c->n);
    fflush(stdout);
}

/*
 * The largest token boundary <= cut in the raw (escaped) string body s of
 * length len: never inside an escape, a UTF-8 sequence or a surrogate pair.
 */
static size_t
safe_cut(const char *s, size_t len, size_t cut)
{
    size_t  i = 0, last = 0, t;

    while (i < len && i <= cut) {
        unsigned char  ch = (unsigned char) s[i];

        last = i;

        if (ch == '\\' && i + 1 < len) {
            if (s[i + 1] == 'u' && i + 6 <= len) {
                t = 6;
                /* a high surrogate escape followed by its low half */
                if ((s[i + 2] == 'd' || s[i + 2] == 'D')
                    && strchr("89abAB", s[i + 3]) && i + 12 <= len
                    && s[i + 6] == '\\' && s[i + 7] == 'u')
                {
                    t = 12;
                }
            } else {
                t = 2;
            }
        } else if (ch >= 0xf0) {
            t = 4;
        } else if (ch >= 0xe0) {
            t = 3;
        } else if (ch >= 0xc0) {
            t = 2;
        } else {
            t = 1;
        }

        i += t;
    }

    if (i <= cut && i <= len) {
        last = i;
    }

    return last > len ? len : last;
}

/*
 * An event frame {"type":"event","event":NAME,"seq":N,"payload":P} written
 * straight into the connection's output, with its own per-connection seq.
 */
static void
send_event(gw_conn_t *g, const char *name, const char *payload, size_t plen)
{
    char            head[96], seq[24];
    unsigned char   h[14];
    int             hn, sn;
    size_t          hl, len;
    buf_t          *out = &g->c->out;

    hn = snprintf(head, sizeof(head), "{\"type\":\"event\",\"event\":\"%s\","
                  "\"seq\":", name);
    sn = snprintf(seq, sizeof(seq), "%llu,\"payload\":",
                  (unsigned long long) ++g->seq);
    len = (size_t) hn + (size_t) sn + plen + 1;
    hl = ws_header(h, WS_OP_TEXT, len, NULL);

    buf_reserve(out, hl + len);
    memcpy(out->data + out->len, h, hl);
    out->len += hl;
    memcpy(out->data + out->len, head, (size_t) hn);
    out->len += (size_t) hn;
    memcpy(out->data + out->len, seq, (size_t) sn);
    out->len += (size_t) sn;
    memcpy(out->data + out->len, payload, plen);
    out->len += plen;
    out->data[out->len++] = '}';

    srv.frames_out++;
    srv_mark_dirty(g->c);
}

/* the payload of a chat event, up to its state, into sb */
static void
chat_payload_head(req_t *r, uint64_t run_seq, const char *state)
{
    sb_reset();
    sb_lit("{\"runId\":");
    sb_span(r->key, r->key_e);
    sb_lit(",\"sessionKey\":");
    sb_span(r->session, r->session_e);
    sb_lit(",\"agentId\":\"main\",\"seq\":");
    sb_u64(run_seq);
    sb_lit(",\"state\":\"");
    sb_lit(state);
    sb_lit("\"");
}

static void
chat_event_send(gw_conn_t *g)
{
    gw_conn_t  *o;

    n_events++;

    if (!broadcast) {
        send_event(g, "chat", sb.data, sb.len);
        return;
    }

    for (o = ready_list; o; o = o->next) {
        send_event(o, "chat", sb.data, sb.len);
    }
}

static void gw_run_events(gw_conn_t *g, req_t *r);

/* keeps a run's strings until its events are due */
static void
gw_delay(gw_conn_t *g, req_t *r)
{
    size_t      kl, sl, ml;
    delayed_t  *d;

    kl = (size_t) (r->key_e - r->key);
    sl = (size_t) (r->session_e - r->session);
    ml = (size_t) (r->message_e - r->message);

    d = malloc(sizeof(delayed_t) + kl + sl + ml);
    if (d == NULL) {
        die("out of memory");
    }

    memset(&d->r, 0, sizeof(req_t));
    d->next = NULL;
    d->g = g;
    d->due = now_ns() + latency_ns;

    memcpy(d->text, r->key, kl);
    d->r.key = d->text;
    d->r.key_e = d->text + kl;
    memcpy(d->text + kl, r->session, sl);
    d->r.session = d->text + kl;
    d->r.session_e = d->text + kl + sl;
    memcpy(d->text + kl + sl, r->message, ml);
    d->r.message = d->text + kl + sl;
    d->r.message_e = d->text + kl + sl + ml;

    if (delayed_tail) {
        delayed_tail->next = d;
    } else {
        delayed_head = d;
    }
    delayed_tail = d;

    if (++n_delayed > max_delayed) {
        max_delayed = n_delayed;
    }
}

/* sends the events of the runs that are due; ms until the next one */
static int
gw_due(uint64_t t)
{
    delayed_t  *d;

    while ((d = delayed_head) != NULL && d->due <= t) {
        delayed_head = d->next;
        if (delayed_head == NULL) {
            delayed_tail = NULL;
        }
        n_delayed--;

        if (d->g) {
            gw_run_events(d->g, &d->r);
        }
        free(d);
    }

    return d ? (int) ((d->due - t) / 1000000ull) + 1 : -1;
}

static void
gw_chat_send(gw_conn_t *g, req_t *r)
{

    if (r->key == NULL || r->key_e - r->key <= 2 || r->session == NULL
        || r->session_e - r->session <= 2 || r->message == NULL)
    {
        n_bad++;
        res_error(g, r, "INVALID_REQUEST",
                  "invalid chat.send params: must have required properties "
                  "sessionKey, message, idempotencyKey");
        return;
    }

    n_chat++;

    sb_reset();
    sb_lit("{\"type\":\"res\",\"id\":");
    sb_span(r->id, r->id_e);
    sb_lit(",\"ok\":true,\"payload\":{\"runId\":");
    sb_span(r->key, r->key_e);
    sb_lit(",\"status\":\"started\"}}");
    gw_send_sb(g);

    if (latency_ns) {
        gw_delay(g, r);
        return;
    }

    gw_run_events(g, r);
}

static void
gw_run_events(gw_conn_t *g, req_t *r)
{
    const char  *msg;
    size_t       mlen, prev = 0, cut;
    int          k;

    msg = r->message + 1;                       /* without the quotes */
    mlen = (size_t) (r->message_e - r->message) - 2;

    for (k = 1; k <= ndeltas; k++) {
        cut = safe_cut(msg, mlen, mlen * (size_t) k / (size_t) ndeltas);

        chat_payload_head(r, (uint64_t) k, "delta");
        sb_lit(",\"deltaText\":\"");
        sb_span(msg + prev, msg + cut);
        sb_lit("\",\"message\":{\"role\":\"assistant\",\"content\":"
               "[{\"type\":\"text\",\"text\":\"");
        sb_span(msg, msg + cut);
        sb_lit("\"}],\"timestamp\":");
        sb_u64(now_wall);
        sb_lit("}}");
        chat_event_send(g);

        prev = cut;
    }

    chat_payload_head(r, (uint64_t) ndeltas + 1, "final");
    sb_lit(",\"stopReason\":\"stop\",\"message\":{\"role\":\"assistant\","
           "\"content\":[{\"type\":\"text\",\"text\":");
    sb_span(r->message, r->message_e);
    sb_lit("}],\"timestamp\":");
    sb_u64(now_wall);
    sb_lit("}}");
    chat_event_send(g);
}

static void
gw_message(srv_conn_t *c, int opcode, unsigned char *p, size_t len)
{
    gw_conn_t   *g = c->data;
    req_t        r;
    const char  *s = (const char *) p, *e = s + len;

    if (opcode != WS_OP_TEXT) {
        n_bad++;
        return;
    }

    memset(&r, 0, sizeof(r));

    if (json_walk(s, e, 0, scan_member, &r) == NULL) {
        n_bad++;
        fprintf(stderr, "fakegw: conn=%llu bad frame: %.*s\n",
                (unsigned long long) c->n, (int) (len > 200 ? 200 : len), s);
        srv_send(c, WS_OP_CLOSE, "\x03\xe8invalid frame", 15);
        c->closing = 1;
        return;
    }

    if (r.type == NULL || !SPANIS(r.type, r.type_e, "\"req\"")) {
        return;
    }

    if (r.id == NULL || r.id_e - r.id <= 2 || r.method == NULL) {
        n_bad++;
        srv_send(c, WS_OP_CLOSE, "\x03\xf0invalid request frame", 23);
        c->closing = 1;
        return;
    }

    if (!g->ready) {
        if (!SPANIS(r.method, r.method_e, "\"connect\"")) {
            res_error(g, &r, "INVALID_REQUEST", "first request must be connect");
            srv_send(c, WS_OP_CLOSE, "\x03\xf0" "first request must be connect",
                     31);
            c->closing = 1;
            return;
        }
        gw_hello(g, &r);
        return;
    }

    if (SPANIS(r.method, r.method_e, "\"chat.send\"")) {
        gw_chat_send(g, &r);
        return;
    }

    if (SPANIS(r.method, r.method_e, "\"chat.abort\"")) {
        n_abort++;
        sb_reset();
        sb_lit("{\"type\":\"res\",\"id\":");
        sb_span(r.id, r.id_e);
        sb_lit(",\"ok\":true,\"payload\":{\"ok\":true,\"aborted\":true,"
               "\"runIds\":[]}}");
        gw_send_sb(g);
        return;
    }

    n_bad++;
    res_error(g, &r, "INVALID_REQUEST", "unknown method");
}

static void
gw_open(srv_conn_t *c)
{
    gw_conn_t  *g = calloc(1, sizeof(*g));

    if (g == NULL) {
        die("out of memory");
    }
    g->c = c;
    c->data = g;

    sb_reset();
    sb_lit("{\"type\":\"event\",\"event\":\"connect.challenge\",\"payload\":"
           "{\"nonce\":\"fakegw-");
    sb_u64((uint64_t) getpid());
    sb_lit("-");
    sb_u64(c->n);
    sb_lit("\",\"ts\":");
    sb_u64(wall_ms());
    sb_lit(",\"capabilities\":[\"model-catalog-snapshot\"]}}");
    gw_send_sb(g);
}

static void
gw_close(srv_conn_t *c)
{
    gw_conn_t  *g = c->data;

    if (g == NULL) {
        return;
    }

    if (g->ready) {
        if (g->prev) {
            g->prev->next = g->next;
        } else {
            ready_list = g->next;
        }
        if (g->next) {
            g->next->prev = g->prev;
        }
    }

    fprintf(stderr, "fakegw: conn=%llu closed\n", (unsigned long long) c->n);

    for (delayed_t *d = delayed_head; d; d = d->next) {
        if (d->g == g) {
            d->g = NULL;
        }
    }

    free(g);
    c->data = NULL;
}

static void
gw_ticks(void)
{
    gw_conn_t  *g;
    char        p[64];
    int         n;

    n = snprintf(p, sizeof(p), "{\"ts\":%llu}", (unsigned long long) wall_ms());

    for (g = ready_list; g; g = g->next) {
        send_event(g, "tick", p, (size_t) n);
        n_ticks++;
    }
}

int
main(int argc, char **argv)
{
    const char  *host = "127.0.0.1";
    int          port = 0, opt, wait, due;
    uint64_t     next_tick, t;

    while ((opt = getopt(argc, argv, "l:p:n:k:t:BL:h")) != -1) {
        switch (opt) {
        case 'l':
            host = optarg;
            break;
        case 'p':
            port = atoi(optarg);
            break;
        case 'n':
            ndeltas = atoi(optarg);
            break;
        case 'k':
            token = optarg;
            break;
        case 't':
            tick_ms = atoi(optarg);
            break;
        case 'B':
            broadcast = 1;
            break;
        case 'L':
            latency_ns = (uint64_t) atoi(optarg) * 1000000ull;
            break;
        default:
            fprintf(stderr, "usage: %s [-l host] -p port [-n deltas] "
                    "[-k token] [-t tick_ms] [-B] [-L latency_ms]\n",
                    argv[0]);
            return 2;
        }
    }

    if (port <= 0 || ndeltas < 0 || tick_ms <= 0) {
        die("fakegw: -p PORT is required; -n >= 0; -t > 0");
    }

    srv.on_open = gw_open;
    srv.on_message = gw_message;
    srv.on_close = gw_close;
    srv.require_mask = 1;
    srv_init(host, port);

    printf("fakegw listening on %s:%d\n", host, port);
    fflush(stdout);

    next_tick = now_ns() + (uint64_t) tick_ms * 1000000ull;
    now_wall = wall_ms();

    while (!srv_stop) {
        t = now_ns();
        if (t >= next_tick) {
            gw_ticks();
            srv_flush_dirty();
            next_tick = t + (uint64_t) tick_ms * 1000000ull;
        }
        now_wall = wall_ms();
        wait = (int) ((next_tick - t) / 1000000ull) + 1;
        due = gw_due(t);
        srv_flush_dirty();
        if (due >= 0 && due < wait) {
            wait = due;
        }
        srv_poll(wait);
    }

    fprintf(stderr, "fakegw: connections=%llu hello=%llu chat.send=%llu "
            "chat.abort=%llu events=%llu ticks=%llu bad=%llu frames_in=%llu "
            "frames_out=%llu max_delayed=%llu\n",
            (unsigned long long) srv.nconn, (unsigned long long) n_connect,
            (unsigned long long) n_chat, (unsigned long long) n_abort,
            (unsigned long long) n_events, (unsigned long long) n_ticks,
            (unsigned long long) n_bad, (unsigned long long) srv.frames_in,
            (unsigned long long) srv.frames_out,
            (unsigned long long) max_delayed);
    return 0;
}
