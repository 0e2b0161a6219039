
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#ifndef _NGX_HTTP_OPENCLAW_CLIENT_H_INCLUDED_
#define _NGX_HTTP_OPENCLAW_CLIENT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_openclaw_bridge.h"
#include "ngx_http_openclaw_ws.h"


typedef struct ngx_http_openclaw_client_s  ngx_http_openclaw_client_t;

/*
 * Called with each complete data message; "data" is only valid during the
 * call.  NGX_ERROR means the client is already being closed.
 */
typedef ngx_int_t (*ngx_http_openclaw_message_pt)(
    ngx_http_openclaw_client_t *cl, ngx_uint_t opcode, u_char *data,
    size_t len);

/* called once when the client connection goes away, for any reason */
typedef void (*ngx_http_openclaw_gone_pt)(ngx_http_openclaw_client_t *cl);

/*
 * Called once when the server starts a close handshake, while messages
 * can still be sent: the last chance to answer what is pending.
 */
typedef void (*ngx_http_openclaw_closing_pt)(ngx_http_openclaw_client_t *cl,
    const char *reason);


typedef enum {
    NGX_HTTP_OPENCLAW_OPEN = 0,
    NGX_HTTP_OPENCLAW_CLOSING,      /* close sent, waiting for the peer's */
    NGX_HTTP_OPENCLAW_FLUSHING,     /* handshake over, flushing then done */
    NGX_HTTP_OPENCLAW_DONE
} ngx_http_openclaw_client_state_e;


struct ngx_http_openclaw_client_s {
    ngx_http_request_t             *request;
    ngx_connection_t               *connection;
    ngx_http_openclaw_loc_conf_t   *conf;

    ngx_http_openclaw_message_pt    handler;
    ngx_http_openclaw_gone_pt       gone;
    ngx_http_openclaw_closing_pt    closing;
    void                           *data;

    ngx_http_openclaw_ws_parser_t   parser;

    /* a data message being reassembled from several frames or reads */
    u_char                         *msg;
    size_t                          msg_len;
    size_t                          msg_size;

    /*
     * Framed output not yet accepted by the socket; "out_head" is the end
     * of the frame being written, so that what waits behind it is known.
     */
    u_char                         *out;
    u_char                         *out_pos;
    u_char                         *out_head;
    u_char                         *out_last;
    size_t                          out_size;

    ngx_event_t                     keepalive;
    ngx_event_t                     idle;
    ngx_event_t                     close_timer;

    ngx_msec_t                      last_active;

    ngx_http_openclaw_client_state_e  state;

    /*
     * The first close frame sent or received, for the log: 0 until
     * there is one; 1005 for a frame without a status.
     */
    ngx_uint_t                      close_code;
    size_t                          close_text_len;
    u_char                          close_text[NGX_HTTP_OPENCLAW_WS_MAX_REASON];

    unsigned                        upgraded:1;
    unsigned                        reading:1;
    unsigned                        awaiting_pong:1;
    unsigned                        overflow:1;
};


ngx_int_t ngx_http_openclaw_client_handler(ngx_http_request_t *r,
    ngx_http_openclaw_message_pt handler);

/*
 * Queues one message.  NGX_DECLINED: the connection is closing and the
 * message was dropped; NGX_ERROR: the client fell too far behind, the
 * message was dropped, and the connection will be closed.  Sending never
 * closes the connection or calls back before it returns, so a caller may
 * send from inside anything it holds.
 */
ngx_int_t ngx_http_openclaw_client_send(ngx_http_openclaw_client_t *cl,
    ngx_uint_t opcode, u_char *data, size_t len);

/* starts the close handshake with "code" and a static reason */
void ngx_http_openclaw_client_close(ngx_http_openclaw_client_t *cl,
    ngx_uint_t code, const char *reason);


#endif /* _NGX_HTTP_OPENCLAW_CLIENT_H_INCLUDED_ */
