
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * The gateway link: each worker keeps one WebSocket connection to the
 * OpenClaw Gateway and multiplexes every client of the worker over it.
 * The connection is a wsclient; this file speaks the OpenClaw protocol
 * over it: the challenge, the connect request and hello-ok, requests and
 * their responses, events, and the tick watchdog.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <cjson/cJSON.h>

#include "ngx_http_openclaw_gateway.h"
#include "ngx_http_openclaw_identity.h"
#include "ngx_http_openclaw_wsclient.h"


/* frames before hello-ok are small; hello-ok itself is about 16 KB */
#define NGX_HTTP_OPENCLAW_GW_HELLO_MAX      (1024 * 1024)
#define NGX_HTTP_OPENCLAW_GW_PAYLOAD_MAX    (64 * 1024 * 1024)

#define NGX_HTTP_OPENCLAW_GW_TICK_DEFAULT   30000

#define NGX_HTTP_OPENCLAW_GW_VERSION        "0.1.0"


typedef struct {
    ngx_http_openclaw_wsclient_t    ws;

    ngx_http_openclaw_main_conf_t  *conf;
    ngx_http_openclaw_link_info_t  *info;

    ngx_queue_t                     rpcs;       /* in flight, oldest
                                                   first */
    ngx_uint_t                      next_id;

    ngx_event_t                     watchdog;
} ngx_http_openclaw_gateway_t;


static ngx_int_t ngx_http_openclaw_gateway_open(
    ngx_http_openclaw_wsclient_t *ws);
static ngx_int_t ngx_http_openclaw_gateway_message(
    ngx_http_openclaw_wsclient_t *ws, ngx_uint_t opcode, u_char *data,
    size_t len);
static void ngx_http_openclaw_gateway_closed(ngx_http_openclaw_wsclient_t *ws,
    ngx_uint_t failed);
static void ngx_http_openclaw_gateway_progress(
    ngx_http_openclaw_wsclient_t *ws);
static ngx_uint_t ngx_http_openclaw_gateway_keep(
    ngx_http_openclaw_wsclient_t *ws);
static ngx_int_t ngx_http_openclaw_gateway_event(
    ngx_http_openclaw_gateway_t *gw, ngx_http_openclaw_jv_t *event,
    ngx_http_openclaw_jv_t *payload);
static ngx_int_t ngx_http_openclaw_gateway_response_frame(
    ngx_http_openclaw_gateway_t *gw, ngx_http_openclaw_jv_t *frame,
    ngx_http_openclaw_jv_t *id);
static ngx_int_t ngx_http_openclaw_gateway_hello(
    ngx_http_openclaw_gateway_t *gw, cJSON *frame);
static ngx_int_t ngx_http_openclaw_gateway_send_connect(
    ngx_http_openclaw_gateway_t *gw, ngx_http_openclaw_jv_t *challenge);
static void ngx_http_openclaw_gateway_watchdog(ngx_event_t *ev);
static void ngx_http_openclaw_gateway_drop_rpcs(
    ngx_http_openclaw_gateway_t *gw);


static ngx_http_openclaw_gateway_t  *ngx_http_openclaw_gw;

static const ngx_http_openclaw_gateway_handlers_t
    *ngx_http_openclaw_gateway_handlers;


void
ngx_http_openclaw_gateway_set_handlers(
    const ngx_http_openclaw_gateway_handlers_t *handlers)
{
    ngx_http_openclaw_gateway_handlers = handlers;
}


ngx_int_t
ngx_http_openclaw_gateway_init_process(ngx_cycle_t *cycle,
    ngx_http_openclaw_main_conf_t *omcf, ngx_http_openclaw_link_info_t *info)
{
    ngx_http_openclaw_wsclient_t  *ws;
    ngx_http_openclaw_gateway_t   *gw;

    gw = ngx_pcalloc(cycle->pool, sizeof(ngx_http_openclaw_gateway_t));
    if (gw == NULL) {
        return NGX_ERROR;
    }

    gw->conf = omcf;
    gw->info = info;

    ws = &gw->ws;

    ws->url = &omcf->u;
    ws->host = omcf->host;
    ws->uri = omcf->uri;

    /*
     * No Origin and no forwarding headers: the gateway would take the
     * connection for a remote one and clear its scopes.
     */

    ngx_str_set(&ws->headers, "User-Agent: nginx-openclaw-bridge/"
                              NGX_HTTP_OPENCLAW_GW_VERSION CRLF);

#if (NGX_HTTP_SSL)
    ws->ssl = omcf->tls ? omcf->ssl : NULL;
#endif
    ws->ssl_name = omcf->ssl_name;
    ws->ssl_verify = omcf->ssl_verify;
    ws->ssl_server_name = omcf->ssl_server_name;
    ws->ssl_ip = omcf->ssl_ip;

    ws->connect_timeout = omcf->connect_timeout;
    ws->timeout = omcf->request_timeout;
    ws->max_message = NGX_HTTP_OPENCLAW_GW_HELLO_MAX;

    ws->name = "gateway";
    ws->title = "OpenClaw gateway";
    ws->log_name = omcf->url;

    ws->error = info->last_error;
    ws->error_size = sizeof(info->last_error);

    ws->open = ngx_http_openclaw_gateway_open;
    ws->message = ngx_http_openclaw_gateway_message;
    ws->closed = ngx_http_openclaw_gateway_closed;
    ws->progress = ngx_http_openclaw_gateway_progress;
    ws->keep = ngx_http_openclaw_gateway_keep;
    ws->data = gw;

    if (ngx_http_openclaw_wsclient_init(ws, cycle) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_queue_init(&gw->rpcs);

    gw->info->state = NGX_HTTP_OPENCLAW_LINK_DOWN;
    gw->info->since = ngx_time();

    gw->watchdog.handler = ngx_http_openclaw_gateway_watchdog;
    gw->watchdog.data = gw;
    gw->watchdog.log = &ws->log;
    gw->watchdog.cancelable = 1;

    ngx_http_openclaw_gw = gw;

    ngx_http_openclaw_wsclient_start(ws);

    return NGX_OK;
}


void
ngx_http_openclaw_gateway_exit_process(ngx_cycle_t *cycle)
{
    ngx_queue_t                  *q;
    ngx_http_openclaw_rpc_t      *rpc;
    ngx_http_openclaw_gateway_t  *gw;

    gw = ngx_http_openclaw_gw;

    if (gw == NULL) {
        return;
    }

    if (gw->ws.connection) {
        gw->info->state = NGX_HTTP_OPENCLAW_LINK_DOWN;
        gw->info->since = ngx_time();
    }

    ngx_http_openclaw_wsclient_stop(&gw->ws);

    if (gw->watchdog.timer_set) {
        ngx_del_timer(&gw->watchdog);
    }

    /* the requests are forgotten: their owners go with the process */

    while (!ngx_queue_empty(&gw->rpcs)) {
        q = ngx_queue_head(&gw->rpcs);
        ngx_queue_remove(q);

        rpc = ngx_queue_data(q, ngx_http_openclaw_rpc_t, queue);
        rpc->id = 0;
    }

    ngx_http_openclaw_gw = NULL;
}


const char *
ngx_http_openclaw_gateway_last_error(void)
{
    if (ngx_http_openclaw_gw == NULL
        || ngx_http_openclaw_gw->info->last_error[0] == '\0')
    {
        return "no attempt finished yet";
    }

    return (const char *) ngx_http_openclaw_gw->info->last_error;
}


static ngx_int_t
ngx_http_openclaw_gateway_open(ngx_http_openclaw_wsclient_t *ws)
{
    ngx_http_openclaw_gateway_t  *gw;

    gw = ws->data;

    gw->info->state = NGX_HTTP_OPENCLAW_LINK_CHALLENGE;
    ws->log.action = "waiting for the gateway's connect.challenge";

    return NGX_OK;
}


static void
ngx_http_openclaw_gateway_closed(ngx_http_openclaw_wsclient_t *ws,
    ngx_uint_t failed)
{
    ngx_uint_t                    was_ready;
    ngx_http_openclaw_gateway_t  *gw;

    gw = ws->data;

    was_ready = (gw->info->state == NGX_HTTP_OPENCLAW_LINK_READY);

    gw->info->state = NGX_HTTP_OPENCLAW_LINK_DOWN;
    gw->info->since = ngx_time();

    if (gw->watchdog.timer_set) {
        ngx_del_timer(&gw->watchdog);
    }

    /* closed for shutdown: the requests wait for the worker's exit */

    if (!failed) {
        ngx_http_openclaw_gateway_handlers->down();
        return;
    }

    ngx_http_openclaw_gateway_drop_rpcs(gw);

    if (was_ready) {
        ngx_http_openclaw_gateway_handlers->down();
    }
}


/* runs still owed to a draining hub link keep the gateway link too */

static ngx_uint_t
ngx_http_openclaw_gateway_keep(ngx_http_openclaw_wsclient_t *ws)
{
    return ngx_http_openclaw_gateway_handlers->keep
           && ngx_http_openclaw_gateway_handlers->keep();
}


/*
 * The link's first steps, for the status endpoint.  "down" is reported
 * by closed(), once a connection is gone: an attempt that failed before
 * it had one stays "connecting" until the next.
 */

static void
ngx_http_openclaw_gateway_progress(ngx_http_openclaw_wsclient_t *ws)
{
    ngx_http_openclaw_gateway_t  *gw;

    gw = ws->data;

    gw->info->reconnects = ws->reconnects;

    switch (ws->state) {

    case NGX_HTTP_OPENCLAW_WSCLIENT_CONNECTING:
        gw->info->state = NGX_HTTP_OPENCLAW_LINK_CONNECTING;
        break;

    case NGX_HTTP_OPENCLAW_WSCLIENT_UPGRADING:
        gw->info->state = NGX_HTTP_OPENCLAW_LINK_UPGRADING;
        break;

    default:
        break;
    }
}


static ngx_int_t
ngx_http_openclaw_gateway_message(ngx_http_openclaw_wsclient_t *ws,
    ngx_uint_t opcode, u_char *data, size_t len)
{
    ngx_http_openclaw_jv_t        frame, m[4];
    ngx_http_openclaw_jv_node_t   nodes[64];
    ngx_http_openclaw_jv_index_t  index;
    ngx_http_openclaw_gateway_t  *gw;

    static const char                   *names[4] = {
        "type", "event", "payload", "id"
    };
    static ngx_http_openclaw_jv_names_t  members =
                                        ngx_http_openclaw_jv_names(names);

    gw = ws->data;

    /* a chat event has some 30 strings, its text four containers deep */

    index.nodes = nodes;
    index.size = 64;

    if (ngx_http_openclaw_jv_parse(data, len, &frame, &index) != 0
        || frame.type != NGX_HTTP_OPENCLAW_JSON_OBJECT)
    {
        ngx_log_error(NGX_LOG_WARN, &gw->ws.log, 0,
                      "gateway sent a frame that is not a JSON object, "
                      "ignored");
        return NGX_OK;
    }

    (void) ngx_http_openclaw_jv_lookup(&frame, &members, m);

    if (ngx_http_openclaw_jv_is(&m[0], "event")) {
        return ngx_http_openclaw_gateway_event(gw, &m[1], &m[2]);
    }

    if (ngx_http_openclaw_jv_is(&m[0], "res")) {
        return ngx_http_openclaw_gateway_response_frame(gw, &frame, &m[3]);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_openclaw_gateway_event(ngx_http_openclaw_gateway_t *gw,
    ngx_http_openclaw_jv_t *event, ngx_http_openclaw_jv_t *payload)
{
    u_char                  buf[32];
    ngx_http_openclaw_jv_t  ms;

    if (ngx_http_openclaw_jv_is(event, "chat")) {
        if (gw->info->state == NGX_HTTP_OPENCLAW_LINK_READY
            && payload->type == NGX_HTTP_OPENCLAW_JSON_OBJECT)
        {
            ngx_http_openclaw_gateway_handlers->chat_event(payload);
        }

        return NGX_OK;
    }

    if (ngx_http_openclaw_jv_is(event, "connect.challenge")) {

        if (gw->info->state != NGX_HTTP_OPENCLAW_LINK_CHALLENGE) {
            return NGX_OK;
        }

        return ngx_http_openclaw_gateway_send_connect(gw, payload);
    }

    if (ngx_http_openclaw_jv_is(event, "shutdown")) {

        if (ngx_http_openclaw_jv_get(payload, "restartExpectedMs", &ms) == 0
            && ms.type == NGX_HTTP_OPENCLAW_JSON_NUMBER
            && ms.len < sizeof(buf))
        {
            ngx_memcpy(buf, ms.start, ms.len);
            buf[ms.len] = '\0';

            gw->ws.retry_after = ngx_min((ngx_msec_t) ngx_max(
                                          strtod((char *) buf, NULL), 0),
                                      600000);
        }

        ngx_log_error(NGX_LOG_NOTICE, &gw->ws.log, 0,
                      "gateway is shutting down");
        return NGX_OK;
    }

    /* tick, health, presence, agent, ...: only signs of life here */

    return NGX_OK;
}


static ngx_int_t
ngx_http_openclaw_gateway_response_frame(ngx_http_openclaw_gateway_t *gw,
    ngx_http_openclaw_jv_t *frame, ngx_http_openclaw_jv_t *id)
{
    cJSON                    *json;
    ngx_int_t                 rc;
    ngx_uint_t                n;
    ngx_queue_t              *q;
    const uint8_t            *p, *last;
    ngx_http_openclaw_rpc_t  *rpc;

    if (id->type != NGX_HTTP_OPENCLAW_JSON_STRING || id->escaped) {
        return NGX_OK;
    }

    if (gw->info->state == NGX_HTTP_OPENCLAW_LINK_HELLO
        && ngx_http_openclaw_jv_is(id, "connect"))
    {
        /* once per connection: the full tree is worth it here */

        json = cJSON_ParseWithLength((const char *) frame->start, frame->len);
        rc = ngx_http_openclaw_gateway_hello(gw, json);
        cJSON_Delete(json);

        return rc;
    }

    if (id->size < 5 || ngx_strncmp(id->data, "ocb-", 4) != 0) {
        return NGX_OK;
    }

    n = 0;
    last = id->data + id->size;

    for (p = id->data + 4; p < last && *p >= '0' && *p <= '9'; p++) {
        n = n * 10 + (*p - '0');
    }

    if (p != last) {
        return NGX_OK;
    }

    /*
     * Requests are queued in the order of their ids and the gateway
     * answers mostly in that order: the answer is for the oldest request,
     * or one of the next few.
     */

    for (q = ngx_queue_head(&gw->rpcs);
         q != ngx_queue_sentinel(&gw->rpcs);
         q = ngx_queue_next(q))
    {
        rpc = ngx_queue_data(q, ngx_http_openclaw_rpc_t, queue);

        if (rpc->id < n) {
            continue;
        }

        if (rpc->id > n) {
            break;
        }

        ngx_queue_remove(q);
        rpc->id = 0;

        rpc->handler(rpc, frame);

        return NGX_OK;
    }

    /* a response to a forgotten or fire-and-forget request */

    return NGX_OK;
}


/*
 * The connect request.  Its params are a closed schema on both protocol
 * generations, so only fields that 3 and 4 share are sent.  The
 * challenge's nonce and ts go into the device's signature, if any.
 */

static ngx_int_t
ngx_http_openclaw_gateway_send_connect(ngx_http_openclaw_gateway_t *gw,
    ngx_http_openclaw_jv_t *challenge)
{
    char                           *text;
    cJSON                          *req, *params, *client, *scopes, *auth;
    int64_t                         ts;
    ngx_int_t                       rc;
    ngx_http_openclaw_jv_t          nonce, t;
    ngx_http_openclaw_main_conf_t  *omcf;
    u_char                          instance[64], digits[32];

    omcf = gw->conf;

    req = cJSON_CreateObject();
    if (req == NULL) {
        goto failed;
    }

    ngx_sprintf(instance, "nginx-%P-%ui%Z", ngx_pid, (ngx_uint_t) ngx_worker);

    if (cJSON_AddStringToObject(req, "type", "req") == NULL
        || cJSON_AddStringToObject(req, "id", "connect") == NULL
        || cJSON_AddStringToObject(req, "method", "connect") == NULL
        || (params = cJSON_AddObjectToObject(req, "params")) == NULL
        || cJSON_AddNumberToObject(params, "minProtocol", 3) == NULL
        || cJSON_AddNumberToObject(params, "maxProtocol", 4) == NULL
        || (client = cJSON_AddObjectToObject(params, "client")) == NULL
        || cJSON_AddStringToObject(client, "id", "gateway-client") == NULL
        || cJSON_AddStringToObject(client, "displayName", "nginx-openclaw")
           == NULL
        || cJSON_AddStringToObject(client, "version",
                                   NGX_HTTP_OPENCLAW_GW_VERSION) == NULL
        || cJSON_AddStringToObject(client, "platform", "linux") == NULL
        || cJSON_AddStringToObject(client, "mode", "backend") == NULL
        || cJSON_AddStringToObject(client, "instanceId", (char *) instance)
           == NULL
        || cJSON_AddStringToObject(params, "role", "operator") == NULL
        || (scopes = cJSON_AddArrayToObject(params, "scopes")) == NULL
        || cJSON_AddArrayToObject(params, "caps") == NULL
        || (auth = cJSON_AddObjectToObject(params, "auth")) == NULL
        || cJSON_AddStringToObject(params, "userAgent",
                                   "nginx-openclaw-bridge/"
                                   NGX_HTTP_OPENCLAW_GW_VERSION) == NULL)
    {
        goto failed;
    }

    cJSON_AddItemToArray(scopes, cJSON_CreateString("operator.read"));
    cJSON_AddItemToArray(scopes, cJSON_CreateString("operator.write"));

    if (omcf->admin) {
        cJSON_AddItemToArray(scopes, cJSON_CreateString("operator.admin"));
    }

    if (omcf->secret.len) {
        if (cJSON_AddStringToObject(auth, omcf->secret_is_password
                                          ? "password" : "token",
                                    (char *) omcf->secret.data)
            == NULL)
        {
            goto failed;
        }
    }

    ts = 0;

    if (ngx_http_openclaw_jv_get(challenge, "ts", &t) == 0
        && t.type == NGX_HTTP_OPENCLAW_JSON_NUMBER && t.len < sizeof(digits))
    {
        ngx_memcpy(digits, t.start, t.len);
        digits[t.len] = '\0';
        ts = strtoll((char *) digits, NULL, 10);
    }

    if (ngx_http_openclaw_jv_get(challenge, "nonce", &nonce) != 0
        || nonce.type != NGX_HTTP_OPENCLAW_JSON_STRING || nonce.escaped)
    {
        nonce.data = NULL;
        nonce.size = 0;
    }

    if (ngx_http_openclaw_identity_sign(omcf->identity, params,
                                        (u_char *) nonce.data, nonce.size,
                                        ts, &gw->ws.log)
        != NGX_OK)
    {
        goto failed;
    }

    text = cJSON_PrintUnformatted(req);
    cJSON_Delete(req);
    req = NULL;

    if (text == NULL) {
        goto failed;
    }

    /* the frame holds the secret: it is never logged */

    rc = ngx_http_openclaw_wsclient_send(&gw->ws, NGX_HTTP_OPENCLAW_WS_TEXT,
                                         (u_char *) text, ngx_strlen(text),
                                         NULL, 0, NULL, 0);

    ngx_explicit_memzero(text, ngx_strlen(text));
    cJSON_free(text);

    if (rc != NGX_OK) {
        goto failed;
    }

    gw->info->state = NGX_HTTP_OPENCLAW_LINK_HELLO;
    gw->ws.log.action = "authenticating to the OpenClaw gateway";

    return NGX_OK;

failed:

    cJSON_Delete(req);
    ngx_http_openclaw_wsclient_fail(&gw->ws, NGX_LOG_ERR,
                                    "cannot build the connect request");
    return NGX_ERROR;
}


static ngx_int_t
ngx_http_openclaw_gateway_hello(ngx_http_openclaw_gateway_t *gw,
    cJSON *frame)
{
    cJSON       *ok, *payload, *error, *item, *scopes, *policy, *details;
    cJSON       *message, *code;
    ngx_uint_t   write, again, level;

    ok = cJSON_GetObjectItemCaseSensitive(frame, "ok");

    if (!cJSON_IsTrue(ok)) {
        error = cJSON_GetObjectItemCaseSensitive(frame, "error");
        code = cJSON_GetObjectItemCaseSensitive(error, "code");
        message = cJSON_GetObjectItemCaseSensitive(error, "message");
        details = cJSON_GetObjectItemCaseSensitive(error, "details");
        item = cJSON_GetObjectItemCaseSensitive(error, "retryAfterMs");

        if (cJSON_IsNumber(item) && item->valuedouble > 0
            && item->valuedouble < 600000)
        {
            gw->ws.retry_after = (ngx_msec_t) item->valuedouble;
        }

        item = cJSON_GetObjectItemCaseSensitive(details, "code");

        /* pairing, device signature and device token: the identity's */

        level = ngx_http_openclaw_identity_refused(gw->conf->identity, error,
                                                   &gw->ws.log);

        if (level == 0) {
            level = cJSON_IsString(code)
                    && ngx_strcmp(code->valuestring, "UNAVAILABLE") == 0
                    ? NGX_LOG_WARN : NGX_LOG_ERR;
        }

        ngx_http_openclaw_wsclient_fail(&gw->ws, level,
                                "gateway refused connect: %s %s (%s)",
                                cJSON_IsString(code) ? code->valuestring : "",
                                cJSON_IsString(message)
                                ? message->valuestring : "",
                                cJSON_IsString(item) ? item->valuestring
                                                     : "no details");
        return NGX_ERROR;
    }

    payload = cJSON_GetObjectItemCaseSensitive(frame, "payload");
    item = cJSON_GetObjectItemCaseSensitive(payload, "protocol");

    if (!cJSON_IsNumber(item)
        || (item->valueint != 3 && item->valueint != 4))
    {
        ngx_http_openclaw_wsclient_fail(&gw->ws, NGX_LOG_ERR,
                                        "gateway chose an unsupported "
                                        "protocol");
        return NGX_ERROR;
    }

    gw->info->protocol = item->valueint;

    /* a "successful" connect without write scope is useless: say so */

    scopes = cJSON_GetObjectItemCaseSensitive(
                 cJSON_GetObjectItemCaseSensitive(payload, "auth"), "scopes");
    write = 0;

    cJSON_ArrayForEach(item, scopes) {
        if (cJSON_IsString(item)
            && (ngx_strcmp(item->valuestring, "operator.write") == 0
                || ngx_strcmp(item->valuestring, "operator.admin") == 0))
        {
            write = 1;
        }
    }

    if (!write) {
        gw->ws.retry_after = NGX_HTTP_OPENCLAW_WSCLIENT_BACKOFF_MAX;
        ngx_http_openclaw_wsclient_fail(&gw->ws, NGX_LOG_ERR,
                                        "gateway granted no operator.write "
                                        "scope, the link cannot relay "
                                        "messages: a gateway that is not "
                                        "reached over loopback needs a "
                                        "paired device identity");
        return NGX_ERROR;
    }

    ngx_http_openclaw_identity_hello(gw->conf->identity, payload, &gw->ws.log);

    gw->info->tick_interval = NGX_HTTP_OPENCLAW_GW_TICK_DEFAULT;
    gw->info->max_payload = NGX_HTTP_OPENCLAW_GW_PAYLOAD_MAX;

    policy = cJSON_GetObjectItemCaseSensitive(payload, "policy");

    item = cJSON_GetObjectItemCaseSensitive(policy, "tickIntervalMs");
    if (cJSON_IsNumber(item) && item->valuedouble >= 100
        && item->valuedouble <= 3600000)
    {
        gw->info->tick_interval = (ngx_msec_t) item->valuedouble;
    }

    /* any limit is taken: the gateway closes the link on a larger frame */

    item = cJSON_GetObjectItemCaseSensitive(policy, "maxPayload");
    if (cJSON_IsNumber(item) && item->valuedouble >= 1
        && item->valuedouble < NGX_HTTP_OPENCLAW_GW_PAYLOAD_MAX)
    {
        gw->info->max_payload = (size_t) item->valuedouble;
    }

    again = gw->ws.failures;

    ngx_http_openclaw_wsclient_ready(&gw->ws,
                                     NGX_HTTP_OPENCLAW_GW_PAYLOAD_MAX);

    ngx_add_timer(&gw->watchdog, gw->info->tick_interval);

    gw->info->state = NGX_HTTP_OPENCLAW_LINK_READY;
    gw->info->since = ngx_time();

    /* an error of an earlier attempt no longer says anything of the link */

    gw->info->last_error[0] = '\0';
    gw->ws.log.action = "relaying to the OpenClaw gateway";

    ngx_log_error(NGX_LOG_NOTICE, &gw->ws.log, 0,
                  "gateway link up, protocol %ui%s",
                  gw->info->protocol,
                  again ? ", after reconnecting" : "");

    ngx_http_openclaw_gateway_handlers->up(gw->info->protocol);

    return NGX_OK;
}


size_t
ngx_http_openclaw_gateway_max_params(const char *method)
{
    size_t                        envelope;
    ngx_http_openclaw_gateway_t  *gw;

    gw = ngx_http_openclaw_gw;

    if (gw == NULL || gw->info->state != NGX_HTTP_OPENCLAW_LINK_READY) {
        return NGX_MAX_SIZE_T_VALUE;
    }

    /* what ngx_http_openclaw_gateway_call() adds, with the longest id */

    envelope = sizeof("{\"type\":\"req\",\"id\":\"ocb-\",\"method\":\"\","
                      "\"params\":}") - 1
               + NGX_INT_T_LEN + ngx_strlen(method);

    if (gw->info->max_payload <= envelope) {
        return 0;
    }

    return gw->info->max_payload - envelope;
}


size_t
ngx_http_openclaw_gateway_max_payload(void)
{
    if (ngx_http_openclaw_gw == NULL) {
        return 0;
    }

    return ngx_http_openclaw_gw->info->max_payload;
}


ngx_int_t
ngx_http_openclaw_gateway_call(ngx_http_openclaw_rpc_t *rpc,
    const char *method, u_char *params, size_t len)
{
    u_char                       *p, *d;
    size_t                        n;
    ngx_uint_t                    id, v;
    ngx_http_openclaw_gateway_t  *gw;
    u_char                        prefix[160], digits[NGX_INT_T_LEN];

    gw = ngx_http_openclaw_gw;

    if (gw == NULL || gw->info->state != NGX_HTTP_OPENCLAW_LINK_READY) {
        return NGX_DECLINED;
    }

    id = ++gw->next_id;

    /* once per message: by hand, not through ngx_snprintf() */

    d = digits + sizeof(digits);
    v = id;

    do {
        *--d = (u_char) ('0' + v % 10);
        v /= 10;
    } while (v);

    /* the methods are this module's own names: a few words long */

    n = ngx_strlen(method);

    if (n > 64) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(prefix, "{\"type\":\"req\",\"id\":\"ocb-",
                   sizeof("{\"type\":\"req\",\"id\":\"ocb-") - 1);
    p = ngx_cpymem(p, d, digits + sizeof(digits) - d);
    p = ngx_cpymem(p, "\",\"method\":\"", sizeof("\",\"method\":\"") - 1);
    p = ngx_cpymem(p, method, n);
    p = ngx_cpymem(p, "\",\"params\":", sizeof("\",\"params\":") - 1);

    if (ngx_http_openclaw_wsclient_send(&gw->ws, NGX_HTTP_OPENCLAW_WS_TEXT,
                                        params, len, prefix, p - prefix,
                                        (u_char *) "}", 1)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (rpc) {
        rpc->id = id;
        ngx_queue_insert_tail(&gw->rpcs, &rpc->queue);
    }

    return NGX_OK;
}


void
ngx_http_openclaw_gateway_cancel(ngx_http_openclaw_rpc_t *rpc)
{
    if (rpc->id) {
        ngx_queue_remove(&rpc->queue);
    }

    rpc->id = 0;
}


size_t
ngx_http_openclaw_gateway_queued(void)
{
    ngx_http_openclaw_gateway_t  *gw;

    gw = ngx_http_openclaw_gw;

    if (gw == NULL) {
        return 0;
    }

    return gw->ws.out_last - gw->ws.out_pos;
}


/*
 * Queues one masked frame: "prefix", "data" and "suffix" make up its
 * payload, so that a request envelope never needs a copy of its params.
 * Opcode 0 queues raw bytes (the HTTP upgrade request).
 */
static void
ngx_http_openclaw_gateway_watchdog(ngx_event_t *ev)
{
    ngx_msec_t                    silent;
    ngx_http_openclaw_gateway_t  *gw;

    gw = ev->data;

    if (gw->info->state != NGX_HTTP_OPENCLAW_LINK_READY) {
        return;
    }

    silent = ngx_current_msec - gw->ws.last_rx;

    if (silent > 2 * gw->info->tick_interval) {
        ngx_http_openclaw_wsclient_fail(&gw->ws, NGX_LOG_WARN,
                                        "gateway silent for %M ms, over two "
                                        "tick intervals", silent);
        return;
    }

    ngx_add_timer(&gw->watchdog, gw->info->tick_interval);
}


static void
ngx_http_openclaw_gateway_drop_rpcs(ngx_http_openclaw_gateway_t *gw)
{
    ngx_queue_t              *q;
    ngx_http_openclaw_rpc_t  *rpc;

    while (!ngx_queue_empty(&gw->rpcs)) {
        q = ngx_queue_head(&gw->rpcs);
        rpc = ngx_queue_data(q, ngx_http_openclaw_rpc_t, queue);

        ngx_queue_remove(q);
        rpc->id = 0;

        rpc->handler(rpc, NULL);
    }
}
