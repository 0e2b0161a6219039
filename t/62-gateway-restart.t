#!/usr/bin/perl

# The bridge when its real OpenClaw gateway (protocol 4, 2026.9.6) goes
# away in the middle of a streamed reply: once restarted (TERM, then a
# new process on the same port and home), once killed (SIGKILL) and
# started again.  What README promises, in both cases the test arranges:
#
#   - the gateway is back within openclaw_gateway_request_timeout (240 s
#     here, where a start takes 12 to 30 s): every message in flight, the
#     one streaming and one sent while the gateway was down, is sent
#     again and ends in a complete with its whole reply, and deltas that
#     add up to it;
#   - the gateway stays down past the request timeout (3 s, in a second
#     nginx, whose message is answered before the gateway is started
#     again): that message ends in an error saying so.
#
# On TERM the gateway finishes the runs it has before it exits; killed,
# it cannot, and the streaming message is the one sent again.
#
# The links come back by themselves; error.log has no [alert].

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
# minutes; messages wait up to 240 s for the link, far more than a
# restart of this gateway takes even on a busy machine, so that the case
# is known: runs in flight are sent again to the new gateway process.
my $RUN_TIMEOUT = 120;
my $REQUEST_TIMEOUT = 240;
my $ngx = $gw->nginx(workers => 2,
                     extra => "openclaw_gateway_run_timeout ${RUN_TIMEOUT}s;\n"
                            . "    openclaw_gateway_request_timeout "
                            . "${REQUEST_TIMEOUT}s;");
ok(OCGateway::wait_links($ngx, 2, 30, 4),
   'both workers brought their gateway link up with protocol 4');

# and one that waits 3 s only: its messages end in an error when the
# gateway is away longer
my $SHORT_TIMEOUT = 3;
my $short = $gw->nginx(workers => 1,
                       extra => "openclaw_gateway_request_timeout "
                              . "${SHORT_TIMEOUT}s;");
ok(OCGateway::wait_links($short, 1, 30, 4),
   'the nginx with a 3 s request timeout linked up too');

# the workers whose link is ready, connected at or after $since
sub links_ready {
    my ($n, $since) = @_;
    return scalar grep { ($_->{state} // '') eq 'ready'
                         && ($_->{since} // 0) >= int($since // 0) }
                  OCGateway::link_states($n);
}

sub reply_for { OCGateway::Client::reply_for(@_) }

sub pump { OCGateway::Client::pump(@_) }

sub show { $gw->show($T0, @_) }

sub check { $gw->check($T0, @_) }

my $alice = OCGateway::Client->new($ngx, name => 'alice');
my $bob = OCGateway::Client->new($ngx, name => 'bob');
my $carol = OCGateway::Client->new($short, name => 'carol');
is($alice->status, 101, 'client alice: upgraded');
is($bob->status, 101, 'client bob: upgraded');
is($carol->status, 101, 'client carol (3 s request timeout): upgraded');
my @all = ($alice, $bob, $carol);

# the clients keep reading (and answering nginx's pings) while the test
# waits for the gateway to stop or start
$gw->idle(sub { pump(\@all, time + $_[0], sub { 0 }) });

my $t = time;
$alice->send_msg(id => 'warm-1', content => 'warm-up message',
                 session => 't62-a');
ok(pump(\@all, time + 150, sub { $alice->done('warm-1') }),
   'warm-up: answered within 150 s');
note sprintf 'warm-up turn took %.1f s', time - $t;
check($alice, 'warm-1', 'warm-up: one complete with the echo',
      session => 'agent:main:webhook:session:t62-a', content => reply_for('warm-up message'));

###########################################################################
# $how: "restart" (TERM, wait, start again) or "kill" (SIGKILL, start
# again), while alice's reply is streaming; bob (240 s to wait) and carol
# (3 s) send a message while the gateway is down, and the gateway is
# started again only once carol has her error

sub interrupted {
    my ($how) = @_;

    my $key = "t62-$how";
    my $session = "agent:main:webhook:session:$key";
    my $text = "$how streaming #slow=800";
    my $id = "$how-stream";

    $alice->send_msg(id => $id, content => $text, session => $key);
    ok(pump(\@all, time + 60, sub {
            grep { ($_->{type} // '') eq 'progress' } $alice->events($id) }),
       "$how: alice's reply is streaming");
    ok(!$alice->done($id), "$how: and not finished yet");

    my $t_down = time;
    if ($how eq 'restart') {
        ok($gw->stop, "$how: the gateway exited on TERM");
    } else {
        $gw->kill;
    }
    ok(pump(\@all, time + 30, sub { !links_ready($ngx) && !links_ready($short) }),
       "$how: nginx saw the gateway go (no link ready)");
    note sprintf '%s: gateway down after %.1f s', $how, time - $t_down;

    # accepted while no gateway is there
    my $down_text = "$how while down";
    my $down_id = "$how-down";
    $bob->send_msg(id => $down_id, content => $down_text,
                   session => "$key-down");
    my $short_id = "$how-short";
    my $t_short = time;
    $carol->send_msg(id => $short_id, content => "$how past the timeout",
                     session => "$key-short");

    # past the request timeout: an error, and only then the gateway again
    ok(pump(\@all, time + $SHORT_TIMEOUT + 30, sub { $carol->done($short_id) }),
       "$how: carol's message ended while the gateway was down");
    check($carol, $short_id, "$how: the gateway down past the ${SHORT_TIMEOUT} s "
          . 'request timeout: an error that says so',
          session => "$session-short", type => 'error',
          error => qr/gateway not connected within ${SHORT_TIMEOUT}000 ms/);
    cmp_ok(time - $t_short, '>=', $SHORT_TIMEOUT - 0.1,
           "$how: not before the ${SHORT_TIMEOUT} s");
    # on TERM the gateway finishes its runs before it exits (alice's took
    # seconds to, here); killed, it cannot
    my @waiting = ([$bob, $down_id]);
    if ($how eq 'kill' || !$alice->done($id)) {
        unshift @waiting, [$alice, $id];
    } else {
        note "$how: alice's run ended before the gateway exited";
    }
    ok(!grep({ $_->[0]->done($_->[1]) } @waiting),
       "$how: the messages with $REQUEST_TIMEOUT s to wait are still waiting: "
       . join(', ', map { $_->[1] } @waiting));

    $gw->start;
    my $back = time - $t_down;
    note sprintf '%s: gateway ready again %.1f s after it went down', $how,
        $back;
    ok(pump(\@all, time + 90,
            sub { links_ready($ngx, $t_down) == 2
                  && links_ready($short, $t_down) == 1 }),
       "$how: every worker's link came back by itself");
    $back = time - $t_down;
    note sprintf '%s: links back %.1f s after the gateway went down', $how,
        $back;

    # the case this test is in: the messages in flight did not wait
    # longer than the request timeout
    cmp_ok($back, '<', $REQUEST_TIMEOUT,
           "$how: the gateway was back within the $REQUEST_TIMEOUT s request "
           . 'timeout, so every message in flight must complete');

    ok(pump(\@all, time + $RUN_TIMEOUT + 30,
            sub { $alice->done($id) && $bob->done($down_id) }),
       "$how: both messages in flight ended");
    note sprintf '%s: both ended %.1f s after the gateway went down', $how,
        time - $t_down;

    for my $m ([$alice, $id, $text, $session],
               [$bob, $down_id, $down_text, "$session-down"]) {
        my ($c, $mid, $mtext, $msession) = @$m;
        # the client's view stays coherent even though the run was sent
        # again to a new gateway process and its text started over
        check($c, $mid, "$how: $mid, sent again after the restart, ends in "
              . 'one complete with its whole reply, the deltas adding up',
              session => $msession, content => reply_for($mtext));
        my ($term) = $c->terminals($mid);
        next unless $term;
        my ($entry) = grep { ref $_->{json} && $_->{json} == $term }
                      @{ $c->{log} };
        note sprintf '%s: %s ended in %s %.1f s after the gateway went '
                     . 'down: %s', $how, $mid, $term->{type},
                     $entry->{t} - $t_down,
                     $term->{content} // $term->{error};
    }

    # the link works again, in both nginx
    my $after_id = "$how-after";
    my $after_text = "$how after";
    $t = time;
    $alice->send_msg(id => $after_id, content => $after_text,
                     session => 't62-a');
    $carol->send_msg(id => $after_id, content => "$after_text short",
                     session => 't62-c');
    ok(pump(\@all, time + 60,
            sub { $alice->done($after_id) && $carol->done($after_id) }),
       "$how: new messages are answered within 60 s");
    note sprintf '%s: new messages took %.1f s', $how, time - $t;
    check($alice, $after_id, "$how: the new message completes with its echo",
          session => 'agent:main:webhook:session:t62-a', content => reply_for($after_text));
    check($carol, $after_id, "$how: and through the other nginx",
          session => 'agent:main:webhook:session:t62-c',
          content => reply_for("$after_text short"));
}

interrupted('restart');
interrupted('kill');

###########################################################################

pump(\@all, time + 2, sub { 0 });
for my $c (@all) {
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

my @levels = grep { /\[(crit|error|alert|emerg)\]/ }
             map { split /\n/ } $ngx->error_log, $short->error_log;
note "error.log: $_" for @levels;

$gw->idle(undef);
$_->close for @all;
$ngx->stop;
$short->stop;
$gw->stop_all;
note sprintf 'total %.1f s', time - $T0;

done_testing;
