
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#ifndef _NGX_HTTP_OPENCLAW_BRIDGE_H_INCLUDED_
#define _NGX_HTTP_OPENCLAW_BRIDGE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


#define NGX_HTTP_OPENCLAW_MODE_OFF     0
#define NGX_HTTP_OPENCLAW_MODE_BRIDGE  1
#define NGX_HTTP_OPENCLAW_MODE_ECHO    2

#define NGX_HTTP_OPENCLAW_SCOPE_PER_SENDER   0
#define NGX_HTTP_OPENCLAW_SCOPE_GLOBAL       1
#define NGX_HTTP_OPENCLAW_SCOPE_EXPLICIT     2
#define NGX_HTTP_OPENCLAW_SCOPE_PER_MESSAGE  3

#define NGX_HTTP_OPENCLAW_CONTROL_OFF        0
#define NGX_HTTP_OPENCLAW_CONTROL_OWN        1
#define NGX_HTTP_OPENCLAW_CONTROL_ALL        2

#define NGX_HTTP_OPENCLAW_NAMESPACE_WEBHOOK  0
#define NGX_HTTP_OPENCLAW_NAMESPACE_AGENT    1


typedef struct ngx_http_openclaw_identity_s  ngx_http_openclaw_identity_t;


typedef struct {
    ngx_str_t                   url;
    ngx_url_t                   u;
    ngx_str_t                   host;
    ngx_str_t                   uri;

    ngx_str_t                   token;
    ngx_str_t                   password;
    ngx_str_t                   token_file;
    ngx_str_t                   secret;
    ngx_uint_t                  secret_is_password;

    ngx_flag_t                  ssl_verify;
    ngx_str_t                   ssl_trusted_certificate;
    ngx_str_t                   ssl_name;
    ngx_flag_t                  ssl_server_name;
#if (NGX_HTTP_SSL)
    ngx_ssl_t                  *ssl;
#endif

    ngx_msec_t                  connect_timeout;
    ngx_msec_t                  request_timeout;
    ngx_msec_t                  run_timeout;
    ngx_uint_t                  queue_size;
    ngx_uint_t                  max_runs;
    size_t                      max_queued;
    ngx_flag_t                  admin;

    ngx_http_openclaw_identity_t  *identity;

    ngx_shm_zone_t             *status;

    ngx_array_t                *hubs;      /* ngx_http_openclaw_hub_conf_t * */
    ngx_shm_zone_t             *hub_zone;

    ngx_uint_t                  ssl_ip;     /* ssl_name is an address */

    unsigned                    tls:1;
    unsigned                    used:1;
    unsigned                    status_used:1;
} ngx_http_openclaw_main_conf_t;


typedef struct {
    ngx_uint_t                  mode;
    ngx_flag_t                  abort_on_disconnect;
    ngx_uint_t                  max_in_flight;
    ngx_uint_t                  max_sessions;
    ngx_uint_t                  scope;
    ngx_uint_t                  control;
    ngx_uint_t                  namespace;
    u_char                     *namespace_file;    /* for a late error */
    ngx_uint_t                  namespace_line;
    ngx_http_complex_value_t   *agent;
    ngx_http_complex_value_t   *uid;
    ngx_http_complex_value_t   *sender;
    ngx_shm_zone_t             *zone;

    size_t                      max_message_size;
    size_t                      send_buffer;

    ngx_msec_t                  ping_interval;
    ngx_msec_t                  pong_timeout;
    ngx_msec_t                  idle_timeout;
    ngx_msec_t                  close_timeout;

    ngx_array_t                *origins;

    /* hub links: dialled, not inherited */
    ngx_array_t                *hubs;
    ngx_array_t                *hub_headers;   /* ngx_keyval_t */
    size_t                      hub_queue;
    ngx_flag_t                  hub_ssl_verify;
    ngx_str_t                   hub_ssl_trusted_certificate;
    void                       *hub_ssl;       /* ngx_ssl_t */
} ngx_http_openclaw_loc_conf_t;


extern ngx_module_t  ngx_http_openclaw_bridge_module;


#endif /* _NGX_HTTP_OPENCLAW_BRIDGE_H_INCLUDED_ */
