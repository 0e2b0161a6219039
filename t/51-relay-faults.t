#!/usr/bin/perl

# Gateway faults and run life cycle, against the scripted fake gateway
# (t/lib/FakeGateway.pm): restart with a shutdown event, crash and
# restart, gateway down at start, unresponsive gateway, refused connects
# (wrong token, protocol mismatch, UNAVAILABLE with retryAfterMs, no
# scopes), a repeated message answered from chat.history, chat.abort when
# a client leaves, graceful quit, run timeout, max in flight, double
# error events, a message over the gateway's maxPayload, and a message
# that makes the gateway close the link each time it is sent.  The rule
# everywhere: an accepted message ends in exactly one complete or error,
# never in silence.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use HTTP::Tiny;
use Test::More;
use Mojo::JSON qw(decode_json encode_json);
use Time::HiRes qw(sleep time);

use OCB;
use FakeGateway;
use RelayClient;

my $TOKEN = 'tok-51-faults-0c7e2b9d';

# a fake gateway (unless given) and an nginx relaying to it
#   fake => {options}, gw => $gw, token => '...', http => 'directives',
#   loc => 'directives', server => 'more locations', main => '...',
#   workers => N
sub setup {
    my (%o) = @_;
    my $gw = $o{gw} // FakeGateway->new(token => $TOKEN, %{ $o{fake} // {} });
    my $token = $o{token} // $TOKEN;
    my $ngx = OCB->new(
        workers => $o{workers} // 1,
        main => $o{main} // '',
        http => <<"EOF");
openclaw_gateway ws://127.0.0.1:@{[ $gw->port ]};
openclaw_gateway_token $token;
@{[ $o{http} // '' ]}

server {
    listen 127.0.0.1:%%PORT%%;

    location / {
        openclaw_bridge;
        @{[ $o{loc} // '' ]}
    }
@{[ $o{server} // '' ]}
}
EOF
    return ($gw, $ngx);
}

sub count_log {
    my ($ngx, $re) = @_;
    my @m = $ngx->error_log =~ /$re/g;
    return scalar @m;
}

sub wait_up {
    my ($ngx, $n, $timeout) = @_;
    my $deadline = time + ($timeout // 5);
    while (time < $deadline) {
        return 1 if count_log($ngx, qr/gateway link up/) >= ($n // 1);
        sleep 0.02;
    }
    return 0;
}

# the complete and error replies for $id among @frames
sub terminals {
    my ($id, @frames) = @_;
    return grep {
        my $j = $_->{json};
        $j && ($j->{type} // '') =~ /^(complete|error)$/
           && defined $j->{id} && $j->{id} eq $id
    } @frames;
}

# reads until every id has its end, then a little more, and checks that
# each got exactly one complete or error; returns {id => reply}
sub one_end_each {
    my ($name, $c, $ids, $timeout, $extra) = @_;
    my @f = $c->until_terminal($ids, $timeout);
    push @f, $c->drain($extra // 0.5);
    my %end;
    for my $id (@$ids) {
        my @t = terminals($id, @f);
        is(scalar @t, 1, "$name: message $id ends in exactly one complete or error")
            or diag join "\n", map { $_->{payload} } grep { $_->{json} && ($_->{json}{id} // '') eq $id } @f;
        $end{$id} = $t[0]{json} if @t;

        # content is always the whole text so far; delta extends it, or
        # replaces it when the reply says replace (the text was rewritten)
        my @mine = grep { $_->{json} && ($_->{json}{id} // '') eq $id } $c->frames;
        my @bad = RelayClient::delta_problems(map { $_->{json} } @mine);
        ok(!@bad, "$name: message $id: content and deltas agree")
            or diag join "\n", @bad, map { $_->{payload} } @mine;
    }
    return \%end;
}

sub key_of {
    my ($gw, $message) = @_;
    my ($s) = grep { $_->{params}{message} eq $message } $gw->requests('chat.send');
    return $s ? $s->{params}{idempotencyKey} : undef;
}

sub lines {
    my ($ngx, $re) = @_;
    return grep { $_ =~ $re } split /\n/, $ngx->error_log;
}

# the clients nginx serves, from its status location at /status
sub clients_served {
    my ($ngx) = @_;
    my $r = HTTP::Tiny->new(timeout => 5)->get($ngx->http_url('/status'));
    return undef unless $r->{success};
    my $st = eval { decode_json($r->{content}) } or return undef;
    my $n = 0;
    $n += $_->{clients} for @{ $st->{workers} // [] };
    return $n;
}

###########################################################################
# gateway restart: shutdown event, close 1012, back after a while

subtest 'gateway restart while a reply streams' => sub {
    my ($gw, $ngx) = setup(http => 'openclaw_gateway_request_timeout 5s;');
    ok(wait_up($ngx), 'link up');

    my $c = RelayClient->new($ngx);
    my $text = '{{slow 10 80}} restart me';
    $c->send_json({ id => 'r1', content => $text });
    my $p = $c->next_json(5);
    is($p && $p->{type}, 'progress', 'the reply is streaming');

    my $t_shut = time;
    $gw->action('shutdown', restart_expected_ms => 1200, down_ms => 600);

    # back within the request timeout (5 s): the message is sent again and
    # completes, as the README promises
    my $end = one_end_each('restart', $c, ['r1'], 10);
    is($end->{r1} && $end->{r1}{type}, 'complete',
       'the message in flight completes after the restart')
        or diag 'r1 ended in: ' . encode_json($end->{r1});
    is($end->{r1} && $end->{r1}{content}, "echo: $text",
       'with the whole reply');

    ok($ngx->wait_log(qr/gateway link up.*after reconnecting/, 5),
       'the link came back by itself');
    my @u = grep { $_->{t} > $t_shut } $gw->upgrades;
    ok(@u, 'nginx reconnected');
    if (@u) {
        my $gap = $u[0]{t} - $t_shut;
        cmp_ok($gap, '>=', 1.1, 'it waited for restartExpectedMs (1200 ms)');
        cmp_ok($gap, '<', 4, 'but not much longer') or diag "gap $gap";
    }

    my @sends = grep { $_->{params}{message} eq $text } $gw->requests('chat.send');
    cmp_ok(scalar @sends, '>=', 2, 'the message was sent again after the restart');
    is(scalar(keys %{{ map { $_->{params}{idempotencyKey} => 1 } @sends }}), 1,
       'with the same idempotencyKey');

    $c->send_json({ id => 'r2', content => 'after restart' });
    my $e2 = one_end_each('restart', $c, ['r2'], 5, 0);
    is($e2->{r2} && $e2->{r2}{type}, 'complete', 'a later message completes');
    is($e2->{r2} && $e2->{r2}{content}, 'echo: after restart', 'with its reply');

    $c->close;
    $ngx->stop;
    $gw->stop;
};

###########################################################################
# gateway killed mid-stream, restarted on the same port

subtest 'gateway killed mid-stream and restarted' => sub {
    my ($gw, $ngx) = setup(http => 'openclaw_gateway_request_timeout 5s;');
    ok(wait_up($ngx), 'link up');

    my @c = map { RelayClient->new($ngx) } 0 .. 2;
    for my $i (0 .. 2) {
        $c[$i]->send_json({ id => "k$i-$_", content => "{{slow 8 100}} kill $i $_" })
            for 1, 2;
    }
    my $p = $c[0]->next_json(5);
    is($p && $p->{type}, 'progress', 'replies are streaming');

    $gw->crash;
    sleep 0.5;
    $gw->start;

    # back well within the request timeout: every message in flight is
    # sent again and completes with its own reply
    for my $i (0 .. 2) {
        my $end = one_end_each("kill client $i", $c[$i], ["k$i-1", "k$i-2"], 12, 0.3);
        for my $n (1, 2) {
            my $r = $end->{"k$i-$n"};
            is($r && $r->{type}, 'complete', "kill: k$i-$n completes")
                or diag encode_json($r);
            is($r && $r->{content}, "echo: {{slow 8 100}} kill $i $n",
               "kill: k$i-$n with its own reply");
        }
    }

    ok(wait_up($ngx, 2, 5), 'the link came back by itself');
    $c[1]->send_json({ id => 'later', content => 'after the crash' });
    my $e = one_end_each('kill', $c[1], ['later'], 5, 0);
    is($e->{later} && $e->{later}{type}, 'complete', 'a later message completes');

    $_->close for @c;
    $ngx->stop;
    $gw->stop;
};

###########################################################################
# a message sent again after a SIGKILL fails on the restarted gateway,
# which recovered the cut turn in a run of its own while the link was
# down (2026.9.6, gateway-protocol.md 13.9): the reply is taken from the
# history, after the message's own turn; without one there, an error

subtest 'message sent again fails, its reply recovered by the gateway' => sub {
    for my $protocol (4, 3) {
        my ($gw, $ngx) = setup(fake => { protocol => $protocol },
                               http => 'openclaw_gateway_request_timeout 10s;');
        ok(wait_up($ngx), "protocol $protocol: link up");

        my $c = RelayClient->new($ngx);
        my $text = "{{hang}} recover me $protocol";
        my $lost = "{{hang}} lost $protocol";
        $c->send_json({ id => 'rec', content => $text, session => 'rec' });
        $c->send_json({ id => 'lost', content => $lost, session => 'lost' });
        my $t0 = time;
        sleep 0.02 while !(key_of($gw, $text) && key_of($gw, $lost))
                         && time - $t0 < 5;
        my ($key, $lkey) = (key_of($gw, $text), key_of($gw, $lost));
        ok($key && $lkey, "protocol $protocol: both messages reached the gateway");

        # the first one's turn is answered in the history, the second's not
        my $r1 = $gw->action('recover', runId => $key);
        my $r2 = $gw->action('recover', runId => $lkey, no_reply => 1);
        ok($r1->{ok} && $r2->{ok}, "protocol $protocol: the gateway recovered both turns")
            or diag encode_json([$r1, $r2]);

        my $end = one_end_each("recover v$protocol", $c, ['rec', 'lost'], 15);
        my @sends = grep { $_->{params}{idempotencyKey} eq $key }
                    $gw->requests('chat.send');
        is(scalar @sends, 2, "protocol $protocol: the message was sent again, "
           . 'with its key');
        my @hist = grep { $_->{params}{sessionKey} =~ /:(rec|lost)$/ }
                   $gw->requests('chat.history');
        if ($protocol == 4) {
            is($end->{rec} && $end->{rec}{type}, 'complete',
               'protocol 4: the message completes with the reply the gateway '
               . 'recovered')
                or diag encode_json($end->{rec});
            is($end->{rec} && $end->{rec}{content}, "echo: $text",
               'protocol 4: the reply after its own turn in the history');
            is($end->{lost} && $end->{lost}{type}, 'error',
               'protocol 4: no reply in the history: an error');
            like($end->{lost} && $end->{lost}{error},
                 qr/failed this message when it was sent again .* the session history has no reply to it/,
                 'protocol 4: that says so');
            is(scalar @hist, 2, 'protocol 4: the history was read once for each');
        } else {
            # protocol 3 marks no turn in the history with its message
            is($end->{rec} && $end->{rec}{type}, 'error',
               'protocol 3: the gateway\'s error, no reply to tell apart');
            like($end->{rec} && $end->{rec}{error},
                 qr/agent error: run superseded by restart recovery/,
                 'protocol 3: the error the gateway gave');
            is(scalar @hist, 0, 'protocol 3: the history was not read');
        }

        $c->send_json({ id => 'next', content => 'after recovery',
                        session => 'rec' });
        my $e = one_end_each("recover v$protocol", $c, ['next'], 5, 0);
        is($e->{next} && $e->{next}{content}, 'echo: after recovery',
           "protocol $protocol: the next message in the session gets its own reply");

        $c->close;
        $ngx->stop;
        $gw->stop;
    }
};

###########################################################################
# gateway down when nginx starts

subtest 'gateway down at nginx start' => sub {
    # one that comes up soon, one that never does
    my $gw = FakeGateway->new(token => $TOKEN, no_start => 1);
    my $never = FakeGateway->new(token => $TOKEN, no_start => 1);
    my (undef, $ngx) = setup(gw => $gw, http => 'openclaw_gateway_request_timeout 2s;');
    my (undef, $ngx2) = setup(gw => $never, http => 'openclaw_gateway_request_timeout 2s;');

    my $c = RelayClient->new($ngx);
    my $c2 = RelayClient->new($ngx2);
    my $t0 = time;
    $c->send_json({ id => 'w1', content => 'waiting for the gateway' });
    $c2->send_json({ id => 'w2', content => 'waiting in vain' });
    $gw->start;

    my $end = one_end_each('late gateway', $c, ['w1'], 5, 0.2);
    is($end->{w1} && $end->{w1}{type}, 'complete',
       'relayed once the gateway came up within the request timeout')
        or diag encode_json($end->{w1});
    is($end->{w1} && $end->{w1}{content}, 'echo: waiting for the gateway', 'the reply');

    my $end2 = one_end_each('no gateway', $c2, ['w2'], 6, 0.2);
    my $took = time - $t0;
    my $r = $end2->{w2};
    is($r && $r->{type}, 'error', 'no gateway: an error');
    like($r && $r->{error}, qr/gateway/i, 'the error is about the gateway');
    like($r && $r->{error}, qr/connect/i, 'and says it is not connected')
        or diag encode_json($r);
    cmp_ok($took, '>=', 1.8, 'after the request timeout (2 s)');
    cmp_ok($took, '<', 4.5, 'not much later');

    $c->close;
    $c2->close;
    $ngx->stop;
    $ngx2->stop;
    $gw->stop;
};

###########################################################################
# unresponsive gateway: nothing at all, not even ticks, but no close

subtest 'unresponsive gateway' => sub {
    my ($gw, $ngx) = setup(fake => { tick_ms => 500 },
                           http => 'openclaw_gateway_request_timeout 5s;');
    ok(wait_up($ngx), 'link up');

    # ticks flowing: the link is left alone for three of them, more than
    # the two intervals of silence it would be dropped after
    ok($gw->wait_until(sub { $gw->records(kind => 'tick') >= 3 }, 10),
       'the gateway sent three ticks');
    is(scalar $gw->connects, 1, 'with ticks every 500 ms the link stays up');
    ok(!lines($ngx, qr/silent/), 'and is not declared silent');

    my $c = RelayClient->new($ngx);
    my $text = '{{slow 25 100}} frozen';
    $c->send_json({ id => 'u1', content => $text });
    my $p = $c->next_json(5);
    is($p && $p->{type}, 'progress', 'the reply is streaming');

    my $t_freeze = time;
    $gw->action('freeze');

    my $closed = $gw->wait_until(sub {
        (grep { $_->{conn} == 1 } $gw->records(kind => 'closed'))[0];
    }, 4);
    ok($closed, 'nginx dropped the silent link');
    if ($closed) {
        my $after = $closed->{t} - $t_freeze;
        cmp_ok($after, '>=', 0.9, 'not before two tick intervals');
        cmp_ok($after, '<=', 2.5, 'soon after two tick intervals')
            or diag "after $after s";
        is($closed->{code}, 4000, 'with close code 4000');
    }
    ok(lines($ngx, qr/silent/), 'error.log says the gateway went silent');

    # the new link comes up within the request timeout: sent again there
    my $end = one_end_each('unresponsive', $c, ['u1'], 10);
    is($end->{u1} && $end->{u1}{type}, 'complete',
       'the message in flight completes on the new link')
        or diag 'u1 ended in: ' . encode_json($end->{u1});
    is($end->{u1} && $end->{u1}{content}, "echo: $text",
       'with the whole reply');

    ok(wait_up($ngx, 2, 5), 'a new link came up');
    my @sends = grep { $_->{params}{message} eq $text } $gw->requests('chat.send');
    cmp_ok(scalar @sends, '>=', 2, 'the message was sent again on the new link');
    is(scalar(keys %{{ map { $_->{params}{idempotencyKey} => 1 } @sends }}), 1,
       'with the same idempotencyKey');

    $c->send_json({ id => 'u2', content => 'after the freeze' });
    my $e2 = one_end_each('unresponsive', $c, ['u2'], 5, 0);
    is($e2->{u2} && $e2->{u2}{type}, 'complete', 'a later message completes');

    $c->close;
    $ngx->stop;
    $gw->stop;
};

###########################################################################
# refused connects, side by side: wrong token, protocol mismatch, no
# scopes, and UNAVAILABLE with retryAfterMs

subtest 'refused connects' => sub {
    my $WRONG = 'wrong-tok-Zx81q';

    my ($gwt, $ngt) = setup(token => $WRONG,
                            main => 'error_log logs/debug.log debug;',
                            http => 'openclaw_gateway_request_timeout 2s;');
    my ($gwp, $ngp) = setup(fake => { protocol => 5 },
                            http => 'openclaw_gateway_request_timeout 2s;');
    my ($gws, $ngs) = setup(fake => { scopes => [] },
                            http => 'openclaw_gateway_request_timeout 2s;');
    my ($gwu, $ngu) = setup(fake => { unavailable => 1, retry_after_ms => 1500 },
                            http => 'openclaw_gateway_request_timeout 5s;');
    my $t0 = time;

    my %c = (token => RelayClient->new($ngt), protocol => RelayClient->new($ngp),
             scopes => RelayClient->new($ngs), unavailable => RelayClient->new($ngu));
    $c{$_}->send_json({ id => "x-$_", content => "refused $_" }) for keys %c;

    my %end;
    for my $k (sort keys %c) {
        my $e = one_end_each("refused $k", $c{$k}, ["x-$k"], 7, 0.2);
        $end{$k} = $e->{"x-$k"};
    }
    # the refused links try again (1 s of backoff, then 2, ...): a busy
    # machine may make them later, never more often
    for my $gw ($gwt, $gwp) {
        $gw->wait_until(sub { $gw->connects >= 2 }, 10);
    }
    my $window = time - $t0;

    for my $k (qw(token protocol scopes)) {
        is($end{$k} && $end{$k}{type}, 'error', "$k: the message gets an error");
        diag "$k: " . encode_json($end{$k});
    }
    like($end{scopes} && $end{scopes}{error},
         qr/a gateway that is not reached over loopback needs a paired device identity\)$/,
         'no scopes: the reason reaches the client whole');

    my %attempts = (token => scalar $gwt->connects, protocol => scalar $gwp->connects,
                    scopes => scalar $gws->connects);
    for my $k (qw(token protocol)) {
        cmp_ok($attempts{$k}, '>=', 2, "$k: retried");
        # retries at least 0.5, 1, 2, ... s apart (equal jitter): at most
        # 1 + log2(2 * window + 1) attempts, and one more for the clock
        cmp_ok($attempts{$k}, '<=', 2 + log(2 * $window + 1) / log(2),
               "$k: but no tight loop")
            or diag "$attempts{$k} connects in $window s";
    }
    cmp_ok($attempts{scopes}, '<=', 3, 'no scopes: no tight loop either');

    my @t = lines($ngt, qr/\[error\].*(AUTH_TOKEN_MISMATCH|token mismatch)/);
    ok(@t, 'wrong token: error.log has an [error] naming the refusal')
        or diag $ngt->error_log;
    my @p = lines($ngp, qr/\[error\].*protocol/i);
    ok(@p, 'protocol mismatch: error.log has an [error] naming it')
        or diag $ngp->error_log;
    my @s = lines($ngs, qr/\[error\].*scope/i);
    ok(@s, 'no scopes: a loud [error] in error.log')
        or diag $ngs->error_log;

    my @log_lines = split /\n/, $ngt->error_log;
    my @refusals = grep { /AUTH_TOKEN_MISMATCH|token mismatch/ } @log_lines;
    cmp_ok(scalar @refusals, '<=', 3, 'the refusal is not logged at every attempt');

    # UNAVAILABLE: the next attempt waits for retryAfterMs
    my @cu = $gwu->connects;
    cmp_ok(scalar @cu, '>=', 2, 'UNAVAILABLE: tried again');
    if (@cu >= 2) {
        my $gap = $cu[1]{t} - $cu[0]{t};
        cmp_ok($gap, '>=', 1.45, 'not before retryAfterMs (1500 ms)');
        cmp_ok($gap, '<', 3.5, 'nor much later') or diag "gap $gap";
    }
    is($end{unavailable} && $end{unavailable}{type}, 'complete',
       'UNAVAILABLE then hello-ok: the waiting message is relayed')
        or diag encode_json($end{unavailable});

    $_->close for values %c;
    $_->stop for $ngt, $ngp, $ngs, $ngu;
    $_->stop for $gwt, $gwp, $gws, $gwu;

    for my $log ($ngt->error_log, $ngt->read_log('debug.log')) {
        ok(index($log, $WRONG) < 0, 'the wrong token is in no log');
    }
    like($ngt->read_log('debug.log'), qr/\[debug\]/, 'the debug log was written');
};

###########################################################################
# run life cycle on one gateway link

subtest 'run life cycle' => sub {
    my ($gw, $ngx) = setup(
        http => "openclaw_gateway_request_timeout 3s;\nopenclaw_gateway_run_timeout 2s;",
        server => <<'EOF');
    location /noabort {
        openclaw_bridge;
        openclaw_bridge_abort_on_disconnect off;
    }

    location /limited {
        openclaw_bridge;
        openclaw_bridge_max_in_flight 2;
    }

    location = /status {
        openclaw_bridge_status;
    }
EOF
    ok(wait_up($ngx), 'link up');

    # a run that never ends, started first: it times out while the rest runs
    my $hang = RelayClient->new($ngx);
    my $t_hang = time;
    $hang->send_json({ id => 'h1', content => '{{hang}} forever' });

    # the same message again after its reply: the gateway says "ok", the
    # reply comes from chat.history
    {
        my $c = RelayClient->new($ngx);
        $c->send_json({ id => 'rep', session => 'rep', content => 'repeat me' });
        my $e = one_end_each('repeat', $c, ['rep'], 5, 0);
        is($e->{rep} && $e->{rep}{content}, 'echo: repeat me', 'first reply');

        $gw->set(reply_prefix => 'RERUN: ');
        $c->send_json({ id => 'rep', session => 'rep', content => 'repeat me' });
        my @f = $c->until_terminal(['rep'], 5);
        push @f, $c->drain(0.3);
        my @t = terminals('rep', @f);
        is(scalar @t, 1, 'the repeat ends once');
        is($t[0] && $t[0]{json}{type}, 'complete', 'in a complete');
        is($t[0] && $t[0]{json}{content}, 'echo: repeat me',
           'with the reply of the first run');
        my @res = grep { ($_->{status} // '') eq 'ok' } $gw->records(kind => 'res', method => 'chat.send');
        is(scalar @res, 1, 'the gateway answered the repeat with status "ok"');
        my @h = $gw->requests('chat.history');
        is(scalar @h, 1, 'the relay asked for chat.history');
        is($h[0] && $h[0]{params}{sessionKey}, 'agent:main:webhook:session:rep', 'of the right session');
        $gw->set(reply_prefix => 'echo: ');
        $c->close;
    }

    # an acknowledgement with a status the relay does not know: an error
    # that names it, nothing left in flight
    {
        my $c = RelayClient->new($ngx);
        $c->send_json({ id => 'st1', content => '{{ack_status parked}} x' });
        my @t = terminals('st1', $c->until_terminal(['st1'], 5));
        is(scalar @t, 1, 'unknown ack status: the message ends once');
        is($t[0] && $t[0]{json}{type}, 'error', 'unknown ack status: in an error');
        like($t[0] && $t[0]{json}{error}, qr/gateway reports the run as "parked"/,
             'unknown ack status: the error names the status');
        $c->send_json({ id => 'st1', content => 'after parked' });
        my $e = one_end_each('after parked', $c, ['st1'], 5, 0);
        is($e->{st1} && $e->{st1}{type}, 'complete',
           'unknown ack status: the same id can be sent again');
        $c->close;
    }

    # a client leaves mid-run: chat.abort, unless the location says no
    {
        my $c1 = RelayClient->new($ngx);
        my $c2 = RelayClient->new($ngx, path => '/noabort');
        $c1->send_json({ id => 'd1', session => 'disc', content => '{{slow 40 100}} leave' });
        $c2->send_json({ id => 'd2', session => 'disc2', content => '{{slow 40 100}} stay' });
        my $p1 = $c1->next_json(5);
        my $p2 = $c2->next_json(5);
        is($p1 && $p1->{type}, 'progress', 'run d1 is streaming');
        is($p2 && $p2->{type}, 'progress', 'run d2 is streaming');
        $c1->vanish;
        $c2->vanish;

        my $key1 = key_of($gw, '{{slow 40 100}} leave');
        my $key2 = key_of($gw, '{{slow 40 100}} stay');
        ok($key1 && $key2, 'both runs reached the gateway');
        $key2 //= '-';
        my $abort = $gw->wait_until(sub {
            (grep { ($_->{params}{runId} // '') eq $key1 } $gw->requests('chat.abort'))[0];
        }, 3);
        ok($abort, 'the gateway got chat.abort for the run of the client that left');
        is($abort && $abort->{params}{sessionKey}, 'agent:main:webhook:session:disc', 'with its sessionKey');
        is($abort && $abort->{params}{runId}, $key1, 'and its runId');
        # nginx is done with both clients once it serves only the one of
        # the hanging run; a message relayed after that comes to the
        # gateway behind any chat.abort of theirs, on the same link
        ok($gw->wait_until(sub { (clients_served($ngx) // -1) == 1 }, 10),
           'nginx saw both clients go');
        my $c3 = RelayClient->new($ngx);
        $c3->send_json({ id => 'd3', content => 'behind any abort' });
        my $e3 = one_end_each('after the clients left', $c3, ['d3'], 5, 0);
        is($e3->{d3} && $e3->{d3}{type}, 'complete', 'a message after them completes');
        $c3->close;
        my @a2 = grep { ($_->{params}{sessionKey} // '') eq 'agent:main:webhook:session:disc2'
                        || ($_->{params}{runId} // '') eq $key2 } $gw->requests('chat.abort');
        ok(!@a2, 'no chat.abort with openclaw_bridge_abort_on_disconnect off');
    }

    # max in flight 2: the third message at once is refused
    {
        my $c = RelayClient->new($ngx, path => '/limited');
        $c->send_json({ id => "l$_", content => "{{slow 5 80}} limited $_" }) for 1 .. 3;
        my $end = one_end_each('max in flight', $c, [qw(l1 l2 l3)], 5, 0.2);
        is($end->{l1} && $end->{l1}{type}, 'complete', 'first message completes');
        is($end->{l2} && $end->{l2}{type}, 'complete', 'second message completes');
        is($end->{l3} && $end->{l3}{type}, 'error', 'third one gets an error');
        like($end->{l3} && $end->{l3}{error}, qr/in flight|too many/i,
             'saying there are too many in flight');
        ok(!key_of($gw, '{{slow 5 80}} limited 3'), 'and was not sent to the gateway');
        $c->send_json({ id => 'l4', content => 'limited 4' });
        my $e4 = one_end_each('max in flight', $c, ['l4'], 5, 0);
        is($e4->{l4} && $e4->{l4}{type}, 'complete', 'after the replies there is room again');
        $c->close;
    }

    # error events: one error reply, even when the gateway sends two
    {
        my $c = RelayClient->new($ngx);
        $c->send_json({ id => 'e1', content => '{{error}} one' });
        $c->send_json({ id => 'e2', content => '{{double_error}} two' });
        my $end = one_end_each('error events', $c, [qw(e1 e2)], 5, 1);
        for my $id (qw(e1 e2)) {
            is($end->{$id} && $end->{$id}{type}, 'error', "$id: an error reply");
            like($end->{$id} && $end->{$id}{error}, qr/LLM request failed/,
                 "$id: with the gateway's message");
        }
        $c->close;
    }

    # the run that never ends
    {
        my $end = one_end_each('run timeout', $hang, ['h1'], 5, 0);
        my $took = time - $t_hang;
        is($end->{h1} && $end->{h1}{type}, 'error', 'a run that never ends gets an error');
        like($end->{h1} && $end->{h1}{error}, qr/2000 ms|time/i, 'naming the timeout')
            or diag encode_json($end->{h1});
        cmp_ok($took, '>=', 1.9, 'after openclaw_gateway_run_timeout (2 s)');
        # measured when read, after the block above: slack for ASan and -j2
        cmp_ok($took, '<', 6, 'not much later');
        my $key = key_of($gw, '{{hang}} forever');
        my $abort = $gw->wait_until(sub {
            (grep { ($_->{params}{runId} // '') eq ($key // '-') } $gw->requests('chat.abort'))[0];
        }, 2);
        ok($abort, 'and the gateway was told to abort it');
        $hang->close;
    }

    # graceful quit with a run in flight: its error, then close 1001
    {
        my $c = RelayClient->new($ngx);
        $c->send_json({ id => 'q1', content => '{{hang}} quitting' });
        ok($gw->wait_until(sub { key_of($gw, '{{hang}} quitting') }, 3),
           'the run reached the gateway');
        $ngx->signal('QUIT');
        my @f;
        while (my $f = $c->next_frame(5)) { push @f, $f }
        my @t = terminals('q1', @f);
        is(scalar @t, 1, 'graceful quit: one reply for the message in flight');
        is($t[0] && $t[0]{json}{type}, 'error', 'an error');
        like($t[0] && $t[0]{json}{error}, qr/clos|shut/i, 'saying the server is closing');
        is($c->closed && $c->closed->[0], 1001, 'then close 1001');
        $c->raw->send_frame(8, pack('n', 1001));
        $c->raw->wait_eof(2);
        $c->raw->close;
    }

    $ngx->stop;
    $gw->stop;
};

###########################################################################
# a run timeout longer than the request timeout: an acknowledged run is
# timed by the run timeout, not by the timer of its request

subtest 'run timeout past the request timeout' => sub {
    my ($gw, $ngx) = setup(
        http => "openclaw_gateway_request_timeout 1s;\nopenclaw_gateway_run_timeout 3s;");
    ok(wait_up($ngx), 'link up');

    my $c = RelayClient->new($ngx);
    my $t0 = time;
    $c->send_json({ id => 'long', content => '{{hang}} long run' });
    $c->send_json({ id => 'ok', content => 'quick one' });
    my $end = one_end_each('long run', $c, ['ok', 'long'], 8, 0);
    my $took = time - $t0;
    is($end->{ok} && $end->{ok}{type}, 'complete', 'a quick message completes meanwhile');
    is($end->{long} && $end->{long}{type}, 'error', 'the run that never ends gets an error');
    like($end->{long} && $end->{long}{error}, qr/3000 ms/, 'naming the run timeout')
        or diag encode_json($end->{long});
    cmp_ok($took, '>=', 2.9, 'after openclaw_gateway_run_timeout (3 s), not the request timeout (1 s)');
    cmp_ok($took, '<', 7, 'not much later');
    $c->close;

    $ngx->stop;
    $gw->stop;
};

###########################################################################
# runs with the same timeout share one timer: each still times out when
# its own time is up, not with the first nor much after, and runs that end
# before theirs are left alone

subtest 'staggered run timeouts' => sub {
    my ($gw, $ngx) = setup(
        http => "openclaw_gateway_request_timeout 1s;\nopenclaw_gateway_run_timeout 2s;");
    ok(wait_up($ngx), 'link up');

    my $c = RelayClient->new($ngx);
    my %sent;
    my @f;

    for my $i (1 .. 3) {
        $sent{"h$i"} = time;
        $c->send_json({ id => "h$i", content => "{{hang}} staggered $i" });
        $c->send_json({ id => "q$i", content => "quick $i" });
        push @f, $c->drain(0.7);
    }

    my %ended;

    for my $f (@f) {
        my $j = $f->{json} or next;
        next unless ($j->{type} // '') =~ /^(complete|error)$/;
        $ended{$j->{id}} //= { %$j, at => $f->{t} };
    }

    my $deadline = time + 6;

    while (grep { !$ended{"h$_"} } 1 .. 3 and time < $deadline) {
        my $f = $c->next_frame(1) or next;
        my $j = $f->{json} or next;
        next unless ($j->{type} // '') =~ /^(complete|error)$/;
        $ended{$j->{id}} //= { %$j, at => $f->{t} };
    }

    for my $i (1 .. 3) {
        is($ended{"q$i"} && $ended{"q$i"}{type}, 'complete', "q$i completes");

        my $h = $ended{"h$i"};
        is($h && $h->{type}, 'error', "h$i gets an error");
        like($h && $h->{error}, qr/2000 ms/, "h$i: the run timeout");
        my $took = $h ? $h->{at} - $sent{"h$i"} : 0;
        cmp_ok($took, '>=', 1.9, "h$i: not before its own 2 s");
        cmp_ok($took, '<', 3.5, "h$i: not much after them");
    }

    my @late = grep { ($_->{json}{type} // '') =~ /^(complete|error)$/ }
               $c->drain(0.5);
    is(scalar @late, 0, 'nothing else ends');

    $c->close;
    $ngx->stop;
    $gw->stop;
};

###########################################################################
# a message over the gateway's maxPayload is refused here, never sent: the
# gateway would close the link, and the message would go again after every
# reconnect.  One that waited for the link is checked when it comes up.

subtest 'message over the gateway maxPayload' => sub {
    my ($gw, $ngx) = setup(fake => { max_payload => 2048 },
                           http => 'openclaw_gateway_request_timeout 10s;');
    ok(wait_up($ngx), 'link up');

    my $c = RelayClient->new($ngx);
    my $big = 'big ' . ('x' x 3000);
    $c->send_json({ id => 'big', content => $big });
    $c->send_json({ id => 'small', content => 'small one' });
    my $end = one_end_each('maxPayload', $c, ['big', 'small'], 5);

    is($end->{big} && $end->{big}{type}, 'error', 'the large message gets an error');
    like($end->{big} && $end->{big}{error},
         qr/too large for the gateway: \d+ bytes .* maxPayload of 2048 bytes/,
         'the error names its size and the limit')
        or diag encode_json($end->{big});
    is($end->{small} && $end->{small}{type}, 'complete', 'a small one still completes');
    ok(!grep({ ($_->{params}{message} // '') =~ /^big / } $gw->requests('chat.send')),
       'the large message never reached the gateway');
    is(scalar $gw->records(kind => 'too_big'), 0, 'no frame over the limit');

    # one that waits for the link: the limit is known only when it is back
    $gw->stop;
    my $t0 = time;
    sleep 0.05 while count_log($ngx, qr/link lost/) < 1 && time - $t0 < 5;
    $c->send_json({ id => 'big2', content => $big });
    $c->send_json({ id => 'small2', content => 'small two' });
    sleep 0.3;
    $gw->start;
    $end = one_end_each('maxPayload after a wait', $c, ['big2', 'small2'], 10);
    is($end->{big2} && $end->{big2}{type}, 'error', 'a large message that waited gets an error');
    like($end->{big2} && $end->{big2}{error}, qr/maxPayload of 2048 bytes/,
         'the same error');
    is($end->{small2} && $end->{small2}{type}, 'complete', 'the small one that waited completes');
    is(scalar $gw->records(kind => 'too_big'), 0, 'still no frame over the limit');
    is(count_log($ngx, qr/link lost/), 1, 'the link went down only when the gateway stopped');

    $c->close;
    $ngx->stop;
    $gw->stop;
};

###########################################################################
# a message in flight each time the link drops is given up after three
# times, with an error that says so; the other clients' messages, sent
# again with it, complete

subtest 'message that makes the gateway close the link' => sub {
    my ($gw, $ngx) = setup(http => 'openclaw_gateway_request_timeout 30s;');
    ok(wait_up($ngx), 'link up');

    my $poison = RelayClient->new($ngx);
    my $other = RelayClient->new($ngx);
    my $t0 = time;

    $poison->send_json({ id => 'p', content => '{{close_link}} poison' });
    sleep 0.05 while count_log($ngx, qr/link lost/) < 1 && time - $t0 < 5;
    $other->send_json({ id => 'o1', content => 'other one' });

    my $end = one_end_each('poison', $poison, ['p'], 20);
    my $took = time - $t0;
    is($end->{p} && $end->{p}{type}, 'error', 'the message gets an error');
    like($end->{p} && $end->{p}{error},
         qr/link went down 3 times while this message was in flight; not sent again/,
         'the error says why it was given up')
        or diag encode_json($end->{p});
    cmp_ok($took, '<', 20, 'long before the request timeout');

    my @sends = grep { $_->{params}{message} =~ /poison/ } $gw->requests('chat.send');
    is(scalar @sends, 3, 'the message was sent 3 times');

    $other->send_json({ id => 'o2', content => 'other two' });
    my $oend = one_end_each('others', $other, ['o1', 'o2'], 10);
    is($oend->{o1} && $oend->{o1}{type}, 'complete',
       'a message sent while it was retried completes');
    is($oend->{o2} && $oend->{o2}{type}, 'complete', 'a message sent after it completes');

    sleep 0.5;
    @sends = grep { $_->{params}{message} =~ /poison/ } $gw->requests('chat.send');
    is(scalar @sends, 3, 'and it is not sent again');

    $_->close for $poison, $other;
    $ngx->stop;
    $gw->stop;
};

done_testing;
