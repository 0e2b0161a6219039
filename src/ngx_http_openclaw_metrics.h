
/*
 * Copyright (C) The ngx_http_openclaw_bridge_module authors
 */


#ifndef _NGX_HTTP_OPENCLAW_METRICS_H_INCLUDED_
#define _NGX_HTTP_OPENCLAW_METRICS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


/* 5 ms .. 60 s, and +Inf */
#define NGX_HTTP_OPENCLAW_HISTOGRAM_BUCKETS  14


/*
 * A latency histogram of one worker, in its status slot.  Buckets are
 * not cumulative, so that an observation is one increment; the count is
 * the sum of the buckets, so that a reader never sees them disagree.
 */

typedef struct {
    ngx_uint_t                  buckets[NGX_HTTP_OPENCLAW_HISTOGRAM_BUCKETS];
    ngx_uint_t                  sum;        /* ms */
} ngx_http_openclaw_histogram_t;


void ngx_http_openclaw_metrics_observe(ngx_http_openclaw_histogram_t *h,
    ngx_msec_t ms);

ngx_int_t ngx_http_openclaw_metrics_handler(ngx_http_request_t *r);


#endif /* _NGX_HTTP_OPENCLAW_METRICS_H_INCLUDED_ */
