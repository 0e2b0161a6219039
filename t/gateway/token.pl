#!/usr/bin/perl
# Prints gateway.auth.token from an OpenClaw openclaw.json (JSON5), or
# nothing when the file or the token is missing; used by "make run".
use strict;
use warnings;

my $file = shift // exit 0;
open my $f, '<', $file or exit 0;
local $/;
my $text = <$f>;
$text =~ s{/\*.*?\*/}{}gs;
$text =~ s{^\s*//.*$}{}gm;
print $1 if $text =~ /"auth"\s*:\s*\{[^}]*?"token"\s*:\s*"([^"]+)"/s;
