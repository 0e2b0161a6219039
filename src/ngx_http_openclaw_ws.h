
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * RFC 6455 frame codec.  It uses no nginx types so that it can be unit
 * tested and fuzzed on its own: the parser is a resumable state machine
 * that consumes any split of the input, unmasks payload in place and
 * enforces every framing rule before a byte of payload is buffered.
 */


#ifndef _NGX_HTTP_OPENCLAW_WS_H_INCLUDED_
#define _NGX_HTTP_OPENCLAW_WS_H_INCLUDED_


#include <stddef.h>
#include <stdint.h>


#define NGX_HTTP_OPENCLAW_WS_CONTINUATION   0x0
#define NGX_HTTP_OPENCLAW_WS_TEXT           0x1
#define NGX_HTTP_OPENCLAW_WS_BINARY         0x2
#define NGX_HTTP_OPENCLAW_WS_CLOSE          0x8
#define NGX_HTTP_OPENCLAW_WS_PING           0x9
#define NGX_HTTP_OPENCLAW_WS_PONG           0xa

#define NGX_HTTP_OPENCLAW_WS_NORMAL         1000
#define NGX_HTTP_OPENCLAW_WS_GOING_AWAY     1001
#define NGX_HTTP_OPENCLAW_WS_PROTOCOL       1002
#define NGX_HTTP_OPENCLAW_WS_NO_STATUS      1005
#define NGX_HTTP_OPENCLAW_WS_INVALID_DATA   1007
#define NGX_HTTP_OPENCLAW_WS_POLICY         1008
#define NGX_HTTP_OPENCLAW_WS_TOO_BIG        1009
#define NGX_HTTP_OPENCLAW_WS_INTERNAL       1011
#define NGX_HTTP_OPENCLAW_WS_RESTART        1012
#define NGX_HTTP_OPENCLAW_WS_TRY_AGAIN      1013

#define NGX_HTTP_OPENCLAW_WS_MAX_CONTROL    125
#define NGX_HTTP_OPENCLAW_WS_MAX_REASON     123
#define NGX_HTTP_OPENCLAW_WS_MAX_HEADER     14

#define NGX_HTTP_OPENCLAW_WS_ACCEPT_LEN     28


typedef enum {
    NGX_HTTP_OPENCLAW_WS_AGAIN = 0,
    NGX_HTTP_OPENCLAW_WS_DATA,
    NGX_HTTP_OPENCLAW_WS_CONTROL,
    NGX_HTTP_OPENCLAW_WS_ERROR
} ngx_http_openclaw_ws_rc_e;


/*
 * What the parser reports.  DATA: "len" payload bytes of the message
 * started with opcode "opcode", at "data" (inside the caller's buffer,
 * already unmasked); "first" marks the message's first bytes, "last" its
 * end ("len" may be 0 then).  CONTROL: a whole control frame; for a close
 * frame "code" is its status (1005 when it has none) and "data"/"len" its
 * reason.  ERROR: the connection must be closed with "code" and the
 * NUL-terminated "reason".
 */

typedef struct {
    unsigned                    opcode;
    uint8_t                    *data;
    size_t                      len;
    unsigned                    code;
    const char                 *reason;
    unsigned                    first:1;
    unsigned                    last:1;
} ngx_http_openclaw_ws_event_t;


typedef struct {
    uint64_t                    max_message;
    uint64_t                    message_size;
    uint64_t                    remaining;

    uint32_t                    utf8;

    unsigned                    state;
    unsigned                    opcode;
    unsigned                    message_opcode;
    unsigned                    header_len;
    unsigned                    header_need;
    unsigned                    mask_pos;
    unsigned                    control_len;

    uint8_t                     header[NGX_HTTP_OPENCLAW_WS_MAX_HEADER];
    uint8_t                     mask[4];
    uint8_t                     control[NGX_HTTP_OPENCLAW_WS_MAX_CONTROL];

    unsigned                    server:1;
    unsigned                    fin:1;
    unsigned                    masked:1;
    unsigned                    in_message:1;
    unsigned                    message_started:1;
    unsigned                    closed:1;
} ngx_http_openclaw_ws_parser_t;


/*
 * "server" set: frames come from a client and must be masked; clear:
 * frames come from a server and must not be.  "max_message" bounds a
 * reassembled data message, 0 means no bound.
 */
void ngx_http_openclaw_ws_parser_init(ngx_http_openclaw_ws_parser_t *p,
    int server, uint64_t max_message);

/*
 * Consumes input up to the next event and returns it; "*consumed" says how
 * many bytes of "buf" were used.  AGAIN means all of "buf" was consumed.
 * After ERROR, or after the CONTROL event of a close frame, the parser
 * accepts nothing more.
 */
ngx_http_openclaw_ws_rc_e ngx_http_openclaw_ws_parse(
    ngx_http_openclaw_ws_parser_t *p, uint8_t *buf, size_t len,
    size_t *consumed, ngx_http_openclaw_ws_event_t *ev);

/*
 * Writes a frame header into "buf" (at least MAX_HEADER bytes) and returns
 * its size; a non-NULL "mask" adds the masking key (the caller masks the
 * payload with ngx_http_openclaw_ws_mask()).
 */
size_t ngx_http_openclaw_ws_frame_header(uint8_t *buf, unsigned opcode,
    int fin, uint64_t len, const uint8_t *mask);

/* XORs "len" bytes with "key", starting at key position "offset" */
void ngx_http_openclaw_ws_mask(uint8_t *data, size_t len, const uint8_t *key,
    size_t offset);

/*
 * Writes a close payload (code plus reason, cut to 123 bytes on a UTF-8
 * boundary) and returns its size; code 0 gives an empty payload.
 */
size_t ngx_http_openclaw_ws_close_payload(uint8_t *buf, unsigned code,
    const char *reason, size_t reason_len);

/* codes a peer may send in a close frame (RFC 6455 7.4, IANA registry) */
int ngx_http_openclaw_ws_close_code_valid(unsigned code);

/*
 * Incremental UTF-8 validation.  "*state" starts at 0 and is 0 again at
 * every character boundary; returns -1 on the first byte that cannot be
 * part of valid UTF-8 (overlongs, surrogates, > U+10FFFF included).
 */
int ngx_http_openclaw_utf8_validate(uint32_t *state, const uint8_t *p,
    size_t len);

/*
 * Sec-WebSocket-Key must be base64 of exactly 16 bytes; returns 0 when it
 * is, -1 otherwise.
 */
int ngx_http_openclaw_ws_key_valid(const uint8_t *key, size_t len);

/* base64(SHA-1(key + GUID)) into "out" (28 bytes, not NUL-terminated) */
int ngx_http_openclaw_ws_accept(const uint8_t *key, size_t len, uint8_t *out);


#endif /* _NGX_HTTP_OPENCLAW_WS_H_INCLUDED_ */
