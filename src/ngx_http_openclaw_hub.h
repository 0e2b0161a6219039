
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * Hub links: the module dials out to a user's WebSocket server (a
 * "hub"), as the Go bridge does, and what arrives there is relayed like
 * the messages of an inbound client.  One link of all workers per (hub
 * URL, uid), replies kept while it is down, pings, reconnects.
 */


#ifndef _NGX_HTTP_OPENCLAW_HUB_H_INCLUDED_
#define _NGX_HTTP_OPENCLAW_HUB_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_openclaw_bridge.h"


typedef struct {
    ngx_str_t                       url;        /* as written */
    ngx_str_t                       dial;       /* with the uid */
    ngx_url_t                       u;
    ngx_str_t                       host;       /* Host header */
    ngx_str_t                       uri;
    ngx_uint_t                      tls;
    ngx_str_t                       ssl_name;   /* NUL-terminated */
    ngx_uint_t                      ssl_ip;

    ngx_str_t                       location;
    ngx_str_t                       agent;
    ngx_str_t                       uid;
    ngx_str_t                       sender;
    ngx_http_openclaw_loc_conf_t   *conf;
    ngx_atomic_uint_t               key;        /* its slot's name */

    u_char                         *file;       /* for late errors */
    ngx_uint_t                      line;
} ngx_http_openclaw_hub_conf_t;


char *ngx_http_openclaw_hub(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *ngx_http_openclaw_hub_header(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/* at merge: the location's hubs, with its final settings */
char *ngx_http_openclaw_hub_merge(ngx_conf_t *cf,
    ngx_http_openclaw_loc_conf_t *prev, ngx_http_openclaw_loc_conf_t *conf);

ngx_int_t ngx_http_openclaw_hub_init_process(ngx_cycle_t *cycle,
    ngx_http_openclaw_main_conf_t *omcf);
void ngx_http_openclaw_hub_exit_process(ngx_cycle_t *cycle);

/* a hub link of this worker still owes replies: the gateway link stays */
ngx_uint_t ngx_http_openclaw_hub_delivering(void);

/* the "hubs" array of the status JSON: its size, then the text */
size_t ngx_http_openclaw_hub_status_size(ngx_http_openclaw_main_conf_t *omcf);
u_char *ngx_http_openclaw_hub_status(u_char *p,
    ngx_http_openclaw_main_conf_t *omcf);


#endif /* _NGX_HTTP_OPENCLAW_HUB_H_INCLUDED_ */
