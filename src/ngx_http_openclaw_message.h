
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#ifndef _NGX_HTTP_OPENCLAW_MESSAGE_H_INCLUDED_
#define _NGX_HTTP_OPENCLAW_MESSAGE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_openclaw_json.h"


#define NGX_HTTP_OPENCLAW_SESSION_MAX   512
#define NGX_HTTP_OPENCLAW_RUN_ID_LEN    35


typedef enum {
    NGX_HTTP_OPENCLAW_MSG_CHAT = 0,
    NGX_HTTP_OPENCLAW_MSG_IGNORED,
    NGX_HTTP_OPENCLAW_MSG_SESSION_LIST,
    NGX_HTTP_OPENCLAW_MSG_SESSION_GET,
    NGX_HTTP_OPENCLAW_MSG_SESSION_RESET,
    NGX_HTTP_OPENCLAW_MSG_SESSION_DELETE
} ngx_http_openclaw_msg_type_e;


/*
 * A client message.  Text fields are decoded and trimmed, with aliases
 * resolved as the Go bridge does (peerKind before chatType, peerId before
 * chatId before senderId), in a worker buffer valid until the next parse.
 * "id_json" is the id as it came, JSON text to copy into replies; and
 * "content" stays escaped, as it came: it is forwarded into the gateway
 * request without being decoded and encoded again.
 */

typedef struct {
    ngx_http_openclaw_msg_type_e    type;
    ngx_str_t                       type_name;
    ngx_str_t                       id;
    ngx_str_t                       id_json;
    ngx_str_t                       content;
    ngx_str_t                       session;
    ngx_str_t                       peer_kind;
    ngx_str_t                       peer_id;
    ngx_str_t                       topic_id;
    ngx_str_t                       thread_id;
    ngx_str_t                       key;
} ngx_http_openclaw_inbound_t;


/*
 * NGX_OK, or NGX_ERROR with "*err" naming the problem; "in->id_json" is
 * set whenever the id could be read, so that the error can carry it.
 */
ngx_int_t ngx_http_openclaw_message_parse(u_char *data, size_t len,
    ngx_http_openclaw_inbound_t *in, const char **err);


/* how a connection's messages map to sessions */

typedef struct {
    ngx_uint_t                      scope;
    ngx_uint_t                      namespace;
    ngx_uint_t                      shared;     /* control "all" */
    ngx_str_t                       agent;
    ngx_str_t                       uid;
    ngx_str_t                       prefix;
    ngx_str_t                       fallback;

    /*
     * No session and no peer: a session per message under "fallback"
     * rather than the fallback itself, for an endpoint that carries many
     * end users whom it cannot tell apart (a hub link).
     */
    ngx_uint_t                      fallback_per_message;
} ngx_http_openclaw_scope_t;


/*
 * The session key of a chat message under the location's scope.  Keys
 * are lowercase and canonical: "prefix" (agent:<agent>:webhook, plus
 * :uid:<uid> when a uid is set) followed by the peer part, as the Go
 * bridge made them (:<kind>:<peer>[:topic:<t>|:thread:<t>]), or by
 * the sender's own part (:sender:<s> or :conn:<id>, and below it
 * :msg:<id> for per-message sessions), or by :global; an explicit
 * "session" goes through ngx_http_openclaw_message_key().  Every key is
 * checked by ngx_http_openclaw_message_check().  Writes into "buf" (at
 * least SESSION_MAX bytes); NGX_ERROR with "*err" set otherwise.
 */
ngx_int_t ngx_http_openclaw_message_session(ngx_http_openclaw_inbound_t *in,
    ngx_http_openclaw_scope_t *sc, u_char *buf, ngx_str_t *key,
    const char **err);

/*
 * A key a client names (the "session" field, or the key of a control
 * message): a bare key is put under the location's namespace as
 * <prefix>:session:<key> (or, with the "agent" namespace, under the agent
 * as the gateway would put it); a full key must lie in the namespace.
 */
ngx_int_t ngx_http_openclaw_message_key(ngx_http_openclaw_scope_t *sc,
    ngx_str_t *raw, u_char *buf, ngx_str_t *key, const char **err);

/*
 * What every session key must be: no control characters, no empty, "."
 * or ".." parts, and, under the location's prefix, no other sender's own
 * part (:sender:<s> or :conn:<id>): a sender's default sessions are its
 * own, whoever names them first, unless the location shares its
 * namespace among its senders ("shared").
 */
ngx_int_t ngx_http_openclaw_message_check(ngx_http_openclaw_scope_t *sc,
    ngx_str_t *key, const char **err);

/*
 * The idempotency key (and so the gateway's run id) of a message: stable
 * for the same session, sender and client id, so that a sender's retry
 * is recognised and another sender's message with the same id is another
 * message; random without an id.  Writes RUN_ID_LEN bytes.
 */
void ngx_http_openclaw_message_run_id(ngx_str_t *session, ngx_str_t *sender,
    ngx_str_t *id, u_char *buf);

/*
 * The text of a gateway message object, still escaped: its string
 * "content", or its blocks of type "text" joined; "*buf" is set when the
 * join needed memory of its own, which the caller frees.
 */
ngx_int_t ngx_http_openclaw_message_text(ngx_http_openclaw_jv_t *message,
    ngx_str_t *text, u_char **buf);

/* JSON output into a growing worker-wide scratch buffer */

typedef struct {
    u_char                         *start;
    u_char                         *pos;
    u_char                         *end;
    ngx_log_t                      *log;
    unsigned                        first:1;
    unsigned                        failed:1;
} ngx_http_openclaw_json_t;

void ngx_http_openclaw_json_begin(ngx_http_openclaw_json_t *j,
    const char *type);

/*
 * Members, named by "name" of "n" bytes: a string to escape, raw JSON, or
 * a string whose content is already escaped JSON.  The inline forms take
 * a C string, whose length folds away when it is a literal.
 */
void ngx_http_openclaw_json_string_n(ngx_http_openclaw_json_t *j,
    const char *name, size_t n, u_char *value, size_t len);
void ngx_http_openclaw_json_raw_n(ngx_http_openclaw_json_t *j,
    const char *name, size_t n, u_char *value, size_t len);
void ngx_http_openclaw_json_escaped_n(ngx_http_openclaw_json_t *j,
    const char *name, size_t n, u_char *value, size_t len);


static ngx_inline void
ngx_http_openclaw_json_string(ngx_http_openclaw_json_t *j, const char *name,
    u_char *value, size_t len)
{
    ngx_http_openclaw_json_string_n(j, name, ngx_strlen(name), value, len);
}


static ngx_inline void
ngx_http_openclaw_json_raw(ngx_http_openclaw_json_t *j, const char *name,
    u_char *value, size_t len)
{
    ngx_http_openclaw_json_raw_n(j, name, ngx_strlen(name), value, len);
}


static ngx_inline void
ngx_http_openclaw_json_escaped(ngx_http_openclaw_json_t *j, const char *name,
    u_char *value, size_t len)
{
    ngx_http_openclaw_json_escaped_n(j, name, ngx_strlen(name), value, len);
}

ngx_int_t ngx_http_openclaw_json_end(ngx_http_openclaw_json_t *j,
    ngx_str_t *out);


#endif /* _NGX_HTTP_OPENCLAW_MESSAGE_H_INCLUDED_ */
