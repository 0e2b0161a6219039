#!/usr/bin/perl

# The bridge when its real OpenClaw gateway (protocol 4, 2026.9.6) goes
# away in the middle of a streamed reply: once restarted (TERM, then a
# new process on the same port and home), once killed (SIGKILL) and
# started again.  Every message the module accepted must end in a
# complete or an error within a bounded time, never in silence; the link
# must come back by itself; error.log must have no [alert].

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time);
use Mojo::JSON qw(encode_json);

use OCB;
use OCGateway;

OCGateway::require_cache(4);

my $T0 = time;
my $gw = OCGateway->new(version => 4);
$gw->spy;
note sprintf 'gateway 2026.9.6 ready after %.1f s in %s', $gw->ready_after,
    $gw->dir;

# A run the gateway forgets must not leave its client waiting 10
# minutes; and messages wait up to 90 s for the link (the default, 30 s,
# is shorter than a restart of this gateway here), so that runs in flight
# are sent again to the new gateway process.
my $RUN_TIMEOUT = 90;
my $REQUEST_TIMEOUT = 90;
my $ngx = $gw->nginx(workers => 2,
                     extra => "openclaw_gateway_run_timeout ${RUN_TIMEOUT}s;\n"
                            . "    openclaw_gateway_request_timeout "
                            . "${REQUEST_TIMEOUT}s;");
ok(OCGateway::wait_links($ngx, 2, 30, 4),
   'both workers brought their gateway link up with protocol 4');

sub reply_for { OCGateway::Client::reply_for(@_) }

sub pump { OCGateway::Client::pump(@_) }

sub show { $gw->show($T0, @_) }

sub check { $gw->check($T0, @_) }

my $alice = OCGateway::Client->new($ngx, name => 'alice');
my $bob = OCGateway::Client->new($ngx, name => 'bob');
is($alice->status, 101, 'client alice: upgraded');
is($bob->status, 101, 'client bob: upgraded');

# the clients keep reading (and answering nginx's pings) while the test
# waits for the gateway to stop or start
$gw->idle(sub { pump([$alice, $bob], time + $_[0], sub { 0 }) });

my $t = time;
$alice->send_msg(id => 'warm-1', content => 'warm-up message',
                 session => 't62-a');
ok(pump([$alice, $bob], time + 150, sub { $alice->done('warm-1') }),
   'warm-up: answered within 150 s');
note sprintf 'warm-up turn took %.1f s', time - $t;
check($alice, 'warm-1', 'warm-up: one complete with the echo',
      session => 'agent:main:t62-a', content => reply_for('warm-up message'));

###########################################################################
# $how: "restart" (TERM, wait, start again) or "kill" (SIGKILL, start
# again), while alice's reply is streaming; bob sends a message while the
# gateway is down

sub interrupted {
    my ($how) = @_;

    my $key = "t62-$how";
    my $session = "agent:main:$key";
    my $text = "$how streaming #slow=800";
    my $id = "$how-stream";

    my $links = OCGateway::links_up($ngx, 4);

    $alice->send_msg(id => $id, content => $text, session => $key);
    ok(pump([$alice, $bob], time + 60, sub {
            grep { ($_->{type} // '') eq 'progress' } $alice->events($id) }),
       "$how: alice's reply is streaming");
    ok(!$alice->done($id), "$how: and not finished yet");

    my $t_down = time;
    if ($how eq 'restart') {
        ok($gw->stop, "$how: the gateway exited on TERM");
    } else {
        $gw->kill;
        pass("$how: the gateway was killed");
    }
    note sprintf '%s: gateway down after %.1f s', $how, time - $t_down;

    # accepted while no gateway is there
    my $down_text = "$how while down";
    my $down_id = "$how-down";
    $bob->send_msg(id => $down_id, content => $down_text,
                   session => "$key-down");
    pump([$alice, $bob], time + 1, sub { 0 });
    my @early = $bob->terminals($down_id);
    note "$how: bob's message while down, at once: " . encode_json(\@early)
        if @early;

    $gw->start;
    note sprintf '%s: gateway ready again %.1f s after it went down',
        $how, time - $t_down;

    ok(pump([$alice, $bob], time + 90,
            sub { OCGateway::links_up($ngx, 4) >= $links + 2 }),
       "$how: both workers' links came back by themselves");
    note sprintf '%s: links back %.1f s after the gateway went down', $how,
        time - $t_down;

    # never silence: waiting for the link, then the run, bound the wait
    my $bound = $REQUEST_TIMEOUT + $RUN_TIMEOUT + 30;
    ok(pump([$alice, $bob], $t_down + $bound,
            sub { $alice->done($id) && $bob->done($down_id) }),
       "$how: both accepted messages ended within $bound s");
    note sprintf '%s: both ended %.1f s after the gateway went down', $how,
        time - $t_down;
    pump([$alice, $bob], time + 2, sub { 0 });

    for my $m ([$alice, $id, $text, $session],
               [$bob, $down_id, $down_text, "$session-down"]) {
        my ($c, $mid, $mtext, $msession) = @$m;
        check($c, $mid, "$how: $mid ends in exactly one complete or error",
              session => $msession, type => qr/^(complete|error)$/,
              no_consistency => 1);
        # the client's view stays coherent even when the run was sent
        # again to a new gateway process and its text started over
        my @incoherent = $c->consistency_problems($mid);
        ok(!@incoherent, "$how: $mid progress content is always the "
                         . 'deltas so far, and so is the complete')
            or diag join "\n", @incoherent, show($c, $mid, $msession);
        my ($term) = $c->terminals($mid);
        next unless $term;
        my ($entry) = grep { ref $_->{json} && $_->{json} == $term }
                      @{ $c->{log} };
        note sprintf '%s: %s ended in %s %.1f s after the gateway went '
                     . 'down: %s', $how, $mid, $term->{type},
                     $entry->{t} - $t_down,
                     $term->{content} // $term->{error};
        if ($term->{type} eq 'complete') {
            is($term->{content}, reply_for($mtext),
               "$how: $mid completes with its whole reply")
                or diag show($c, $mid, $msession);
        } else {
            ok(length($term->{error} // ''), "$how: $mid error says why");
        }
    }

    # the link works again
    my $after_id = "$how-after";
    my $after_text = "$how after";
    $t = time;
    $alice->send_msg(id => $after_id, content => $after_text,
                     session => 't62-a');
    ok(pump([$alice, $bob], time + 60, sub { $alice->done($after_id) }),
       "$how: a new message is answered within 60 s");
    note sprintf '%s: new message took %.1f s', $how, time - $t;
    check($alice, $after_id, "$how: the new message completes with its echo",
          session => 'agent:main:t62-a', content => reply_for($after_text));
}

interrupted('restart');
interrupted('kill');

###########################################################################

pump([$alice, $bob], time + 2, sub { 0 });
for my $c ($alice, $bob) {
    my @foreign = $c->foreign_events;
    ok(!@foreign, "$c->{name}: no reply for another client or session")
        or diag join "\n", map { encode_json($_) } @foreign;
    my @bad;
    for my $m ($c->sent) {
        my @ev = $c->events($m->{id});
        my @term = $c->terminals($m->{id});
        push @bad, "$m->{id}: " . scalar(@term) . ' terminal replies'
            if @term != 1;
        push @bad, "$m->{id}: replies after the terminal one"
            if @term && $ev[-1] != $term[-1];
    }
    ok(!@bad, "$c->{name}: exactly one terminal reply per message, last")
        or diag join "\n", @bad;
}

my @levels = grep { /\[(crit|error|alert|emerg)\]/ } split /\n/,
             $ngx->error_log;
note "error.log: $_" for @levels;

$gw->idle(undef);
$_->close for $alice, $bob;
$ngx->stop;
$gw->stop_all;
note sprintf 'total %.1f s', time - $T0;

done_testing;
