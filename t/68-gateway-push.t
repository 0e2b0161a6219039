#!/usr/bin/perl

# Runs the agent starts (issue 14) against real OpenClaw gateways, both
# generations (2026.9.6 speaks protocol 4, 2026.4.26 protocol 3), with the
# fake model: a gateway-side chat.send, made by an operator connection of
# the test's own, on a webhook session that one of the bridge's senders
# owns plays the agent speaking on its own.  Its owner gets it, marked
# "origin":"agent", with the model's reply to it; another sender does not;
# a run in a session of no one here, going on at the same time, reaches
# nobody.  nginx has two workers, so the owner's worker delivers it and the
# other one, which sees the same events, does not; and with the owner
# gone, the agent's run reaches nobody and is counted once, not once per
# worker.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use HTTP::Tiny;
use Time::HiRes qw(time);
use Mojo::JSON qw(decode_json encode_json);

use OCB;
use OCGateway;

sub pump { OCGateway::Client::pump(@_) }

# a chat.send over an operator connection of the test's own: its ack
sub operator_send {
    my ($gw, $params) = @_;
    return $gw->operator_call('chat.send', $params,
                              scopes => ['operator.read', 'operator.write']);
}

# the agent's replies a client has (they carry no id)
sub agent_events {
    my ($c, $session) = @_;
    return grep { ref $_ eq 'HASH' && ($_->{origin} // '') eq 'agent'
                  && (!defined $session || ($_->{session} // '') eq $session) }
           $c->events('');
}

# the workers' figures, summed: $name's total, or undef
sub total {
    my ($ngx, $name) = @_;
    my $r = HTTP::Tiny->new(timeout => 5)->get($ngx->http_url('/status'));
    return undef unless $r->{success};
    my $st = eval { decode_json($r->{content}) } or return undef;
    my $n = 0;
    $n += $_->{$name} // 0 for @{ $st->{workers} // [] };
    return $n;
}

# the clients still open keep reading meanwhile: one that stops
# answering nginx's pings through a long wait is closed
sub wait_total {
    my ($ngx, $name, $want, $timeout, $clients) = @_;
    my $deadline = time + $timeout;
    my $n;
    while (time < $deadline) {
        $n = total($ngx, $name);
        return $n if defined $n && $n == $want;
        if ($clients && @$clients) {
            pump($clients, time + 0.1, sub { 0 });
        } else {
            select undef, undef, undef, 0.1;
        }
    }
    return $n;
}

sub agent_done {
    my ($c, $session) = @_;
    return scalar grep { ($_->{type} // '') =~ /^(complete|error)$/ }
                       agent_events($c, $session);
}

for my $version (4, 3) {
    OCGateway::require_cache($version);

    my $gw = OCGateway->new(version => $version);
    note sprintf 'gateway (protocol %d) ready after %.1f s in %s', $version,
        $gw->ready_after, $gw->dir;

    my $ngx = $gw->nginx(
        workers => 2,
        extra => "openclaw_gateway_run_timeout 300s;\n"
               . "    openclaw_bridge_zone s:1m;",
        loc => "openclaw_bridge_session_zone s;\n"
             . "            openclaw_bridge_sender \$arg_sender;");
    ok(OCGateway::wait_links($ngx, 2, 30, $version),
       "v$version: both workers brought their gateway link up");

    my $alice = OCGateway::Client->new($ngx, path => '/ws?sender=alice',
                                       name => 'alice');
    my $bob = OCGateway::Client->new($ngx, path => '/ws?sender=bob',
                                     name => 'bob');
    my @all = ($alice, $bob);

    # each sender's message makes its default session, its own

    $alice->send_msg(id => 'a1', content => 'hello from alice');
    $bob->send_msg(id => 'b1', content => 'hello from bob');
    ok(pump(\@all, time + 330, sub { $alice->done('a1') && $bob->done('b1') }),
       "v$version: both first messages answered");
    my ($a1) = $alice->terminals('a1');
    my $session = $a1->{session} // '';
    is($session, 'agent:main:webhook:sender:alice',
       "v$version: alice's default session");

    # the agent speaks in alice's session; meanwhile another client of the
    # gateway chats in a session that is no one's here

    my ($res, $err) = operator_send($gw, {
        sessionKey => $session, message => 'cron: time to stretch',
        idempotencyKey => "t68-cron-$version-$$" });
    ok($res && $res->{ok}, "v$version: the gateway took the agent's turn")
        or diag $err // encode_json($res);
    ($res, $err) = operator_send($gw, {
        sessionKey => 'agent:main:t68-elsewhere',
        message => 'FOREIGN turn', idempotencyKey => "t68-foreign-$version-$$" });
    ok($res && $res->{ok}, "v$version: and the foreign turn")
        or diag $err // encode_json($res);

    ok(pump(\@all, time + 330, sub { agent_done($alice, $session) }),
       "v$version: alice got the agent's run");

    my @ev = agent_events($alice, $session);
    my @ends = grep { $_->{type} =~ /^(complete|error)$/ } @ev;
    is(scalar @ends, 1, "v$version: it ended once");
    is($ends[0]{type}, 'complete', "v$version: with a complete");
    like($ends[0]{content} // '', qr/^Reply to: cron: time to stretch\./,
         "v$version: the model's reply to the agent's turn");
    ok(!exists $ends[0]{id}, "v$version: no id");

    my ($acc, @bad) = ('');
    for my $e (grep { $_->{type} =~ /^(progress|complete)$/ } @ev) {
        $acc = '' if $e->{replace};
        $acc .= $e->{delta} // '';
        push @bad, $e->{type} if ($e->{content} // '') ne $acc;
    }
    is("@bad", '', "v$version: its deltas add up");

    # bob's next message is answered after anything sent to him before it

    $bob->send_msg(id => 'b2', content => 'anything for me?');
    ok(pump(\@all, time + 330, sub { $bob->done('b2') }),
       "v$version: bob's next message answered");
    is(scalar(agent_events($bob)), 0,
       "v$version: bob got nothing of the agent's runs");
    is(scalar(grep { ($_->{content} // '') =~ /FOREIGN/ }
              agent_events($alice)), 0,
       "v$version: nor alice the foreign session's run");

    # alice's own messages still get their own replies

    $alice->send_msg(id => 'a2', content => 'thanks');
    ok(pump(\@all, time + 330, sub { $alice->done('a2') }),
       "v$version: alice's next message answered");
    my ($a2) = $alice->terminals('a2');
    like($a2->{content} // '', qr/^Reply to: thanks\./,
         "v$version: with its own reply");

    # the agent's run reached its owner: neither worker counts it dropped,
    # not even the one without her connection
    is(total($ngx, 'agent_runs'), 1, "v$version: one agent run delivered");
    is(total($ngx, 'agent_runs_undelivered'), 0,
       "v$version: none counted as dropped");

    # alice gone, the agent speaks in her session: nobody gets it, and of
    # the two workers that see it end, one counts it

    $alice->close;
    is(wait_total($ngx, 'clients', 1, 30, [$bob]), 1,
       "v$version: alice's connection is gone");
    ($res, $err) = operator_send($gw, {
        sessionKey => $session, message => 'cron: alice is away',
        idempotencyKey => "t68-away-$version-$$" });
    ok($res && $res->{ok}, "v$version: the gateway took the agent's turn")
        or diag $err // encode_json($res);
    is(wait_total($ngx, 'agent_runs_undelivered', 1, 330, [$bob]), 1,
       "v$version: the run that reached nobody is counted");

    # bob's next turn ends after the other worker had its say
    $bob->send_msg(id => 'b3', content => 'one more');
    ok(pump([$bob], time + 330, sub { $bob->done('b3') }),
       "v$version: bob's next message answered");
    is(scalar(grep { ($_->{content} // '') =~ /alice is away/ }
              agent_events($bob)), 0, "v$version: bob did not get it");
    is(total($ngx, 'agent_runs_undelivered'), 1,
       "v$version: counted once, not once per worker");
    like($ngx->error_log,
         qr/\[info\].*openclaw run \S+ of the agent in \Q$session\E reached no endpoint: dropped/,
         "v$version: and logged");

    $ngx->stop;
    $gw->stop;
}

done_testing;
