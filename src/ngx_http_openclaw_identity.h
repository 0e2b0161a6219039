
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * The link's device identity (gateway-protocol.md 4.3, 4.4): an Ed25519
 * key kept in the file of openclaw_gateway_identity, the signed "device"
 * block of a connect, the device token the gateway issues once the
 * device is paired, and the pairing state shown by the status.
 */


#ifndef _NGX_HTTP_OPENCLAW_IDENTITY_H_INCLUDED_
#define _NGX_HTTP_OPENCLAW_IDENTITY_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <cjson/cJSON.h>

#include "ngx_http_openclaw_bridge.h"


/* room in the status for the identity's entry */
#define NGX_HTTP_OPENCLAW_IDENTITY_STATUS_LEN  512


/* the directive: loads the key, or creates it when the file is missing */
char *ngx_http_openclaw_identity_set(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/* in the master, once the worker user is known */
ngx_int_t ngx_http_openclaw_identity_init_module(ngx_cycle_t *cycle,
    ngx_http_openclaw_identity_t *id);

/*
 * Adds the signed "device" block to the params of a connect, for the
 * challenge's "nonce" and "ts" (ms; 0 when it had none), and puts the
 * stored device token in "auth" in place of the shared secret.  "params"
 * must be complete: the signature covers its client, role, scopes and
 * auth.  NGX_OK without an identity.
 */
ngx_int_t ngx_http_openclaw_identity_sign(ngx_http_openclaw_identity_t *id,
    cJSON *params, u_char *nonce, size_t len, int64_t ts, ngx_log_t *log);

/*
 * What the identity makes of a refused connect's "error": it logs what
 * an operator must do (approve a pairing request, fix a clock), changes
 * what the next connect sends (v2 signature, no device token), and
 * returns the level for the refusal itself, 0 when it is not about the
 * identity.
 */
ngx_uint_t ngx_http_openclaw_identity_refused(
    ngx_http_openclaw_identity_t *id, cJSON *error, ngx_log_t *log);

/* hello-ok: the device is paired; its device token is stored */
void ngx_http_openclaw_identity_hello(ngx_http_openclaw_identity_t *id,
    cJSON *payload, ngx_log_t *log);

/* the "identity" member of the status JSON, at most ..._STATUS_LEN */
u_char *ngx_http_openclaw_identity_status(ngx_http_openclaw_identity_t *id,
    u_char *p);


#endif /* _NGX_HTTP_OPENCLAW_IDENTITY_H_INCLUDED_ */
