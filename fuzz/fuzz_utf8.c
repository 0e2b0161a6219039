
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * libFuzzer target for the incremental UTF-8 validator and for the close
 * reason cut, both compared with the RFC 3629 reference in
 * fuzz_utf8_ref.h.  The whole input is the text.
 *
 * Build: clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc
 *            src/ngx_http_openclaw_ws.c fuzz/fuzz_utf8.c -lcrypto
 */


#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ngx_http_openclaw_ws.h"
#include "fuzz_utf8_ref.h"


#define CHECK(cond)                                                           \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, \
                    #cond);                                                   \
            abort();                                                          \
        }                                                                     \
    } while (0)


/* every split costs a pass over the input: only short inputs get all */
#define ALL_SPLITS_MAX  512


static void
check_split(const uint8_t *in, size_t len, size_t k, size_t bad, size_t tail)
{
    int       rc;
    size_t    pbad, ptail;
    uint32_t  state;

    state = 0;
    rc = ngx_http_openclaw_utf8_validate(&state, in, k);

    pbad = ref_utf8(in, k, &ptail);

    CHECK((rc == -1) == (pbad < k));

    if (rc != 0) {
        return;
    }

    /* 0 exactly on a character boundary */

    CHECK((state != 0) == (ptail < k));

    rc = ngx_http_openclaw_utf8_validate(&state, in + k, len - k);

    CHECK((rc == -1) == (bad < len));

    if (rc == 0) {
        CHECK((state != 0) == (tail < len));
    }
}


static void
check_close_payload(const uint8_t *in, size_t len, int valid)
{
    size_t    n, cut, bad, tail, next;
    uint8_t  *out, c;

    /* exactly the largest payload, so that ASan sees any overflow */

    out = malloc(NGX_HTTP_OPENCLAW_WS_MAX_CONTROL);
    CHECK(out != NULL);

    CHECK(ngx_http_openclaw_ws_close_payload(out, 0, (const char *) in, len)
          == 0);

    n = ngx_http_openclaw_ws_close_payload(out, 4321, (const char *) in, len);

    CHECK(n >= 2 && n <= NGX_HTTP_OPENCLAW_WS_MAX_CONTROL);
    CHECK(out[0] == (4321 >> 8) && out[1] == (4321 & 0xff));

    cut = n - 2;

    CHECK(cut <= len);
    CHECK(memcmp(out + 2, in, cut) == 0);

    if (valid) {

        /* whole characters in, whole characters out, and all that fit */

        bad = ref_utf8(out + 2, cut, &tail);
        CHECK(bad == cut && tail == cut);

        if (cut < len) {
            c = in[cut];
            next = (c < 0x80) ? 1 : (c < 0xe0) ? 2 : (c < 0xf0) ? 3 : 4;
            CHECK(cut + next > NGX_HTTP_OPENCLAW_WS_MAX_REASON);
        }
    }

    free(out);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int       rc;
    size_t    bad, tail, i, k;
    uint32_t  state;

    bad = ref_utf8(data, size, &tail);

    state = 0;
    rc = ngx_http_openclaw_utf8_validate(&state, data, size);

    CHECK(rc == 0 || rc == -1);
    CHECK((rc == -1) == (bad < size));

    if (rc == 0) {
        CHECK((state != 0) == (tail < size));
    }

    /* fail fast: -1 at the very byte the reference stops at */

    state = 0;

    for (i = 0; i < size; i++) {
        if (ngx_http_openclaw_utf8_validate(&state, data + i, 1) != 0) {
            break;
        }
    }

    CHECK(i == bad);

    if (size <= ALL_SPLITS_MAX) {
        for (k = 0; k <= size; k++) {
            check_split(data, size, k, bad, tail);
        }

    } else {
        for (k = 0; k <= size; k += 1 + k / 4) {
            check_split(data, size, k, bad, tail);
        }
    }

    check_close_payload(data, size, bad == size && tail == size);

    return 0;
}
