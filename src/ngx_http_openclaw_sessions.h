
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#ifndef _NGX_HTTP_OPENCLAW_SESSIONS_H_INCLUDED_
#define _NGX_HTTP_OPENCLAW_SESSIONS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


#define NGX_HTTP_OPENCLAW_ERROR_MAX  120


/* a copy of one session record, taken under the lock */

typedef struct {
    ngx_str_t                   key;
    ngx_str_t                   agent;
    ngx_str_t                   uid;
    ngx_str_t                   sender;
    time_t                      created;
    time_t                      active;
    ngx_uint_t                  messages_in;
    ngx_uint_t                  messages_out;
    ngx_uint_t                  in_flight;
    ngx_pid_t                   owner;
    ngx_str_t                   error;
} ngx_http_openclaw_session_t;


/* what a relay knows about the zone, for its status */

typedef struct {
    ngx_uint_t                  sessions;
    ngx_uint_t                  evicted;
    size_t                      size;
    size_t                      free;
} ngx_http_openclaw_zone_info_t;


char *ngx_http_openclaw_sessions_zone(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_openclaw_sessions_use(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/*
 * A message of "key" was accepted: the record is made if new, its sender
 * the owner, and counts it in flight.  NGX_DECLINED: the zone is full of
 * sessions with messages in flight; NGX_ERROR: the record belongs to
 * another uid; NGX_BUSY: with "owned", to another sender.
 */
ngx_int_t ngx_http_openclaw_sessions_start(ngx_shm_zone_t *zone,
    ngx_str_t *key, ngx_str_t *agent, ngx_str_t *uid, ngx_str_t *sender,
    ngx_uint_t owned);

/* the message ended; "error" is empty for a complete */
void ngx_http_openclaw_sessions_end(ngx_shm_zone_t *zone, ngx_str_t *key,
    ngx_str_t *error);

/*
 * Copies the records of "agent" and "uid" (and of "sender" unless NULL)
 * into "out", an array of ngx_http_openclaw_session_t from "pool".
 */
ngx_int_t ngx_http_openclaw_sessions_list(ngx_shm_zone_t *zone,
    ngx_str_t *agent, ngx_str_t *uid, ngx_str_t *sender, ngx_pool_t *pool,
    ngx_array_t *out);

/* NGX_DECLINED when there is no such record */
ngx_int_t ngx_http_openclaw_sessions_get(ngx_shm_zone_t *zone,
    ngx_str_t *key, ngx_pool_t *pool, ngx_http_openclaw_session_t *s);

void ngx_http_openclaw_sessions_delete(ngx_shm_zone_t *zone, ngx_str_t *key);

/* the zone is a sessions zone of this module */
ngx_uint_t ngx_http_openclaw_sessions_zone_of(ngx_shm_zone_t *zone);

void ngx_http_openclaw_sessions_info(ngx_shm_zone_t *zone,
    ngx_http_openclaw_zone_info_t *info);


#endif /* _NGX_HTTP_OPENCLAW_SESSIONS_H_INCLUDED_ */
