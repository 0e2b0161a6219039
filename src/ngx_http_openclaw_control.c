
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * Session control: the seed's session.list/get/reset/delete, answered in
 * the shapes existing clients parse ({type, data}, errors in data.error),
 * from the zone's records merged with the gateway's own sessions, so that
 * a reset or a delete acts on what the agent really remembers.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <cjson/cJSON.h>

#include "ngx_http_openclaw_control.h"
#include "ngx_http_openclaw_gateway.h"
#include "ngx_http_openclaw_sessions.h"
#include "ngx_http_openclaw_reply.h"


#define NGX_HTTP_OPENCLAW_LIST_PAGES  20


typedef struct {
    ngx_queue_t                     queue;
    ngx_http_openclaw_rpc_t         rpc;
    ngx_event_t                     timer;
    ngx_pool_t                     *pool;
    ngx_http_openclaw_endpoint_t       *ep;
    ngx_http_openclaw_msg_type_e    type;
    const char                     *name;

    ngx_str_t                       key;
    ngx_str_t                       id;

    ngx_http_openclaw_session_t     record;
    ngx_array_t                     records;

    cJSON                          *rows;
    ngx_uint_t                      pages;

    unsigned                        in_zone:1;
    unsigned                        found:1;
} ngx_http_openclaw_control_t;


static ngx_int_t ngx_http_openclaw_control_fetch(
    ngx_http_openclaw_control_t *ctl, double offset);
static void ngx_http_openclaw_control_page(ngx_http_openclaw_rpc_t *rpc,
    ngx_http_openclaw_jv_t *frame);
static ngx_uint_t ngx_http_openclaw_control_wanted(
    ngx_http_openclaw_control_t *ctl, ngx_str_t *key);
static void ngx_http_openclaw_control_decide(
    ngx_http_openclaw_control_t *ctl, ngx_uint_t gateway);
static void ngx_http_openclaw_control_act(ngx_http_openclaw_control_t *ctl);
static void ngx_http_openclaw_control_acted(ngx_http_openclaw_rpc_t *rpc,
    ngx_http_openclaw_jv_t *frame);
static void ngx_http_openclaw_control_timeout(ngx_event_t *ev);
static cJSON *ngx_http_openclaw_control_row(ngx_str_t *key,
    ngx_http_openclaw_session_t *s, cJSON *gw);
static cJSON *ngx_http_openclaw_control_find(cJSON *rows, ngx_str_t *key);
static void ngx_http_openclaw_control_reply(ngx_http_openclaw_control_t *ctl,
    cJSON *data);
static void ngx_http_openclaw_control_error(ngx_http_openclaw_control_t *ctl,
    const char *fmt, ...);
static ngx_int_t ngx_http_openclaw_control_send(
    ngx_http_openclaw_endpoint_t *ep, const char *name, cJSON *data,
    const char *error, ngx_str_t *id);
static void ngx_http_openclaw_control_free(ngx_http_openclaw_control_t *ctl);


static const char  *ngx_http_openclaw_control_names[] = {
    "", "", "session.list", "session.get", "session.reset", "session.delete"
};


ngx_int_t
ngx_http_openclaw_control(ngx_http_openclaw_endpoint_t *ep,
    ngx_http_openclaw_inbound_t *in)
{
    u_char                         *p;
    ngx_int_t                       rc;
    ngx_str_t                       key;
    ngx_pool_t                     *pool;
    const char                     *name, *err;
    ngx_http_openclaw_control_t    *ctl;
    ngx_http_openclaw_loc_conf_t   *conf;
    u_char                          buf[NGX_HTTP_OPENCLAW_SESSION_MAX];

    conf = ep->conf;
    name = ngx_http_openclaw_control_names[in->type];

    if (conf->control == NGX_HTTP_OPENCLAW_CONTROL_OFF) {
        return ngx_http_openclaw_control_send(ep, name, NULL,
                                   "session control is disabled on this "
                                   "location", &in->id_json);
    }

    if (conf->control == NGX_HTTP_OPENCLAW_CONTROL_OWN && conf->zone == NULL)
    {
        return ngx_http_openclaw_control_send(ep, name, NULL,
                                   "session control with the \"own\" "
                                   "permission needs "
                                   "openclaw_bridge_session_zone",
                                   &in->id_json);
    }

    ngx_str_set(&key, "");

    if (in->type != NGX_HTTP_OPENCLAW_MSG_SESSION_LIST) {

        if (in->key.len == 0) {
            return ngx_http_openclaw_control_send(ep, name, NULL,
                                                  "missing field \"key\"",
                                                  &in->id_json);
        }

        if (ngx_http_openclaw_message_key(&ep->scope, &in->key, buf, &key,
                                          &err)
            != NGX_OK)
        {
            return ngx_http_openclaw_control_send(ep, name, NULL, err,
                                                  &in->id_json);
        }
    }

    pool = ngx_create_pool(2048, ep->log);
    if (pool == NULL) {
        return NGX_ERROR;
    }

    ctl = ngx_pcalloc(pool, sizeof(ngx_http_openclaw_control_t));
    if (ctl == NULL) {
        ngx_destroy_pool(pool);
        return NGX_ERROR;
    }

    ctl->pool = pool;
    ctl->ep = ep;
    ctl->type = in->type;
    ctl->name = name;

    p = ngx_pnalloc(pool, key.len + in->id_json.len + 2);
    if (p == NULL) {
        ngx_destroy_pool(pool);
        return NGX_ERROR;
    }

    ctl->key.data = p;
    ctl->key.len = key.len;
    p = ngx_cpymem(p, key.data, key.len);
    *p++ = '\0';

    ctl->id.data = p;
    ctl->id.len = in->id_json.len;
    p = ngx_cpymem(p, in->id_json.data, in->id_json.len);
    *p = '\0';

    ctl->rpc.data = ctl;
    ctl->rpc.handler = ngx_http_openclaw_control_page;

    ctl->timer.handler = ngx_http_openclaw_control_timeout;
    ctl->timer.data = ctl;
    ctl->timer.log = ep->log;
    ctl->timer.cancelable = 1;

    ngx_queue_insert_tail(&ep->controls, &ctl->queue);

    /* what the zone knows; "own" sees only its sender's sessions */

    if (ngx_array_init(&ctl->records, pool, 8,
                       sizeof(ngx_http_openclaw_session_t))
        != NGX_OK)
    {
        ngx_http_openclaw_control_free(ctl);
        return NGX_ERROR;
    }

    if (conf->zone) {

        if (ctl->type == NGX_HTTP_OPENCLAW_MSG_SESSION_LIST) {
            rc = ngx_http_openclaw_sessions_list(conf->zone,
                                 &ep->scope.agent, &ep->scope.uid,
                                 conf->control == NGX_HTTP_OPENCLAW_CONTROL_OWN
                                 ? &ep->sender : NULL,
                                 pool, &ctl->records);

        } else {
            rc = ngx_http_openclaw_sessions_get(conf->zone, &ctl->key, pool,
                                                &ctl->record);

            if (rc == NGX_OK) {
                ctl->in_zone =
                    ctl->record.uid.len == ep->scope.uid.len
                    && ngx_strncmp(ctl->record.uid.data, ep->scope.uid.data,
                                   ep->scope.uid.len) == 0
                    && (conf->control != NGX_HTTP_OPENCLAW_CONTROL_OWN
                        || (ctl->record.sender.len == ep->sender.len
                            && ngx_strncmp(ctl->record.sender.data,
                                           ep->sender.data,
                                           ep->sender.len) == 0));

                rc = NGX_OK;

            } else if (rc == NGX_DECLINED) {
                rc = NGX_OK;
            }
        }

        if (rc != NGX_OK) {
            ngx_http_openclaw_control_free(ctl);
            return NGX_ERROR;
        }

        if (conf->control == NGX_HTTP_OPENCLAW_CONTROL_OWN
            && ctl->type != NGX_HTTP_OPENCLAW_MSG_SESSION_LIST
            && !ctl->in_zone)
        {
            ngx_http_openclaw_control_error(ctl, "Session not found");
            return NGX_OK;
        }
    }

    if (ngx_http_openclaw_control_fetch(ctl, 0) == NGX_DECLINED) {
        ngx_http_openclaw_control_decide(ctl, 0);
    }

    return NGX_OK;
}


/* one page of the gateway's sessions.list; NGX_DECLINED: no link */

static ngx_int_t
ngx_http_openclaw_control_fetch(ngx_http_openclaw_control_t *ctl,
    double offset)
{
    u_char                         *p;
    ngx_int_t                       rc;
    ngx_http_openclaw_main_conf_t  *omcf;
    u_char                          params[64];

    p = offset > 0 ? ngx_sprintf(params, "{\"limit\":100,\"offset\":%ui}",
                                 (ngx_uint_t) offset)
                   : ngx_sprintf(params, "{\"limit\":100}");

    rc = ngx_http_openclaw_gateway_call(&ctl->rpc, "sessions.list", params,
                                        p - params);

    if (rc != NGX_OK) {
        return NGX_DECLINED;
    }

    omcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                            ngx_http_openclaw_bridge_module);

    ngx_add_timer(&ctl->timer, omcf->request_timeout);

    return NGX_OK;
}


static void
ngx_http_openclaw_control_page(ngx_http_openclaw_rpc_t *rpc,
    ngx_http_openclaw_jv_t *frame)
{
    cJSON                        *res, *ok, *payload, *sessions, *row, *key;
    cJSON                        *more, *next, *error, *message;
    ngx_str_t                     k;
    ngx_http_openclaw_control_t  *ctl;

    ctl = rpc->data;

    if (ctl->timer.timer_set) {
        ngx_del_timer(&ctl->timer);
    }

    if (frame == NULL) {
        ngx_http_openclaw_control_decide(ctl, 0);
        return;
    }

    /* control is rare: a tree is simpler than the scanner here */

    res = cJSON_ParseWithLength((const char *) frame->start, frame->len);

    if (res == NULL) {
        ngx_http_openclaw_control_error(ctl, "out of memory");
        return;
    }

    ok = cJSON_GetObjectItemCaseSensitive(res, "ok");

    if (!cJSON_IsTrue(ok)) {
        error = cJSON_GetObjectItemCaseSensitive(res, "error");
        message = cJSON_GetObjectItemCaseSensitive(error, "message");

        ngx_http_openclaw_control_error(ctl, "gateway refused sessions.list: "
                                        "%s", cJSON_IsString(message)
                                              ? message->valuestring
                                              : "no reason given");
        cJSON_Delete(res);
        return;
    }

    payload = cJSON_GetObjectItemCaseSensitive(res, "payload");
    sessions = cJSON_GetObjectItemCaseSensitive(payload, "sessions");

    if (ctl->rows == NULL) {
        ctl->rows = cJSON_CreateArray();

        if (ctl->rows == NULL) {
            ngx_http_openclaw_control_error(ctl, "out of memory");
            cJSON_Delete(res);
            return;
        }
    }

    cJSON_ArrayForEach(row, sessions) {
        key = cJSON_GetObjectItemCaseSensitive(row, "key");

        if (!cJSON_IsString(key)) {
            continue;
        }

        k.data = (u_char *) key->valuestring;
        k.len = ngx_strlen(key->valuestring);

        if (!ngx_http_openclaw_control_wanted(ctl, &k)) {
            continue;
        }

        if (ctl->type != NGX_HTTP_OPENCLAW_MSG_SESSION_LIST) {
            ctl->found = 1;
        }

        cJSON_AddItemToArray(ctl->rows, cJSON_Duplicate(row, 1));
    }

    more = cJSON_GetObjectItemCaseSensitive(payload, "hasMore");
    next = cJSON_GetObjectItemCaseSensitive(payload, "nextOffset");

    if (cJSON_IsTrue(more) && cJSON_IsNumber(next) && next->valuedouble > 0
        && ++ctl->pages < NGX_HTTP_OPENCLAW_LIST_PAGES && !ctl->found
        && ngx_http_openclaw_control_fetch(ctl, next->valuedouble) == NGX_OK)
    {
        cJSON_Delete(res);
        return;
    }

    cJSON_Delete(res);

    ngx_http_openclaw_control_decide(ctl, 1);
}


/*
 * A gateway row belongs in the answer when the zone knows its session
 * for this client, or, with the "all" permission, when it lies in the
 * location's namespace (agent:<agent>:webhook[:uid:<uid>]:...).
 */

static ngx_uint_t
ngx_http_openclaw_control_wanted(ngx_http_openclaw_control_t *ctl,
    ngx_str_t *key)
{
    ngx_uint_t                    i;
    ngx_str_t                    *prefix;
    ngx_http_openclaw_session_t  *s;

    if (ctl->type != NGX_HTTP_OPENCLAW_MSG_SESSION_LIST) {
        return key->len == ctl->key.len
               && ngx_strncmp(key->data, ctl->key.data, key->len) == 0;
    }

    s = ctl->records.elts;

    for (i = 0; i < ctl->records.nelts; i++) {
        if (s[i].key.len == key->len
            && ngx_strncmp(s[i].key.data, key->data, key->len) == 0)
        {
            return 1;
        }
    }

    if (ctl->ep->conf->control != NGX_HTTP_OPENCLAW_CONTROL_ALL) {
        return 0;
    }

    prefix = &ctl->ep->scope.prefix;

    if (key->len <= prefix->len + 1
        || ngx_strncmp(key->data, prefix->data, prefix->len) != 0
        || key->data[prefix->len] != ':')
    {
        return 0;
    }

    /* without a uid, the uid-routed part of the namespace is not ours */

    return ctl->ep->scope.uid.len
           || key->len < prefix->len + sizeof(":uid:") - 1
           || ngx_strncmp(key->data + prefix->len, ":uid:",
                          sizeof(":uid:") - 1) != 0;
}


/* all is known that can be: answer, or act; "gateway": rows are valid */

static void
ngx_http_openclaw_control_decide(ngx_http_openclaw_control_t *ctl,
    ngx_uint_t gateway)
{
    cJSON                        *data, *list, *row;
    ngx_str_t                     k;
    ngx_uint_t                    i, n;
    ngx_http_openclaw_session_t  *s;

    switch (ctl->type) {

    case NGX_HTTP_OPENCLAW_MSG_SESSION_LIST:

        data = cJSON_CreateObject();
        list = cJSON_AddArrayToObject(data, "sessions");
        n = 0;

        s = ctl->records.elts;

        for (i = 0; i < ctl->records.nelts; i++) {
            row = ngx_http_openclaw_control_row(&s[i].key, &s[i],
                      ngx_http_openclaw_control_find(ctl->rows, &s[i].key));
            cJSON_AddItemToArray(list, row);
            n++;
        }

        /* the gateway's sessions in our namespace that the zone lost */

        cJSON_ArrayForEach(row, ctl->rows) {
            k.data = (u_char *) cJSON_GetObjectItemCaseSensitive(row, "key")
                                    ->valuestring;
            k.len = ngx_strlen(k.data);

            for (i = 0; i < ctl->records.nelts; i++) {
                if (s[i].key.len == k.len
                    && ngx_strncmp(s[i].key.data, k.data, k.len) == 0)
                {
                    break;
                }
            }

            if (i == ctl->records.nelts) {
                cJSON_AddItemToArray(list,
                    ngx_http_openclaw_control_row(&k, NULL, row));
                n++;
            }
        }

        cJSON_AddNumberToObject(data, "count", n);

        ngx_http_openclaw_control_reply(ctl, data);
        return;

    case NGX_HTTP_OPENCLAW_MSG_SESSION_GET:

        if (!ctl->found && !ctl->in_zone) {
            ngx_http_openclaw_control_error(ctl, gateway
                                            ? "Session not found"
                                            : "gateway not connected");
            return;
        }

        ngx_http_openclaw_control_reply(ctl,
            ngx_http_openclaw_control_row(&ctl->key,
                      ctl->in_zone ? &ctl->record : NULL,
                      ngx_http_openclaw_control_find(ctl->rows, &ctl->key)));
        return;

    default: /* reset, delete */

        if (!gateway) {
            ngx_http_openclaw_control_error(ctl, "gateway not connected");
            return;
        }

        if (!ctl->found && !ctl->in_zone) {
            ngx_http_openclaw_control_error(ctl, "Session not found");
            return;
        }

        if (ctl->type == NGX_HTTP_OPENCLAW_MSG_SESSION_DELETE && !ctl->found)
        {
            /* the agent never had it: only the zone's record goes */

            ngx_http_openclaw_sessions_delete(ctl->ep->conf->zone,
                                              &ctl->key);
            data = cJSON_CreateObject();
            cJSON_AddBoolToObject(data, "success", 1);
            cJSON_AddStringToObject(data, "key", (char *) ctl->key.data);
            ngx_http_openclaw_control_reply(ctl, data);
            return;
        }

        ngx_http_openclaw_control_act(ctl);
        return;
    }
}


/*
 * sessions.reset on an unknown key would create the session: the key was
 * checked above.  Both calls need operator.admin on the gateway.
 */

static void
ngx_http_openclaw_control_act(ngx_http_openclaw_control_t *ctl)
{
    char                           *text;
    cJSON                          *params;
    ngx_int_t                       rc;
    ngx_http_openclaw_main_conf_t  *omcf;

    params = cJSON_CreateObject();

    if (params == NULL
        || cJSON_AddStringToObject(params, "key", (char *) ctl->key.data)
           == NULL)
    {
        cJSON_Delete(params);
        ngx_http_openclaw_control_error(ctl, "out of memory");
        return;
    }

    if (ctl->type == NGX_HTTP_OPENCLAW_MSG_SESSION_DELETE) {
        cJSON_AddBoolToObject(params, "deleteTranscript", 1);
    }

    text = cJSON_PrintUnformatted(params);
    cJSON_Delete(params);

    if (text == NULL) {
        ngx_http_openclaw_control_error(ctl, "out of memory");
        return;
    }

    ctl->rpc.handler = ngx_http_openclaw_control_acted;

    rc = ngx_http_openclaw_gateway_call(&ctl->rpc,
                                  ctl->type
                                  == NGX_HTTP_OPENCLAW_MSG_SESSION_RESET
                                  ? "sessions.reset" : "sessions.delete",
                                  (u_char *) text, ngx_strlen(text));
    cJSON_free(text);

    if (rc != NGX_OK) {
        ngx_http_openclaw_control_error(ctl, "gateway not connected");
        return;
    }

    omcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                            ngx_http_openclaw_bridge_module);

    ngx_add_timer(&ctl->timer, omcf->request_timeout);
}


static void
ngx_http_openclaw_control_acted(ngx_http_openclaw_rpc_t *rpc,
    ngx_http_openclaw_jv_t *frame)
{
    cJSON                        *res, *ok, *error, *message, *details, *code;
    cJSON                        *data;
    ngx_http_openclaw_control_t  *ctl;

    ctl = rpc->data;

    if (ctl->timer.timer_set) {
        ngx_del_timer(&ctl->timer);
    }

    if (frame == NULL) {
        ngx_http_openclaw_control_error(ctl, "gateway link lost before it "
                                        "answered");
        return;
    }

    res = cJSON_ParseWithLength((const char *) frame->start, frame->len);
    ok = cJSON_GetObjectItemCaseSensitive(res, "ok");

    if (!cJSON_IsTrue(ok)) {
        error = cJSON_GetObjectItemCaseSensitive(res, "error");
        message = cJSON_GetObjectItemCaseSensitive(error, "message");
        details = cJSON_GetObjectItemCaseSensitive(error, "details");
        code = cJSON_GetObjectItemCaseSensitive(details, "code");

        ngx_http_openclaw_control_error(ctl, "gateway refused %s: %s%s",
                     ctl->name,
                     cJSON_IsString(message) ? message->valuestring
                                             : "no reason given",
                     (cJSON_IsString(message)
                      && ngx_strstr(message->valuestring, "scope"))
                     || (cJSON_IsString(code)
                         && ngx_strcmp(code->valuestring, "MISSING_SCOPE")
                            == 0)
                     ? " (\"openclaw_gateway_admin on\" requests the scope)"
                     : "");
        cJSON_Delete(res);
        return;
    }

    cJSON_Delete(res);

    if (ctl->type == NGX_HTTP_OPENCLAW_MSG_SESSION_DELETE
        && ctl->ep->conf->zone)
    {
        ngx_http_openclaw_sessions_delete(ctl->ep->conf->zone,
                                          &ctl->key);
    }

    data = cJSON_CreateObject();
    cJSON_AddBoolToObject(data, "success", 1);
    cJSON_AddStringToObject(data, "key", (char *) ctl->key.data);

    ngx_http_openclaw_control_reply(ctl, data);
}


static void
ngx_http_openclaw_control_timeout(ngx_event_t *ev)
{
    ngx_http_openclaw_control_t  *ctl;

    ctl = ev->data;

    ngx_http_openclaw_control_error(ctl, "gateway did not answer in time");
}


/* the zone's facts and the gateway's, in one row */

static cJSON *
ngx_http_openclaw_control_row(ngx_str_t *key, ngx_http_openclaw_session_t *s,
    cJSON *gw)
{
    cJSON       *row, *item;
    ngx_uint_t   i;
    u_char       buf[NGX_HTTP_OPENCLAW_SESSION_MAX + 1];

    static const char  *fields[] = {
        "sessionId", "updatedAt", "label", "kind", "chatType", "model",
        "modelProvider", "totalTokens", "hasActiveRun", NULL
    };

    row = cJSON_CreateObject();
    if (row == NULL) {
        return NULL;
    }

    ngx_cpystrn(buf, key->data, ngx_min(key->len + 1, sizeof(buf)));
    cJSON_AddStringToObject(row, "key", (char *) buf);

    for (i = 0; gw && fields[i]; i++) {
        item = cJSON_GetObjectItemCaseSensitive(gw, fields[i]);

        if (item) {
            cJSON_AddItemToObject(row, fields[i], cJSON_Duplicate(item, 1));
        }
    }

    if (s == NULL) {
        return row;
    }

    if (gw == NULL || !cJSON_GetObjectItemCaseSensitive(gw, "updatedAt")) {
        cJSON_AddNumberToObject(row, "updatedAt", (double) s->active * 1000);
    }

    ngx_cpystrn(buf, s->agent.data, s->agent.len + 1);
    cJSON_AddStringToObject(row, "agentId", (char *) buf);

    if (s->uid.len) {
        ngx_cpystrn(buf, s->uid.data, s->uid.len + 1);
        cJSON_AddStringToObject(row, "uid", (char *) buf);
    }

    cJSON_AddNumberToObject(row, "createdAt", (double) s->created * 1000);
    cJSON_AddNumberToObject(row, "lastActiveAt", (double) s->active * 1000);
    cJSON_AddNumberToObject(row, "messagesIn", s->messages_in);
    cJSON_AddNumberToObject(row, "messagesOut", s->messages_out);
    cJSON_AddNumberToObject(row, "inFlight", s->in_flight);

    if (s->error.len) {
        ngx_cpystrn(buf, s->error.data, s->error.len + 1);
        cJSON_AddStringToObject(row, "lastError", (char *) buf);
    }

    return row;
}


static cJSON *
ngx_http_openclaw_control_find(cJSON *rows, ngx_str_t *key)
{
    cJSON  *row, *k;

    cJSON_ArrayForEach(row, rows) {
        k = cJSON_GetObjectItemCaseSensitive(row, "key");

        if (cJSON_IsString(k) && ngx_strlen(k->valuestring) == key->len
            && ngx_strncmp(k->valuestring, key->data, key->len) == 0)
        {
            return row;
        }
    }

    return NULL;
}


static void
ngx_http_openclaw_control_reply(ngx_http_openclaw_control_t *ctl,
    cJSON *data)
{
    if (data == NULL) {
        ngx_http_openclaw_control_error(ctl, "out of memory");
        return;
    }

    (void) ngx_http_openclaw_control_send(ctl->ep, ctl->name, data,
                                          NULL, &ctl->id);

    ngx_http_openclaw_control_free(ctl);
}


static void
ngx_http_openclaw_control_error(ngx_http_openclaw_control_t *ctl,
    const char *fmt, ...)
{
    u_char   *p;
    va_list   args;
    u_char    buf[256];

    va_start(args, fmt);
    p = ngx_vslprintf(buf, buf + sizeof(buf) - 1, fmt, args);
    va_end(args);

    *p = '\0';

    (void) ngx_http_openclaw_control_send(ctl->ep, ctl->name, NULL,
                                          (char *) buf, &ctl->id);

    ngx_http_openclaw_control_free(ctl);
}


/*
 * {"type":name,"data":data,"id":id}, or for an error the Go bridge's
 * data.error and a top-level "error" as the other replies have it.
 */

static ngx_int_t
ngx_http_openclaw_control_send(ngx_http_openclaw_endpoint_t *ep,
    const char *name, cJSON *data, const char *error, ngx_str_t *id)
{
    char                       *text;
    ngx_int_t                   rc;
    ngx_str_t                   json, err;
    ngx_http_openclaw_reply_t   rp;

    ngx_http_openclaw_relay_count_out();

    ngx_memzero(&rp, sizeof(ngx_http_openclaw_reply_t));

    rp.type = name;
    rp.id = id;

    if (error) {
        cJSON_Delete(data);

        data = cJSON_CreateObject();

        if (data == NULL
            || cJSON_AddStringToObject(data, "error", error) == NULL)
        {
            cJSON_Delete(data);
            return NGX_ERROR;
        }

        err.data = (u_char *) error;
        err.len = ngx_strlen(error);
        rp.error = &err;
    }

    text = cJSON_PrintUnformatted(data);
    cJSON_Delete(data);

    if (text == NULL) {
        return NGX_ERROR;
    }

    json.data = (u_char *) text;
    json.len = ngx_strlen(text);
    rp.data = &json;

    rc = ngx_http_openclaw_reply(ep, &rp);

    cJSON_free(text);

    return rc;
}


static void
ngx_http_openclaw_control_free(ngx_http_openclaw_control_t *ctl)
{
    ngx_queue_remove(&ctl->queue);

    ngx_http_openclaw_gateway_cancel(&ctl->rpc);

    if (ctl->timer.timer_set) {
        ngx_del_timer(&ctl->timer);
    }

    cJSON_Delete(ctl->rows);

    ngx_destroy_pool(ctl->pool);
}


void
ngx_http_openclaw_control_closing(ngx_http_openclaw_endpoint_t *ep,
    const char *reason)
{
    ngx_queue_t                  *q;
    ngx_http_openclaw_control_t  *ctl;

    while (!ngx_queue_empty(&ep->controls)) {
        q = ngx_queue_head(&ep->controls);
        ctl = ngx_queue_data(q, ngx_http_openclaw_control_t, queue);

        ngx_http_openclaw_control_error(ctl, "connection closing (%s)",
                                        reason);
    }
}


void
ngx_http_openclaw_control_gone(ngx_http_openclaw_endpoint_t *ep)
{
    ngx_queue_t                  *q;
    ngx_http_openclaw_control_t  *ctl;

    while (!ngx_queue_empty(&ep->controls)) {
        q = ngx_queue_head(&ep->controls);
        ctl = ngx_queue_data(q, ngx_http_openclaw_control_t, queue);

        /* it ended, unanswered: nobody is left to answer */

        ngx_http_openclaw_relay_count_out();
        ngx_http_openclaw_control_free(ctl);
    }
}
