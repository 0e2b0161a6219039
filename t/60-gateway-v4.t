#!/usr/bin/perl

# The bridge against a real OpenClaw gateway speaking protocol 4
# (openclaw@2026.9.6), with the fake model of t/gateway/fake-model.pl:
# nginx with two workers, each with its own link; several clients and
# sessions at once; the gateway's conversation memory; slash commands
# passed through; messages sent to a session that is still busy.

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

my $ngx = $gw->nginx(workers => 2,
                     extra => 'openclaw_gateway_run_timeout 120s;');
ok(OCGateway::wait_links($ngx, 2, 30, 4),
   'both workers brought their gateway link up with protocol 4');

sub reply_for { OCGateway::Client::reply_for(@_) }

# every client is read in every wait: one left unread would miss nginx's
# pings and be closed for a pong timeout
my @everyone;

sub pump_all { OCGateway::Client::pump(\@everyone, @_) }

sub show { $gw->show($T0, @_) }

sub check { $gw->check($T0, @_) }

###########################################################################
# one warm-up message alone: the first turn on a fresh home is slow

my $warm = OCGateway::Client->new($ngx, name => 'warm');
push @everyone, $warm;
is($warm->status, 101, 'warm-up client: upgraded');
my $t = time;
$warm->send_msg(id => 'warm-1', content => 'warm-up message',
                session => 't60-warm');
ok(pump_all(time + 150, sub { $warm->done('warm-1') }),
   'warm-up: answered within 150 s');
note sprintf 'warm-up turn took %.1f s', time - $t;
check($warm, 'warm-1', 'warm-up: progress, then one complete with the echo',
      session => 'agent:main:webhook:session:t60-warm',
      content => reply_for('warm-up message'));

###########################################################################
# 3 clients x 2 sessions x 3 messages; the sessions run at once, each one
# sending its next message as soon as the previous one is complete; the
# last message of each session asks the fake model to list every user
# message it was given, which is the gateway's memory of the session

my @clients = map { OCGateway::Client->new($ngx, name => "c$_") } 1 .. 3;
push @everyone, @clients;
is(scalar(grep { ($_->status // 0) == 101 } @clients), 3,
   'three clients upgraded');

my (%plan, @keys);
for my $s (1, 2) {
    for my $ci (1 .. 3) {
        my $key = "t60-c$ci-s$s";
        push @keys, $key;
        $plan{$key} = {
            client => $clients[$ci - 1],
            texts => [ "c$ci s$s first", "c$ci s$s second",
                       "c$ci s$s third #history" ],
            ids => [],
        };
    }
}

my $send_next = sub {
    my ($key) = @_;
    my $p = $plan{$key};
    my $n = @{ $p->{ids} };
    my $id = "$key-m" . ($n + 1);
    push @{ $p->{ids} }, $id;
    $p->{client}->send_msg(id => $id, content => $p->{texts}[$n],
                           session => $key);
};

$t = time;
$send_next->($_) for @keys;

my $all_done = sub {
    my $all = 1;
    for my $key (@keys) {
        my $p = $plan{$key};
        next unless $p->{client}->done($p->{ids}[-1]);
        next if @{ $p->{ids} } == @{ $p->{texts} };
        $send_next->($key);
        $all = 0;
    }
    for my $key (@keys) {
        my $p = $plan{$key};
        $all = 0 unless @{ $p->{ids} } == @{ $p->{texts} }
                     && $p->{client}->done($p->{ids}[-1]);
    }
    return $all;
};

ok(pump_all(time + 270, $all_done),
   'interleaved: all 18 messages answered');
note sprintf 'interleaved phase took %.1f s', time - $t;

my $progress = 0;
for my $key (@keys) {
    my $p = $plan{$key};
    my $c = $p->{client};
    my @texts = @{ $p->{texts} };
    for my $i (0 .. $#{ $p->{ids} }) {
        my $id = $p->{ids}[$i];
        my @seen = $texts[$i] =~ /#history/ ? @texts[0 .. $i] : ();
        check($c, $id, "interleaved: $id gets its own streamed reply",
              session => "agent:main:webhook:session:$key",
              content => reply_for($texts[$i], @seen));
        $progress += grep { ($_->{type} // '') eq 'progress' }
                          $c->events($id);
    }

    # replies of one session come in the order of its messages
    my %rank;
    @rank{ @{ $p->{ids} } } = 0 .. $#{ $p->{ids} };
    my @order = map { $rank{ $_->{json}{id} } }
                grep { ref $_->{json} eq 'HASH'
                       && defined $_->{json}{id}
                       && exists $rank{ $_->{json}{id} } }
                @{ $c->{log} };
    my @sorted = sort { $a <=> $b } @order;
    is("@order", "@sorted", "interleaved: $key replies in message order");
}
cmp_ok($progress, '>', 18, 'interleaved: replies were streamed in pieces');

###########################################################################
# slash commands are the gateway's business: passed through as text

my $c1 = $clients[0];
for my $cmd (['/status', 't60-c1-s1'], ['/new', 't60-c1-s2']) {
    my ($text, $key) = @$cmd;
    my $id = "cmd-$text";
    $id =~ s{/}{};
    my $since = time;
    $c1->send_msg(id => $id, content => $text, session => $key);
    ok(pump_all(time + 60, sub { $c1->done($id) }),
       "$text: answered within 60 s");
    check($c1, $id, "$text: one reply, complete or error",
          session => "agent:main:webhook:session:$key", type => qr/^(complete|error)$/);
    my ($term) = $c1->terminals($id);
    next unless $term;
    my $said = $term->{type} eq 'complete' ? $term->{content}
                                           : $term->{error};
    ok(defined $said && length $said, "$text: the reply says something")
        and note "$text: $term->{type}: $said";
    unlike($said // '', qr/unknown command|not supported|not available/i,
           "$text: not refused by the module");

    # the gateway ran it: the spy saw its chat run end in that session
    # (the spy is another process: give it a moment to write)
    my @ends;
    my $deadline = time + 5;
    while (!@ends && time < $deadline) {
        @ends = grep {
            $_->{t} >= $since
                && ($_->{frame}{payload}{state} // '')
                   =~ /^(final|error|aborted)$/
        } $gw->spy_chat("agent:main:webhook:session:$key");
        pump_all(time + 0.2, sub { 0 }) unless @ends;
    }
    ok(@ends, "$text: the gateway answered it (a terminal chat event in "
              . "its session)")
        or diag show($c1, $id, "agent:main:webhook:session:$key");
}

###########################################################################
# A message sent to a session while the previous one is still being
# answered.  What 2026.9.6 does depends on the session's queue mode: in
# "steer" (the default) it ends the new message's run at once with an
# empty final and answers it inside the active run (the first run's text
# then holds both answers); in "followup" it also ends the new message's
# run at once with an empty final, and answers it later in a run of its
# own, under a run id the gateway chose (section 13.9 describes the same
# hand-over for protocol 3).  Either way each message ends exactly once
# and no answer the gateway produced may be lost; in "followup" mode the
# second message has an answer of its own, and must get it.

# the run text of every final the gateway broadcast in $session since $t
sub gateway_finals {
    my ($session, $since) = @_;
    my @texts;
    for my $e ($gw->spy_chat($session)) {
        my $p = $e->{frame}{payload};
        next unless ($p->{state} // '') eq 'final' && $e->{t} >= $since;
        my $c = ref $p->{message} eq 'HASH' ? $p->{message}{content} : undef;
        my $text = ref $c eq 'ARRAY' ? join('', map { $_->{text} // '' } @$c)
                                     : $c // '';
        push @texts, $text if length $text;
    }
    return @texts;
}

sub busy_session {
    my ($c, $key, $mode) = @_;
    my $session = "agent:main:webhook:session:$key";
    my ($id1, $id2) = ("$key-1", "$key-2");
    my ($text1, $text2) = ("$mode first #slow=300", "$mode second");

    if ($mode ne 'steer') {
        $c->send_msg(id => "$key-mode", content => "/queue $mode",
                     session => $key);
        ok(pump_all(time + 60, sub { $c->done("$key-mode") }),
           "$mode: /queue $mode answered");
        my ($term) = $c->terminals("$key-mode");
        note "/queue $mode: " . encode_json($term);
    }

    my $since = time;
    $c->send_msg(id => $id1, content => $text1, session => $key);
    ok(pump_all(time + 60, sub {
            grep { ($_->{type} // '') eq 'progress' } $c->events($id1) }),
       "$mode: the first reply is streaming");
    $c->send_msg(id => $id2, content => $text2, session => $key);
    ok(pump_all(time + 90, sub { $c->done($id1) && $c->done($id2) }),
       "$mode: both messages answered within 90 s");
    # the gateway's own run for the second message may end after it
    pump_all(time + 4, sub { 0 });

    check($c, $id1, "$mode: the first message ends in one complete",
          session => $session, content => qr/^\Q${\ reply_for($text1)}\E/);
    check($c, $id2, "$mode: the second message ends in one complete",
          session => $session);

    # the gateway may echo the /queue answer once more in the session
    my %delivered = map { ($_->{content} // '') => 1 }
                    map { $c->terminals($_) } $id1, $id2, "$key-mode";
    my @produced = gateway_finals($session, $since);
    my @lost = grep { !$delivered{$_} } @produced;
    ok(@produced && !@lost, "$mode: every answer the gateway produced in "
                            . 'the session reached the client')
        or diag join "\n", 'lost: ' . join(' / ', @lost),
                          show($c, $id1), show($c, $id2, $session);

    my $reply2 = reply_for($text2);
    my $got2 = grep { index($_->{content} // '', $reply2) >= 0 }
               map { $c->terminals($_) } $id1, $id2;
    ok($got2, "$mode: the answer to the second message reached the client");

    return unless $mode eq 'followup';
    check($c, $id2, "$mode: the second message gets its own answer, not an "
                    . 'empty complete',
          session => $session, content => $reply2)
}

busy_session($clients[1], 't60-steer', 'steer');
busy_session($clients[2], 't60-followup', 'followup');

###########################################################################
# nothing late, nothing foreign: a few more seconds of listening, then
# every client has exactly its own replies and one terminal per message

pump_all(time + 4, sub { 0 });

for my $c (@everyone) {
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

$_->close for @everyone;
$ngx->stop;
$gw->stop_all;
note sprintf 'total %.1f s', time - $T0;

done_testing;
