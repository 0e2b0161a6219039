#!/usr/bin/perl

# Copyright (C) The ngx_http_openclaw_bridge_module authors

# Unit tests of the RFC 6455 frame codec (t/unit/ws_codec_test.c).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use UnitTest;

UnitTest::run('ws_codec_test');
