
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#include <string.h>

#if (defined __SSE2__)
#include <emmintrin.h>
#endif

#include "ngx_http_openclaw_json.h"


#define JV_MAX_DEPTH  128
#define JV_NONE       UINT32_MAX

/*
 * Tests of eight bytes in a word at once: any byte zero, any byte less
 * than "n" (n <= 128).  Borrows can only set bits above a byte that
 * matches, so the tests never miss and never fire without a match.
 */
#define JV_BYTES(b)          (0x0101010101010101ULL * (uint64_t) (b))
#define jv_has_zero(w)       (((w) - JV_BYTES(1)) & ~(w) & JV_BYTES(0x80))
#define jv_has_less(w, n)    (((w) - JV_BYTES(n)) & ~(w) & JV_BYTES(0x80))

#if (defined __GNUC__ && defined __BYTE_ORDER__                               \
     && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)
#define JV_LITTLE_ENDIAN     1
#else
#define JV_LITTLE_ENDIAN     0
#endif


/*
 * The top bit set in the first byte of "w" that a string cannot hold as
 * it is (a control byte, a quote, a backslash), and maybe in later ones.
 */
#define jv_special8(w)                                                       \
    (jv_has_less((w), 0x20) | jv_has_zero((w) ^ JV_BYTES(0x22))              \
     | jv_has_zero((w) ^ JV_BYTES(0x5c)))

#if (defined __SSE2__ && defined __GNUC__)

/*
 * A bit for each of the 16 bytes at "p" that a string cannot hold as it
 * is; a byte below 0x20 is one that 0x1f is the maximum of.
 */

static inline int
jv_special16(const uint8_t *p)
{
    __m128i  x, control;

    x = _mm_loadu_si128((const __m128i *) p);
    control = _mm_set1_epi8(0x1f);

    return _mm_movemask_epi8(_mm_or_si128(
               _mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8('"')),
                            _mm_cmpeq_epi8(x, _mm_set1_epi8('\\'))),
               _mm_cmpeq_epi8(_mm_max_epu8(x, control), control)));
}

#endif

#if (defined __GNUC__)
#define jv_lowest(m)         __builtin_ctz(m)
#else
static int
jv_lowest(uint32_t m)
{
    int  i;

    for (i = 0; !(m & (1u << i)); i++) { /* void */ }

    return i;
}
#endif


/* the type of a validated value by its first byte */

static const uint8_t  jv_type[256] = {
    ['"'] = NGX_HTTP_OPENCLAW_JSON_STRING,
    ['{'] = NGX_HTTP_OPENCLAW_JSON_OBJECT,
    ['['] = NGX_HTTP_OPENCLAW_JSON_ARRAY,
    ['t'] = NGX_HTTP_OPENCLAW_JSON_TRUE,
    ['f'] = NGX_HTTP_OPENCLAW_JSON_FALSE,
    ['n'] = NGX_HTTP_OPENCLAW_JSON_NULL,
    ['-'] = NGX_HTTP_OPENCLAW_JSON_NUMBER,
    ['0'] = NGX_HTTP_OPENCLAW_JSON_NUMBER,
    ['1'] = NGX_HTTP_OPENCLAW_JSON_NUMBER,
    ['2'] = NGX_HTTP_OPENCLAW_JSON_NUMBER,
    ['3'] = NGX_HTTP_OPENCLAW_JSON_NUMBER,
    ['4'] = NGX_HTTP_OPENCLAW_JSON_NUMBER,
    ['5'] = NGX_HTTP_OPENCLAW_JSON_NUMBER,
    ['6'] = NGX_HTTP_OPENCLAW_JSON_NUMBER,
    ['7'] = NGX_HTTP_OPENCLAW_JSON_NUMBER,
    ['8'] = NGX_HTTP_OPENCLAW_JSON_NUMBER,
    ['9'] = NGX_HTTP_OPENCLAW_JSON_NUMBER
};


/* the bucket of a name: its first byte and its length */
#define jv_slot(data, size)                                                  \
    ((((size) ? (data)[0] : 0) + (size)) & 63)


/* the validating pass: the number the next value gets */

typedef struct {
    ngx_http_openclaw_jv_node_t   *nodes;
    const uint8_t                 *text;
    uint32_t                       size;    /* 0 without an index */
    uint32_t                       count;
    uint32_t                       spaced;
} jv_ctx_t;


static const uint8_t *jv_ws(const uint8_t *p, const uint8_t *end);
static inline const uint8_t *jv_ws_seen(jv_ctx_t *ctx, const uint8_t *p,
    const uint8_t *end);
static const uint8_t *jv_ws_skip(jv_ctx_t *ctx, const uint8_t *p,
    const uint8_t *end);
static inline const uint8_t *jv_skip(ngx_http_openclaw_jv_t *v,
    const uint8_t *p, const uint8_t *end);
static inline void jv_record(jv_ctx_t *ctx, uint32_t n, const uint8_t *open,
    const uint8_t *last, uint32_t next, uint32_t escaped);
static inline const uint8_t *jv_leaf(jv_ctx_t *ctx, const uint8_t *open,
    const uint8_t *last, uint32_t escaped);
static inline const uint8_t *jv_check(jv_ctx_t *ctx, const uint8_t *p,
    const uint8_t *end, int depth);
static const uint8_t *jv_check_scalar(jv_ctx_t *ctx, const uint8_t *p,
    const uint8_t *end);
static const uint8_t *jv_check_container(jv_ctx_t *ctx, const uint8_t *p,
    const uint8_t *end, int depth);
static inline const uint8_t *jv_check_string(jv_ctx_t *ctx,
    const uint8_t *p, const uint8_t *end);
static const uint8_t *jv_check_string_long(jv_ctx_t *ctx, const uint8_t *p,
    const uint8_t *end);
static const uint8_t *jv_check_number(const uint8_t *p, const uint8_t *end);
static const uint8_t *jv_string_end(const uint8_t *p, const uint8_t *end);
static inline void jv_describe(const uint8_t *p, const uint8_t *end,
    ngx_http_openclaw_jv_t *v, const ngx_http_openclaw_jv_index_t *index,
    uint32_t node);
static void jv_scan(const uint8_t *p, const uint8_t *end,
    ngx_http_openclaw_jv_t *v, const ngx_http_openclaw_jv_index_t *index,
    uint32_t node);
static uint32_t jv_first(ngx_http_openclaw_jv_t *v);
static uint32_t jv_after(ngx_http_openclaw_jv_t *v);
static inline int jv_indexed(ngx_http_openclaw_jv_t *v);
static inline void jv_node(const ngx_http_openclaw_jv_index_t *index,
    uint32_t node, ngx_http_openclaw_jv_t *v);
static inline int jv_name_eq(const uint8_t *data, size_t size,
    const char *name);
static void jv_names_prepare(ngx_http_openclaw_jv_names_t *set);
static inline int jv_names_eq(ngx_http_openclaw_jv_names_t *set, int i,
    const uint8_t *p, size_t size);
static const uint8_t *jv_unescape(const uint8_t *p, const uint8_t *end,
    uint8_t **dst);
static int jv_hex(const uint8_t *p, uint32_t *value);
static uint8_t *jv_utf8(uint8_t *dst, uint32_t cp);


static const uint8_t *
jv_ws(const uint8_t *p, const uint8_t *end)
{
    /* texts on the wire are mostly compact: one test for no white space */

    while (p < end && *p <= ' '
           && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
    {
        p++;
    }

    return p;
}


/*
 * White space inside a container: the walks of the text must skip it.
 * Every token but white space is above ' ', so a compact text takes one
 * test between two tokens.
 */

static inline const uint8_t *
jv_ws_seen(jv_ctx_t *ctx, const uint8_t *p, const uint8_t *end)
{
    if (p < end && *p > ' ') {
        return p;
    }

    return jv_ws_skip(ctx, p, end);
}


static const uint8_t *
jv_ws_skip(jv_ctx_t *ctx, const uint8_t *p, const uint8_t *end)
{
    while (p < end
           && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
    {
        ctx->spaced = 1;
        p++;
    }

    return p;
}


/* in a compact text, as gateways send, there is none to look for */

static inline const uint8_t *
jv_skip(ngx_http_openclaw_jv_t *v, const uint8_t *p, const uint8_t *end)
{
    if (v->index && !v->index->spaced) {
        return p;
    }

    return jv_ws(p, end);
}


int
ngx_http_openclaw_jv_parse(const uint8_t *p, size_t len,
    ngx_http_openclaw_jv_t *v, ngx_http_openclaw_jv_index_t *index)
{
    jv_ctx_t        ctx;
    const uint8_t  *end, *start, *last;

    /* an empty text is invalid, and "p" may then be NULL: no NULL + 0 */

    if (len == 0) {
        v->type = NGX_HTTP_OPENCLAW_JSON_INVALID;
        return -1;
    }

    /* offsets are 32-bit: a larger text is scanned without an index */

    if (index && (uint64_t) len > UINT32_MAX) {
        index = NULL;
    }

    ctx.nodes = NULL;
    ctx.text = p;
    ctx.size = 0;
    ctx.count = 0;
    ctx.spaced = 0;

    if (index) {
        index->text = p;
        ctx.nodes = index->nodes;
        ctx.size = index->size;
    }

    end = p + len;
    start = jv_ws(p, end);

    last = jv_check(&ctx, start, end, 0);

    if (last == NULL) {
        v->type = NGX_HTTP_OPENCLAW_JSON_INVALID;
        return -1;
    }

    if (jv_ws(last, end) != end) {
        v->type = NGX_HTTP_OPENCLAW_JSON_INVALID;
        return -2;
    }

    if (index) {
        index->nelts = (ctx.count < index->size) ? ctx.count : index->size;
        index->spaced = ctx.spaced;
    }

    if (*start == '{' || *start == '[') {

        /* its end is known: no need to look for it again */

        v->start = start;
        v->len = last - start;
        v->data = NULL;
        v->size = 0;
        v->index = index;
        v->node = 0;
        v->type = (*start == '{') ? NGX_HTTP_OPENCLAW_JSON_OBJECT
                                  : NGX_HTTP_OPENCLAW_JSON_ARRAY;
        v->escaped = 0;

        return 0;
    }

    jv_describe(start, last, v, index, 0);

    return 0;
}


/* node "n" spans "open" to "last", and "next" is the node after it all */

static inline void
jv_record(jv_ctx_t *ctx, uint32_t n, const uint8_t *open, const uint8_t *last,
    uint32_t next, uint32_t escaped)
{
    ngx_http_openclaw_jv_node_t  *node;

    if (n < ctx->size) {
        node = &ctx->nodes[n];
        node->start = (uint32_t) (open - ctx->text);
        node->len = (uint32_t) (last - open);
        node->next = next;
        node->escaped = escaped;
    }
}


/* a string or a scalar, which holds no other node, ends at "last" */

static inline const uint8_t *
jv_leaf(jv_ctx_t *ctx, const uint8_t *open, const uint8_t *last,
    uint32_t escaped)
{
    uint32_t  n;

    n = ctx->count++;
    jv_record(ctx, n, open, last, n + 1, escaped);

    return last;
}


/*
 * Validates one value at "p"; returns the byte after it, or NULL.  Inline,
 * so that a string, the most common value, costs no call.
 */

static inline const uint8_t *
jv_check(jv_ctx_t *ctx, const uint8_t *p, const uint8_t *end, int depth)
{
    if (p >= end) {
        return NULL;
    }

    switch (*p) {

    case '"':
        return jv_check_string(ctx, p, end);

    case '{':
    case '[':
        return jv_check_container(ctx, p, end, depth);

    default:
        return jv_check_scalar(ctx, p, end);
    }
}


static const uint8_t *
jv_check_scalar(jv_ctx_t *ctx, const uint8_t *p, const uint8_t *end)
{
    const uint8_t  *q;

    switch (*p) {

    case 't':
        q = (end - p >= 4 && memcmp(p, "true", 4) == 0) ? p + 4 : NULL;
        break;

    case 'f':
        q = (end - p >= 5 && memcmp(p, "false", 5) == 0) ? p + 5 : NULL;
        break;

    case 'n':
        q = (end - p >= 4 && memcmp(p, "null", 4) == 0) ? p + 4 : NULL;
        break;

    default:
        q = jv_check_number(p, end);
        break;
    }

    return (q == NULL) ? NULL : jv_leaf(ctx, p, q, 0);
}


static const uint8_t *
jv_check_container(jv_ctx_t *ctx, const uint8_t *p, const uint8_t *end,
    int depth)
{
    uint8_t         close;
    uint32_t        n;
    const uint8_t  *open;

    if (++depth > JV_MAX_DEPTH) {
        return NULL;
    }

    open = p;
    n = ctx->count++;
    close = (*p == '{') ? '}' : ']';
    p = jv_ws_seen(ctx, p + 1, end);

    if (p < end && *p == close) {
        goto done;
    }

    for ( ;; ) {

        if (close == '}') {
            if (p >= end || *p != '"') {
                return NULL;
            }

            p = jv_check_string(ctx, p, end);
            if (p == NULL) {
                return NULL;
            }

            p = jv_ws_seen(ctx, p, end);

            if (p >= end || *p != ':') {
                return NULL;
            }

            p = jv_ws_seen(ctx, p + 1, end);
        }

        p = jv_check(ctx, p, end, depth);
        if (p == NULL) {
            return NULL;
        }

        p = jv_ws_seen(ctx, p, end);

        if (p >= end) {
            return NULL;
        }

        if (*p == close) {
            break;
        }

        if (*p != ',') {
            return NULL;
        }

        p = jv_ws_seen(ctx, p + 1, end);
    }

done:

    p++;

    jv_record(ctx, n, open, p, ctx->count, 0);

    return p;
}


/*
 * Most strings are names and short values without escapes: when the
 * first special byte in the sixteen (or eight) after the opening quote is
 * the closing one, the string is done without a call.
 */

static inline const uint8_t *
jv_check_string(jv_ctx_t *ctx, const uint8_t *p, const uint8_t *end)
{
    const uint8_t  *q;
#if (defined __SSE2__ && defined __GNUC__)
    int             k;
#elif (JV_LITTLE_ENDIAN)
    uint64_t        w, m;
#endif

    q = NULL;

#if (defined __SSE2__ && defined __GNUC__)

    if (end - p > 16) {
        k = jv_special16(p + 1);

        if (k) {
            q = p + 1 + __builtin_ctz(k);
        }
    }

#elif (JV_LITTLE_ENDIAN)

    if (end - p > 8) {
        memcpy(&w, p + 1, 8);
        m = jv_special8(w);

        if (m) {
            q = p + 1 + (__builtin_ctzll(m) >> 3);
        }
    }

#endif

    if (q != NULL && *q == '"') {
        return jv_leaf(ctx, p, q + 1, 0);
    }

    return jv_check_string_long(ctx, p, end);
}


static const uint8_t *
jv_check_string_long(jv_ctx_t *ctx, const uint8_t *p, const uint8_t *end)
{
    uint32_t        cp;
    uint64_t        w, m;
    unsigned        escaped;
    const uint8_t  *open;
#if (defined __SSE2__ && defined __GNUC__)
    int             k;
#endif

    open = p;
    escaped = 0;

    for (p++; p < end; p++) {

        /*
         * Most bytes are plain: they are skipped sixteen or eight at a time
         * while none of them is a control byte, a quote or a backslash,
         * then one at a time up to the one that is.  A byte is always
         * left for the last loop.
         */

#if (defined __SSE2__ && defined __GNUC__)

        while (end - p > 16) {
            k = jv_special16(p);

            if (k) {
                p += __builtin_ctz(k);
                goto special;
            }

            p += 16;
        }

#endif

        while (end - p > 8) {
            memcpy(&w, p, 8);

            m = jv_special8(w);

            if (m) {
#if (JV_LITTLE_ENDIAN)
                /* exact: no borrow reaches below the first such byte */
                p += __builtin_ctzll(m) >> 3;
#else
                while (*p >= 0x20 && *p != '"' && *p != '\\') {
                    p++;
                }
#endif
                goto special;
            }

            p += 8;
        }

        while (*p >= 0x20 && *p != '"' && *p != '\\') {
            if (++p == end) {
                return NULL;
            }
        }

    special:

        if (*p == '"') {
            return jv_leaf(ctx, open, p + 1, escaped);
        }

        if (*p < 0x20) {
            return NULL;
        }

        if (++p >= end) {
            return NULL;
        }

        escaped = 1;

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


/*
 * Describes the value at "p" of an already validated text; "node" is the
 * number the value has.  Found in the index, it takes a few loads.
 */

static inline void
jv_describe(const uint8_t *p, const uint8_t *end, ngx_http_openclaw_jv_t *v,
    const ngx_http_openclaw_jv_index_t *index, uint32_t node)
{
    if (index && node < index->nelts
        && index->text + index->nodes[node].start == p)
    {
        jv_node(index, node, v);
        return;
    }

    jv_scan(p, end, v, index, node);
}


/* the value that node "node" of "index" is */

static inline void
jv_node(const ngx_http_openclaw_jv_index_t *index, uint32_t node,
    ngx_http_openclaw_jv_t *v)
{
    const uint8_t                      *p;
    const ngx_http_openclaw_jv_node_t  *n;

    n = &index->nodes[node];
    p = index->text + n->start;

    v->start = p;
    v->len = n->len;
    v->index = index;
    v->node = node;
    v->type = jv_type[*p];

    if (*p == '"') {
        v->data = p + 1;
        v->size = n->len - 2;
        v->escaped = n->escaped;
        return;
    }

    v->data = NULL;
    v->size = 0;
    v->escaped = 0;
}


/* a value the index does not hold: one past its room */

static void
jv_scan(const uint8_t *p, const uint8_t *end, ngx_http_openclaw_jv_t *v,
    const ngx_http_openclaw_jv_index_t *index, uint32_t node)
{
    int             depth;
    const uint8_t  *q;

    v->start = p;
    v->data = NULL;
    v->size = 0;
    v->escaped = 0;
    v->index = index;
    v->node = node;

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


/* the number the first value inside "v" has */

static uint32_t
jv_first(ngx_http_openclaw_jv_t *v)
{
    if (v->index && v->node < v->index->nelts) {
        return v->node + 1;
    }

    return JV_NONE;
}


/* the number the first value after "v" and all it holds has */

static uint32_t
jv_after(ngx_http_openclaw_jv_t *v)
{
    if (v->index && v->node < v->index->nelts) {
        return v->index->nodes[v->node].next;
    }

    return JV_NONE;
}


/*
 * An object or array the index holds whole: its members are found from
 * the nodes alone, without looking at the text between them.
 */

static inline int
jv_indexed(ngx_http_openclaw_jv_t *v)
{
    return v->index != NULL && v->node < v->index->nelts
           && v->index->nodes[v->node].next <= v->index->nelts;
}


/* a member name as written equals "name": most differ in the first byte */

static inline int
jv_name_eq(const uint8_t *data, size_t size, const char *name)
{
    size_t  i;

    for (i = 0; i < size; i++) {
        if ((uint8_t) name[i] != data[i]) {
            return 0;
        }
    }

    return name[i] == '\0';
}


int
ngx_http_openclaw_jv_members(ngx_http_openclaw_jv_t *obj, const char **names,
    ngx_http_openclaw_jv_t *out, int n)
{
    ngx_http_openclaw_jv_names_t  set;

    set.names = names;
    set.n = n;
    set.ready = 0;

    return ngx_http_openclaw_jv_lookup(obj, &set, out);
}


/*
 * The names by their first byte and length (folded to 64 slots): a member
 * is compared with the few names that can be it, not with every name.
 */

static void
jv_names_prepare(ngx_http_openclaw_jv_names_t *set)
{
    int      i;
    size_t   len;
    uint8_t  bytes[8];

    memset(set->slot, 0, sizeof(set->slot));

    for (i = 0; i < set->n; i++) {
        len = strlen(set->names[i]);

        set->len[i] = len;
        set->slot[jv_slot((const uint8_t *) set->names[i], len)]
            |= (uint16_t) (1 << i);

        /* byte strings, loaded as words: the same in either byte order */

        memset(bytes, 0, 8);
        memcpy(bytes, set->names[i], len < 8 ? len : 8);
        memcpy(&set->word[i], bytes, 8);

        memset(bytes, 0, 8);
        memset(bytes, 0xff, len < 8 ? len : 8);
        memcpy(&set->mask[i], bytes, 8);
    }

    set->ready = 1;
}


/*
 * A name of the indexed walk, "size" bytes long, equals name "i" of
 * "set" of the same length.  From 4 bytes on, its first 8 are compared as
 * one word: a name in a validated object is followed by at least 4 bytes
 * of it (the quote, the colon, a value and the closing brace), so the
 * load stays inside the text.
 */

static inline int
jv_names_eq(ngx_http_openclaw_jv_names_t *set, int i, const uint8_t *p,
    size_t size)
{
    uint64_t  w;

    if (size < 4) {
        return memcmp(p, set->names[i], size) == 0;
    }

    memcpy(&w, p, 8);

    if ((w & set->mask[i]) != set->word[i]) {
        return 0;
    }

    return size <= 8 || memcmp(p + 8, set->names[i] + 8, size - 8) == 0;
}


int
ngx_http_openclaw_jv_lookup(ngx_http_openclaw_jv_t *obj,
    ngx_http_openclaw_jv_names_t *set, ngx_http_openclaw_jv_t *out)
{
    int                                  i, found;
    size_t                               size;
    uint32_t                             node, last, want, cand;
    const uint8_t                       *p, *end, *text;
    ngx_http_openclaw_jv_t               key, value;
    const ngx_http_openclaw_jv_node_t   *nodes;
    const ngx_http_openclaw_jv_index_t  *index;

    found = 0;

    for (i = 0; i < set->n; i++) {
        out[i].type = NGX_HTTP_OPENCLAW_JSON_INVALID;
        out[i].start = NULL;
    }

    if (obj->type != NGX_HTTP_OPENCLAW_JSON_OBJECT || set->n > 16) {
        return 0;
    }

    if (!set->ready) {
        jv_names_prepare(set);
    }

    want = (set->n == 16) ? 0xffff : (1u << set->n) - 1;

    /*
     * the first of duplicate names wins, as in cJSON; no break: a name
     * asked twice gets the member twice
     */

    if (jv_indexed(obj)) {

        /* a name is a string node, and its value is the node after it */

        index = obj->index;
        nodes = index->nodes;
        text = index->text;
        last = nodes[obj->node].next;

        for (node = obj->node + 1; node < last && want;
             node = nodes[node + 1].next)
        {
            p = text + nodes[node].start + 1;
            size = nodes[node].len - 2;

            cand = set->slot[jv_slot(p, size)] & want;

            while (cand) {
                i = jv_lowest(cand);
                cand &= cand - 1;

                if (size == set->len[i] && jv_names_eq(set, i, p, size)) {
                    jv_node(index, node + 1, &out[i]);
                    want &= ~(1u << i);
                    found++;
                }
            }
        }

        return found;
    }

    node = jv_first(obj);
    end = obj->start + obj->len - 1;
    p = jv_skip(obj, obj->start + 1, end);

    while (p < end && want) {
        jv_describe(p, end, &key, obj->index, node);
        node = jv_after(&key);

        p = jv_skip(obj, p + key.len, end);
        p = jv_skip(obj, p + 1, end);

        jv_describe(p, end, &value, obj->index, node);
        node = jv_after(&value);

        cand = set->slot[jv_slot(key.data, key.size)] & want;

        while (cand) {
            i = jv_lowest(cand);
            cand &= cand - 1;

            if (key.size == set->len[i]
                && memcmp(key.data, set->names[i], key.size) == 0)
            {
                out[i] = value;
                want &= ~(1u << i);
                found++;
            }
        }

        p = jv_skip(obj, p + value.len, end);

        if (p < end && *p == ',') {
            p = jv_skip(obj, p + 1, end);
        }
    }

    return found;
}


int
ngx_http_openclaw_jv_get(ngx_http_openclaw_jv_t *obj, const char *name,
    ngx_http_openclaw_jv_t *out)
{
    uint32_t                            node, last;
    const uint8_t                      *p, *end;
    ngx_http_openclaw_jv_t              key;
    const ngx_http_openclaw_jv_node_t  *nodes;

    if (obj->type != NGX_HTTP_OPENCLAW_JSON_OBJECT) {
        return -1;
    }

    if (jv_indexed(obj)) {
        nodes = obj->index->nodes;
        last = nodes[obj->node].next;

        for (node = obj->node + 1; node < last; node = nodes[node + 1].next) {
            p = obj->index->text + nodes[node].start + 1;

            if (jv_name_eq(p, nodes[node].len - 2, name)) {
                jv_node(obj->index, node + 1, out);
                return 0;
            }
        }

        return -1;
    }

    node = jv_first(obj);
    end = obj->start + obj->len - 1;
    p = jv_skip(obj, obj->start + 1, end);

    while (p < end) {
        jv_describe(p, end, &key, obj->index, node);
        node = jv_after(&key);

        p = jv_skip(obj, p + key.len, end);
        p = jv_skip(obj, p + 1, end);

        jv_describe(p, end, out, obj->index, node);

        if (jv_name_eq(key.data, key.size, name)) {
            return 0;
        }

        node = jv_after(out);
        p = jv_skip(obj, p + out->len, end);

        if (p < end && *p == ',') {
            p = jv_skip(obj, p + 1, end);
        }
    }

    return -1;
}


int
ngx_http_openclaw_jv_next(ngx_http_openclaw_jv_t *array,
    ngx_http_openclaw_jv_t *item)
{
    uint32_t        node;
    const uint8_t  *p, *end;

    if (array->type != NGX_HTTP_OPENCLAW_JSON_ARRAY) {
        return -1;
    }

    if (jv_indexed(array)) {
        node = (item->start == NULL) ? array->node + 1 : jv_after(item);

        if (node >= array->index->nodes[array->node].next) {
            return -1;
        }

        jv_node(array->index, node, item);
        return 0;
    }

    end = array->start + array->len - 1;

    if (item->start == NULL) {
        node = jv_first(array);
        p = jv_skip(array, array->start + 1, end);

    } else {
        node = jv_after(item);
        p = jv_skip(array, item->start + item->len, end);

        if (p < end && *p == ',') {
            p = jv_skip(array, p + 1, end);
        }
    }

    if (p >= end) {
        return -1;
    }

    jv_describe(p, end, item, array->index, node);

    return 0;
}


int
ngx_http_openclaw_jv_member(ngx_http_openclaw_jv_t *obj,
    ngx_http_openclaw_jv_t *name, ngx_http_openclaw_jv_t *value)
{
    uint32_t        node;
    const uint8_t  *p, *end;

    if (obj->type != NGX_HTTP_OPENCLAW_JSON_OBJECT) {
        return -1;
    }

    if (jv_indexed(obj)) {
        node = (name->start == NULL) ? obj->node + 1 : jv_after(value);

        if (node >= obj->index->nodes[obj->node].next) {
            return -1;
        }

        jv_node(obj->index, node, name);
        jv_node(obj->index, node + 1, value);
        return 0;
    }

    end = obj->start + obj->len - 1;

    if (name->start == NULL) {
        node = jv_first(obj);
        p = jv_skip(obj, obj->start + 1, end);

    } else {
        node = jv_after(value);
        p = jv_skip(obj, value->start + value->len, end);

        if (p < end && *p == ',') {
            p = jv_skip(obj, p + 1, end);
        }
    }

    if (p >= end) {
        return -1;
    }

    jv_describe(p, end, name, obj->index, node);
    node = jv_after(name);

    /* past the name and the colon */

    p = jv_skip(obj, p + name->len, end);
    p = jv_skip(obj, p + 1, end);

    jv_describe(p, end, value, obj->index, node);

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


size_t
ngx_http_openclaw_jv_plain(const uint8_t *p, size_t len)
{
    uint64_t        w, m;
    const uint8_t  *start, *end;
#if (defined __SSE2__ && defined __GNUC__)
    int             k;
#endif

    start = p;
    end = p + len;

#if (defined __SSE2__ && defined __GNUC__)

    while (end - p >= 16) {
        k = jv_special16(p);

        if (k) {
            return p - start + __builtin_ctz(k);
        }

        p += 16;
    }

#endif

    while (end - p >= 8) {
        memcpy(&w, p, 8);

        m = jv_special8(w);

        if (m) {
            break;
        }

        p += 8;
    }

    while (p < end && *p >= 0x20 && *p != '"' && *p != '\\') {
        p++;
    }

    return p - start;
}


int
ngx_http_openclaw_jv_is_escaped(ngx_http_openclaw_jv_t *v, const char *s,
    size_t n)
{
    size_t          i, k;
    uint8_t         buf[4], *d;
    const uint8_t  *p, *end;

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
