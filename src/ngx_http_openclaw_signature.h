
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * The gateway's device authentication (gateway-protocol.md 4.3): the
 * device id, the payload a connect signs, its Ed25519 signature and the
 * base64url text they travel as.  No nginx types, so that it can be unit
 * tested against vectors computed with other tools.
 */


#ifndef _NGX_HTTP_OPENCLAW_SIGNATURE_H_INCLUDED_
#define _NGX_HTTP_OPENCLAW_SIGNATURE_H_INCLUDED_


#include <stddef.h>
#include <stdint.h>
#include <openssl/evp.h>


/* lengths without the terminating NUL */
#define NGX_HTTP_OPENCLAW_DEVICE_ID_LEN      64      /* hex SHA-256 */
#define NGX_HTTP_OPENCLAW_PUBLIC_KEY_LEN     43      /* 32 bytes, base64url */
#define NGX_HTTP_OPENCLAW_SIGNATURE_LEN      86      /* 64 bytes, base64url */

#define ngx_http_openclaw_base64url_len(n)   (((n) * 4 + 2) / 3)


/* the fields a connect signs, NUL-terminated; NULL is empty */

typedef struct {
    const char                 *device_id;
    const char                 *client_id;
    const char                 *client_mode;
    const char                 *role;
    const char                 *scopes;     /* joined with "," as sent */
    long long                   signed_at;  /* ms */
    const char                 *token;
    const char                 *nonce;
    const char                 *platform;
    const char                 *device_family;
} ngx_http_openclaw_sig_fields_t;


/*
 * RFC 4648 5 without padding into "dst" (room for
 * ngx_http_openclaw_base64url_len(len) + 1); returns the length written,
 * NUL not counted.
 */
size_t ngx_http_openclaw_base64url(uint8_t *dst, const uint8_t *src,
    size_t len);

/*
 * The device id (lowercase hex SHA-256 of the raw 32-byte public key)
 * and the public key in base64url, both NUL-terminated.  0, or -1 when
 * "key" is not an Ed25519 key.
 */
int ngx_http_openclaw_sig_identity(EVP_PKEY *key,
    uint8_t id[NGX_HTTP_OPENCLAW_DEVICE_ID_LEN + 1],
    uint8_t public_key[NGX_HTTP_OPENCLAW_PUBLIC_KEY_LEN + 1]);

/*
 * The payload of "version" 3 (with platform and device family) or 2,
 * into "buf"; returns its length, or 0 when it does not fit in "size".
 * The text is NUL-terminated.
 */
size_t ngx_http_openclaw_sig_payload(uint8_t *buf, size_t size,
    unsigned version, const ngx_http_openclaw_sig_fields_t *f);

/*
 * The Ed25519 signature of "len" bytes in base64url, NUL-terminated;
 * 0, or -1 on an OpenSSL error (left on its error queue).
 */
int ngx_http_openclaw_sig_sign(EVP_PKEY *key, const uint8_t *data,
    size_t len, uint8_t sig[NGX_HTTP_OPENCLAW_SIGNATURE_LEN + 1]);


#endif /* _NGX_HTTP_OPENCLAW_SIGNATURE_H_INCLUDED_ */
