
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <cjson/cJSON.h>

#include "ngx_http_openclaw_identity.h"
#include "ngx_http_openclaw_signature.h"


/* a device token is an opaque string; the gateway's are about 43 bytes */
#define NGX_HTTP_OPENCLAW_DEVICE_TOKEN_MAX   512

/* the gateway's own limit (PAIRING_CONNECT_REQUEST_ID_PATTERN) */
#define NGX_HTTP_OPENCLAW_REQUEST_ID_MAX     128

#define NGX_HTTP_OPENCLAW_PAYLOAD_MAX        4096


typedef enum {
    NGX_HTTP_OPENCLAW_PAIRING_UNKNOWN = 0,
    NGX_HTTP_OPENCLAW_PAIRING_PENDING,
    NGX_HTTP_OPENCLAW_PAIRING_PAIRED
} ngx_http_openclaw_pairing_e;


/* shared by the workers: one identity, one pairing */

typedef struct {
    ngx_http_openclaw_pairing_e     state;
    time_t                          since;
    ngx_uint_t                      token;      /* a device token is stored */
    u_char                          device_id[NGX_HTTP_OPENCLAW_DEVICE_ID_LEN
                                              + 1];
    u_char                          request_id[NGX_HTTP_OPENCLAW_REQUEST_ID_MAX
                                               + 1];
} ngx_http_openclaw_identity_sh_t;


struct ngx_http_openclaw_identity_s {
    ngx_str_t                       file;
    ngx_str_t                       token_file;
    EVP_PKEY                       *key;
    ngx_shm_zone_t                 *zone;
    u_char                          device_id[NGX_HTTP_OPENCLAW_DEVICE_ID_LEN
                                              + 1];
    u_char                          public_key[NGX_HTTP_OPENCLAW_PUBLIC_KEY_LEN
                                               + 1];
    unsigned                        created:1;
};


static ngx_int_t ngx_http_openclaw_identity_load(ngx_conf_t *cf,
    ngx_http_openclaw_identity_t *id);
static ngx_int_t ngx_http_openclaw_identity_create(ngx_conf_t *cf,
    ngx_http_openclaw_identity_t *id);
static void ngx_http_openclaw_identity_cleanup(void *data);
static ngx_int_t ngx_http_openclaw_identity_init_zone(ngx_shm_zone_t *zone,
    void *data);
static size_t ngx_http_openclaw_identity_read_token(
    ngx_http_openclaw_identity_t *id, u_char *token, ngx_log_t *log);
static void ngx_http_openclaw_identity_store_token(
    ngx_http_openclaw_identity_t *id, const char *token, ngx_log_t *log);
static void ngx_http_openclaw_identity_forget_token(
    ngx_http_openclaw_identity_t *id, ngx_log_t *log);
static ngx_uint_t ngx_http_openclaw_identity_pairing(
    ngx_http_openclaw_identity_t *id, cJSON *details, ngx_log_t *log);
static ngx_http_openclaw_identity_sh_t *ngx_http_openclaw_identity_lock(
    ngx_http_openclaw_identity_t *id);
static void ngx_http_openclaw_identity_unlock(
    ngx_http_openclaw_identity_t *id);
static char *ngx_http_openclaw_identity_ssl_reason(u_char *buf, size_t len);


/* the worker's own: what its next connect sends */

static ngx_uint_t  ngx_http_openclaw_identity_v2;
static ngx_uint_t  ngx_http_openclaw_identity_hinted;
static ngx_uint_t  ngx_http_openclaw_identity_sent_token;
static u_char      ngx_http_openclaw_identity_token[
                       NGX_HTTP_OPENCLAW_DEVICE_TOKEN_MAX + 1];

static const char  *ngx_http_openclaw_pairing_states[] = {
    "unknown", "pending", "paired"
};


char *
ngx_http_openclaw_identity_set(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_openclaw_main_conf_t *omcf = conf;

    u_char                        *p;
    ngx_str_t                     *value, name;
    ngx_pool_cleanup_t            *cln;
    ngx_http_openclaw_identity_t  *id;

    if (omcf->identity) {
        return "is duplicate";
    }

    id = ngx_pcalloc(cf->pool, sizeof(ngx_http_openclaw_identity_t));
    if (id == NULL) {
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;
    id->file = value[1];

    if (ngx_conf_full_name(cf->cycle, &id->file, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    /* the device token is kept next to the key, in a file of its own */

    id->token_file.len = id->file.len + sizeof(".token") - 1;
    id->token_file.data = ngx_pnalloc(cf->pool, id->token_file.len + 1);
    if (id->token_file.data == NULL) {
        return NGX_CONF_ERROR;
    }

    p = ngx_cpymem(id->token_file.data, id->file.data, id->file.len);
    ngx_memcpy(p, ".token", sizeof(".token"));

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        return NGX_CONF_ERROR;
    }

    cln->handler = ngx_http_openclaw_identity_cleanup;
    cln->data = id;

    if (ngx_http_openclaw_identity_load(cf, id) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (ngx_http_openclaw_sig_identity(id->key, id->device_id,
                                       id->public_key)
        != 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" \"%V\": the key gives no Ed25519 public "
                           "key", &cmd->name, &id->file);
        return NGX_CONF_ERROR;
    }

    /* the pairing is the same for every worker, and outlives a reload */

    ngx_str_set(&name, "openclaw_gateway_identity");

    id->zone = ngx_shared_memory_add(cf, &name, 8 * ngx_pagesize,
                                     &ngx_http_openclaw_bridge_module);
    if (id->zone == NULL) {
        return NGX_CONF_ERROR;
    }

    id->zone->init = ngx_http_openclaw_identity_init_zone;
    id->zone->data = id;

    omcf->identity = id;

    /* the id an operator finds in "openclaw devices list" */

    ngx_conf_log_error(NGX_LOG_NOTICE, cf, 0,
                       "OpenClaw gateway device id %s, key \"%V\"%s",
                       id->device_id, &id->file,
                       id->created ? " (created)" : "");

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_openclaw_identity_load(ngx_conf_t *cf,
    ngx_http_openclaw_identity_t *id)
{
    BIO             *bio;
    ngx_err_t        err;
    ngx_file_info_t  fi;
    u_char           reason[NGX_MAX_CONF_ERRSTR];

    if (ngx_file_info(id->file.data, &fi) == NGX_FILE_ERROR) {
        err = ngx_errno;

        if (err == NGX_ENOENT) {
            return ngx_http_openclaw_identity_create(cf, id);
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, err,
                           "\"openclaw_gateway_identity\" \"%V\": "
                           ngx_file_info_n " failed", &id->file);
        return NGX_ERROR;
    }

    if (!ngx_is_file(&fi)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"openclaw_gateway_identity\" \"%V\": not a "
                           "regular file", &id->file);
        return NGX_ERROR;
    }

    /* a key others can read is no identity: say so, but use it */

    if (ngx_file_access(&fi) & 0077) {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "\"openclaw_gateway_identity\" \"%V\": the key "
                           "file has mode 0%ui%ui%ui, anyone who can read it "
                           "can act as this device: make it 0600",
                           &id->file,
                           (ngx_uint_t) (ngx_file_access(&fi) >> 6) & 7,
                           (ngx_uint_t) (ngx_file_access(&fi) >> 3) & 7,
                           (ngx_uint_t) ngx_file_access(&fi) & 7);
    }

    bio = BIO_new_file((char *) id->file.data, "r");

    if (bio == NULL) {
        err = ngx_errno;
        ERR_clear_error();

        ngx_conf_log_error(NGX_LOG_EMERG, cf, err,
                           "\"openclaw_gateway_identity\" \"%V\": cannot "
                           "read the key file", &id->file);
        return NGX_ERROR;
    }

    ERR_clear_error();

    id->key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);

    BIO_free(bio);

    if (id->key == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"openclaw_gateway_identity\" \"%V\": not a PEM "
                           "private key (%s); remove the file to have a new "
                           "identity created, which must then be paired "
                           "again", &id->file,
                           ngx_http_openclaw_identity_ssl_reason(
                               reason, sizeof(reason)));
        return NGX_ERROR;
    }

    if (EVP_PKEY_id(id->key) != EVP_PKEY_ED25519) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"openclaw_gateway_identity\" \"%V\": the key is "
                           "%s, the gateway takes Ed25519 keys only",
                           &id->file, OBJ_nid2sn(EVP_PKEY_id(id->key)));
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * A new key is written to a file of its own and linked into place, so
 * that two nginx starting at once (nginx -t, a unit) end up with the one
 * identity: the second finds the file and reads it.
 */

static ngx_int_t
ngx_http_openclaw_identity_create(ngx_conf_t *cf,
    ngx_http_openclaw_identity_t *id)
{
    int             fd, ok;
    FILE           *f;
    u_char         *tmp;
    ngx_err_t       err;
    EVP_PKEY_CTX   *ctx;
    u_char          reason[NGX_MAX_CONF_ERRSTR];

    ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, NULL);

    if (ctx == NULL
        || EVP_PKEY_keygen_init(ctx) != 1
        || EVP_PKEY_keygen(ctx, &id->key) != 1)
    {
        EVP_PKEY_CTX_free(ctx);
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"openclaw_gateway_identity\" \"%V\": cannot "
                           "create an Ed25519 key (%s)", &id->file,
                           ngx_http_openclaw_identity_ssl_reason(
                               reason, sizeof(reason)));
        return NGX_ERROR;
    }

    EVP_PKEY_CTX_free(ctx);

    tmp = ngx_pnalloc(cf->temp_pool, id->file.len + NGX_INT64_LEN + 8);
    if (tmp == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(tmp, "%V.%P.new%Z", &id->file, ngx_pid);

    fd = open((char *) tmp, O_WRONLY|O_CREAT|O_TRUNC|O_NOFOLLOW, 0600);

    if (fd == -1) {
        err = ngx_errno;
        ngx_conf_log_error(NGX_LOG_EMERG, cf, err,
                           "\"openclaw_gateway_identity\" \"%V\": cannot "
                           "create the key file", &id->file);
        return NGX_ERROR;
    }

    f = fdopen(fd, "w");

    if (f == NULL) {
        err = ngx_errno;
        close(fd);
        (void) unlink((char *) tmp);
        ngx_conf_log_error(NGX_LOG_EMERG, cf, err,
                           "\"openclaw_gateway_identity\" \"%V\": fdopen() "
                           "failed", &id->file);
        return NGX_ERROR;
    }

    /* PKCS#8, as "openssl genpkey" writes it */

    ok = PEM_write_PrivateKey(f, id->key, NULL, NULL, 0, NULL, NULL) == 1;
    ok = (fflush(f) == 0) && ok;
    ok = (fsync(fd) == 0) && ok;
    err = ngx_errno;
    ok = (fclose(f) == 0) && ok;

    if (!ok) {
        (void) unlink((char *) tmp);
        ngx_conf_log_error(NGX_LOG_EMERG, cf, err,
                           "\"openclaw_gateway_identity\" \"%V\": cannot "
                           "write the key file", &id->file);
        return NGX_ERROR;
    }

    if (link((char *) tmp, (char *) id->file.data) == -1) {
        err = ngx_errno;
        (void) unlink((char *) tmp);

        if (err == NGX_EEXIST) {
            EVP_PKEY_free(id->key);
            id->key = NULL;
            return ngx_http_openclaw_identity_load(cf, id);
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, err,
                           "\"openclaw_gateway_identity\" \"%V\": cannot "
                           "create the key file", &id->file);
        return NGX_ERROR;
    }

    (void) unlink((char *) tmp);

    id->created = 1;

    return NGX_OK;
}


static void
ngx_http_openclaw_identity_cleanup(void *data)
{
    ngx_http_openclaw_identity_t  *id = data;

    if (id->key) {
        EVP_PKEY_free(id->key);
        id->key = NULL;
    }
}


/* the first error OpenSSL queued, for a configuration error's reason */

static char *
ngx_http_openclaw_identity_ssl_reason(u_char *buf, size_t len)
{
    unsigned long  n;

    n = ERR_peek_error();

    if (n == 0) {
        ngx_cpystrn(buf, (u_char *) "no detail", len);

    } else {
        ERR_error_string_n(n, (char *) buf, len);
    }

    ERR_clear_error();

    return (char *) buf;
}


static ngx_int_t
ngx_http_openclaw_identity_init_zone(ngx_shm_zone_t *zone, void *data)
{
    ngx_file_info_t                   fi;
    ngx_slab_pool_t                  *shpool;
    ngx_http_openclaw_identity_t     *id;
    ngx_http_openclaw_identity_sh_t  *sh;

    shpool = (ngx_slab_pool_t *) zone->shm.addr;
    id = zone->data;

    if (data || zone->shm.exists) {
        sh = shpool->data;

    } else {
        sh = ngx_slab_calloc(shpool, sizeof(ngx_http_openclaw_identity_sh_t));
        if (sh == NULL) {
            return NGX_ERROR;
        }

        shpool->data = sh;
    }

    /* a reload with another key starts the pairing over */

    if (ngx_strcmp(sh->device_id, id->device_id) != 0) {
        ngx_memzero(sh, sizeof(ngx_http_openclaw_identity_sh_t));
        ngx_memcpy(sh->device_id, id->device_id, sizeof(id->device_id));
        sh->since = ngx_time();
        sh->token = (ngx_file_info(id->token_file.data, &fi)
                     != NGX_FILE_ERROR);
    }

    return NGX_OK;
}


/*
 * The master runs as root and the workers as the "user" of nginx.conf: a
 * key created here is handed to that user, as nginx does with its temp
 * paths, and the workers must be able to write the key's directory to
 * store the device token (a new file renamed over the old one).
 */

ngx_int_t
ngx_http_openclaw_identity_init_module(ngx_cycle_t *cycle,
    ngx_http_openclaw_identity_t *id)
{
    u_char           *p, *dir;
    ngx_file_info_t   fi;
    ngx_core_conf_t  *ccf;

    if (id == NULL || geteuid() != 0) {
        return NGX_OK;
    }

    ccf = (ngx_core_conf_t *) ngx_get_conf(cycle->conf_ctx, ngx_core_module);

    if (ccf->user == (ngx_uid_t) NGX_CONF_UNSET_UINT || ccf->user == 0) {
        return NGX_OK;
    }

    if (id->created) {
        if (chown((char *) id->file.data, ccf->user, ccf->group) == -1) {
            ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                          "\"openclaw_gateway_identity\" \"%V\": chown() "
                          "to user \"%s\" failed", &id->file, ccf->username);
            return NGX_ERROR;
        }

        id->created = 0;
    }

    dir = ngx_pnalloc(cycle->pool, id->file.len + 1);
    if (dir == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(dir, id->file.data, id->file.len + 1);

    for (p = dir + id->file.len; p > dir && *p != '/'; p--) { /* void */ }

    /* ngx_conf_full_name() made the path absolute */

    p[p == dir] = '\0';

    if (ngx_file_info(dir, &fi) == NGX_FILE_ERROR) {
        return NGX_OK;
    }

    if (!((fi.st_uid == ccf->user && (fi.st_mode & S_IWUSR))
          || (fi.st_gid == ccf->group && (fi.st_mode & S_IWGRP))
          || (fi.st_mode & S_IWOTH)))
    {
        ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                      "\"openclaw_gateway_identity\" \"%V\": user \"%s\" "
                      "cannot write to \"%s\", so the device token the "
                      "gateway issues is not kept: every connect uses the "
                      "shared secret; give that user a directory of its "
                      "own for the key", &id->file, ccf->username, dir);
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_openclaw_identity_sign(ngx_http_openclaw_identity_t *id,
    cJSON *params, u_char *nonce, size_t len, int64_t ts, ngx_log_t *log)
{
    int                              n;
    cJSON                           *client, *auth, *item, *device, *scopes;
    size_t                           size, plen;
    u_char                          *p, *last;
    ngx_int_t                        rc;
    ngx_http_openclaw_sig_fields_t   f;
    u_char                           sig[NGX_HTTP_OPENCLAW_SIGNATURE_LEN + 1];
    u_char                           joined[512], nonce_z[256];
    u_char                           payload[NGX_HTTP_OPENCLAW_PAYLOAD_MAX];

    if (id == NULL) {
        return NGX_OK;
    }

    if (len == 0 || len >= sizeof(nonce_z)) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "gateway challenge has no usable nonce, the device "
                      "cannot sign the connect");
        return NGX_ERROR;
    }

    ngx_memcpy(nonce_z, nonce, len);
    nonce_z[len] = '\0';

    /* a challenge without ts: this host's clock, which then must agree */

    if (ts <= 0) {
        ts = (int64_t) ngx_time() * 1000;
    }

    client = cJSON_GetObjectItemCaseSensitive(params, "client");
    auth = cJSON_GetObjectItemCaseSensitive(params, "auth");
    scopes = cJSON_GetObjectItemCaseSensitive(params, "scopes");

    if (auth == NULL) {
        auth = cJSON_AddObjectToObject(params, "auth");
        if (auth == NULL) {
            return NGX_ERROR;
        }
    }

    /*
     * A stored device token stands for the shared secret (4.4 step 6);
     * should the gateway refuse it, the next connect goes without it.
     */

    ngx_http_openclaw_identity_sent_token = 0;

    if (ngx_http_openclaw_identity_read_token(id,
                                   ngx_http_openclaw_identity_token, log))
    {
        cJSON_DeleteItemFromObjectCaseSensitive(auth, "token");
        cJSON_DeleteItemFromObjectCaseSensitive(auth, "password");

        if (cJSON_AddStringToObject(auth, "deviceToken",
                           (char *) ngx_http_openclaw_identity_token)
            == NULL)
        {
            return NGX_ERROR;
        }

        ngx_http_openclaw_identity_sent_token = 1;
    }

    /* the scopes as sent, in their order */

    p = joined;
    last = joined + sizeof(joined) - 1;

    cJSON_ArrayForEach(item, scopes) {
        if (!cJSON_IsString(item)) {
            continue;
        }

        size = ngx_strlen(item->valuestring);

        if ((size_t) (last - p) < size + 1) {
            return NGX_ERROR;
        }

        if (p != joined) {
            *p++ = ',';
        }

        p = ngx_cpymem(p, item->valuestring, size);
    }

    *p = '\0';

#define ngx_http_openclaw_identity_str(obj, name)                             \
    (cJSON_IsString(cJSON_GetObjectItemCaseSensitive(obj, name))              \
     ? cJSON_GetObjectItemCaseSensitive(obj, name)->valuestring : NULL)

    f.device_id = (char *) id->device_id;
    f.client_id = ngx_http_openclaw_identity_str(client, "id");
    f.client_mode = ngx_http_openclaw_identity_str(client, "mode");
    f.role = ngx_http_openclaw_identity_str(params, "role");
    f.scopes = (char *) joined;
    f.signed_at = ts;
    f.nonce = (char *) nonce_z;
    f.platform = ngx_http_openclaw_identity_str(client, "platform");
    f.device_family = ngx_http_openclaw_identity_str(client, "deviceFamily");

    f.token = ngx_http_openclaw_identity_str(auth, "token");

    if (f.token == NULL) {
        f.token = ngx_http_openclaw_identity_str(auth, "deviceToken");
    }

    if (f.role == NULL) {
        f.role = "operator";
    }

    plen = ngx_http_openclaw_sig_payload(payload, sizeof(payload),
                                         ngx_http_openclaw_identity_v2
                                         ? 2 : 3, &f);

    /* the payload holds the secret: it is never logged, and wiped */

    rc = NGX_ERROR;

    if (plen == 0) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "device signature payload too long");
        goto done;
    }

    n = ngx_http_openclaw_sig_sign(id->key, payload, plen, sig);

    if (n != 0) {
        ngx_ssl_error(NGX_LOG_ERR, log, 0, "EVP_DigestSign() failed");
        goto done;
    }

    device = cJSON_AddObjectToObject(params, "device");

    if (device == NULL
        || cJSON_AddStringToObject(device, "id", (char *) id->device_id)
           == NULL
        || cJSON_AddStringToObject(device, "publicKey",
                                   (char *) id->public_key) == NULL
        || cJSON_AddStringToObject(device, "signature", (char *) sig) == NULL
        /* a double holds any ms timestamp exactly, printed whole */
        || cJSON_AddNumberToObject(device, "signedAt", (double) ts) == NULL
        || cJSON_AddStringToObject(device, "nonce", (char *) nonce_z) == NULL)
    {
        goto done;
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, log, 0,
                   "openclaw device %s signs v%d%s",
                   id->device_id, ngx_http_openclaw_identity_v2 ? 2 : 3,
                   ngx_http_openclaw_identity_sent_token
                   ? " with its device token" : "");

    rc = NGX_OK;

done:

    ngx_explicit_memzero(payload, sizeof(payload));

    return rc;
}


ngx_uint_t
ngx_http_openclaw_identity_refused(ngx_http_openclaw_identity_t *id,
    cJSON *error, ngx_log_t *log)
{
    cJSON       *details, *item, *code;
    const char  *dc;

    code = cJSON_GetObjectItemCaseSensitive(error, "code");
    details = cJSON_GetObjectItemCaseSensitive(error, "details");
    item = cJSON_GetObjectItemCaseSensitive(details, "code");
    dc = cJSON_IsString(item) ? item->valuestring : "";

    /*
     * The link retries at least every 30 s while the cause stays: what
     * only an operator can fix is said once, until a link comes up.
     */

    if (id == NULL) {
        if ((ngx_strcmp(dc, "DEVICE_IDENTITY_REQUIRED") == 0
             || ngx_strcmp(dc, "PAIRING_REQUIRED") == 0)
            && !ngx_http_openclaw_identity_hinted)
        {
            ngx_http_openclaw_identity_hinted = 1;
            ngx_log_error(NGX_LOG_ERR, log, 0,
                          "the gateway wants a device identity: set "
                          "\"openclaw_gateway_identity\"");
        }

        return 0;
    }

    if (ngx_strcmp(dc, "PAIRING_REQUIRED") == 0
        || (cJSON_IsString(code)
            && ngx_strcmp(code->valuestring, "NOT_PAIRED") == 0
            && ngx_strcmp(dc, "DEVICE_IDENTITY_REQUIRED") != 0))
    {
        return ngx_http_openclaw_identity_pairing(id, details, log);
    }

    if (ngx_strcmp(dc, "DEVICE_AUTH_SIGNATURE_INVALID") == 0) {

        /* 4.3: the gateway tries v3, then v2; an older one knows v2 only */

        if (!ngx_http_openclaw_identity_v2) {
            ngx_http_openclaw_identity_v2 = 1;
            ngx_log_error(NGX_LOG_NOTICE, log, 0,
                          "gateway refused the v3 device signature, the "
                          "next connect signs the v2 payload");
            return NGX_LOG_NOTICE;
        }

        ngx_http_openclaw_identity_v2 = 0;
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "gateway refused both the v3 and the v2 device "
                      "signature of device %s", id->device_id);
        return NGX_LOG_ERR;
    }

    if (ngx_strcmp(dc, "DEVICE_AUTH_SIGNATURE_EXPIRED") == 0) {

        if (ngx_http_openclaw_identity_hinted) {
            return NGX_LOG_ERR;
        }

        ngx_http_openclaw_identity_hinted = 1;
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "gateway finds the device signature expired: the "
                      "clocks of this host and of the gateway differ by "
                      "more than it allows (about 2 minutes), set them "
                      "right (NTP)");
        return NGX_LOG_ERR;
    }

    if (ngx_http_openclaw_identity_sent_token
        && (ngx_strncmp(dc, "AUTH_", 5) == 0
            || ngx_strcmp(dc, "DEVICE_IDENTITY_REQUIRED") == 0))
    {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "gateway refused the device token of device %s "
                      "(%s), as after a revocation or a rotation: it is "
                      "forgotten, the next connect uses the shared secret "
                      "and the signed device, and pairing starts over if "
                      "the gateway asks for it", id->device_id, dc);

        ngx_http_openclaw_identity_forget_token(id, log);

        return NGX_LOG_WARN;
    }

    return 0;
}


/*
 * Pairing needs an operator on the gateway host: the request is logged,
 * with the command that approves it, once for all workers.
 */

static ngx_uint_t
ngx_http_openclaw_identity_pairing(ngx_http_openclaw_identity_t *id,
    cJSON *details, ngx_log_t *log)
{
    u_char                           *p;
    cJSON                            *item, *reason;
    size_t                            len;
    ngx_uint_t                        fresh;
    ngx_http_openclaw_identity_sh_t  *sh;
    u_char                            request[NGX_HTTP_OPENCLAW_REQUEST_ID_MAX
                                              + 1];

    item = cJSON_GetObjectItemCaseSensitive(details, "requestId");
    reason = cJSON_GetObjectItemCaseSensitive(details, "reason");

    /* it is quoted in a command line: only what the gateway makes of it */

    request[0] = '\0';

    if (cJSON_IsString(item)) {
        len = ngx_strlen(item->valuestring);

        for (p = (u_char *) item->valuestring; *p; p++) {
            if (!((*p >= '0' && *p <= '9') || ((*p | 0x20) >= 'a'
                                                && (*p | 0x20) <= 'z')
                  || *p == '.' || *p == '_' || *p == ':' || *p == '-'))
            {
                break;
            }
        }

        if (*p == '\0' && len && len <= NGX_HTTP_OPENCLAW_REQUEST_ID_MAX) {
            ngx_memcpy(request, item->valuestring, len + 1);
        }
    }

    fresh = 0;

    sh = ngx_http_openclaw_identity_lock(id);

    if (sh) {
        if (sh->state != NGX_HTTP_OPENCLAW_PAIRING_PENDING
            || ngx_strcmp(sh->request_id, request) != 0)
        {
            fresh = 1;
            sh->state = NGX_HTTP_OPENCLAW_PAIRING_PENDING;
            sh->since = ngx_time();
            ngx_memcpy(sh->request_id, request, sizeof(request));
        }

        ngx_http_openclaw_identity_unlock(id);

    } else {
        fresh = 1;
    }

    if (!fresh) {
        return NGX_LOG_INFO;
    }

    if (request[0] == '\0') {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "gateway wants device %s paired (%s), without a "
                      "request id: on the gateway host, run \"openclaw "
                      "devices list\" and \"openclaw devices approve "
                      "<requestId>\" for it; the link retries until then",
                      id->device_id,
                      cJSON_IsString(reason) ? reason->valuestring
                                             : "not-paired");
        return NGX_LOG_INFO;
    }

    ngx_log_error(NGX_LOG_WARN, log, 0,
                  "gateway wants device %s paired (%s), request %s: on the "
                  "gateway host, run \"openclaw devices approve %s\" "
                  "(\"openclaw devices list\" shows it); the link retries "
                  "and comes up once it is approved",
                  id->device_id,
                  cJSON_IsString(reason) ? reason->valuestring : "not-paired",
                  request, request);

    return NGX_LOG_INFO;
}


void
ngx_http_openclaw_identity_hello(ngx_http_openclaw_identity_t *id,
    cJSON *payload, ngx_log_t *log)
{
    cJSON                            *auth, *token;
    ngx_uint_t                        was;
    ngx_http_openclaw_identity_sh_t  *sh;

    ngx_http_openclaw_identity_hinted = 0;

    if (id == NULL) {
        return;
    }

    auth = cJSON_GetObjectItemCaseSensitive(payload, "auth");
    token = cJSON_GetObjectItemCaseSensitive(auth, "deviceToken");

    if (cJSON_IsString(token) && token->valuestring[0] != '\0'
        && ngx_strlen(token->valuestring) <= NGX_HTTP_OPENCLAW_DEVICE_TOKEN_MAX
        && !(ngx_http_openclaw_identity_sent_token
             && ngx_strcmp(token->valuestring,
                           ngx_http_openclaw_identity_token) == 0))
    {
        ngx_http_openclaw_identity_store_token(id, token->valuestring, log);
    }

    was = NGX_HTTP_OPENCLAW_PAIRING_PAIRED;

    sh = ngx_http_openclaw_identity_lock(id);

    if (sh) {
        was = sh->state;
        sh->state = NGX_HTTP_OPENCLAW_PAIRING_PAIRED;
        sh->request_id[0] = '\0';

        if (was != NGX_HTTP_OPENCLAW_PAIRING_PAIRED) {
            sh->since = ngx_time();
        }

        if (cJSON_IsString(token) || ngx_http_openclaw_identity_sent_token) {
            sh->token = 1;
        }

        ngx_http_openclaw_identity_unlock(id);
    }

    if (was == NGX_HTTP_OPENCLAW_PAIRING_PENDING) {
        ngx_log_error(NGX_LOG_NOTICE, log, 0,
                      "device %s is paired with the gateway", id->device_id);
    }
}


/* the stored token, NUL-terminated in "token", and its length; 0: none */

static size_t
ngx_http_openclaw_identity_read_token(ngx_http_openclaw_identity_t *id,
    u_char *token, ngx_log_t *log)
{
    cJSON      *json, *item;
    size_t      len;
    ssize_t     n;
    ngx_fd_t    fd;
    ngx_err_t   err;
    u_char      buf[2048];

    token[0] = '\0';

    fd = ngx_open_file(id->token_file.data, NGX_FILE_RDONLY, NGX_FILE_OPEN,
                       0);

    if (fd == NGX_INVALID_FILE) {
        err = ngx_errno;

        if (err != NGX_ENOENT) {
            ngx_log_error(NGX_LOG_WARN, log, err,
                          ngx_open_file_n " \"%V\" failed, connecting "
                          "without the device token", &id->token_file);
        }

        return 0;
    }

    n = read(fd, buf, sizeof(buf));
    err = ngx_errno;

    ngx_close_file(fd);

    if (n <= 0 || (size_t) n == sizeof(buf)) {
        ngx_log_error(NGX_LOG_WARN, log, n < 0 ? err : 0,
                      "cannot read the device token in \"%V\", connecting "
                      "without it", &id->token_file);
        return 0;
    }

    json = cJSON_ParseWithLength((char *) buf, n);
    ngx_explicit_memzero(buf, n);

    /* a token of another key is of no use to this one */

    item = cJSON_GetObjectItemCaseSensitive(json, "deviceId");

    if (!cJSON_IsString(item)
        || ngx_strcmp(item->valuestring, id->device_id) != 0)
    {
        cJSON_Delete(json);
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "\"%V\" holds no device token of device %s, "
                      "connecting without one", &id->token_file,
                      id->device_id);
        return 0;
    }

    item = cJSON_GetObjectItemCaseSensitive(json, "token");
    len = cJSON_IsString(item) ? ngx_strlen(item->valuestring) : 0;

    if (len == 0 || len > NGX_HTTP_OPENCLAW_DEVICE_TOKEN_MAX) {
        cJSON_Delete(json);
        return 0;
    }

    ngx_memcpy(token, item->valuestring, len + 1);
    ngx_explicit_memzero(item->valuestring, len);

    cJSON_Delete(json);

    return len;
}


/*
 * Workers may store at once: each writes a file of its own and renames
 * it into place, so that a reader sees one whole token or another.
 */

static void
ngx_http_openclaw_identity_store_token(ngx_http_openclaw_identity_t *id,
    const char *token, ngx_log_t *log)
{
    int           fd, ok;
    char         *text;
    cJSON        *json;
    size_t        len;
    ngx_err_t     err;
    u_char        tmp[NGX_MAX_PATH];
    u_char        stored[NGX_HTTP_OPENCLAW_DEVICE_TOKEN_MAX + 1];

    if (id->token_file.len + NGX_INT64_LEN + 8 > sizeof(tmp)) {
        return;
    }

    /* another worker may have stored it already */

    if (ngx_http_openclaw_identity_read_token(id, stored, log)
        && ngx_strcmp(stored, token) == 0)
    {
        ngx_explicit_memzero(stored, sizeof(stored));
        return;
    }

    ngx_explicit_memzero(stored, sizeof(stored));

    ngx_sprintf(tmp, "%V.%P.new%Z", &id->token_file, ngx_pid);

    json = cJSON_CreateObject();

    if (json == NULL
        || cJSON_AddStringToObject(json, "deviceId", (char *) id->device_id)
           == NULL
        || cJSON_AddStringToObject(json, "token", token) == NULL)
    {
        cJSON_Delete(json);
        return;
    }

    text = cJSON_PrintUnformatted(json);
    cJSON_Delete(json);

    if (text == NULL) {
        return;
    }

    len = ngx_strlen(text);

    fd = open((char *) tmp, O_WRONLY|O_CREAT|O_TRUNC|O_NOFOLLOW, 0600);

    if (fd == -1) {
        err = ngx_errno;
        ngx_explicit_memzero(text, len);
        cJSON_free(text);
        ngx_log_error(NGX_LOG_WARN, log, err,
                      "cannot store the device token: open() \"%s\" "
                      "failed; the next connects use the shared secret",
                      tmp);
        return;
    }

    ok = (write(fd, text, len) == (ssize_t) len);
    ok = (fsync(fd) == 0) && ok;
    err = ngx_errno;
    ok = (close(fd) == 0) && ok;

    ngx_explicit_memzero(text, len);
    cJSON_free(text);

    if (ok && rename((char *) tmp, (char *) id->token_file.data) == -1) {
        err = ngx_errno;
        ok = 0;
    }

    if (!ok) {
        (void) unlink((char *) tmp);
        ngx_log_error(NGX_LOG_WARN, log, err,
                      "cannot store the device token in \"%V\"; the next "
                      "connects use the shared secret", &id->token_file);
        return;
    }

    ngx_log_error(NGX_LOG_NOTICE, log, 0,
                  "device token of device %s stored in \"%V\"",
                  id->device_id, &id->token_file);
}


/* only the token that was refused: another worker may have a newer one */

static void
ngx_http_openclaw_identity_forget_token(ngx_http_openclaw_identity_t *id,
    ngx_log_t *log)
{
    ngx_http_openclaw_identity_sh_t  *sh;
    u_char                            stored[
                                          NGX_HTTP_OPENCLAW_DEVICE_TOKEN_MAX
                                          + 1];

    if (ngx_http_openclaw_identity_read_token(id, stored, log)
        && ngx_strcmp(stored, ngx_http_openclaw_identity_token) == 0)
    {
        if (unlink((char *) id->token_file.data) == -1
            && ngx_errno != NGX_ENOENT)
        {
            ngx_log_error(NGX_LOG_WARN, log, ngx_errno,
                          "unlink() \"%V\" failed", &id->token_file);
        }
    }

    ngx_explicit_memzero(stored, sizeof(stored));
    ngx_explicit_memzero(ngx_http_openclaw_identity_token,
                         sizeof(ngx_http_openclaw_identity_token));
    ngx_http_openclaw_identity_sent_token = 0;

    sh = ngx_http_openclaw_identity_lock(id);

    if (sh) {
        sh->token = 0;

        if (sh->state == NGX_HTTP_OPENCLAW_PAIRING_PAIRED) {
            sh->state = NGX_HTTP_OPENCLAW_PAIRING_UNKNOWN;
            sh->since = ngx_time();
        }

        ngx_http_openclaw_identity_unlock(id);
    }
}


u_char *
ngx_http_openclaw_identity_status(ngx_http_openclaw_identity_t *id,
    u_char *p)
{
    ngx_http_openclaw_identity_sh_t  *sh, copy;

    if (id == NULL) {
        return ngx_cpymem(p, "null", 4);
    }

    sh = ngx_http_openclaw_identity_lock(id);

    if (sh == NULL) {
        ngx_memzero(&copy, sizeof(copy));

    } else {
        copy = *sh;
        ngx_http_openclaw_identity_unlock(id);
    }

    /* a request id has only [A-Za-z0-9._:-]: no escaping needed */

    return ngx_sprintf(p, "{\"device_id\":\"%s\",\"pairing\":\"%s\","
                       "\"since\":%T,\"request_id\":%s%s%s,"
                       "\"device_token\":%s}",
                       id->device_id,
                       ngx_http_openclaw_pairing_states[copy.state],
                       copy.since,
                       copy.request_id[0] ? "\"" : "null",
                       copy.request_id, copy.request_id[0] ? "\"" : "",
                       copy.token ? "true" : "false");
}


static ngx_http_openclaw_identity_sh_t *
ngx_http_openclaw_identity_lock(ngx_http_openclaw_identity_t *id)
{
    ngx_slab_pool_t  *shpool;

    if (id->zone == NULL || id->zone->shm.addr == NULL) {
        return NULL;
    }

    shpool = (ngx_slab_pool_t *) id->zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    return shpool->data;
}


static void
ngx_http_openclaw_identity_unlock(ngx_http_openclaw_identity_t *id)
{
    ngx_slab_pool_t  *shpool;

    shpool = (ngx_slab_pool_t *) id->zone->shm.addr;

    ngx_shmtx_unlock(&shpool->mutex);
}
