
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#include <string.h>

#include "ngx_http_openclaw_json.h"


#define JV_MAX_DEPTH  128


static const uint8_t *jv_ws(const uint8_t *p, const uint8_t *end);
static const uint8_t *jv_check(const uint8_t *p, const uint8_t *end,
    int depth);
static const uint8_t *jv_check_string(const uint8_t *p, const uint8_t *end);
static const uint8_t *jv_check_number(const uint8_t *p, const uint8_t *end);
static const uint8_t *jv_string_end(const uint8_t *p, const uint8_t *end);
static void jv_describe(const uint8_t *p, const uint8_t *end,
    ngx_http_openclaw_jv_t *v);
static const uint8_t *jv_unescape(const uint8_t *p, const uint8_t *end,
    uint8_t **dst);
static int jv_hex(const uint8_t *p, uint32_t *value);
static uint8_t *jv_utf8(uint8_t *dst, uint32_t cp);


static const uint8_t *
jv_ws(const uint8_t *p, const uint8_t *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) {
        p++;
    }

    return p;
}


int
ngx_http_openclaw_jv_parse(const uint8_t *p, size_t len,
    ngx_http_openclaw_jv_t *v)
{
    const uint8_t  *end, *start, *last;

    /* an empty text is invalid, and "p" may then be NULL: no NULL + 0 */

    if (len == 0) {
        v->type = NGX_HTTP_OPENCLAW_JSON_INVALID;
        return -1;
    }

    end = p + len;
    start = jv_ws(p, end);

    last = jv_check(start, end, 0);

    if (last == NULL) {
        v->type = NGX_HTTP_OPENCLAW_JSON_INVALID;
        return -1;
    }

    if (jv_ws(last, end) != end) {
        v->type = NGX_HTTP_OPENCLAW_JSON_INVALID;
        return -2;
    }

    jv_describe(start, last, v);

    return 0;
}


/* validates one value at "p"; returns the byte after it, or NULL */

static const uint8_t *
jv_check(const uint8_t *p, const uint8_t *end, int depth)
{
    uint8_t  close;

    if (p >= end) {
        return NULL;
    }

    switch (*p) {

    case '"':
        return jv_check_string(p, end);

    case '{':
    case '[':

        if (++depth > JV_MAX_DEPTH) {
            return NULL;
        }

        close = (*p == '{') ? '}' : ']';
        p = jv_ws(p + 1, end);

        if (p < end && *p == close) {
            return p + 1;
        }

        for ( ;; ) {

            if (close == '}') {
                if (p >= end || *p != '"') {
                    return NULL;
                }

                p = jv_check_string(p, end);
                if (p == NULL) {
                    return NULL;
                }

                p = jv_ws(p, end);

                if (p >= end || *p != ':') {
                    return NULL;
                }

                p = jv_ws(p + 1, end);
            }

            p = jv_check(p, end, depth);
            if (p == NULL) {
                return NULL;
            }

            p = jv_ws(p, end);

            if (p >= end) {
                return NULL;
            }

            if (*p == close) {
                return p + 1;
            }

            if (*p != ',') {
                return NULL;
            }

            p = jv_ws(p + 1, end);
        }

    case 't':
        return (end - p >= 4 && memcmp(p, "true", 4) == 0) ? p + 4 : NULL;

    case 'f':
        return (end - p >= 5 && memcmp(p, "false", 5) == 0) ? p + 5 : NULL;

    case 'n':
        return (end - p >= 4 && memcmp(p, "null", 4) == 0) ? p + 4 : NULL;

    default:
        return jv_check_number(p, end);
    }
}


static const uint8_t *
jv_check_string(const uint8_t *p, const uint8_t *end)
{
    uint32_t  cp;

    for (p++; p < end; p++) {

        /* most bytes are plain: skip them in one tight loop */

        while (*p >= 0x20 && *p != '"' && *p != '\\') {
            if (++p == end) {
                return NULL;
            }
        }

        if (*p == '"') {
            return p + 1;
        }

        if (*p < 0x20) {
            return NULL;
        }

        if (++p >= end) {
            return NULL;
        }

        switch (*p) {
        case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r':
        case 't':
            break;

        case 'u':
            if (end - p < 5 || jv_hex(p + 1, &cp) != 0) {
                return NULL;
            }

            p += 4;
            break;

        default:
            return NULL;
        }
    }

    return NULL;
}


static const uint8_t *
jv_check_number(const uint8_t *p, const uint8_t *end)
{
    const uint8_t  *digits;

    if (p < end && *p == '-') {
        p++;
    }

    if (p >= end || *p < '0' || *p > '9') {
        return NULL;
    }

    if (*p == '0') {
        p++;

    } else {
        while (p < end && *p >= '0' && *p <= '9') {
            p++;
        }
    }

    if (p < end && *p == '.') {
        digits = ++p;

        while (p < end && *p >= '0' && *p <= '9') {
            p++;
        }

        if (p == digits) {
            return NULL;
        }
    }

    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;

        if (p < end && (*p == '+' || *p == '-')) {
            p++;
        }

        digits = p;

        while (p < end && *p >= '0' && *p <= '9') {
            p++;
        }

        if (p == digits) {
            return NULL;
        }
    }

    return p;
}


/* the closing quote of a validated string whose content starts at "p" */

static const uint8_t *
jv_string_end(const uint8_t *p, const uint8_t *end)
{
    const uint8_t  *q, *b;

    for ( ;; ) {
        q = memchr(p, '"', end - p);

        /* a quote preceded by an odd number of backslashes is escaped */

        for (b = q; b > p && b[-1] == '\\'; b--) { /* void */ }

        if (((q - b) & 1) == 0) {
            return q;
        }

        p = q + 1;
    }
}


/* describes the value at "p" of an already validated text */

static void
jv_describe(const uint8_t *p, const uint8_t *end, ngx_http_openclaw_jv_t *v)
{
    int             depth;
    const uint8_t  *q;

    v->start = p;
    v->data = NULL;
    v->size = 0;
    v->escaped = 0;

    switch (*p) {

    case '"':
        v->type = NGX_HTTP_OPENCLAW_JSON_STRING;
        v->data = p + 1;

        /*
         * Names and most values are short: a byte loop beats two calls
         * of memchr() there, which take over for long text.
         */

        for (q = p + 1; q < p + 33; q++) {

            if (*q == '"') {
                goto found;
            }

            if (*q == '\\') {
                v->escaped = 1;
                q++;
            }
        }

        q = jv_string_end(q, end);

        if (!v->escaped) {
            v->escaped = (memchr(p + 1, '\\', q - (p + 1)) != NULL);
        }

    found:

        v->size = q - (p + 1);
        v->len = q + 1 - p;
        return;

    case '{':
    case '[':
        v->type = (*p == '{') ? NGX_HTTP_OPENCLAW_JSON_OBJECT
                              : NGX_HTTP_OPENCLAW_JSON_ARRAY;
        depth = 0;

        for (q = p; q < end; q++) {

            switch (*q) {

            case '"':
                q = jv_string_end(q + 1, end);
                break;

            case '{':
            case '[':
                depth++;
                break;

            case '}':
            case ']':
                if (--depth == 0) {
                    v->len = q + 1 - p;
                    return;
                }

                break;
            }
        }

        v->len = q - p;
        return;

    case 't':
        v->type = NGX_HTTP_OPENCLAW_JSON_TRUE;
        v->len = 4;
        return;

    case 'f':
        v->type = NGX_HTTP_OPENCLAW_JSON_FALSE;
        v->len = 5;
        return;

    case 'n':
        v->type = NGX_HTTP_OPENCLAW_JSON_NULL;
        v->len = 4;
        return;

    default:
        v->type = NGX_HTTP_OPENCLAW_JSON_NUMBER;

        for (q = p; q < end; q++) {
            if (!((*q >= '0' && *q <= '9') || *q == '-' || *q == '+'
                  || *q == '.' || *q == 'e' || *q == 'E'))
            {
                break;
            }
        }

        v->len = q - p;
        return;
    }
}


int
ngx_http_openclaw_jv_members(ngx_http_openclaw_jv_t *obj, const char **names,
    ngx_http_openclaw_jv_t *out, int n)
{
    int                     i, found;
    size_t                  len[16];
    const uint8_t          *p, *end;
    ngx_http_openclaw_jv_t  key, value;

    found = 0;

    for (i = 0; i < n; i++) {
        out[i].type = NGX_HTTP_OPENCLAW_JSON_INVALID;
        out[i].start = NULL;
    }

    if (obj->type != NGX_HTTP_OPENCLAW_JSON_OBJECT || n > 16) {
        return 0;
    }

    for (i = 0; i < n; i++) {
        len[i] = strlen(names[i]);
    }

    end = obj->start + obj->len - 1;
    p = jv_ws(obj->start + 1, end);

    while (p < end && found < n) {
        jv_describe(p, end, &key);

        p = jv_ws(p + key.len, end);
        p = jv_ws(p + 1, end);

        jv_describe(p, end, &value);

        /*
         * the first of duplicate names wins, as in cJSON; no break: a name
         * asked twice gets the member twice
         */

        for (i = 0; i < n; i++) {
            if (out[i].start == NULL && key.size == len[i]
                && memcmp(key.data, names[i], len[i]) == 0)
            {
                out[i] = value;
                found++;
            }
        }

        p = jv_ws(p + value.len, end);

        if (p < end && *p == ',') {
            p = jv_ws(p + 1, end);
        }
    }

    return found;
}


int
ngx_http_openclaw_jv_get(ngx_http_openclaw_jv_t *obj, const char *name,
    ngx_http_openclaw_jv_t *out)
{
    size_t                  n;
    const uint8_t          *p, *end;
    ngx_http_openclaw_jv_t  key;

    if (obj->type != NGX_HTTP_OPENCLAW_JSON_OBJECT) {
        return -1;
    }

    n = strlen(name);
    end = obj->start + obj->len - 1;
    p = jv_ws(obj->start + 1, end);

    while (p < end) {
        jv_describe(p, end, &key);

        p = jv_ws(p + key.len, end);
        p = jv_ws(p + 1, end);

        jv_describe(p, end, out);

        if (key.size == n && memcmp(key.data, name, n) == 0) {
            return 0;
        }

        p = jv_ws(p + out->len, end);

        if (p < end && *p == ',') {
            p = jv_ws(p + 1, end);
        }
    }

    return -1;
}


int
ngx_http_openclaw_jv_next(ngx_http_openclaw_jv_t *array,
    ngx_http_openclaw_jv_t *item)
{
    const uint8_t  *p, *end;

    if (array->type != NGX_HTTP_OPENCLAW_JSON_ARRAY) {
        return -1;
    }

    end = array->start + array->len - 1;

    if (item->start == NULL) {
        p = jv_ws(array->start + 1, end);

    } else {
        p = jv_ws(item->start + item->len, end);

        if (p < end && *p == ',') {
            p = jv_ws(p + 1, end);
        }
    }

    if (p >= end) {
        return -1;
    }

    jv_describe(p, end, item);

    return 0;
}


size_t
ngx_http_openclaw_jv_decode(ngx_http_openclaw_jv_t *v, uint8_t *dst)
{
    uint8_t        *d;
    const uint8_t  *p, *end;

    if (!v->escaped) {
        if (v->size) {
            memcpy(dst, v->data, v->size);
        }

        return v->size;
    }

    d = dst;
    p = v->data;
    end = p + v->size;

    while (p < end) {
        p = jv_unescape(p, end, &d);
    }

    return d - dst;
}


/*
 * decodes one byte or escape (a surrogate pair as one) at "p" into
 * "*dst", at most 4 bytes; returns the byte after it
 */

static const uint8_t *
jv_unescape(const uint8_t *p, const uint8_t *end, uint8_t **dst)
{
    uint32_t   cp, lo;
    uint8_t   *d;

    d = *dst;

    if (*p != '\\') {
        *d++ = *p++;
        *dst = d;
        return p;
    }

    p++;

    switch (*p++) {
    case 'b': *d++ = '\b'; break;
    case 'f': *d++ = '\f'; break;
    case 'n': *d++ = '\n'; break;
    case 'r': *d++ = '\r'; break;
    case 't': *d++ = '\t'; break;

    case 'u':
        (void) jv_hex(p, &cp);
        p += 4;

        if (cp >= 0xd800 && cp <= 0xdbff) {

            if (end - p >= 6 && p[0] == '\\' && p[1] == 'u'
                && jv_hex(p + 2, &lo) == 0
                && lo >= 0xdc00 && lo <= 0xdfff)
            {
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                p += 6;

            } else {
                cp = 0xfffd;
            }

        } else if (cp >= 0xdc00 && cp <= 0xdfff) {
            cp = 0xfffd;
        }

        d = jv_utf8(d, cp);
        break;

    default: /* " \ / */
        *d++ = p[-1];
        break;
    }

    *dst = d;

    return p;
}


int
ngx_http_openclaw_jv_is(ngx_http_openclaw_jv_t *v, const char *s)
{
    size_t          n, i, k;
    uint8_t         buf[4], *d;
    const uint8_t  *p, *end;

    if (v->type != NGX_HTTP_OPENCLAW_JSON_STRING) {
        return 0;
    }

    n = strlen(s);

    if (!v->escaped) {
        return v->size == n && memcmp(v->data, s, n) == 0;
    }

    /* decoded one character at a time: no limit on the length */

    i = 0;
    p = v->data;
    end = p + v->size;

    while (p < end) {
        d = buf;
        p = jv_unescape(p, end, &d);
        k = d - buf;

        if (k > n - i || memcmp(buf, s + i, k) != 0) {
            return 0;
        }

        i += k;
    }

    return i == n;
}


static int
jv_hex(const uint8_t *p, uint32_t *value)
{
    int       i;
    uint8_t   c;
    uint32_t  v;

    v = 0;

    for (i = 0; i < 4; i++) {
        c = p[i];

        if (c >= '0' && c <= '9') {
            v = (v << 4) | (c - '0');

        } else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') {
            v = (v << 4) | ((c | 0x20) - 'a' + 10);

        } else {
            return -1;
        }
    }

    *value = v;

    return 0;
}


/* \uXXXX is 6 bytes, its UTF-8 at most 3; a pair, 12 bytes for 4 */

static uint8_t *
jv_utf8(uint8_t *dst, uint32_t cp)
{
    if (cp < 0x80) {
        *dst++ = (uint8_t) cp;

    } else if (cp < 0x800) {
        *dst++ = (uint8_t) (0xc0 | (cp >> 6));
        *dst++ = (uint8_t) (0x80 | (cp & 0x3f));

    } else if (cp < 0x10000) {
        *dst++ = (uint8_t) (0xe0 | (cp >> 12));
        *dst++ = (uint8_t) (0x80 | ((cp >> 6) & 0x3f));
        *dst++ = (uint8_t) (0x80 | (cp & 0x3f));

    } else {
        *dst++ = (uint8_t) (0xf0 | (cp >> 18));
        *dst++ = (uint8_t) (0x80 | ((cp >> 12) & 0x3f));
        *dst++ = (uint8_t) (0x80 | ((cp >> 6) & 0x3f));
        *dst++ = (uint8_t) (0x80 | (cp & 0x3f));
    }

    return dst;
}
