#!/usr/bin/perl

# The bridge against a real OpenClaw gateway speaking protocol 3
# (openclaw@2026.4.26), with the fake model of t/gateway/fake-model.pl.
# Small on purpose: this gateway runs one turn at a time and spends tens
# of seconds of CPU on each here (gateway-protocol.md, 13.8).  Covered:
# replies rebuilt from cumulative text (protocol 3 sends no deltaText);
# messages sent to a session whose previous run has only just ended (the
# empty-final hand-over of 13.9), one answered, one failing; a model
# failure (HTTP 500) that ends in an error for the right client only.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time);
use Mojo::JSON qw(encode_json);

use OCB;
use OCGateway;

OCGateway::require_cache(3);

my $T0 = time;

# a cold 2026.4.26 took up to 139 s to become ready on this machine
my $gw = OCGateway->new(version => 3, ready_timeout => 240);
$gw->spy;
note sprintf 'gateway 2026.4.26 ready after %.1f s in %s', $gw->ready_after,
    $gw->dir;

# This gateway's event loop stalls for tens of seconds while it runs a
# turn (13.9: "control requests made meanwhile need a timeout well above
# that"): acknowledgements get 120 s, not the 30 s default, which on this
# machine had the module abort runs the gateway was about to answer.
my $ngx = $gw->nginx(workers => 2,
                     extra => "openclaw_gateway_run_timeout 300s;\n"
                            . "    openclaw_gateway_request_timeout 120s;");
ok(OCGateway::wait_links($ngx, 2, 30, 3),
   'both workers brought their gateway link up with protocol 3');

sub reply_for { OCGateway::Client::reply_for(@_) }

sub pump { OCGateway::Client::pump(@_) }

sub show { $gw->show($T0, @_) }

sub check { $gw->check($T0, @_) }

###########################################################################
# one warm-up message alone: concurrent first runs on a fresh home can
# fail inside this gateway (13.8)

my $alice = OCGateway::Client->new($ngx, name => 'alice');
my $bob = OCGateway::Client->new($ngx, name => 'bob');
is($alice->status, 101, 'client alice: upgraded');
is($bob->status, 101, 'client bob: upgraded');

my $t = time;
$alice->send_msg(id => 'warm-1', content => 'warm-up message',
             session => 't61-a');
# a cold first turn took 70 to 190 s here, depending on the machine's load
ok(pump([$alice, $bob], time + 240, sub { $alice->done('warm-1') }),
   'warm-up: answered within 240 s');
note sprintf 'warm-up turn took %.1f s', time - $t;
check($alice, 'warm-1', 'warm-up: progress, then one complete with the echo',
      session => 'agent:main:webhook:session:t61-a',
      content => reply_for('warm-up message'));

###########################################################################
# then, at once: alice sends the next message to her session, whose run
# (the warm-up) has only just ended, which is when this gateway answers
# with an empty final and streams the reply in a run of its own choosing;
# bob sends one to a new session, and the moment it is complete, one
# that the fake model answers with HTTP 500 (again to a session whose run
# has only just ended).  Three turns, one at a time, 30-40 s each here.

my %texts = (
    'a-1' => 'alpha one #history',
    'b-1' => 'beta one',
    'b-2' => 'beta fails #fail',
);

$t = time;
my $since = time;
$alice->send_msg(id => 'a-1', content => $texts{'a-1'}, session => 't61-a');
$bob->send_msg(id => 'b-1', content => $texts{'b-1'}, session => 't61-b');

my $b2_sent;
my $done = sub {
    if ($bob->done('b-1') && !$b2_sent) {
        $b2_sent = 1;
        $bob->send_msg(id => 'b-2', content => $texts{'b-2'},
                       session => 't61-b');
    }
    return $alice->done('a-1') && $bob->done('b-2');
};

ok(pump([$alice, $bob], time + 300, $done),
   'all three messages ended within 300 s');
note sprintf 'second phase took %.1f s', time - $t;
pump([$alice, $bob], time + 3, sub { 0 });

check($alice, 'a-1', 'alpha one, sent as the warm-up run ended: its real '
                     . 'reply, with the session\'s memory, as one complete',
      session => 'agent:main:webhook:session:t61-a',
      content => reply_for($texts{'a-1'}, 'warm-up message', $texts{'a-1'}));
check($bob, 'b-1', 'beta one: progress, then one complete with the echo',
      session => 'agent:main:webhook:session:t61-b', content => reply_for($texts{'b-1'}));
check($bob, 'b-2', 'beta fails: one error reply, for bob',
      session => 'agent:main:webhook:session:t61-b', type => 'error');

# what the gateway did, for the record: empty finals are the hand-over
for my $key ('t61-a', 't61-b') {
    my @finals = grep { ($_->{frame}{payload}{state} // '') =~ /^(final|error)$/
                        && $_->{t} >= $since }
                 $gw->spy_chat("agent:main:webhook:session:$key");
    note sprintf '%s: gateway terminal events since phase 2: %s', $key,
        join ', ', map {
            my $p = $_->{frame}{payload};
            my $m = $p->{message};
            my $c = ref $m eq 'HASH' ? $m->{content} : undef;
            my $text = ref $c eq 'ARRAY'
                ? join('', map { $_->{text} // '' } @$c) : $c // '';
            "$p->{state} of " . ($p->{runId} =~ /^wh-/ ? 'a module run'
                                                      : 'a gateway run')
            . (length $text ? '' : ' (empty)')
        } @finals;
}

# This gateway's event loop stalls while it runs a turn; on a busy
# machine for more than two tick intervals (60 s), and nginx then drops
# the link and reconnects: worth knowing when something above failed.
my @link = grep { /gateway silent|link lost|link up, protocol 3, after/ }
           split /\n/, $ngx->error_log;
note "error.log: $_" for @link;

my @deltas = grep { ($_->{frame}{payload}{state} // '') eq 'delta' }
             $gw->spy_chat;
my @with_delta_text = grep { exists $_->{frame}{payload}{deltaText} } @deltas;
ok(@deltas && !@with_delta_text,
   'the gateway sent deltas with cumulative text only, no deltaText')
    or diag scalar(@deltas) . ' deltas, ' . scalar(@with_delta_text)
            . ' with deltaText';

###########################################################################
# nothing late, nothing foreign

pump([$alice, $bob], time + 3, sub { 0 });
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

$_->close for $alice, $bob;
$ngx->stop;
$gw->stop_all;
note sprintf 'total %.1f s', time - $T0;

done_testing;
