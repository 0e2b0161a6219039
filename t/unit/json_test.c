/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * Unit tests of the JSON scanner, printing TAP.
 *
 * Expectations come from RFC 8259 (grammar, escapes, white space), RFC
 * 3629 (UTF-8) and the contract in ngx_http_openclaw_json.h, never from
 * the scanner's output: spans are located in the test texts by hand
 * (find()), and decoded strings are spelt out as bytes.
 *
 * Build: cc -std=gnu99 -O1 -g -W -Wall -Wextra -Werror
 *            -fsanitize=address,undefined -fno-sanitize-recover=all -Isrc
 *            src/ngx_http_openclaw_json.c t/unit/json_test.c
 */


#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tap.h"

#include "ngx_http_openclaw_json.h"



#define J_INVALID       NGX_HTTP_OPENCLAW_JSON_INVALID
#define J_OBJECT        NGX_HTTP_OPENCLAW_JSON_OBJECT
#define J_ARRAY         NGX_HTTP_OPENCLAW_JSON_ARRAY
#define J_STRING        NGX_HTTP_OPENCLAW_JSON_STRING
#define J_NUMBER        NGX_HTTP_OPENCLAW_JSON_NUMBER
#define J_TRUE          NGX_HTTP_OPENCLAW_JSON_TRUE
#define J_FALSE         NGX_HTTP_OPENCLAW_JSON_FALSE
#define J_NULL          NGX_HTTP_OPENCLAW_JSON_NULL

/* RFC 8259 has no limit; the scanner's is 128 */
#define MAX_DEPTH       128


typedef ngx_http_openclaw_jv_t  jv_t;




static int PRINTF_LIKE(3, 4)
is(long long got, long long expected, const char *fmt, ...)
{
    int      rc;
    va_list  args;

    va_start(args, fmt);
    rc = vok(got == expected, fmt, args);
    va_end(args);

    if (!rc) {
        diag("got %lld, expected %lld", got, expected);
    }

    return rc;
}


static void
hex(const char *label, const uint8_t *p, size_t len)
{
    char    line[3 * 40 + 8];
    size_t  i, n;

    n = 0;

    for (i = 0; i < len && i < 40; i++) {
        n += snprintf(line + n, sizeof(line) - n, " %02x", p[i]);
    }

    diag("%s (%zu bytes):%s%s", label, len, line, len > 40 ? " ..." : "");
}


static int PRINTF_LIKE(5, 6)
is_bytes(const uint8_t *got, size_t glen, const uint8_t *exp, size_t elen,
    const char *fmt, ...)
{
    int      rc, pass;
    va_list  args;

    pass = (glen == elen && (elen == 0 || memcmp(got, exp, elen) == 0));

    va_start(args, fmt);
    rc = vok(pass, fmt, args);
    va_end(args);

    if (!rc) {
        hex("got", got, glen);
        hex("expected", exp, elen);
    }

    return rc;
}


static const char *
tname(int t)
{
    static const char  *names[] = {
        "invalid", "object", "array", "string", "number", "true", "false",
        "null"
    };

    return (t >= 0 && t <= J_NULL) ? names[t] : "?";
}


/* a copy of exactly "len" bytes, so that ASan sees any read past a text */

static uint8_t *
dup(const void *p, size_t len)
{
    uint8_t  *d;

    d = malloc(len ? len : 1);

    if (d == NULL) {
        perror("malloc");
        exit(2);
    }

    if (len) {
        memcpy(d, p, len);
    }

    return d;
}


/* the offset of the "nth" (from 1) occurrence of "needle" in "text" */

static size_t
find(const char *text, const char *needle, int nth)
{
    const char  *p;

    p = text - 1;

    while (nth--) {
        p = strstr(p + 1, needle);

        if (p == NULL) {
            fprintf(stderr, "test bug: \"%s\" not in \"%s\"\n", needle, text);
            exit(2);
        }
    }

    return p - text;
}


/* valid and invalid texts */

static void
valid_len(const char *text, size_t len, int type, const char *value,
    const char *name)
{
    int       rc;
    jv_t      v;
    size_t    off;
    uint8_t  *t;

    t = dup(text, len);
    memset(&v, 0xa5, sizeof(v));

    rc = ngx_http_openclaw_jv_parse(t, len, &v, NULL);

    if (!ok(rc == 0, "valid: %s", name)) {
        diag("text: %.*s", (int) len, text);
        free(t);
        return;
    }

    if (!ok(v.type == (ngx_http_openclaw_json_type_e) type,
            "valid: %s: top value is %s", name, tname(type)))
    {
        diag("type %s", tname(v.type));
    }

    /* the top value is "value", found first in the text */

    off = find(text, value, 1);

    if (!ok(v.start == t + off && v.len == strlen(value),
            "valid: %s: span of the top value", name))
    {
        diag("start at %ld, len %zu; expected %zu, %zu",
             (long) (v.start - t), v.len, off, strlen(value));
    }

    free(t);
}


static void
valid(const char *text, int type, const char *value, const char *name)
{
    valid_len(text, strlen(text), type, value, name);
}


static void
refused(const char *text, size_t len, int exp, const char *name)
{
    int       rc;
    jv_t      v;
    uint8_t  *t;

    t = dup(text, len);
    memset(&v, 0xa5, sizeof(v));

    rc = ngx_http_openclaw_jv_parse(t, len, &v, NULL);

    if (!ok(rc == exp && v.type == J_INVALID, "%s: %s",
            exp == -1 ? "invalid" : "value then more", name))
    {
        diag("rc %d, type %s", rc, tname(v.type));
    }

    free(t);
}


/* not JSON: -1 */

static void
invalid_len(const char *text, size_t len, const char *name)
{
    refused(text, len, -1, name);
}


static void
invalid(const char *text, const char *name)
{
    refused(text, strlen(text), -1, name);
}


/* a valid value followed by more than white space: -2 */

static void
trailing_len(const char *text, size_t len, const char *name)
{
    refused(text, len, -2, name);
}


static void
trailing(const char *text, const char *name)
{
    refused(text, strlen(text), -2, name);
}


static void
test_valid(void)
{
    /* every value type at the top, RFC 8259 2 allows any value */

    valid("{}", J_OBJECT, "{}", "empty object");
    valid("[]", J_ARRAY, "[]", "empty array");
    valid("{ }", J_OBJECT, "{ }", "empty object with a space");
    valid("[\t\r\n ]", J_ARRAY, "[\t\r\n ]", "empty array, all white space");
    valid("\"\"", J_STRING, "\"\"", "empty string");
    valid("\"abc\"", J_STRING, "\"abc\"", "string");
    valid("true", J_TRUE, "true", "true");
    valid("false", J_FALSE, "false", "false");
    valid("null", J_NULL, "null", "null");

    /* numbers, RFC 8259 6 */

    valid("0", J_NUMBER, "0", "number 0");
    valid("-0", J_NUMBER, "-0", "number -0");
    valid("123", J_NUMBER, "123", "number 123");
    valid("-123", J_NUMBER, "-123", "number -123");
    valid("1.5", J_NUMBER, "1.5", "number 1.5");
    valid("1.5e10", J_NUMBER, "1.5e10", "number 1.5e10");
    valid("-1E-2", J_NUMBER, "-1E-2", "number -1E-2");
    valid("1e+2", J_NUMBER, "1e+2", "number 1e+2");
    valid("0.0", J_NUMBER, "0.0", "number 0.0");
    valid("0e0", J_NUMBER, "0e0", "number 0e0");
    valid("-0.5E+07", J_NUMBER, "-0.5E+07", "number -0.5E+07");
    valid("10", J_NUMBER, "10", "number 10 (a 0 after the first digit)");
    valid("1234567890123456789012345678901234567890"
          "1234567890123456789012345678901234567890",
          J_NUMBER,
          "1234567890123456789012345678901234567890"
          "1234567890123456789012345678901234567890",
          "number of 80 digits (no range limit in the grammar)");
    valid("1e999", J_NUMBER, "1e999", "number 1e999 (no range limit)");

    /* white space, RFC 8259 2: space, tab, LF, CR around every token */

    valid(" \t\r\n1 \t\r\n", J_NUMBER, "1", "white space around a number");
    valid("  \"a\"  ", J_STRING, "\"a\"", "white space around a string");
    valid(" \n{ \"a\" \t: \r[ 1 , true\n,\tnull ] ,\"b\":\n{ } }\r\n",
          J_OBJECT,
          "{ \"a\" \t: \r[ 1 , true\n,\tnull ] ,\"b\":\n{ } }",
          "white space everywhere");
    valid("{\"a\":1,\"b\":[1,2],\"c\":{\"d\":null}}", J_OBJECT,
          "{\"a\":1,\"b\":[1,2],\"c\":{\"d\":null}}", "no white space");

    /* all types, nested */

    valid("[1,-2.5e3,\"s\",true,false,null,{},[],{\"a\":[{\"b\":[[]]}]}]",
          J_ARRAY,
          "[1,-2.5e3,\"s\",true,false,null,{},[],{\"a\":[{\"b\":[[]]}]}]",
          "array of every type, nested");
    valid("{\"o\":{\"a\":{\"b\":{}}},\"s\":\"x\",\"n\":0,\"t\":true,"
          "\"f\":false,\"z\":null,\"a\":[[1],[2,[3]]]}",
          J_OBJECT,
          "{\"o\":{\"a\":{\"b\":{}}},\"s\":\"x\",\"n\":0,\"t\":true,"
          "\"f\":false,\"z\":null,\"a\":[[1],[2,[3]]]}",
          "object of every type, nested");
    valid("{\"\":\"\"}", J_OBJECT, "{\"\":\"\"}", "empty name");
    valid("{\"a\":1,\"a\":2}", J_OBJECT, "{\"a\":1,\"a\":2}",
          "duplicate names (RFC 8259 4: SHOULD be unique, not MUST)");

    /* strings, RFC 8259 7 */

    valid("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", J_STRING,
          "\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", "string of every short escape");
    valid("\"\\u0041\\u00e9\\u20AC\\uD83D\\uDE00\"", J_STRING,
          "\"\\u0041\\u00e9\\u20AC\\uD83D\\uDE00\"",
          "string of \\u escapes, both cases of hex");
    valid("\"\\ud800\"", J_STRING, "\"\\ud800\"",
          "string with a lone surrogate escape (grammar allows it)");
    valid("\" \x7f\"", J_STRING, "\" \x7f\"",
          "string with U+0020 and U+007F (not control characters)");
    valid("\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"", J_STRING,
          "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"",
          "string of raw UTF-8");
    valid("\"{[]},:\"", J_STRING, "\"{[]},:\"",
          "string of structural characters");
    valid("[\"]\"]", J_ARRAY, "[\"]\"]", "array of a string \"]\"");
    valid("{\"}\":\"{\"}", J_OBJECT, "{\"}\":\"{\"}",
          "object with braces in name and value");
    valid("\"\\\\\"", J_STRING, "\"\\\\\"",
          "string ending in an escaped backslash");
}


static void
test_invalid(void)
{
    char    *t;
    size_t   i;

    invalid("", "empty text");

    {
        jv_t  v;

        v.type = J_OBJECT;
        ok(ngx_http_openclaw_jv_parse(NULL, 0, &v, NULL) == -1
           && v.type == J_INVALID,
           "invalid: empty text at NULL (an empty frame's data)");
    }

    invalid(" \t\r\n", "white space only");
    invalid("\xef\xbb\xbf{}", "a byte order mark (not white space)");

    /* structure */

    invalid("[1,]", "trailing comma in an array");
    invalid("{\"a\":1,}", "trailing comma in an object");
    invalid("[,1]", "leading comma in an array");
    invalid("{,\"a\":1}", "leading comma in an object");
    invalid("[1,,2]", "two commas in an array");
    invalid("[1 2]", "missing comma in an array");
    invalid("{\"a\":1 \"b\":2}", "missing comma in an object");
    invalid("{\"a\" 1}", "missing colon");
    invalid("{\"a\"::1}", "two colons");
    invalid("{\"a\"}", "name without a value");
    invalid("{\"a\":}", "colon without a value");
    invalid("{1:1}", "number as a name");
    invalid("{a:1}", "bare word as a name");
    invalid("{'a':1}", "single-quoted name");
    invalid("{null:1}", "null as a name");
    invalid("[", "unclosed array");
    invalid("{", "unclosed object");
    invalid("[1", "unclosed array after a value");
    invalid("[1,", "unclosed array after a comma");
    invalid("{\"a\":1", "unclosed object after a value");
    invalid("{\"a\"", "unclosed object after a name");
    invalid("{\"a\":", "unclosed object after a colon");
    invalid("]", "lone close bracket");
    invalid("}", "lone close brace");
    invalid("[}", "array closed by a brace");
    invalid("{]", "object closed by a bracket");
    invalid("[[]", "one close for two opens");
    trailing("[]]", "two closes for one open");
    invalid("{\"a\":[}]", "crossed brackets");

    /* numbers */

    trailing("01", "leading zero 01");
    trailing("-01", "leading zero -01");
    trailing("00", "leading zero 00");
    invalid("[01]", "leading zero in an array");
    invalid("1.", "1. (no fraction digits)");
    invalid("1.e5", "1.e5");
    invalid(".5", ".5 (no integer part)");
    invalid("-.5", "-.5");
    invalid("+1", "+1 (no plus sign)");
    invalid("-", "minus alone");
    invalid("--1", "two minus signs");
    invalid("1e", "1e (no exponent digits)");
    invalid("1E+", "1E+ (no exponent digits)");
    invalid("1e-", "1e- (no exponent digits)");
    invalid("1e+-1", "two exponent signs");
    trailing("1.5.5", "two points");
    trailing("1e5e5", "two exponents");
    trailing("0x10", "hex number");
    invalid("Infinity", "Infinity");
    invalid("-Infinity", "-Infinity");
    invalid("NaN", "NaN");
    trailing("1 2", "two numbers");
    invalid("- 1", "minus then space");
    trailing("1_000", "digit separator");

    /* literals */

    invalid("tru", "truncated true");
    invalid("nul", "truncated null");
    invalid("fals", "truncated false");
    invalid("True", "True");
    invalid("NULL", "NULL");
    trailing("truee", "truee");
    trailing("nulll", "nulll");
    invalid("undefined", "undefined");
    invalid("abc", "bare word");
    invalid("[true false]", "two literals without a comma");

    /* strings */

    invalid("\"", "lone quote");
    invalid("\"abc", "unterminated string");
    invalid("\"abc\\\"", "unterminated string ending in an escaped quote");
    invalid("\"abc\\", "unterminated string ending in a backslash");
    invalid("[\"abc]", "unterminated string in an array");
    invalid("{\"a:1}", "unterminated name");
    invalid("'abc'", "single-quoted string");
    invalid("\"a\nb\"", "raw LF in a string");
    invalid("\"a\tb\"", "raw tab in a string");
    invalid("\"a\rb\"", "raw CR in a string");
    invalid("\"\x01\"", "raw U+0001 in a string");
    invalid("\"\x1f\"", "raw U+001F in a string");
    invalid_len("\"a\0b\"", 5, "raw NUL in a string");
    invalid("{\"a\x1f\":1}", "raw control character in a name");
    invalid("\"\\x41\"", "bad escape \\x");
    invalid("\"\\a\"", "bad escape \\a");
    invalid("\"\\'\"", "bad escape \\'");
    invalid("\"\\0\"", "bad escape \\0");
    invalid("\"\\U0041\"", "bad escape \\U");
    invalid("\"\\ \"", "backslash space");
    invalid("\"\\u12\"", "short \\u12");
    invalid("\"\\u\"", "\\u without digits");
    invalid("\"\\u123\"", "short \\u123");
    invalid("\"\\u12", "\\u12 at the end of the text");
    invalid("\"\\u1234", "\\u1234 at the end of the text, unterminated");
    invalid("\"\\u12g4\"", "non-hex digit in \\u");
    invalid("\"\\u-123\"", "sign in \\u");
    invalid("\"\\u 123\"", "space in \\u");

    /* text after the value, RFC 8259 2: exactly one value (-2) */

    trailing("{}x", "trailing garbage after an object");
    trailing("[] ]", "trailing bracket");
    trailing("1 x", "trailing garbage after a number");
    trailing("\"a\"b", "trailing garbage after a string");
    trailing("truex", "trailing garbage after true");
    trailing("{} {}", "two objects");
    trailing("[][]", "two arrays");
    trailing("\"a\" \"b\"", "two strings");
    trailing("1,2", "two values with a comma");
    trailing_len("{}\0", 3, "NUL after the value");
    invalid_len("\0{}", 3, "NUL before the value");

    /* white space other than RFC 8259's four */

    invalid("\f1", "form feed before a value");
    trailing("1\v", "vertical tab after a value");
    invalid("[1,\xc2\xa0" "2]", "no-break space between values");

    /* nesting: exactly MAX_DEPTH is valid, one more is not */

    t = malloc(2 * (MAX_DEPTH + 1) + 1);

    for (i = 0; i < MAX_DEPTH; i++) {
        t[i] = '[';
        t[MAX_DEPTH + i] = ']';
    }

    t[2 * MAX_DEPTH] = '\0';
    valid_len(t, 2 * MAX_DEPTH, J_ARRAY, t, "arrays nested 128 deep");

    for (i = 0; i < MAX_DEPTH + 1; i++) {
        t[i] = '[';
        t[MAX_DEPTH + 1 + i] = ']';
    }

    invalid_len(t, 2 * (MAX_DEPTH + 1), "arrays nested 129 deep");

    /* mixed: {"a":{"a":...[1]...}} with 128 levels in all */

    free(t);
    t = malloc(8 * (MAX_DEPTH + 1) + 16);

    {
        size_t  n, depth;

        for (depth = MAX_DEPTH; depth <= MAX_DEPTH + 1; depth++) {
            n = 0;

            for (i = 0; i < depth - 1; i++) {
                n += sprintf(t + n, (i % 2) ? "[" : "{\"a\":");
            }

            n += sprintf(t + n, "[1]");

            for (i = depth - 1; i-- > 0; ) {
                t[n++] = (i % 2) ? ']' : '}';
            }

            if (depth == MAX_DEPTH) {
                t[n] = '\0';
                valid_len(t, n, J_OBJECT, t, "objects and arrays nested "
                          "128 deep");

            } else {
                invalid_len(t, n, "objects and arrays nested 129 deep");
            }
        }
    }

    free(t);

    /* very deep: refused without running out of stack */

    t = malloc(1000000);
    memset(t, '[', 1000000);
    invalid_len(t, 1000000, "a million open brackets");
    free(t);
}


/* jv_get */

static void
get_found(const char *text, const char *name, int type, const char *value,
    int nth, const char *desc)
{
    jv_t      obj, out;
    size_t    off;
    uint8_t  *t;

    t = dup(text, strlen(text));

    if (ngx_http_openclaw_jv_parse(t, strlen(text), &obj, NULL) != 0) {
        ok(0, "get: %s: text parses", desc);
        free(t);
        return;
    }

    memset(&out, 0, sizeof(out));

    if (!ok(ngx_http_openclaw_jv_get(&obj, name, &out) == 0,
            "get: %s: \"%s\" found", desc, name))
    {
        free(t);
        return;
    }

    off = find(text, value, nth);

    if (!ok(out.type == (ngx_http_openclaw_json_type_e) type
            && out.start == t + off && out.len == strlen(value),
            "get: %s: \"%s\" is %s %s", desc, name, tname(type), value))
    {
        diag("got %s at %ld, len %zu; expected at %zu, len %zu",
             tname(out.type), (long) (out.start - t), out.len, off,
             strlen(value));
    }

    free(t);
}


static void
get_missing(const char *text, const char *name, const char *desc)
{
    jv_t      obj, out;
    uint8_t  *t;

    t = dup(text, strlen(text));

    if (ngx_http_openclaw_jv_parse(t, strlen(text), &obj, NULL) != 0) {
        ok(0, "get: %s: text parses", desc);
        free(t);
        return;
    }

    ok(ngx_http_openclaw_jv_get(&obj, name, &out) == -1,
       "get: %s: \"%s\" not found", desc, name);

    free(t);
}


static void
test_get(void)
{
    jv_t         obj, a, b, c;
    const char  *text;

    get_found("{\"a\":1}", "a", J_NUMBER, "1", 1, "one member");
    get_found("{\"a\":1,\"b\":\"x\",\"c\":true}", "b", J_STRING, "\"x\"", 1,
              "middle member");
    get_found("{\"a\":1,\"b\":\"x\",\"c\":true}", "c", J_TRUE, "true", 1,
              "last member");
    get_found("{\"a\":1,\"a\":2}", "a", J_NUMBER, "1", 1,
              "first of duplicate names");
    get_found("{\"a\":{\"x\":1},\"b\":0,\"a\":[2]}", "a", J_OBJECT,
              "{\"x\":1}", 1, "first of duplicate names, an object");
    get_found("{\"b\":0,\"a\":null,\"a\":false}", "a", J_NULL, "null", 1,
              "first of duplicate names, null then false");
    get_found("{\"ab\":1,\"a\":2}", "a", J_NUMBER, "2", 1,
              "a longer name is not a match");
    get_found("{\"a\":1,\"ab\":2}", "ab", J_NUMBER, "2", 1,
              "a shorter name is not a match");
    get_found("{\"A\":1,\"a\":2}", "a", J_NUMBER, "2", 1,
              "names are case sensitive");
    get_found("{\"x\":1,\"\":2}", "", J_NUMBER, "2", 1, "the empty name");
    get_found("{\"f\":false,\"n\":-1.5e-3,\"s\":\"\",\"z\":null}", "n",
              J_NUMBER, "-1.5e-3", 1, "number with fraction and exponent");
    get_found("{\"f\":false,\"n\":-1.5e-3,\"s\":\"\",\"z\":null}", "f",
              J_FALSE, "false", 1, "false");
    get_found("{\"f\":false,\"n\":-1.5e-3,\"s\":\"\",\"z\":null}", "s",
              J_STRING, "\"\"", 1, "empty string");
    get_found("{\"f\":false,\"n\":-1.5e-3,\"s\":\"\",\"z\":null}", "z",
              J_NULL, "null", 1, "null");
    get_found("{ \"a\" : 1 , \"b\" :\t[ 1 , 2 ]\r\n, \"c\" : { } }", "b",
              J_ARRAY, "[ 1 , 2 ]", 1, "white space around everything");
    get_found("{ \"a\" : 1 , \"b\" :\t[ 1 , 2 ]\r\n, \"c\" : { } }", "c",
              J_OBJECT, "{ }", 1, "white space, last member");
    get_found("{\"a\" :5 }", "a", J_NUMBER, "5", 1,
              "number before white space and the close");
    get_found("{\"caf\xc3\xa9\":1}", "caf\xc3\xa9", J_NUMBER, "1", 1,
              "raw UTF-8 name");

    /* members before the match are skipped whole */

    get_found("{\"x\":{\"a\":1,\"s\":\"}{][\"},\"y\":[\"a\",{\"a\":2}],"
              "\"a\":3}", "a", J_NUMBER, "3", 1,
              "nested objects and arrays holding \"a\" skipped");
    get_found("{\"x\":\"\\\"a\\\":0,\",\"a\":4}", "a", J_NUMBER, "4", 1,
              "string holding escaped quotes and \"a\": skipped");
    get_found("{\"x\":\"}\",\"a\":5}", "a", J_NUMBER, "5", 1,
              "string holding a close brace skipped");
    get_found("{\"x\":\"\\\\\",\"a\":6}", "a", J_NUMBER, "6", 1,
              "string ending in an escaped backslash skipped");
    get_found("{\"x\":\"\\\\\\\"}\",\"a\":7}", "a", J_NUMBER, "7", 1,
              "string of \\\\ \\\" } skipped");
    get_found("{\"x\":\"\\\\\\\\\",\"a\":11}", "a", J_NUMBER, "11", 1,
              "string of two escaped backslashes skipped");
    get_found("{\"x\":\"\\\\\\\\\\\"\\\\\",\"a\":12}", "a", J_NUMBER,
              "12", 1, "string of \\\\ \\\\ \\\" \\\\ skipped");
    get_found("{\"x\":[\"\\\"\",\"\\\\\"],\"a\":13}", "a", J_NUMBER, "13", 1,
              "array of \\\" and \\\\ strings skipped");
    get_found("{\"}\\\"a\":0,\"a\":8}", "a", J_NUMBER, "8", 1,
              "name holding a brace and an escaped quote skipped");
    get_found("{\"x\":[[[\"]]]\"]]],\"a\":9}", "a", J_NUMBER, "9", 1,
              "nested arrays with a string of brackets skipped");
    get_found("{\"x\":[{\"a\":1},{\"b\":[{}]}],\"a\":{\"b\":[]}}", "a",
              J_OBJECT, "{\"b\":[]}", 1, "the object found is spanned whole");
    get_found("{\"x\":1e5,\"y\":-0,\"z\":true,\"w\":null,\"a\":10}", "a",
              J_NUMBER, "10", 1, "scalars skipped");

    /* names are compared as written: escapes are not decoded */

    get_missing("{\"\\u0061\":1}", "a", "a name spelt \\u0061 is not \"a\"");
    get_found("{\"\\u0061\":1,\"a\":2}", "a", J_NUMBER, "2", 1,
              "the \"a\" after \\u0061");
    get_found("{\"a\\\"b\":1}", "a\\\"b", J_NUMBER, "1", 1,
              "a name with an escape found as written");

    get_missing("{}", "a", "empty object");
    get_missing("{ }", "", "empty object, empty name");
    get_missing("{\"a\":1}", "b", "no such name");
    get_missing("{\"a\":1}", "", "no empty name");
    get_missing("{\"a\":1}", "A", "case sensitive");
    get_missing("{\"ab\":1}", "a", "a prefix of a name");
    get_missing("{\"a\":1}", "ab", "a name that is a prefix");
    get_missing("{\"x\":{\"a\":1}}", "a", "a nested member");
    get_missing("{\"x\":[\"a\"]}", "a", "a string in an array");
    get_missing("{\"x\":\"a\"}", "a", "a string value");
    get_missing("{\"x\":\"\\\"a\\\":1\"}", "a", "an escaped member in a "
                "string");

    /* not an object */

    text = "[{\"a\":1}]";
    ngx_http_openclaw_jv_parse((const uint8_t *) text, strlen(text), &obj,
                               NULL);
    ok(ngx_http_openclaw_jv_get(&obj, "a", &a) == -1, "get: array: -1");

    text = "\"a\"";
    ngx_http_openclaw_jv_parse((const uint8_t *) text, strlen(text), &obj,
                               NULL);
    ok(ngx_http_openclaw_jv_get(&obj, "a", &a) == -1, "get: string: -1");

    text = "1";
    ngx_http_openclaw_jv_parse((const uint8_t *) text, strlen(text), &obj,
                               NULL);
    ok(ngx_http_openclaw_jv_get(&obj, "a", &a) == -1, "get: number: -1");

    text = "null";
    ngx_http_openclaw_jv_parse((const uint8_t *) text, strlen(text), &obj,
                               NULL);
    ok(ngx_http_openclaw_jv_get(&obj, "a", &a) == -1, "get: null: -1");

    text = "{\"a\":1} x";
    ngx_http_openclaw_jv_parse((const uint8_t *) text, strlen(text), &obj,
                               NULL);
    ok(ngx_http_openclaw_jv_get(&obj, "a", &a) == -1,
       "get: the invalid value of a failed parse: -1");

    /* into nested objects */

    text = "{\"type\":\"event\",\"event\":\"chat\","
           "\"payload\":{\"runId\":\"r\","
           "\"message\":{\"role\":\"assistant\",\"content\":[{\"type\":"
           "\"text\",\"text\":\"Hi\"}]},\"state\":\"delta\"},\"seq\":3}";

    ngx_http_openclaw_jv_parse((const uint8_t *) text, strlen(text), &obj,
                               NULL);

    ok(ngx_http_openclaw_jv_get(&obj, "payload", &a) == 0
       && a.type == J_OBJECT, "get: chat event: payload");
    ok(ngx_http_openclaw_jv_get(&a, "message", &b) == 0
       && b.type == J_OBJECT, "get: chat event: payload.message");
    ok(ngx_http_openclaw_jv_get(&b, "content", &c) == 0
       && c.type == J_ARRAY
       && c.start == (const uint8_t *) text + find(text, "[", 1)
       && c.len == strlen("[{\"type\":\"text\",\"text\":\"Hi\"}]"),
       "get: chat event: payload.message.content");
    ok(ngx_http_openclaw_jv_get(&a, "state", &c) == 0
       && ngx_http_openclaw_jv_is(&c, "delta"),
       "get: chat event: payload.state after the nested message");
    ok(ngx_http_openclaw_jv_get(&obj, "seq", &c) == 0
       && c.type == J_NUMBER && c.len == 1 && c.start[0] == '3',
       "get: chat event: seq after payload");
    ok(ngx_http_openclaw_jv_get(&obj, "runId", &c) == -1,
       "get: chat event: no runId at the top");
    ok(ngx_http_openclaw_jv_get(&obj, "type", &c) == 0
       && ngx_http_openclaw_jv_is(&c, "event"),
       "get: chat event: the top type, not the nested one");

    /* "obj" and "out" the same */

    ok(ngx_http_openclaw_jv_get(&obj, "payload", &obj) == 0
       && ngx_http_openclaw_jv_get(&obj, "runId", &obj) == 0
       && ngx_http_openclaw_jv_is(&obj, "r"),
       "get: into the same jv_t");
}


/* jv_members */

static void
test_members(void)
{
    int          i, rc, pass;
    jv_t         obj, out[17], got;
    char         names17[17][8];
    const char  *names[17], *text;

    text = "{\"type\":\"event\",\"event\":\"chat\",\"payload\":{\"seq\":1,"
           "\"type\":\"x\"},\"seq\":7,\"\\u0069d\":1,\"type\":\"res\"}";
    ngx_http_openclaw_jv_parse((const uint8_t *) text, strlen(text), &obj,
                               NULL);

    names[0] = "seq";
    names[1] = "type";
    names[2] = "id";
    names[3] = "payload";
    names[4] = "missing";
    names[5] = "event";

    memset(out, 0xa5, sizeof(out));
    rc = ngx_http_openclaw_jv_members(&obj, names, out, 6);

    is(rc, 4, "members: 4 of 6 found");

    pass = 1;

    for (i = 0; i < 6; i++) {
        if (ngx_http_openclaw_jv_get(&obj, names[i], &got) == 0) {
            pass &= (out[i].start == got.start && out[i].len == got.len
                     && out[i].type == got.type);

        } else {
            pass &= (out[i].start == NULL && out[i].type == J_INVALID);
        }
    }

    ok(pass, "members: each as jv_get finds it, or INVALID with start NULL");
    ok(ngx_http_openclaw_jv_is(&out[1], "event"),
       "members: the first of duplicate names, not the nested one");
    ok(out[0].type == J_NUMBER && out[0].start[0] == '7',
       "members: seq at the top, not the nested one");
    ok(out[2].start == NULL, "members: a name spelt \\u0069d is not \"id\"");

    /* the same name twice: both get the first member */

    names[0] = "type";
    names[1] = "type";
    memset(out, 0xa5, sizeof(out));
    rc = ngx_http_openclaw_jv_members(&obj, names, out, 2);

    ok(rc == 2 && ngx_http_openclaw_jv_is(&out[0], "event")
       && ngx_http_openclaw_jv_is(&out[1], "event"),
       "members: a name asked twice gets the first member twice");

    rc = ngx_http_openclaw_jv_members(&obj, names, out, 0);
    is(rc, 0, "members: no names");

    /* not an object */

    text = "[{\"type\":1}]";
    ngx_http_openclaw_jv_parse((const uint8_t *) text, strlen(text), &obj,
                               NULL);
    memset(out, 0xa5, sizeof(out));
    rc = ngx_http_openclaw_jv_members(&obj, names, out, 2);

    ok(rc == 0 && out[0].start == NULL && out[0].type == J_INVALID
       && out[1].start == NULL && out[1].type == J_INVALID,
       "members: array: 0, all INVALID");

    /* 16 names, the most; 17 refused */

    text = "{\"n0\":0,\"n1\":1,\"n2\":2,\"n3\":3,\"n4\":4,\"n5\":5,\"n6\":6,"
           "\"n7\":7,\"n8\":8,\"n9\":9,\"n10\":10,\"n11\":11,\"n12\":12,"
           "\"n13\":13,\"n14\":14,\"n15\":15,\"n16\":16}";
    ngx_http_openclaw_jv_parse((const uint8_t *) text, strlen(text), &obj,
                               NULL);

    for (i = 0; i < 17; i++) {
        snprintf(names17[i], sizeof(names17[i]), "n%d", 16 - i);
        names[i] = names17[i];
    }

    rc = ngx_http_openclaw_jv_members(&obj, names, out, 16);
    pass = (rc == 16);

    for (i = 0; i < 16; i++) {
        pass &= (out[i].type == J_NUMBER
                 && atoi((const char *) out[i].start) == 16 - i);
    }

    ok(pass, "members: 16 names, in another order than the members");

    memset(out, 0xa5, sizeof(out));
    rc = ngx_http_openclaw_jv_members(&obj, names, out, 17);
    pass = (rc == 0);

    for (i = 0; i < 17; i++) {
        pass &= (out[i].start == NULL && out[i].type == J_INVALID);
    }

    ok(pass, "members: 17 names refused: 0, all INVALID");
}


/*
 * jv_lookup: a set of names kept from one lookup to the next, on texts
 * with and without an index, against jv_get.  Names 4 to 8 bytes long are
 * compared as one word read past their end: the texts are copies of
 * exactly their length, so that ASan sees a read beyond them.
 */

static void
test_lookup(void)
{
    int                            i, k, rc, pass, found, indexed;
    jv_t                           obj, out[8], got;
    size_t                         len;
    uint8_t                       *t;
    ngx_http_openclaw_jv_index_t   ix;
    ngx_http_openclaw_jv_node_t    room[64];

    static const char  *texts[] = {
        "{\"type\":1}",
        "{\"id\":\"a\",\"type\":\"b\"}",
        "{\"sessionKez\":1,\"sessionKey\":2,\"timestamps\":3,"
        "\"timestamp\":4,\"typo\":5,\"type\":6}",
        "{\"payloa\":1,\"payload\":{\"id\":7},\"i\":0,\"id\":8}",
        "{\"sessionKeyX\":1,\"session\":2,\"x\":{\"type\":3},\"type\":4,"
        "\"id\":true}",
        "{ \"id\" : 1 , \"payload\" : [ 2 ] , \"type\" : \"t\" }",
        "{\"t\\u0079pe\":1,\"\":2,\"id\":{}}",
        "{}"
    };

    static const char                   *names[6] = {
        "type", "id", "payload", "sessionKey", "timestamp", ""
    };
    static ngx_http_openclaw_jv_names_t  set =
                                        ngx_http_openclaw_jv_names(names);

    pass = 1;

    for (k = 0; k < (int) (sizeof(texts) / sizeof(texts[0])); k++) {
        for (indexed = 0; indexed < 2; indexed++) {
            len = strlen(texts[k]);
            t = dup(texts[k], len);

            ix.nodes = room;
            ix.size = 64;

            rc = ngx_http_openclaw_jv_parse(t, len, &obj,
                                            indexed ? &ix : NULL);
            if (rc != 0) {
                diag("%s does not parse", texts[k]);
                pass = 0;
                free(t);
                continue;
            }

            memset(out, 0xa5, sizeof(out));
            found = ngx_http_openclaw_jv_lookup(&obj, &set, out);

            for (i = 0; i < 6; i++) {
                if (ngx_http_openclaw_jv_get(&obj, names[i], &got) == 0) {
                    found--;

                    if (out[i].start != got.start || out[i].len != got.len
                        || out[i].type != got.type
                        || out[i].size != got.size)
                    {
                        diag("%s, %s: \"%s\" differs from jv_get",
                             texts[k], indexed ? "indexed" : "plain",
                             names[i]);
                        pass = 0;
                    }

                } else if (out[i].start != NULL || out[i].type != J_INVALID) {
                    diag("%s: \"%s\" found, but is not there", texts[k],
                         names[i]);
                    pass = 0;
                }
            }

            if (found != 0) {
                diag("%s: the count is off by %d", texts[k], found);
                pass = 0;
            }

            free(t);
        }
    }

    ok(pass, "lookup: a kept set finds what jv_get finds, with and without "
       "an index");

    t = dup(texts[2], strlen(texts[2]));
    ix.nodes = room;
    ix.size = 64;
    (void) ngx_http_openclaw_jv_parse(t, strlen(texts[2]), &obj, &ix);
    rc = ngx_http_openclaw_jv_lookup(&obj, &set, out);

    ok(rc == 3 && out[0].start[0] == '6' && out[3].start[0] == '2'
       && out[4].start[0] == '4',
       "lookup: names that share their first 8 bytes, or all but the last, "
       "are told apart");

    free(t);

    /* a name of any length, found with and without an index */

    {
        char                          long_name[301], text[340];
        const char                   *one[1] = { long_name };
        ngx_http_openclaw_jv_names_t  long_set;

        memset(long_name, 'n', 300);
        long_name[300] = '\0';
        snprintf(text, sizeof(text), "{\"%s\":7}", long_name);

        for (indexed = 0; indexed < 2; indexed++) {
            t = dup(text, strlen(text));
            (void) ngx_http_openclaw_jv_parse(t, strlen(text), &obj,
                                              indexed ? &ix : NULL);

            long_set.names = one;
            long_set.n = 1;
            long_set.ready = 0;

            rc = ngx_http_openclaw_jv_lookup(&obj, &long_set, out);

            ok(rc == 1 && out[0].type == J_NUMBER && out[0].start[0] == '7',
               "lookup: a 300-byte name, %s", indexed ? "indexed" : "plain");

            free(t);
        }
    }
}


/*
 * jv_plain: a byte that needs an escape at every position of strings up
 * to 40 bytes long, among bytes that do not (some above 0x7f).
 */

static void
test_plain(void)
{
    int       pass;
    size_t    len, at, k, got;
    uint8_t  *t, s[40];

    static const uint8_t  special[] = { '"', '\\', 0x00, 0x0a, 0x1f };

    pass = 1;

    for (len = 0; len <= 40; len++) {
        for (k = 0; k < len; k++) {
            s[k] = (k % 3 == 2) ? (uint8_t) (0x80 + k)
                                : (uint8_t) ('a' + k % 26);
        }

        t = dup(s, len);
        got = ngx_http_openclaw_jv_plain(t, len);
        free(t);

        if (got != len) {
            diag("%zu plain bytes: %zu", len, got);
            pass = 0;
        }

        for (at = 0; at < len; at++) {
            for (k = 0; k < sizeof(special); k++) {
                t = dup(s, len);
                t[at] = special[k];
                got = ngx_http_openclaw_jv_plain(t, len);
                free(t);

                if (got != at) {
                    diag("0x%02x at %zu of %zu: %zu", special[k], at, len,
                         got);
                    pass = 0;
                }
            }
        }
    }

    ok(pass, "plain: the first byte to escape, at every position");
}


/* jv_next */

typedef struct {
    int          type;
    const char  *value;
    int          nth;
} elt_t;


static void
next_all(const char *text, const elt_t *elts, size_t n, const char *desc)
{
    jv_t      arr, item;
    size_t    i, off;
    uint8_t  *t;
    int       pass;

    t = dup(text, strlen(text));

    if (ngx_http_openclaw_jv_parse(t, strlen(text), &arr, NULL) != 0) {
        ok(0, "next: %s: text parses", desc);
        free(t);
        return;
    }

    item.start = NULL;
    pass = 1;

    for (i = 0; i < n; i++) {
        if (ngx_http_openclaw_jv_next(&arr, &item) != 0) {
            diag("element %zu missing", i);
            pass = 0;
            break;
        }

        off = find(text, elts[i].value, elts[i].nth);

        if (item.type != (ngx_http_openclaw_json_type_e) elts[i].type
            || item.start != t + off || item.len != strlen(elts[i].value))
        {
            diag("element %zu: %s at %ld len %zu, expected %s %s at %zu", i,
                 tname(item.type), (long) (item.start - t), item.len,
                 tname(elts[i].type), elts[i].value, off);
            pass = 0;
        }
    }

    if (pass && ngx_http_openclaw_jv_next(&arr, &item) != -1) {
        diag("an element after the last");
        pass = 0;
    }

    if (pass && ngx_http_openclaw_jv_next(&arr, &item) != -1) {
        diag("an element after the end");
        pass = 0;
    }

    ok(pass, "next: %s: %zu element%s", desc, n, n == 1 ? "" : "s");

    free(t);
}


static void
test_next(void)
{
    jv_t         arr, item, inner, sub, obj;
    int          n, sum;
    const char  *text;

    static const elt_t  one[] = { { J_NUMBER, "1", 1 } };
    static const elt_t  one_ws[] = { { J_STRING, "\"x\"", 1 } };
    static const elt_t  many[] = {
        { J_NUMBER, "1", 1 }, { J_NUMBER, "2", 1 }, { J_NUMBER, "3", 1 },
        { J_NUMBER, "4", 1 }, { J_NUMBER, "5", 1 }
    };
    static const elt_t  mixed[] = {
        { J_NUMBER, "-1.5e3", 1 }, { J_STRING, "\"s,]\"", 1 },
        { J_TRUE, "true", 1 }, { J_FALSE, "false", 1 },
        { J_NULL, "null", 1 }, { J_OBJECT, "{\"a\":[1,2]}", 1 },
        { J_ARRAY, "[[],{}]", 1 }, { J_STRING, "\"\\\"\"", 1 },
        { J_NUMBER, "0", 1 }, { J_OBJECT, "{}", 2 }
    };
    static const elt_t  spaced[] = {
        { J_NUMBER, "1", 1 }, { J_ARRAY, "[ 2 , 3 ]", 1 },
        { J_OBJECT, "{ \"a\" : 4 }", 1 }, { J_NUMBER, "5", 1 }
    };
    static const elt_t  nested[] = {
        { J_ARRAY, "[[1],[2,[3]]]", 1 }, { J_ARRAY, "[]", 1 },
        { J_ARRAY, "[\"]\"]", 1 }
    };
    static const elt_t  numbers[] = {
        { J_NUMBER, "10", 1 }, { J_NUMBER, "-0", 1 }, { J_NUMBER, "2e-3", 1 },
        { J_NUMBER, "3E+4", 1 }, { J_NUMBER, "0.5", 1 }
    };

    next_all("[]", NULL, 0, "empty array");
    next_all("[ \n ]", NULL, 0, "empty array with white space");
    next_all("[1]", one, 1, "one element");
    next_all("[ \"x\" ]", one_ws, 1, "one element with white space");
    next_all("[1,2,3,4,5]", many, 5, "many elements");
    next_all("[-1.5e3,\"s,]\",true,false,null,{\"a\":[1,2]},[[],{}],\"\\\"\","
             "0,{}]", mixed, 10, "mixed types");
    next_all("[ 1 ,\t[ 2 , 3 ]\n,\r{ \"a\" : 4 } , 5 ]", spaced, 4,
             "white space around elements");
    next_all("[[[1],[2,[3]]],[],[\"]\"]]", nested, 3, "nested arrays");
    next_all("[10,-0,2e-3,3E+4,0.5]", numbers, 5, "numbers of every form");

    /* nested iteration */

    text = "[[1,2],[],[3,[4,5]],6]";
    ngx_http_openclaw_jv_parse((const uint8_t *) text, strlen(text), &arr,
                               NULL);

    n = 0;
    sum = 0;
    item.start = NULL;

    while (ngx_http_openclaw_jv_next(&arr, &item) == 0) {
        n++;

        if (item.type == J_NUMBER) {
            sum += item.start[0] - '0';
            continue;
        }

        inner.start = NULL;

        while (ngx_http_openclaw_jv_next(&item, &inner) == 0) {
            if (inner.type == J_NUMBER) {
                sum += inner.start[0] - '0';
                continue;
            }

            sub.start = NULL;

            while (ngx_http_openclaw_jv_next(&inner, &sub) == 0) {
                sum += sub.start[0] - '0';
            }
        }
    }

    ok(n == 4 && sum == 21, "next: nested iteration sees 4 elements, "
       "digits summing to 21");

    /* the content array of a chat message */

    text = "{\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
           "{\"type\":\"image\"},"
           "{\"type\":\"text\",\"text\":\"b\"}]}";
    ngx_http_openclaw_jv_parse((const uint8_t *) text, strlen(text), &obj,
                               NULL);
    ngx_http_openclaw_jv_get(&obj, "content", &arr);

    n = 0;
    item.start = NULL;

    while (ngx_http_openclaw_jv_next(&arr, &item) == 0) {
        if (ngx_http_openclaw_jv_get(&item, "type", &sub) == 0
            && ngx_http_openclaw_jv_is(&sub, "text")
            && ngx_http_openclaw_jv_get(&item, "text", &sub) == 0
            && sub.type == J_STRING)
        {
            n += sub.data[0];
        }
    }

    is(n, 'a' + 'b', "next + get: text parts of a content array");

    /* not an array */

    text = "{\"a\":1}";
    ngx_http_openclaw_jv_parse((const uint8_t *) text, strlen(text), &obj,
                               NULL);
    item.start = NULL;
    ok(ngx_http_openclaw_jv_next(&obj, &item) == -1, "next: object: -1");

    text = "\"[1]\"";
    ngx_http_openclaw_jv_parse((const uint8_t *) text, strlen(text), &obj,
                               NULL);
    item.start = NULL;
    ok(ngx_http_openclaw_jv_next(&obj, &item) == -1, "next: string: -1");
}


/* jv_member, with and without the index, compact and spaced */

static void
test_member(void)
{
    int                           i, k, n;
    char                          seen[64];
    const char                   *text;
    ngx_http_openclaw_jv_t        obj, name, value;
    ngx_http_openclaw_jv_node_t   nodes[8];
    ngx_http_openclaw_jv_index_t  index;

    static const char  *texts[] = {
        "{\"a\":1,\"bc\":[2,{\"x\":3}],\"d\":\"e\"}",
        " { \"a\" : 1 , \"bc\" : [ 2 , { \"x\" : 3 } ] , \"d\" : \"e\" } "
    };

    for (i = 0; i < 2; i++) {
        for (k = 0; k < 3; k++) {
            text = texts[i];
            index.nodes = nodes;
            index.size = (k == 0) ? 8 : (k == 1) ? 3 : 0;

            ngx_http_openclaw_jv_parse((const uint8_t *) text, strlen(text),
                                       &obj, k == 2 ? NULL : &index);

            n = 0;
            seen[0] = '\0';
            name.start = NULL;

            while (ngx_http_openclaw_jv_member(&obj, &name, &value) == 0) {
                strncat(seen, (const char *) name.data, name.size);
                strcat(seen, "=");
                strncat(seen, (const char *) value.start, value.len);
                strcat(seen, ";");
                n++;
            }

            is(n, 3, "member: three members");
            ok(strcmp(seen, i == 0 ? "a=1;bc=[2,{\"x\":3}];d=\"e\";"
                                   : "a=1;bc=[ 2 , { \"x\" : 3 } ];d=\"e\";")
               == 0, "member: names and values");
        }
    }

    text = "{}";
    ngx_http_openclaw_jv_parse((const uint8_t *) text, strlen(text), &obj,
                               NULL);
    name.start = NULL;
    ok(ngx_http_openclaw_jv_member(&obj, &name, &value) == -1,
       "member: empty object: -1");

    text = "[1]";
    ngx_http_openclaw_jv_parse((const uint8_t *) text, strlen(text), &obj,
                               NULL);
    name.start = NULL;
    ok(ngx_http_openclaw_jv_member(&obj, &name, &value) == -1,
       "member: array: -1");
}


/* jv_decode and jv_is */

static void
decode(const char *text, const char *exp, size_t elen, const char *desc)
{
    jv_t      v;
    size_t    n;
    uint8_t  *t, *dst;

    t = dup(text, strlen(text));

    if (ngx_http_openclaw_jv_parse(t, strlen(text), &v, NULL) != 0
        || v.type != J_STRING)
    {
        ok(0, "decode: %s: string parses", desc);
        free(t);
        return;
    }

    /* exactly v.size bytes, as the contract allows */

    dst = malloc(v.size ? v.size : 1);
    n = ngx_http_openclaw_jv_decode(&v, dst);

    is_bytes(dst, n, (const uint8_t *) exp, elen, "decode: %s", desc);

    free(dst);
    free(t);
}


static void
string_desc(const char *text, size_t size, int escaped, const char *desc)
{
    jv_t      v;
    uint8_t  *t;

    t = dup(text, strlen(text));

    if (ngx_http_openclaw_jv_parse(t, strlen(text), &v, NULL) != 0) {
        ok(0, "string: %s: parses", desc);
        free(t);
        return;
    }

    if (!ok(v.type == J_STRING && v.data == v.start + 1 && v.size == size
            && v.escaped == (unsigned) escaped && v.len == size + 2,
            "string: %s: data, size %zu, escaped %d", desc, size, escaped))
    {
        diag("type %s, data at %ld, size %zu, escaped %u, len %zu",
             tname(v.type), (long) (v.data - v.start), v.size, v.escaped,
             v.len);
    }

    free(t);
}


#define DECODE(text, exp, desc)  decode(text, exp, sizeof(exp) - 1, desc)


static void
test_decode(void)
{
    size_t   i;
    char     text[16];

    string_desc("\"\"", 0, 0, "empty");
    string_desc("\"abc\"", 3, 0, "plain");
    string_desc(" \"abc\" ", 3, 0, "plain, white space around");
    string_desc("\"a\\nc\"", 4, 1, "one escape");
    string_desc("\"\\\\\"", 2, 1, "an escaped backslash");
    string_desc("\"caf\xc3\xa9\"", 5, 0, "raw UTF-8 is not escaped");
    string_desc("\"\\u00e9\"", 6, 1, "\\u00e9");

    DECODE("\"\"", "", "empty string");
    DECODE("\"abc\"", "abc", "plain string copied");
    DECODE("\"caf\xc3\xa9\"", "caf\xc3\xa9", "raw UTF-8 copied");
    DECODE("\"\\\"\"", "\"", "\\\"");
    DECODE("\"\\\\\"", "\\", "\\\\");
    DECODE("\"\\/\"", "/", "\\/");
    DECODE("\"\\b\"", "\b", "\\b");
    DECODE("\"\\f\"", "\f", "\\f");
    DECODE("\"\\n\"", "\n", "\\n");
    DECODE("\"\\r\"", "\r", "\\r");
    DECODE("\"\\t\"", "\t", "\\t");
    DECODE("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", "\"\\/\b\f\n\r\t",
           "every short escape in a row");
    DECODE("\"a\\\\nb\"", "a\\nb", "\\\\ then n is not \\n");
    DECODE("\"x\\ty\\nz\"", "x\ty\nz", "escapes between plain bytes");

    DECODE("\"\\u0041\"", "A", "\\u0041");
    DECODE("\"\\u0000\"", "\0", "\\u0000 -> NUL");
    DECODE("\"a\\u0000b\"", "a\0b", "\\u0000 inside");
    DECODE("\"\\u001f\"", "\x1f", "\\u001f");
    DECODE("\"\\u007f\"", "\x7f", "\\u007f (last 1-byte)");
    DECODE("\"\\u0080\"", "\xc2\x80", "\\u0080 (first 2-byte)");
    DECODE("\"\\u00e9\"", "\xc3\xa9", "\\u00e9");
    DECODE("\"\\u00E9\"", "\xc3\xa9", "\\u00E9 (upper case hex)");
    DECODE("\"\\u07ff\"", "\xdf\xbf", "\\u07ff (last 2-byte)");
    DECODE("\"\\u0800\"", "\xe0\xa0\x80", "\\u0800 (first 3-byte)");
    DECODE("\"\\u20ac\"", "\xe2\x82\xac", "\\u20ac");
    DECODE("\"\\u20AC\"", "\xe2\x82\xac", "\\u20AC");
    DECODE("\"\\ud7ff\"", "\xed\x9f\xbf", "\\ud7ff (before the surrogates)");
    DECODE("\"\\ue000\"", "\xee\x80\x80", "\\ue000 (after the surrogates)");
    DECODE("\"\\ufffd\"", "\xef\xbf\xbd", "\\ufffd");
    DECODE("\"\\uffff\"", "\xef\xbf\xbf", "\\uffff");
    DECODE("\"\\u0041\\u00e9\\u20ac\"", "A\xc3\xa9\xe2\x82\xac",
           "1-, 2- and 3-byte escapes in a row");

    /* surrogate pairs, RFC 8259 7 */

    DECODE("\"\\ud83d\\ude00\"", "\xf0\x9f\x98\x80", "\\ud83d\\ude00 U+1F600");
    DECODE("\"\\uD83D\\uDE00\"", "\xf0\x9f\x98\x80", "\\uD83D\\uDE00");
    DECODE("\"\\ud800\\udc00\"", "\xf0\x90\x80\x80", "\\ud800\\udc00 U+10000");
    DECODE("\"\\udbff\\udfff\"", "\xf4\x8f\xbf\xbf",
           "\\udbff\\udfff U+10FFFF");
    DECODE("\"\\ud834\\udd1e\"", "\xf0\x9d\x84\x9e", "\\ud834\\udd1e U+1D11E");
    DECODE("\"a\\ud83d\\ude00b\"", "a\xf0\x9f\x98\x80" "b",
           "a pair between plain bytes");
    DECODE("\"\\ud83d\\ude00\\ud83d\\ude00\"",
           "\xf0\x9f\x98\x80\xf0\x9f\x98\x80", "two pairs");

    /* lone surrogates become U+FFFD */

    DECODE("\"\\ud83d\"", "\xef\xbf\xbd", "lone high surrogate");
    DECODE("\"\\ude00\"", "\xef\xbf\xbd", "lone low surrogate");
    DECODE("\"\\ud800\"", "\xef\xbf\xbd", "lone \\ud800");
    DECODE("\"\\udbff\"", "\xef\xbf\xbd", "lone \\udbff");
    DECODE("\"\\udc00\"", "\xef\xbf\xbd", "lone \\udc00");
    DECODE("\"\\udfff\"", "\xef\xbf\xbd", "lone \\udfff");
    DECODE("\"\\ud83dx\"", "\xef\xbf\xbdx", "high surrogate then a byte");
    DECODE("\"\\ud83d\\u0041\"", "\xef\xbf\xbd" "A",
           "high surrogate then a non-surrogate escape");
    DECODE("\"\\ud83d\\n\"", "\xef\xbf\xbd\n",
           "high surrogate then a short escape");
    DECODE("\"\\ud83d\\\\ude00\"", "\xef\xbf\xbd\\ude00",
           "high surrogate then an escaped backslash and ude00");
    DECODE("\"\\ud83d\\ud83d\\ude00\"", "\xef\xbf\xbd\xf0\x9f\x98\x80",
           "two high surrogates then a low one");
    DECODE("\"\\ude00\\ud83d\"", "\xef\xbf\xbd\xef\xbf\xbd",
           "low then high: two U+FFFD");
    DECODE("\"\\ud83d\\ue000\"", "\xef\xbf\xbd\xee\x80\x80",
           "high surrogate then U+E000");
    DECODE("\"\\ud83d\\ud7ff\"", "\xef\xbf\xbd\xed\x9f\xbf",
           "high surrogate then U+D7FF");
    DECODE("\"\\ud83d\\ude00\\ude00\"", "\xf0\x9f\x98\x80\xef\xbf\xbd",
           "pair then a lone low surrogate");

    /* every \u00XX: the 1- and 2-byte forms of RFC 3629 */

    {
        int       pass;
        jv_t      v;
        size_t    n;
        uint8_t   out[8], exp[2];
        unsigned  cp;

        pass = 1;

        for (cp = 0; cp < 0x800; cp++) {
            snprintf(text, sizeof(text), "\"\\u%04x\"", cp);

            if (ngx_http_openclaw_jv_parse((const uint8_t *) text,
                                           strlen(text), &v, NULL) != 0)
            {
                pass = 0;
                break;
            }

            n = ngx_http_openclaw_jv_decode(&v, out);

            if (cp < 0x80) {
                exp[0] = (uint8_t) cp;
                i = 1;

            } else {
                exp[0] = (uint8_t) (0xc0 | (cp >> 6));
                exp[1] = (uint8_t) (0x80 | (cp & 0x3f));
                i = 2;
            }

            if (n != i || memcmp(out, exp, i) != 0) {
                diag("U+%04X", cp);
                pass = 0;
                break;
            }
        }

        ok(pass, "decode: \\u0000..\\u07ff all decode to RFC 3629 UTF-8");
    }
}


static void PRINTF_LIKE(4, 5)
is_case(const char *text, const char *s, int exp, const char *fmt, ...)
{
    char      desc[128];
    va_list   args;
    jv_t      v;
    uint8_t  *t;

    va_start(args, fmt);
    vsnprintf(desc, sizeof(desc), fmt, args);
    va_end(args);

    t = dup(text, strlen(text));

    if (ngx_http_openclaw_jv_parse(t, strlen(text), &v, NULL) != 0) {
        ok(0, "is: %s: parses", desc);
        free(t);
        return;
    }

    is(ngx_http_openclaw_jv_is(&v, s), exp, "is: %s", desc);

    free(t);
}


static void
test_is(void)
{
    char    text[512], s[128];
    size_t  i, n;

    is_case("\"abc\"", "abc", 1, "equal");
    is_case("\"abc\"", "ab", 0, "value longer than the C string");
    is_case("\"abc\"", "abcd", 0, "value shorter than the C string");
    is_case("\"abc\"", "abd", 0, "different");
    is_case("\"abc\"", "ABC", 0, "case sensitive");
    is_case("\"\"", "", 1, "empty equals empty");
    is_case("\"\"", "a", 0, "empty is not a");
    is_case("\"a\"", "", 0, "a is not empty");
    is_case("\"a\\u0062c\"", "abc", 1, "escaped equal");
    is_case("\"a\\u0062c\"", "a\\u0062c", 0, "compared decoded, not as "
            "written");
    is_case("\"a\\\\b\"", "a\\b", 1, "escaped backslash");
    is_case("\"a\\nb\"", "a\nb", 1, "escaped LF");
    is_case("\"caf\\u00e9\"", "caf\xc3\xa9", 1, "\\u00e9 is UTF-8 e-acute");
    is_case("\"\\ud83d\\ude00\"", "\xf0\x9f\x98\x80", 1, "surrogate pair");
    is_case("\"\\ud83d\"", "\xef\xbf\xbd", 1, "lone surrogate is U+FFFD");
    is_case("\"a\\u0000b\"", "a", 0, "\\u0000 does not end the string");
    is_case("\"chat\"", "chat", 1, "chat");
    is_case("\"chat.abort\"", "chat", 0, "a prefix is not equal");
    is_case("1", "1", 0, "number is not a string");
    is_case("true", "true", 0, "true is not a string");
    is_case("null", "null", 0, "null is not a string");
    is_case("[\"a\"]", "a", 0, "array is not a string");
    is_case("{}", "", 0, "object is not a string");

    /* long strings: plain and escaped, around 64 bytes */

    for (n = 60; n <= 70; n += 10) {
        for (i = 0; i < n; i++) {
            s[i] = 'a' + i % 26;
        }

        s[n] = '\0';
        snprintf(text, sizeof(text), "\"%s\"", s);
        is_case(text, s, 1, "plain string of %zu bytes", n);

        snprintf(text, sizeof(text), "\"%s\\n\"", s);
        s[n] = '\n';
        s[n + 1] = '\0';
        is_case(text, s, 1, "escaped string of %zu bytes as written", n + 2);
    }

    /* 11 escapes: 66 bytes as written, 11 decoded */

    text[0] = '"';

    for (i = 0; i < 11; i++) {
        memcpy(text + 1 + 6 * i, "\\u0041", 6);
        s[i] = 'A';
    }

    text[67] = '"';
    text[68] = '\0';
    s[11] = '\0';

    is_case(text, s, 1, "11 \\u0041 escapes (66 bytes as written) are "
            "11 A's");
    is_case(text, "AAAAAAAAAAAB", 0,
            "11 \\u0041 escapes are not AAAAAAAAAAAB");

    /* a long escaped string that is not equal */

    snprintf(text, sizeof(text), "\"%0200d\\n\"", 0);
    is_case(text, "0", 0, "long escaped string is not a short one");
}


/*
 * The index.  Node expectations are the values and names located by
 * hand, in the order they start; "next" is the number of the first node
 * after a node and all it holds.
 */

typedef struct {
    const char  *span;
    int          nth;
    unsigned     next;
    unsigned     escaped;
} node_t;


static void
index_nodes(const char *text, const node_t *nodes, size_t n)
{
    int                            rc, pass;
    jv_t                           v;
    size_t                         size, i, len;
    uint8_t                       *t;
    ngx_http_openclaw_jv_index_t   ix;
    ngx_http_openclaw_jv_node_t    room[16];

    len = strlen(text);
    t = dup(text, len);

    /* every room from none to more than needed: what fits is recorded */

    for (size = 0; size <= n + 1; size++) {
        memset(room, 0xa5, sizeof(room));
        ix.nodes = room;
        ix.size = size;

        rc = ngx_http_openclaw_jv_parse(t, len, &v, &ix);
        pass = (rc == 0);

        if (pass && ix.nelts != (size < n ? size : n)) {
            diag("nelts %u", ix.nelts);
            pass = 0;
        }

        for (i = 0; pass && i < ix.nelts; i++) {
            if (room[i].start != find(text, nodes[i].span, nodes[i].nth)
                || room[i].len != strlen(nodes[i].span)
                || room[i].next != nodes[i].next
                || room[i].escaped != nodes[i].escaped)
            {
                diag("node %zu: at %u len %u next %u escaped %u, expected "
                     "%s next %u escaped %u", i, room[i].start, room[i].len,
                     room[i].next, room[i].escaped, nodes[i].span,
                     nodes[i].next, nodes[i].escaped);
                pass = 0;
            }
        }

        for (i = ix.nelts; pass && i < sizeof(room) / sizeof(room[0]); i++) {
            if (room[i].start != 0xa5a5a5a5) {
                diag("node %zu written beyond the room", i);
                pass = 0;
            }
        }

        ok(pass, "index: %s: room for %zu of %zu", text, size, n);
    }

    free(t);
}


/* a walk of every value, as "kind:offset:length:size:escaped" lines */

static void
walk(jv_t *v, const uint8_t *base, char *out, size_t size, size_t *used)
{
    int      i;
    jv_t     item, keyed;
    char     name[64];
    size_t   n;

    /* a broken scanner must fail the comparison, not overrun "out" */

    if (*used + 64 > size) {
        return;
    }

    *used += snprintf(out + *used, 64, "%s:%ld:%zu:%zu:%d\n",
                      tname(v->type), (long) (v->start - base), v->len,
                      v->size, v->escaped);

    if (v->type == J_ARRAY) {
        item.start = NULL;

        while (*used + 64 <= size && ngx_http_openclaw_jv_next(v, &item) == 0)
        {
            walk(&item, base, out, size, used);
        }

        return;
    }

    if (v->type != J_OBJECT) {
        return;
    }

    /* the members by name: jv_get for the odd ones, jv_members for all */

    for (i = 0; i < 8; i++) {
        snprintf(name, sizeof(name), "k%d", i);

        if (i & 1) {
            if (ngx_http_openclaw_jv_get(v, name, &keyed) == 0) {
                walk(&keyed, base, out, size, used);
            }

            continue;
        }

        {
            const char  *names[1] = { name };

            n = ngx_http_openclaw_jv_members(v, names, &keyed, 1);

            if (n == 1) {
                walk(&keyed, base, out, size, used);
            }
        }
    }
}


static void
index_walk(const char *text, const char *desc)
{
    int                            pass;
    jv_t                           v;
    char                           plain[4096], indexed[4096];
    size_t                         size, len, a, b;
    uint8_t                       *t;
    ngx_http_openclaw_jv_index_t   ix;
    ngx_http_openclaw_jv_node_t    room[32];

    len = strlen(text);
    t = dup(text, len);

    a = 0;

    if (ngx_http_openclaw_jv_parse(t, len, &v, NULL) != 0) {
        ok(0, "index walk: %s: parses", desc);
        free(t);
        return;
    }

    walk(&v, t, plain, sizeof(plain), &a);

    pass = 1;

    for (size = 0; size <= 32; size++) {
        ix.nodes = room;
        ix.size = size;
        b = 0;

        if (ngx_http_openclaw_jv_parse(t, len, &v, &ix) != 0) {
            pass = 0;
            break;
        }

        walk(&v, t, indexed, sizeof(indexed), &b);

        if (a != b || memcmp(plain, indexed, a) != 0) {
            diag("room %zu:\n%.*s\nwithout an index:\n%.*s", size,
                 (int) b, indexed, (int) a, plain);
            pass = 0;
            break;
        }
    }

    ok(pass, "index walk: %s: the same values with any room", desc);

    free(t);
}


static void
test_index(void)
{
    static const node_t  flat[] = {
        { "{\"k0\":1,\"k1\":\"}\\n\"}", 1, 5, 0 },
        { "\"k0\"", 1, 2, 0 },
        { "1", 1, 3, 0 },
        { "\"k1\"", 1, 4, 0 },
        { "\"}\\n\"", 1, 5, 1 }
    };

    static const node_t  nested[] = {
        { "{\"k0\":[1,{\"k2\":{}}],\"k1\":{\"k4\":[]}}", 1, 11, 0 },
        { "\"k0\"", 1, 2, 0 },
        { "[1,{\"k2\":{}}]", 1, 7, 0 },
        { "1", 1, 4, 0 },
        { "{\"k2\":{}}", 1, 7, 0 },
        { "\"k2\"", 1, 6, 0 },
        { "{}", 1, 7, 0 },
        { "\"k1\"", 1, 8, 0 },
        { "{\"k4\":[]}", 1, 11, 0 },
        { "\"k4\"", 1, 10, 0 },
        { "[]", 1, 11, 0 }
    };

    static const node_t  arrays[] = {
        { "[[],[[]],[\"]\",[[\"[\"]]]]", 1, 9, 0 },
        { "[]", 1, 2, 0 },
        { "[[]]", 1, 4, 0 },
        { "[]", 2, 4, 0 },
        { "[\"]\",[[\"[\"]]]", 1, 9, 0 },
        { "\"]\"", 1, 6, 0 },
        { "[[\"[\"]]", 1, 9, 0 },
        { "[\"[\"]", 1, 9, 0 },
        { "\"[\"", 1, 9, 0 }
    };

    static const node_t  scalars[] = {
        { "[true,false,null,-1.5e3,{\"k\":0}]", 1, 8, 0 },
        { "true", 1, 2, 0 },
        { "false", 1, 3, 0 },
        { "null", 1, 4, 0 },
        { "-1.5e3", 1, 5, 0 },
        { "{\"k\":0}", 1, 8, 0 },
        { "\"k\"", 1, 7, 0 },
        { "0", 1, 8, 0 }
    };

    jv_t                           v, m;
    uint8_t                       *t;
    const char                    *text;
    ngx_http_openclaw_jv_index_t   ix;
    ngx_http_openclaw_jv_node_t    room[4];

    index_nodes(flat[0].span, flat, 5);
    index_nodes(nested[0].span, nested, 11);
    index_nodes(arrays[0].span, arrays, 9);
    index_nodes(scalars[0].span, scalars, 8);
    index_nodes("7", (const node_t []) { { "7", 1, 1, 0 } }, 1);

    index_walk("{\"k0\":[1,{\"k2\":{}}],\"k1\":{\"k4\":[]},\"k2\":null}",
               "objects in arrays in objects");
    index_walk("{\"k1\":\"[{\",\"k0\":[[],{},[{\"k0\":[{}]}]],\"k3\":{\"k5\":"
               "{\"k7\":{\"k1\":[1,[2,[3]]]}}},\"k2\":{},\"k4\":[\"}]\"]}",
               "deep, with brackets in strings");
    index_walk("{\"type\":\"event\",\"event\":\"chat\",\"payload\":{\"runId\":"
               "\"r\",\"k0\":{\"k2\":\"assistant\",\"k4\":[{\"k0\":\"text\","
               "\"k1\":\"hi\"}],\"k6\":1},\"k1\":[{},{}]},\"k3\":3}",
               "a chat event");
    index_walk("[{\"k0\":[]},[[{\"k1\":{}}]],{\"k2\":{\"k3\":[[],[]]}}]",
               "an array at the top");
    index_walk("{\"k\\u0030\":1,\"k0\":\"a\\\"b\",\"k1\":[\"\\n\",\"x\","
               "{\"k3\":\"\\\\\"}],\"k2\":\"\"}", "escaped names and strings");
    index_walk(" { \"k0\" : [ 1 , { \"k2\" :\t{ } } ] ,\n\"k1\":"
               "{\"k4\" :[\r\n]},"
               "\"k2\" : \"x\" } ", "white space between the tokens");
    index_walk("{\"k0\":[1,{\"k2\":{}}],\"k1\":{\"k4\":[ ]}}",
               "white space only in the last container");
    index_walk("{\"k0\":{\"k0\":{\"k0\":{\"k0\":{\"k0\":{\"k0\":{}}}}}},"
               "\"k1\":[[[[[[[]]]]]]]}", "nested past a small room");

    /*
     * A container found through the index is not scanned for its end
     * again: a bracket blanked out after the parse does not change it.
     */

    text = "{\"k0\":{\"x\":1},\"k1\":2}";
    t = dup(text, strlen(text));
    ix.nodes = room;
    ix.size = 4;

    (void) ngx_http_openclaw_jv_parse(t, strlen(text), &v, &ix);
    t[find(text, "}", 1)] = ' ';

    is(ngx_http_openclaw_jv_get(&v, "k0", &m) == 0 ? (long long) m.len : -1,
       (long long) strlen("{\"x\":1}"),
       "index: a member's end comes from the index, not a second scan");

    free(t);
}


/*
 * Strings are skipped eight bytes at a time: a special byte at every
 * position of strings up to 40 bytes long, in a text that ends with the
 * string and in one that goes on.
 */

static void
test_string_positions(void)
{
    int       rc, pass, tail;
    jv_t      v;
    char      text[64];
    size_t    n, pos, len;
    uint8_t  *t;

    pass = 1;

    for (tail = 0; tail <= 1; tail++) {
        for (n = 1; n <= 40; n++) {
            for (pos = 0; pos < n; pos++) {

                /* a control byte: invalid */

                text[0] = '"';
                memset(text + 1, 'a', n);
                text[1 + pos] = 0x1f;
                text[1 + n] = '"';
                len = n + 2;

                if (tail) {
                    text[len++] = ' ';
                }

                t = dup(text, len);
                rc = ngx_http_openclaw_jv_parse(t, len, &v, NULL);
                free(t);

                if (rc != -1) {
                    diag("0x1f at %zu of %zu: rc %d", pos, n, rc);
                    pass = 0;
                }

                /* a quote: the string ends there, the rest trails */

                text[1 + pos] = '"';
                t = dup(text, len);
                rc = ngx_http_openclaw_jv_parse(t, len, &v, NULL);
                free(t);

                if (rc != -2) {
                    diag("quote at %zu of %zu: rc %d", pos, n, rc);
                    pass = 0;
                }

                /*
                 * An escaped quote after "pos" plain bytes, then the rest,
                 * the last a high byte: one string, escaped.
                 */

                text[0] = '"';
                memset(text + 1, 'a', n + 2);
                text[1 + pos] = '\\';
                text[2 + pos] = '"';
                text[2 + n] = (char) 0xe9;
                text[3 + n] = '"';
                len = n + 4;

                if (tail) {
                    text[len++] = ' ';
                }

                t = dup(text, len);
                rc = ngx_http_openclaw_jv_parse(t, len, &v, NULL);
                free(t);

                if (rc != 0 || v.type != J_STRING || v.size != n + 2
                    || !v.escaped)
                {
                    diag("escaped quote at %zu of %zu: rc %d", pos, n, rc);
                    pass = 0;
                }

                if (!pass) {
                    goto done;
                }
            }
        }
    }

done:

    ok(pass, "strings: control bytes, quotes and escapes at every position "
       "of 1 to 40 bytes");
}


int
main(void)
{
    test_valid();
    test_invalid();
    test_get();
    test_members();
    test_lookup();
    test_plain();
    test_next();
    test_member();
    test_decode();
    test_is();
    test_index();
    test_string_positions();

    printf("1..%u\n", tap_n);

    if (tap_failed) {
        fflush(stdout);
        fprintf(stderr, "# failed %u of %u tests\n", tap_failed, tap_n);
        return 1;
    }

    return 0;
}
