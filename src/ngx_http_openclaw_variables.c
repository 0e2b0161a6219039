
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * Variables that say what happened on a WebSocket connection, or to the
 * message of an HTTP webhook request, for log_format and map.  An
 * upgraded connection is logged when it ends, so that its access log line
 * has them all; before the upgrade, and outside the module's locations,
 * they are not found ("-" in the log).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_openclaw_variables.h"
#include "ngx_http_openclaw_client.h"
#include "ngx_http_openclaw_endpoint.h"
#include "ngx_http_openclaw_http.h"


typedef enum {
    NGX_HTTP_OPENCLAW_VAR_SESSION = 0,
    NGX_HTTP_OPENCLAW_VAR_AGENT,
    NGX_HTTP_OPENCLAW_VAR_UID,
    NGX_HTTP_OPENCLAW_VAR_SENDER,
    NGX_HTTP_OPENCLAW_VAR_MESSAGES_IN,
    NGX_HTTP_OPENCLAW_VAR_MESSAGES_OUT,
    NGX_HTTP_OPENCLAW_VAR_ERRORS
} ngx_http_openclaw_var_e;


static ngx_int_t ngx_http_openclaw_endpoint_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_openclaw_close_code_variable(
    ngx_http_request_t *r, ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_openclaw_close_reason_variable(
    ngx_http_request_t *r, ngx_http_variable_value_t *v, uintptr_t data);
static ngx_http_openclaw_client_t *ngx_http_openclaw_variable_client(
    ngx_http_request_t *r);
static ngx_int_t ngx_http_openclaw_variable_number(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, ngx_uint_t n);
static void ngx_http_openclaw_variable_str(ngx_http_variable_value_t *v,
    u_char *data, size_t len);


/* their values change while the connection lives: never cached */

static ngx_http_variable_t  ngx_http_openclaw_variables[] = {

    { ngx_string("openclaw_session"), NULL,
      ngx_http_openclaw_endpoint_variable, NGX_HTTP_OPENCLAW_VAR_SESSION,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    /*
     * Earlier configuration examples routed uids to agents with a map into
     * $openclaw_agent: such a map still loads, and then is the variable.
     */

    { ngx_string("openclaw_agent"), NULL,
      ngx_http_openclaw_endpoint_variable, NGX_HTTP_OPENCLAW_VAR_AGENT,
      NGX_HTTP_VAR_CHANGEABLE|NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("openclaw_uid"), NULL,
      ngx_http_openclaw_endpoint_variable, NGX_HTTP_OPENCLAW_VAR_UID,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("openclaw_sender"), NULL,
      ngx_http_openclaw_endpoint_variable, NGX_HTTP_OPENCLAW_VAR_SENDER,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("openclaw_messages_in"), NULL,
      ngx_http_openclaw_endpoint_variable, NGX_HTTP_OPENCLAW_VAR_MESSAGES_IN,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("openclaw_messages_out"), NULL,
      ngx_http_openclaw_endpoint_variable, NGX_HTTP_OPENCLAW_VAR_MESSAGES_OUT,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("openclaw_errors"), NULL,
      ngx_http_openclaw_endpoint_variable, NGX_HTTP_OPENCLAW_VAR_ERRORS,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("openclaw_close_code"), NULL,
      ngx_http_openclaw_close_code_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("openclaw_close_reason"), NULL,
      ngx_http_openclaw_close_reason_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


ngx_int_t
ngx_http_openclaw_variables_add(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_openclaw_variables; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_openclaw_endpoint_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t                     *s;
    ngx_http_openclaw_client_t    *cl;
    ngx_http_openclaw_endpoint_t  *ep;

    cl = ngx_http_openclaw_variable_client(r);

    if (cl == NULL) {
        ep = ngx_http_openclaw_http_endpoint(r->main);

    /* an echo location's client, or one refused before it got one */

    } else if (cl->conf->mode != NGX_HTTP_OPENCLAW_MODE_BRIDGE) {
        ep = NULL;

    } else {
        ep = cl->data;
    }

    if (ep == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    switch (data) {

    case NGX_HTTP_OPENCLAW_VAR_MESSAGES_IN:
        return ngx_http_openclaw_variable_number(r, v, ep->messages_in);

    case NGX_HTTP_OPENCLAW_VAR_MESSAGES_OUT:
        return ngx_http_openclaw_variable_number(r, v, ep->messages_out);

    case NGX_HTTP_OPENCLAW_VAR_ERRORS:
        return ngx_http_openclaw_variable_number(r, v, ep->errors);

    case NGX_HTTP_OPENCLAW_VAR_SESSION:
        s = &ep->session;
        break;

    case NGX_HTTP_OPENCLAW_VAR_AGENT:
        s = &ep->scope.agent;
        break;

    case NGX_HTTP_OPENCLAW_VAR_UID:
        s = &ep->scope.uid;
        break;

    default: /* NGX_HTTP_OPENCLAW_VAR_SENDER */
        s = &ep->sender;
        break;
    }

    /* no session yet, or no uid: nothing to say */

    if (s->len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    ngx_http_openclaw_variable_str(v, s->data, s->len);

    return NGX_OK;
}


/* a connection that ended without a close frame ended abnormally: 1006 */

static ngx_int_t
ngx_http_openclaw_close_code_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_openclaw_client_t  *cl;

    cl = ngx_http_openclaw_variable_client(r);

    if (cl == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    return ngx_http_openclaw_variable_number(r, v,
                                             cl->close_code ? cl->close_code
                                                            : 1006);
}


static ngx_int_t
ngx_http_openclaw_close_reason_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_openclaw_client_t  *cl;

    cl = ngx_http_openclaw_variable_client(r);

    if (cl == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    ngx_http_openclaw_variable_str(v, cl->close_text,
                                   cl->close_text_len);

    return NGX_OK;
}


/* the WebSocket client of an upgraded request of this module, or NULL */

static ngx_http_openclaw_client_t *
ngx_http_openclaw_variable_client(ngx_http_request_t *r)
{
    ngx_http_openclaw_client_t  *cl;

    cl = ngx_http_get_module_ctx(r->main, ngx_http_openclaw_bridge_module);

    if (cl == NULL || !cl->upgraded) {
        return NULL;
    }

    return cl;
}


static ngx_int_t
ngx_http_openclaw_variable_number(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, ngx_uint_t n)
{
    u_char  *p;

    p = ngx_pnalloc(r->pool, NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_http_openclaw_variable_str(v, p, ngx_sprintf(p, "%ui", n) - p);

    return NGX_OK;
}


static void
ngx_http_openclaw_variable_str(ngx_http_variable_value_t *v, u_char *data,
    size_t len)
{
    v->len = len;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;
    v->data = data;
}
