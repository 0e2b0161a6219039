
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * A dynamic module that only leaks, for t/17-asan-leaks.t: it proves that
 * a leak in a module's code is reported with the module's frames
 * symbolized (t/asan/nodlclose.c), which is what the suite's leak filter
 * (t/lib/OCB.pm) matches on.  It is never built into the bridge module.
 */


#include <ngx_config.h>
#include <ngx_core.h>


/* distinct objects, so that a stale copy of one pointer hides only one */
#define NGX_OPENCLAW_ASAN_LEAKS        64
#define NGX_OPENCLAW_ASAN_LEAK_SIZE    48

/* deeper than the worker's exit path reaches, see leak_deep() */
#define NGX_OPENCLAW_ASAN_LEAK_DEPTH   65536

/* or the compiler would fold the frames the stacks are to show */
#define ngx_openclaw_asan_noinline     __attribute__((noinline))


static ngx_int_t ngx_openclaw_asan_leak_init_process(ngx_cycle_t *cycle);
static void ngx_openclaw_asan_leak_deep(ngx_log_t *log);
static void ngx_openclaw_asan_leak_some(ngx_log_t *log);


static ngx_core_module_t  ngx_openclaw_asan_leak_module_ctx = {
    ngx_string("openclaw_asan_leak"),
    NULL,
    NULL
};


ngx_module_t  ngx_openclaw_asan_leak_module = {
    NGX_MODULE_V1,
    &ngx_openclaw_asan_leak_module_ctx,    /* module context */
    NULL,                                  /* module directives */
    NGX_CORE_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_openclaw_asan_leak_init_process,   /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


ngx_module_t  *ngx_modules[] = {
    &ngx_openclaw_asan_leak_module,
    NULL
};

char  *ngx_module_names[] = {
    "ngx_openclaw_asan_leak_module",
    NULL
};

char  *ngx_module_order[] = {
    NULL
};


static ngx_int_t
ngx_openclaw_asan_leak_init_process(ngx_cycle_t *cycle)
{
    ngx_openclaw_asan_leak_deep(cycle->log);

    return NGX_OK;
}


/*
 * LeakSanitizer scans the live part of the stack at exit, and stale
 * copies of the pointers there would make the objects reachable: they
 * are allocated far below any frame of the exit path.
 */

static ngx_openclaw_asan_noinline void
ngx_openclaw_asan_leak_deep(ngx_log_t *log)
{
    volatile u_char  pad[NGX_OPENCLAW_ASAN_LEAK_DEPTH];

    pad[0] = 0;
    pad[sizeof(pad) - 1] = 0;

    ngx_openclaw_asan_leak_some(log);

    pad[0] = pad[sizeof(pad) - 1];
}


static ngx_openclaw_asan_noinline void
ngx_openclaw_asan_leak_some(ngx_log_t *log)
{
    u_char      *p;
    ngx_uint_t   i;

    for (i = 0; i < NGX_OPENCLAW_ASAN_LEAKS; i++) {
        p = ngx_alloc(NGX_OPENCLAW_ASAN_LEAK_SIZE, log);
        if (p == NULL) {
            return;
        }

        ngx_memset(p, 0x5a, NGX_OPENCLAW_ASAN_LEAK_SIZE);
    }
}
