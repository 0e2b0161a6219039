
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * The HTTP header values the HTTP endpoint and the callbacks read
 * themselves: a request's Content-Type and Accept, a receiver's
 * Retry-After.  No nginx types, so that they are fuzzed on their own.
 */


#ifndef _NGX_HTTP_OPENCLAW_HEADERS_H_INCLUDED_
#define _NGX_HTTP_OPENCLAW_HEADERS_H_INCLUDED_


#include <stddef.h>
#include <stdint.h>


/*
 * The media type of "p" (a Content-Type value: type/subtype, then maybe
 * ";" and parameters) is "type", compared without case; 1 or 0.
 */
int ngx_http_openclaw_media_is(const uint8_t *p, size_t len,
    const char *type);

/*
 * An Accept value lists "type" (without case, parameters ignored), and
 * not with q=0; 1 or 0.
 */
int ngx_http_openclaw_accepts(const uint8_t *p, size_t len,
    const char *type);

/*
 * A header line as libcurl gives it ("Name: value\r\n"): when its name
 * is "name" (without case), the value, without the white space around
 * it, in "*value" and "*vlen", and 1; else 0.
 */
int ngx_http_openclaw_header_value(const uint8_t *p, size_t len,
    const char *name, const uint8_t **value, size_t *vlen);

/*
 * A Retry-After value in delta-seconds, at most "max"; -1 when it is not
 * (an HTTP date, or invalid).
 */
long ngx_http_openclaw_delta_seconds(const uint8_t *p, size_t len,
    long max);


#endif /* _NGX_HTTP_OPENCLAW_HEADERS_H_INCLUDED_ */
