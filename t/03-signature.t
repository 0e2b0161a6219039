#!/usr/bin/perl

# Copyright (C) The ngx_http_openclaw_bridge_module authors

# Unit tests of the device-auth signature (t/unit/signature_test.c).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use UnitTest;

UnitTest::run('signature_test');
