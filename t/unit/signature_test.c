
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * Unit tests of the device-auth signature, printing TAP.
 *
 * Every expectation was computed without this code: the device id and
 * public key with "openssl pkey -pubout -outform DER | tail -c 32" and
 * sha256sum and basenc --base64url, the signatures with "openssl pkeyutl
 * -sign -rawin", and the normalized v3 payload and its signature with the
 * gateway's own buildDeviceAuthPayloadV3() and Node's crypto.sign() (the
 * openclaw 2026.9.6 package).  Ed25519 signatures are deterministic, so
 * they are fixed vectors.  Base64url comes from RFC 4648 10 and 5.
 *
 * Build: cc -std=gnu99 -O1 -g -W -Wall -Wextra -Werror
 *            -fsanitize=address,undefined -fno-sanitize-recover=all -Isrc
 *            src/ngx_http_openclaw_signature.c t/unit/signature_test.c
 *            -lcrypto
 */


#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "tap.h"

#include "ngx_http_openclaw_signature.h"


/* openssl genpkey -algorithm ed25519: a throwaway key, for the vectors */

static const char  key_pem[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MC4CAQAwBQYDK2VwBCIEIDX3ElRo/qovWDv4phk45LvXW+hub0ZYUbipUBlOVDrv\n"
    "-----END PRIVATE KEY-----\n";

#define DEVICE_ID                                                             \
    "6431f0fd9bbc94a843c00498cd91691b6e8674fd97226171754323ee5fdc656d"

#define PUBLIC_KEY  "GUWMRAdkXGx61vk7PRlCd5S0X5bHWqI-ox8HLVjCjug"


static int PRINTF_LIKE(3, 4)
is_str(const char *got, const char *expected, const char *fmt, ...)
{
    int      rc;
    va_list  args;

    va_start(args, fmt);
    rc = vok(got != NULL && strcmp(got, expected) == 0, fmt, args);
    va_end(args);

    if (!rc) {
        diag("got:      \"%s\"", got ? got : "(null)");
        diag("expected: \"%s\"", expected);
    }

    return rc;
}


static EVP_PKEY *
load_key(void)
{
    BIO       *bio;
    EVP_PKEY  *key;

    bio = BIO_new_mem_buf(key_pem, -1);
    key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    BIO_free(bio);

    return key;
}


static void
test_base64url(void)
{
    size_t   n;
    uint8_t  out[64];

    static const struct {
        const char  *in;
        size_t       len;
        const char  *out;
    } v[] = {
        { "", 0, "" },
        { "f", 1, "Zg" },
        { "fo", 2, "Zm8" },
        { "foo", 3, "Zm9v" },
        { "foob", 4, "Zm9vYg" },
        { "fooba", 5, "Zm9vYmE" },
        { "foobar", 6, "Zm9vYmFy" },
        /* the two letters base64url has instead of + and / */
        { "\xfb\xff", 2, "-_8" },
        { "\xff\xff\xfe", 3, "___-" },
        { "\x00\x00", 2, "AAA" }
    };

    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        memset(out, 'X', sizeof(out));
        n = ngx_http_openclaw_base64url(out, (const uint8_t *) v[i].in,
                                        v[i].len);

        is_str((char *) out, v[i].out, "base64url of %zu bytes is \"%s\"",
               v[i].len, v[i].out);
        ok(n == strlen(v[i].out) && n == ngx_http_openclaw_base64url_len(
                                             v[i].len),
           "base64url of %zu bytes: length %zu, no padding", v[i].len, n);
    }
}


static void
test_identity(EVP_PKEY *key)
{
    int        rc;
    uint8_t    id[NGX_HTTP_OPENCLAW_DEVICE_ID_LEN + 1];
    uint8_t    pub[NGX_HTTP_OPENCLAW_PUBLIC_KEY_LEN + 1];
    EVP_PKEY  *other;
    EVP_PKEY_CTX  *ctx;

    rc = ngx_http_openclaw_sig_identity(key, id, pub);

    ok(rc == 0, "identity of an Ed25519 key");
    is_str((char *) id, DEVICE_ID,
           "device id is the hex sha256 of the raw public key");
    is_str((char *) pub, PUBLIC_KEY,
           "public key is the raw 32 bytes in base64url, unpadded");

    /* another type of key is refused, not hashed */

    other = NULL;
    ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_X25519, NULL);

    if (ctx && EVP_PKEY_keygen_init(ctx) == 1) {
        (void) EVP_PKEY_keygen(ctx, &other);
    }

    EVP_PKEY_CTX_free(ctx);

    ok(other && ngx_http_openclaw_sig_identity(other, id, pub) == -1,
       "an X25519 key is not a device identity");

    EVP_PKEY_free(other);
}


static void
test_payload(void)
{
    size_t    n;
    uint8_t   buf[512];

    ngx_http_openclaw_sig_fields_t  f = {
        .device_id = DEVICE_ID,
        .client_id = "gateway-client",
        .client_mode = "backend",
        .role = "operator",
        .scopes = "operator.read,operator.write",
        .signed_at = 1795729751762LL,
        .token = "test-token",
        .nonce = "9ae2f6b0-56a0-4214-8ce5-d4fcaaf73ad3",
        .platform = "linux",
        .device_family = NULL
    };

    n = ngx_http_openclaw_sig_payload(buf, sizeof(buf), 3, &f);

    is_str((char *) buf,
           "v3|" DEVICE_ID "|gateway-client|backend|operator|"
           "operator.read,operator.write|1795729751762|test-token|"
           "9ae2f6b0-56a0-4214-8ce5-d4fcaaf73ad3|linux|",
           "v3 payload without a device family ends in \"|linux|\"");
    ok(n == strlen((char *) buf), "v3 payload length");

    f.scopes = "operator.read,operator.write,operator.admin";
    f.token = NULL;
    f.nonce = "nonce-1";

    n = ngx_http_openclaw_sig_payload(buf, sizeof(buf), 2, &f);

    is_str((char *) buf,
           "v2|" DEVICE_ID "|gateway-client|backend|operator|"
           "operator.read,operator.write,operator.admin|1795729751762||"
           "nonce-1",
           "v2 payload: no platform, an empty token");
    ok(n == strlen((char *) buf), "v2 payload length");

    /* as the gateway's buildDeviceAuthPayloadV3() makes it */

    f.scopes = "operator.read";
    f.signed_at = 1;
    f.token = "a|b";
    f.nonce = "n";
    f.platform = " Linux\t";
    f.device_family = "NGINX Box";

    (void) ngx_http_openclaw_sig_payload(buf, sizeof(buf), 3, &f);

    is_str((char *) buf,
           "v3|" DEVICE_ID "|gateway-client|backend|operator|operator.read|"
           "1|a|b|n|linux|nginx box",
           "v3 payload: platform and family trimmed, A-Z lowercased");

    /* too small: 0, never a cut payload */

    ok(ngx_http_openclaw_sig_payload(buf, 20, 3, &f) == 0,
       "a payload that does not fit gives 0");
    ok(ngx_http_openclaw_sig_payload(buf, strlen((char *) buf), 3, &f) == 0,
       "no room for the NUL gives 0");
    ok(ngx_http_openclaw_sig_payload(buf, strlen((char *) buf) + 1, 3, &f)
       == strlen("v3|" DEVICE_ID "|gateway-client|backend|operator|"
                 "operator.read|1|a|b|n|linux|nginx box"),
       "an exact fit is written");
}


static void
test_sign(EVP_PKEY *key)
{
    uint8_t  sig[NGX_HTTP_OPENCLAW_SIGNATURE_LEN + 1];

    static const struct {
        const char  *payload;
        const char  *sig;
        const char  *how;
    } v[] = {
        { "v3|" DEVICE_ID "|gateway-client|backend|operator|"
          "operator.read,operator.write|1795729751762|test-token|"
          "9ae2f6b0-56a0-4214-8ce5-d4fcaaf73ad3|linux|",
          "YM1yu7fjXqE9KwbOS8YQ8pf1izV71AQaN9jx-eM6CP5s9OkpNASI5wPpVdiPWmQ"
          "OIAVD7UrLfjfGlNeDYdZyCQ",
          "v3 (openssl pkeyutl)" },
        { "v2|" DEVICE_ID "|gateway-client|backend|operator|"
          "operator.read,operator.write,operator.admin|1795729751762||"
          "nonce-1",
          "lTMcWvjD8nds7rKMrz3gbzVFXdhe2RlKUMxu8aKqsWoldnB0Ztjj3Q4W2ptc6Rq"
          "d85UlBICUYhObaSwxxH09CA",
          "v2 (openssl pkeyutl)" },
        { "v3|" DEVICE_ID "|gateway-client|backend|operator|operator.read|"
          "1|a|b|n|linux|nginx box",
          "batP7WrgE-Kn6j0vaDAUtcEnPC8BhvDaim4sg414wDiHc3WB5wiNQu60ThZImqz"
          "r71Q4nZ-il22vZ7ovIbi8DQ",
          "v3 normalized (node crypto.sign)" }
    };

    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        memset(sig, 'X', sizeof(sig));

        ok(ngx_http_openclaw_sig_sign(key, (const uint8_t *) v[i].payload,
                                      strlen(v[i].payload), sig)
           == 0, "sign %s", v[i].how);
        is_str((char *) sig, v[i].sig, "signature of %s", v[i].how);
        ok(strlen((char *) sig) == NGX_HTTP_OPENCLAW_SIGNATURE_LEN,
           "signature of %s: 86 characters, no padding", v[i].how);
    }
}


int
main(void)
{
    EVP_PKEY  *key;

    key = load_key();

    if (key == NULL) {
        printf("Bail out! the test key does not load\n");
        return 1;
    }

    test_base64url();
    test_identity(key);
    test_payload();
    test_sign(key);

    EVP_PKEY_free(key);

    printf("1..%u\n", tap_n);

    if (tap_failed) {
        fflush(stdout);
        fprintf(stderr, "# failed %u of %u tests\n", tap_failed, tap_n);
        return 1;
    }

    return 0;
}
