
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * Unit tests of the RFC 6455 frame codec, printing TAP.
 *
 * Expectations come from RFC 6455 and RFC 3629, never from the codec's
 * output: frames are built here by code that shares nothing with the
 * codec, and every parser case is fed whole, one byte at a time and in
 * seeded random chunks, since a resumable parser must not care how reads
 * split the stream.
 *
 * Build: cc -std=gnu99 -W -Wall -Wextra -Werror -Isrc
 *            src/ngx_http_openclaw_ws.c t/unit/ws_codec_test.c -lcrypto
 */


#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tap.h"
#include <openssl/evp.h>

#include "ngx_http_openclaw_ws.h"


#define T_AGAIN         NGX_HTTP_OPENCLAW_WS_AGAIN
#define T_DATA          NGX_HTTP_OPENCLAW_WS_DATA
#define T_CONTROL       NGX_HTTP_OPENCLAW_WS_CONTROL
#define T_ERROR         NGX_HTTP_OPENCLAW_WS_ERROR

/* RFC 6455 5.2, spelt out again so that the header is checked too */
#define OP_CONT         0x0
#define OP_TEXT         0x1
#define OP_BINARY       0x2
#define OP_CLOSE        0x8
#define OP_PING         0x9
#define OP_PONG         0xa

#define FIN             0x80
#define RSV1            0x40
#define RSV2            0x20
#define RSV3            0x10

#define MASKED          1
#define UNMASKED        0

#define SERVER          1
#define CLIENT          0

#define FEED_WHOLE      0
#define FEED_BYTES      1
#define FEED_RANDOM     2

#define RANDOM_SEEDS    4



typedef struct {
    uint8_t                    *data;
    size_t                      len;
    size_t                      size;
} buf_t;


/* an event after DATA runs of one message have been joined */

typedef struct {
    int                         rc;
    unsigned                    opcode;
    unsigned                    code;
    unsigned                    first;
    unsigned                    last;
    uint8_t                    *data;
    size_t                      len;
    size_t                      size;
    size_t                      fed;
} tev_t;


typedef struct {
    tev_t                      *ev;
    size_t                      nev;
    size_t                      size;
    unsigned                    open:1;
    unsigned                    over:1;
    char                        err[200];
} trace_t;


typedef struct {
    int                         rc;
    unsigned                    opcode;
    unsigned                    code;
    unsigned                    first;
    unsigned                    last;
    const uint8_t              *data;
    size_t                      len;
    size_t                      at;
} exp_t;


#define U_VALID         0
#define U_INVALID       1
#define U_TRUNCATED     2

typedef struct {
    const char                 *name;
    const char                 *s;
    size_t                      len;
    int                         kind;
    size_t                      bad_at;
} utf8_case_t;


static uint64_t  key_seed = 0x9e3779b97f4a7c15ULL;


static int PRINTF_LIKE(3, 4)
is(unsigned long long got, unsigned long long expected, const char *fmt,
    ...)
{
    int      rc;
    va_list  args;

    va_start(args, fmt);
    rc = vok(got == expected, fmt, args);
    va_end(args);

    if (!rc) {
        diag("got %llu, expected %llu", got, expected);
    }

    return rc;
}


static void
hexdump(const char *label, const uint8_t *p, size_t len)
{
    char    line[3 * 32 + 8];
    size_t  i, n;

    n = 0;

    for (i = 0; i < len && i < 32; i++) {
        n += (size_t) snprintf(line + n, sizeof(line) - n, " %02x", p[i]);
    }

    diag("%s (%zu bytes):%s%s", label, len, line, len > 32 ? " ..." : "");
}


static int PRINTF_LIKE(5, 6)
is_mem(const uint8_t *got, size_t glen, const uint8_t *expected, size_t elen,
    const char *fmt, ...)
{
    int      rc;
    va_list  args;

    va_start(args, fmt);
    rc = vok(glen == elen && (elen == 0 || memcmp(got, expected, elen) == 0),
             fmt, args);
    va_end(args);

    if (!rc) {
        hexdump("got", got, glen);
        hexdump("expected", expected, elen);
    }

    return rc;
}


static void
bail_out(const char *why)
{
    printf("Bail out! %s\n", why);
    exit(255);
}


static void *
xalloc(size_t size)
{
    void  *p;

    p = malloc(size ? size : 1);
    if (p == NULL) {
        bail_out("out of memory");
    }

    return p;
}


/* xorshift64*: fixed seeds keep a failing split reproducible */

static uint64_t
rnd(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;

    return *s * 0x2545f4914f6cdd1dULL;
}


static void
buf_put(buf_t *b, const void *p, size_t n)
{
    if (b->len + n > b->size) {
        b->size = (b->len + n) * 2 + 64;
        b->data = realloc(b->data, b->size);
        if (b->data == NULL) {
            bail_out("out of memory");
        }
    }

    if (n) {
        memcpy(b->data + b->len, p, n);
    }

    b->len += n;
}


static void
buf_free(buf_t *b)
{
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->size = 0;
}


/*
 * Appends a frame header; "form" forces the length encoding (7, 16 or 64
 * bits), 0 picks the minimal one.  "b0" is the first byte as sent: FIN,
 * RSV and opcode.
 */

static void
put_header(buf_t *b, unsigned b0, int masked, int form, uint64_t len,
    uint8_t *key)
{
    int      i, n;
    uint8_t  h[14];

    if (form == 0) {
        form = (len < 126) ? 7 : (len < 65536) ? 16 : 64;
    }

    h[0] = (uint8_t) b0;

    if (form == 7) {
        h[1] = (uint8_t) len;
        n = 2;

    } else if (form == 16) {
        h[1] = 126;
        h[2] = (uint8_t) (len >> 8);
        h[3] = (uint8_t) len;
        n = 4;

    } else {
        h[1] = 127;
        for (i = 0; i < 8; i++) {
            h[2 + i] = (uint8_t) (len >> (56 - 8 * i));
        }
        n = 10;
    }

    if (masked) {
        h[1] |= 0x80;

        /* a key with no zero byte, so that an unmasking slip shows */

        for (i = 0; i < 4; i++) {
            key[i] = (uint8_t) (rnd(&key_seed) >> 56) | 0x01;
            h[n++] = key[i];
        }
    }

    buf_put(b, h, (size_t) n);
}


static void
put_payload(buf_t *b, const void *payload, size_t len, int masked,
    const uint8_t *key)
{
    size_t          i;
    uint8_t         c;
    const uint8_t  *p;

    p = payload;

    for (i = 0; i < len; i++) {
        c = masked ? (uint8_t) (p[i] ^ key[i % 4]) : p[i];
        buf_put(b, &c, 1);
    }
}


static void
put_frame(buf_t *b, unsigned b0, int masked, const void *payload, size_t len)
{
    uint8_t  key[4];

    put_header(b, b0, masked, 0, len, key);
    put_payload(b, payload, len, masked, key);
}


/* a close frame body: 16-bit code then the reason (RFC 6455 5.5.1) */

static size_t
close_body(uint8_t *out, unsigned code, const char *reason, size_t len)
{
    out[0] = (uint8_t) (code >> 8);
    out[1] = (uint8_t) code;
    memcpy(out + 2, reason, len);

    return 2 + len;
}


/*
 * Fills "out" with exactly "len" bytes of valid UTF-8 mixing all sequence
 * lengths and their boundary code points, so that chunk splits land
 * inside characters.
 */

static void
gen_text(uint8_t *out, size_t len, uint64_t seed)
{
    size_t       n, w;
    const char  *ch;

    static const char  *chars[] = {
        "\xc2\x80", "\xdf\xbf", "\xc3\xa9",
        "\xe0\xa0\x80", "\xed\x9f\xbf", "\xee\x80\x80", "\xef\xbf\xbf",
        "\xe2\x82\xac",
        "\xf0\x90\x80\x80", "\xf4\x8f\xbf\xbf", "\xf0\x9f\x98\x80"
    };

    n = 0;
    seed |= 1;

    while (n < len) {
        ch = chars[rnd(&seed) % (sizeof(chars) / sizeof(chars[0]))];
        w = strlen(ch);

        if (rnd(&seed) % 3 == 0 || w > len - n) {
            out[n++] = (uint8_t) ('a' + rnd(&seed) % 26);
            continue;
        }

        memcpy(out + n, ch, w);
        n += w;
    }
}


static void
gen_binary(uint8_t *out, size_t len, uint64_t seed)
{
    size_t  i;

    seed |= 1;

    for (i = 0; i < len; i++) {
        out[i] = (uint8_t) (rnd(&seed) >> 56);
    }
}


/*
 * RFC 3629 reference: returns the index of the first byte after which the
 * input can no longer be completed to valid UTF-8, or "len"; "*partial"
 * is set when the input ends inside a character.  It decodes code points
 * and checks the interval a prefix can still reach, which is unlike the
 * codec's range table on purpose.
 */

static size_t
ref_utf8(const uint8_t *p, size_t len, int *partial)
{
    size_t    i, k, n, rem;
    uint8_t   c;
    uint32_t  cp, lo, hi, min;

    *partial = 0;
    i = 0;

    while (i < len) {
        c = p[i];

        if (c < 0x80) {
            i++;
            continue;
        }

        if ((c & 0xe0) == 0xc0) {
            n = 2;
            cp = c & 0x1f;
            min = 0x80;

        } else if ((c & 0xf0) == 0xe0) {
            n = 3;
            cp = c & 0x0f;
            min = 0x800;

        } else if ((c & 0xf8) == 0xf0) {
            n = 4;
            cp = c & 0x07;
            min = 0x10000;

        } else {
            return i;
        }

        for (k = 1; /* void */ ; k++) {
            rem = n - k;
            lo = cp << (6 * rem);
            hi = lo | ((1u << (6 * rem)) - 1);

            if (hi < min || lo > 0x10ffff || (lo >= 0xd800 && hi <= 0xdfff)) {
                return i + k - 1;
            }

            if (k == n) {
                break;
            }

            if (i + k == len) {
                *partial = 1;
                return len;
            }

            c = p[i + k];
            if ((c & 0xc0) != 0x80) {
                return i + k;
            }

            cp = (cp << 6) | (c & 0x3f);
        }

        i += n;
    }

    return len;
}


/* trace recording */

static void PRINTF_LIKE(2, 3)
trace_fail(trace_t *t, const char *fmt, ...)
{
    va_list  args;

    if (t->err[0]) {
        return;
    }

    va_start(args, fmt);
    vsnprintf(t->err, sizeof(t->err), fmt, args);
    va_end(args);
}


static void
trace_free(trace_t *t)
{
    size_t  i;

    for (i = 0; i < t->nev; i++) {
        free(t->ev[i].data);
    }

    free(t->ev);
    memset(t, 0, sizeof(trace_t));
}


static tev_t *
trace_push(trace_t *t)
{
    tev_t  *e;

    if (t->nev == t->size) {
        t->size = t->size * 2 + 8;
        t->ev = realloc(t->ev, t->size * sizeof(tev_t));
        if (t->ev == NULL) {
            bail_out("out of memory");
        }
    }

    e = &t->ev[t->nev++];
    memset(e, 0, sizeof(tev_t));

    return e;
}


/*
 * Records an event, checking the contract of the header on the way.  DATA
 * runs of one message are joined, since how a message is cut into DATA
 * events depends on the reads; for the same reason DATA of a message that
 * an ERROR aborts is dropped: how much of it came before the error
 * depends on where the reads split it.
 */

static void
trace_add(trace_t *t, int rc, ngx_http_openclaw_ws_event_t *ev, size_t fed)
{
    tev_t  *e;

    if (t->over) {
        trace_fail(t, "event %d after ERROR or close", rc);
        return;
    }

    switch (rc) {

    case T_DATA:
        if (ev->opcode != OP_TEXT && ev->opcode != OP_BINARY) {
            trace_fail(t, "DATA with opcode %u", ev->opcode);
        }

        if (ev->first == t->open) {
            trace_fail(t, "DATA first=%u while a message is %s",
                       (unsigned) ev->first, t->open ? "open" : "not open");
        }

        if (ev->len == 0 && !ev->last) {
            trace_fail(t, "empty DATA event that does not end a message");
        }

        if (t->open && t->nev && t->ev[t->nev - 1].rc == T_DATA) {
            e = &t->ev[t->nev - 1];

            if (e->opcode != ev->opcode) {
                trace_fail(t, "DATA opcode changed inside a message");
            }

            /* geometric growth: byte-wise feeds join 64K events */

            if (e->len + ev->len > e->size) {
                e->size = (e->len + ev->len) * 2;
                e->data = realloc(e->data, e->size);
                if (e->data == NULL) {
                    bail_out("out of memory");
                }
            }

        } else {
            e = trace_push(t);
            e->rc = rc;
            e->opcode = ev->opcode;
            e->first = ev->first;
            e->data = xalloc(ev->len);
            e->size = ev->len;
        }

        if (ev->len) {
            memcpy(e->data + e->len, ev->data, ev->len);
        }

        e->len += ev->len;
        e->last = ev->last;
        e->fed = fed;

        t->open = !ev->last;
        break;

    case T_CONTROL:
        if (ev->opcode != OP_CLOSE && ev->opcode != OP_PING
            && ev->opcode != OP_PONG)
        {
            trace_fail(t, "CONTROL with opcode %u", ev->opcode);
        }

        if (ev->len > 125) {
            trace_fail(t, "CONTROL payload of %zu bytes", ev->len);
        }

        e = trace_push(t);
        e->rc = rc;
        e->opcode = ev->opcode;
        e->code = (ev->opcode == OP_CLOSE) ? ev->code : 0;
        e->data = xalloc(ev->len);
        if (ev->len) {
            memcpy(e->data, ev->data, ev->len);
        }
        e->len = ev->len;
        e->fed = fed;

        if (ev->opcode == OP_CLOSE) {
            t->over = 1;
        }

        break;

    case T_ERROR:
        if (ev->reason == NULL || ev->reason[0] == '\0') {
            trace_fail(t, "ERROR without a reason");
        }

        if (t->open && t->nev && t->ev[t->nev - 1].rc == T_DATA) {
            t->nev--;
            free(t->ev[t->nev].data);
        }

        e = trace_push(t);
        e->rc = rc;
        e->code = ev->code;
        e->fed = fed;
        t->over = 1;
        break;

    default:
        trace_fail(t, "unknown return code %d", rc);
    }
}


/* feeds one read, the way a caller loops until AGAIN */

static void
feed_chunk(trace_t *t, ngx_http_openclaw_ws_parser_t *p, uint8_t *buf,
    size_t len, size_t fed)
{
    int                           rc;
    size_t                        off, consumed, events;
    ngx_http_openclaw_ws_event_t  ev;

    off = 0;

    for (events = 0; /* void */ ; events++) {

        if (events > len + 4) {
            trace_fail(t, "parser keeps returning events without input");
            return;
        }

        consumed = (size_t) -1;
        memset(&ev, 0, sizeof(ev));

        rc = ngx_http_openclaw_ws_parse(p, buf + off, len - off, &consumed,
                                        &ev);

        if (consumed > len - off) {
            trace_fail(t, "consumed %zu of %zu bytes", consumed, len - off);
            return;
        }

        if (rc == T_AGAIN) {
            if (consumed != len - off) {
                trace_fail(t, "AGAIN after consuming %zu of %zu bytes",
                           consumed, len - off);
            }

            return;
        }

        if (rc == T_DATA && ev.len
            && (ev.data < buf + off
                || ev.data + ev.len > buf + off + consumed))
        {
            trace_fail(t, "DATA outside the bytes consumed");
            return;
        }

        trace_add(t, rc, &ev, fed);

        off += consumed;
    }
}


/*
 * Every read lives in its own exact-size allocation, so that ASan sees a
 * parser that reads past what it was given.
 */

static void
feed(trace_t *t, int server, uint64_t max, const uint8_t *in, size_t len,
    int mode, uint64_t seed)
{
    size_t                         pos, n;
    uint8_t                       *chunk;
    uint64_t                       r;
    ngx_http_openclaw_ws_parser_t  p;

    memset(t, 0, sizeof(trace_t));
    ngx_http_openclaw_ws_parser_init(&p, server, max);

    seed = seed * 0x9e3779b97f4a7c15ULL + 1;
    pos = 0;

    do {
        switch (mode) {

        case FEED_WHOLE:
            n = len;
            break;

        case FEED_BYTES:
            n = len ? 1 : 0;
            break;

        default:
            r = rnd(&seed);
            switch (r % 3) {
            case 0:
                n = 1 + (r >> 8) % 4;
                break;
            case 1:
                n = 1 + (r >> 8) % 64;
                break;
            default:
                n = 1 + (r >> 8) % (len - pos ? len - pos : 1);
            }

            if (n > len - pos) {
                n = len - pos;
            }
        }

        chunk = xalloc(n);
        if (n) {
            memcpy(chunk, in + pos, n);
        }

        pos += n;
        feed_chunk(t, &p, chunk, n, pos);

        free(chunk);

    } while (pos < len);

    /* the stream is over: a well-behaved parser has nothing pending */

    chunk = xalloc(0);
    feed_chunk(t, &p, chunk, 0, pos);
    free(chunk);
}


static const char *
rc_name(int rc)
{
    switch (rc) {
    case T_AGAIN:
        return "AGAIN";
    case T_DATA:
        return "DATA";
    case T_CONTROL:
        return "CONTROL";
    case T_ERROR:
        return "ERROR";
    }

    return "?";
}


static void
show_event(const char *label, size_t i, int rc, unsigned opcode,
    unsigned code, unsigned first, unsigned last, size_t len, size_t fed)
{
    diag("%s[%zu]: %s opcode=%u code=%u first=%u last=%u len=%zu at=%zu",
         label, i, rc_name(rc), opcode, code, first, last, len, fed);
}


static void
show_trace(trace_t *t, const exp_t *exp, size_t nexp)
{
    size_t  i;

    for (i = 0; i < t->nev; i++) {
        show_event("got", i, t->ev[i].rc, t->ev[i].opcode, t->ev[i].code,
                   t->ev[i].first, t->ev[i].last, t->ev[i].len,
                   t->ev[i].fed);
    }

    for (i = 0; i < nexp; i++) {
        show_event("expected", i, exp[i].rc, exp[i].opcode, exp[i].code,
                   exp[i].first, exp[i].last, exp[i].len, exp[i].at);
    }
}


static int
trace_match(trace_t *t, const exp_t *exp, size_t nexp, int check_at,
    char *why, size_t size)
{
    size_t        i;
    tev_t        *g;
    const exp_t  *e;

    if (t->err[0]) {
        snprintf(why, size, "contract broken: %s", t->err);
        return 0;
    }

    for (i = 0; i < t->nev && i < nexp; i++) {
        g = &t->ev[i];
        e = &exp[i];

        if (g->rc != e->rc) {
            snprintf(why, size, "event %zu is %s, expected %s", i,
                     rc_name(g->rc), rc_name(e->rc));
            return 0;
        }

        if (g->rc != T_ERROR && g->opcode != e->opcode) {
            snprintf(why, size, "event %zu has opcode %u, expected %u", i,
                     g->opcode, e->opcode);
            return 0;
        }

        if ((g->rc == T_ERROR || g->opcode == OP_CLOSE)
            && g->code != e->code)
        {
            snprintf(why, size, "event %zu has code %u, expected %u", i,
                     g->code, e->code);
            return 0;
        }

        if (g->rc == T_DATA
            && (g->first != e->first || g->last != e->last))
        {
            snprintf(why, size, "event %zu has first=%u last=%u, expected "
                     "first=%u last=%u", i, g->first, g->last, e->first,
                     e->last);
            return 0;
        }

        if (g->rc != T_ERROR
            && (g->len != e->len
                || (e->len && memcmp(g->data, e->data, e->len) != 0)))
        {
            snprintf(why, size, "event %zu carries other bytes (%zu, "
                     "expected %zu)", i, g->len, e->len);
            return 0;
        }

        if (check_at && e->at && g->fed != e->at) {
            snprintf(why, size, "event %zu reported after %zu bytes, "
                     "expected as soon as byte %zu arrived", i, g->fed,
                     e->at);
            return 0;
        }
    }

    if (t->nev != nexp) {
        snprintf(why, size, "%zu events, expected %zu", t->nev, nexp);
        return 0;
    }

    return 1;
}


/* runs one case in every feeding mode; returns 1 when all agree */

static int
check_case(const char *name, int server, uint64_t max, const uint8_t *in,
    size_t len, const exp_t *exp, size_t nexp)
{
    int       mode, seed, pass;
    char      why[256];
    trace_t   t;

    pass = 1;

    for (mode = FEED_WHOLE; mode <= FEED_RANDOM; mode++) {
        for (seed = 1; seed <= (mode == FEED_RANDOM ? RANDOM_SEEDS : 1);
             seed++)
        {
            feed(&t, server, max, in, len, mode, (uint64_t) seed);

            if (!trace_match(&t, exp, nexp, mode == FEED_BYTES, why,
                             sizeof(why)))
            {
                if (pass) {
                    if (mode == FEED_WHOLE) {
                        diag("%s: fed whole: %s", name, why);

                    } else if (mode == FEED_BYTES) {
                        diag("%s: fed byte by byte: %s", name, why);

                    } else {
                        diag("%s: fed in random chunks, seed %d: %s", name,
                             seed, why);
                    }

                    show_trace(&t, exp, nexp);
                }

                pass = 0;
            }

            trace_free(&t);
        }
    }

    return pass;
}


static int
run_case(const char *name, int server, uint64_t max, const uint8_t *in,
    size_t len, const exp_t *exp, size_t nexp)
{
    int  pass;

    pass = check_case(name, server, max, in, len, exp, nexp);

    return ok(pass, "%s", name);
}


static exp_t
x_data(unsigned opcode, unsigned first, unsigned last, const void *data,
    size_t len)
{
    exp_t  e;

    memset(&e, 0, sizeof(exp_t));
    e.rc = T_DATA;
    e.opcode = opcode;
    e.first = first;
    e.last = last;
    e.data = data;
    e.len = len;

    return e;
}


static exp_t
x_control(unsigned opcode, const void *data, size_t len)
{
    exp_t  e;

    memset(&e, 0, sizeof(exp_t));
    e.rc = T_CONTROL;
    e.opcode = opcode;
    e.data = data;
    e.len = len;

    return e;
}


static exp_t
x_close(unsigned code, const void *reason, size_t len)
{
    exp_t  e;

    e = x_control(OP_CLOSE, reason, len);
    e.code = code;

    return e;
}


static exp_t
x_error(unsigned code, size_t at)
{
    exp_t  e;

    memset(&e, 0, sizeof(exp_t));
    e.rc = T_ERROR;
    e.code = code;
    e.at = at;

    return e;
}


/* a single frame that must be refused with "code" */

static void
refuse_frame(const char *name, int server, unsigned b0, int masked,
    int form, uint64_t len, size_t plen, unsigned code)
{
    exp_t     e[1];
    buf_t     b;
    uint8_t   key[4], *payload;

    memset(&b, 0, sizeof(buf_t));

    payload = xalloc(plen);
    memset(payload, 'x', plen);

    put_header(&b, b0, masked, form, len, key);
    put_payload(&b, payload, plen, masked, key);

    e[0] = x_error(code, 0);
    run_case(name, server, 0, b.data, b.len, e, 1);

    free(payload);
    buf_free(&b);
}


static void
test_constants(void)
{
    ok(NGX_HTTP_OPENCLAW_WS_CONTINUATION == OP_CONT
       && NGX_HTTP_OPENCLAW_WS_TEXT == OP_TEXT
       && NGX_HTTP_OPENCLAW_WS_BINARY == OP_BINARY
       && NGX_HTTP_OPENCLAW_WS_CLOSE == OP_CLOSE
       && NGX_HTTP_OPENCLAW_WS_PING == OP_PING
       && NGX_HTTP_OPENCLAW_WS_PONG == OP_PONG,
       "opcodes match RFC 6455 5.2");

    ok(NGX_HTTP_OPENCLAW_WS_NORMAL == 1000
       && NGX_HTTP_OPENCLAW_WS_GOING_AWAY == 1001
       && NGX_HTTP_OPENCLAW_WS_PROTOCOL == 1002
       && NGX_HTTP_OPENCLAW_WS_NO_STATUS == 1005
       && NGX_HTTP_OPENCLAW_WS_INVALID_DATA == 1007
       && NGX_HTTP_OPENCLAW_WS_POLICY == 1008
       && NGX_HTTP_OPENCLAW_WS_TOO_BIG == 1009
       && NGX_HTTP_OPENCLAW_WS_INTERNAL == 1011
       && NGX_HTTP_OPENCLAW_WS_MAX_CONTROL == 125
       && NGX_HTTP_OPENCLAW_WS_MAX_REASON == 123
       && NGX_HTTP_OPENCLAW_WS_MAX_HEADER == 14
       && NGX_HTTP_OPENCLAW_WS_ACCEPT_LEN == 28,
       "status codes and limits match RFC 6455 5.2, 5.5, 7.4.1");
}


static void
test_accept(void)
{
    int      rc;
    size_t   i;
    uint8_t  out[NGX_HTTP_OPENCLAW_WS_ACCEPT_LEN + 1];

    /*
     * RFC 6455 1.3: SHA-1 of the key and the GUID is b3 7a 4f 2c c0 62 4f
     * 16 90 f6 46 06 cf 38 59 45 b2 be c4 ea, base64 "s3pPLMBi...xOo=".
     */

    static const struct {
        const char  *key;
        const char  *accept;
    } cases[] = {
        { "dGhlIHNhbXBsZSBub25jZQ==", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" },
        { "wDqumtseNBJdhkihL6PW7w==", "0FFP+2nmNIf/h+4BP36k9uzrYGk=" }
    };

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        memset(out, 0xee, sizeof(out));

        rc = ngx_http_openclaw_ws_accept((const uint8_t *) cases[i].key,
                                         strlen(cases[i].key), out);

        is((unsigned long long) rc, 0, "accept: %s: succeeds", cases[i].key);
        is_mem(out, NGX_HTTP_OPENCLAW_WS_ACCEPT_LEN,
               (const uint8_t *) cases[i].accept, 28,
               "accept: %s gives %s", cases[i].key, cases[i].accept);
        ok(out[NGX_HTTP_OPENCLAW_WS_ACCEPT_LEN] == 0xee,
           "accept: %s: writes 28 bytes and no NUL", cases[i].key);
    }
}


static void
test_key(void)
{
    int      bad, n;
    size_t   i, len;
    uint8_t  raw[18], b64[32];
    uint64_t seed;

    static const char  *valid[] = {
        "dGhlIHNhbXBsZSBub25jZQ==",
        "AAAAAAAAAAAAAAAAAAAAAA==",
        "/////////////////////w==",
        "+/+/+/+/+/+/+/+/+/+/+w==",
        "x3JJHMbDL1EzLkh9GBhXDw==",
        "0123456789abcdefghijkg=="
    };

    static const struct {
        const char  *name;
        const char  *key;
        size_t       len;
    } invalid[] = {
        { "empty", "", 0 },
        { "22 digits, no padding", "dGhlIHNhbXBsZSBub25jZQ", 22 },
        { "one '=' only", "dGhlIHNhbXBsZSBub25jZQ=", 23 },
        { "three '='", "dGhlIHNhbXBsZSBub25jZQ===", 25 },
        { "'=' then a digit", "dGhlIHNhbXBsZSBub25jZQ=A", 24 },
        { "'=' inside", "dGhlIHNhbXBsZSBub25jZ=Q=", 24 },
        { "'=' at the start", "=GhlIHNhbXBsZSBub25jZQ==", 24 },
        { "all '='", "========================", 24 },
        { "'!' is not base64", "dGhlIHNhbXBsZSBub25jZ!==", 24 },
        { "'-' (base64url) is not base64", "dGhlIHNhbXBsZSBub25j-Q==", 24 },
        { "'_' (base64url) is not base64", "dGhlIHNhbXBsZSBub25j_Q==", 24 },
        { "space inside", "dGhlIHNhbXBsZSB ub25jZ==", 24 },
        { "NUL inside", "dGhlIHNhbXBsZSBu" "\0" "25jZQ==", 24 },
        { "non-zero bits after the 16th byte (RFC 4648 3.5)",
          "dGhlIHNhbXBsZSBub25jZR==", 24 },
        { "15 bytes", "AAAAAAAAAAAAAAAAAAAA", 20 },
        { "15 bytes, padded to 24", "AAAAAAAAAAAAAAAAAAAA====", 24 },
        { "17 bytes", "AAAAAAAAAAAAAAAAAAAAAAA=", 24 },
        { "18 bytes", "AAAAAAAAAAAAAAAAAAAAAAAA", 24 },
        { "high-bit byte", "dGhlIHNhbXBsZSBub25\xc3\xa9Q==", 24 }
    };

    for (i = 0; i < sizeof(valid) / sizeof(valid[0]); i++) {
        is((unsigned long long) ngx_http_openclaw_ws_key_valid(
               (const uint8_t *) valid[i], strlen(valid[i])),
           0, "key: %s accepted", valid[i]);
    }

    /* any 16 bytes, base64-encoded (RFC 6455 4.1), must pass */

    bad = 0;
    seed = 42;

    for (i = 0; i < 2000 && !bad; i++) {
        gen_binary(raw, 16, seed++);
        n = EVP_EncodeBlock(b64, raw, 16);

        if (n != 24 || ngx_http_openclaw_ws_key_valid(b64, 24) != 0) {
            diag("refused %.24s", b64);
            bad = 1;
        }
    }

    ok(!bad, "key: 2000 random 16-byte keys accepted");

    /* the base64 of 15 and 17 bytes must not pass, whatever the bytes */

    bad = 0;

    for (i = 0; i < 2000 && !bad; i++) {
        len = (i & 1) ? 17 : 15;
        gen_binary(raw, len, seed++);
        n = EVP_EncodeBlock(b64, raw, (int) len);

        if (ngx_http_openclaw_ws_key_valid(b64, (size_t) n) == 0) {
            diag("accepted %.*s", n, b64);
            bad = 1;
        }
    }

    ok(!bad, "key: 2000 random 15- and 17-byte keys refused");

    for (i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
        is((unsigned long long) ngx_http_openclaw_ws_key_valid(
               (const uint8_t *) invalid[i].key, invalid[i].len),
           (unsigned long long) -1, "key refused: %s", invalid[i].name);
    }
}


static void
test_mask(void)
{
    int       bad;
    size_t    off, len, i, k;
    uint8_t   key[4] = { 0x37, 0xfa, 0x21, 0x3d };
    uint8_t   orig[48], work[49], split[48];

    gen_binary(orig, sizeof(orig), 7);

    for (off = 0; off < 4; off++) {
        bad = 0;

        for (len = 0; len <= 40; len++) {

            /* at both alignments: the word loop must not assume one */

            for (k = 0; k < 2; k++) {
                memcpy(work + k, orig, len);
                ngx_http_openclaw_ws_mask(work + k, len, key, off);

                for (i = 0; i < len; i++) {
                    if (work[k + i] != (orig[i] ^ key[(off + i) % 4])) {
                        bad = 1;
                    }
                }

                ngx_http_openclaw_ws_mask(work + k, len, key, off);

                if (len && memcmp(work + k, orig, len) != 0) {
                    bad = 1;
                }
            }

            /* a payload masked in two reads, as the parser does */

            for (k = 0; k <= len; k++) {
                memcpy(split, orig, len);
                ngx_http_openclaw_ws_mask(split, k, key, off);
                ngx_http_openclaw_ws_mask(split + k, len - k, key, off + k);

                for (i = 0; i < len; i++) {
                    if (split[i] != (orig[i] ^ key[(off + i) % 4])) {
                        bad = 1;
                    }
                }
            }

            if (bad) {
                diag("offset %zu, length %zu", off, len);
                break;
            }
        }

        ok(!bad, "mask: offset %zu, lengths 0..40, round trip and splits",
           off);
    }
}


static void
test_frame_header(void)
{
    size_t   i, n;
    uint8_t  out[NGX_HTTP_OPENCLAW_WS_MAX_HEADER + 2];
    uint8_t  key[4] = { 0xa1, 0xb2, 0xc3, 0xd4 };

    static const struct {
        uint64_t  len;
        unsigned  opcode;
        int       fin;
        size_t    n;
        uint8_t   bytes[10];
    } cases[] = {
        { 0, OP_TEXT, 1, 2, { 0x81, 0x00 } },
        { 125, OP_TEXT, 1, 2, { 0x81, 0x7d } },
        { 126, OP_BINARY, 1, 4, { 0x82, 0x7e, 0x00, 0x7e } },
        { 65535, OP_BINARY, 1, 4, { 0x82, 0x7e, 0xff, 0xff } },
        { 65536, OP_BINARY, 1, 10,
          { 0x82, 0x7f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00 } },
        { 0x123456789aULL, OP_CONT, 0, 10,
          { 0x00, 0x7f, 0x00, 0x00, 0x00, 0x12, 0x34, 0x56, 0x78, 0x9a } },
        { 5, OP_PING, 1, 2, { 0x89, 0x05 } },
        { 2, OP_CLOSE, 1, 2, { 0x88, 0x02 } },
        { 1, OP_TEXT, 0, 2, { 0x01, 0x01 } }
    };

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint8_t  expected[NGX_HTTP_OPENCLAW_WS_MAX_HEADER];

        memset(out, 0xee, sizeof(out));
        n = ngx_http_openclaw_ws_frame_header(out, cases[i].opcode,
                                              cases[i].fin, cases[i].len,
                                              NULL);
        is_mem(out, n, cases[i].bytes, cases[i].n,
               "frame_header: opcode %u fin %d length %llu, unmasked",
               cases[i].opcode, cases[i].fin,
               (unsigned long long) cases[i].len);

        memcpy(expected, cases[i].bytes, cases[i].n);
        expected[1] |= 0x80;
        memcpy(expected + cases[i].n, key, 4);

        memset(out, 0xee, sizeof(out));
        n = ngx_http_openclaw_ws_frame_header(out, cases[i].opcode,
                                              cases[i].fin, cases[i].len,
                                              key);
        is_mem(out, n, expected, cases[i].n + 4,
               "frame_header: opcode %u fin %d length %llu, masked",
               cases[i].opcode, cases[i].fin,
               (unsigned long long) cases[i].len);
    }
}


static void
test_close_code_valid(void)
{
    size_t  i;
    int     bad;

    /* RFC 6455 7.4.1 and 7.4.2, and the IANA registry (1012-1014) */

    static const unsigned  valid[] = {
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013,
        1014, 3000, 3999, 4000, 4999
    };

    static const unsigned  invalid[] = {
        0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000,
        65535
    };

    bad = 0;

    for (i = 0; i < sizeof(valid) / sizeof(valid[0]); i++) {
        if (!ngx_http_openclaw_ws_close_code_valid(valid[i])) {
            diag("%u refused", valid[i]);
            bad = 1;
        }
    }

    ok(!bad, "close_code_valid: 1000-1003, 1007-1014, 3000-4999 accepted");

    bad = 0;

    for (i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
        if (ngx_http_openclaw_ws_close_code_valid(invalid[i])) {
            diag("%u accepted", invalid[i]);
            bad = 1;
        }
    }

    ok(!bad, "close_code_valid: reserved and unassigned codes refused");
}


/*
 * A reason cut by close_payload must fit, be a prefix of what was given,
 * be whole UTF-8 and lose no more than the character that did not fit.
 */

static int
check_cut(const char *reason, size_t len, unsigned code)
{
    int       partial;
    size_t    n, cut, next;
    uint8_t  *out, c;

    out = xalloc(NGX_HTTP_OPENCLAW_WS_MAX_CONTROL);
    n = ngx_http_openclaw_ws_close_payload(out, code, reason, len);

    if (n < 2 || n > NGX_HTTP_OPENCLAW_WS_MAX_CONTROL
        || out[0] != (code >> 8) || out[1] != (code & 0xff))
    {
        diag("payload of %zu bytes", n);
        free(out);
        return 0;
    }

    cut = n - 2;

    if (memcmp(out + 2, reason, cut) != 0
        || ref_utf8(out + 2, cut, &partial) != cut || partial)
    {
        diag("reason is not a whole UTF-8 prefix (%zu bytes)", cut);
        free(out);
        return 0;
    }

    if (cut < len) {
        c = (uint8_t) reason[cut];
        next = (c < 0x80) ? 1 : (c < 0xe0) ? 2 : (c < 0xf0) ? 3 : 4;

        if (cut + next <= NGX_HTTP_OPENCLAW_WS_MAX_REASON) {
            diag("cut at %zu though the next %zu-byte character fits",
                 cut, next);
            free(out);
            return 0;
        }
    }

    free(out);
    return 1;
}


static void
test_close_payload(void)
{
    int       bad;
    char      reason[400];
    size_t    n, w, lead, i;
    uint8_t  *out;

    static const char  *chars[] = {
        NULL, "a", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"
    };

    out = xalloc(NGX_HTTP_OPENCLAW_WS_MAX_CONTROL);

    n = ngx_http_openclaw_ws_close_payload(out, 0, NULL, 0);
    is(n, 0, "close_payload: code 0 gives an empty payload");

    n = ngx_http_openclaw_ws_close_payload(out, 0, "ignored", 7);
    is(n, 0, "close_payload: code 0 gives an empty payload, reason or not");

    n = ngx_http_openclaw_ws_close_payload(out, 1000, "bye", 3);
    is_mem(out, n, (const uint8_t *) "\x03\xe8" "bye", 5,
           "close_payload: 1000 \"bye\"");

    n = ngx_http_openclaw_ws_close_payload(out, 4999, "", 0);
    is_mem(out, n, (const uint8_t *) "\x13\x87", 2,
           "close_payload: 4999, no reason");

    memset(reason, 'r', sizeof(reason));

    for (i = 121; i <= 125; i++) {
        n = ngx_http_openclaw_ws_close_payload(out, 1001, reason, i);
        is(n, 2 + (i < 123 ? i : 123),
           "close_payload: %zu-byte ASCII reason", i);
    }

    n = ngx_http_openclaw_ws_close_payload(out, 1001, reason, 400);
    ok(n == 125 && memcmp(out + 2, reason, 123) == 0,
       "close_payload: 400-byte ASCII reason cut to its first 123 bytes");

    /* every width at every phase relative to the 123-byte limit */

    for (w = 2; w <= 4; w++) {
        bad = 0;

        for (lead = 0; lead < 4; lead++) {
            memset(reason, 'x', lead);

            for (n = lead; n + w <= sizeof(reason); n += w) {
                memcpy(reason + n, chars[w], w);
            }

            for (i = 118; i <= 130 && i <= n; i++) {

                /* only whole UTF-8 goes in */

                if (i < n && ((uint8_t) reason[i] & 0xc0) == 0x80) {
                    continue;
                }

                if (!check_cut(reason, i, 1000)) {
                    diag("%zu ASCII then %zu-byte characters, %zu bytes",
                         lead, w, i);
                    bad = 1;
                }
            }

            if (!check_cut(reason, n, 3000)) {
                diag("%zu ASCII then %zu-byte characters, %zu bytes",
                     lead, w, n);
                bad = 1;
            }
        }

        ok(!bad, "close_payload: %zu-byte characters never cut in two", w);
    }

    free(out);
}


static void
test_data_lengths(void)
{
    int        op;
    char       name[80];
    exp_t      e[1];
    buf_t      b;
    size_t     i;
    uint8_t   *payload;

    static const size_t  lengths[] = { 0, 1, 125, 126, 127, 65535, 65536 };

    for (op = OP_TEXT; op <= OP_BINARY; op++) {
        for (i = 0; i < sizeof(lengths) / sizeof(lengths[0]); i++) {
            memset(&b, 0, sizeof(buf_t));
            payload = xalloc(lengths[i]);

            if (op == OP_TEXT) {
                gen_text(payload, lengths[i], lengths[i] + 1);

            } else {
                /* arbitrary bytes: binary is never UTF-8 checked */
                gen_binary(payload, lengths[i], lengths[i] + 1);
            }

            put_frame(&b, FIN | (unsigned) op, MASKED, payload, lengths[i]);

            e[0] = x_data((unsigned) op, 1, 1, payload, lengths[i]);

            snprintf(name, sizeof(name), "parse: %s frame of %zu bytes",
                     op == OP_TEXT ? "text" : "binary", lengths[i]);
            run_case(name, SERVER, 0, b.data, b.len, e, 1);

            free(payload);
            buf_free(&b);
        }
    }
}


static void
test_sequence(void)
{
    exp_t    e[8];
    buf_t    b;
    size_t   n;
    uint8_t  bin[300], text[200], close[20];

    memset(&b, 0, sizeof(buf_t));
    gen_binary(bin, sizeof(bin), 3);
    gen_text(text, sizeof(text), 4);

    put_frame(&b, FIN | OP_TEXT, MASKED, "Hello", 5);
    put_frame(&b, FIN | OP_BINARY, MASKED, bin, sizeof(bin));
    put_frame(&b, FIN | OP_PING, MASKED, "p", 1);
    put_frame(&b, FIN | OP_PONG, MASKED, "", 0);
    put_frame(&b, FIN | OP_TEXT, MASKED, text, sizeof(text));
    n = close_body(close, 1000, "bye", 3);
    put_frame(&b, FIN | OP_CLOSE, MASKED, close, n);

    e[0] = x_data(OP_TEXT, 1, 1, "Hello", 5);
    e[1] = x_data(OP_BINARY, 1, 1, bin, sizeof(bin));
    e[2] = x_control(OP_PING, "p", 1);
    e[3] = x_control(OP_PONG, "", 0);
    e[4] = x_data(OP_TEXT, 1, 1, text, sizeof(text));
    e[5] = x_close(1000, "bye", 3);

    run_case("parse: messages and control frames back to back", SERVER, 0,
             b.data, b.len, e, 6);

    buf_free(&b);

    /* a ping of 125 bytes is the largest control frame allowed */

    memset(&b, 0, sizeof(buf_t));
    put_frame(&b, FIN | OP_PING, MASKED, bin, 125);
    put_frame(&b, FIN | OP_PONG, MASKED, bin + 1, 125);
    e[0] = x_control(OP_PING, bin, 125);
    e[1] = x_control(OP_PONG, bin + 1, 125);
    run_case("parse: 125-byte ping and pong", SERVER, 0, b.data, b.len, e, 2);
    buf_free(&b);
}


/*
 * A message cut into "nfrag" fragments at "cuts", with a control frame
 * between every two; the cuts fall inside UTF-8 characters on purpose.
 */

static void
test_fragmented(const char *name, unsigned opcode, const uint8_t *msg,
    size_t len, const size_t *cuts, size_t nfrag)
{
    int        pass;
    char       why[256];
    exp_t      e[32];
    buf_t      b, all;
    size_t     i, n, from, to, ne;
    trace_t    t;
    unsigned   b0;

    static const char  *pings[] = { "ping-1", "", "ping-3", "ping-4xyz" };

    memset(&b, 0, sizeof(buf_t));
    ne = 0;

    for (i = 0; i < nfrag; i++) {
        from = i ? cuts[i - 1] : 0;
        to = (i == nfrag - 1) ? len : cuts[i];

        b0 = (i == 0) ? opcode : OP_CONT;
        if (i == nfrag - 1) {
            b0 |= FIN;
        }

        put_frame(&b, b0, MASKED, msg + from, to - from);
        e[ne++] = x_data(opcode, i == 0, i == nfrag - 1, msg + from,
                         to - from);

        if (i != nfrag - 1) {
            n = strlen(pings[i % 4]);
            put_frame(&b, FIN | ((i & 1) ? OP_PONG : OP_PING), MASKED,
                      pings[i % 4], n);
            e[ne++] = x_control((i & 1) ? OP_PONG : OP_PING, pings[i % 4],
                                n);
        }
    }

    run_case(name, SERVER, 0, b.data, b.len, e, ne);

    /* and the DATA bytes, joined, are the message */

    pass = 1;
    feed(&t, SERVER, 0, b.data, b.len, FEED_BYTES, 0);

    if (!trace_match(&t, e, ne, 0, why, sizeof(why))) {
        pass = 0;

    } else {
        memset(&all, 0, sizeof(buf_t));

        for (i = 0; i < t.nev; i++) {
            if (t.ev[i].rc == T_DATA) {
                buf_put(&all, t.ev[i].data, t.ev[i].len);
            }
        }

        pass = (all.len == len && memcmp(all.data, msg, len) == 0);
        buf_free(&all);
    }

    trace_free(&t);
    buf_free(&b);

    ok(pass, "%s: joined DATA equals the message", name);
}


/* the first cut at or after "from" that falls inside a character */

static size_t
mid_char(const uint8_t *msg, size_t len, size_t from)
{
    while (from < len - 1 && (msg[from] & 0xc0) != 0x80) {
        from++;
    }

    return from;
}


static void
test_fragments(void)
{
    exp_t    e[4];
    buf_t    b;
    uint8_t  msg[1000];

    size_t   two[1], five[4];

    static const size_t  three[] = { 10, 999 };

    gen_text(msg, 300, 99);
    two[0] = mid_char(msg, 300, 151);
    test_fragmented("parse: text in 2 fragments, ping between", OP_TEXT, msg,
                    300, two, 2);

    gen_text(msg, sizeof(msg), 99);
    five[0] = mid_char(msg, sizeof(msg), 1);
    five[1] = mid_char(msg, sizeof(msg), five[0] + 1);
    five[2] = mid_char(msg, sizeof(msg), 300);
    five[3] = mid_char(msg, sizeof(msg), 702);
    test_fragmented("parse: text in 5 fragments, pings and pongs between",
                    OP_TEXT, msg, sizeof(msg), five, 5);

    gen_binary(msg, sizeof(msg), 98);
    test_fragmented("parse: binary in 3 fragments", OP_BINARY, msg,
                    sizeof(msg), three, 3);

    /* empty fragments carry nothing: no DATA event until bytes or end */

    memset(&b, 0, sizeof(buf_t));
    put_frame(&b, OP_TEXT, MASKED, "", 0);
    put_frame(&b, OP_CONT, MASKED, "abc", 3);
    put_frame(&b, OP_CONT, MASKED, "", 0);
    put_frame(&b, FIN | OP_PING, MASKED, "!", 1);
    put_frame(&b, FIN | OP_CONT, MASKED, "", 0);
    e[0] = x_data(OP_TEXT, 1, 0, "abc", 3);
    e[1] = x_control(OP_PING, "!", 1);
    e[2] = x_data(OP_TEXT, 0, 1, "", 0);
    run_case("parse: empty first, middle and last fragments", SERVER, 0,
             b.data, b.len, e, 3);
    buf_free(&b);

    memset(&b, 0, sizeof(buf_t));
    put_frame(&b, OP_BINARY, MASKED, "", 0);
    put_frame(&b, FIN | OP_CONT, MASKED, "", 0);
    e[0] = x_data(OP_BINARY, 1, 1, "", 0);
    run_case("parse: message of two empty fragments", SERVER, 0, b.data,
             b.len, e, 1);
    buf_free(&b);

    memset(&b, 0, sizeof(buf_t));
    put_frame(&b, OP_TEXT, MASKED, "", 0);
    put_frame(&b, FIN | OP_PING, MASKED, "", 0);
    put_frame(&b, OP_CONT, MASKED, "", 0);
    put_frame(&b, FIN | OP_CONT, MASKED, "z", 1);
    e[0] = x_control(OP_PING, "", 0);
    e[1] = x_data(OP_TEXT, 1, 1, "z", 1);
    run_case("parse: empty fragments, then a ping, then the only byte",
             SERVER, 0, b.data, b.len, e, 2);
    buf_free(&b);
}


static void
test_protocol_errors(void)
{
    char      name[80];
    exp_t     e[3];
    buf_t     b;
    unsigned  op;

    refuse_frame("parse: unmasked text frame from a client -> 1002", SERVER,
                 FIN | OP_TEXT, UNMASKED, 0, 5, 5, 1002);
    refuse_frame("parse: unmasked ping from a client -> 1002", SERVER,
                 FIN | OP_PING, UNMASKED, 0, 0, 0, 1002);
    refuse_frame("parse: unmasked close from a client -> 1002", SERVER,
                 FIN | OP_CLOSE, UNMASKED, 0, 0, 0, 1002);
    refuse_frame("parse: RSV1 set -> 1002", SERVER, FIN | RSV1 | OP_TEXT,
                 MASKED, 0, 3, 3, 1002);
    refuse_frame("parse: RSV2 set -> 1002", SERVER, FIN | RSV2 | OP_BINARY,
                 MASKED, 0, 3, 3, 1002);
    refuse_frame("parse: RSV3 set -> 1002", SERVER, FIN | RSV3 | OP_TEXT,
                 MASKED, 0, 3, 3, 1002);
    refuse_frame("parse: RSV1 set on a ping -> 1002", SERVER,
                 FIN | RSV1 | OP_PING, MASKED, 0, 0, 0, 1002);

    for (op = 3; op <= 15; op++) {
        if (op >= 8 && op <= 10) {
            continue;
        }

        snprintf(name, sizeof(name), "parse: reserved opcode %u -> 1002",
                 op);
        refuse_frame(name, SERVER, FIN | op, MASKED, 0, 2, 2, 1002);
    }

    refuse_frame("parse: ping of 126 bytes -> 1002", SERVER, FIN | OP_PING,
                 MASKED, 16, 126, 126, 1002);
    refuse_frame("parse: pong of 126 bytes -> 1002", SERVER, FIN | OP_PONG,
                 MASKED, 16, 126, 126, 1002);
    refuse_frame("parse: close of 126 bytes -> 1002", SERVER, FIN | OP_CLOSE,
                 MASKED, 16, 126, 126, 1002);
    refuse_frame("parse: ping with a 64-bit length -> 1002", SERVER,
                 FIN | OP_PING, MASKED, 64, 65536, 0, 1002);
    refuse_frame("parse: fragmented ping -> 1002", SERVER, OP_PING, MASKED,
                 0, 1, 1, 1002);
    refuse_frame("parse: fragmented pong -> 1002", SERVER, OP_PONG, MASKED,
                 0, 0, 0, 1002);
    refuse_frame("parse: fragmented close -> 1002", SERVER, OP_CLOSE, MASKED,
                 0, 2, 2, 1002);
    refuse_frame("parse: continuation without a message -> 1002", SERVER,
                 FIN | OP_CONT, MASKED, 0, 3, 3, 1002);
    refuse_frame("parse: non-final continuation without a message -> 1002",
                 SERVER, OP_CONT, MASKED, 0, 3, 3, 1002);

    memset(&b, 0, sizeof(buf_t));
    put_frame(&b, FIN | OP_TEXT, MASKED, "done", 4);
    put_frame(&b, FIN | OP_CONT, MASKED, "more", 4);
    e[0] = x_data(OP_TEXT, 1, 1, "done", 4);
    e[1] = x_error(1002, 0);
    run_case("parse: continuation after a finished message -> 1002", SERVER,
             0, b.data, b.len, e, 2);
    buf_free(&b);

    memset(&b, 0, sizeof(buf_t));
    put_frame(&b, OP_TEXT, MASKED, "part", 4);
    put_frame(&b, FIN | OP_PING, MASKED, "", 0);
    put_frame(&b, FIN | OP_TEXT, MASKED, "new", 3);
    e[0] = x_data(OP_TEXT, 1, 0, "part", 4);
    e[1] = x_control(OP_PING, "", 0);
    e[2] = x_error(1002, 0);
    run_case("parse: text frame inside a fragmented message -> 1002", SERVER,
             0, b.data, b.len, e, 3);
    buf_free(&b);

    memset(&b, 0, sizeof(buf_t));
    put_frame(&b, OP_TEXT, MASKED, "part", 4);
    put_frame(&b, FIN | OP_PONG, MASKED, "", 0);
    put_frame(&b, OP_BINARY, MASKED, "new", 3);
    e[0] = x_data(OP_TEXT, 1, 0, "part", 4);
    e[1] = x_control(OP_PONG, "", 0);
    e[2] = x_error(1002, 0);
    run_case("parse: binary frame inside a fragmented message -> 1002",
             SERVER, 0, b.data, b.len, e, 3);
    buf_free(&b);

    /* RFC 6455 5.2: "the most significant bit MUST be 0" */

    refuse_frame("parse: 64-bit length with the top bit set -> 1002", SERVER,
                 FIN | OP_BINARY, MASKED, 64, 0x8000000000000000ULL, 0,
                 1002);
    refuse_frame("parse: 64-bit length 2^64-1 -> 1002", SERVER,
                 FIN | OP_BINARY, MASKED, 64, 0xffffffffffffffffULL, 0,
                 1002);

    /* RFC 6455 5.2: "the minimal number of bytes MUST be used" */

    refuse_frame("parse: length 0 in 16 bits -> 1002", SERVER,
                 FIN | OP_BINARY, MASKED, 16, 0, 0, 1002);
    refuse_frame("parse: length 125 in 16 bits -> 1002", SERVER,
                 FIN | OP_BINARY, MASKED, 16, 125, 125, 1002);
    refuse_frame("parse: length 0 in 64 bits -> 1002", SERVER,
                 FIN | OP_TEXT, MASKED, 64, 0, 0, 1002);
    refuse_frame("parse: length 125 in 64 bits -> 1002", SERVER,
                 FIN | OP_BINARY, MASKED, 64, 125, 125, 1002);
    refuse_frame("parse: length 126 in 64 bits -> 1002", SERVER,
                 FIN | OP_BINARY, MASKED, 64, 126, 126, 1002);
    refuse_frame("parse: length 65535 in 64 bits -> 1002", SERVER,
                 FIN | OP_BINARY, MASKED, 64, 65535, 0, 1002);
}


static void
test_too_big(void)
{
    exp_t                          e[3];
    buf_t                          b;
    size_t                         consumed;
    uint8_t                        key[4], payload[2000];
    ngx_http_openclaw_ws_rc_e      rc;
    ngx_http_openclaw_ws_event_t   ev;
    ngx_http_openclaw_ws_parser_t  p;

    gen_binary(payload, sizeof(payload), 5);

    memset(&b, 0, sizeof(buf_t));
    put_frame(&b, FIN | OP_BINARY, MASKED, payload, 1000);
    e[0] = x_data(OP_BINARY, 1, 1, payload, 1000);
    run_case("max_message: a 1000-byte message under a 1000-byte limit",
             SERVER, 1000, b.data, b.len, e, 1);
    buf_free(&b);

    /* the header says it all: refuse before any payload is read */

    memset(&b, 0, sizeof(buf_t));
    put_frame(&b, FIN | OP_BINARY, MASKED, payload, 1001);
    e[0] = x_error(1009, 8);
    run_case("max_message: 1001 bytes -> 1009 once the header is in",
             SERVER, 1000, b.data, b.len, e, 1);
    buf_free(&b);

    memset(&b, 0, sizeof(buf_t));
    put_header(&b, FIN | OP_TEXT, MASKED, 0, 1ULL << 40, key);
    e[0] = x_error(1009, 14);
    run_case("max_message: 2^40-byte text frame -> 1009 from the header",
             SERVER, 1000, b.data, b.len, e, 1);
    buf_free(&b);

    /* fed exactly the header and nothing else */

    memset(&b, 0, sizeof(buf_t));
    put_header(&b, FIN | OP_BINARY, MASKED, 0, 1001, key);

    ngx_http_openclaw_ws_parser_init(&p, SERVER, 1000);
    memset(&ev, 0, sizeof(ev));
    consumed = 0;
    rc = ngx_http_openclaw_ws_parse(&p, b.data, b.len, &consumed, &ev);

    ok(rc == T_ERROR && ev.code == 1009 && consumed == b.len,
       "max_message: 1009 from the 8 header bytes alone");
    if (rc != T_ERROR || ev.code != 1009 || consumed != b.len) {
        diag("rc %d code %u consumed %zu", rc, ev.code, consumed);
    }

    buf_free(&b);

    /* across fragments the limit is on the whole message */

    memset(&b, 0, sizeof(buf_t));
    put_frame(&b, OP_BINARY, MASKED, payload, 60);
    put_frame(&b, FIN | OP_PING, MASKED, "", 0);
    put_frame(&b, FIN | OP_CONT, MASKED, payload + 60, 40);
    e[0] = x_data(OP_BINARY, 1, 0, payload, 60);
    e[1] = x_control(OP_PING, "", 0);
    e[2] = x_data(OP_BINARY, 0, 1, payload + 60, 40);
    run_case("max_message: 60 + 40 bytes under a 100-byte limit", SERVER,
             100, b.data, b.len, e, 3);
    buf_free(&b);

    memset(&b, 0, sizeof(buf_t));
    put_frame(&b, OP_TEXT, MASKED, "0123456789012345678901234567890123456789"
              "01234567890123456789", 60);
    put_frame(&b, FIN | OP_PING, MASKED, "", 0);
    put_frame(&b, FIN | OP_CONT, MASKED, payload, 41);
    e[0] = x_data(OP_TEXT, 1, 0, "0123456789012345678901234567890123456789"
                  "01234567890123456789", 60);
    e[1] = x_control(OP_PING, "", 0);
    e[2] = x_error(1009, 66 + 6 + 6);
    run_case("max_message: 60 + 41 bytes -> 1009 at the 2nd fragment header",
             SERVER, 100, b.data, b.len, e, 3);
    buf_free(&b);

    memset(&b, 0, sizeof(buf_t));
    put_frame(&b, OP_BINARY, MASKED, payload, 60);
    put_frame(&b, OP_CONT, MASKED, payload, 0);
    put_frame(&b, FIN | OP_CONT, MASKED, payload, 1000);
    e[0] = x_error(1009, 66 + 6 + 8);
    run_case("max_message: 60 + 0 + 1000 bytes -> 1009 at the 3rd header",
             SERVER, 100, b.data, b.len, e, 1);
    buf_free(&b);

    /* control frames are not part of the message */

    memset(&b, 0, sizeof(buf_t));
    put_frame(&b, OP_BINARY, MASKED, payload, 10);
    put_frame(&b, FIN | OP_PING, MASKED, payload, 125);
    put_frame(&b, FIN | OP_CONT, MASKED, payload, 10);
    e[0] = x_data(OP_BINARY, 1, 0, payload, 10);
    e[1] = x_control(OP_PING, payload, 125);
    e[2] = x_data(OP_BINARY, 0, 1, payload, 10);
    run_case("max_message: a 125-byte ping does not count against 20 bytes",
             SERVER, 20, b.data, b.len, e, 3);
    buf_free(&b);

    /* the limit is per message, not per connection */

    memset(&b, 0, sizeof(buf_t));
    put_frame(&b, FIN | OP_BINARY, MASKED, payload, 20);
    put_frame(&b, FIN | OP_BINARY, MASKED, payload, 20);
    e[0] = x_data(OP_BINARY, 1, 1, payload, 20);
    e[1] = x_data(OP_BINARY, 1, 1, payload, 20);
    run_case("max_message: two 20-byte messages under a 20-byte limit",
             SERVER, 20, b.data, b.len, e, 2);
    buf_free(&b);
}


static void
test_close(void)
{
    char      name[80];
    exp_t     e[2];
    buf_t     b;
    size_t    i, n;
    uint8_t   body[130], reason[123];

    static const unsigned  valid[] = {
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013,
        1014, 3000, 3999, 4000, 4999
    };

    static const unsigned  invalid[] = {
        0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535
    };

    memset(&b, 0, sizeof(buf_t));
    put_frame(&b, FIN | OP_CLOSE, MASKED, "", 0);
    e[0] = x_close(1005, "", 0);
    run_case("close: empty payload -> CONTROL with code 1005", SERVER, 0,
             b.data, b.len, e, 1);
    buf_free(&b);

    memset(&b, 0, sizeof(buf_t));
    put_frame(&b, FIN | OP_CLOSE, MASKED, "\x03", 1);
    e[0] = x_error(1002, 0);
    run_case("close: 1-byte payload -> 1002", SERVER, 0, b.data, b.len, e, 1);
    buf_free(&b);

    /* a stale second byte from the ping would make the code look valid */

    memset(&b, 0, sizeof(buf_t));
    put_frame(&b, FIN | OP_PING, MASKED, "\x03\xe8", 2);
    put_frame(&b, FIN | OP_CLOSE, MASKED, "\x03", 1);
    e[0] = x_control(OP_PING, "\x03\xe8", 2);
    e[1] = x_error(1002, 0);
    run_case("close: 1-byte payload after a 2-byte ping -> 1002", SERVER, 0,
             b.data, b.len, e, 2);
    buf_free(&b);

    for (i = 0; i < sizeof(valid) / sizeof(valid[0]); i++) {
        memset(&b, 0, sizeof(buf_t));
        n = close_body(body, valid[i], "", 0);
        put_frame(&b, FIN | OP_CLOSE, MASKED, body, n);
        e[0] = x_close(valid[i], "", 0);

        snprintf(name, sizeof(name), "close: code %u accepted", valid[i]);
        run_case(name, SERVER, 0, b.data, b.len, e, 1);
        buf_free(&b);
    }

    for (i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
        memset(&b, 0, sizeof(buf_t));
        n = close_body(body, invalid[i], "why", 3);
        put_frame(&b, FIN | OP_CLOSE, MASKED, body, n);
        e[0] = x_error(1002, 0);

        snprintf(name, sizeof(name), "close: code %u -> 1002", invalid[i]);
        run_case(name, SERVER, 0, b.data, b.len, e, 1);
        buf_free(&b);
    }

    memset(&b, 0, sizeof(buf_t));
    n = close_body(body, 1001, "gone \xe2\x82\xac", 8);
    put_frame(&b, FIN | OP_CLOSE, MASKED, body, n);
    e[0] = x_close(1001, "gone \xe2\x82\xac", 8);
    run_case("close: UTF-8 reason delivered", SERVER, 0, b.data, b.len, e, 1);
    buf_free(&b);

    gen_text(reason, sizeof(reason), 11);
    memset(&b, 0, sizeof(buf_t));
    n = close_body(body, 4000, (const char *) reason, sizeof(reason));
    put_frame(&b, FIN | OP_CLOSE, MASKED, body, n);
    e[0] = x_close(4000, reason, sizeof(reason));
    run_case("close: 123-byte reason (125-byte payload)", SERVER, 0, b.data,
             b.len, e, 1);
    buf_free(&b);

    memset(&b, 0, sizeof(buf_t));
    n = close_body(body, 1000, "bad \xc3\x28", 6);
    put_frame(&b, FIN | OP_CLOSE, MASKED, body, n);
    e[0] = x_error(1002, 0);
    run_case("close: reason with invalid UTF-8 -> 1002", SERVER, 0, b.data,
             b.len, e, 1);
    buf_free(&b);

    memset(&b, 0, sizeof(buf_t));
    n = close_body(body, 1000, "cut \xe2\x82", 6);
    put_frame(&b, FIN | OP_CLOSE, MASKED, body, n);
    e[0] = x_error(1002, 0);
    run_case("close: reason ending inside a character -> 1002", SERVER, 0,
             b.data, b.len, e, 1);
    buf_free(&b);

    memset(&b, 0, sizeof(buf_t));
    n = close_body(body, 1000, "\xed\xa0\x80", 3);
    put_frame(&b, FIN | OP_CLOSE, MASKED, body, n);
    e[0] = x_error(1002, 0);
    run_case("close: reason with a surrogate -> 1002", SERVER, 0, b.data,
             b.len, e, 1);
    buf_free(&b);

    /* RFC 6455 5.5.1: a close may come in the middle of a message */

    memset(&b, 0, sizeof(buf_t));
    put_frame(&b, OP_TEXT, MASKED, "half", 4);
    n = close_body(body, 1000, "", 0);
    put_frame(&b, FIN | OP_CLOSE, MASKED, body, n);
    e[0] = x_data(OP_TEXT, 1, 0, "half", 4);
    e[1] = x_close(1000, "", 0);
    run_case("close: inside a fragmented message", SERVER, 0, b.data, b.len,
             e, 2);
    buf_free(&b);

    /* close_payload output is what the parser accepts */

    memset(&b, 0, sizeof(buf_t));
    n = ngx_http_openclaw_ws_close_payload(body, 1011, "oops", 4);
    put_frame(&b, FIN | OP_CLOSE, MASKED, body, n);
    e[0] = x_close(1011, "oops", 4);
    run_case("close: a close_payload() frame parses back", SERVER, 0,
             b.data, b.len, e, 1);
    buf_free(&b);
}


/* nothing is accepted after the end: AGAIN, everything consumed */

static int
check_ignored(ngx_http_openclaw_ws_parser_t *p, const char *what)
{
    int                           pass, i;
    buf_t                         b;
    size_t                        consumed;
    ngx_http_openclaw_ws_rc_e     rc;
    ngx_http_openclaw_ws_event_t  ev;

    pass = 1;
    memset(&b, 0, sizeof(buf_t));

    put_frame(&b, FIN | OP_TEXT, MASKED, "text", 4);
    put_frame(&b, FIN | OP_PING, MASKED, "ping", 4);
    put_frame(&b, FIN | OP_CLOSE, MASKED, "\x03\xe8", 2);
    put_frame(&b, FIN | OP_TEXT, UNMASKED, "bad", 3);
    buf_put(&b, "\xff\xff\xff", 3);

    for (i = 0; i < 3; i++) {
        consumed = 0;
        memset(&ev, 0, sizeof(ev));

        rc = ngx_http_openclaw_ws_parse(p, b.data, b.len, &consumed, &ev);

        if (rc != T_AGAIN || consumed != b.len) {
            diag("after %s: %s, consumed %zu of %zu", what, rc_name(rc),
                 consumed, b.len);
            pass = 0;
        }
    }

    buf_free(&b);

    return pass;
}


static void
test_after_end(void)
{
    int                            pass;
    buf_t                          b;
    size_t                         consumed;
    ngx_http_openclaw_ws_rc_e      rc;
    ngx_http_openclaw_ws_event_t   ev;
    ngx_http_openclaw_ws_parser_t  p;

    /* a close frame followed by more frames in the same read */

    memset(&b, 0, sizeof(buf_t));
    put_frame(&b, FIN | OP_CLOSE, MASKED, "\x03\xe8", 2);
    put_frame(&b, FIN | OP_TEXT, MASKED, "late", 4);

    ngx_http_openclaw_ws_parser_init(&p, SERVER, 0);
    rc = ngx_http_openclaw_ws_parse(&p, b.data, b.len, &consumed, &ev);

    pass = (rc == T_CONTROL && ev.opcode == OP_CLOSE && ev.code == 1000
            && consumed == 8);
    if (!pass) {
        diag("%s opcode %u code %u consumed %zu", rc_name(rc), ev.opcode,
             ev.code, consumed);
    }

    rc = ngx_http_openclaw_ws_parse(&p, b.data + consumed, b.len - consumed,
                                    &consumed, &ev);
    if (rc != T_AGAIN || consumed != 10) {
        diag("after close: %s consumed %zu", rc_name(rc), consumed);
        pass = 0;
    }

    pass = check_ignored(&p, "close") && pass;
    ok(pass, "after a close frame further input is ignored");
    buf_free(&b);

    /* an error, then frames that would be valid */

    memset(&b, 0, sizeof(buf_t));
    put_frame(&b, FIN | RSV1 | OP_TEXT, MASKED, "x", 1);

    ngx_http_openclaw_ws_parser_init(&p, SERVER, 0);
    rc = ngx_http_openclaw_ws_parse(&p, b.data, b.len, &consumed, &ev);

    pass = (rc == T_ERROR && ev.code == 1002 && consumed <= b.len);
    pass = check_ignored(&p, "error") && pass;
    ok(pass, "after an error further input is ignored");
    buf_free(&b);

    /* an error in the middle of a payload */

    memset(&b, 0, sizeof(buf_t));
    put_frame(&b, FIN | OP_TEXT, MASKED, "ab\xff" "cd", 5);

    ngx_http_openclaw_ws_parser_init(&p, SERVER, 0);
    rc = ngx_http_openclaw_ws_parse(&p, b.data, b.len, &consumed, &ev);

    pass = (rc == T_ERROR && ev.code == 1007 && consumed <= b.len);
    pass = check_ignored(&p, "UTF-8 error") && pass;
    ok(pass, "after an error inside a payload further input is ignored");
    buf_free(&b);
}


static void
test_client_mode(void)
{
    exp_t    e[5];
    buf_t    b;

    refuse_frame("client mode: masked text frame -> 1002", CLIENT,
                 FIN | OP_TEXT, MASKED, 0, 3, 3, 1002);
    refuse_frame("client mode: masked ping -> 1002", CLIENT, FIN | OP_PING,
                 MASKED, 0, 0, 0, 1002);

    memset(&b, 0, sizeof(buf_t));
    put_frame(&b, FIN | OP_TEXT, UNMASKED, "caf\xc3\xa9", 5);
    put_frame(&b, OP_BINARY, UNMASKED, "\x00\xff", 2);
    put_frame(&b, FIN | OP_PING, UNMASKED, "p", 1);
    put_frame(&b, FIN | OP_CONT, UNMASKED, "\x80", 1);
    put_frame(&b, FIN | OP_CLOSE, UNMASKED, "\x03\xe9", 2);
    e[0] = x_data(OP_TEXT, 1, 1, "caf\xc3\xa9", 5);
    e[1] = x_data(OP_BINARY, 1, 0, "\x00\xff", 2);
    e[2] = x_control(OP_PING, "p", 1);
    e[3] = x_data(OP_BINARY, 0, 1, "\x80", 1);
    e[4] = x_close(1001, "", 0);
    run_case("client mode: unmasked frames accepted", CLIENT, 0, b.data,
             b.len, e, 5);
    buf_free(&b);
}


/* Markus Kuhn's decoder capability test, the parts RFC 3629 decides */

static const utf8_case_t  utf8_cases[] = {
    { "U+0000", "\x00", 1, U_VALID, 0 },
    { "U+007F", "\x7f", 1, U_VALID, 0 },
    { "U+0080", "\xc2\x80", 2, U_VALID, 0 },
    { "U+07FF", "\xdf\xbf", 2, U_VALID, 0 },
    { "U+0800", "\xe0\xa0\x80", 3, U_VALID, 0 },
    { "U+D7FF", "\xed\x9f\xbf", 3, U_VALID, 0 },
    { "U+E000", "\xee\x80\x80", 3, U_VALID, 0 },
    { "U+FDD0", "\xef\xb7\x90", 3, U_VALID, 0 },
    { "U+FFFD", "\xef\xbf\xbd", 3, U_VALID, 0 },
    { "U+FFFE", "\xef\xbf\xbe", 3, U_VALID, 0 },
    { "U+FFFF", "\xef\xbf\xbf", 3, U_VALID, 0 },
    { "U+10000", "\xf0\x90\x80\x80", 4, U_VALID, 0 },
    { "U+10FFFF", "\xf4\x8f\xbf\xbf", 4, U_VALID, 0 },
    { "kosme", "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", 11, U_VALID,
      0 },

    { "lone continuation 80", "\x80", 1, U_INVALID, 0 },
    { "lone continuation BF", "\xbf", 1, U_INVALID, 0 },
    { "continuations 80 BF", "\x80\xbf", 2, U_INVALID, 0 },
    { "continuation after ASCII", "a\x80", 2, U_INVALID, 1 },
    { "extra continuation after U+0080", "\xc2\x80\x80", 3, U_INVALID, 2 },
    { "extra continuation after U+10000", "\xf0\x90\x80\x80\xbf", 5,
      U_INVALID, 4 },
    { "2-byte lead then space", "\xc2 ", 2, U_INVALID, 1 },
    { "3-byte lead then space", "\xe1 ", 2, U_INVALID, 1 },
    { "4-byte lead then space", "\xf1 ", 2, U_INVALID, 1 },
    { "3-byte lead missing its last byte, then ASCII", "\xe2\x82z", 3,
      U_INVALID, 2 },
    { "2-byte lead then 3-byte character", "\xc2\xe0\xa0\x80", 4, U_INVALID,
      1 },
    { "FE", "\xfe", 1, U_INVALID, 0 },
    { "FF", "\xff", 1, U_INVALID, 0 },
    { "FE FE FF FF", "\xfe\xfe\xff\xff", 4, U_INVALID, 0 },
    { "5-byte form F8 88 80 80 80", "\xf8\x88\x80\x80\x80", 5, U_INVALID,
      0 },
    { "6-byte form FC 84 80 80 80 80", "\xfc\x84\x80\x80\x80\x80", 6,
      U_INVALID, 0 },
    { "overlong C0 80", "\xc0\x80", 2, U_INVALID, 0 },
    { "overlong C0 AF", "\xc0\xaf", 2, U_INVALID, 0 },
    { "overlong C1 BF", "\xc1\xbf", 2, U_INVALID, 0 },
    { "overlong E0 80 80", "\xe0\x80\x80", 3, U_INVALID, 1 },
    { "overlong E0 80 AF", "\xe0\x80\xaf", 3, U_INVALID, 1 },
    { "overlong E0 9F BF", "\xe0\x9f\xbf", 3, U_INVALID, 1 },
    { "overlong F0 80 80 80", "\xf0\x80\x80\x80", 4, U_INVALID, 1 },
    { "overlong F0 80 80 AF", "\xf0\x80\x80\xaf", 4, U_INVALID, 1 },
    { "overlong F0 8F BF BF", "\xf0\x8f\xbf\xbf", 4, U_INVALID, 1 },
    { "surrogate ED A0 80", "\xed\xa0\x80", 3, U_INVALID, 1 },
    { "surrogate ED AD BF", "\xed\xad\xbf", 3, U_INVALID, 1 },
    { "surrogate ED AE 80", "\xed\xae\x80", 3, U_INVALID, 1 },
    { "surrogate ED AF BF", "\xed\xaf\xbf", 3, U_INVALID, 1 },
    { "surrogate ED B0 80", "\xed\xb0\x80", 3, U_INVALID, 1 },
    { "surrogate ED BE 80", "\xed\xbe\x80", 3, U_INVALID, 1 },
    { "surrogate ED BF BF", "\xed\xbf\xbf", 3, U_INVALID, 1 },
    { "surrogate pair ED A0 80 ED B0 80", "\xed\xa0\x80\xed\xb0\x80", 6,
      U_INVALID, 1 },
    { "U+110000 F4 90 80 80", "\xf4\x90\x80\x80", 4, U_INVALID, 1 },
    { "F5 80 80 80", "\xf5\x80\x80\x80", 4, U_INVALID, 0 },
    { "F7 BF BF BF", "\xf7\xbf\xbf\xbf", 4, U_INVALID, 0 },
    { "valid text then overlong", "a\xc3\xa9\xc0\x80", 5, U_INVALID, 3 },

    { "truncated C2", "\xc2", 1, U_TRUNCATED, 0 },
    { "truncated DF", "\xdf", 1, U_TRUNCATED, 0 },
    { "truncated E0", "\xe0", 1, U_TRUNCATED, 0 },
    { "truncated E0 A0", "\xe0\xa0", 2, U_TRUNCATED, 0 },
    { "truncated ED 9F", "\xed\x9f", 2, U_TRUNCATED, 0 },
    { "truncated EF BF", "\xef\xbf", 2, U_TRUNCATED, 0 },
    { "truncated F0 90 80", "\xf0\x90\x80", 3, U_TRUNCATED, 0 },
    { "truncated F4 8F BF", "\xf4\x8f\xbf", 3, U_TRUNCATED, 0 },
    { "truncated F1", "\xf1", 1, U_TRUNCATED, 0 },
    { "text then truncated E2 82", "a\xe2\x82", 3, U_TRUNCATED, 0 }
};


static void
test_utf8_cases(void)
{
    int                 rc, pass;
    char                name[120];
    exp_t               e[1];
    buf_t               b;
    size_t              i, k, bad_at;
    uint32_t            state;
    const uint8_t      *s;
    const utf8_case_t  *c;

    for (i = 0; i < sizeof(utf8_cases) / sizeof(utf8_cases[0]); i++) {
        c = &utf8_cases[i];
        s = (const uint8_t *) c->s;

        /* in one call */

        state = 0;
        rc = ngx_http_openclaw_utf8_validate(&state, s, c->len);

        switch (c->kind) {
        case U_VALID:
            pass = (rc == 0 && state == 0);
            break;
        case U_TRUNCATED:
            pass = (rc == 0 && state != 0);
            break;
        default:
            pass = (rc == -1);
        }

        /* a byte at a time: -1 exactly at the first impossible byte */

        state = 0;
        bad_at = c->len;

        for (k = 0; k < c->len; k++) {
            if (ngx_http_openclaw_utf8_validate(&state, s + k, 1) != 0) {
                bad_at = k;
                break;
            }
        }

        if (c->kind == U_INVALID) {
            pass = pass && bad_at == c->bad_at;

        } else {
            pass = pass && bad_at == c->len
                   && (c->kind == U_VALID) == (state == 0);
        }

        ok(pass, "utf8_validate: %s %s", c->name,
           c->kind == U_VALID ? "valid"
           : c->kind == U_TRUNCATED ? "incomplete" : "invalid");
        if (!pass) {
            diag("rc %d state %#x, first refused byte %zu", rc,
                 (unsigned) state, bad_at);
        }

        /* and as a text message: 1007 as soon as the bad byte is in */

        memset(&b, 0, sizeof(buf_t));
        put_frame(&b, FIN | OP_TEXT, MASKED, s, c->len);

        switch (c->kind) {
        case U_VALID:
            e[0] = x_data(OP_TEXT, 1, 1, s, c->len);
            break;
        case U_TRUNCATED:
            e[0] = x_error(1007, b.len);
            break;
        default:
            e[0] = x_error(1007, 6 + c->bad_at + 1);
        }

        snprintf(name, sizeof(name), "utf8 text message: %s -> %s",
                 c->name, c->kind == U_VALID ? "accepted" : "1007");
        run_case(name, SERVER, 0, b.data, b.len, e, 1);
        buf_free(&b);

        /* the same bytes are fine in a binary message */

        if (i % 8 == 0 && c->kind != U_VALID) {
            memset(&b, 0, sizeof(buf_t));
            put_frame(&b, FIN | OP_BINARY, MASKED, s, c->len);
            e[0] = x_data(OP_BINARY, 1, 1, s, c->len);

            snprintf(name, sizeof(name), "utf8 binary message: %s -> "
                     "accepted", c->name);
            run_case(name, SERVER, 0, b.data, b.len, e, 1);
            buf_free(&b);
        }
    }
}


static const char  utf8_sample[] =
    "a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80z\xf4\x8f\xbf\xbf\xc2\x80"
    "\xe0\xa0\x80\xed\x9f\xbf\xef\xbf\xbf\xdf\xbf";


static void
test_utf8_split(void)
{
    int        pass, rc1, rc2, inside;
    char       name[80];
    exp_t      e[3];
    buf_t      b;
    size_t     len, k, ne;
    uint32_t   state;
    const uint8_t  *s;

    s = (const uint8_t *) utf8_sample;
    len = sizeof(utf8_sample) - 1;

    /* state is non-zero exactly when the split falls inside a character */

    pass = 1;

    for (k = 0; k <= len; k++) {
        inside = (k < len && (s[k] & 0xc0) == 0x80);

        state = 0;
        rc1 = ngx_http_openclaw_utf8_validate(&state, s, k);

        if (rc1 != 0 || (state != 0) != inside) {
            diag("split at %zu: first part rc %d state %#x", k, rc1,
                 (unsigned) state);
            pass = 0;
        }

        rc2 = ngx_http_openclaw_utf8_validate(&state, s + k, len - k);

        if (rc2 != 0 || state != 0) {
            diag("split at %zu: second part rc %d state %#x", k, rc2,
                 (unsigned) state);
            pass = 0;
        }
    }

    ok(pass, "utf8_validate: valid text split at every byte");

    /* fragments of a text message, split at every byte */

    pass = 1;

    for (k = 0; k <= len; k++) {
        memset(&b, 0, sizeof(buf_t));
        put_frame(&b, OP_TEXT, MASKED, s, k);
        put_frame(&b, FIN | OP_CONT, MASKED, s + k, len - k);
        e[0] = x_data(OP_TEXT, 1, 1, s, len);

        snprintf(name, sizeof(name), "split at %zu", k);
        pass = check_case(name, SERVER, 0, b.data, b.len, e, 1) && pass;
        buf_free(&b);

        /* with a ping between, the first part must come out at once */

        memset(&b, 0, sizeof(buf_t));
        put_frame(&b, OP_TEXT, MASKED, s, k);
        put_frame(&b, FIN | OP_PING, MASKED, "", 0);
        put_frame(&b, FIN | OP_CONT, MASKED, s + k, len - k);

        ne = 0;
        if (k) {
            e[ne++] = x_data(OP_TEXT, 1, 0, s, k);
        }
        e[ne++] = x_control(OP_PING, "", 0);
        e[ne++] = x_data(OP_TEXT, k == 0, 1, s + k, len - k);

        snprintf(name, sizeof(name), "split at %zu with a ping", k);
        pass = check_case(name, SERVER, 0, b.data, b.len, e, ne) && pass;
        buf_free(&b);
    }

    ok(pass, "utf8 text in two fragments, split at every byte, accepted");

    /* the fragments may break a character, the message end may not */

    memset(&b, 0, sizeof(buf_t));
    put_frame(&b, OP_TEXT, MASKED, "a\xe2", 2);
    put_frame(&b, FIN | OP_CONT, MASKED, "\x82", 1);
    e[0] = x_error(1007, b.len);
    run_case("utf8 text message ending inside a character across fragments "
             "-> 1007", SERVER, 0, b.data, b.len, e, 1);
    buf_free(&b);

    memset(&b, 0, sizeof(buf_t));
    put_frame(&b, OP_TEXT, MASKED, "a\xe2", 2);
    put_frame(&b, FIN | OP_CONT, MASKED, "", 0);
    e[0] = x_error(1007, b.len);
    run_case("utf8 text ending inside a character, empty last fragment "
             "-> 1007", SERVER, 0, b.data, b.len, e, 1);
    buf_free(&b);
}


static void
test_utf8_fail_fast(void)
{
    exp_t    e[3];
    buf_t    b;
    uint8_t  text[100], key[4];

    /* only the first fragment is ever sent: the error cannot wait */

    memset(&b, 0, sizeof(buf_t));
    put_frame(&b, OP_TEXT, MASKED, "abc\xf4\x90\x80\x80" "def", 10);
    e[0] = x_error(1007, 6 + 5);
    run_case("utf8 fail-fast: invalid first fragment -> 1007 before the end",
             SERVER, 0, b.data, b.len, e, 1);
    buf_free(&b);

    /* even before the frame's own payload is complete */

    memset(&b, 0, sizeof(buf_t));
    gen_text(text, sizeof(text), 17);
    put_frame(&b, OP_TEXT, MASKED, "\xce\xba\xc0", 3);
    e[0] = x_error(1007, 6 + 3);
    run_case("utf8 fail-fast: overlong lead in the first fragment -> 1007",
             SERVER, 0, b.data, b.len, e, 1);
    buf_free(&b);

    memset(&b, 0, sizeof(buf_t));
    put_frame(&b, OP_TEXT, MASKED, text, sizeof(text));
    put_frame(&b, FIN | OP_PING, MASKED, "", 0);
    put_frame(&b, OP_CONT, MASKED, "ok \xed\xa0\x80 more", 11);
    e[0] = x_data(OP_TEXT, 1, 0, text, sizeof(text));
    e[1] = x_control(OP_PING, "", 0);
    e[2] = x_error(1007, 106 + 6 + 6 + 5);
    run_case("utf8 fail-fast: surrogate in the 2nd fragment -> 1007",
             SERVER, 0, b.data, b.len, e, 3);
    buf_free(&b);

    memset(&b, 0, sizeof(buf_t));
    put_header(&b, OP_TEXT, MASKED, 0, 1000, key);
    put_payload(&b, "xy\xff", 3, MASKED, key);
    e[0] = x_error(1007, 8 + 3);
    run_case("utf8 fail-fast: FF in a 1000-byte frame of which 3 arrived",
             SERVER, 0, b.data, b.len, e, 1);
    buf_free(&b);
}


/* the codec and the RFC 3629 reference agree on "s", shown if not */

static int
utf8_agrees(const uint8_t *s, size_t len)
{
    int       rc, partial;
    size_t    ref;
    uint32_t  state;

    state = 0;
    rc = ngx_http_openclaw_utf8_validate(&state, s, len);
    ref = ref_utf8(s, len, &partial);

    if ((rc == -1) != (ref < len) || (rc == 0 && (state != 0) != partial)) {
        hexdump("disagree on", s, len);
        return 0;
    }

    return 1;
}


/*
 * ASCII is skipped many bytes at a time: a byte that is not ASCII, valid
 * or not, at every position of texts 1 to 40 bytes long is still seen.
 */

static void
test_utf8_positions(void)
{
    int      bad;
    size_t   len, at, k;
    uint8_t  s[48];

    static const char  *seqs[] = {
        "\xff", "\x80", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80",
        "\xed\xa0\x80", "\xc0\xaf", "\xe2\x82", "\xf4\x90\x80\x80"
    };

    bad = 0;

    for (len = 1; len <= 40 && !bad; len++) {
        for (at = 0; at < len && !bad; at++) {
            for (k = 0; k < sizeof(seqs) / sizeof(seqs[0]) && !bad; k++) {
                memset(s, 'a', len);

                if (at + strlen(seqs[k]) > len) {
                    continue;
                }

                memcpy(s + at, seqs[k], strlen(seqs[k]));

                bad = !utf8_agrees(s, len);
            }
        }
    }

    ok(!bad, "utf8_validate: a byte beyond ASCII at every position of "
       "texts up to 40 bytes");
}


/* the codec and the RFC 3629 reference agree on short inputs */

static void
test_utf8_exhaustive(void)
{
    int       rc, bad;
    size_t    len;
    uint8_t   s[4];
    uint32_t  i, state, n;

    static const uint8_t  tails[] = {
        0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc2,
        0xe0, 0xf0, 0xf4, 0xff
    };

    bad = 0;

    for (len = 1; len <= 3 && !bad; len++) {
        for (i = 0; i < (1u << (8 * len)) && !bad; i++) {
            for (n = 0; n < len; n++) {
                s[n] = (uint8_t) (i >> (8 * n));
            }

            bad = !utf8_agrees(s, len);
        }
    }

    /* 4 bytes: every lead and second byte, the edges of the others */

    for (i = 0; i < 256 * 256 * 15 * 15 && !bad; i++) {
        s[0] = (uint8_t) i;
        s[1] = (uint8_t) (i >> 8);
        s[2] = tails[(i >> 16) % 15];
        s[3] = tails[(i >> 16) / 15];

        bad = !utf8_agrees(s, 4);
    }

    ok(!bad, "utf8_validate agrees with an RFC 3629 decoder on every "
       "1-3 byte input and 4-byte edges");

    /* the word-at-a-time path must see a bad byte at any position */

    bad = 0;

    for (len = 1; len <= 40 && !bad; len++) {
        for (n = 0; n < len && !bad; n++) {
            uint8_t  buf[48];

            for (i = 0; i < 8 && !bad; i++) {
                memset(buf, 'a', sizeof(buf));
                buf[i + n] = 0x80;

                state = 0;
                if (ngx_http_openclaw_utf8_validate(&state, buf + i, len)
                    != -1)
                {
                    diag("0x80 at %u of %zu, alignment %u", n, len, i);
                    bad = 1;
                }
            }
        }
    }

    ok(!bad, "utf8_validate: a stray byte after ASCII is found anywhere");

    {
        uint8_t  all[128];

        for (i = 0; i < 128; i++) {
            all[i] = (uint8_t) i;
        }

        state = 0;
        rc = ngx_http_openclaw_utf8_validate(&state, all, sizeof(all));
        ok(rc == 0 && state == 0, "utf8_validate: U+0000..U+007F valid");
    }
}


int
main(void)
{
    test_constants();
    test_accept();
    test_key();
    test_mask();
    test_frame_header();
    test_close_code_valid();
    test_close_payload();

    test_data_lengths();
    test_sequence();
    test_fragments();
    test_protocol_errors();
    test_too_big();
    test_close();
    test_after_end();
    test_client_mode();

    test_utf8_cases();
    test_utf8_split();
    test_utf8_fail_fast();
    test_utf8_positions();
    test_utf8_exhaustive();

    printf("1..%u\n", tap_n);

    if (tap_failed) {
        fflush(stdout);
        fprintf(stderr, "# failed %u of %u tests\n", tap_failed, tap_n);
        return 1;
    }

    return 0;
}
