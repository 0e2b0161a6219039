#!/usr/bin/perl

# Copyright (C) The ngx_http_openclaw_bridge_module authors

# Unit tests of the JSON scanner: t/unit/json_test.c prints its own TAP,
# passed through as is.  The Makefile builds the binary before prove
# runs, so a missing one is a broken build, never a skip.

use strict;
use warnings;

use FindBin;

my $bin = "$FindBin::Bin/../build/json_test";

unless (-f $bin && -x _) {
    print "Bail out! build/json_test not built (run make unit)\n";
    exit 255;
}

exec { $bin } $bin
    or print "Bail out! cannot run build/json_test: $!\n";

exit 255;
