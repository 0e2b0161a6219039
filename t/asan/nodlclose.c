
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


/*
 * Preloaded with the ASan runtime into the test nginx (t/lib/OCB.pm).
 * nginx dlclose()s its dynamic modules when it destroys its last cycle,
 * just before exit(), and LeakSanitizer reports only at exit: by then the
 * module is unmapped and every one of its frames in a leak's allocation
 * stack is an "<unknown module>" address, which the suite cannot tell
 * from nginx's own.  A dlclose() that does nothing keeps the module
 * mapped, so that its frames are symbolized.  It must come after the ASan
 * runtime in LD_PRELOAD: the runtime's own dlclose() interceptor then
 * forwards to this one.
 */


int dlclose(void *handle);


int
dlclose(void *handle)
{
    (void) handle;

    return 0;
}
