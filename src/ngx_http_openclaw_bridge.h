
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


typedef struct {
    ngx_uint_t                  mode;

    size_t                      max_message_size;
    size_t                      send_buffer;

    ngx_msec_t                  ping_interval;
    ngx_msec_t                  pong_timeout;
    ngx_msec_t                  idle_timeout;
    ngx_msec_t                  close_timeout;

    ngx_array_t                *origins;
} ngx_http_openclaw_loc_conf_t;


extern ngx_module_t  ngx_http_openclaw_bridge_module;


#endif /* _NGX_HTTP_OPENCLAW_BRIDGE_H_INCLUDED_ */
