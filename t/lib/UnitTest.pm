package UnitTest;

# Copyright (C) The ngx_http_openclaw_bridge_module authors

# Runs a C unit test binary of build/ in place of the .t file that calls
# it: the binary prints its own TAP, passed through as is.  The Makefile
# builds the binaries before prove runs, so a missing one is a broken
# build, never a skip.

use strict;
use warnings;

use FindBin;

sub run {
    my ($name) = @_;
    my $bin = "$FindBin::Bin/../build/$name";

    unless (-f $bin && -x _) {
        print "Bail out! build/$name not built (run make unit)\n";
        exit 255;
    }

    exec { $bin } $bin
        or print "Bail out! cannot run build/$name: $!\n";

    exit 255;
}

1;
