
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * Message translation: client JSON in, gateway params out, and the JSON
 * replies.  Replies are written by hand into one reusable buffer rather
 * than built as cJSON trees: they are on the per-message path.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "ngx_http_openclaw_bridge.h"
#include "ngx_http_openclaw_message.h"


static ngx_int_t ngx_http_openclaw_message_field(ngx_http_openclaw_jv_t *v,
    const char *name, ngx_str_t *value, ngx_str_t *json, const char **err);
static ngx_int_t ngx_http_openclaw_message_alias(ngx_http_openclaw_jv_t *v,
    const char **names, ngx_uint_t n, ngx_str_t *value, const char **err);
static void ngx_http_openclaw_trim(ngx_str_t *s);
static ngx_int_t ngx_http_openclaw_message_attachments(
    ngx_http_openclaw_jv_t *v, ngx_http_openclaw_inbound_t *in,
    const char **err);
static ngx_int_t ngx_http_openclaw_message_attachment(
    ngx_http_openclaw_jv_t *att, ngx_uint_t i, size_t *size,
    const char **err);
static size_t ngx_http_openclaw_base64_size(u_char *p, size_t len);
static ngx_int_t ngx_http_openclaw_message_block(ngx_http_openclaw_jv_t *block,
    ngx_http_openclaw_jv_t *text);
static u_char *ngx_http_openclaw_lower(u_char *dst, u_char *src, size_t n);
static ngx_int_t ngx_http_openclaw_json_name(ngx_http_openclaw_json_t *j,
    const char *name, size_t n, size_t more);
static ngx_int_t ngx_http_openclaw_json_reserve(ngx_http_openclaw_json_t *j,
    size_t n);


/* the members of a client message, found in one pass */
enum {
    F_ID = 0, F_TYPE, F_KEY, F_CONTENT, F_SESSION, F_TOPIC, F_THREAD,
    F_PEER_KIND, F_CHAT_TYPE, F_PEER_ID, F_CHAT_ID, F_SENDER_ID, F_DATA,
    F_ERROR, F_ATTACHMENTS, F_N
};

/* the members of an attachment, as chat.send names them */
enum {
    A_MIME_TYPE = 0, A_CONTENT, A_FILE_NAME, A_TYPE, A_N
};


static u_char  *ngx_http_openclaw_json_buf;
static size_t   ngx_http_openclaw_json_size;

/* decoded fields of the message being parsed: never longer than it */
static u_char  *ngx_http_openclaw_scratch;
static u_char  *ngx_http_openclaw_scratch_pos;
static size_t   ngx_http_openclaw_scratch_size;


ngx_int_t
ngx_http_openclaw_message_parse(u_char *data, size_t len,
    ngx_http_openclaw_inbound_t *in, const char **err)
{
    int                           rc;
    ngx_str_t                     type, none;
    ngx_http_openclaw_jv_t        top, v[F_N];
    ngx_http_openclaw_jv_node_t   nodes[32];
    ngx_http_openclaw_jv_index_t  index;

    static const char                   *names[F_N] = {
        "id", "type", "key", "content", "session", "topicId", "threadId",
        "peerKind", "chatType", "peerId", "chatId", "senderId", "data",
        "error", "attachments"
    };
    static ngx_http_openclaw_jv_names_t  members =
                                        ngx_http_openclaw_jv_names(names);

    ngx_memzero(in, sizeof(ngx_http_openclaw_inbound_t));

    /* never NULL: these get copied, and memcpy() takes no NULL at all */

    ngx_str_set(&in->id, "");
    ngx_str_set(&in->id_json, "");
    ngx_str_set(&in->type_name, "");

    index.nodes = nodes;
    index.size = 32;

    rc = ngx_http_openclaw_jv_parse(data, len, &top, &index);

    if (rc == -2) {
        *err = "message has trailing data after the JSON value";
        return NGX_ERROR;
    }

    if (rc != 0) {
        *err = "message is not valid JSON";
        return NGX_ERROR;
    }

    if (top.type != NGX_HTTP_OPENCLAW_JSON_OBJECT) {
        *err = "message must be a JSON object";
        return NGX_ERROR;
    }

    if (len > ngx_http_openclaw_scratch_size) {
        if (ngx_http_openclaw_scratch) {
            ngx_free(ngx_http_openclaw_scratch);
        }

        ngx_http_openclaw_scratch_size = ngx_max(len, 4096);
        ngx_http_openclaw_scratch = ngx_alloc(ngx_http_openclaw_scratch_size,
                                              ngx_cycle->log);
        if (ngx_http_openclaw_scratch == NULL) {
            ngx_http_openclaw_scratch_size = 0;
            *err = "out of memory";
            return NGX_ERROR;
        }
    }

    ngx_http_openclaw_scratch_pos = ngx_http_openclaw_scratch;

    (void) ngx_http_openclaw_jv_lookup(&top, &members, v);

    /* the id first, so that every later error can carry it */

    if (ngx_http_openclaw_message_field(&v[F_ID], "id", &in->id,
                                        &in->id_json, err)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_http_openclaw_message_field(&v[F_TYPE], "type", &type, &none,
                                        err)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    in->type_name = type;

    if (type.len == 0) {
        in->type = NGX_HTTP_OPENCLAW_MSG_CHAT;

    } else if (type.len == 12
               && ngx_strncmp(type.data, "session.list", 12) == 0)
    {
        in->type = NGX_HTTP_OPENCLAW_MSG_SESSION_LIST;

    } else if (type.len == 11
               && ngx_strncmp(type.data, "session.get", 11) == 0)
    {
        in->type = NGX_HTTP_OPENCLAW_MSG_SESSION_GET;

    } else if (type.len == 13
               && ngx_strncmp(type.data, "session.reset", 13) == 0)
    {
        in->type = NGX_HTTP_OPENCLAW_MSG_SESSION_RESET;

    } else if (type.len == 14
               && ngx_strncmp(type.data, "session.delete", 14) == 0)
    {
        in->type = NGX_HTTP_OPENCLAW_MSG_SESSION_DELETE;

    } else if ((type.len == 8 && ngx_strncmp(type.data, "progress", 8) == 0)
               || (type.len == 8
                   && ngx_strncmp(type.data, "complete", 8) == 0)
               || (type.len == 5 && ngx_strncmp(type.data, "error", 5) == 0)
               || (type.len == 9
                   && ngx_strncmp(type.data, "connected", 9) == 0)
               || (type.len == 5 && ngx_strncmp(type.data, "event", 5) == 0)
               || (type.len == 3 && ngx_strncmp(type.data, "res", 3) == 0))
    {
        /*
         * Our own replies, hub greetings and raw gateway frames coming
         * back through a hub that echoes to the sender: answering them
         * would start a loop.
         */

        in->type = NGX_HTTP_OPENCLAW_MSG_IGNORED;
        return NGX_OK;

    } else {
        in->type = NGX_HTTP_OPENCLAW_MSG_CHAT;
    }

    if (in->type != NGX_HTTP_OPENCLAW_MSG_CHAT) {

        /*
         * A control reply ({"type":"session.list","data":...}) coming
         * back through an echoing hub is not a request: answering it
         * would answer the answer, for ever, as the Go bridge does.
         */

        if (v[F_DATA].start || v[F_ERROR].start) {
            in->type = NGX_HTTP_OPENCLAW_MSG_IGNORED;
            return NGX_OK;
        }

        return ngx_http_openclaw_message_field(&v[F_KEY], "key", &in->key,
                                               &none, err);
    }

    ngx_str_set(&in->content, "");

    if (v[F_CONTENT].start != NULL
        && v[F_CONTENT].type != NGX_HTTP_OPENCLAW_JSON_NULL)
    {
        if (v[F_CONTENT].type != NGX_HTTP_OPENCLAW_JSON_STRING) {
            *err = "field \"content\" must be a string";
            return NGX_ERROR;
        }

        if (v[F_CONTENT].size) {
            in->content.data = (u_char *) v[F_CONTENT].data;
            in->content.len = v[F_CONTENT].size;
        }
    }

    if (ngx_http_openclaw_message_field(&v[F_SESSION], "session",
                                        &in->session, &none, err)
        != NGX_OK
        || ngx_http_openclaw_message_alias(&v[F_PEER_KIND], &names[F_PEER_KIND],
                                           2, &in->peer_kind, err)
           != NGX_OK
        || ngx_http_openclaw_message_alias(&v[F_PEER_ID], &names[F_PEER_ID],
                                           3, &in->peer_id, err)
           != NGX_OK
        || ngx_http_openclaw_message_field(&v[F_TOPIC], "topicId",
                                           &in->topic_id, &none, err)
           != NGX_OK
        || ngx_http_openclaw_message_field(&v[F_THREAD], "threadId",
                                           &in->thread_id, &none, err)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_http_openclaw_message_attachments(&v[F_ATTACHMENTS], in, err)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    /*
     * Both gateways take an image without a text ("message or attachment
     * required"): the text may be left out only where there is one.
     */

    if (in->content.len == 0 && in->nattachments == 0) {
        *err = (v[F_CONTENT].start == NULL
                || v[F_CONTENT].type == NGX_HTTP_OPENCLAW_JSON_NULL)
               ? "missing field \"content\""
               : "field \"content\" is empty";
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * Attachments as chat.send takes them: [{mimeType, content (base64),
 * fileName?, type?}].  They are forwarded as they came, so everything
 * the gateway would read is checked here, and a member the module does
 * not know (or one given twice, where the gateway would take the last
 * and this check the first) is refused rather than passed on unchecked.
 */

static ngx_int_t
ngx_http_openclaw_message_attachments(ngx_http_openclaw_jv_t *v,
    ngx_http_openclaw_inbound_t *in, const char **err)
{
    size_t                  size;
    ngx_uint_t              i;
    ngx_http_openclaw_jv_t  att;

    if (v->start == NULL || v->type == NGX_HTTP_OPENCLAW_JSON_NULL) {
        return NGX_OK;
    }

    if (v->type != NGX_HTTP_OPENCLAW_JSON_ARRAY) {
        *err = "field \"attachments\" must be an array";
        return NGX_ERROR;
    }

    att.start = NULL;

    for (i = 0; ngx_http_openclaw_jv_next(v, &att) == 0; i++) {
        if (ngx_http_openclaw_message_attachment(&att, i, &size, err)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        if (i == 0 || size > in->largest_size) {
            in->largest = i;
            in->largest_size = size;
        }
    }

    if (i) {
        in->attachments.data = (u_char *) v->start;
        in->attachments.len = v->len;
        in->nattachments = i;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_openclaw_message_attachment(ngx_http_openclaw_jv_t *att,
    ngx_uint_t i, size_t *size, const char **err)
{
    u_char                 *p, *data, *comma;
    size_t                  len;
    ngx_uint_t              k;
    ngx_http_openclaw_jv_t  name, value, a[A_N];
    static u_char           errbuf[160];

    static const char      *names[A_N] = {
        "mimeType", "content", "fileName", "type"
    };

    if (att->type != NGX_HTTP_OPENCLAW_JSON_OBJECT) {
        p = ngx_snprintf(errbuf, sizeof(errbuf) - 1,
                         "attachments[%ui] must be an object", i);
        goto failed;
    }

    ngx_memzero(a, sizeof(a));
    name.start = NULL;

    while (ngx_http_openclaw_jv_member(att, &name, &value) == 0) {

        for (k = 0; k < A_N; k++) {
            if (!name.escaped && name.size == ngx_strlen(names[k])
                && ngx_strncmp(name.data, names[k], name.size) == 0)
            {
                break;
            }
        }

        if (k == A_N) {
            if (!name.escaped && name.size == 3
                && ngx_strncmp(name.data, "url", 3) == 0)
            {
                p = ngx_snprintf(errbuf, sizeof(errbuf) - 1,
                                 "attachments[%ui].url is not supported: "
                                 "the gateway takes images only as base64 "
                                 "\"content\"", i);
                goto failed;
            }

            p = ngx_snprintf(errbuf, sizeof(errbuf) - 1,
                             "attachments[%ui] has an unknown field \"%*s\"",
                             i, ngx_min(name.size, 32), name.data);
            goto failed;
        }

        if (a[k].start) {
            p = ngx_snprintf(errbuf, sizeof(errbuf) - 1,
                             "attachments[%ui] has \"%s\" twice",
                             i, names[k]);
            goto failed;
        }

        a[k] = value;

        if (value.type != NGX_HTTP_OPENCLAW_JSON_STRING
            && (k == A_MIME_TYPE || k == A_CONTENT
                || value.type != NGX_HTTP_OPENCLAW_JSON_NULL))
        {
            p = ngx_snprintf(errbuf, sizeof(errbuf) - 1,
                             "attachments[%ui].%s must be a string",
                             i, names[k]);
            goto failed;
        }
    }

    if (a[A_MIME_TYPE].start == NULL) {
        p = ngx_snprintf(errbuf, sizeof(errbuf) - 1,
                         "attachments[%ui] has no \"mimeType\"", i);
        goto failed;
    }

    if (a[A_CONTENT].start == NULL) {
        p = ngx_snprintf(errbuf, sizeof(errbuf) - 1,
                         "attachments[%ui] has no \"content\"", i);
        goto failed;
    }

    /*
     * Images only: the gateway takes other files too, but what it does
     * with them depends on the model and the file type, and a file it
     * cannot use it may drop without a word (protocol 3 drops video).
     */

    data = ngx_http_openclaw_scratch_pos;
    len = ngx_http_openclaw_jv_decode(&a[A_MIME_TYPE], data);

    if (len <= 6 || ngx_strncasecmp(data, (u_char *) "image/", 6) != 0) {
        p = ngx_snprintf(errbuf, sizeof(errbuf) - 1,
                         "attachments[%ui].mimeType must be an image type "
                         "(image/png, image/jpeg, ...), not \"%*s\"",
                         i, ngx_min(len, 40), data);
        goto failed;
    }

    /* a JSON encoder may write "/" as "\/": the gateway reads it decoded */

    len = ngx_http_openclaw_jv_decode(&a[A_CONTENT], data);

    /* the gateway strips a data: URL's prefix, as browsers write images */

    if (len > 5 && ngx_strncmp(data, "data:", 5) == 0) {
        comma = ngx_strlchr(data, data + len, ',');

        if (comma == NULL || comma - data < 13
            || ngx_strncmp(comma - 7, ";base64", 7) != 0)
        {
            p = ngx_snprintf(errbuf, sizeof(errbuf) - 1,
                             "attachments[%ui].content is a data: URL "
                             "without \";base64,\"", i);
            goto failed;
        }

        comma++;
        len -= comma - data;
        data = comma;
    }

    if (len == 0) {
        p = ngx_snprintf(errbuf, sizeof(errbuf) - 1,
                         "attachments[%ui].content is empty", i);
        goto failed;
    }

    *size = ngx_http_openclaw_base64_size(data, len);

    if (*size == 0) {
        p = ngx_snprintf(errbuf, sizeof(errbuf) - 1,
                         "attachments[%ui].content is not valid base64", i);
        goto failed;
    }

    return NGX_OK;

failed:

    *p = '\0';
    *err = (const char *) errbuf;

    return NGX_ERROR;
}


/*
 * The decoded size of base64 text as the gateway accepts it (padded, no
 * white space, the standard alphabet: stricter than ngx_decode_base64(),
 * which takes it unpadded), or 0 when it is not such text.
 */

static size_t
ngx_http_openclaw_base64_size(u_char *p, size_t len)
{
    size_t  i, pad;

    if (len % 4) {
        return 0;
    }

    pad = 0;

    if (p[len - 1] == '=') {
        pad = (p[len - 2] == '=') ? 2 : 1;
    }

    for (i = 0; i < len - pad; i++) {
        if (!((p[i] >= 'A' && p[i] <= 'Z') || (p[i] >= 'a' && p[i] <= 'z')
              || (p[i] >= '0' && p[i] <= '9') || p[i] == '+' || p[i] == '/'))
        {
            return 0;
        }
    }

    return len / 4 * 3 - pad;
}


/*
 * An optional text field, decoded and trimmed.  Peer and thread ids are
 * often numbers (Telegram chat ids are), so integers are accepted too,
 * as written; "json" gets the value as it came.
 */

static ngx_int_t
ngx_http_openclaw_message_field(ngx_http_openclaw_jv_t *v, const char *name,
    ngx_str_t *value, ngx_str_t *json, const char **err)
{
    u_char         *p, *last;
    ngx_uint_t      text_only;
    static u_char   errbuf[96];

    ngx_str_set(value, "");
    ngx_str_set(json, "");

    if (v->start == NULL || v->type == NGX_HTTP_OPENCLAW_JSON_NULL) {
        return NGX_OK;
    }

    if (v->type == NGX_HTTP_OPENCLAW_JSON_STRING) {
        json->data = (u_char *) v->start;
        json->len = v->len;

        value->data = ngx_http_openclaw_scratch_pos;
        value->len = ngx_http_openclaw_jv_decode(v,
                                                 ngx_http_openclaw_scratch_pos);
        ngx_http_openclaw_scratch_pos += value->len;

        /* ids go back to the client exactly as they came */

        if (ngx_strcmp(name, "id") != 0) {
            ngx_http_openclaw_trim(value);
        }

        return NGX_OK;
    }

    text_only = (ngx_strcmp(name, "type") == 0
                 || ngx_strcmp(name, "session") == 0
                 || ngx_strcmp(name, "key") == 0);

    p = (u_char *) v->start;
    last = p + v->len;

    if (!text_only && v->type == NGX_HTTP_OPENCLAW_JSON_NUMBER
        && ngx_strlchr(p, last, '.') == NULL
        && ngx_strlchr(p, last, 'e') == NULL
        && ngx_strlchr(p, last, 'E') == NULL)
    {
        value->data = p;
        value->len = v->len;
        *json = *value;
        return NGX_OK;
    }

    p = ngx_snprintf(errbuf, sizeof(errbuf) - 1, "field \"%s\" must be a %s",
                     name, text_only ? "string" : "string or an integer");
    *p = '\0';
    *err = (const char *) errbuf;

    return NGX_ERROR;
}


/* the first of several alias fields that is set and not blank */

static ngx_int_t
ngx_http_openclaw_message_alias(ngx_http_openclaw_jv_t *v, const char **names,
    ngx_uint_t n, ngx_str_t *value, const char **err)
{
    ngx_str_t   json;
    ngx_uint_t  i;

    for (i = 0; i < n; i++) {
        if (ngx_http_openclaw_message_field(&v[i], names[i], value, &json,
                                            err)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        if (value->len) {
            break;
        }
    }

    return NGX_OK;
}


static void
ngx_http_openclaw_trim(ngx_str_t *s)
{
    while (s->len && (s->data[0] == ' ' || s->data[0] == '\t'
                      || s->data[0] == '\r' || s->data[0] == '\n'))
    {
        s->data++;
        s->len--;
    }

    while (s->len && (s->data[s->len - 1] == ' '
                      || s->data[s->len - 1] == '\t'
                      || s->data[s->len - 1] == '\r'
                      || s->data[s->len - 1] == '\n'))
    {
        s->len--;
    }
}


static u_char *
ngx_http_openclaw_lower(u_char *dst, u_char *src, size_t n)
{
    while (n--) {
        *dst++ = ngx_tolower(*src);
        src++;
    }

    return dst;
}


ngx_int_t
ngx_http_openclaw_message_session(ngx_http_openclaw_inbound_t *in,
    ngx_http_openclaw_scope_t *sc, u_char *buf, ngx_str_t *key,
    const char **err)
{
    u_char     *p;
    size_t      len;
    ngx_str_t   kind, thread;
    ngx_uint_t  dm;
    u_char      rnd[16];

    p = buf;

    switch (sc->scope) {

    case NGX_HTTP_OPENCLAW_SCOPE_GLOBAL:
        len = sc->prefix.len + sizeof(":global") - 1;
        goto fixed;

    case NGX_HTTP_OPENCLAW_SCOPE_PER_MESSAGE:
        goto per_message;

    default:
        break;
    }

    if (in->session.len) {
        return ngx_http_openclaw_message_key(sc, &in->session, buf, key, err);
    }

    if (in->peer_id.len == 0) {

        if (sc->scope == NGX_HTTP_OPENCLAW_SCOPE_EXPLICIT) {
            *err = "a session is required on this location: set \"session\" "
                   "or \"peerKind\" and \"peerId\"";
            return NGX_ERROR;
        }

        if (sc->fallback_per_message) {
            goto per_message;
        }

        len = sc->prefix.len + 1 + sc->fallback.len;
        goto fixed;
    }

    goto peer;

per_message:

    /* per sender too: two senders' message 1 are two sessions */

    len = sc->prefix.len + 1 + sc->fallback.len + sizeof(":msg:") - 1
          + (in->id.len ? in->id.len : 2 * sizeof(rnd));

    if (len > NGX_HTTP_OPENCLAW_SESSION_MAX) {
        goto too_long;
    }

    p = ngx_cpymem(p, sc->prefix.data, sc->prefix.len);
    *p++ = ':';
    p = ngx_cpymem(p, sc->fallback.data, sc->fallback.len);
    p = ngx_cpymem(p, ":msg:", 5);

    if (in->id.len) {
        p = ngx_http_openclaw_lower(p, in->id.data, in->id.len);

    } else {
        if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
            *err = "cannot make a session key";
            return NGX_ERROR;
        }

        p = ngx_hex_dump(p, rnd, sizeof(rnd));
    }

    goto done;

peer:

    /* the Go bridge's keys: webhook:<dm|group|channel>:<peer>[...] */

    kind = in->peer_kind;
    thread.len = 0;
    dm = 0;

    if (kind.len == 0) {
        ngx_str_set(&kind, "dm");
    }

    if (kind.len == 2 && ngx_strncasecmp(kind.data, (u_char *) "dm", 2) == 0) {
        dm = 1;
        thread = in->thread_id;

    } else if ((kind.len == 5
                && ngx_strncasecmp(kind.data, (u_char *) "group", 5) == 0)
               || (kind.len == 7
                   && ngx_strncasecmp(kind.data, (u_char *) "channel", 7)
                      == 0))
    {
        thread = in->topic_id.len ? in->topic_id : in->thread_id;

    } else {
        *err = "field \"peerKind\" must be \"dm\", \"group\" or "
               "\"channel\"";
        return NGX_ERROR;
    }

    len = sc->prefix.len + 2 + kind.len + in->peer_id.len
          + (thread.len ? sizeof(":thread:") - 1 + thread.len : 0);

    if (len > NGX_HTTP_OPENCLAW_SESSION_MAX) {
        goto too_long;
    }

    p = ngx_cpymem(p, sc->prefix.data, sc->prefix.len);
    *p++ = ':';
    p = ngx_http_openclaw_lower(p, kind.data, kind.len);
    *p++ = ':';
    p = ngx_http_openclaw_lower(p, in->peer_id.data, in->peer_id.len);

    if (thread.len) {
        p = dm ? ngx_cpymem(p, ":thread:", 8) : ngx_cpymem(p, ":topic:", 7);
        p = ngx_http_openclaw_lower(p, thread.data, thread.len);
    }

    goto done;

fixed:

    if (len > NGX_HTTP_OPENCLAW_SESSION_MAX) {
        goto too_long;
    }

    p = ngx_cpymem(p, sc->prefix.data, sc->prefix.len);

    if (sc->scope == NGX_HTTP_OPENCLAW_SCOPE_GLOBAL) {
        p = ngx_cpymem(p, ":global", 7);

    } else {
        *p++ = ':';
        p = ngx_http_openclaw_lower(p, sc->fallback.data, sc->fallback.len);
    }

done:

    key->data = buf;
    key->len = p - buf;

    return ngx_http_openclaw_message_check(sc, key, err);

too_long:

    *err = "session key longer than 512 characters";
    return NGX_ERROR;
}


ngx_int_t
ngx_http_openclaw_message_key(ngx_http_openclaw_scope_t *sc, ngx_str_t *raw,
    u_char *buf, ngx_str_t *key, const char **err)
{
    u_char      *p;
    size_t       len, alen;
    ngx_uint_t   wide;

    if (raw->len == 0) {
        *err = "the session key is empty";
        return NGX_ERROR;
    }

    /* the agent's whole namespace only where a directive says so */

    wide = sc->namespace == NGX_HTTP_OPENCLAW_NAMESPACE_AGENT
           && sc->uid.len == 0;

    alen = sizeof("agent::") - 1 + sc->agent.len;

    p = buf;

    if (raw->len >= 6 && ngx_strncasecmp(raw->data, (u_char *) "agent:", 6)
                         == 0)
    {
        if (raw->len > NGX_HTTP_OPENCLAW_SESSION_MAX) {
            goto too_long;
        }

        p = ngx_http_openclaw_lower(p, raw->data, raw->len);

        if (!wide) {
            if (raw->len <= sc->prefix.len + 1
                || ngx_strncmp(buf, sc->prefix.data, sc->prefix.len) != 0
                || buf[sc->prefix.len] != ':')
            {
                *err = sc->uid.len
                       ? "the session key lies outside this connection's "
                         "uid: it must start with "
                         "agent:<agent>:webhook:uid:<uid>:"
                       : "the session key lies outside this location's "
                         "namespace: it must start with "
                         "agent:<agent>:webhook:";
                return NGX_ERROR;
            }

            if (sc->uid.len == 0) {
                goto no_uid;
            }

            goto done;
        }

        if (raw->len <= alen
            || ngx_strncmp(buf + 6, sc->agent.data, sc->agent.len) != 0
            || buf[alen - 1] != ':')
        {
            *err = "the session key names another agent than this "
                   "location's";
            return NGX_ERROR;
        }

    no_uid:

        if (raw->len - alen >= sizeof("webhook:uid:") - 1
            && ngx_strncmp(buf + alen, "webhook:uid:",
                           sizeof("webhook:uid:") - 1) == 0)
        {
            goto reserved;
        }

        goto done;
    }

    if (!wide) {
        len = sc->prefix.len + sizeof(":session:") - 1 + raw->len;

        if (len > NGX_HTTP_OPENCLAW_SESSION_MAX) {
            goto too_long;
        }

        p = ngx_cpymem(p, sc->prefix.data, sc->prefix.len);
        p = ngx_cpymem(p, ":session:", 9);

    } else {

        /* as the gateway does: a bare key belongs to the agent */

        if (raw->len >= sizeof("webhook:uid:") - 1
            && ngx_strncasecmp(raw->data, (u_char *) "webhook:uid:",
                               sizeof("webhook:uid:") - 1) == 0)
        {
            goto reserved;
        }

        if (alen + raw->len > NGX_HTTP_OPENCLAW_SESSION_MAX) {
            goto too_long;
        }

        p = ngx_cpymem(p, "agent:", 6);
        p = ngx_cpymem(p, sc->agent.data, sc->agent.len);
        *p++ = ':';
    }

    p = ngx_http_openclaw_lower(p, raw->data, raw->len);

done:

    key->data = buf;
    key->len = p - buf;

    return ngx_http_openclaw_message_check(sc, key, err);

reserved:

    *err = "session keys under webhook:uid: belong to uid-routed locations";
    return NGX_ERROR;

too_long:

    *err = "session key longer than 512 characters";
    return NGX_ERROR;
}


ngx_int_t
ngx_http_openclaw_message_check(ngx_http_openclaw_scope_t *sc,
    ngx_str_t *key, const char **err)
{
    u_char  *p, *last, *part;
    size_t   n, own;

    p = key->data;
    last = p + key->len;
    part = p;

    for ( ;; ) {

        if (p < last && *p != ':') {
            if (*p < 0x20 || *p == 0x7f) {
                *err = "the session key has a control character";
                return NGX_ERROR;
            }

            p++;
            continue;
        }

        n = p - part;

        if (n == 0) {
            *err = "the session key has an empty part (\"::\", or \":\" "
                   "at an end)";
            return NGX_ERROR;
        }

        if (part[0] == '.' && (n == 1 || (n == 2 && part[1] == '.'))) {
            *err = "the session key has a \".\" or \"..\" part";
            return NGX_ERROR;
        }

        if (p == last) {
            break;
        }

        part = ++p;
    }

    /*
     * <prefix>:sender:<s>... and <prefix>:conn:<id>... are the own parts
     * of senders: only the sender whose part it is may name it.
     */

    if (sc->shared
        || key->len <= sc->prefix.len + 1
        || ngx_strncmp(key->data, sc->prefix.data, sc->prefix.len) != 0
        || key->data[sc->prefix.len] != ':')
    {
        return NGX_OK;
    }

    p = key->data + sc->prefix.len + 1;
    n = last - p;

    if (!((n > 7 && ngx_strncmp(p, "sender:", 7) == 0)
          || (n > 5 && ngx_strncmp(p, "conn:", 5) == 0)
          || (n >= 3 && ngx_strncmp(p, "hub", 3) == 0
              && (n == 3 || p[3] == ':'))))
    {
        return NGX_OK;
    }

    own = sc->fallback.len;

    if (n >= own && ngx_strncmp(p, sc->fallback.data, own) == 0
        && (n == own || p[own] == ':'))
    {
        return NGX_OK;
    }

    *err = "the session key is another sender's own: keys under "
           ":sender:<s>, :conn:<id> and :hub belong to that sender";
    return NGX_ERROR;
}


void
ngx_http_openclaw_message_run_id(ngx_str_t *session, ngx_str_t *sender,
    ngx_str_t *id, u_char *buf)
{
    int         ok;
    u_char      md[SHA256_DIGEST_LENGTH];
    SHA256_CTX  sha;

    buf = ngx_cpymem(buf, "wh-", 3);

    if (id->len == 0) {
        ok = (RAND_bytes(md, 16) == 1);

    } else {

        /*
         * SHA256_Init() and the rest, deprecated in OpenSSL 3.0 but kept
         * there, as nginx keeps other such interfaces (its
         * ngx_event_openssl.h suppresses the warnings): for some 60 bytes
         * EVP_DigestInit_ex() through EVP_DigestFinal_ex() cost three
         * times as much (200 ns against 60 ns here), once per message.
         *
         * The zero bytes keep "a" + "b:c" apart from "a:b" + "c".  The
         * sender is part of it: a message is a sender's, and another
         * sender's message with the same id in a shared session is
         * another message, never an answer to be taken from the first.
         */

        ok = SHA256_Init(&sha) == 1
             && SHA256_Update(&sha, session->data, session->len) == 1
             && SHA256_Update(&sha, "", 1) == 1
             && SHA256_Update(&sha, sender->data, sender->len) == 1
             && SHA256_Update(&sha, "", 1) == 1
             && SHA256_Update(&sha, id->data, id->len) == 1
             && SHA256_Final(md, &sha) == 1;
    }

    if (!ok) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                      "cannot make a run id");
        ngx_memzero(md, 16);
    }

    ngx_hex_dump(buf, md, 16);
}


ngx_int_t
ngx_http_openclaw_message_text(ngx_http_openclaw_jv_t *message,
    ngx_str_t *text, u_char **buf)
{
    u_char                 *p;
    size_t                  len;
    ngx_uint_t              n;
    ngx_http_openclaw_jv_t  content, block, t;

    *buf = NULL;
    ngx_str_set(text, "");

    if (ngx_http_openclaw_jv_get(message, "content", &content) != 0) {
        return NGX_OK;
    }

    if (content.type == NGX_HTTP_OPENCLAW_JSON_STRING) {
        text->data = (u_char *) content.data;
        text->len = content.size;
        return NGX_OK;
    }

    len = 0;
    n = 0;
    block.start = NULL;

    while (ngx_http_openclaw_jv_next(&content, &block) == 0) {
        if (ngx_http_openclaw_message_block(&block, &t) == NGX_OK) {
            text->data = (u_char *) t.data;
            text->len = t.size;
            len += t.size;
            n++;
        }
    }

    if (n < 2) {
        return NGX_OK;
    }

    /* escaped texts join as the escape of the joined text */

    p = ngx_alloc(len, ngx_cycle->log);
    if (p == NULL) {
        return NGX_ERROR;
    }

    *buf = p;
    text->data = p;
    text->len = len;

    block.start = NULL;

    while (ngx_http_openclaw_jv_next(&content, &block) == 0) {
        if (ngx_http_openclaw_message_block(&block, &t) == NGX_OK) {
            p = ngx_cpymem(p, t.data, t.size);
        }
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_openclaw_message_media(ngx_http_openclaw_jv_t *message,
    ngx_str_t *media, u_char **buf)
{
    u_char                 *p;
    ngx_http_openclaw_jv_t  content, block, type;

    *buf = NULL;
    ngx_str_set(media, "");

    if (ngx_http_openclaw_jv_get(message, "content", &content) != 0
        || content.type != NGX_HTTP_OPENCLAW_JSON_ARRAY)
    {
        return NGX_OK;
    }

    p = NULL;
    block.start = NULL;

    while (ngx_http_openclaw_jv_next(&content, &block) == 0) {

        /*
         * Text is the reply's content already; thinking is the model's
         * own, which no reply shows; a block without a type is nothing
         * a client could tell apart.
         */

        if (ngx_http_openclaw_jv_get(&block, "type", &type) != 0
            || type.type != NGX_HTTP_OPENCLAW_JSON_STRING
            || ngx_http_openclaw_jv_is(&type, "text")
            || ngx_http_openclaw_jv_is(&type, "thinking")
            || ngx_http_openclaw_jv_is(&type, "redacted_thinking"))
        {
            continue;
        }

        if (p == NULL) {

            /* the blocks as they came are never longer than their array */

            p = ngx_alloc(content.len, ngx_cycle->log);
            if (p == NULL) {
                return NGX_ERROR;
            }

            *buf = p;
            *p++ = '[';

        } else {
            *p++ = ',';
        }

        p = ngx_cpymem(p, block.start, block.len);
    }

    if (p) {
        *p++ = ']';
        media->data = *buf;
        media->len = p - *buf;
    }

    return NGX_OK;
}


/* the text of a content block of type "text" */

static ngx_int_t
ngx_http_openclaw_message_block(ngx_http_openclaw_jv_t *block,
    ngx_http_openclaw_jv_t *text)
{
    ngx_http_openclaw_jv_t  v[2];

    static const char                   *names[2] = { "type", "text" };
    static ngx_http_openclaw_jv_names_t  members =
                                        ngx_http_openclaw_jv_names(names);

    if (ngx_http_openclaw_jv_lookup(block, &members, v) != 2
        || !ngx_http_openclaw_jv_is(&v[0], "text")
        || v[1].type != NGX_HTTP_OPENCLAW_JSON_STRING)
    {
        return NGX_DECLINED;
    }

    *text = v[1];

    return NGX_OK;
}


void
ngx_http_openclaw_json_begin(ngx_http_openclaw_json_t *j, const char *type)
{
    j->start = ngx_http_openclaw_json_buf;
    j->pos = j->start;
    j->end = j->start + ngx_http_openclaw_json_size;
    j->failed = 0;
    j->first = 1;

    if (j->log == NULL) {
        j->log = ngx_cycle->log;
    }

    if (ngx_http_openclaw_json_reserve(j, 1) != NGX_OK) {
        return;
    }

    *j->pos++ = '{';

    if (type) {
        ngx_http_openclaw_json_string(j, "type", (u_char *) type,
                                      ngx_strlen(type));
    }
}


void
ngx_http_openclaw_json_string_n(ngx_http_openclaw_json_t *j, const char *name,
    size_t n, u_char *value, size_t len)
{
    /* the common case, nothing to escape, is found in one pass */

    if (ngx_http_openclaw_jv_plain(value, len) == len) {
        ngx_http_openclaw_json_escaped_n(j, name, n, value, len);
        return;
    }

    /* an escape is at most 6 bytes: "\u00XX" */

    if (ngx_http_openclaw_json_name(j, name, n, 6 * len + 2) != NGX_OK) {
        return;
    }

    *j->pos++ = '"';
    j->pos = (u_char *) ngx_escape_json(j->pos, value, len);
    *j->pos++ = '"';
}


void
ngx_http_openclaw_json_escaped_n(ngx_http_openclaw_json_t *j, const char *name,
    size_t n, u_char *value, size_t len)
{
    if (ngx_http_openclaw_json_name(j, name, n, len + 2) != NGX_OK) {
        return;
    }

    *j->pos++ = '"';
    j->pos = ngx_cpymem(j->pos, value, len);
    *j->pos++ = '"';
}


void
ngx_http_openclaw_json_raw_n(ngx_http_openclaw_json_t *j, const char *name,
    size_t n, u_char *value, size_t len)
{
    if (ngx_http_openclaw_json_name(j, name, n, len) != NGX_OK) {
        return;
    }

    j->pos = ngx_cpymem(j->pos, value, len);
}


/* the comma and the member's name; room is made for "more" after it */

static ngx_int_t
ngx_http_openclaw_json_name(ngx_http_openclaw_json_t *j, const char *name,
    size_t n, size_t more)
{
    if (ngx_http_openclaw_json_reserve(j, n + more + 4) != NGX_OK) {
        return NGX_ERROR;
    }

    if (!j->first) {
        *j->pos++ = ',';
    }

    j->first = 0;

    *j->pos++ = '"';
    j->pos = ngx_cpymem(j->pos, name, n);
    *j->pos++ = '"';
    *j->pos++ = ':';

    return NGX_OK;
}


ngx_int_t
ngx_http_openclaw_json_end(ngx_http_openclaw_json_t *j, ngx_str_t *out)
{
    if (ngx_http_openclaw_json_reserve(j, 1) != NGX_OK || j->failed) {
        return NGX_ERROR;
    }

    *j->pos++ = '}';

    out->data = j->start;
    out->len = j->pos - j->start;

    return NGX_OK;
}


static ngx_int_t
ngx_http_openclaw_json_reserve(ngx_http_openclaw_json_t *j, size_t n)
{
    size_t   size, used;
    u_char  *buf;

    if (j->failed) {
        return NGX_ERROR;
    }

    if ((size_t) (j->end - j->pos) >= n) {
        return NGX_OK;
    }

    used = j->pos - j->start;
    size = ngx_max(2 * ngx_http_openclaw_json_size, used + n + 1024);

    buf = ngx_alloc(size, j->log);
    if (buf == NULL) {
        j->failed = 1;
        return NGX_ERROR;
    }

    if (j->start) {
        ngx_memcpy(buf, j->start, used);
        ngx_free(j->start);
    }

    ngx_http_openclaw_json_buf = buf;
    ngx_http_openclaw_json_size = size;

    j->start = buf;
    j->pos = buf + used;
    j->end = buf + size;

    return NGX_OK;
}
