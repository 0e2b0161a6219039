
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#include <string.h>
#include <openssl/evp.h>

#if (defined __SSE2__)
#include <emmintrin.h>
#endif

#include "ngx_http_openclaw_ws.h"


#define WS_ST_HEADER    0
#define WS_ST_PAYLOAD   1
#define WS_ST_CONTROL   2
#define WS_ST_CLOSED    3

#define WS_GUID         "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


static ngx_http_openclaw_ws_rc_e ngx_http_openclaw_ws_fail(
    ngx_http_openclaw_ws_parser_t *p, ngx_http_openclaw_ws_event_t *ev,
    unsigned code, const char *reason);
static ngx_http_openclaw_ws_rc_e ngx_http_openclaw_ws_check_start(
    ngx_http_openclaw_ws_parser_t *p, ngx_http_openclaw_ws_event_t *ev);
static ngx_http_openclaw_ws_rc_e ngx_http_openclaw_ws_check_header(
    ngx_http_openclaw_ws_parser_t *p, ngx_http_openclaw_ws_event_t *ev);
static ngx_http_openclaw_ws_rc_e ngx_http_openclaw_ws_control_done(
    ngx_http_openclaw_ws_parser_t *p, ngx_http_openclaw_ws_event_t *ev);


void
ngx_http_openclaw_ws_parser_init(ngx_http_openclaw_ws_parser_t *p,
    int server, uint64_t max_message)
{
    memset(p, 0, sizeof(ngx_http_openclaw_ws_parser_t));

    p->server = server ? 1 : 0;
    p->max_message = max_message;
    p->header_need = 2;
}


ngx_http_openclaw_ws_rc_e
ngx_http_openclaw_ws_parse(ngx_http_openclaw_ws_parser_t *p, uint8_t *buf,
    size_t len, size_t *consumed, ngx_http_openclaw_ws_event_t *ev)
{
    size_t                     n;
    uint8_t                   *pos, *last;
    ngx_http_openclaw_ws_rc_e  rc;

    pos = buf;
    last = buf + len;

    ev->data = NULL;
    ev->len = 0;
    ev->first = 0;
    ev->last = 0;

    for ( ;; ) {

        switch (p->state) {

        case WS_ST_HEADER:

            while (p->header_len < p->header_need) {

                if (pos == last) {
                    goto again;
                }

                p->header[p->header_len++] = *pos++;

                if (p->header_len == 2) {
                    rc = ngx_http_openclaw_ws_check_start(p, ev);
                    if (rc != NGX_HTTP_OPENCLAW_WS_AGAIN) {
                        goto done;
                    }
                }
            }

            rc = ngx_http_openclaw_ws_check_header(p, ev);
            if (rc != NGX_HTTP_OPENCLAW_WS_AGAIN) {
                goto done;
            }

            break;

        case WS_ST_PAYLOAD:

            n = (size_t) (last - pos);
            if ((uint64_t) n > p->remaining) {
                n = (size_t) p->remaining;
            }

            if (p->masked) {
                ngx_http_openclaw_ws_mask(pos, n, p->mask, p->mask_pos);
                p->mask_pos = (p->mask_pos + n) & 3;
            }

            if (p->message_opcode == NGX_HTTP_OPENCLAW_WS_TEXT
                && ngx_http_openclaw_utf8_validate(&p->utf8, pos, n) != 0)
            {
                rc = ngx_http_openclaw_ws_fail(p, ev,
                                      NGX_HTTP_OPENCLAW_WS_INVALID_DATA,
                                      "invalid UTF-8 in text message");
                goto done;
            }

            ev->data = pos;
            ev->len = n;

            pos += n;
            p->remaining -= n;
            p->message_size += n;

            if (p->remaining == 0) {
                p->state = WS_ST_HEADER;
                p->header_len = 0;
                p->header_need = 2;

                if (p->fin) {
                    if (p->utf8 != 0) {
                        rc = ngx_http_openclaw_ws_fail(p, ev,
                                      NGX_HTTP_OPENCLAW_WS_INVALID_DATA,
                                      "text message ends inside a UTF-8 "
                                      "sequence");
                        goto done;
                    }

                    p->in_message = 0;
                    ev->last = 1;
                }
            }

            if (n == 0 && !ev->last) {
                if (pos == last && p->state == WS_ST_PAYLOAD) {
                    goto again;
                }

                break;
            }

            ev->opcode = p->message_opcode;
            ev->first = p->message_started ? 0 : 1;
            p->message_started = 1;

            rc = NGX_HTTP_OPENCLAW_WS_DATA;
            goto done;

        case WS_ST_CONTROL:

            n = (size_t) (last - pos);
            if ((uint64_t) n > p->remaining) {
                n = (size_t) p->remaining;
            }

            memcpy(p->control + p->control_len, pos, n);

            if (p->masked) {
                ngx_http_openclaw_ws_mask(p->control + p->control_len, n,
                                          p->mask, p->control_len);
            }

            pos += n;
            p->control_len += n;
            p->remaining -= n;

            if (p->remaining != 0) {
                goto again;
            }

            rc = ngx_http_openclaw_ws_control_done(p, ev);
            goto done;

        default: /* WS_ST_CLOSED */
            pos = last;
            goto again;
        }
    }

again:

    *consumed = (size_t) (pos - buf);
    return NGX_HTTP_OPENCLAW_WS_AGAIN;

done:

    *consumed = (size_t) (pos - buf);
    return rc;
}


static ngx_http_openclaw_ws_rc_e
ngx_http_openclaw_ws_fail(ngx_http_openclaw_ws_parser_t *p,
    ngx_http_openclaw_ws_event_t *ev, unsigned code, const char *reason)
{
    p->state = WS_ST_CLOSED;
    p->closed = 1;

    ev->code = code;
    ev->reason = reason;
    ev->data = NULL;
    ev->len = 0;

    return NGX_HTTP_OPENCLAW_WS_ERROR;
}


/* the first two bytes decide everything that can be refused early */

static ngx_http_openclaw_ws_rc_e
ngx_http_openclaw_ws_check_start(ngx_http_openclaw_ws_parser_t *p,
    ngx_http_openclaw_ws_event_t *ev)
{
    unsigned  opcode, len;

    if (p->header[0] & 0x70) {
        return ngx_http_openclaw_ws_fail(p, ev, NGX_HTTP_OPENCLAW_WS_PROTOCOL,
                                         "reserved bits set without an "
                                         "extension");
    }

    opcode = p->header[0] & 0x0f;
    len = p->header[1] & 0x7f;

    p->fin = (p->header[0] & 0x80) ? 1 : 0;
    p->masked = (p->header[1] & 0x80) ? 1 : 0;
    p->opcode = opcode;

    switch (opcode) {

    case NGX_HTTP_OPENCLAW_WS_CONTINUATION:
        if (!p->in_message) {
            return ngx_http_openclaw_ws_fail(p, ev,
                                         NGX_HTTP_OPENCLAW_WS_PROTOCOL,
                                         "continuation frame without a "
                                         "message to continue");
        }
        break;

    case NGX_HTTP_OPENCLAW_WS_TEXT:
    case NGX_HTTP_OPENCLAW_WS_BINARY:
        if (p->in_message) {
            return ngx_http_openclaw_ws_fail(p, ev,
                                         NGX_HTTP_OPENCLAW_WS_PROTOCOL,
                                         "new data frame inside a "
                                         "fragmented message");
        }
        break;

    case NGX_HTTP_OPENCLAW_WS_CLOSE:
    case NGX_HTTP_OPENCLAW_WS_PING:
    case NGX_HTTP_OPENCLAW_WS_PONG:
        if (!p->fin) {
            return ngx_http_openclaw_ws_fail(p, ev,
                                         NGX_HTTP_OPENCLAW_WS_PROTOCOL,
                                         "fragmented control frame");
        }

        if (len > NGX_HTTP_OPENCLAW_WS_MAX_CONTROL) {
            return ngx_http_openclaw_ws_fail(p, ev,
                                         NGX_HTTP_OPENCLAW_WS_PROTOCOL,
                                         "control frame over 125 bytes");
        }
        break;

    default:
        return ngx_http_openclaw_ws_fail(p, ev, NGX_HTTP_OPENCLAW_WS_PROTOCOL,
                                         "unknown opcode");
    }

    if (p->server && !p->masked) {
        return ngx_http_openclaw_ws_fail(p, ev, NGX_HTTP_OPENCLAW_WS_PROTOCOL,
                                         "client frame is not masked");
    }

    if (!p->server && p->masked) {
        return ngx_http_openclaw_ws_fail(p, ev, NGX_HTTP_OPENCLAW_WS_PROTOCOL,
                                         "server frame is masked");
    }

    p->header_need = 2 + (len == 126 ? 2 : (len == 127 ? 8 : 0))
                     + (p->masked ? 4 : 0);

    return NGX_HTTP_OPENCLAW_WS_AGAIN;
}


static ngx_http_openclaw_ws_rc_e
ngx_http_openclaw_ws_check_header(ngx_http_openclaw_ws_parser_t *p,
    ngx_http_openclaw_ws_event_t *ev)
{
    unsigned   i, off;
    uint64_t   len;

    len = p->header[1] & 0x7f;
    off = 2;

    if (len == 126) {
        len = ((uint64_t) p->header[2] << 8) | p->header[3];
        off = 4;

        if (len < 126) {
            return ngx_http_openclaw_ws_fail(p, ev,
                                         NGX_HTTP_OPENCLAW_WS_PROTOCOL,
                                         "frame length not minimally "
                                         "encoded");
        }

    } else if (len == 127) {
        if (p->header[2] & 0x80) {
            return ngx_http_openclaw_ws_fail(p, ev,
                                         NGX_HTTP_OPENCLAW_WS_PROTOCOL,
                                         "64-bit frame length with the "
                                         "top bit set");
        }

        len = 0;
        for (i = 2; i < 10; i++) {
            len = (len << 8) | p->header[i];
        }

        off = 10;

        if (len < 65536) {
            return ngx_http_openclaw_ws_fail(p, ev,
                                         NGX_HTTP_OPENCLAW_WS_PROTOCOL,
                                         "frame length not minimally "
                                         "encoded");
        }
    }

    if (p->masked) {
        memcpy(p->mask, &p->header[off], 4);
    }

    p->mask_pos = 0;
    p->remaining = len;
    p->header_len = 0;
    p->header_need = 2;

    if (p->opcode & 0x8) {
        p->control_len = 0;
        p->state = WS_ST_CONTROL;

        if (len == 0) {
            return ngx_http_openclaw_ws_control_done(p, ev);
        }

        return NGX_HTTP_OPENCLAW_WS_AGAIN;
    }

    if (p->opcode != NGX_HTTP_OPENCLAW_WS_CONTINUATION) {
        p->message_opcode = p->opcode;
        p->message_size = 0;
        p->message_started = 0;
        p->utf8 = 0;
        p->in_message = 1;
    }

    if (p->max_message && len > p->max_message - p->message_size) {
        return ngx_http_openclaw_ws_fail(p, ev, NGX_HTTP_OPENCLAW_WS_TOO_BIG,
                                         "message too big");
    }

    p->state = WS_ST_PAYLOAD;

    return NGX_HTTP_OPENCLAW_WS_AGAIN;
}


static ngx_http_openclaw_ws_rc_e
ngx_http_openclaw_ws_control_done(ngx_http_openclaw_ws_parser_t *p,
    ngx_http_openclaw_ws_event_t *ev)
{
    uint32_t  utf8;

    p->state = WS_ST_HEADER;

    ev->opcode = p->opcode;
    ev->data = p->control;
    ev->len = p->control_len;
    ev->code = 0;

    if (p->opcode != NGX_HTTP_OPENCLAW_WS_CLOSE) {
        return NGX_HTTP_OPENCLAW_WS_CONTROL;
    }

    if (p->control_len == 1) {
        return ngx_http_openclaw_ws_fail(p, ev, NGX_HTTP_OPENCLAW_WS_PROTOCOL,
                                         "close frame with a 1-byte "
                                         "payload");
    }

    if (p->control_len == 0) {
        ev->code = NGX_HTTP_OPENCLAW_WS_NO_STATUS;

    } else {
        ev->code = ((unsigned) p->control[0] << 8) | p->control[1];

        if (!ngx_http_openclaw_ws_close_code_valid(ev->code)) {
            return ngx_http_openclaw_ws_fail(p, ev,
                                         NGX_HTTP_OPENCLAW_WS_PROTOCOL,
                                         "invalid close code");
        }

        utf8 = 0;

        if (ngx_http_openclaw_utf8_validate(&utf8, p->control + 2,
                                            p->control_len - 2)
            != 0
            || utf8 != 0)
        {
            return ngx_http_openclaw_ws_fail(p, ev,
                                         NGX_HTTP_OPENCLAW_WS_PROTOCOL,
                                         "close reason is not UTF-8");
        }

        ev->data = p->control + 2;
        ev->len = p->control_len - 2;
    }

    p->state = WS_ST_CLOSED;
    p->closed = 1;

    return NGX_HTTP_OPENCLAW_WS_CONTROL;
}


size_t
ngx_http_openclaw_ws_frame_header(uint8_t *buf, unsigned opcode, int fin,
    uint64_t len, const uint8_t *mask)
{
    size_t  n;
    int     i;

    buf[0] = (uint8_t) ((fin ? 0x80 : 0) | (opcode & 0x0f));

    if (len < 126) {
        buf[1] = (uint8_t) len;
        n = 2;

    } else if (len < 65536) {
        buf[1] = 126;
        buf[2] = (uint8_t) (len >> 8);
        buf[3] = (uint8_t) len;
        n = 4;

    } else {
        buf[1] = 127;
        for (i = 0; i < 8; i++) {
            buf[2 + i] = (uint8_t) (len >> (56 - 8 * i));
        }
        n = 10;
    }

    if (mask) {
        buf[1] |= 0x80;
        memcpy(buf + n, mask, 4);
        n += 4;
    }

    return n;
}


void
ngx_http_openclaw_ws_mask(uint8_t *data, size_t len, const uint8_t *key,
    size_t offset)
{
    size_t    i;
    uint8_t   k[4];
    uint32_t  half;
    uint64_t  word, kw;

    for (i = 0; i < 4; i++) {
        k[i] = key[(offset + i) & 3];
    }

    /* the key twice over: the same word in either byte order */

    memcpy(&half, k, 4);
    kw = ((uint64_t) half << 32) | half;

    /* whole words keep the key phase, since 8 is a multiple of 4 */

    for (i = 0; i + 8 <= len; i += 8) {
        memcpy(&word, data + i, 8);
        word ^= kw;
        memcpy(data + i, &word, 8);
    }

    for ( /* void */ ; i < len; i++) {
        data[i] ^= k[i & 3];
    }
}


size_t
ngx_http_openclaw_ws_close_payload(uint8_t *buf, unsigned code,
    const char *reason, size_t reason_len)
{
    if (code == 0) {
        return 0;
    }

    buf[0] = (uint8_t) (code >> 8);
    buf[1] = (uint8_t) code;

    if (reason_len > NGX_HTTP_OPENCLAW_WS_MAX_REASON) {
        reason_len = NGX_HTTP_OPENCLAW_WS_MAX_REASON;

        /* never cut a UTF-8 sequence in two */

        while (reason_len > 0
               && ((uint8_t) reason[reason_len] & 0xc0) == 0x80)
        {
            reason_len--;
        }
    }

    if (reason_len) {
        memcpy(buf + 2, reason, reason_len);
    }

    return 2 + reason_len;
}


int
ngx_http_openclaw_ws_close_code_valid(unsigned code)
{
    if (code >= 1000 && code <= 1003) {
        return 1;
    }

    if (code >= 1007 && code <= 1014) {
        return 1;
    }

    return code >= 3000 && code <= 4999;
}


/*
 * The state packs the continuation bytes still expected (bits 0-1) and the
 * range allowed for the next one (bits 8-15 and 16-23), which is narrower
 * than 0x80-0xbf only right after E0, ED, F0 and F4: that is how overlongs,
 * surrogates and code points above U+10FFFF are refused at their first
 * wrong byte.
 */

#define UTF8_STATE(need, lo, hi)                                              \
    ((uint32_t) (need) | ((uint32_t) (lo) << 8) | ((uint32_t) (hi) << 16))

int
ngx_http_openclaw_utf8_validate(uint32_t *state, const uint8_t *p, size_t len)
{
    uint8_t        c;
    uint32_t       s;
    uint64_t       word;
    const uint8_t *last;

    s = *state;
    last = p + len;

    while (p < last) {

        if (s == 0) {

            /* text is mostly ASCII: skipped 16 or 8 bytes at a time */

#if (defined __SSE2__ && defined __GNUC__)
            while (last - p >= 16) {
                if (_mm_movemask_epi8(_mm_loadu_si128((const __m128i *) p))) {
                    break;
                }

                p += 16;
            }
#endif

            while (last - p >= 8) {
                memcpy(&word, p, 8);
                if (word & 0x8080808080808080ULL) {
                    break;
                }
                p += 8;
            }

            if (p == last) {
                break;
            }

            c = *p++;

            if (c < 0x80) {
                continue;
            }

            if (c < 0xc2) {
                goto invalid;
            }

            if (c < 0xe0) {
                s = UTF8_STATE(1, 0x80, 0xbf);

            } else if (c == 0xe0) {
                s = UTF8_STATE(2, 0xa0, 0xbf);

            } else if (c == 0xed) {
                s = UTF8_STATE(2, 0x80, 0x9f);

            } else if (c < 0xf0) {
                s = UTF8_STATE(2, 0x80, 0xbf);

            } else if (c == 0xf0) {
                s = UTF8_STATE(3, 0x90, 0xbf);

            } else if (c < 0xf4) {
                s = UTF8_STATE(3, 0x80, 0xbf);

            } else if (c == 0xf4) {
                s = UTF8_STATE(3, 0x80, 0x8f);

            } else {
                goto invalid;
            }

            continue;
        }

        c = *p++;

        if (c < ((s >> 8) & 0xff) || c > ((s >> 16) & 0xff)) {
            goto invalid;
        }

        s = ((s & 3) - 1);

        if (s != 0) {
            s = UTF8_STATE(s, 0x80, 0xbf);
        }
    }

    *state = s;
    return 0;

invalid:

    *state = s;
    return -1;
}


static int
ngx_http_openclaw_base64_value(uint8_t c)
{
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }

    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }

    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }

    if (c == '+') {
        return 62;
    }

    if (c == '/') {
        return 63;
    }

    return -1;
}


int
ngx_http_openclaw_ws_key_valid(const uint8_t *key, size_t len)
{
    size_t  i;

    /* 16 bytes are 22 base64 digits and "==" */

    if (len != 24 || key[22] != '=' || key[23] != '=') {
        return -1;
    }

    for (i = 0; i < 22; i++) {
        if (ngx_http_openclaw_base64_value(key[i]) < 0) {
            return -1;
        }
    }

    /* the last digit carries 2 bits of data: the other 4 must be zero */

    if (ngx_http_openclaw_base64_value(key[21]) & 0x0f) {
        return -1;
    }

    return 0;
}


int
ngx_http_openclaw_ws_accept(const uint8_t *key, size_t len, uint8_t *out)
{
    int            ok;
    uint8_t        md[EVP_MAX_MD_SIZE];
    uint8_t        b64[NGX_HTTP_OPENCLAW_WS_ACCEPT_LEN + 4];
    unsigned int   mdlen;
    EVP_MD_CTX    *ctx;

    ctx = EVP_MD_CTX_new();
    if (ctx == NULL) {
        return -1;
    }

    ok = EVP_DigestInit_ex(ctx, EVP_sha1(), NULL)
         && EVP_DigestUpdate(ctx, key, len)
         && EVP_DigestUpdate(ctx, WS_GUID, sizeof(WS_GUID) - 1)
         && EVP_DigestFinal_ex(ctx, md, &mdlen);

    EVP_MD_CTX_free(ctx);

    if (!ok || mdlen != 20) {
        return -1;
    }

    if (EVP_EncodeBlock(b64, md, 20) != NGX_HTTP_OPENCLAW_WS_ACCEPT_LEN) {
        return -1;
    }

    memcpy(out, b64, NGX_HTTP_OPENCLAW_WS_ACCEPT_LEN);

    return 0;
}
