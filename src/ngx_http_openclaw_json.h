
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * A JSON scanner for the per-message path: it validates a text and finds
 * members in place, without building a tree or allocating.  String values
 * are kept escaped, as they came, so that text can be forwarded into
 * other JSON without being decoded and encoded again.  No nginx types, so
 * that it can be unit tested and fuzzed against cJSON.
 */


#ifndef _NGX_HTTP_OPENCLAW_JSON_H_INCLUDED_
#define _NGX_HTTP_OPENCLAW_JSON_H_INCLUDED_


#include <stddef.h>
#include <stdint.h>
#include <string.h>


typedef enum {
    NGX_HTTP_OPENCLAW_JSON_INVALID = 0,
    NGX_HTTP_OPENCLAW_JSON_OBJECT,
    NGX_HTTP_OPENCLAW_JSON_ARRAY,
    NGX_HTTP_OPENCLAW_JSON_STRING,
    NGX_HTTP_OPENCLAW_JSON_NUMBER,
    NGX_HTTP_OPENCLAW_JSON_TRUE,
    NGX_HTTP_OPENCLAW_JSON_FALSE,
    NGX_HTTP_OPENCLAW_JSON_NULL
} ngx_http_openclaw_json_type_e;


/*
 * Where the validating pass saw each value and member name, numbered in
 * the order they start, so that finding a member looks at neither a name
 * nor a value in the text again: the frames of the gateway nest the text
 * of a reply four levels deep.  A member's value is the node after its
 * name.  A text with more of them than there is room for is still
 * handled whole, by scanning beyond the room.
 */

typedef struct {
    uint32_t                        start;   /* offset of its first byte */
    uint32_t                        len;
    uint32_t                        next;    /* number of the first one
                                                after it and all inside */
    uint32_t                        escaped; /* a string with a backslash */
} ngx_http_openclaw_jv_node_t;

typedef struct {
    const uint8_t                  *text;
    ngx_http_openclaw_jv_node_t    *nodes;
    uint32_t                        size;    /* room, in nodes */
    uint32_t                        nelts;
    uint32_t                        spaced;  /* white space between the
                                                tokens of a container */
} ngx_http_openclaw_jv_index_t;


/*
 * A value inside a validated text: "start" and "len" span it whole (with
 * the quotes of a string); for a string, "data" and "size" span its
 * escaped content, and "escaped" says whether it holds any backslash.
 * "index" and "node" place it in the index of its text, if any.
 */

typedef struct {
    const uint8_t                       *start;
    size_t                               len;
    const uint8_t                       *data;
    size_t                               size;
    const ngx_http_openclaw_jv_index_t  *index;
    uint32_t                             node;
    ngx_http_openclaw_json_type_e        type;
    unsigned                             escaped:1;
} ngx_http_openclaw_jv_t;


/*
 * Validates "len" bytes as one JSON value with optional white space
 * around it (RFC 8259, nesting up to 128 deep) and describes it in "v".
 * With "index" (its "nodes" and "size" set by the caller), strings and
 * containers are indexed on the way, and values found from "v" use the
 * index for as long as the text and the index live.
 * Returns 0; -1 when the text is not valid JSON; -2 when a valid value
 * is followed by more than white space.
 */
int ngx_http_openclaw_jv_parse(const uint8_t *p, size_t len,
    ngx_http_openclaw_jv_t *v, ngx_http_openclaw_jv_index_t *index);

/*
 * The first member "name" of object "obj" (names compared as written, so
 * a name spelled with escapes is not found); 0 if found, -1 otherwise.
 */
int ngx_http_openclaw_jv_get(ngx_http_openclaw_jv_t *obj, const char *name,
    ngx_http_openclaw_jv_t *out);

/*
 * Several members of "obj" in one pass: out[i] gets the first member
 * named names[i] (at most 16), or type INVALID and start NULL; returns
 * how many were found.
 */
int ngx_http_openclaw_jv_members(ngx_http_openclaw_jv_t *obj,
    const char **names, ngx_http_openclaw_jv_t *out, int n);

/*
 * The same for a set of names asked again and again: the caller keeps it,
 * static, set with ngx_http_openclaw_jv_names(); the lengths and buckets
 * of the names are worked out on its first use, not at every lookup.
 */

typedef struct {
    const char                    **names;
    int                             n;
    int                             ready;
    size_t                          len[16];
    uint16_t                        slot[64];
    uint64_t                        word[16];  /* the first 8 bytes */
    uint64_t                        mask[16];
} ngx_http_openclaw_jv_names_t;

#define ngx_http_openclaw_jv_names(names)                                    \
    { (names), (int) (sizeof(names) / sizeof((names)[0])), 0, { 0 }, { 0 }, \
      { 0 }, { 0 } }

int ngx_http_openclaw_jv_lookup(ngx_http_openclaw_jv_t *obj,
    ngx_http_openclaw_jv_names_t *names, ngx_http_openclaw_jv_t *out);

/*
 * Iterates an array: "*item" is NULL-started (item->start == NULL) and is
 * advanced to the next element; returns 0 while there is one.
 */
int ngx_http_openclaw_jv_next(ngx_http_openclaw_jv_t *array,
    ngx_http_openclaw_jv_t *item);

/*
 * Iterates an object's members, for callers that must see every name
 * (to refuse the ones they do not know): "*name" is NULL-started and is
 * advanced to the next member's name, "*value" set to its value; returns
 * 0 while there is one.
 */
int ngx_http_openclaw_jv_member(ngx_http_openclaw_jv_t *obj,
    ngx_http_openclaw_jv_t *name, ngx_http_openclaw_jv_t *value);

/*
 * The decoded content of a string value into "dst" (at least v->size
 * bytes: decoding never grows a string); returns its length.  Lone
 * surrogate escapes become U+FFFD, as valid UTF-8 must.
 */
size_t ngx_http_openclaw_jv_decode(ngx_http_openclaw_jv_t *v, uint8_t *dst);

/* a string value with escapes equals the "n" bytes of "s" (decoded) */
int ngx_http_openclaw_jv_is_escaped(ngx_http_openclaw_jv_t *v, const char *s,
    size_t n);

/*
 * A string value equals "s" (decoded).  Inline: callers mostly compare
 * with a literal, whose length and comparison then fold into a few
 * instructions.
 */

static inline int
ngx_http_openclaw_jv_is(ngx_http_openclaw_jv_t *v, const char *s)
{
    size_t  n;

    if (v->type != NGX_HTTP_OPENCLAW_JSON_STRING) {
        return 0;
    }

    n = strlen(s);

    if (!v->escaped) {
        return v->size == n && memcmp(v->data, s, n) == 0;
    }

    return ngx_http_openclaw_jv_is_escaped(v, s, n);
}

/*
 * How many of the "len" bytes at "p" go into a JSON string as they are,
 * before the first control byte, quote or backslash.
 */
size_t ngx_http_openclaw_jv_plain(const uint8_t *p, size_t len);


#endif /* _NGX_HTTP_OPENCLAW_JSON_H_INCLUDED_ */
