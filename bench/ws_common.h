/*
 * Shared helpers of the benchmark programs (loadgen, fakegw, echo):
 * clocks, growable buffers, WebSocket framing, the handshake's accept key,
 * and a small single-threaded epoll WebSocket *server* used by fakegw and
 * echo.  Header-only (static functions) so that each program is one `cc`.
 */

#ifndef BENCH_WS_COMMON_H
#define BENCH_WS_COMMON_H

#pragma GCC diagnostic ignored "-Wunused-function"

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#define WS_OP_CONT   0x0
#define WS_OP_TEXT   0x1
#define WS_OP_BINARY 0x2
#define WS_OP_CLOSE  0x8
#define WS_OP_PING   0x9
#define WS_OP_PONG   0xa

#define likely(x)   __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

static void
die(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

static inline uint64_t
now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000000ull + (uint64_t) ts.tv_nsec;
}

static inline uint64_t
wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t) ts.tv_sec * 1000ull + (uint64_t) ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------------ */
/* buffers: data[off..len) is unconsumed */

typedef struct {
    char    *data;
    size_t   off;
    size_t   len;
    size_t   cap;
} buf_t;

static inline void
buf_reserve(buf_t *b, size_t more)
{
    size_t  need, cap;

    if (b->len + more <= b->cap) {
        return;
    }

    /* compact first: consumed bytes at the front are dead */
    if (b->off) {
        memmove(b->data, b->data + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;

        if (b->len + more <= b->cap) {
            return;
        }
    }

    need = b->len + more;
    cap = b->cap ? b->cap : 4096;

    while (cap < need) {
        cap *= 2;
    }

    b->data = realloc(b->data, cap);
    if (b->data == NULL) {
        die("out of memory");
    }

    b->cap = cap;
}

static inline void
buf_append(buf_t *b, const void *p, size_t n)
{
    buf_reserve(b, n);
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static inline size_t
buf_pending(const buf_t *b)
{
    return b->len - b->off;
}

static inline void
buf_consume(buf_t *b, size_t n)
{
    b->off += n;

    if (b->off == b->len) {
        b->off = 0;
        b->len = 0;
    }
}

static inline void
buf_free(buf_t *b)
{
    free(b->data);
    memset(b, 0, sizeof(*b));
}

/* ------------------------------------------------------------------ */
/* sockets */

static void
set_nonblock(int fd)
{
    int  fl = fcntl(fd, F_GETFL);

    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static void
set_nodelay(int fd)
{
    int  one = 1;

    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static void
raise_nofile(void)
{
    struct rlimit  rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int
listen_on(const char *host, int port)
{
    int                 fd, one = 1;
    struct sockaddr_in  sin;

    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        die("socket: %s", strerror(errno));
    }

    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));

    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t) port);

    if (inet_pton(AF_INET, host, &sin.sin_addr) != 1) {
        die("bad address %s", host);
    }

    if (bind(fd, (struct sockaddr *) &sin, sizeof(sin)) < 0) {
        die("bind %s:%d: %s", host, port, strerror(errno));
    }

    if (listen(fd, 4096) < 0) {
        die("listen: %s", strerror(errno));
    }

    return fd;
}

/* ------------------------------------------------------------------ */
/* WebSocket bits */

/* base64(SHA1(key + GUID)) into out (at least 29 bytes) */
static void
ws_accept_key(const char *key, size_t klen, char *out)
{
    static const char   guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    unsigned char       md[EVP_MAX_MD_SIZE];
    unsigned int        mdlen = 0;
    EVP_MD_CTX         *ctx;

    ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha1(), NULL);
    EVP_DigestUpdate(ctx, key, klen);
    EVP_DigestUpdate(ctx, guid, sizeof(guid) - 1);
    EVP_DigestFinal_ex(ctx, md, &mdlen);
    EVP_MD_CTX_free(ctx);

    EVP_EncodeBlock((unsigned char *) out, md, (int) mdlen);
}

/* writes a frame header (server: no mask; client: mask given) */
static inline size_t
ws_header(unsigned char *h, int opcode, uint64_t len, const unsigned char *mask)
{
    size_t  n = 0;

    h[n++] = (unsigned char) (0x80 | opcode);

    if (len < 126) {
        h[n++] = (unsigned char) len;
    } else if (len < 65536) {
        h[n++] = 126;
        h[n++] = (unsigned char) (len >> 8);
        h[n++] = (unsigned char) len;
    } else {
        h[n++] = 127;
        for (int i = 7; i >= 0; i--) {
            h[n++] = (unsigned char) (len >> (i * 8));
        }
    }

    if (mask) {
        h[1] |= 0x80;
        memcpy(h + n, mask, 4);
        n += 4;
    }

    return n;
}

/* XOR with a 4-byte mask starting at mask phase 0 */
static inline void
ws_mask(unsigned char *p, size_t len, const unsigned char *mask)
{
    uint32_t  m32;
    uint64_t  m64;
    size_t    i = 0;

    memcpy(&m32, mask, 4);
    m64 = ((uint64_t) m32 << 32) | m32;

    for (; i + 8 <= len; i += 8) {
        uint64_t  v;

        memcpy(&v, p + i, 8);
        v ^= m64;
        memcpy(p + i, &v, 8);
    }

    for (; i < len; i++) {
        p[i] ^= mask[i & 3];
    }
}

/* appends an unmasked (server) frame */
static inline void
ws_append_server_frame(buf_t *b, int opcode, const void *p, size_t len)
{
    unsigned char  h[14];
    size_t         hl;

    hl = ws_header(h, opcode, len, NULL);
    buf_reserve(b, hl + len);
    memcpy(b->data + b->len, h, hl);
    if (len) {
        memcpy(b->data + b->len + hl, p, len);
    }
    b->len += hl + len;
}

/*
 * Parses one frame header at p (avail bytes).  Returns the header size, 0
 * when more bytes are needed, -1 on a bad frame.
 */
typedef struct {
    int             fin;
    int             opcode;
    int             masked;
    unsigned char   mask[4];
    uint64_t        len;
} ws_frame_t;

static inline int
ws_parse_header(const unsigned char *p, size_t avail, ws_frame_t *f)
{
    size_t    n = 2;
    uint64_t  len;

    if (avail < 2) {
        return 0;
    }

    if (p[0] & 0x70) {
        return -1;                  /* RSV bits: no extension negotiated */
    }

    f->fin = p[0] >> 7;
    f->opcode = p[0] & 0x0f;
    f->masked = p[1] >> 7;
    len = p[1] & 0x7f;

    if (len == 126) {
        if (avail < 4) {
            return 0;
        }
        len = ((uint64_t) p[2] << 8) | p[3];
        n = 4;
    } else if (len == 127) {
        if (avail < 10) {
            return 0;
        }
        len = 0;
        for (int i = 0; i < 8; i++) {
            len = (len << 8) | p[2 + i];
        }
        n = 10;
    }

    if (f->masked) {
        if (avail < n + 4) {
            return 0;
        }
        memcpy(f->mask, p + n, 4);
        n += 4;
    }

    f->len = len;
    return (int) n;
}

/* case-insensitive search of a header's value in a raw request/response */
static const char *
http_header(const char *hdrs, size_t len, const char *name, size_t *vlen)
{
    size_t       nl = strlen(name);
    const char  *p = hdrs, *end = hdrs + len, *eol, *v;

    while (p < end) {
        eol = memchr(p, '\n', (size_t) (end - p));
        if (eol == NULL) {
            eol = end;
        }

        if ((size_t) (eol - p) > nl && p[nl] == ':'
            && strncasecmp(p, name, nl) == 0)
        {
            v = p + nl + 1;
            while (v < eol && (*v == ' ' || *v == '\t')) {
                v++;
            }
            const char *ve = eol;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ')) {
                ve--;
            }
            *vlen = (size_t) (ve - v);
            return v;
        }

        p = eol + 1;
    }

    return NULL;
}

/* ------------------------------------------------------------------ */
/* JSON scanning without a JSON library */

static inline const char *
json_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) {
        p++;
    }
    return p;
}

/* p at the opening quote; returns the position after the closing quote */
static inline const char *
json_skip_string(const char *p, const char *end)
{
    p++;

    while (p < end) {
        const char *q = memchr(p, '"', (size_t) (end - p));
        const char *s;
        size_t      bs = 0;

        if (q == NULL) {
            return NULL;
        }

        /* an odd number of backslashes before it escapes it */
        for (s = q; s > p && s[-1] == '\\'; s--) {
            bs++;
        }

        if ((bs & 1) == 0) {
            return q + 1;
        }

        p = q + 1;
    }

    return NULL;
}

/* skips any value; returns the position after it, NULL if malformed */
static const char *
json_skip_value(const char *p, const char *end)
{
    int  depth = 0;

    p = json_ws(p, end);
    if (p >= end) {
        return NULL;
    }

    if (*p == '"') {
        return json_skip_string(p, end);
    }

    if (*p != '{' && *p != '[') {
        while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' '
               && *p != '\n' && *p != '\r' && *p != '\t')
        {
            p++;
        }
        return p;
    }

    while (p < end) {
        switch (*p) {
        case '"':
            p = json_skip_string(p, end);
            if (p == NULL) {
                return NULL;
            }
            continue;
        case '{':
        case '[':
            depth++;
            break;
        case '}':
        case ']':
            if (--depth == 0) {
                return p + 1;
            }
            break;
        }
        p++;
    }

    return NULL;
}

/*
 * Walks the members of the object at p, calling cb(key, klen, value,
 * vend, depth, ud) for each; descends into object values when cb returns
 * 1.  Key spans exclude the quotes; value spans are raw JSON (strings
 * keep their quotes).  Returns the position after the object or NULL.
 */
typedef int (*json_member_cb)(const char *k, size_t klen, const char *v,
    const char *vend, int depth, void *ud);

static const char *
json_walk(const char *p, const char *end, int depth, json_member_cb cb,
    void *ud)
{
    const char  *k, *ke, *v, *ve;

    p = json_ws(p, end);
    if (p >= end || *p != '{') {
        return NULL;
    }
    p = json_ws(p + 1, end);

    if (p < end && *p == '}') {
        return p + 1;
    }

    while (p < end) {
        if (*p != '"') {
            return NULL;
        }
        k = p + 1;
        ke = json_skip_string(p, end);
        if (ke == NULL) {
            return NULL;
        }
        p = json_ws(ke, end);
        if (p >= end || *p != ':') {
            return NULL;
        }
        v = json_ws(p + 1, end);
        if (v >= end) {
            return NULL;
        }

        if (*v == '{' && cb(k, (size_t) (ke - 1 - k), v, NULL, depth, ud)) {
            ve = json_walk(v, end, depth + 1, cb, ud);
        } else {
            ve = json_skip_value(v, end);
            if (ve) {
                cb(k, (size_t) (ke - 1 - k), v, ve, depth, ud);
            }
        }

        if (ve == NULL) {
            return NULL;
        }

        p = json_ws(ve, end);
        if (p < end && *p == ',') {
            p = json_ws(p + 1, end);
            continue;
        }
        if (p < end && *p == '}') {
            return p + 1;
        }
        return NULL;
    }

    return NULL;
}

#define KEYIS(k, klen, lit) \
    ((klen) == sizeof(lit) - 1 && memcmp((k), (lit), sizeof(lit) - 1) == 0)

/* ------------------------------------------------------------------ */
/* a tiny epoll WebSocket server (fakegw, echo) */

typedef struct srv_conn_s srv_conn_t;

struct srv_conn_s {
    int             fd;
    int             open;        /* past the HTTP upgrade */
    int             closing;     /* close frame sent: drop after the flush */
    int             want_out;    /* EPOLLOUT registered */
    int             dirty;       /* on the flush list */
    int             stalled;     /* not reading: too much output pending */
    buf_t           in;
    buf_t           out;
    buf_t           frag;        /* a fragmented message being reassembled */
    int             frag_op;
    srv_conn_t     *next_dirty;
    void           *data;        /* the program's per-connection state */
    uint64_t        n;           /* connection number */
};

typedef struct {
    int             ep;
    int             lfd;
    srv_conn_t     *dirty;
    uint64_t        nconn;
    uint64_t        frames_in;
    uint64_t        frames_out;
    size_t          max_out;     /* stop reading a connection above this */
    int             require_mask;
    /* callbacks */
    void          (*on_open)(srv_conn_t *c);
    void          (*on_message)(srv_conn_t *c, int opcode, unsigned char *p,
                                size_t len);
    void          (*on_close)(srv_conn_t *c);
} srv_t;

static srv_t  srv;

static inline void
srv_mark_dirty(srv_conn_t *c)
{
    if (!c->dirty) {
        c->dirty = 1;
        c->next_dirty = srv.dirty;
        srv.dirty = c;
    }
}

static inline void
srv_send(srv_conn_t *c, int opcode, const void *p, size_t len)
{
    ws_append_server_frame(&c->out, opcode, p, len);
    srv.frames_out++;
    srv_mark_dirty(c);
}

static void
srv_close(srv_conn_t *c)
{
    if (srv.on_close) {
        srv.on_close(c);
    }
    epoll_ctl(srv.ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    buf_free(&c->in);
    buf_free(&c->out);
    buf_free(&c->frag);
    /* freed by the next flush pass: events of this batch may still name it */
    srv_mark_dirty(c);
}

static void
srv_update_events(srv_conn_t *c)
{
    struct epoll_event  ev;
    int                 want = buf_pending(&c->out) > 0;

    if (want == c->want_out && !c->stalled) {
        return;
    }

    c->want_out = want;
    ev.events = (c->stalled ? 0 : EPOLLIN) | (want ? EPOLLOUT : 0);
    ev.data.ptr = c;
    epoll_ctl(srv.ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* returns -1 when the connection was closed */
static int
srv_flush(srv_conn_t *c)
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
            break;
        }
        return -1;
    }

    if (c->closing && buf_pending(&c->out) == 0) {
        return -1;
    }

    if (c->stalled && buf_pending(&c->out) < srv.max_out / 2) {
        struct epoll_event  ev;

        c->stalled = 0;
        c->want_out = buf_pending(&c->out) > 0;
        ev.events = EPOLLIN | (c->want_out ? EPOLLOUT : 0);
        ev.data.ptr = c;
        epoll_ctl(srv.ep, EPOLL_CTL_MOD, c->fd, &ev);
        return 0;
    }

    if (!c->stalled && buf_pending(&c->out) > srv.max_out) {
        struct epoll_event  ev;

        c->stalled = 1;
        c->want_out = 1;
        ev.events = EPOLLOUT;
        ev.data.ptr = c;
        epoll_ctl(srv.ep, EPOLL_CTL_MOD, c->fd, &ev);
        return 0;
    }

    srv_update_events(c);
    return 0;
}

static void
srv_flush_dirty(void)
{
    srv_conn_t  *c, *next;

    for (c = srv.dirty, srv.dirty = NULL; c; c = next) {
        next = c->next_dirty;
        c->dirty = 0;

        if (c->fd < 0) {
            free(c);
            continue;
        }

        if (srv_flush(c) < 0) {
            srv_close(c);
        }
    }
}

/* the HTTP upgrade; returns 1 done, 0 more needed, -1 bad */
static int
srv_handshake(srv_conn_t *c)
{
    const char  *req = c->in.data + c->in.off;
    size_t       len = buf_pending(&c->in), klen, hlen;
    const char  *e, *key;
    char         accept[64], resp[256];
    int          n;

    e = memmem(req, len, "\r\n\r\n", 4);
    if (e == NULL) {
        return len > 65536 ? -1 : 0;
    }
    hlen = (size_t) (e - req) + 4;

    key = http_header(req, hlen, "Sec-WebSocket-Key", &klen);
    if (key == NULL || klen == 0 || klen > 40) {
        static const char  bad[] = "HTTP/1.1 400 Bad Request\r\n"
                                   "Content-Length: 0\r\n"
                                   "Connection: close\r\n\r\n";
        buf_append(&c->out, bad, sizeof(bad) - 1);
        c->closing = 1;
        srv_mark_dirty(c);
        return -1;
    }

    ws_accept_key(key, klen, accept);

    n = snprintf(resp, sizeof(resp), "HTTP/1.1 101 Switching Protocols\r\n"
                 "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Accept: %s\r\n\r\n", accept);
    buf_append(&c->out, resp, (size_t) n);
    buf_consume(&c->in, hlen);
    c->open = 1;
    srv_mark_dirty(c);

    if (srv.on_open) {
        srv.on_open(c);
    }

    return 1;
}

/* processes every complete frame in c->in; -1: close the connection */
static int
srv_frames(srv_conn_t *c)
{
    ws_frame_t      f;
    int             hl;
    unsigned char  *p;
    size_t          avail;

    for (;;) {
        if (c->closing) {
            buf_consume(&c->in, buf_pending(&c->in));
            return 0;
        }

        p = (unsigned char *) c->in.data + c->in.off;
        avail = buf_pending(&c->in);

        hl = ws_parse_header(p, avail, &f);
        if (hl == 0) {
            return 0;
        }
        if (hl < 0 || (srv.require_mask && !f.masked)
            || f.len > (64u << 20))
        {
            return -1;
        }
        if (avail < (size_t) hl + f.len) {
            buf_reserve(&c->in, (size_t) hl + f.len - avail);
            return 0;
        }

        p += hl;
        if (f.masked) {
            ws_mask(p, f.len, f.mask);
        }

        srv.frames_in++;

        switch (f.opcode) {
        case WS_OP_TEXT:
        case WS_OP_BINARY:
            if (f.fin) {
                srv.on_message(c, f.opcode, p, f.len);
            } else {
                c->frag_op = f.opcode;
                c->frag.off = c->frag.len = 0;
                buf_append(&c->frag, p, f.len);
            }
            break;
        case WS_OP_CONT:
            buf_append(&c->frag, p, f.len);
            if (f.fin) {
                srv.on_message(c, c->frag_op,
                               (unsigned char *) c->frag.data + c->frag.off,
                               buf_pending(&c->frag));
                c->frag.off = c->frag.len = 0;
            }
            break;
        case WS_OP_PING:
            srv_send(c, WS_OP_PONG, p, f.len);
            break;
        case WS_OP_PONG:
            break;
        case WS_OP_CLOSE:
            srv_send(c, WS_OP_CLOSE, p, f.len >= 2 ? 2 : 0);
            c->closing = 1;
            break;
        default:
            return -1;
        }

        buf_consume(&c->in, (size_t) hl + f.len);
    }
}

static void
srv_read(srv_conn_t *c)
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

            if (!c->open) {
                int rc = srv_handshake(c);
                if (rc < 0) {
                    if (!c->closing) {
                        srv_close(c);
                    }
                    return;
                }
                if (rc == 0) {
                    continue;
                }
            }

            if (srv_frames(c) < 0) {
                srv_close(c);
                return;
            }

            /* let other connections have their turn; level-triggered */
            if (++rounds >= 4 || (size_t) n < room) {
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

        srv_close(c);
        return;
    }
}

static void
srv_accept(void)
{
    struct epoll_event  ev;
    srv_conn_t         *c;
    int                 fd;

    for (;;) {
        fd = accept4(srv.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            return;
        }

        set_nodelay(fd);

        c = calloc(1, sizeof(*c));
        if (c == NULL) {
            die("out of memory");
        }
        c->fd = fd;
        c->n = ++srv.nconn;

        ev.events = EPOLLIN;
        ev.data.ptr = c;
        epoll_ctl(srv.ep, EPOLL_CTL_ADD, fd, &ev);
    }
}

static volatile sig_atomic_t  srv_stop;

static void
srv_on_signal(int sig)
{
    (void) sig;
    srv_stop = 1;
}

static void
srv_init(const char *host, int port)
{
    struct epoll_event  ev;

    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, srv_on_signal);
    signal(SIGINT, srv_on_signal);
    raise_nofile();

    if (srv.max_out == 0) {
        srv.max_out = 64u << 20;
    }

    srv.ep = epoll_create1(EPOLL_CLOEXEC);
    srv.lfd = listen_on(host, port);

    ev.events = EPOLLIN;
    ev.data.ptr = NULL;
    epoll_ctl(srv.ep, EPOLL_CTL_ADD, srv.lfd, &ev);
}

/* one loop iteration: wait, read everything ready, flush once */
static void
srv_poll(int timeout_ms)
{
    struct epoll_event  evs[512];
    int                 n, i;

    n = epoll_wait(srv.ep, evs, 512, timeout_ms);

    for (i = 0; i < n; i++) {
        srv_conn_t *c = evs[i].data.ptr;

        if (c == NULL) {
            srv_accept();
            continue;
        }

        if (c->fd < 0) {
            continue;
        }

        if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
            srv_read(c);
            if (c->fd < 0) {
                continue;
            }
        }

        if (evs[i].events & EPOLLOUT) {
            srv_mark_dirty(c);
        }
    }

    srv_flush_dirty();
}

#endif /* BENCH_WS_COMMON_H */
