#!/usr/bin/perl

# Runs the agent starts itself (issue 14): a run that no client here
# asked for, on a session of this bridge, reaches the endpoint that owns
# the session as progress and complete marked "origin":"agent", with no
# id; sessions of other senders, other agents and other channels never
# reach anyone; a run that may be the hand-over of a message in flight is
# never taken for the agent's.  The gateway is the fake one, which starts
# such runs on request (FakeGateway action agent_run); t/6* play the same
# against real gateways.
#
# Negative checks need no timing: the gateway sends its events over one
# connection, in order, and one worker handles them in that order, so a
# run that would have reached a client has reached it before a later
# run's complete does.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Mojo::JSON qw(decode_json encode_json);
use HTTP::Tiny;
use Time::HiRes qw(sleep time);

use OCB;
use FakeGateway;
use RelayClient;
use TestHub;

my $TOKEN = 'tok-59-push-3b9a';

my $gw = FakeGateway->new(token => $TOKEN, deltas => 3, delta_ms => 5);
my $hub = TestHub->new(mode => 'rooms');

my $ngx = OCB->new(workers => 1, http => <<"EOF");
openclaw_gateway ws://127.0.0.1:@{[ $gw->port ]};
openclaw_gateway_token $TOKEN;

openclaw_bridge_zone s:1m;

server {
    listen 127.0.0.1:%%PORT%%;

    location = /own {
        openclaw_bridge;
        openclaw_bridge_sender \$arg_sender;
        openclaw_bridge_session_zone s;
    }

    location = /nozone {
        openclaw_bridge;
        openclaw_bridge_sender \$arg_sender;
    }

    location = /status { openclaw_bridge_status; }

    # a hub link stands for its uid: its sessions are its users'
    location /hub {
        openclaw_bridge_hub @{[ $hub->url('/ws') ]};
        openclaw_bridge_uid shop-1;
        openclaw_bridge_session_zone s;
    }

    location = /ops {
        openclaw_bridge;
        openclaw_bridge_agent_id ops;
        openclaw_bridge_sender \$arg_sender;
        openclaw_bridge_session_zone s;
    }
}
EOF

my $P = 'agent:main:webhook';

sub client { RelayClient->new($ngx, path => $_[0]) }

# sends one message and returns its replies, up to its end
sub ask {
    my ($c, $id, $content, %o) = @_;
    $c->send_json({ id => $id, content => $content, %o });
    my @f = $c->until_terminal([$id], 10);
    return grep { ($_->{id} // '') eq $id } map { $_->{json} // () } @f;
}

# the agent's run: start it, and return the run id
sub agent_run {
    my (%a) = @_;
    my $r = $gw->action('agent_run', %a);
    die "agent_run: " . encode_json($r) unless $r->{ok};
    return $r->{runId};
}

# the frames of the agent's runs among the next ones, up to the end of
# the agent's run in "session" (or none within the timeout)
sub agent_replies {
    my ($c, $session, $timeout) = @_;
    my @got;
    while (my $j = $c->next_json($timeout // 10)) {
        push @got, $j;
        last if ($j->{origin} // '') eq 'agent'
                && ($j->{session} // '') eq $session
                && ($j->{type} // '') =~ /^(complete|error)$/;
    }
    return @got;
}

# the worker's figures
sub status {
    my $r = HTTP::Tiny->new(timeout => 10)->get($ngx->http_url('/status'));
    die "status: $r->{status}" unless $r->{success};
    return decode_json($r->{content})->{workers}[0];
}

sub undelivered { status()->{agent_runs_undelivered} }

# waits until the count of runs that reached nobody is "want"
sub wait_undelivered {
    my ($want) = @_;
    my $deadline = time + 10;
    my $n;
    while (time < $deadline) {
        $n = undelivered();
        return $n if $n >= $want;
        select undef, undef, undef, 0.02;
    }
    return $n;
}

# a client and its sender's default session, made by a message of it
my $alice = client('/own?sender=alice');
my $bob = client('/own?sender=bob');

my @r = ask($alice, 'a1', 'hello');
is($r[-1]{type}, 'complete', 'alice: her message completes');
my $alice_session = $r[-1]{session};
is($alice_session, "$P:sender:alice", 'alice: her default session');

@r = ask($bob, 'b1', 'hello');
is($r[-1]{type}, 'complete', 'bob: his message completes');

# 1. the agent speaks in alice's session: alice gets it, bob does not

agent_run(session => $alice_session, text => 'reminder: water the plants');

my @a = agent_replies($alice, $alice_session);
my @ends = grep { $_->{type} =~ /^(complete|error)$/ } @a;
is(scalar @ends, 1, "alice: the agent's run ends once");
is($ends[0]{type}, 'complete', "alice: the agent's run completes");
is($ends[0]{content}, 'reminder: water the plants',
   "alice: with the agent's text");
is($ends[0]{origin}, 'agent', 'alice: marked as the agent\'s');
ok(!exists $ends[0]{id}, 'alice: no id, no client asked for it');
is($ends[0]{session}, $alice_session, 'alice: with its session');
is_deeply([ RelayClient::delta_problems(@a) ], [],
          "alice: the agent's deltas add up to its complete");
ok((grep { $_->{type} eq 'progress' } @a) >= 1,
   'alice: the agent\'s run streams as progress first');
is(undelivered(), 0, 'status: a run its owner got is not counted as dropped');

# bob's next message is answered after anything sent to him before it
@r = ask($bob, 'b2', 'still there?');
my @bob_all = map { $_->{json} // () } $bob->frames;
is(scalar(grep { ($_->{origin} // '') eq 'agent' } @bob_all), 0,
   'bob: nothing of the agent\'s run in alice\'s session');

# 2. sessions that are no one's here: another channel, another agent,
#    another sender's, a session nobody made; then one of alice's, which
#    arrives after all of them: nothing came before it

agent_run(session => 'agent:main:telegram:dm:42', text => 'FOREIGN telegram');
agent_run(session => 'agent:ops:webhook:sender:alice', text => 'FOREIGN ops');
agent_run(session => "$P:sender:bob", text => 'FOREIGN bob');
agent_run(session => "$P:session:nobody", text => 'FOREIGN nobody');
agent_run(session => 'agent:main:main', text => 'FOREIGN main');
agent_run(session => $alice_session, text => 'second reminder');

@a = agent_replies($alice, $alice_session);
is(scalar(grep { ($_->{content} // '') =~ /FOREIGN/ } @a), 0,
   'alice: no run of a session not hers');
is($a[-1]{content}, 'second reminder', 'alice: her second agent run');

# the runs ended in the order they started: of the five before alice's,
# the two on webhook sessions that reached nobody (the ops agent's, with
# no endpoint of it yet, and a session nobody made) are counted, each
# once however many deltas it had; the other channels' runs are not ours
is(undelivered(), 2, 'status: the two webhook runs that reached nobody');

@r = ask($bob, 'b3', 'and now?');
@bob_all = map { $_->{json} // () } $bob->frames;
my @bob_agent = grep { ($_->{origin} // '') eq 'agent' } @bob_all;
ok(@bob_agent && !grep({ $_->{session} ne "$P:sender:bob" } @bob_agent),
   'bob: his own session\'s run reached him, and nothing else');
is((grep { $_->{type} eq 'complete' } @bob_agent)[0]{content}, 'FOREIGN bob',
   'bob: with its text');

# 3. a session alice named is hers by the zone's record

@r = ask($alice, 'a2', 'note this', session => 'notes');
my $notes = $r[-1]{session};
is($notes, "$P:session:notes", 'alice: a named session');

agent_run(session => $notes, text => 'noted');
@a = agent_replies($alice, $notes);
is($a[-1]{content}, 'noted', 'alice: the agent\'s run in her named session');

# 4. a run that starts while alice's message is in flight in the same
#    session may be that message's hand-over: it never becomes the
#    agent's, and her message still gets its own reply once

#    The order is arranged whatever the timing: her message's run ends
#    only once the other run's first event (a "status" one, as protocol 4
#    starts a run) went out, and the other run's text comes after that end.

# the chat.send of a message, once the fake has it: its run id
sub sent_key {
    my ($text) = @_;
    my $deadline = time + 10;
    while (time < $deadline) {
        my ($s) = grep { ($_->{params}{message} // '') eq $text }
                  $gw->requests('chat.send');
        return $s->{params}{idempotencyKey} if $s;
        sleep 0.02;
    }
    return undef;
}

# a run's first event went out of the fake
sub first_event {
    my ($rid) = @_;
    my $deadline = time + 10;
    while (time < $deadline) {
        return 1 if $gw->records(kind => 'chat', runId => $rid);
        sleep 0.02;
    }
    return 0;
}

sub overlapped {
    my ($c, $id, $session, $text) = @_;
    $gw->set(deltas => 5, delta_ms => 40);
    $c->send_json({ id => $id, content => "{{hang}} $id slow one" });
    my $key = sent_key("{{hang}} $id slow one");
    ok($key, "$id: the message is running on the gateway");
    my $rid = agent_run(session => $session, text => $text);
    ok(first_event($rid), "$id: the other run began while it ran");
    my $r = $gw->action('finish', runId => $key // '');
    ok($r->{ok}, "$id: then the message's run ended") or diag encode_json($r);
    my @f = $c->until_terminal([$id], 10);
    $gw->set(deltas => 3, delta_ms => 5);
    return grep { ($_->{id} // '') eq $id } map { $_->{json} // () } @f;
}

my @a3 = overlapped($alice, 'a3', $alice_session, 'NOT THE AGENT, a hand-over');
is(scalar(grep { $_->{type} =~ /^(complete|error)$/ } @a3), 1,
   'alice: her message ends once');
is($a3[-1]{content}, 'echo: {{hang}} a3 slow one', 'alice: with its own text');

# the end of that run, if it were delivered, would come before this one's
agent_run(session => $alice_session, text => 'third reminder');
@a = agent_replies($alice, $alice_session);
is(scalar(grep { ($_->{content} // '') =~ /NOT THE AGENT/ } @a), 0,
   'alice: the run that started in her message\'s flight is not delivered');
is($a[-1]{content}, 'third reminder', 'alice: the next agent run is');
is(undelivered(), 2, 'status: the possible hand-over is not counted as dropped');

# 5. without a zone, a sender's own part is still its own

my $carol = client('/nozone?sender=carol');
agent_run(session => "$P:sender:carol:msg:x", text => 'for carol');
@a = agent_replies($carol, "$P:sender:carol:msg:x");
is($a[-1]{content}, 'for carol', 'no zone: the sender\'s own part reaches it');

# without a zone, only this worker's own runs tell a hand-over apart
my @c1 = overlapped($carol, 'c1', "$P:sender:carol", 'NOT THE AGENT either');
is($c1[-1]{content}, 'echo: {{hang}} c1 slow one', 'no zone: carol\'s message, its text');
agent_run(session => "$P:sender:carol", text => 'for carol again');
@a = agent_replies($carol, "$P:sender:carol");
is(scalar(grep { ($_->{content} // '') =~ /NOT THE AGENT/ } @a), 0,
   'no zone: the run that started in her message\'s flight is not delivered');
is($a[-1]{content}, 'for carol again', 'no zone: the next agent run is');

# 6. another agent's location gets its agent's sessions only

my $ops = client('/ops?sender=alice');
ask($ops, 'o1', 'hi');
agent_run(session => "$P:sender:alice", text => 'main agent');
agent_run(session => 'agent:ops:webhook:sender:alice', text => 'ops agent');
@a = agent_replies($ops, 'agent:ops:webhook:sender:alice');
is(scalar(grep { ($_->{content} // '') eq 'main agent' } @a), 0,
   'ops: not the main agent\'s session');
is($a[-1]{content}, 'ops agent', 'ops: its own agent\'s session');

# alice saw "main agent" on her connection, as the owner
@a = agent_replies($alice, $alice_session);
is($a[-1]{content}, 'main agent', 'alice: the main agent\'s run reached her');

# 7. the owner gone: nothing breaks, nobody else gets it

$alice->close;
agent_run(session => $alice_session, text => 'alice is away');
@r = ask($bob, 'b4', 'last');
@bob_all = map { $_->{json} // () } $bob->frames;
is(scalar(grep { ($_->{content} // '') eq 'alice is away' } @bob_all), 0,
   'bob: not alice\'s run while she is away');
is(wait_undelivered(3), 3, 'status: her run that reached nobody is counted');
my @dropped = $ngx->error_log =~ /\[info\].*(openclaw run \S+ of the agent in \Q$alice_session\E reached no endpoint: dropped)/g;
is(scalar @dropped, 1, 'log: one line for it, at info');
unlike($ngx->error_log, qr/alice is away/, 'log: without its text');

# once: a later run of bob's, delivered, ends after it
agent_run(session => "$P:sender:bob", text => 'for bob');
@a = agent_replies($bob, "$P:sender:bob");
is($a[-1]{content}, 'for bob', 'bob: his own session\'s run');
is(scalar(grep { ($_->{content} // '') eq 'alice is away' } @a), 0,
   'bob: and still not alice\'s');
is(undelivered(), 3, 'status: counted once, and bob\'s not at all');

# a run that ends with nothing in it loses nothing: a silent reply, or
# protocol 3 handing the turn to a run of its own, which is the one
# counted
agent_run(session => $alice_session, message => '{{empty_final}}',
          text => 'SILENT');
agent_run(session => $alice_session, message => '{{handover}}',
          text => 'handed over while away');
is(wait_undelivered(4), 4, 'status: the run handed the turn is counted');
agent_run(session => "$P:sender:bob", text => 'for bob again');
@a = agent_replies($bob, "$P:sender:bob");
is($a[-1]{content}, 'for bob again', 'bob: his own session\'s next run');
is(undelivered(), 4, 'status: the empty finals are not');


# 8. a hub link gets the agent's runs of its uid's sessions, which its
#    users all see; another uid's session reaches no one

ok($hub->wait_until(sub { $hub->bridges('shop-1') == 1 }, 10),
   'hub: nginx dialled the hub');
my $user = $hub->client(uid => 'shop-1');
my @h = $user->ask('h1', 'hello hub', session => 'orders');
my $hsess = $h[-1]{session};
is($hsess, "$P:uid:shop-1:session:orders", 'hub: a session of the uid');

agent_run(session => "$P:uid:shop-2:session:orders", text => 'FOREIGN uid');
agent_run(session => $hsess, text => 'your order shipped');
@a = agent_replies($user, $hsess);
is(scalar(grep { ($_->{content} // '') =~ /FOREIGN/ } @a), 0,
   'hub: not another uid\'s session');
is($a[-1]{content}, 'your order shipped', 'hub: the uid\'s session reaches its users');
is($a[-1]{origin}, 'agent', 'hub: marked as the agent\'s');
is(undelivered(), 5, 'status: the other uid\'s run reached nobody');
$user->close;

# delivered runs of the agent are counted, and are no messages: the
# messages in and out still match
my $w = status();
is($w->{agent_runs}, 12, 'status: 12 runs of the agent delivered');
is($w->{agent_runs_undelivered}, 5, 'status: 5 dropped');
is($w->{messages_out}, $w->{messages_in},
   'status: as many messages out as in');

$bob->close;
$carol->close;
$ops->close;

$ngx->stop;
$gw->stop;
$hub->stop;

done_testing;
