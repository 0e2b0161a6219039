#!/usr/bin/perl

# Copyright (C) The ngx_http_openclaw_bridge_module authors

# Unit tests of the JSON scanner (t/unit/json_test.c).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use UnitTest;

UnitTest::run('json_test');
