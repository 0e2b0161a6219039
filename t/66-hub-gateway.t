#!/usr/bin/perl

# Hub mode end to end against the REAL OpenClaw gateway, both protocol
# generations (openclaw@2026.9.6, protocol 4, then openclaw@2026.4.26,
# protocol 3; OCB_HUB_GATEWAYS="4" or "3" runs one), with the fake model
# of t/gateway/fake-model.pl: nginx (two workers) dials a rooms test hub
# (t/lib/TestHub.pm) for two uids; users of both uids send at once; each
# message ends in exactly one complete with the model's echo of its own
# turn, in the session its uid maps to (a per-message session, or the
# named one, whose memory holds that uid's turns only: "#history"), and
# nothing crosses between the uids.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Mojo::JSON qw(encode_json);
use Time::HiRes qw(sleep time);

use OCB;
use OCGateway;
use TestHub;

my @VERSIONS = split ' ', ($ENV{OCB_HUB_GATEWAYS} // '4 3');
OCGateway::require_cache($_) for @VERSIONS;

my $T0 = time;

sub reply_for { OCGateway::Client::reply_for(@_) }

sub wait_for {
    my ($cond, $timeout) = @_;
    my $deadline = time + ($timeout // 10);
    for (;;) {
        my $v = $cond->();
        return $v if $v || time >= $deadline;
        sleep 0.05;
    }
}

sub run_version {
    my ($v) = @_;

    # a cold 2026.4.26 took up to 139 s to become ready on this machine
    my $gw = OCGateway->new(version => $v, ready_timeout => 240);
    note sprintf 'gateway (protocol %d) ready after %.1f s in %s', $v,
        $gw->ready_after, $gw->dir;
    my $hub = TestHub->new(mode => 'rooms');

    # protocol 3 stalls its loop for tens of seconds per turn (13.9)
    my $ngx = OCB->new(workers => 2, http => <<"EOF");
openclaw_gateway @{[ $gw->url ]};
openclaw_gateway_token @{[ $gw->token ]};
openclaw_gateway_run_timeout 300s;
openclaw_gateway_request_timeout 120s;
openclaw_bridge_zone hubgw:1m;

server {
    listen 127.0.0.1:%%PORT%%;

    location = /status {
        openclaw_bridge_status;
    }

    location /hub-a {
        openclaw_bridge_hub @{[ $hub->url('/ws') ]};
        openclaw_bridge_uid u-a;
        openclaw_bridge_session_zone hubgw;
    }

    location /hub-b {
        openclaw_bridge_hub @{[ $hub->url('/ws') ]};
        openclaw_bridge_uid u-b;
        openclaw_bridge_session_zone hubgw;
    }
}
EOF
    ok(OCGateway::wait_links($ngx, 2, 30, $v),
       "p$v: both workers' gateway links up with protocol $v");
    ok(wait_for(sub { $hub->bridges('u-a') == 1 && $hub->bridges('u-b') == 1 }, 30),
       "p$v: one hub link per uid");

    my @everyone;
    my $pump = sub { OCGateway::Client::pump(\@everyone, @_) };
    my $check = sub { $gw->check($T0, @_) };
    my $user = sub {
        my ($uid, $name) = @_;
        my $c = OCGateway::Client->new($hub, path => "/ws?uid=$uid", name => $name);
        push @everyone, $c;
        return $c;
    };

    # one warm-up message alone: the first turn on a fresh home is slow
    my $warm = $user->('u-a', 'warm');
    is($warm->status, 101, "p$v: warm-up user connected to the hub");
    $warm->send_msg(id => "W-$v", content => 'hub warm-up');
    ok($pump->(time + 240, sub { $warm->done("W-$v") }), "p$v: warm-up answered");
    $check->($warm, "W-$v", "p$v: warm-up: one complete with the echo, per-message session",
             session => "agent:main:webhook:uid:u-a:hub:msg:w-$v",
             content => reply_for('hub warm-up'));

    # two users of u-a (one only listens), one of u-b; each uid has a
    # conversation "conv" of two turns, the second asking for the memory;
    # the uids run at once
    my $a1 = $user->('u-a', 'a1');
    my $a2 = $user->('u-a', 'a2');
    my $b1 = $user->('u-b', 'b1');
    my %plan = (
        'u-a' => { c => $a1, texts => ["alpha one p$v", "alpha two p$v #history"], ids => [] },
        'u-b' => { c => $b1, texts => ["bravo one p$v", "bravo two p$v #history"], ids => [] },
    );
    my $next = sub {
        my ($uid) = @_;
        my $p = $plan{$uid};
        my $n = @{ $p->{ids} };
        my $id = "$uid-p$v-m" . ($n + 1);
        push @{ $p->{ids} }, $id;
        $p->{c}->send_msg(id => $id, content => $p->{texts}[$n], session => 'conv');
    };
    $next->($_) for sort keys %plan;
    my $t = time;
    ok($pump->(time + ($v == 3 ? 480 : 240), sub {
        my $all = 1;
        for my $uid (sort keys %plan) {
            my $p = $plan{$uid};
            if (!$p->{c}->done($p->{ids}[-1])) { $all = 0; next }
            next if @{ $p->{ids} } == @{ $p->{texts} };
            $next->($uid);
            $all = 0;
        }
        return $all;
    }), "p$v: both conversations answered");
    note sprintf 'p%d: conversations took %.1f s', $v, time - $t;

    # and a per-message one of each uid at once
    $a1->send_msg(id => "A-Solo-$v", content => "alpha solo p$v");
    $b1->send_msg(id => "B-Solo-$v", content => "bravo solo p$v");
    ok($pump->(time + ($v == 3 ? 480 : 240),
               sub { $a1->done("A-Solo-$v") && $b1->done("B-Solo-$v") }),
       "p$v: the per-message ones answered");
    # anything late would come now
    $pump->(time + 3, sub { 0 });

    for my $uid (sort keys %plan) {
        my $p = $plan{$uid};
        my @texts = @{ $p->{texts} };
        for my $i (0 .. $#texts) {
            my @seen = $texts[$i] =~ /#history/ ? @texts[0 .. $i] : ();
            $check->($p->{c}, $p->{ids}[$i], "p$v: $p->{ids}[$i]: one complete, its own turn",
                     session => "agent:main:webhook:uid:$uid:session:conv",
                     content => reply_for($texts[$i], @seen));
        }
    }
    $check->($a1, "A-Solo-$v", "p$v: u-a per-message",
             session => lc "agent:main:webhook:uid:u-a:hub:msg:A-Solo-$v",
             content => reply_for("alpha solo p$v"));
    $check->($b1, "B-Solo-$v", "p$v: u-b per-message",
             session => lc "agent:main:webhook:uid:u-b:hub:msg:B-Solo-$v",
             content => reply_for("bravo solo p$v"));

    # the other user of u-a saw u-a's replies (the hub fans them out)
    for my $id (@{ $plan{'u-a'}{ids} }, "A-Solo-$v") {
        is(scalar $a2->terminals($id), 1, "p$v: the listening user of u-a: one end of $id");
    }

    # nothing crosses between the uids
    my %mine = (
        a => { map { $_ => 1 } @{ $plan{'u-a'}{ids} }, "A-Solo-$v" },
        b => { map { $_ => 1 } @{ $plan{'u-b'}{ids} }, "B-Solo-$v" },
    );
    for my $c ([a1 => $a1, 'a'], [a2 => $a2, 'a'], [b1 => $b1, 'b']) {
        my ($name, $client, $side) = @$c;
        my @foreign = grep { !(ref $_ eq 'HASH' && defined $_->{id} && $mine{$side}{ $_->{id} }) }
                      $client->all_events;
        ok(!@foreign, "p$v: $name got replies of its uid's messages only")
            or diag join "\n", map { encode_json($_) } @foreign;
        my $other = $side eq 'a' ? qr/bravo/ : qr/alpha/;
        my @leak = grep { ref $_ eq 'HASH' && encode_json($_) =~ $other } $client->all_events;
        ok(!@leak, "p$v: $name saw no text of the other uid");
    }

    $_->close for @everyone;
    $ngx->stop;
    $hub->stop;
    $gw->stop_all;
}

run_version($_) for @VERSIONS;
note sprintf 'total %.1f s', time - $T0;

done_testing;
