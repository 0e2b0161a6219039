/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * libFuzzer target for the header values the HTTP endpoint and the
 * callbacks parse (src/ngx_http_openclaw_headers.c).  The whole input is
 * the value (or, for header_value, the line), given to each parser in a
 * buffer of exactly its size, for ASan; each result is checked against a
 * plainer reference written here:
 *
 *   - media_is agrees with: the bytes before the first ";", without
 *     spaces and tabs around them, are the type, without case;
 *   - accepts is true only if some element of the comma-separated list,
 *     before its ";", trimmed, is the type; and it is true whenever such
 *     an element has no parameter at all;
 *   - header_value finds a value only after "Name:", inside the input,
 *     with no white space around it and no CR or LF at its end;
 *   - delta_seconds is -1 unless the input is all digits; else it is the
 *     number (strtoul of up to 9 digits), capped.
 *
 * Build: clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc
 *            src/ngx_http_openclaw_headers.c fuzz/fuzz_headers.c
 */


#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ngx_http_openclaw_headers.h"


#define check(cond)  do { if (!(cond)) abort(); } while (0)


static int
is_ows(uint8_t c)
{
    return c == ' ' || c == '\t';
}


/* [s, e) without white space around it is "type", without case */

static int
ref_is(const uint8_t *s, const uint8_t *e, const char *type)
{
    while (s < e && is_ows(*s)) {
        s++;
    }

    while (e > s && is_ows(e[-1])) {
        e--;
    }

    return (size_t) (e - s) == strlen(type)
           && strncasecmp((const char *) s, type, e - s) == 0;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    long            n;
    size_t          i, vlen;
    uint8_t        *buf;
    const uint8_t  *p, *e, *semi, *value;
    int             listed, bare, got;
    char            digits[16];

    buf = malloc(size ? size : 1);
    if (buf == NULL) {
        return 0;
    }

    memcpy(buf, data, size);

    /* media_is */

    semi = memchr(buf, ';', size);
    check(ngx_http_openclaw_media_is(buf, size, "application/json")
          == ref_is(buf, semi ? semi : buf + size, "application/json"));

    /* accepts */

    listed = 0;
    bare = 0;

    for (p = buf; p <= buf + size; p = e + 1) {
        e = memchr(p, ',', buf + size - p);

        if (e == NULL) {
            e = buf + size;
        }

        semi = memchr(p, ';', e - p);

        if (ref_is(p, semi ? semi : e, "text/event-stream")) {
            listed = 1;
            bare |= (semi == NULL);
        }

        if (e == buf + size) {
            break;
        }
    }

    got = ngx_http_openclaw_accepts(buf, size, "text/event-stream");
    check(!got || listed);
    check(got || !bare);

    /* header_value */

    if (ngx_http_openclaw_header_value(buf, size, "Retry-After", &value,
                                       &vlen))
    {
        check(size > 11 && buf[11] == ':');
        check(strncasecmp((const char *) buf, "retry-after", 11) == 0);
        check(value >= buf + 12 && value + vlen <= buf + size);

        if (vlen) {
            check(!is_ows(value[0]) && !is_ows(value[vlen - 1]));
            check(value[vlen - 1] != '\r' && value[vlen - 1] != '\n');
        }
    }

    /* delta_seconds */

    n = ngx_http_openclaw_delta_seconds(buf, size, 600);

    for (i = 0; i < size && buf[i] >= '0' && buf[i] <= '9'; i++) {
        /* void */
    }

    if (size == 0 || i < size) {
        check(n == -1);

    } else {
        check(n >= 0 && n <= 600);

        if (size <= 9) {
            memcpy(digits, buf, size);
            digits[size] = '\0';
            check(n == (strtol(digits, NULL, 10) < 600
                        ? strtol(digits, NULL, 10) : 600));
        }
    }

    free(buf);

    return 0;
}
