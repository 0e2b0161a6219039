#!/usr/bin/perl

# Copyright (C) The ngx_http_openclaw_bridge_module authors

# The unit tests of t/01-json.t with the scanner built without SSE2, so
# that its word-at-a-time path is tested too.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use UnitTest;

UnitTest::run('json_test_nosimd');
