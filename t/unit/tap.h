
/*
 * The TAP output shared by the C unit tests: numbered "ok" lines, and
 * diagnostics on stderr where prove shows them.
 */


#ifndef _TAP_H_INCLUDED_
#define _TAP_H_INCLUDED_


#include <stdarg.h>
#include <stdio.h>


#define PRINTF_LIKE(f, a)  __attribute__((format(printf, f, a)))


static unsigned  tap_n;
static unsigned  tap_failed;


static void PRINTF_LIKE(1, 2)
diag(const char *fmt, ...)
{
    va_list  args;

    fflush(stdout);

    fprintf(stderr, "#   ");
    va_start(args, fmt);
    vfprintf(stderr, fmt, args);
    va_end(args);
    fprintf(stderr, "\n");
}


static int
vok(int pass, const char *fmt, va_list args)
{
    tap_n++;

    if (!pass) {
        tap_failed++;
    }

    printf("%sok %u - ", pass ? "" : "not ", tap_n);
    vprintf(fmt, args);
    printf("\n");
    fflush(stdout);

    return pass;
}


static int PRINTF_LIKE(2, 3)
ok(int pass, const char *fmt, ...)
{
    int      rc;
    va_list  args;

    va_start(args, fmt);
    rc = vok(pass, fmt, args);
    va_end(args);

    return rc;
}


#endif /* _TAP_H_INCLUDED_ */
