
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#include <string.h>

#include "ngx_http_openclaw_headers.h"


static int ngx_http_openclaw_ows(uint8_t c);
static int ngx_http_openclaw_caseeq(const uint8_t *p, size_t len,
    const char *s);
static void ngx_http_openclaw_trim(const uint8_t **p, const uint8_t **last);


static int
ngx_http_openclaw_ows(uint8_t c)
{
    return c == ' ' || c == '\t';
}


/* "len" bytes at "p" are the C string "s", without ASCII case */

static int
ngx_http_openclaw_caseeq(const uint8_t *p, size_t len, const char *s)
{
    size_t   i;
    uint8_t  a, b;

    if (strlen(s) != len) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        a = p[i];
        b = (uint8_t) s[i];

        if (a >= 'A' && a <= 'Z') {
            a |= 0x20;
        }

        if (b >= 'A' && b <= 'Z') {
            b |= 0x20;
        }

        if (a != b) {
            return 0;
        }
    }

    return 1;
}


static void
ngx_http_openclaw_trim(const uint8_t **p, const uint8_t **last)
{
    while (*p < *last && ngx_http_openclaw_ows(**p)) {
        (*p)++;
    }

    while (*last > *p && ngx_http_openclaw_ows((*last)[-1])) {
        (*last)--;
    }
}


int
ngx_http_openclaw_media_is(const uint8_t *p, size_t len, const char *type)
{
    const uint8_t  *last, *semi;

    last = p + len;
    semi = memchr(p, ';', len);

    if (semi) {
        last = semi;
    }

    ngx_http_openclaw_trim(&p, &last);

    return ngx_http_openclaw_caseeq(p, last - p, type);
}


/*
 * Each element of the list: a media range, then parameters, of which
 * "q" says whether it is wanted at all (q=0, q=0.0, ... say not).
 */

int
ngx_http_openclaw_accepts(const uint8_t *p, size_t len, const char *type)
{
    int             refused;
    const uint8_t  *end, *elt, *elt_end, *range_end, *q, *param, *next;

    end = p + len;

    while (p < end) {
        elt = p;
        elt_end = memchr(p, ',', end - p);

        if (elt_end == NULL) {
            elt_end = end;
        }

        p = (elt_end < end) ? elt_end + 1 : end;

        range_end = memchr(elt, ';', elt_end - elt);

        if (range_end == NULL) {
            range_end = elt_end;
        }

        next = range_end;
        ngx_http_openclaw_trim(&elt, &range_end);

        if (!ngx_http_openclaw_caseeq(elt, range_end - elt, type)) {
            continue;
        }

        /* its parameters: a q of zero refuses it (another may list it) */

        refused = 0;

        while (next < elt_end) {
            param = next + 1;
            next = memchr(param, ';', elt_end - param);

            if (next == NULL) {
                next = elt_end;
            }

            q = param;

            while (q < next && ngx_http_openclaw_ows(*q)) {
                q++;
            }

            if (next - q < 2 || (q[0] != 'q' && q[0] != 'Q') || q[1] != '=')
            {
                continue;
            }

            for (q += 2; q < next && (*q == '0' || *q == '.'); q++) {
                /* void */
            }

            while (q < next && ngx_http_openclaw_ows(*q)) {
                q++;
            }

            if (q == next) {
                refused = 1;
            }
        }

        if (!refused) {
            return 1;
        }
    }

    return 0;
}


int
ngx_http_openclaw_header_value(const uint8_t *p, size_t len,
    const char *name, const uint8_t **value, size_t *vlen)
{
    size_t          n;
    const uint8_t  *last;

    n = strlen(name);

    if (len <= n || p[n] != ':' || !ngx_http_openclaw_caseeq(p, n, name)) {
        return 0;
    }

    last = p + len;
    p += n + 1;

    /* the line's end and the white space before it, in any order */

    while (last > p
           && (last[-1] == '\r' || last[-1] == '\n'
               || ngx_http_openclaw_ows(last[-1])))
    {
        last--;
    }

    ngx_http_openclaw_trim(&p, &last);

    *value = p;
    *vlen = last - p;

    return 1;
}


long
ngx_http_openclaw_delta_seconds(const uint8_t *p, size_t len, long max)
{
    long    n;
    size_t  i;

    if (len == 0) {
        return -1;
    }

    n = 0;

    for (i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return -1;
        }

        /* past "max", more digits change nothing: no overflow */

        if (n < max) {
            n = n * 10 + (p[i] - '0');
        }
    }

    return n < max ? n : max;
}
