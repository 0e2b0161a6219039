/*
 * WebSocket load generator for the bridge benchmark: one thread, epoll,
 * non-blocking sockets, many connections.
 *
 *   loadgen -p PORT [-h 127.0.0.1] [-u /] [-c 100] (-r PER_CONN | -R TOTAL
 *           | -f [-W 8] | -i) [-d 10] [-w 2] [-s 32] [-m bridge|echo]
 *           [-D 2] [-C 256] [-P pid,pid,...] [-q]
 *
 *   -c N        connections
 *   -r RATE     open loop: messages per second per connection
 *   -R RATE     open loop: messages per second in total (spread evenly and
 *               round-robin over the connections)
 *   -f          flood: keep -W messages outstanding on every connection
 *   -W N        outstanding window of -f (default 8)
 *   -i          idle: connect only (same as -r 0 / -R 0), hold -w + -d s
 *   -d S        measurement seconds (default 10)
 *   -w S        warm-up seconds before it (default 2)
 *   -D S        drain: after the measurement, wait up to this long for the
 *               replies of every message still outstanding (default 2)
 *   -s BYTES    size of the "content" string (default 32)
 *   -m MODE     bridge: a message is complete when {"type":"complete",...,
 *               "id":<id>} arrives (progress is counted and ignored, an
 *               "error" reply ends the message as an error); echo: when the
 *               frame comes back (matched by the id inside it)
 *   -C N        connection attempts in progress at once (default 256)
 *   -P PIDS     processes whose CPU (utime+stime from /proc/PID/stat) is
 *               sampled at the start and the end of the measurement, and
 *               whose VmRSS is read at its end
 *   -q          no human summary
 *
 * Every message is the JSON text {"id":<n>,"content":"<s bytes>"} in one
 * masked text frame; <n> counts from 1 on each connection, and each
 * connection keeps its send timestamps in a ring indexed by id.  Latency
 * is from the moment the frame is handed to write() to the moment the
 * completing frame has been read.  In open loop the send schedule is
 * fixed (message k at start + k / TOTAL) whatever the replies do; sends
 * that fall more than 1 ms behind it are counted as "late".  Messages
 * queued on one connection in one loop iteration go out in one write().
 *
 * Output: one line "RESULT key=value ..." on stdout (latencies in
 * microseconds), and a human summary on stderr.  Every message is
 * accounted for, warm-up included: sent = completed_all + errors_all +
 * unanswered, a reply whose id is not outstanding (a second reply to a
 * message, or one never sent) counts as unmatched, so "each message got
 * exactly one reply" is sent = completed_all, unanswered = unmatched = 0.
 * Exit status 0 when the run went through (even with errors, which are in
 * the figures), 2 on a usage or setup error.
 */

#include "ws_common.h"

#include <ctype.h>
#include <getopt.h>

#define RING_BITS  12
#define RING       (1u << RING_BITS)
#define RING_MASK  (RING - 1)

enum { C_NEW, C_CONNECTING, C_HANDSHAKE, C_OPEN, C_DEAD };
enum { P_CONNECT, P_WARMUP, P_MEASURE, P_DRAIN, P_DONE };
enum { M_BRIDGE, M_ECHO };

typedef struct conn_s conn_t;

struct conn_s {
    int         fd;
    int         state;
    int         want_out;
    int         dirty;
    conn_t     *next_dirty;
    buf_t       in;
    buf_t       out;
    buf_t       frag;
    int         frag_op;
    char        accept[32];
    uint64_t    next_id;
    uint32_t    outstanding;
    uint64_t   *ts;            /* send time of id, by id & RING_MASK */
    uint64_t   *ids;
};

/* options */
static const char  *host = "127.0.0.1";
static int          port;
static const char  *path = "/";
static int          nconns = 100;
static double       rate_conn = -1, rate_total = -1;
static int          flood, idle;
static int          window = 8;
static double       duration = 10, warmup = 2, drain = 2;
static int          msg_size = 32;
static int          mode = M_BRIDGE;
static int          max_connecting = 256;
static int          quiet;
static int          pids[16];
static int          npids;

/* state */
static int          ep;
static conn_t      *conns;
static conn_t      *dirty;
static int          phase = P_CONNECT;
static int          next_connect;    /* next connection to start */
static int          connecting;      /* attempts in progress */
static int          n_open, n_failed, n_closed;
static char        *content;
static struct sockaddr_in  addr;
static uint64_t     rng = 0x9e3779b97f4a7c15ull;
static double       period_ns;       /* open loop: ns between two sends */
static uint64_t     sched_n;         /* open loop: next message number */
static uint64_t     t_start_send, t_m0, t_m1, t_end, t_connect0, t_connected;

/* counters */
static uint64_t     sent, sent_measured, completed_window, progress,
                    error_replies, unmatched, skipped, late, other_frames,
                    proto_errors;
static uint64_t     max_lag;
static uint64_t     meas_out;        /* sent in the window, not yet answered */
static uint64_t     all_out;         /* sent at any time, not yet answered */
static uint64_t     completed_all;   /* complete replies, whatever the phase */
static uint64_t     errors_all;      /* error replies that ended a message */
static char         first_error[256];

/* histogram: HDR-style, 128 linear sub-buckets per power of two (< 1 %) */
#define SUB_BITS   7
#define SUB        (1u << SUB_BITS)
#define HALF       (SUB >> 1)
#define NBUCKETS   (SUB + 48 * HALF)

static uint64_t     hist[NBUCKETS];
static uint64_t     hist_n, hist_sum, hist_max, hist_min = UINT64_MAX;

static inline unsigned
hist_index(uint64_t v)
{
    unsigned  msb, shift;

    if (v < SUB) {
        return (unsigned) v;
    }

    msb = 63 - (unsigned) __builtin_clzll(v);
    shift = msb - (SUB_BITS - 1);

    return SUB + (shift - 1) * HALF + (unsigned) ((v >> shift) - HALF);
}

static inline uint64_t
hist_value(unsigned idx)
{
    unsigned  shift;
    uint64_t  lo;

    if (idx < SUB) {
        return idx;
    }

    shift = (idx - SUB) / HALF + 1;
    lo = ((uint64_t) ((idx - SUB) % HALF) + HALF) << shift;
    return lo + ((1ull << shift) >> 1);            /* the bucket's middle */
}

static inline void
hist_record(uint64_t ns)
{
    unsigned  i = hist_index(ns);

    if (i >= NBUCKETS) {
        i = NBUCKETS - 1;
    }
    hist[i]++;
    hist_n++;
    hist_sum += ns;
    if (ns > hist_max) {
        hist_max = ns;
    }
    if (ns < hist_min) {
        hist_min = ns;
    }
}

static uint64_t
hist_pct(double p)
{
    uint64_t  want, acc = 0;
    unsigned  i;

    if (hist_n == 0) {
        return 0;
    }

    want = (uint64_t) (p / 100.0 * (double) hist_n + 0.5);
    if (want < 1) {
        want = 1;
    }

    for (i = 0; i < NBUCKETS; i++) {
        acc += hist[i];
        if (acc >= want) {
            uint64_t v = hist_value(i);
            return v > hist_max ? hist_max : v;
        }
    }

    return hist_max;
}

static inline uint64_t
xrand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* ------------------------------------------------------------------ */
/* /proc sampling */

typedef struct {
    uint64_t  ticks;
    uint64_t  sched_ns;
    long      rss_kb;
} psample_t;

static psample_t    ps0[16], ps1[16];
static struct rusage ru0, ru1;
static uint64_t     sys_busy0, sys_busy1;   /* /proc/stat, all CPUs, ticks */
static uint64_t     sys_irq0, sys_irq1;     /* of which irq + softirq */

static int
read_file(const char *path, char *buf, size_t size)
{
    int      fd;
    ssize_t  n;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    n = read(fd, buf, size - 1);
    close(fd);
    if (n < 0) {
        return -1;
    }
    buf[n] = '\0';
    return (int) n;
}

static void
sample_pid(int pid, psample_t *s)
{
    char         path[64], buf[4096], *p;
    int          field;
    uint64_t     ut = 0, st = 0;

    memset(s, 0, sizeof(*s));

    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    if (read_file(path, buf, sizeof(buf)) > 0 && (p = strrchr(buf, ')'))) {
        /* field 3 (state) follows ") "; utime is 14, stime 15 */
        p += 2;
        for (field = 3; field < 14 && p; field++) {
            p = strchr(p, ' ');
            if (p) {
                p++;
            }
        }
        if (p) {
            ut = strtoull(p, &p, 10);
            st = strtoull(p, &p, 10);
        }
        s->ticks = ut + st;
    }

    snprintf(path, sizeof(path), "/proc/%d/schedstat", pid);
    if (read_file(path, buf, sizeof(buf)) > 0) {
        s->sched_ns = strtoull(buf, NULL, 10);
    }

    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    if (read_file(path, buf, sizeof(buf)) > 0
        && (p = strstr(buf, "VmRSS:")))
    {
        s->rss_kb = strtol(p + 6, NULL, 10);
    }
}

/*
 * Busy ticks of the whole machine: everything but idle and iowait; and
 * the irq + softirq part of them, which no process is charged for (on
 * loopback, much of the TCP receive work).
 */
static uint64_t
sys_busy(uint64_t *irq)
{
    char                buf[512];
    unsigned long long  v[10] = { 0 };

    *irq = 0;

    if (read_file("/proc/stat", buf, sizeof(buf)) <= 0
        || sscanf(buf, "cpu %llu %llu %llu %llu %llu %llu %llu %llu",
                  &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) < 8)
    {
        return 0;
    }

    *irq = v[5] + v[6];
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
}

static void
sample_all(psample_t *s, struct rusage *ru, uint64_t *busy, uint64_t *irq)
{
    for (int i = 0; i < npids; i++) {
        sample_pid(pids[i], &s[i]);
    }
    getrusage(RUSAGE_SELF, ru);
    *busy = sys_busy(irq);
}

static double
tv_s(struct timeval *tv)
{
    return (double) tv->tv_sec + (double) tv->tv_usec / 1e6;
}

/* ------------------------------------------------------------------ */

static void
mark_dirty(conn_t *c)
{
    if (!c->dirty) {
        c->dirty = 1;
        c->next_dirty = dirty;
        dirty = c;
    }
}

static void
conn_set_events(conn_t *c, int out)
{
    struct epoll_event  ev;

    if (c->want_out == out) {
        return;
    }
    c->want_out = out;
    ev.events = EPOLLIN | (out ? EPOLLOUT : 0);
    ev.data.ptr = c;
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void
conn_dead(conn_t *c, const char *why)
{
    if (c->state == C_DEAD) {
        return;
    }

    if (c->state == C_OPEN) {
        n_open--;
        n_closed++;
        if (!first_error[0]) {
            snprintf(first_error, sizeof(first_error),
                     "connection %ld closed: %s", (long) (c - conns), why);
        }
    } else {
        connecting--;
        n_failed++;
        if (!first_error[0]) {
            snprintf(first_error, sizeof(first_error),
                     "connection %ld failed: %s", (long) (c - conns), why);
        }
    }

    c->state = C_DEAD;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
}

/* appends one masked text frame with message id to c->out */
static void
conn_queue_msg(conn_t *c, uint64_t id, uint64_t now)
{
    char            digits[24];
    int             nd;
    size_t          plen, hl;
    unsigned char   h[14], mask[4], *p;
    uint32_t        r32;
    unsigned        slot = (unsigned) (id & RING_MASK);

    nd = snprintf(digits, sizeof(digits), "%llu", (unsigned long long) id);
    plen = 6 + (size_t) nd + 12 + (size_t) msg_size + 2;

    r32 = (uint32_t) xrand();
    memcpy(mask, &r32, 4);
    hl = ws_header(h, WS_OP_TEXT, plen, mask);

    buf_reserve(&c->out, hl + plen);
    p = (unsigned char *) c->out.data + c->out.len;
    memcpy(p, h, hl);
    p += hl;
    memcpy(p, "{\"id\":", 6);
    memcpy(p + 6, digits, (size_t) nd);
    memcpy(p + 6 + nd, ",\"content\":\"", 12);
    memcpy(p + 18 + nd, content, (size_t) msg_size);
    memcpy(p + 18 + nd + msg_size, "\"}", 2);
    ws_mask(p, plen, mask);
    c->out.len += hl + plen;

    /* the low bit of the timestamp says "sent during the measurement" */
    c->ts[slot] = (now & ~1ull) | (phase == P_MEASURE);
    c->ids[slot] = id;
    c->outstanding++;
    all_out++;
    sent++;
    if (phase == P_MEASURE) {
        sent_measured++;
        meas_out++;
    }

    mark_dirty(c);
}

/* queues the next message on c if its ring has room */
static int
conn_send_next(conn_t *c, uint64_t now)
{
    uint64_t  id = c->next_id;

    if (c->ts[id & RING_MASK] != 0) {
        skipped++;                  /* 4096 messages outstanding: give up */
        return 0;
    }

    c->next_id++;
    conn_queue_msg(c, id, now);
    return 1;
}

static void
conn_control(conn_t *c, int opcode, const unsigned char *p, size_t len)
{
    unsigned char   h[14], mask[4];
    uint32_t        r32 = (uint32_t) xrand();
    size_t          hl;

    memcpy(mask, &r32, 4);
    hl = ws_header(h, opcode, len, mask);
    buf_reserve(&c->out, hl + len);
    memcpy(c->out.data + c->out.len, h, hl);
    memcpy(c->out.data + c->out.len + hl, p, len);
    ws_mask((unsigned char *) c->out.data + c->out.len + hl, len, mask);
    c->out.len += hl + len;
    mark_dirty(c);
}

/* the fields of a reply: type (string) and id (integer) */
typedef struct {
    const char  *type;
    size_t       tlen;
    int          has_id;
    uint64_t     id;
    const char  *error;
    size_t       elen;
} reply_t;

static int
reply_member(const char *k, size_t klen, const char *v, const char *vend,
    int depth, void *ud)
{
    reply_t  *r = ud;

    if (vend == NULL || depth != 0) {
        return 0;
    }

    if (KEYIS(k, klen, "type") && *v == '"') {
        r->type = v + 1;
        r->tlen = (size_t) (vend - v) - 2;
    } else if (KEYIS(k, klen, "id")) {
        const char  *q = v;
        uint64_t     id = 0;

        if (*q == '"') {
            q++;
        }
        if (q < vend && isdigit((unsigned char) *q)) {
            while (q < vend && isdigit((unsigned char) *q)) {
                id = id * 10 + (uint64_t) (*q - '0');
                q++;
            }
            r->has_id = 1;
            r->id = id;
        }
    } else if (KEYIS(k, klen, "error") && *v == '"') {
        r->error = v + 1;
        r->elen = (size_t) (vend - v) - 2;
    }

    return 0;
}

static void
complete(conn_t *c, uint64_t id, int ok, uint64_t now)
{
    unsigned  slot = (unsigned) (id & RING_MASK);
    uint64_t  ts;

    if (c->ids[slot] != id || c->ts[slot] == 0) {
        unmatched++;
        return;
    }

    ts = c->ts[slot];
    c->ts[slot] = 0;
    c->outstanding--;
    all_out--;

    if (ok) {
        completed_all++;
    } else {
        errors_all++;
    }

    if (phase == P_MEASURE && ok) {
        completed_window++;         /* error replies are not throughput */
    }

    if (ts & 1) {
        meas_out--;
        if (ok) {
            hist_record(now - (ts & ~1ull));
        }
    }

    if (flood && (phase == P_WARMUP || phase == P_MEASURE)) {
        conn_send_next(c, now);
    }
}

static void
on_text(conn_t *c, const unsigned char *p, size_t len, uint64_t now)
{
    reply_t  r;

    memset(&r, 0, sizeof(r));

    if (json_walk((const char *) p, (const char *) p + len, 0, reply_member,
                  &r) == NULL)
    {
        proto_errors++;
        return;
    }

    if (mode == M_ECHO) {
        if (!r.has_id) {
            other_frames++;
            return;
        }
        complete(c, r.id, 1, now);
        return;
    }

    if (r.type && r.tlen == 8 && memcmp(r.type, "progress", 8) == 0) {
        progress++;
        return;
    }

    if (r.type && r.tlen == 8 && memcmp(r.type, "complete", 8) == 0
        && r.has_id)
    {
        complete(c, r.id, 1, now);
        return;
    }

    if (r.type && r.tlen == 5 && memcmp(r.type, "error", 5) == 0) {
        error_replies++;
        if (!first_error[0]) {
            snprintf(first_error, sizeof(first_error), "error reply: %.*s",
                     (int) (r.elen > 200 ? 200 : r.elen),
                     r.error ? r.error : "");
        }
        if (r.has_id) {
            complete(c, r.id, 0, now);
        }
        return;
    }

    other_frames++;
}

/* every complete frame in c->in */
static void
conn_frames(conn_t *c, uint64_t now)
{
    ws_frame_t      f;
    int             hl;
    unsigned char  *p;
    size_t          avail;

    for (;;) {
        p = (unsigned char *) c->in.data + c->in.off;
        avail = buf_pending(&c->in);

        hl = ws_parse_header(p, avail, &f);
        if (hl == 0) {
            return;
        }
        if (hl < 0 || f.masked || f.len > (64u << 20)) {
            proto_errors++;
            conn_dead(c, "bad frame from the server");
            return;
        }
        if (avail < (size_t) hl + f.len) {
            buf_reserve(&c->in, (size_t) hl + f.len - avail);
            return;
        }

        p += hl;

        switch (f.opcode) {
        case WS_OP_TEXT:
        case WS_OP_BINARY:
            if (f.fin) {
                on_text(c, p, f.len, now);
            } else {
                c->frag_op = f.opcode;
                c->frag.off = c->frag.len = 0;
                buf_append(&c->frag, p, f.len);
            }
            break;
        case WS_OP_CONT:
            buf_append(&c->frag, p, f.len);
            if (f.fin) {
                on_text(c, (unsigned char *) c->frag.data + c->frag.off,
                        buf_pending(&c->frag), now);
                c->frag.off = c->frag.len = 0;
            }
            break;
        case WS_OP_PING:
            conn_control(c, WS_OP_PONG, p, f.len);
            break;
        case WS_OP_PONG:
            break;
        case WS_OP_CLOSE:
            {
                char why[160];
                int  code = f.len >= 2 ? (p[0] << 8 | p[1]) : 0;

                snprintf(why, sizeof(why), "close %d from the server: %.*s",
                         code, (int) (f.len > 2 ? (f.len - 2 > 100 ? 100
                                                   : f.len - 2) : 0),
                         (const char *) p + 2);
                conn_dead(c, why);
            }
            return;
        default:
            proto_errors++;
            conn_dead(c, "unknown opcode");
            return;
        }

        buf_consume(&c->in, (size_t) hl + f.len);
    }
}

static void start_connects(void);

static void
conn_handshake_done(conn_t *c, uint64_t now)
{
    const char  *resp = c->in.data + c->in.off, *e, *v;
    size_t       len = buf_pending(&c->in), hlen, vlen;

    e = memmem(resp, len, "\r\n\r\n", 4);
    if (e == NULL) {
        if (len > 16384) {
            conn_dead(c, "response headers too long");
            start_connects();
        }
        return;
    }
    hlen = (size_t) (e - resp) + 4;

    if (len < 12 || memcmp(resp, "HTTP/1.1 101", 12) != 0) {
        char why[128];

        snprintf(why, sizeof(why), "handshake refused: %.*s",
                 (int) (memchr(resp, '\r', hlen) ? (char *) memchr(resp, '\r',
                        hlen) - resp : 40), resp);
        conn_dead(c, why);
        start_connects();
        return;
    }

    v = http_header(resp, hlen, "Sec-WebSocket-Accept", &vlen);
    if (v == NULL || vlen != strlen(c->accept)
        || memcmp(v, c->accept, vlen) != 0)
    {
        conn_dead(c, "bad Sec-WebSocket-Accept");
        start_connects();
        return;
    }

    buf_consume(&c->in, hlen);
    c->state = C_OPEN;
    connecting--;
    n_open++;

    if (!idle) {
        c->ts = calloc(RING, sizeof(uint64_t));
        c->ids = calloc(RING, sizeof(uint64_t));
        if (c->ts == NULL || c->ids == NULL) {
            die("out of memory");
        }
    }

    start_connects();

    if (buf_pending(&c->in)) {
        conn_frames(c, now);
    }
}

static void
conn_send_handshake(conn_t *c)
{
    unsigned char  key[16];
    char           b64[32], req[512];
    int            n;

    for (int i = 0; i < 16; i += 8) {
        uint64_t r = xrand();
        memcpy(key + i, &r, 8);
    }
    EVP_EncodeBlock((unsigned char *) b64, key, 16);
    ws_accept_key(b64, strlen(b64), c->accept);

    n = snprintf(req, sizeof(req),
                 "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n", path, host, port, b64);
    buf_append(&c->out, req, (size_t) n);
    c->state = C_HANDSHAKE;
    mark_dirty(c);
}

static void
start_connects(void)
{
    struct epoll_event  ev;

    while (next_connect < nconns && connecting < max_connecting) {
        conn_t *c = &conns[next_connect++];
        int     fd, rc;

        fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            c->fd = -1;
            c->state = C_DEAD;
            n_failed++;
            if (!first_error[0]) {
                snprintf(first_error, sizeof(first_error), "socket: %s",
                         strerror(errno));
            }
            continue;
        }

        set_nodelay(fd);
        c->fd = fd;
        c->state = C_CONNECTING;
        c->next_id = 1;
        connecting++;

        ev.events = EPOLLIN | EPOLLOUT;
        ev.data.ptr = c;
        c->want_out = 1;
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);

        rc = connect(fd, (struct sockaddr *) &addr, sizeof(addr));
        if (rc < 0 && errno != EINPROGRESS) {
            conn_dead(c, strerror(errno));
        }
    }
}

static void
conn_read(conn_t *c, uint64_t now)
{
    ssize_t  n;
    size_t   room;
    int      rounds = 0;

    for (;;) {
        buf_reserve(&c->in, 65536);
        room = c->in.cap - c->in.len;
        n = read(c->fd, c->in.data + c->in.len, room);

        if (n > 0) {
            c->in.len += (size_t) n;

            if (c->state == C_HANDSHAKE) {
                conn_handshake_done(c, now);
            } else if (c->state == C_OPEN) {
                conn_frames(c, now);
            }

            if (c->state == C_DEAD || (size_t) n < room || ++rounds >= 4) {
                return;
            }
            continue;
        }

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno == EAGAIN) {
            return;
        }

        conn_dead(c, n == 0 ? "closed by the server" : strerror(errno));
        if (c->state != C_OPEN && phase == P_CONNECT) {
            start_connects();
        }
        return;
    }
}

static void
conn_flush(conn_t *c)
{
    ssize_t  n;

    while (buf_pending(&c->out)) {
        n = write(c->fd, c->out.data + c->out.off, buf_pending(&c->out));
        if (n > 0) {
            buf_consume(&c->out, (size_t) n);
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno == EAGAIN) {
            conn_set_events(c, 1);
            return;
        }
        conn_dead(c, strerror(errno));
        return;
    }

    conn_set_events(c, 0);
}

static void
flush_dirty(void)
{
    conn_t  *c, *next;

    for (c = dirty, dirty = NULL; c; c = next) {
        next = c->next_dirty;
        c->dirty = 0;
        if (c->state == C_HANDSHAKE || c->state == C_OPEN) {
            conn_flush(c);
        }
    }
}

static void
on_event(conn_t *c, uint32_t events, uint64_t now)
{
    if (c->state == C_CONNECTING) {
        int        err = 0;
        socklen_t  sl = sizeof(err);

        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
            return;
        }
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &sl);
        if (err) {
            conn_dead(c, strerror(err));
            start_connects();
            return;
        }
        conn_send_handshake(c);
        return;
    }

    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        conn_read(c, now);
        if (c->state == C_DEAD) {
            return;
        }
    }

    if (events & EPOLLOUT) {
        mark_dirty(c);
    }
}

/* open loop: everything due by now */
static void
schedule(uint64_t now)
{
    int  budget = 100000;

    while (budget-- > 0) {
        uint64_t  due = t_start_send + (uint64_t) ((double) sched_n * period_ns);
        conn_t   *c;

        if (due > now) {
            return;
        }

        c = &conns[sched_n % (uint64_t) nconns];
        sched_n++;

        if (c->state != C_OPEN) {
            skipped++;
            continue;
        }

        if (now - due > 1000000 && phase == P_MEASURE) {
            late++;
        }
        if (now - due > max_lag) {
            max_lag = now - due;
        }

        conn_send_next(c, now);
    }
}

static void
usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s -p PORT [-h HOST] [-u PATH] [-c CONNS]\n"
            "       (-r RATE_PER_CONN | -R RATE_TOTAL | -f [-W WINDOW] | -i)\n"
            "       [-d SECONDS] [-w WARMUP] [-D DRAIN] [-s SIZE]\n"
            "       [-m bridge|echo] [-C CONNECTING] [-P PID,...] [-q]\n",
            prog);
    exit(2);
}

int
main(int argc, char **argv)
{
    int                  opt, i;
    uint64_t             now, next_wake, drain_until = 0;
    struct epoll_event   evs[1024];
    double               window_s, lg_cpu, lat_mean;
    long                 clk_tck = sysconf(_SC_CLK_TCK);

    while ((opt = getopt(argc, argv, "h:p:u:c:r:R:fW:id:w:D:s:m:C:P:q")) != -1)
    {
        switch (opt) {
        case 'h': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'u': path = optarg; break;
        case 'c': nconns = atoi(optarg); break;
        case 'r': rate_conn = atof(optarg); break;
        case 'R': rate_total = atof(optarg); break;
        case 'f': flood = 1; break;
        case 'W': window = atoi(optarg); break;
        case 'i': idle = 1; break;
        case 'd': duration = atof(optarg); break;
        case 'w': warmup = atof(optarg); break;
        case 'D': drain = atof(optarg); break;
        case 's': msg_size = atoi(optarg); break;
        case 'm':
            if (strcmp(optarg, "bridge") == 0) {
                mode = M_BRIDGE;
            } else if (strcmp(optarg, "echo") == 0) {
                mode = M_ECHO;
            } else {
                usage(argv[0]);
            }
            break;
        case 'C': max_connecting = atoi(optarg); break;
        case 'P':
            {
                char *s = optarg, *e;
                while (*s && npids < 16) {
                    pids[npids++] = (int) strtol(s, &e, 10);
                    if (e == s) {
                        usage(argv[0]);
                    }
                    s = *e == ',' ? e + 1 : e;
                }
            }
            break;
        case 'q': quiet = 1; break;
        default: usage(argv[0]);
        }
    }

    if (port <= 0 || nconns <= 0 || msg_size < 0 || window <= 0
        || window >= (int) RING || duration <= 0 || warmup < 0
        || max_connecting <= 0)
    {
        usage(argv[0]);
    }

    if (rate_total < 0 && rate_conn >= 0) {
        rate_total = rate_conn * nconns;
    }
    if (!flood && (rate_total <= 0)) {
        idle = 1;
    }
    if (idle) {
        flood = 0;
    }
    if (!flood && !idle) {
        period_ns = 1e9 / rate_total;
    }

    signal(SIGPIPE, SIG_IGN);
    raise_nofile();

    content = malloc((size_t) msg_size + 1);
    for (i = 0; i < msg_size; i++) {
        content[i] = (char) ('a' + i % 26);
    }

    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t) port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        die("loadgen: -h wants an IPv4 address, got %s", host);
    }

    rng ^= now_ns() ^ ((uint64_t) getpid() << 32);

    conns = calloc((size_t) nconns, sizeof(conn_t));
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (conns == NULL || ep < 0) {
        die("loadgen: setup failed");
    }

    t_connect0 = now_ns();
    start_connects();

    for (;;) {
        struct timespec  to;
        int              n;

        now = now_ns();

        /* phase changes */
        if (phase == P_CONNECT) {
            if (n_open + n_failed + n_closed >= nconns
                && next_connect >= nconns)
            {
                t_connected = now;
                t_start_send = now;
                t_m0 = now + (uint64_t) (warmup * 1e9);
                t_m1 = t_m0 + (uint64_t) (duration * 1e9);
                t_end = t_m1 + (uint64_t) (drain * 1e9);
                phase = P_WARMUP;

                if (!quiet) {
                    fprintf(stderr, "loadgen: %d connected, %d failed in "
                            "%.2f s\n", n_open, n_failed + n_closed,
                            (double) (now - t_connect0) / 1e9);
                }

                if (flood) {
                    for (i = 0; i < nconns; i++) {
                        if (conns[i].state == C_OPEN) {
                            for (int k = 0; k < window; k++) {
                                conn_send_next(&conns[i], now);
                            }
                        }
                    }
                }
            } else if (now - t_connect0 > 60000000000ull) {
                die("loadgen: connections not established within 60 s "
                    "(%d open, %d failed)", n_open, n_failed);
            }
        }

        if (phase == P_WARMUP && now >= t_m0) {
            sample_all(ps0, &ru0, &sys_busy0, &sys_irq0);
            t_m0 = now;                 /* the window starts at the sample */
            t_m1 = t_m0 + (uint64_t) (duration * 1e9);
            t_end = t_m1 + (uint64_t) (drain * 1e9);
            phase = P_MEASURE;
        }

        if (phase == P_MEASURE && now >= t_m1) {
            sample_all(ps1, &ru1, &sys_busy1, &sys_irq1);
            t_m1 = now;
            phase = P_DRAIN;
            drain_until = idle ? now : t_end;
        }

        if (phase == P_DRAIN) {
            if (now >= drain_until || all_out == 0) {
                phase = P_DONE;
                break;
            }
        }

        if (!idle && !flood && (phase == P_WARMUP || phase == P_MEASURE)) {
            schedule(now);
        }

        flush_dirty();

        /* sleep until the next send, phase change or event */
        next_wake = now + 100000000ull;
        if (phase == P_WARMUP && t_m0 < next_wake) {
            next_wake = t_m0;
        }
        if (phase == P_MEASURE && t_m1 < next_wake) {
            next_wake = t_m1;
        }
        if (!idle && !flood && (phase == P_WARMUP || phase == P_MEASURE)) {
            uint64_t due = t_start_send + (uint64_t) ((double) sched_n
                                                      * period_ns);
            if (due < next_wake) {
                next_wake = due;
            }
        }
        now = now_ns();
        if (next_wake <= now) {
            to.tv_sec = 0;
            to.tv_nsec = 0;
        } else {
            to.tv_sec = (time_t) ((next_wake - now) / 1000000000ull);
            to.tv_nsec = (long) ((next_wake - now) % 1000000000ull);
        }

        n = epoll_pwait2(ep, evs, 1024, &to, NULL);
        if (n < 0 && errno != EINTR) {
            die("epoll_pwait2: %s", strerror(errno));
        }

        for (i = 0; i < n; i++) {
            on_event(evs[i].data.ptr, evs[i].events, now_ns());
        }
    }

    /* ---------------------------------------------------------------- */

    window_s = (double) (t_m1 - t_m0) / 1e9;
    lg_cpu = tv_s(&ru1.ru_utime) + tv_s(&ru1.ru_stime)
             - tv_s(&ru0.ru_utime) - tv_s(&ru0.ru_stime);
    lat_mean = hist_n ? (double) hist_sum / (double) hist_n / 1e3 : 0;

    {
        uint64_t  lost = meas_out;

        printf("RESULT mode=%s conns=%d connected=%d connect_failed=%d "
               "closed=%d connect_s=%.3f load=%s rate_total=%.0f window=%d "
               "msg_size=%d warmup_s=%.2f measure_s=%.3f sent=%llu "
               "sent_measured=%llu completed=%llu throughput=%.1f "
               "lat_count=%llu p50_us=%.1f p90_us=%.1f p99_us=%.1f "
               "p999_us=%.1f max_us=%.1f min_us=%.1f mean_us=%.1f "
               "error_replies=%llu lost=%llu skipped=%llu late=%llu "
               "max_lag_us=%.1f progress=%llu unmatched=%llu other=%llu "
               "proto_errors=%llu loadgen_cpu_s=%.3f loadgen_cpu_pct=%.1f "
               "machine_cpu_pct=%.1f irq_cpu_pct=%.1f ncpu=%ld clk_tck=%ld "
               "completed_all=%llu errors_all=%llu unanswered=%llu",
               mode == M_ECHO ? "echo" : "bridge", nconns, n_open,
               n_failed, n_closed, (double) (t_connected - t_connect0) / 1e9,
               idle ? "idle" : flood ? "flood" : "rate",
               flood || idle ? 0.0 : rate_total, flood ? window : 0,
               msg_size, warmup, window_s,
               (unsigned long long) sent, (unsigned long long) sent_measured,
               (unsigned long long) completed_window,
               (double) completed_window / window_s,
               (unsigned long long) hist_n,
               hist_pct(50) / 1e3, hist_pct(90) / 1e3, hist_pct(99) / 1e3,
               hist_pct(99.9) / 1e3, hist_max / 1e3,
               hist_n ? hist_min / 1e3 : 0.0, lat_mean,
               (unsigned long long) error_replies, (unsigned long long) lost,
               (unsigned long long) skipped, (unsigned long long) late,
               max_lag / 1e3, (unsigned long long) progress,
               (unsigned long long) unmatched,
               (unsigned long long) other_frames,
               (unsigned long long) proto_errors, lg_cpu,
               lg_cpu / window_s * 100.0,
               (double) (sys_busy1 - sys_busy0) / (double) clk_tck / window_s
               * 100.0,
               (double) (sys_irq1 - sys_irq0) / (double) clk_tck / window_s
               * 100.0, sysconf(_SC_NPROCESSORS_ONLN), clk_tck,
               (unsigned long long) completed_all,
               (unsigned long long) errors_all,
               (unsigned long long) all_out);

        for (i = 0; i < npids; i++) {
            double cpu_s = (double) (ps1[i].ticks - ps0[i].ticks)
                           / (double) clk_tck;

            printf(" pid%d=%d cpu%d_ticks=%llu cpu%d_s=%.3f cpu%d_pct=%.1f "
                   "sched%d_s=%.4f rss%d_kb=%ld rss%d_start_kb=%ld",
                   i, pids[i], i,
                   (unsigned long long) (ps1[i].ticks - ps0[i].ticks),
                   i, cpu_s, i, cpu_s / window_s * 100.0,
                   i, (double) (ps1[i].sched_ns - ps0[i].sched_ns) / 1e9,
                   i, ps1[i].rss_kb, i, ps0[i].rss_kb);
        }

        printf("\n");
        fflush(stdout);

        if (!quiet) {
            fprintf(stderr,
                    "loadgen: %s %s, %d/%d connections, %.1f s measured\n"
                    "  completed %llu (%.0f msg/s), sent %llu in window\n"
                    "  whole run: sent %llu, completed %llu, error replies "
                    "%llu, unanswered %llu\n"
                    "  latency us: p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f"
                    "  max %.1f  (n=%llu)\n"
                    "  errors: replies %llu, lost %llu, skipped %llu, "
                    "closed %d, failed %d, protocol %llu, unmatched %llu\n"
                    "  late sends %llu (max lag %.1f us), loadgen CPU %.1f%%\n",
                    mode == M_ECHO ? "echo" : "bridge",
                    idle ? "idle" : flood ? "flood" : "open loop",
                    n_open, nconns, window_s,
                    (unsigned long long) completed_window,
                    (double) completed_window / window_s,
                    (unsigned long long) sent_measured,
                    (unsigned long long) sent,
                    (unsigned long long) completed_all,
                    (unsigned long long) errors_all,
                    (unsigned long long) all_out,
                    hist_pct(50) / 1e3, hist_pct(90) / 1e3, hist_pct(99) / 1e3,
                    hist_pct(99.9) / 1e3, hist_max / 1e3,
                    (unsigned long long) hist_n,
                    (unsigned long long) error_replies,
                    (unsigned long long) lost, (unsigned long long) skipped,
                    n_closed, n_failed, (unsigned long long) proto_errors,
                    (unsigned long long) unmatched, (unsigned long long) late,
                    max_lag / 1e3, lg_cpu / window_s * 100.0);
            for (i = 0; i < npids; i++) {
                fprintf(stderr, "  pid %d: CPU %.1f%%, VmRSS %ld kB\n",
                        pids[i],
                        (double) (ps1[i].ticks - ps0[i].ticks)
                        / (double) clk_tck / window_s * 100.0,
                        ps1[i].rss_kb);
            }
            if (first_error[0]) {
                fprintf(stderr, "  first error: %s\n", first_error);
            }
        }
    }

    return 0;
}
