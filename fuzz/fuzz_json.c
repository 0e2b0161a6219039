/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * libFuzzer target for the JSON scanner, compared with cJSON.  The whole
 * input is the text.
 *
 * Whenever jv_parse accepts a text, cJSON must accept it too and consume
 * it whole (cJSON accepts more than RFC 8259, never less), except for a
 * text holding a lone surrogate escape, which RFC 8259 allows and cJSON
 * refuses.  Then both trees are walked in parallel:
 *
 *   - every value has the type cJSON gives it, and the span an independent
 *     walker of the validated text finds (skip_value());
 *   - objects: as many members as cJSON has children, in the same order;
 *     jv_get by each name as written finds the first member so spelt, and
 *     when the name has no escape, cJSON_GetObjectItemCaseSensitive finds
 *     the same member (or an earlier one whose name is spelt with escapes);
 *     jv_members agrees with jv_get; jv_member yields the members in
 *     order, with the walker's spans; names and string values decode to
 *     cJSON's bytes;
 *   - arrays: jv_next yields as many elements as cJSON has, with the
 *     walker's spans;
 *   - strings: jv_decode writes at most v->size bytes (the buffer is
 *     exactly that, for ASan), equals a reference decoder here (which
 *     covers the lone surrogates cJSON refuses), equals cJSON's
 *     valuestring when there is no \u0000 (cJSON's C string ends there:
 *     only its prefix is compared then), is valid UTF-8 when the raw
 *     bytes are, and jv_is agrees with it.
 *
 * The text is parsed with an index whose room depends on the input's
 * length (none to 32 containers), so that every walk above goes through
 * indexed containers, containers past the room, and the way between.
 *
 * Build: clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc
 *            src/ngx_http_openclaw_json.c fuzz/fuzz_json.c -lcjson
 */


#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>

#include "ngx_http_openclaw_json.h"
#include "fuzz_utf8_ref.h"


#define CHECK(cond)                                                           \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, \
                    #cond);                                                   \
            abort();                                                          \
        }                                                                     \
    } while (0)


/* the most names jv_members takes */
#define MEMBERS_MAX  16


typedef ngx_http_openclaw_jv_t  jv_t;


typedef struct {
    const uint8_t  *name;           /* as written, without the quotes */
    size_t          name_len;
    unsigned        escaped;
    const uint8_t  *value;
    size_t          value_len;
} member_t;


static void check_value(jv_t *v, cJSON *c);


static int
is_ws(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}


static const uint8_t *
skip_ws(const uint8_t *p, const uint8_t *end)
{
    while (p < end && is_ws(*p)) {
        p++;
    }

    return p;
}


/* the length of the value at "p" in a text known to be valid */

static size_t
skip_value(const uint8_t *p, const uint8_t *end)
{
    size_t          depth;
    const uint8_t  *q;

    q = p;

    switch (*q) {

    case '"':
        for (q++; *q != '"'; q++) {
            q += (*q == '\\');
        }

        return q + 1 - p;

    case '{':
    case '[':
        depth = 0;

        for ( ;; ) {
            CHECK(q < end);

            if (*q == '"') {
                q += skip_value(q, end);
                continue;
            }

            if (*q == '{' || *q == '[') {
                depth++;

            } else if (*q == '}' || *q == ']') {
                if (--depth == 0) {
                    return q + 1 - p;
                }
            }

            q++;
        }

    case 't':
    case 'n':
        return 4;

    case 'f':
        return 5;

    default:
        while (q < end && strchr("0123456789+-.eE", *q) != NULL && *q) {
            q++;
        }

        return q - p;
    }
}


static int
hex4(const uint8_t *p)
{
    int  i, v, c;

    v = 0;

    for (i = 0; i < 4; i++) {
        c = p[i];
        v = v * 16 + ((c <= '9') ? c - '0' : (c | 0x20) - 'a' + 10);
    }

    return v;
}


/*
 * The reference decoder: UTF-16 code units first, pairs joined after, so
 * that it shares no structure with jv_decode.  Returns the length;
 * "*nul" says whether a \u0000 was seen, "*lone" a lone surrogate.
 */

static size_t
ref_decode(const uint8_t *p, size_t len, uint8_t *out, int *nul, int *lone)
{
    size_t     i, n, k, o;
    uint32_t   u, cp;
    uint32_t  *units;

    /* raw bytes are kept as units above 0xffff, tagged */

    units = malloc((len + 1) * sizeof(uint32_t));
    CHECK(units != NULL);

    n = 0;
    *nul = 0;
    *lone = 0;

    for (i = 0; i < len; i++) {
        if (p[i] != '\\') {
            units[n++] = 0x1000000 | p[i];
            continue;
        }

        switch (p[++i]) {
        case 'b': units[n++] = 0x1000000 | 0x08; break;
        case 'f': units[n++] = 0x1000000 | 0x0c; break;
        case 'n': units[n++] = 0x1000000 | 0x0a; break;
        case 'r': units[n++] = 0x1000000 | 0x0d; break;
        case 't': units[n++] = 0x1000000 | 0x09; break;
        case 'u':
            units[n++] = hex4(p + i + 1);
            *nul |= (units[n - 1] == 0);
            i += 4;
            break;
        default:
            units[n++] = 0x1000000 | p[i];
            break;
        }
    }

    o = 0;

    for (k = 0; k < n; k++) {
        u = units[k];

        if (u & 0x1000000) {
            out[o++] = (uint8_t) u;
            continue;
        }

        if (u >= 0xd800 && u <= 0xdbff && k + 1 < n
            && units[k + 1] >= 0xdc00 && units[k + 1] <= 0xdfff)
        {
            cp = 0x10000 + (((u & 0x3ff) << 10) | (units[++k] & 0x3ff));

        } else if (u >= 0xd800 && u <= 0xdfff) {
            cp = 0xfffd;
            *lone = 1;

        } else {
            cp = u;
        }

        if (cp < 0x80) {
            out[o++] = cp;

        } else if (cp < 0x800) {
            out[o++] = 0xc0 | (cp >> 6);
            out[o++] = 0x80 | (cp & 0x3f);

        } else if (cp < 0x10000) {
            out[o++] = 0xe0 | (cp >> 12);
            out[o++] = 0x80 | ((cp >> 6) & 0x3f);
            out[o++] = 0x80 | (cp & 0x3f);

        } else {
            out[o++] = 0xf0 | (cp >> 18);
            out[o++] = 0x80 | ((cp >> 12) & 0x3f);
            out[o++] = 0x80 | ((cp >> 6) & 0x3f);
            out[o++] = 0x80 | (cp & 0x3f);
        }
    }

    free(units);

    return o;
}


/* any lone surrogate escape in a valid text (backslashes are in strings) */

static int
has_lone_surrogate(const uint8_t *p, size_t len)
{
    int     u, next;
    size_t  i;

    for (i = 0; i < len; i++) {
        if (p[i] != '\\') {
            continue;
        }

        if (p[++i] != 'u') {
            continue;
        }

        u = hex4(p + i + 1);
        i += 4;

        if (u >= 0xdc00 && u <= 0xdfff) {
            return 1;
        }

        if (u >= 0xd800 && u <= 0xdbff) {
            if (i + 6 >= len || p[i + 1] != '\\' || p[i + 2] != 'u') {
                return 1;
            }

            next = hex4(p + i + 3);

            if (next < 0xdc00 || next > 0xdfff) {
                return 1;
            }

            i += 6;
        }
    }

    return 0;
}


static int
cjson_type(cJSON *c)
{
    switch (c->type & 0xff) {
    case cJSON_False:  return NGX_HTTP_OPENCLAW_JSON_FALSE;
    case cJSON_True:   return NGX_HTTP_OPENCLAW_JSON_TRUE;
    case cJSON_NULL:   return NGX_HTTP_OPENCLAW_JSON_NULL;
    case cJSON_Number: return NGX_HTTP_OPENCLAW_JSON_NUMBER;
    case cJSON_String: return NGX_HTTP_OPENCLAW_JSON_STRING;
    case cJSON_Array:  return NGX_HTTP_OPENCLAW_JSON_ARRAY;
    case cJSON_Object: return NGX_HTTP_OPENCLAW_JSON_OBJECT;
    default:           return -1;
    }
}


/*
 * A string (a value, or a name described by hand): decodes it and checks
 * the result against the reference, cJSON's "expect" (or NULL), UTF-8
 * and jv_is.  Returns the decoded bytes (malloc()ed) and their length.
 */

static uint8_t *
check_string(jv_t *v, const char *expect, size_t *out_len)
{
    int       nul, lone;
    size_t    n, rn, elen, tail;
    uint8_t  *dst, *ref, *s;

    CHECK(v->type == NGX_HTTP_OPENCLAW_JSON_STRING);
    CHECK(v->data == v->start + 1 && v->size + 2 == v->len);
    CHECK(v->start[0] == '"' && v->start[v->len - 1] == '"');
    CHECK(v->escaped == (memchr(v->data, '\\', v->size) != NULL));

    /* exactly v->size bytes: decoding never grows a string */

    dst = malloc(v->size ? v->size : 1);
    CHECK(dst != NULL);

    n = ngx_http_openclaw_jv_decode(v, dst);
    CHECK(n <= v->size);

    ref = malloc(v->size + 1);
    CHECK(ref != NULL);

    rn = ref_decode(v->data, v->size, ref, &nul, &lone);
    CHECK(rn == n && memcmp(ref, dst, n) == 0);
    free(ref);

    if (expect != NULL) {
        elen = strlen(expect);

        if (nul) {
            /* cJSON's string ends at the first NUL it decoded */
            CHECK(elen < n && memcmp(dst, expect, elen) == 0
                  && dst[elen] == '\0');

        } else {
            CHECK(!lone);
            CHECK(elen == n && memcmp(dst, expect, n) == 0);
        }
    }

    /* valid UTF-8 in, valid UTF-8 out: escapes never make it invalid */

    if (ref_utf8(v->data, v->size, &tail) == v->size && tail == v->size) {
        CHECK(ref_utf8(dst, n, &tail) == n && tail == n);
    }

    /* jv_is with the decoded text, and with texts one byte off */

    if (memchr(dst, '\0', n) == NULL) {
        s = malloc(n + 2);
        CHECK(s != NULL);

        memcpy(s, dst, n);
        s[n] = '\0';
        CHECK(ngx_http_openclaw_jv_is(v, (char *) s) == 1);

        s[n] = 'x';
        s[n + 1] = '\0';
        CHECK(ngx_http_openclaw_jv_is(v, (char *) s) == 0);

        if (n > 0) {
            s[n - 1] = '\0';
            CHECK(ngx_http_openclaw_jv_is(v, (char *) s) == 0);

            s[n - 1] = (dst[n - 1] == 'a') ? 'b' : 'a';
            s[n] = '\0';
            CHECK(ngx_http_openclaw_jv_is(v, (char *) s) == 0);
        }

        free(s);

    } else {
        CHECK(ngx_http_openclaw_jv_is(v, (char *) dst) == 0);
    }

    *out_len = n;

    return dst;
}


/* a member's value other than the one jv_get finds: parsed on its own */

static void
check_span(const uint8_t *p, size_t len, cJSON *c)
{
    jv_t  v;

    CHECK(ngx_http_openclaw_jv_parse(p, len, &v, NULL) == 0);
    CHECK(v.start == p && v.len == len);

    check_value(&v, c);
}


/*
 * jv_members with up to 16 names: those of the first members as written,
 * one that no member has and the first again; each result is jv_get's.
 */

static void
check_members(jv_t *v, member_t *m, size_t n)
{
    int          k, names_n, found, expect;
    jv_t         out[MEMBERS_MAX], got;
    char        *names[MEMBERS_MAX];
    size_t       i;

    names_n = 0;

    for (i = 0; i < n && names_n < MEMBERS_MAX - 2; i++) {
        names[names_n] = malloc(m[i].name_len + 1);
        CHECK(names[names_n] != NULL);
        memcpy(names[names_n], m[i].name, m[i].name_len);
        names[names_n][m[i].name_len] = '\0';
        names_n++;
    }

    names[names_n++] = strdup("\x01");
    names[names_n++] = strdup(n ? names[0] : "");
    CHECK(names[names_n - 1] != NULL && names[names_n - 2] != NULL);

    memset(out, 0xa5, sizeof(out));

    found = ngx_http_openclaw_jv_members(v, (const char **) names, out,
                                         names_n);
    expect = 0;

    for (k = 0; k < names_n; k++) {
        if (ngx_http_openclaw_jv_get(v, names[k], &got) == 0) {
            CHECK(out[k].start == got.start && out[k].len == got.len
                  && out[k].type == got.type);
            expect++;

        } else {
            CHECK(out[k].start == NULL
                  && out[k].type == NGX_HTTP_OPENCLAW_JSON_INVALID);
        }

        free(names[k]);
    }

    CHECK(found == expect);
}


static void
check_object(jv_t *v, cJSON *c)
{
    int              first;
    char            *name;
    jv_t             out, key;
    cJSON           *child, *found, **children;
    size_t           i, j, k, n, count, dlen;
    uint8_t         *decoded;
    member_t        *m;
    const uint8_t   *p, *end;

    end = v->start + v->len - 1;
    CHECK(*end == '}');

    /* the members, by the walker */

    m = malloc((v->len / 4 + 1) * sizeof(member_t));
    CHECK(m != NULL);

    n = 0;
    p = skip_ws(v->start + 1, end);

    while (p < end) {
        CHECK(*p == '"');
        m[n].value_len = skip_value(p, end);
        m[n].name = p + 1;
        m[n].name_len = m[n].value_len - 2;
        m[n].escaped = (memchr(p + 1, '\\', m[n].name_len) != NULL);

        p = skip_ws(p + m[n].value_len, end);
        CHECK(*p == ':');
        p = skip_ws(p + 1, end);

        m[n].value = p;
        m[n].value_len = skip_value(p, end);

        p = skip_ws(p + m[n].value_len, end);

        if (p < end) {
            CHECK(*p == ',');
            p = skip_ws(p + 1, end);
        }

        n++;
    }

    /* jv_member yields the walker's members, names and values, in order */

    key.start = NULL;

    for (i = 0; ngx_http_openclaw_jv_member(v, &key, &out) == 0; i++) {
        CHECK(i < n);
        CHECK(key.type == NGX_HTTP_OPENCLAW_JSON_STRING);
        CHECK(key.data == m[i].name && key.size == m[i].name_len);
        CHECK(out.start == m[i].value && out.len == m[i].value_len);
    }

    CHECK(i == n);
    CHECK(ngx_http_openclaw_jv_member(v, &key, &out) == -1);

    children = NULL;

    if (c != NULL) {
        count = (size_t) cJSON_GetArraySize(c);
        CHECK(count == n);

        children = malloc((n + 1) * sizeof(cJSON *));
        CHECK(children != NULL);

        for (i = 0, child = c->child; i < n; i++, child = child->next) {
            children[i] = child;
        }
    }

    for (i = 0; i < n; i++) {

        /* the name decodes to cJSON's */

        memset(&key, 0, sizeof(key));
        key.start = m[i].name - 1;
        key.len = m[i].name_len + 2;
        key.data = m[i].name;
        key.size = m[i].name_len;
        key.type = NGX_HTTP_OPENCLAW_JSON_STRING;
        key.escaped = m[i].escaped;

        decoded = check_string(&key, c ? children[i]->string : NULL, &dlen);

        /* jv_get by the name as written: the first member so spelt */

        name = malloc(m[i].name_len + 1);
        CHECK(name != NULL);
        memcpy(name, m[i].name, m[i].name_len);
        name[m[i].name_len] = '\0';

        for (j = 0; j < i; j++) {
            if (m[j].name_len == m[i].name_len
                && memcmp(m[j].name, name, m[i].name_len) == 0)
            {
                break;
            }
        }

        first = (j == i);

        memset(&out, 0, sizeof(out));
        CHECK(ngx_http_openclaw_jv_get(v, name, &out) == 0);
        CHECK(out.start == m[j].value && out.len == m[j].value_len);

        if (c != NULL && !m[i].escaped) {
            /* the decoded name is the written one: cJSON agrees */

            found = cJSON_GetObjectItemCaseSensitive(c, name);
            CHECK(found != NULL);

            for (k = 0; k < n && children[k] != found; k++) { /* void */ }

            CHECK(k == j || (k < j && m[k].escaped));
            CHECK(cjson_type(children[j]) == (int) out.type);
        }

        if (first) {
            check_value(&out, c ? children[i] : NULL);

        } else {
            check_span(m[i].value, m[i].value_len, c ? children[i] : NULL);
        }

        free(name);

        /* jv_get by the decoded name finds only a member spelt so */

        if (m[i].escaped && memchr(decoded, '\0', dlen) == NULL) {
            name = malloc(dlen + 1);
            CHECK(name != NULL);
            memcpy(name, decoded, dlen);
            name[dlen] = '\0';

            for (j = 0; j < n; j++) {
                if (m[j].name_len == dlen
                    && memcmp(m[j].name, name, dlen) == 0)
                {
                    break;
                }
            }

            if (j == n) {
                CHECK(ngx_http_openclaw_jv_get(v, name, &out) == -1);

            } else {
                CHECK(ngx_http_openclaw_jv_get(v, name, &out) == 0);
                CHECK(out.start == m[j].value && out.len == m[j].value_len);
            }

            free(name);
        }

        free(decoded);
    }

    /* a name no member can have: raw control characters are invalid */

    CHECK(ngx_http_openclaw_jv_get(v, "\x01", &out) == -1);

    check_members(v, m, n);

    free(children);
    free(m);
}


static void
check_array(jv_t *v, cJSON *c)
{
    jv_t            item;
    cJSON          *child;
    size_t          n, len;
    const uint8_t  *p, *end;

    end = v->start + v->len - 1;
    CHECK(*end == ']');

    child = c ? c->child : NULL;
    n = 0;
    p = skip_ws(v->start + 1, end);

    item.start = NULL;

    while (ngx_http_openclaw_jv_next(v, &item) == 0) {
        CHECK(p < end);

        len = skip_value(p, end);
        CHECK(item.start == p && item.len == len);

        if (c != NULL) {
            CHECK(child != NULL);
        }

        check_value(&item, child);

        p = skip_ws(p + len, end);

        if (p < end) {
            CHECK(*p == ',');
            p = skip_ws(p + 1, end);
        }

        child = child ? child->next : NULL;
        n++;
    }

    CHECK(p == end);
    CHECK(ngx_http_openclaw_jv_next(v, &item) == -1);

    if (c != NULL) {
        CHECK(child == NULL);
        CHECK((size_t) cJSON_GetArraySize(c) == n);
    }
}


static void
check_value(jv_t *v, cJSON *c)
{
    jv_t      out, item;
    size_t    n;
    uint8_t  *s;

    if (c != NULL) {
        CHECK(cjson_type(c) == (int) v->type);
    }

    CHECK(v->len == skip_value(v->start, v->start + v->len));

    if (v->type != NGX_HTTP_OPENCLAW_JSON_OBJECT) {
        CHECK(ngx_http_openclaw_jv_get(v, "", &out) == -1);
    }

    if (v->type != NGX_HTTP_OPENCLAW_JSON_ARRAY) {
        item.start = NULL;
        CHECK(ngx_http_openclaw_jv_next(v, &item) == -1);
    }

    if (v->type != NGX_HTTP_OPENCLAW_JSON_OBJECT) {
        item.start = NULL;
        CHECK(ngx_http_openclaw_jv_member(v, &item, &out) == -1);
    }

    if (v->type != NGX_HTTP_OPENCLAW_JSON_STRING) {
        CHECK(ngx_http_openclaw_jv_is(v, "") == 0);
    }

    switch (v->type) {

    case NGX_HTTP_OPENCLAW_JSON_OBJECT:
        CHECK(v->start[0] == '{');
        check_object(v, c);
        break;

    case NGX_HTTP_OPENCLAW_JSON_ARRAY:
        CHECK(v->start[0] == '[');
        check_array(v, c);
        break;

    case NGX_HTTP_OPENCLAW_JSON_STRING:
        s = check_string(v, c ? c->valuestring : NULL, &n);
        free(s);
        break;

    case NGX_HTTP_OPENCLAW_JSON_NUMBER:
        CHECK(v->start[0] == '-'
              || (v->start[0] >= '0' && v->start[0] <= '9'));
        break;

    case NGX_HTTP_OPENCLAW_JSON_TRUE:
        CHECK(v->len == 4 && memcmp(v->start, "true", 4) == 0);
        break;

    case NGX_HTTP_OPENCLAW_JSON_FALSE:
        CHECK(v->len == 5 && memcmp(v->start, "false", 5) == 0);
        break;

    case NGX_HTTP_OPENCLAW_JSON_NULL:
        CHECK(v->len == 4 && memcmp(v->start, "null", 4) == 0);
        break;

    default:
        CHECK(0);
    }
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                            rc;
    jv_t                           v;
    char                          *copy;
    cJSON                         *root;
    const char                    *parse_end;
    const uint8_t                 *start;
    ngx_http_openclaw_jv_index_t   ix;
    ngx_http_openclaw_jv_node_t    room[32];

    memset(&v, 0xa5, sizeof(v));

    ix.nodes = room;
    ix.size = (size * 7) % 33;

    rc = ngx_http_openclaw_jv_parse(data, size, &v, &ix);

    CHECK(rc == 0 || rc == -1 || rc == -2);

    if (rc != 0) {
        CHECK(v.type == NGX_HTTP_OPENCLAW_JSON_INVALID);
        return 0;
    }

    /* the top value is all of the text but white space */

    start = skip_ws(data, data + size);
    CHECK(v.start == start);
    CHECK(v.len == skip_value(start, data + size));
    CHECK(skip_ws(v.start + v.len, data + size) == data + size);

    /* cJSON gets a NUL-terminated copy, in case it looks one byte on */

    copy = malloc(size + 1);
    CHECK(copy != NULL);
    memcpy(copy, data, size);
    copy[size] = '\0';

    parse_end = NULL;
    root = cJSON_ParseWithLengthOpts(copy, size, &parse_end, 0);

    if (root == NULL) {
        CHECK(has_lone_surrogate(data, size));

    } else {
        CHECK(parse_end != NULL);
        CHECK(skip_ws((const uint8_t *) parse_end, (const uint8_t *) copy
                      + size) == (const uint8_t *) copy + size);
    }

    check_value(&v, root);

    cJSON_Delete(root);
    free(copy);

    return 0;
}
