
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * RFC 3629 reference validator shared by the fuzz targets.  It decodes
 * code points and checks the interval that a prefix can still reach,
 * unlike the codec's table of allowed byte ranges, so that the two
 * cannot share a mistake.
 */


#ifndef _FUZZ_UTF8_REF_H_INCLUDED_
#define _FUZZ_UTF8_REF_H_INCLUDED_


#include <stddef.h>
#include <stdint.h>


/*
 * Returns the index of the first byte after which the input can no longer
 * be completed to valid UTF-8, or "len" when there is none; "*tail" is
 * where an incomplete character at the end starts ("len" when the input
 * ends on a character boundary).
 */

static size_t
ref_utf8(const uint8_t *p, size_t len, size_t *tail)
{
    size_t    i, k, n, rem;
    uint8_t   c;
    uint32_t  cp, lo, hi, min;

    *tail = len;
    i = 0;

    while (i < len) {
        c = p[i];

        if (c < 0x80) {
            i++;
            continue;
        }

        if ((c & 0xe0) == 0xc0) {
            n = 2;
            cp = c & 0x1f;
            min = 0x80;

        } else if ((c & 0xf0) == 0xe0) {
            n = 3;
            cp = c & 0x0f;
            min = 0x800;

        } else if ((c & 0xf8) == 0xf0) {
            n = 4;
            cp = c & 0x07;
            min = 0x10000;

        } else {
            return i;
        }

        for (k = 1; /* void */ ; k++) {
            rem = n - k;
            lo = cp << (6 * rem);
            hi = lo | ((1u << (6 * rem)) - 1);

            /* no completion reaches a code point that may be encoded */

            if (hi < min || lo > 0x10ffff || (lo >= 0xd800 && hi <= 0xdfff)) {
                return i + k - 1;
            }

            if (k == n) {
                break;
            }

            if (i + k == len) {
                *tail = i;
                return len;
            }

            c = p[i + k];
            if ((c & 0xc0) != 0x80) {
                return i + k;
            }

            cp = (cp << 6) | (c & 0x3f);
        }

        i += n;
    }

    return len;
}


#endif /* _FUZZ_UTF8_REF_H_INCLUDED_ */
