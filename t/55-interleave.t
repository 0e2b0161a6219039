#!/usr/bin/perl

# Randomized interleavings (issue 9), for a bounded time: clients of
# several senders send chat and control messages into their own sessions,
# a shared one and other senders' default sessions; some stop reading for
# a while on a small receive window (their send buffers overflow), some
# close or vanish mid-run, nginx is reloaded, and the gateway crashes and
# comes back.  Then, for every client and message:
#
#   - a client only ever receives replies to ids it sent, with the text of
#     its own message, in sessions its sender may use;
#   - a client that stayed open got exactly one complete or error for
#     every message; one the server closed, or that left, at most one;
#   - the shared session answered one sender only (its owner);
#   - no worker exited on a signal, and (checked when nginx stops) no
#     sanitizer report and no [alert].
#
# OCB_SEED replays a run; the seed is printed either way.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Mojo::JSON qw(decode_json encode_json);
use Mojo::UserAgent;
use Time::HiRes qw(sleep time);

use OCB;
use FakeGateway;
use RelayClient;

my $SEED = $ENV{OCB_SEED} // int(rand(1 << 30));
srand($SEED);
note "OCB_SEED=$SEED";

my $TOKEN = 'tok-55-interleave-91ac';
my $RUN_SECONDS = $ENV{OCB_INTERLEAVE_SECONDS} // 20;

my $gw = FakeGateway->new(token => $TOKEN, deltas => 3, delta_ms => 10);

my $ngx = OCB->new(workers => 2, http => <<"EOF");
openclaw_gateway ws://127.0.0.1:@{[ $gw->port ]};
openclaw_gateway_token $TOKEN;
openclaw_gateway_admin on;
openclaw_gateway_request_timeout 4s;
openclaw_gateway_run_timeout 10s;

openclaw_bridge_zone s:1m;

server {
    listen 127.0.0.1:%%PORT%%;

    location = /r {
        openclaw_bridge;
        openclaw_bridge_sender \$arg_sender;
        openclaw_bridge_session_zone s;
        openclaw_bridge_max_in_flight 8;
        openclaw_bridge_send_buffer 16k;
    }

    location = /status { openclaw_bridge_status; }
}
EOF

ok($gw->wait_until(sub { my @u = $ngx->error_log =~ /gateway link up/g; @u >= 2 }, 15),
   'both workers linked');

my @SENDERS = map { "s$_" } 1 .. 4;
my $P = 'agent:main:webhook';

my $NC = 0;
my @clients;        # every client ever made
my %shared_owner;   # senders that got a complete in the shared session

# a client of sender $s; "slow" ones have a small receive window
sub new_client {
    my ($s, $slow) = @_;
    my $c = eval { RelayClient->new($ngx, path => "/r?sender=$s",
                                    $slow ? (rcvbuf => 2048) : ()) }
        or return undef;
    my $cl = { c => $c, sender => $s, n => ++$NC, sent => {}, ends => {},
               gone => 0, paused_until => 0, slow => $slow ? 1 : 0,
               bad => [] };
    push @clients, $cl;
    return $cl;
}

sub live { grep { !$_->{gone} && !$_->{c}->closed } @clients }

my $pad = 'p' x 1500;

sub send_chat {
    my ($cl) = @_;
    my $id = "c$cl->{n}-" . (1 + keys %{ $cl->{sent} });
    my $mode = (['', '', '', '{{slow 4 40}}', '{{error}}', '{{slow 2 300}}'])->[rand 6];
    my $text = "$mode from=$cl->{sender} id=$id" . (rand() < 0.3 ? " $pad" : '');
    my $s = $cl->{sender};
    my $other = $SENDERS[rand @SENDERS];
    my ($session, $allowed) = @{ (
        [undef, "$P:sender:$s"],
        [undef, "$P:sender:$s"],
        ["room-$s", "$P:session:room-$s"],
        ['shared', "$P:session:shared"],
        ["$P:sender:$other", "$P:sender:$other"],
        ["$P:sender:$s:sub", "$P:sender:$s:sub"],
    )[rand 6] };
    my %m = (id => $id, content => $text);
    $m{session} = $session if defined $session;
    $cl->{sent}{$id} = { text => $text, session => $allowed,
                         foreign => ($allowed =~ /^\Q$P\E:sender:(?!\Q$s\E(?::|$))/ ? 1 : 0) };
    $cl->{c}->send_json(\%m) or $cl->{gone} = 1;
}

# reads what a client has, checking every frame
sub poll {
    my ($cl) = @_;
    return if $cl->{gone} || $cl->{paused_until} > time;
    while (my $f = $cl->{c}->next_frame(0.001)) {
        my $j = $f->{json} or do { push @{ $cl->{bad} }, "not JSON: $f->{payload}"; next };
        my $type = $j->{type} // '';
        next if $type eq 'session.list';
        my $id = $j->{id};
        my $m = defined $id ? $cl->{sent}{$id} : undef;
        if (!$m) {
            push @{ $cl->{bad} }, "a reply to an id it never sent: " . encode_json($j);
            next;
        }
        if ($type =~ /^(complete|error)$/) {
            $cl->{ends}{$id}++;
            push @{ $cl->{bad} }, "a second end for $id: " . encode_json($j)
                if $cl->{ends}{$id} > 1;
        }
        if ($type =~ /^(progress|complete)$/) {
            my $want = "echo: $m->{text}";
            push @{ $cl->{bad} }, "text of another message for $id: "
                                  . substr(encode_json($j), 0, 300)
                if index($want, $j->{content} // "\0") != 0
                   || ($type eq 'complete' && $j->{content} ne $want);
            push @{ $cl->{bad} }, "a reply of $id in session $j->{session}, "
                                  . "not $m->{session}"
                if ($j->{session} // '') ne $m->{session};
            push @{ $cl->{bad} }, "a reply in another sender's own session: "
                                  . encode_json($j)
                if $m->{foreign};
            $shared_owner{ $cl->{sender} } = 1
                if $type eq 'complete' && $m->{session} eq "$P:session:shared";
        }
    }
}

my %did;
my $t0 = time;
my $deadline = $t0 + $RUN_SECONDS;
my $reloads = 0;
new_client($_) for @SENDERS;

while (time < $deadline) {
    my $elapsed = time - $t0;

    # two reloads and a gateway crash, at random moments of each third
    if ($reloads < 2 && $elapsed > $RUN_SECONDS * (0.2 + 0.3 * $reloads) + rand(2)) {
        $ngx->reload;
        $reloads++;
        note sprintf 'reload %d at %.1f s', $reloads, $elapsed;
    }
    if (!$did{crash} && $elapsed > $RUN_SECONDS * 0.5 + rand(2)) {
        $gw->crash;
        sleep 0.3 + rand(1.5);
        $gw->start;
        $did{crash} = 1;
        note sprintf 'gateway crash and restart at %.1f s', $elapsed;
    }

    my @l = live();
    my $r = rand;
    if (@l < 3 || ($r < 0.06 && @l < 10)) {
        new_client($SENDERS[rand @SENDERS], rand() < 0.3);
    } elsif ($r < 0.60) {
        my $cl = $l[rand @l];
        my $open = grep { !$cl->{ends}{$_} } keys %{ $cl->{sent} };
        send_chat($cl) if $open < 6;
    } elsif ($r < 0.64) {
        my $cl = $l[rand @l];
        $cl->{c}->send_json({ type => 'session.list', id => "l$cl->{n}" });
    } elsif ($r < 0.67) {
        my $cl = $l[rand @l];
        $cl->{c}->close(0.5);
        $cl->{gone} = 1;
    } elsif ($r < 0.70) {
        my $cl = $l[rand @l];
        $cl->{c}->vanish;
        $cl->{gone} = 1;
    } elsif ($r < 0.74) {
        my $cl = $l[rand @l];
        $cl->{paused_until} = time + 0.5 + rand(2) if $cl->{slow};
    }

    poll($_) for @clients;
    sleep 0.005;
}

note sprintf '%d clients, %d messages, in %.1f s', scalar @clients,
             scalar(map { keys %{ $_->{sent} } } @clients), time - $t0;

# the rest of the replies: open clients read until every message ended
$_->{paused_until} = 0 for @clients;
my $settle = time + 40;
while (time < $settle) {
    poll($_) for @clients;
    last unless grep { my $cl = $_; grep { !$cl->{ends}{$_} } keys %{ $cl->{sent} } }
                live();
    sleep 0.01;
}

my ($open_ok, $open_n, $gone_n) = (1, 0, 0);
for my $cl (@clients) {
    my @bad = @{ $cl->{bad} };
    ok(!@bad, "client $cl->{n} ($cl->{sender}) received only its own replies")
        or diag join "\n", @bad[0 .. ($#bad < 5 ? $#bad : 5)];
    my @ids = keys %{ $cl->{sent} };
    if ($cl->{gone} || $cl->{c}->closed) {
        $gone_n++;
        next;
    }
    $open_n++;
    my @missing = grep { !$cl->{ends}{$_} } @ids;
    if (@missing) {
        $open_ok = 0;
        diag "client $cl->{n}: no end for @missing";
    }
}
ok($open_ok, "every message of the $open_n clients still open ended exactly once");
note "$gone_n clients left or were closed";
ok(keys(%shared_owner) <= 1, 'the shared session answered one sender only')
    or diag join ' ', keys %shared_owner;
unlike($ngx->error_log, qr/exited on signal/, 'no worker exited on a signal');

# idle again: nothing in flight in any worker
my $http = Mojo::UserAgent->new;
my $st;
ok($gw->wait_until(sub {
       my $r = $http->get($ngx->http_url('/status'))->result;
       $st = $r->is_success ? decode_json($r->body) : undef;
       $st && !grep { $_->{runs_in_flight} } @{ $st->{workers} };
   }, 30), 'no run left in flight') or diag encode_json($st);

$_->{c}->vanish for grep { !$_->{gone} } @clients;
$ngx->stop;
done_testing();
