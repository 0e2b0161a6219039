
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

/* a hub link as the status and metrics endpoints report it */

typedef struct {
    ngx_str_t                       url;        /* as dialled */
    ngx_str_t                       location;
    ngx_str_t                       uid;
    ngx_uint_t                      state;
    ngx_pid_t                       pid;        /* its holder */
    time_t                          since;
    ngx_uint_t                      reconnects;
    ngx_uint_t                      queued;
    ngx_uint_t                      dropped;
    u_char                          last_error[256];
} ngx_http_openclaw_hub_status_t;


/*
 * By ngx_http_openclaw_hub_state_e: down, connecting, ready, draining,
 * then NULL.
 */
extern const char  *ngx_http_openclaw_hub_states[];


/* the running configuration's links (ngx_http_openclaw_hub_status_t) */
ngx_array_t *ngx_http_openclaw_hub_links(ngx_pool_t *pool);


#endif /* _NGX_HTTP_OPENCLAW_HUB_H_INCLUDED_ */
