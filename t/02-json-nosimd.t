#!/usr/bin/perl

# Copyright (C) The ngx_http_openclaw_bridge_module authors

# The unit tests of t/01-json.t with the scanner built without SSE2, so
# that its word-at-a-time path is tested too: t/unit/json_test.c prints
# its own TAP, passed through as is.  The Makefile builds the binary
# before prove runs, so a missing one is a broken build, never a skip.

use strict;
use warnings;

use FindBin;

my $bin = "$FindBin::Bin/../build/json_test_nosimd";

unless (-f $bin && -x _) {
    print "Bail out! build/json_test_nosimd not built (run make unit)\n";
    exit 255;
}

exec { $bin } $bin
    or print "Bail out! cannot run build/json_test_nosimd: $!\n";

exit 255;
