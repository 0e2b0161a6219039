#!/usr/bin/perl

# The ASan suite sees the leaks of a module: a module that leaks on purpose
# (t/asan/leak_module.c), loaded next to the bridge, has its leak reported
# by LeakSanitizer with its frames named, which is what the leak filter of
# OCB::sanitizer_reports keeps.  As a control, the same leak with nginx
# unmapping its modules before the report, as it does unless
# t/asan/nodlclose.c is preloaded, has no frame the filter can keep: the
# first half fails if the preload goes.  Only under OCB_ASAN=1.

use strict;
use warnings;

use lib 't/lib';
use OCB;
use Test::More;

plan skip_all => 'leak reports come from the ASan runtime: OCB_ASAN=1'
    unless OCB::asan();

my $leaky = OCB::asan_dir() . '/ngx_openclaw_asan_leak_module.so';
if (!-f $leaky) {
    fail("$leaky is built (make module-asan)");
    done_testing;
    exit;
}

# nginx with the leaking module, until it quits: the text of its
# LeakSanitizer reports, and the module's leaks the filter keeps
sub leak_run {
    my (%o) = @_;
    my $ngx = OCB->new(main => "load_module $leaky;", %o);
    my @workers = $ngx->worker_pids;
    ok(@workers, 'a worker started');
    $ngx->stop(no_check => 1);

    my @bad = grep { /\[(alert|emerg)\]/ } split /\n/, $ngx->error_log;
    ok(!@bad, 'error.log has no [alert] or [emerg]') or diag join "\n", @bad;

    my $text = '';
    for my $f (glob $ngx->prefix . '/logs/asan*') {
        open my $h, '<', $f or next;
        local $/;
        $text .= <$h> // '';
        close $h;
    }
    return ($text, grep { /leak of/ } OCB::sanitizer_reports($text));
}

my ($text, @kept) = leak_run();

my @ours = grep { /in ngx_openclaw_asan_leak_some .*leak_module\.c:\d+/ }
           @kept;
is(scalar @ours, 1, 'the leak is reported, its module frame named')
    or diag $text;
like($ours[0] // '', qr/^Direct leak of \d+ byte\(s\) in \d+ object/,
     'as a direct leak');
is(scalar(grep { !/ngx_openclaw_asan_leak/ } @kept), 0,
   'no other leak goes through a module') or diag join "\n", @kept;

# the control: LeakSanitizer still sees the leak, the filter does not
($text, @kept) = leak_run(dlclose => 1);

like($text, qr/^Direct leak of .*\n.*malloc.*\n.*ngx_alloc.*\n.*<unknown module>/m,
     'without the preload, the leak has unnamed frames') or diag $text;
is(scalar @kept, 0, 'and the filter cannot keep it') or diag @kept;

done_testing;
