
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * libFuzzer target for the RFC 6455 frame parser.
 *
 * Input: byte 0 picks the mode (bit 0: server, i.e. masked frames
 * required), max_message (bits 1-3) and how reads are cut (bits 4-5);
 * bytes 1-2 seed the read sizes; the rest is the stream.
 *
 * The stream is parsed three times: by the real parser in one read, by
 * the real parser in many reads, and by a plain whole-buffer reference
 * parser written here from RFC 6455.  Every event is checked against the
 * header's contract as it comes, and the three event sequences must be
 * the same once the DATA pieces of a message are joined (how a message is
 * cut into DATA events depends on the reads, and so does how much of an
 * aborted message was delivered before the error, so that part is
 * dropped).  The raw input also goes through the UTF-8 validator, whose
 * answer must match the reference's, and bytes 1-2 through the close code
 * table.
 *
 * Build: clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc
 *            src/ngx_http_openclaw_ws.c fuzz/fuzz_frame.c -lcrypto
 */


#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ngx_http_openclaw_ws.h"
#include "fuzz_utf8_ref.h"


#define CHECK(cond)                                                           \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, \
                    #cond);                                                   \
            abort();                                                          \
        }                                                                     \
    } while (0)


#define OP_CONT         0x0
#define OP_TEXT         0x1
#define OP_BINARY       0x2
#define OP_CLOSE        0x8
#define OP_PING         0x9
#define OP_PONG         0xa

#define CTL_LEN         3


typedef struct {
    int                         rc;
    unsigned                    opcode;
    unsigned                    code;
    unsigned                    first;
    unsigned                    last;
    uint8_t                    *data;
    size_t                      len;
    size_t                      size;
} fev_t;


typedef struct {
    fev_t                      *ev;
    size_t                      nev;
    size_t                      size;

    uint64_t                    max;

    /* the message being received, for the size and UTF-8 checks */
    uint8_t                    *msg;
    size_t                      msg_len;
    size_t                      msg_size;
    size_t                      msg_checked;
    uint64_t                    msg_total;
    unsigned                    msg_opcode;

    unsigned                    open:1;
    unsigned                    over:1;
} run_t;


static const uint64_t  max_messages[] = {
    0, 1, 2, 125, 126, 1000, 65535, 65536
};


static void *
xalloc(size_t size)
{
    void  *p;

    p = malloc(size ? size : 1);
    CHECK(p != NULL);

    return p;
}


static void
grow(uint8_t **p, size_t *size, size_t need)
{
    /* never NULL: pointer arithmetic on it is checked by UBSan */

    if (need == 0) {
        need = 1;
    }

    if (need > *size) {
        *size = need * 2;
        *p = realloc(*p, *size);
        CHECK(*p != NULL);
    }
}


static uint64_t
rnd(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;

    return *s * 0x2545f4914f6cdd1dULL;
}


/* RFC 6455 7.4.1, 7.4.2 and the IANA registry: what a peer may send */

static int
ref_close_code(unsigned code)
{
    return (code >= 1000 && code <= 1003)
           || (code >= 1007 && code <= 1014)
           || (code >= 3000 && code <= 4999);
}


static fev_t *
run_push(run_t *r)
{
    fev_t  *e;

    if (r->nev == r->size) {
        r->size = r->size * 2 + 8;
        r->ev = realloc(r->ev, r->size * sizeof(fev_t));
        CHECK(r->ev != NULL);
    }

    e = &r->ev[r->nev++];
    memset(e, 0, sizeof(fev_t));

    return e;
}


static void
run_free(run_t *r)
{
    size_t  i;

    for (i = 0; i < r->nev; i++) {
        free(r->ev[i].data);
    }

    free(r->ev);
    free(r->msg);
}


/* checks an event against the header's contract and records it */

static void
record(run_t *r, int rc, const ngx_http_openclaw_ws_event_t *ev)
{
    size_t   bad, tail;
    fev_t   *e;

    /* nothing after ERROR or a close frame */
    CHECK(!r->over);

    switch (rc) {

    case NGX_HTTP_OPENCLAW_WS_DATA:
        CHECK(ev->opcode == OP_TEXT || ev->opcode == OP_BINARY);
        CHECK(ev->first == !r->open);
        CHECK(ev->len != 0 || ev->last);

        if (ev->first) {
            r->msg_len = 0;
            r->msg_checked = 0;
            r->msg_total = 0;
            r->msg_opcode = ev->opcode;
        }

        CHECK(ev->opcode == r->msg_opcode);

        r->msg_total += ev->len;
        CHECK(r->max == 0 || r->msg_total <= r->max);

        if (ev->opcode == OP_TEXT) {
            grow(&r->msg, &r->msg_size, r->msg_len + ev->len);
            if (ev->len) {
                memcpy(r->msg + r->msg_len, ev->data, ev->len);
            }
            r->msg_len += ev->len;

            /* text is checked as it comes, not at the end of the message */

            bad = ref_utf8(r->msg + r->msg_checked,
                           r->msg_len - r->msg_checked, &tail);
            CHECK(bad == r->msg_len - r->msg_checked);
            r->msg_checked += tail;

            if (ev->last) {
                CHECK(r->msg_checked == r->msg_len);
            }
        }

        if (r->open && r->nev
            && r->ev[r->nev - 1].rc == NGX_HTTP_OPENCLAW_WS_DATA)
        {
            e = &r->ev[r->nev - 1];

        } else {
            e = run_push(r);
            e->rc = rc;
            e->opcode = ev->opcode;
            e->first = ev->first;
        }

        grow(&e->data, &e->size, e->len + ev->len);
        if (ev->len) {
            memcpy(e->data + e->len, ev->data, ev->len);
        }

        e->len += ev->len;
        e->last = ev->last;

        r->open = !ev->last;
        break;

    case NGX_HTTP_OPENCLAW_WS_CONTROL:
        CHECK(ev->opcode == OP_CLOSE || ev->opcode == OP_PING
              || ev->opcode == OP_PONG);
        CHECK(ev->len <= NGX_HTTP_OPENCLAW_WS_MAX_CONTROL);
        CHECK(ev->len == 0 || ev->data != NULL);

        e = run_push(r);
        e->rc = rc;
        e->opcode = ev->opcode;
        e->data = xalloc(ev->len);
        if (ev->len) {
            memcpy(e->data, ev->data, ev->len);
        }
        e->len = ev->len;

        if (ev->opcode == OP_CLOSE) {
            e->code = ev->code;

            if (ev->code == NGX_HTTP_OPENCLAW_WS_NO_STATUS) {
                CHECK(ev->len == 0);

            } else {
                CHECK(ref_close_code(ev->code));
                CHECK(ev->len <= NGX_HTTP_OPENCLAW_WS_MAX_REASON);
                CHECK(ref_utf8(ev->data, ev->len, &tail) == ev->len);
                CHECK(tail == ev->len);
            }

            r->over = 1;
        }

        break;

    case NGX_HTTP_OPENCLAW_WS_ERROR:
        CHECK(ev->code == NGX_HTTP_OPENCLAW_WS_PROTOCOL
              || ev->code == NGX_HTTP_OPENCLAW_WS_INVALID_DATA
              || ev->code == NGX_HTTP_OPENCLAW_WS_TOO_BIG);
        CHECK(ev->code != NGX_HTTP_OPENCLAW_WS_TOO_BIG || r->max != 0);
        CHECK(ev->reason != NULL && ev->reason[0] != '\0');

        /* how much of an aborted message came first depends on reads */

        if (r->open && r->nev
            && r->ev[r->nev - 1].rc == NGX_HTTP_OPENCLAW_WS_DATA)
        {
            r->nev--;
            free(r->ev[r->nev].data);
        }

        e = run_push(r);
        e->rc = rc;
        e->code = ev->code;

        r->over = 1;
        break;

    default:
        CHECK(0);
    }
}


/* the real parser; "pattern" 0 is one read, 1-4 cut reads differently */

static void
run_real(run_t *r, int server, const uint8_t *in, size_t len, int pattern,
    uint64_t seed)
{
    int                            rc;
    size_t                         pos, n, off, consumed, events;
    uint8_t                       *chunk;
    uint64_t                       x;
    ngx_http_openclaw_ws_event_t   ev;
    ngx_http_openclaw_ws_parser_t  p;

    ngx_http_openclaw_ws_parser_init(&p, server, r->max);

    pos = 0;
    seed |= 1;

    do {
        x = rnd(&seed);

        switch (pattern) {
        case 0:
            n = len - pos;
            break;
        case 1:
            n = 1;
            break;
        case 2:
            n = 1 + x % 4;
            break;
        case 3:
            n = 1 + x % 64;
            break;
        default:
            n = 1 + x % (len - pos + 1);
        }

        if (n > len - pos) {
            n = len - pos;
        }

        /* an exact-size copy: ASan sees any read past the read */

        chunk = xalloc(n);
        if (n) {
            memcpy(chunk, in + pos, n);
        }

        off = 0;

        for (events = 0; /* void */ ; events++) {

            /* every event but ERROR moves on; a loop means a stuck parser */
            CHECK(events <= n + 2);

            consumed = (size_t) -1;
            memset(&ev, 0xa5, sizeof(ev));

            rc = ngx_http_openclaw_ws_parse(&p, chunk + off, n - off,
                                            &consumed, &ev);

            CHECK(consumed <= n - off);

            if (rc == NGX_HTTP_OPENCLAW_WS_AGAIN) {
                CHECK(consumed == n - off);
                break;
            }

            if (rc == NGX_HTTP_OPENCLAW_WS_DATA) {
                CHECK(ev.len <= consumed);
                CHECK(ev.len == 0
                      || (ev.data >= chunk + off
                          && ev.data + ev.len <= chunk + off + consumed));
            }

            record(r, rc, &ev);

            off += consumed;
        }

        free(chunk);
        pos += n;

    } while (pos < len);
}


static void
ref_error(run_t *r, unsigned code)
{
    ngx_http_openclaw_ws_event_t  ev;

    memset(&ev, 0, sizeof(ev));
    ev.code = code;
    ev.reason = "reference";

    record(r, NGX_HTTP_OPENCLAW_WS_ERROR, &ev);
}


/*
 * RFC 6455 5.2-5.5 read off a whole buffer, with no state machine: what
 * the resumable parser must reproduce.  A frame cut by the end of the
 * input gives what can be given: payload received so far of a data
 * frame, nothing of a header or control frame.
 */

static void
ref_parse(run_t *r, int server, const uint8_t *in, size_t len)
{
    int                            fin, masked, last, in_msg, started;
    size_t                         pos, hlen, avail, i, bad, tail, checked;
    size_t                         msg_len, msg_size;
    uint8_t                        key[4], *pl, *msg;
    unsigned                       b0, b1, op, len7, msg_op, code;
    uint64_t                       plen, size;
    ngx_http_openclaw_ws_event_t   ev;

    in_msg = 0;
    started = 0;
    msg_op = 0;
    size = 0;
    pos = 0;
    checked = 0;
    msg = NULL;
    msg_len = 0;
    msg_size = 0;
    grow(&msg, &msg_size, 1);

    while (len - pos >= 2) {
        b0 = in[pos];
        b1 = in[pos + 1];

        fin = (b0 & 0x80) != 0;
        op = b0 & 0x0f;
        masked = (b1 & 0x80) != 0;
        len7 = b1 & 0x7f;

        /* no extension is negotiated, so RSV1-3 must be 0 */

        if (b0 & 0x70) {
            ref_error(r, 1002);
            goto done;
        }

        if (op == OP_CONT) {
            if (!in_msg) {
                ref_error(r, 1002);
                goto done;
            }

        } else if (op == OP_TEXT || op == OP_BINARY) {
            if (in_msg) {
                ref_error(r, 1002);
                goto done;
            }

        } else if (op == OP_CLOSE || op == OP_PING || op == OP_PONG) {
            if (!fin || len7 > 125) {
                ref_error(r, 1002);
                goto done;
            }

        } else {
            ref_error(r, 1002);
            goto done;
        }

        if (masked != (server != 0)) {
            ref_error(r, 1002);
            goto done;
        }

        hlen = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + (masked ? 4 : 0);

        if (len - pos < hlen) {
            goto done;
        }

        if (len7 == 126) {
            plen = ((uint64_t) in[pos + 2] << 8) | in[pos + 3];

            if (plen < 126) {
                ref_error(r, 1002);
                goto done;
            }

        } else if (len7 == 127) {
            plen = 0;
            for (i = 0; i < 8; i++) {
                plen = (plen << 8) | in[pos + 2 + i];
            }

            if ((plen >> 63) || plen < 65536) {
                ref_error(r, 1002);
                goto done;
            }

        } else {
            plen = len7;
        }

        memset(key, 0, sizeof(key));
        if (masked) {
            memcpy(key, in + pos + hlen - 4, 4);
        }

        pos += hlen;

        avail = len - pos;
        if ((uint64_t) avail > plen) {
            avail = (size_t) plen;
        }

        if ((op & 0x8) && avail < plen) {
            goto done;
        }

        pl = xalloc(avail);
        for (i = 0; i < avail; i++) {
            pl[i] = in[pos + i] ^ key[i & 3];
        }

        pos += avail;

        memset(&ev, 0, sizeof(ev));

        if (op & 0x8) {
            ev.opcode = op;
            ev.data = pl;
            ev.len = avail;

            if (op != OP_CLOSE) {
                record(r, NGX_HTTP_OPENCLAW_WS_CONTROL, &ev);
                free(pl);
                continue;
            }

            if (avail == 1) {
                free(pl);
                ref_error(r, 1002);
                goto done;
            }

            if (avail == 0) {
                ev.code = 1005;

            } else {
                code = ((unsigned) pl[0] << 8) | pl[1];

                if (!ref_close_code(code)
                    || ref_utf8(pl + 2, avail - 2, &tail) != avail - 2
                    || tail != avail - 2)
                {
                    free(pl);
                    ref_error(r, 1002);
                    goto done;
                }

                ev.code = code;
                ev.data = pl + 2;
                ev.len = avail - 2;
            }

            record(r, NGX_HTTP_OPENCLAW_WS_CONTROL, &ev);
            free(pl);
            goto done;
        }

        if (op != OP_CONT) {
            in_msg = 1;
            started = 0;
            msg_op = op;
            size = 0;
            checked = 0;
            msg_len = 0;
        }

        if (r->max && plen > r->max - size) {
            free(pl);
            ref_error(r, 1009);
            goto done;
        }

        size += avail;
        last = fin && avail == plen;

        if (msg_op == OP_TEXT) {
            grow(&msg, &msg_size, msg_len + avail);
            if (avail) {
                memcpy(msg + msg_len, pl, avail);
            }
            msg_len += avail;

            bad = ref_utf8(msg + checked, msg_len - checked, &tail);

            if (bad != msg_len - checked
                || (last && checked + tail != msg_len))
            {
                free(pl);
                ref_error(r, 1007);
                goto done;
            }

            checked += tail;
        }

        if (avail || last) {
            ev.opcode = msg_op;
            ev.data = pl;
            ev.len = avail;
            ev.first = !started;
            ev.last = last;
            started = 1;

            record(r, NGX_HTTP_OPENCLAW_WS_DATA, &ev);
        }

        free(pl);

        if (last) {
            in_msg = 0;
        }

        if ((uint64_t) avail < plen) {
            goto done;
        }
    }

done:

    free(msg);
}


static void
compare(const run_t *a, const run_t *b)
{
    size_t        i;
    const fev_t  *x, *y;

    CHECK(a->nev == b->nev);

    for (i = 0; i < a->nev; i++) {
        x = &a->ev[i];
        y = &b->ev[i];

        CHECK(x->rc == y->rc);
        CHECK(x->code == y->code);

        if (x->rc != NGX_HTTP_OPENCLAW_WS_ERROR) {
            CHECK(x->opcode == y->opcode);
            CHECK(x->first == y->first);
            CHECK(x->last == y->last);
            CHECK(x->len == y->len);
            CHECK(x->len == 0 || memcmp(x->data, y->data, x->len) == 0);
        }
    }
}


/* the validator on arbitrary bytes, in one call, per byte and in reads */

static void
check_utf8(const uint8_t *in, size_t len, uint64_t seed)
{
    int       rc;
    size_t    bad, tail, i, n;
    uint32_t  state;

    bad = ref_utf8(in, len, &tail);

    state = 0;
    rc = ngx_http_openclaw_utf8_validate(&state, in, len);

    CHECK(rc == 0 || rc == -1);
    CHECK((rc == -1) == (bad < len));

    if (rc == 0) {
        CHECK((state != 0) == (tail < len));
    }

    /* -1 comes at the very byte the reference stops at */

    state = 0;

    for (i = 0; i < len; i++) {
        rc = ngx_http_openclaw_utf8_validate(&state, in + i, 1);

        if (rc != 0) {
            break;
        }
    }

    CHECK(i == bad);

    state = 0;
    seed |= 1;

    for (i = 0; i < len; i += n) {
        n = 1 + rnd(&seed) % 16;
        if (n > len - i) {
            n = len - i;
        }

        rc = ngx_http_openclaw_utf8_validate(&state, in + i, n);

        if (rc != 0) {
            CHECK(bad >= i && bad < i + n);
            return;
        }
    }

    CHECK(bad == len);
    CHECK((state != 0) == (tail < len));
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int              server, pattern;
    run_t            whole, split, ref;
    size_t           len;
    uint64_t         max, seed;
    const uint8_t   *in;

    if (size < CTL_LEN) {
        return 0;
    }

    server = data[0] & 1;
    max = max_messages[(data[0] >> 1) & 7];
    pattern = 1 + ((data[0] >> 4) & 3);
    seed = ((uint64_t) data[1] << 8) | data[2];

    in = data + CTL_LEN;
    len = size - CTL_LEN;

    memset(&whole, 0, sizeof(run_t));
    memset(&split, 0, sizeof(run_t));
    memset(&ref, 0, sizeof(run_t));

    whole.max = max;
    split.max = max;
    ref.max = max;

    run_real(&whole, server, in, len, 0, seed);
    run_real(&split, server, in, len, pattern, seed);
    ref_parse(&ref, server, in, len);

    compare(&whole, &split);
    compare(&whole, &ref);

    run_free(&whole);
    run_free(&split);
    run_free(&ref);

    check_utf8(data, size, seed);

    /* the seed bytes double as a close code to check the table with */

    CHECK(!ngx_http_openclaw_ws_close_code_valid((unsigned) seed)
          == !ref_close_code((unsigned) seed));

    return 0;
}
