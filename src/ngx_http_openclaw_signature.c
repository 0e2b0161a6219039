
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#include <stdio.h>
#include <string.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "ngx_http_openclaw_signature.h"


static uint8_t *ngx_http_openclaw_sig_field(uint8_t *p, uint8_t *last,
    const char *s, unsigned normalize);


size_t
ngx_http_openclaw_base64url(uint8_t *dst, const uint8_t *src, size_t len)
{
    uint8_t        *d;
    const uint8_t  *s;

    static const char  alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    d = dst;
    s = src;

    while (len > 2) {
        *d++ = alphabet[s[0] >> 2];
        *d++ = alphabet[((s[0] & 0x03) << 4) | (s[1] >> 4)];
        *d++ = alphabet[((s[1] & 0x0f) << 2) | (s[2] >> 6)];
        *d++ = alphabet[s[2] & 0x3f];

        s += 3;
        len -= 3;
    }

    if (len) {
        *d++ = alphabet[s[0] >> 2];

        if (len == 1) {
            *d++ = alphabet[(s[0] & 0x03) << 4];

        } else {
            *d++ = alphabet[((s[0] & 0x03) << 4) | (s[1] >> 4)];
            *d++ = alphabet[(s[1] & 0x0f) << 2];
        }
    }

    *d = '\0';

    return d - dst;
}


int
ngx_http_openclaw_sig_identity(EVP_PKEY *key,
    uint8_t id[NGX_HTTP_OPENCLAW_DEVICE_ID_LEN + 1],
    uint8_t public_key[NGX_HTTP_OPENCLAW_PUBLIC_KEY_LEN + 1])
{
    size_t    len, i;
    uint8_t   raw[32], md[SHA256_DIGEST_LENGTH];

    static const char  hex[] = "0123456789abcdef";

    if (EVP_PKEY_id(key) != EVP_PKEY_ED25519) {
        return -1;
    }

    len = sizeof(raw);

    if (EVP_PKEY_get_raw_public_key(key, raw, &len) != 1 || len != 32) {
        return -1;
    }

    if (SHA256(raw, len, md) == NULL) {
        return -1;
    }

    for (i = 0; i < SHA256_DIGEST_LENGTH; i++) {
        id[2 * i] = hex[md[i] >> 4];
        id[2 * i + 1] = hex[md[i] & 0x0f];
    }

    id[2 * i] = '\0';

    (void) ngx_http_openclaw_base64url(public_key, raw, len);

    return 0;
}


/*
 * The gateway joins the fields with "|" as they are, so a field is
 * copied whole; platform and device family are trimmed and their ASCII
 * letters lowercased, as the gateway does before it verifies.
 */

size_t
ngx_http_openclaw_sig_payload(uint8_t *buf, size_t size, unsigned version,
    const ngx_http_openclaw_sig_fields_t *f)
{
    int       n;
    uint8_t  *p, *last;
    char      signed_at[32];

    if (size == 0) {
        return 0;
    }

    /* the separator after the last field becomes the NUL */

    p = buf;
    last = buf + size;

    p = ngx_http_openclaw_sig_field(p, last, version == 2 ? "v2" : "v3", 0);
    p = ngx_http_openclaw_sig_field(p, last, f->device_id, 0);
    p = ngx_http_openclaw_sig_field(p, last, f->client_id, 0);
    p = ngx_http_openclaw_sig_field(p, last, f->client_mode, 0);
    p = ngx_http_openclaw_sig_field(p, last, f->role, 0);
    p = ngx_http_openclaw_sig_field(p, last, f->scopes, 0);

    n = snprintf(signed_at, sizeof(signed_at), "%lld", f->signed_at);
    if (n < 0 || (size_t) n >= sizeof(signed_at)) {
        return 0;
    }

    p = ngx_http_openclaw_sig_field(p, last, signed_at, 0);
    p = ngx_http_openclaw_sig_field(p, last, f->token, 0);
    p = ngx_http_openclaw_sig_field(p, last, f->nonce, 0);

    if (version != 2) {
        p = ngx_http_openclaw_sig_field(p, last, f->platform, 1);
        p = ngx_http_openclaw_sig_field(p, last, f->device_family, 1);
    }

    if (p == NULL || p == buf) {
        return 0;
    }

    p--;
    *p = '\0';

    return p - buf;
}


/* appends "s" and a "|"; NULL once out of room */

static uint8_t *
ngx_http_openclaw_sig_field(uint8_t *p, uint8_t *last, const char *s,
    unsigned normalize)
{
    size_t       len;
    const char  *end;

    if (p == NULL) {
        return NULL;
    }

    if (s == NULL) {
        s = "";
    }

    len = strlen(s);
    end = s + len;

    if (normalize) {
        while (s < end && (*s == ' ' || (*s >= '\t' && *s <= '\r'))) {
            s++;
        }

        while (end > s
               && (end[-1] == ' ' || (end[-1] >= '\t' && end[-1] <= '\r')))
        {
            end--;
        }

        len = end - s;
    }

    if ((size_t) (last - p) < len + 1) {
        return NULL;
    }

    while (s < end) {
        *p++ = (normalize && *s >= 'A' && *s <= 'Z') ? *s++ | 0x20 : *s++;
    }

    *p++ = '|';

    return p;
}


int
ngx_http_openclaw_sig_sign(EVP_PKEY *key, const uint8_t *data, size_t len,
    uint8_t sig[NGX_HTTP_OPENCLAW_SIGNATURE_LEN + 1])
{
    int          rc;
    size_t       n;
    uint8_t      raw[64];
    EVP_MD_CTX  *ctx;

    ctx = EVP_MD_CTX_new();
    if (ctx == NULL) {
        return -1;
    }

    /* Ed25519 hashes on its own: no digest, one shot */

    n = sizeof(raw);

    rc = (EVP_DigestSignInit(ctx, NULL, NULL, NULL, key) == 1
          && EVP_DigestSign(ctx, raw, &n, data, len) == 1
          && n == sizeof(raw))
         ? 0 : -1;

    EVP_MD_CTX_free(ctx);

    if (rc == 0) {
        (void) ngx_http_openclaw_base64url(sig, raw, n);
    }

    return rc;
}
