
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_openclaw_bridge.h"
#include "ngx_http_openclaw_client.h"


static ngx_int_t ngx_http_openclaw_bridge_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_openclaw_echo_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_openclaw_echo_message(
    ngx_http_openclaw_client_t *cl, ngx_uint_t opcode, u_char *data,
    size_t len);
static ngx_int_t ngx_http_openclaw_bridge_message(
    ngx_http_openclaw_client_t *cl, ngx_uint_t opcode, u_char *data,
    size_t len);
static void *ngx_http_openclaw_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_openclaw_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_openclaw_bridge(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_openclaw_allow_origin(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_openclaw_positive_size(ngx_conf_t *cf, void *post,
    void *data);
static char *ngx_http_openclaw_positive_msec(ngx_conf_t *cf, void *post,
    void *data);


static ngx_conf_post_handler_pt  ngx_http_openclaw_positive_size_p =
    ngx_http_openclaw_positive_size;

static ngx_conf_post_handler_pt  ngx_http_openclaw_positive_msec_p =
    ngx_http_openclaw_positive_msec;


static ngx_command_t  ngx_http_openclaw_bridge_commands[] = {

    { ngx_string("openclaw_bridge"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_openclaw_bridge,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("openclaw_bridge_echo"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_openclaw_bridge,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("openclaw_bridge_max_message_size"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_openclaw_loc_conf_t, max_message_size),
      &ngx_http_openclaw_positive_size_p },

    { ngx_string("openclaw_bridge_send_buffer"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_openclaw_loc_conf_t, send_buffer),
      &ngx_http_openclaw_positive_size_p },

    { ngx_string("openclaw_bridge_ping_interval"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_openclaw_loc_conf_t, ping_interval),
      NULL },

    { ngx_string("openclaw_bridge_pong_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_openclaw_loc_conf_t, pong_timeout),
      &ngx_http_openclaw_positive_msec_p },

    { ngx_string("openclaw_bridge_idle_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_openclaw_loc_conf_t, idle_timeout),
      NULL },

    { ngx_string("openclaw_bridge_close_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_openclaw_loc_conf_t, close_timeout),
      &ngx_http_openclaw_positive_msec_p },

    { ngx_string("openclaw_bridge_allow_origin"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_openclaw_allow_origin,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_openclaw_bridge_module_ctx = {
    NULL,                                  /* preconfiguration */
    NULL,                                  /* postconfiguration */

    NULL,                                  /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_openclaw_create_loc_conf,     /* create location configuration */
    ngx_http_openclaw_merge_loc_conf       /* merge location configuration */
};


ngx_module_t  ngx_http_openclaw_bridge_module = {
    NGX_MODULE_V1,
    &ngx_http_openclaw_bridge_module_ctx,  /* module context */
    ngx_http_openclaw_bridge_commands,     /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_int_t
ngx_http_openclaw_bridge_handler(ngx_http_request_t *r)
{
    return ngx_http_openclaw_client_handler(r,
                                            ngx_http_openclaw_bridge_message);
}


static ngx_int_t
ngx_http_openclaw_echo_handler(ngx_http_request_t *r)
{
    return ngx_http_openclaw_client_handler(r,
                                            ngx_http_openclaw_echo_message);
}


/*
 * Diagnostic: every message goes back as it came, through exactly the
 * connection code the bridge uses, for conformance and load tests.
 */

static ngx_int_t
ngx_http_openclaw_echo_message(ngx_http_openclaw_client_t *cl,
    ngx_uint_t opcode, u_char *data, size_t len)
{
    return ngx_http_openclaw_client_send(cl, opcode, data, len);
}


static ngx_int_t
ngx_http_openclaw_bridge_message(ngx_http_openclaw_client_t *cl,
    ngx_uint_t opcode, u_char *data, size_t len)
{
    static u_char  reply[] =
        "{\"type\":\"error\",\"error\":\"gateway relay not available\"}";

    return ngx_http_openclaw_client_send(cl, NGX_HTTP_OPENCLAW_WS_TEXT,
                                         reply, sizeof(reply) - 1);
}


static void *
ngx_http_openclaw_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_openclaw_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_openclaw_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     conf->mode = NGX_HTTP_OPENCLAW_MODE_OFF;
     */

    conf->max_message_size = NGX_CONF_UNSET_SIZE;
    conf->send_buffer = NGX_CONF_UNSET_SIZE;
    conf->ping_interval = NGX_CONF_UNSET_MSEC;
    conf->pong_timeout = NGX_CONF_UNSET_MSEC;
    conf->idle_timeout = NGX_CONF_UNSET_MSEC;
    conf->close_timeout = NGX_CONF_UNSET_MSEC;
    conf->origins = NGX_CONF_UNSET_PTR;

    return conf;
}


static char *
ngx_http_openclaw_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_openclaw_loc_conf_t *prev = parent;
    ngx_http_openclaw_loc_conf_t *conf = child;

    ngx_conf_merge_size_value(conf->max_message_size, prev->max_message_size,
                              1024 * 1024);
    ngx_conf_merge_size_value(conf->send_buffer, prev->send_buffer,
                              1024 * 1024);
    ngx_conf_merge_msec_value(conf->ping_interval, prev->ping_interval,
                              30000);
    ngx_conf_merge_msec_value(conf->pong_timeout, prev->pong_timeout, 10000);
    ngx_conf_merge_msec_value(conf->idle_timeout, prev->idle_timeout, 0);
    ngx_conf_merge_msec_value(conf->close_timeout, prev->close_timeout,
                              5000);
    ngx_conf_merge_ptr_value(conf->origins, prev->origins, NULL);

    return NGX_CONF_OK;
}


static char *
ngx_http_openclaw_bridge(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_openclaw_loc_conf_t *olcf = conf;

    ngx_http_core_loc_conf_t  *clcf;

    if (olcf->mode != NGX_HTTP_OPENCLAW_MODE_OFF) {
        return "is duplicate: a location has either openclaw_bridge or "
               "openclaw_bridge_echo, once";
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (cmd->name.len == sizeof("openclaw_bridge_echo") - 1) {
        olcf->mode = NGX_HTTP_OPENCLAW_MODE_ECHO;
        clcf->handler = ngx_http_openclaw_echo_handler;

    } else {
        olcf->mode = NGX_HTTP_OPENCLAW_MODE_BRIDGE;
        clcf->handler = ngx_http_openclaw_bridge_handler;
    }

    return NGX_CONF_OK;
}


/*
 * Browsers send Origin with every WebSocket handshake and let any page
 * open one, so a list of trusted origins is what stops cross-site
 * WebSocket hijacking; services that send no Origin are not affected.
 */

static char *
ngx_http_openclaw_allow_origin(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_openclaw_loc_conf_t *olcf = conf;

    u_char      *p, *last;
    ngx_str_t   *value, *origin;
    ngx_uint_t   i;

    if (olcf->origins != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    olcf->origins = ngx_array_create(cf->pool, cf->args->nelts - 1,
                                     sizeof(ngx_str_t));
    if (olcf->origins == NULL) {
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {

        p = (u_char *) ngx_strstr(value[i].data, "://");

        if (p == NULL || p == value[i].data) {
            goto invalid;
        }

        last = value[i].data + value[i].len;

        /* an origin is scheme://host[:port]: no path, no trailing slash */

        p += 3;

        if (p == last || ngx_strlchr(p, last, '/') != NULL) {
            goto invalid;
        }

        origin = ngx_array_push(olcf->origins);
        if (origin == NULL) {
            return NGX_CONF_ERROR;
        }

        *origin = value[i];
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid origin \"%V\" in \"%V\": expected "
                       "scheme://host[:port], such as https://example.com",
                       &value[i], &cmd->name);

    return NGX_CONF_ERROR;
}


static char *
ngx_http_openclaw_positive_size(ngx_conf_t *cf, void *post, void *data)
{
    size_t  *sp = data;

    if (*sp == 0) {
        return "must be greater than zero";
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_openclaw_positive_msec(ngx_conf_t *cf, void *post, void *data)
{
    ngx_msec_t  *mp = data;

    if (*mp == 0) {
        return "must be greater than zero";
    }

    return NGX_CONF_OK;
}
