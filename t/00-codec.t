#!/usr/bin/perl

# Copyright (C) The ngx_http_openclaw_bridge_module authors

# Unit tests of the RFC 6455 frame codec: t/unit/ws_codec_test.c prints
# its own TAP, passed through as is.  The Makefile builds the binary
# before prove runs, so a missing one is a broken build, never a skip.

use strict;
use warnings;

use FindBin;

my $bin = "$FindBin::Bin/../build/ws_codec_test";

unless (-f $bin && -x _) {
    print "Bail out! build/ws_codec_test not built (run make unit)\n";
    exit 255;
}

exec { $bin } $bin
    or print "Bail out! cannot run build/ws_codec_test: $!\n";

exit 255;
