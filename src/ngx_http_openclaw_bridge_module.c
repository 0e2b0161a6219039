
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <cjson/cJSON.h>

#include "ngx_http_openclaw_bridge.h"
#include "ngx_http_openclaw_client.h"
#include "ngx_http_openclaw_gateway.h"
#include "ngx_http_openclaw_wsclient.h"
#include "ngx_http_openclaw_identity.h"
#include "ngx_http_openclaw_relay.h"
#include "ngx_http_openclaw_inbound.h"
#include "ngx_http_openclaw_hub.h"
#include "ngx_http_openclaw_sessions.h"
#include "ngx_http_openclaw_status.h"
#include "ngx_http_openclaw_metrics.h"
#include "ngx_http_openclaw_variables.h"


#define NGX_HTTP_OPENCLAW_SECRET_MAX  4096


static ngx_int_t ngx_http_openclaw_preconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_http_openclaw_echo_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_openclaw_echo_message(
    ngx_http_openclaw_client_t *cl, ngx_uint_t opcode, u_char *data,
    size_t len);
static void *ngx_http_openclaw_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_openclaw_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_openclaw_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_openclaw_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_openclaw_bridge(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_openclaw_status(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_openclaw_allow_origin(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_openclaw_gateway(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_openclaw_token_file(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_openclaw_read_secret(ngx_conf_t *cf,
    ngx_str_t *file, ngx_str_t *secret, ngx_uint_t *is_password);
static void ngx_http_openclaw_strip_json5(u_char *p, size_t len);
#if (NGX_HTTP_SSL)
static ngx_int_t ngx_http_openclaw_set_ssl(ngx_conf_t *cf,
    ngx_http_openclaw_main_conf_t *omcf);
#endif
static ngx_int_t ngx_http_openclaw_init_module(ngx_cycle_t *cycle);
static ngx_int_t ngx_http_openclaw_init_process(ngx_cycle_t *cycle);
static void ngx_http_openclaw_exit_process(ngx_cycle_t *cycle);
static char *ngx_http_openclaw_positive_size(ngx_conf_t *cf, void *post,
    void *data);
static char *ngx_http_openclaw_positive_msec(ngx_conf_t *cf, void *post,
    void *data);
static char *ngx_http_openclaw_positive_num(ngx_conf_t *cf, void *post,
    void *data);


static ngx_conf_post_handler_pt  ngx_http_openclaw_positive_size_p =
    ngx_http_openclaw_positive_size;

static ngx_conf_post_handler_pt  ngx_http_openclaw_positive_msec_p =
    ngx_http_openclaw_positive_msec;

static ngx_conf_post_handler_pt  ngx_http_openclaw_positive_num_p =
    ngx_http_openclaw_positive_num;


/* the relay hears of the gateway link through these */

static const ngx_http_openclaw_gateway_handlers_t
    ngx_http_openclaw_link_handlers = {
    ngx_http_openclaw_relay_link_up,
    ngx_http_openclaw_relay_link_down,
    ngx_http_openclaw_relay_chat_event,
    ngx_http_openclaw_hub_delivering
};


static ngx_conf_enum_t  ngx_http_openclaw_scopes[] = {
    { ngx_string("per-sender"), NGX_HTTP_OPENCLAW_SCOPE_PER_SENDER },
    { ngx_string("global"), NGX_HTTP_OPENCLAW_SCOPE_GLOBAL },
    { ngx_string("explicit"), NGX_HTTP_OPENCLAW_SCOPE_EXPLICIT },
    { ngx_string("per-message"), NGX_HTTP_OPENCLAW_SCOPE_PER_MESSAGE },
    { ngx_null_string, 0 }
};


static ngx_conf_enum_t  ngx_http_openclaw_controls[] = {
    { ngx_string("off"), NGX_HTTP_OPENCLAW_CONTROL_OFF },
    { ngx_string("own"), NGX_HTTP_OPENCLAW_CONTROL_OWN },
    { ngx_string("all"), NGX_HTTP_OPENCLAW_CONTROL_ALL },
    { ngx_null_string, 0 }
};


static ngx_conf_enum_t  ngx_http_openclaw_namespaces[] = {
    { ngx_string("webhook"), NGX_HTTP_OPENCLAW_NAMESPACE_WEBHOOK },
    { ngx_string("agent"), NGX_HTTP_OPENCLAW_NAMESPACE_AGENT },
    { ngx_null_string, 0 }
};


static char *ngx_http_openclaw_session_namespace(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);


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

    { ngx_string("openclaw_bridge_hub"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_openclaw_hub,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("openclaw_bridge_hub_header"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE2,
      ngx_http_openclaw_hub_header,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("openclaw_bridge_hub_queue"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_openclaw_loc_conf_t, hub_queue),
      &ngx_http_openclaw_positive_size_p },

    { ngx_string("openclaw_bridge_hub_ssl_verify"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_openclaw_loc_conf_t, hub_ssl_verify),
      NULL },

    { ngx_string("openclaw_bridge_hub_ssl_trusted_certificate"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_openclaw_loc_conf_t, hub_ssl_trusted_certificate),
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

    { ngx_string("openclaw_bridge_agent_id"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_openclaw_loc_conf_t, agent),
      NULL },

    { ngx_string("openclaw_bridge_abort_on_disconnect"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_openclaw_loc_conf_t, abort_on_disconnect),
      NULL },

    { ngx_string("openclaw_bridge_max_in_flight"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_openclaw_loc_conf_t, max_in_flight),
      &ngx_http_openclaw_positive_num_p },

    { ngx_string("openclaw_bridge_max_sessions_in_flight"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_openclaw_loc_conf_t, max_sessions),
      &ngx_http_openclaw_positive_num_p },

    { ngx_string("openclaw_bridge_uid"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_openclaw_loc_conf_t, uid),
      NULL },

    { ngx_string("openclaw_bridge_sender"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_openclaw_loc_conf_t, sender),
      NULL },

    { ngx_string("openclaw_bridge_session_scope"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_openclaw_loc_conf_t, scope),
      &ngx_http_openclaw_scopes },

    { ngx_string("openclaw_bridge_session_control"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_openclaw_loc_conf_t, control),
      &ngx_http_openclaw_controls },

    { ngx_string("openclaw_bridge_session_namespace"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_openclaw_session_namespace,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_openclaw_loc_conf_t, namespace),
      &ngx_http_openclaw_namespaces },

    { ngx_string("openclaw_bridge_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_openclaw_sessions_zone,
      0,
      0,
      NULL },

    { ngx_string("openclaw_bridge_session_zone"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_openclaw_sessions_use,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("openclaw_bridge_status"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_openclaw_status,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("openclaw_bridge_metrics"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_openclaw_status,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("openclaw_gateway"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_openclaw_gateway,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("openclaw_gateway_token"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_openclaw_main_conf_t, token),
      NULL },

    { ngx_string("openclaw_gateway_password"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_openclaw_main_conf_t, password),
      NULL },

    { ngx_string("openclaw_gateway_token_file"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_openclaw_token_file,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("openclaw_gateway_identity"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_openclaw_identity_set,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("openclaw_gateway_admin"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_openclaw_main_conf_t, admin),
      NULL },

    { ngx_string("openclaw_gateway_connect_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_openclaw_main_conf_t, connect_timeout),
      &ngx_http_openclaw_positive_msec_p },

    { ngx_string("openclaw_gateway_request_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_openclaw_main_conf_t, request_timeout),
      &ngx_http_openclaw_positive_msec_p },

    { ngx_string("openclaw_gateway_run_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_openclaw_main_conf_t, run_timeout),
      &ngx_http_openclaw_positive_msec_p },

    { ngx_string("openclaw_gateway_queue"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_openclaw_main_conf_t, queue_size),
      NULL },

    { ngx_string("openclaw_gateway_max_runs"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_openclaw_main_conf_t, max_runs),
      &ngx_http_openclaw_positive_num_p },

    { ngx_string("openclaw_gateway_max_queued"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_openclaw_main_conf_t, max_queued),
      &ngx_http_openclaw_positive_size_p },

    { ngx_string("openclaw_gateway_ssl_verify"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_openclaw_main_conf_t, ssl_verify),
      NULL },

    { ngx_string("openclaw_gateway_ssl_trusted_certificate"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_openclaw_main_conf_t, ssl_trusted_certificate),
      NULL },

    { ngx_string("openclaw_gateway_ssl_name"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_openclaw_main_conf_t, ssl_name),
      NULL },

    { ngx_string("openclaw_gateway_ssl_server_name"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_openclaw_main_conf_t, ssl_server_name),
      NULL },

    { ngx_string("openclaw_bridge_allow_origin"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_openclaw_allow_origin,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_openclaw_bridge_module_ctx = {
    ngx_http_openclaw_preconfiguration,    /* preconfiguration */
    NULL,                                  /* postconfiguration */

    ngx_http_openclaw_create_main_conf,    /* create main configuration */
    ngx_http_openclaw_init_main_conf,      /* init main configuration */

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
    ngx_http_openclaw_init_module,         /* init module */
    ngx_http_openclaw_init_process,        /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_openclaw_exit_process,        /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_int_t
ngx_http_openclaw_preconfiguration(ngx_conf_t *cf)
{
    return ngx_http_openclaw_variables_add(cf);
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


static void *
ngx_http_openclaw_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_openclaw_main_conf_t  *omcf;

    omcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_openclaw_main_conf_t));
    if (omcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     omcf->url = { 0, NULL };
     *     omcf->token = { 0, NULL };
     *     omcf->password = { 0, NULL };
     *     omcf->token_file = { 0, NULL };
     *     omcf->ssl_trusted_certificate = { 0, NULL };
     *     omcf->ssl_name = { 0, NULL };
     *     omcf->used = 0;
     */

    omcf->admin = NGX_CONF_UNSET;
    omcf->ssl_verify = NGX_CONF_UNSET;
    omcf->ssl_server_name = NGX_CONF_UNSET;
    omcf->connect_timeout = NGX_CONF_UNSET_MSEC;
    omcf->request_timeout = NGX_CONF_UNSET_MSEC;
    omcf->run_timeout = NGX_CONF_UNSET_MSEC;
    omcf->queue_size = NGX_CONF_UNSET_UINT;
    omcf->max_runs = NGX_CONF_UNSET_UINT;
    omcf->max_queued = NGX_CONF_UNSET_SIZE;

    return omcf;
}


static char *
ngx_http_openclaw_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_openclaw_main_conf_t *omcf = conf;

    char  *value;

    ngx_conf_init_value(omcf->admin, 0);
    ngx_conf_init_value(omcf->ssl_verify, 1);
    ngx_conf_init_value(omcf->ssl_server_name, 1);
    ngx_conf_init_msec_value(omcf->connect_timeout, 10000);
    ngx_conf_init_msec_value(omcf->request_timeout, 30000);
    ngx_conf_init_msec_value(omcf->run_timeout, 600000);
    ngx_conf_init_uint_value(omcf->queue_size, 1024);

    /*
     * What one worker holds for the gateway: far above what a deployment
     * runs (a run costs about a kilobyte here, and far more on the
     * gateway), so that only an overload meets them.
     */

    ngx_conf_init_uint_value(omcf->max_runs, 100000);
    ngx_conf_init_size_value(omcf->max_queued, 64 * 1024 * 1024);

    if (omcf->used || omcf->status_used) {
        if (ngx_http_openclaw_status_zone(cf, omcf) != NGX_OK) {
            return NGX_CONF_ERROR;
        }
    }

    if (!omcf->used) {
        return NGX_CONF_OK;
    }

    if (omcf->url.len == 0) {
        if (ngx_http_openclaw_gateway(cf, NULL, omcf) != NGX_CONF_OK) {
            return NGX_CONF_ERROR;
        }
    }

    /*
     * The credential: a directive, else the file, else the environment
     * that OpenClaw's own tools use.  It is kept for the connect request
     * only and never logged.
     */

    if (omcf->token.len) {
        omcf->secret = omcf->token;

    } else if (omcf->password.len) {
        omcf->secret = omcf->password;
        omcf->secret_is_password = 1;

    } else if (omcf->secret.len == 0) {
        value = getenv("OPENCLAW_GATEWAY_TOKEN");

        /* a loopback gateway may run with gateway.auth.mode "none" */

        if (value == NULL || *value == '\0') {
            ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                               "no credential for the OpenClaw gateway, "
                               "connecting without one: set "
                               "\"openclaw_gateway_token\", "
                               "\"openclaw_gateway_password\" or "
                               "\"openclaw_gateway_token_file\", or the "
                               "OPENCLAW_GATEWAY_TOKEN environment variable");

        } else {
            omcf->secret.data = (u_char *) value;
            omcf->secret.len = ngx_strlen(value);
        }
    }

#if (NGX_HTTP_SSL)
    if (omcf->tls && ngx_http_openclaw_set_ssl(cf, omcf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }
#endif

    return NGX_CONF_OK;
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
    conf->abort_on_disconnect = NGX_CONF_UNSET;
    conf->max_in_flight = NGX_CONF_UNSET_UINT;
    conf->max_sessions = NGX_CONF_UNSET_UINT;
    conf->agent = NGX_CONF_UNSET_PTR;
    conf->uid = NGX_CONF_UNSET_PTR;
    conf->sender = NGX_CONF_UNSET_PTR;
    conf->zone = NGX_CONF_UNSET_PTR;
    conf->scope = NGX_CONF_UNSET_UINT;
    conf->control = NGX_CONF_UNSET_UINT;
    conf->namespace = NGX_CONF_UNSET_UINT;
    conf->hub_headers = NGX_CONF_UNSET_PTR;
    conf->hub_queue = NGX_CONF_UNSET_SIZE;
    conf->hub_ssl_verify = NGX_CONF_UNSET;

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
    ngx_conf_merge_value(conf->abort_on_disconnect,
                         prev->abort_on_disconnect, 1);
    ngx_conf_merge_uint_value(conf->max_in_flight, prev->max_in_flight, 64);
    ngx_conf_merge_uint_value(conf->max_sessions, prev->max_sessions, 16);
    ngx_conf_merge_ptr_value(conf->agent, prev->agent, NULL);
    ngx_conf_merge_ptr_value(conf->uid, prev->uid, NULL);
    ngx_conf_merge_ptr_value(conf->sender, prev->sender, NULL);
    ngx_conf_merge_ptr_value(conf->zone, prev->zone, NULL);
    ngx_conf_merge_uint_value(conf->scope, prev->scope,
                              NGX_HTTP_OPENCLAW_SCOPE_PER_SENDER);
    ngx_conf_merge_uint_value(conf->control, prev->control,
                              NGX_HTTP_OPENCLAW_CONTROL_OWN);
    if (conf->namespace == NGX_CONF_UNSET_UINT) {
        conf->namespace_file = prev->namespace_file;
        conf->namespace_line = prev->namespace_line;
    }

    ngx_conf_merge_uint_value(conf->namespace, prev->namespace,
                              NGX_HTTP_OPENCLAW_NAMESPACE_WEBHOOK);

    /*
     * A uid's sessions stay under its own part of the webhook namespace.
     * Either may be inherited, so this is known only here: the error
     * names the namespace directive's line.
     */

    if (conf->namespace == NGX_HTTP_OPENCLAW_NAMESPACE_AGENT && conf->uid) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"openclaw_bridge_session_namespace agent\" cannot "
                      "be used with openclaw_bridge_uid: the sessions of a "
                      "uid stay under agent:<agent>:webhook:uid:<uid> in "
                      "%s:%ui", conf->namespace_file, conf->namespace_line);
        return NGX_CONF_ERROR;
    }

    return ngx_http_openclaw_hub_merge(cf, prev, conf);
}


static char *
ngx_http_openclaw_bridge(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_openclaw_loc_conf_t *olcf = conf;

    ngx_http_core_loc_conf_t       *clcf;
    ngx_http_openclaw_main_conf_t  *omcf;

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
        clcf->handler = ngx_http_openclaw_inbound_handler;

        omcf = ngx_http_conf_get_module_main_conf(cf,
                                            ngx_http_openclaw_bridge_module);
        omcf->used = 1;
    }

    return NGX_CONF_OK;
}


/* an enum, and where it was set, for the check against a uid at merge */

static char *
ngx_http_openclaw_session_namespace(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_openclaw_loc_conf_t *olcf = conf;

    char  *rv;

    rv = ngx_conf_set_enum_slot(cf, cmd, conf);

    if (rv == NGX_CONF_OK) {
        olcf->namespace_file = cf->conf_file->file.name.data;
        olcf->namespace_line = cf->conf_file->line;
    }

    return rv;
}


/* the status as JSON, or as Prometheus metrics: the same figures */

static char *
ngx_http_openclaw_status(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t       *clcf;
    ngx_http_openclaw_main_conf_t  *omcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (cmd->name.len == sizeof("openclaw_bridge_metrics") - 1) {
        clcf->handler = ngx_http_openclaw_metrics_handler;

    } else {
        clcf->handler = ngx_http_openclaw_status_handler;
    }

    omcf = ngx_http_conf_get_module_main_conf(cf,
                                            ngx_http_openclaw_bridge_module);
    omcf->status_used = 1;

    return NGX_CONF_OK;
}


/* ws:// or wss:// URL; resolved here, as proxy_pass does for static names */

static char *
ngx_http_openclaw_gateway(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_openclaw_main_conf_t *omcf = conf;

    size_t      skip;
    ngx_str_t  *value, url;
    in_port_t   port;

    if (cmd == NULL) {
        ngx_str_set(&url, "ws://127.0.0.1:18789");

    } else {
        if (omcf->url.len) {
            return "is duplicate";
        }

        value = cf->args->elts;
        url = value[1];
    }

    if (url.len > 5 && ngx_strncasecmp(url.data, (u_char *) "ws://", 5) == 0)
    {
        skip = 5;
        port = 80;

    } else if (url.len > 6
               && ngx_strncasecmp(url.data, (u_char *) "wss://", 6) == 0)
    {
#if (NGX_HTTP_SSL)
        skip = 6;
        port = 443;
        omcf->tls = 1;
#else
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "wss:// needs nginx built with the SSL module");
        return NGX_CONF_ERROR;
#endif

    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid OpenClaw gateway URL \"%V\": it must "
                           "start with ws:// or wss://", &url);
        return NGX_CONF_ERROR;
    }

    omcf->url = url;

    ngx_memzero(&omcf->u, sizeof(ngx_url_t));

    omcf->u.url.data = url.data + skip;
    omcf->u.url.len = url.len - skip;
    omcf->u.default_port = port;
    omcf->u.uri_part = 1;

    if (ngx_parse_url(cf->pool, &omcf->u) != NGX_OK) {
        if (omcf->u.err) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "%s in OpenClaw gateway URL \"%V\"",
                               omcf->u.err, &url);
        }

        return NGX_CONF_ERROR;
    }

    if (omcf->u.naddrs == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "no address for OpenClaw gateway \"%V\"", &url);
        return NGX_CONF_ERROR;
    }

    if (omcf->u.uri.len == 0) {
        ngx_str_set(&omcf->u.uri, "/");
    }

    omcf->uri = omcf->u.uri;

    if (omcf->u.no_port || omcf->u.port == port) {
        omcf->host = omcf->u.host;

    } else {
        omcf->host.data = ngx_pnalloc(cf->pool, omcf->u.host.len + 7);
        if (omcf->host.data == NULL) {
            return NGX_CONF_ERROR;
        }

        omcf->host.len = ngx_sprintf(omcf->host.data, "%V:%d",
                                     &omcf->u.host, (int) omcf->u.port)
                         - omcf->host.data;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_openclaw_token_file(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_openclaw_main_conf_t *omcf = conf;

    ngx_str_t  *value;

    if (omcf->token_file.len) {
        return "is duplicate";
    }

    value = cf->args->elts;
    omcf->token_file = value[1];

    if (ngx_conf_full_name(cf->cycle, &omcf->token_file, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (ngx_http_openclaw_read_secret(cf, &omcf->token_file, &omcf->secret,
                                      &omcf->secret_is_password)
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * A file with just the token, or OpenClaw's own openclaw.json, from which
 * gateway.auth.token (or gateway.auth.password) is taken.  That file is
 * JSON5; comments and trailing commas are removed before parsing.
 */

static ngx_int_t
ngx_http_openclaw_read_secret(ngx_conf_t *cf, ngx_str_t *file,
    ngx_str_t *secret, ngx_uint_t *is_password)
{
    u_char      *buf, *p, *last;
    cJSON       *json, *auth, *item;
    ssize_t      n;
    ngx_fd_t     fd;
    ngx_file_t   f;

    fd = ngx_open_file(file->data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);

    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_open_file_n " \"%V\" failed", file);
        return NGX_ERROR;
    }

    buf = ngx_pnalloc(cf->temp_pool, 65536 + 1);
    if (buf == NULL) {
        ngx_close_file(fd);
        return NGX_ERROR;
    }

    ngx_memzero(&f, sizeof(ngx_file_t));
    f.fd = fd;
    f.name = *file;
    f.log = cf->log;

    n = ngx_read_file(&f, buf, 65536, 0);

    ngx_close_file(fd);

    if (n == NGX_ERROR) {
        return NGX_ERROR;
    }

    p = buf;
    last = buf + n;

    while (p < last && (*p == ' ' || *p == '\t' || *p == CR || *p == LF)) {
        p++;
    }

    while (last > p
           && (last[-1] == ' ' || last[-1] == '\t' || last[-1] == CR
               || last[-1] == LF))
    {
        last--;
    }

    if (p < last && *p == '{') {
        ngx_http_openclaw_strip_json5(p, last - p);

        json = cJSON_ParseWithLength((char *) p, last - p);
        auth = cJSON_GetObjectItemCaseSensitive(
                   cJSON_GetObjectItemCaseSensitive(json, "gateway"), "auth");

        item = cJSON_GetObjectItemCaseSensitive(auth, "token");
        *is_password = 0;

        if (!cJSON_IsString(item) || item->valuestring[0] == '\0') {
            item = cJSON_GetObjectItemCaseSensitive(auth, "password");
            *is_password = 1;
        }

        if (!cJSON_IsString(item) || item->valuestring[0] == '\0') {
            cJSON_Delete(json);
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "%s: no string gateway.auth.token or "
                               "gateway.auth.password in \"%V\"",
                               json ? "JSON file" : "invalid JSON", file);
            return NGX_ERROR;
        }

        p = (u_char *) item->valuestring;
        last = p + ngx_strlen(item->valuestring);

        secret->data = ngx_pnalloc(cf->pool, last - p + 1);
        if (secret->data == NULL) {
            cJSON_Delete(json);
            return NGX_ERROR;
        }

        ngx_cpystrn(secret->data, p, last - p + 1);
        secret->len = last - p;

        cJSON_Delete(json);
        ngx_explicit_memzero(buf, n);

        return NGX_OK;
    }

    if (p == last || last - p > NGX_HTTP_OPENCLAW_SECRET_MAX
        || ngx_strlchr(p, last, LF) != NULL)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" must hold the gateway token on one line, "
                           "or be OpenClaw's openclaw.json", file);
        return NGX_ERROR;
    }

    *is_password = 0;

    secret->data = ngx_pnalloc(cf->pool, last - p + 1);
    if (secret->data == NULL) {
        return NGX_ERROR;
    }

    ngx_cpystrn(secret->data, p, last - p + 1);
    secret->len = last - p;

    ngx_explicit_memzero(buf, n);

    return NGX_OK;
}


/*
 * Blanks out // and block comments, then commas before } or ]: two
 * passes, since a comment may stand between a comma and its bracket.
 */

static void
ngx_http_openclaw_strip_json5(u_char *start, size_t len)
{
    u_char      *p, *q, *last;
    ngx_uint_t   pass;

    last = start + len;

    for (pass = 0; pass < 2; pass++) {

        p = start;

        while (p < last) {

            if (*p == '"' || *p == '\'') {
                q = p++;

                while (p < last && *p != *q) {
                    if (*p == '\\') {
                        p++;
                    }

                    p++;
                }

                p++;
                continue;
            }

            if (pass == 0 && *p == '/' && p + 1 < last && p[1] == '/') {
                while (p < last && *p != LF) {
                    *p++ = ' ';
                }

                continue;
            }

            if (pass == 0 && *p == '/' && p + 1 < last && p[1] == '*') {
                while (p < last && !(*p == '*' && p + 1 < last && p[1] == '/'))
                {
                    *p++ = ' ';
                }

                if (p < last) {
                    p[0] = ' ';
                    p[1] = ' ';
                    p += 2;
                }

                continue;
            }

            if (pass == 1 && *p == ',') {
                q = p + 1;

                while (q < last
                       && (*q == ' ' || *q == '\t' || *q == CR || *q == LF))
                {
                    q++;
                }

                if (q < last && (*q == '}' || *q == ']')) {
                    *p = ' ';
                }
            }

            p++;
        }
    }
}


#if (NGX_HTTP_SSL)

static ngx_int_t
ngx_http_openclaw_set_ssl(ngx_conf_t *cf, ngx_http_openclaw_main_conf_t *omcf)
{
    omcf->ssl = ngx_http_openclaw_wsclient_ssl(cf, omcf->ssl_verify,
                                               &omcf->ssl_trusted_certificate);
    if (omcf->ssl == NULL) {
        return NGX_ERROR;
    }

    if (omcf->ssl_name.len == 0) {
        omcf->ssl_name = omcf->u.host;
    }

    return ngx_http_openclaw_wsclient_ssl_name(cf->pool, &omcf->ssl_name,
                                               &omcf->ssl_name,
                                               &omcf->ssl_ip);
}

#endif


/* in the master, where the worker user is known and files can be chowned */

static ngx_int_t
ngx_http_openclaw_init_module(ngx_cycle_t *cycle)
{
    ngx_http_openclaw_main_conf_t  *omcf;

    omcf = ngx_http_cycle_get_module_main_conf(cycle,
                                            ngx_http_openclaw_bridge_module);

    if (omcf == NULL) {
        return NGX_OK;
    }

    return ngx_http_openclaw_identity_init_module(cycle, omcf->identity);
}


static ngx_int_t
ngx_http_openclaw_init_process(ngx_cycle_t *cycle)
{
    ngx_http_openclaw_main_conf_t      *omcf;
    ngx_http_openclaw_worker_status_t  *ws;

    /* cache manager and loader processes have no clients to relay for */

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    omcf = ngx_http_cycle_get_module_main_conf(cycle,
                                            ngx_http_openclaw_bridge_module);

    if (omcf == NULL || !omcf->used) {
        return NGX_OK;
    }

    ws = ngx_http_openclaw_status_attach(cycle, omcf);

    if (ws == NULL) {
        ws = ngx_pcalloc(cycle->pool,
                         sizeof(ngx_http_openclaw_worker_status_t));
        if (ws == NULL) {
            return NGX_ERROR;
        }
    }

    if (ngx_http_openclaw_relay_init_process(cycle, omcf) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_http_openclaw_relay_set_stats(&ws->relay);

    ngx_http_openclaw_gateway_set_handlers(&ngx_http_openclaw_link_handlers);

    if (ngx_http_openclaw_gateway_init_process(cycle, omcf, &ws->link)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_openclaw_hub_init_process(cycle, omcf);
}


static void
ngx_http_openclaw_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_openclaw_hub_exit_process(cycle);
    ngx_http_openclaw_gateway_exit_process(cycle);
    ngx_http_openclaw_status_detach();
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


static char *
ngx_http_openclaw_positive_num(ngx_conf_t *cf, void *post, void *data)
{
    ngx_uint_t  *np = data;

    if (*np == 0) {
        return "must be greater than zero";
    }

    return NGX_CONF_OK;
}
