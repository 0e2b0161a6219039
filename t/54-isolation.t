#!/usr/bin/perl

# Isolation between clients (issue 9), each finding replayed as it was
# reported: a client that stops reading while its replies pile up (it
# crashed the worker from inside a run's completion), a reading client
# whose single reply is larger than the send buffer, two senders using
# the same id in one session, a sender that names another sender's
# default session, and control messages reaching outside the location's
# namespace.  Every nginx here is checked for sanitizer reports and
# [alert] lines when it stops (t/lib/OCB.pm); the ASan run of the suite
# replays all of it under AddressSanitizer.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Socket ();
use Mojo::JSON qw(decode_json encode_json);
use Mojo::UserAgent;
use Time::HiRes qw(sleep time);

use OCB;
use FakeGateway;
use RelayClient;

my $TOKEN = 'tok-54-isolation-7d1e';

my $gw = FakeGateway->new(token => $TOKEN, deltas => 2, delta_ms => 5);

my $ngx = OCB->new(workers => 1, http => <<"EOF");
openclaw_gateway ws://127.0.0.1:@{[ $gw->port ]};
openclaw_gateway_token $TOKEN;
openclaw_gateway_admin on;

openclaw_bridge_zone s:1m;

server {
    listen 127.0.0.1:%%PORT%%;

    # the reproduction of the crash, as reported
    location = /slow {
        openclaw_bridge;
        openclaw_bridge_max_in_flight 2;
        openclaw_bridge_max_message_size 4k;
        openclaw_bridge_send_buffer 8k;
    }

    # the same with more runs in flight, so that replies pile up faster
    # than the kernel's buffers take them
    location = /slow64 {
        openclaw_bridge;
        openclaw_bridge_max_in_flight 64;
        openclaw_bridge_max_message_size 4k;
        openclaw_bridge_send_buffer 8k;
    }

    location = /big     { openclaw_bridge; }
    location = /global  { openclaw_bridge; openclaw_bridge_session_scope global; }
    location = /permsg  { openclaw_bridge; openclaw_bridge_session_scope per-message; }

    location = /own {
        openclaw_bridge;
        openclaw_bridge_sender \$arg_sender;
        openclaw_bridge_session_zone s;
    }

    location = /all {
        openclaw_bridge;
        openclaw_bridge_sender \$arg_sender;
        openclaw_bridge_session_zone s;
        openclaw_bridge_session_control all;
    }

    location = /pin {
        openclaw_bridge;
        openclaw_bridge_session_zone s;
        openclaw_bridge_max_sessions_in_flight 3;
    }

    location = /status { openclaw_bridge_status; }
}
EOF

my $http = Mojo::UserAgent->new;

sub status {
    my $r = $http->get($ngx->http_url('/status'))->result;
    return $r->is_success ? decode_json($r->body) : undef;
}

sub worker { (status() // {})->{workers}[0] // {} }

ok($gw->wait_until(sub { ($ngx->error_log =~ /gateway link up/) }, 15),
   'linked to the gateway') or diag $ngx->error_log;

my $pid = worker()->{pid};
ok($pid, "worker $pid");

my $N = 0;

# sends a chat message and returns its terminal reply (complete or error)
sub chat {
    my ($c, %m) = @_;
    $m{content} //= 'msg ' . ++$N . " $$";
    $c->send_json(\%m);
    my $deadline = time + 30;
    while (my $f = $c->next_frame($deadline - time)) {
        my $j = $f->{json} or next;
        next unless ($j->{type} // '') =~ /^(complete|error)$/;
        next if exists $m{id} && (!defined $j->{id} || $j->{id} ne $m{id});
        return $j;
    }
    return undef;
}

# sends a control message; returns its reply
sub ctl {
    my ($c, $msg) = @_;
    $c->send_json($msg);
    my $deadline = time + 10;
    while (my $f = $c->next_frame($deadline - time)) {
        next unless $f->{json} && ($f->{json}{type} // '') eq $msg->{type};
        return $f->{json};
    }
    return undef;
}

sub sent { scalar grep { $_->{params}{message} eq $_[0] } $gw->requests('chat.send') }

# the worker is the same process, and never exited on a signal
sub same_worker {
    my ($name) = @_;
    is(worker()->{pid}, $pid, "$name: the worker is still the same process");
    unlike($ngx->error_log, qr/exited on signal|worker process \d+ exited/,
           "$name: no worker exited");
}

###########################################################################
# 1. a client that stops reading: the reply that overflows its buffer
# closed it from inside the run's completion, which freed the run under
# the completion (use after free, then SIGSEGV)

# a client with a small receive window, set before connecting, that
# sends messages whose replies are about 3.9k each (one delta, then the
# final at once), a session.list now and then, and never reads
sub slow_reader {
    my ($path, $must_fill) = @_;
    my $raw = $ngx->ws(path => $path, rcvbuf => 1024);
    my $sock = $raw->sock;
    is($raw->status, 101, "$path: upgraded");

    my $full = sub { my @m = $ngx->error_log =~ /client is not reading/g; scalar @m };
    my $before = $full->();
    my $pad = 'x' x 3800;
    my $i = 0;
    my $deadline = time + 5;
    my $out = '';
    $sock->blocking(0);
    while (time < $deadline && $full->() == $before) {
        if ($out eq '' && $i < 400) {
            $out = OCB::Raw::frame(1, encode_json({ id => 'sr' . ++$i,
                                   content => "{{slow 1 0}} $i $pad" }));
            $out .= OCB::Raw::frame(1, encode_json({ type => 'session.list',
                                                     id => "sl$i" }))
                if $i % 10 == 0;
        }
        # nginx reads no more once its replies wait: then neither do we
        my $n = $out eq '' ? 0 : syswrite($sock, $out);
        if ($n) {
            substr($out, 0, $n, '');
            next;
        }
        select(undef, my $w = '', undef, 0.05);
    }
    $sock->blocking(1);

    # now it reads, with a window of a normal size: a 1 KiB one stalls
    # in TCP's zero-window probes, whose backoff grows to many seconds
    setsockopt($sock, Socket::SOL_SOCKET(), Socket::SO_RCVBUF(), 1 << 20);

    if ($must_fill) {
        ok($gw->wait_until(sub { $full->() > $before }, 10),
           "$path: its send buffer filled up") or diag "sent $i messages";
    } else {
        note "$path: sent $i messages, the buffer "
             . ($full->() > $before ? 'filled up' : 'did not fill up');
    }
    return ($raw, $i);
}

{
    # as reported: two runs in flight, an 8k send buffer (whether that
    # fills it now depends on how much the kernel takes); the client
    # resets the connection, its replies unread
    my ($raw, $n) = slow_reader('/slow');
    my $c = RelayClient->new($ngx, path => '/big');
    my $r = chat($c, id => 'after-slow', content => "after the slow reader $$");
    is($r && $r->{type}, 'complete', 'slow reader: another client still gets its reply');
    same_worker('slow reader');
    $raw->close;

    # more runs in flight: the buffer fills, the client is closed
    ($raw, $n) = slow_reader('/slow64', 1);

    # with 1008 once it reads what was queued before
    my ($code, $reason) = $raw->read_close(10);
    is($code, 1008, 'slow reader, 64 in flight: closed with 1008');
    like($reason // '', qr/too slow/, 'slow reader, 64 in flight: the reason says why');
    $raw->close;

    $r = chat($c, id => 'after-slow64', content => "after the slow reader 64 $$");
    is($r && $r->{type}, 'complete',
       'slow reader, 64 in flight: another client still gets its reply')
        or diag 'sent to the gateway: ' . sent("after the slow reader 64 $$")
                . ', reply: ' . encode_json($r) . ', frames: '
                . join(' ', map { $_->{payload} } ($c->frames)[-3 .. -1])
                . "\n" . join("\n", grep { /gateway|link/ }
                                     split /\n/, $ngx->error_log);
    same_worker('slow reader, 64 in flight');

    # nothing is left in flight and every message in had its end
    my $w;
    ok($gw->wait_until(sub { $w = worker(); ($w->{runs_in_flight} // 1) == 0
                                            && ($w->{messages_in} // 0)
                                               == ($w->{messages_out} // -1) }, 10),
       'slow readers: every message in had exactly one end')
        or diag encode_json($w);
    $c->close;
}

###########################################################################
# 2. a client that reads, with one reply larger than its send buffer
# (the default 1m): the buffer holds at least one whole reply

{
    my $c = RelayClient->new($ngx, path => '/big');
    my $text = 'y' x (1000 * 1000);
    my $r = chat($c, id => 'big', content => "{{slow 1 0}} $text");
    is($r && $r->{type}, 'complete', 'a reply larger than the send buffer: complete')
        or diag(substr(encode_json($r // {}), 0, 300) . ' '
                . encode_json($c->closed // []));
    is(length($r && $r->{content} // ''), length("echo: {{slow 1 0}} $text"),
       'a reply larger than the send buffer: the whole text');
    ok(!$c->closed, 'a reply larger than the send buffer: still open');
    $c->close;
}

###########################################################################
# 3. the same id from two senders in one session: each gets the reply to
# its own message, and never the other's

{
    my ($a, $b) = (RelayClient->new($ngx, path => '/global'),
                   RelayClient->new($ngx, path => '/global'));
    my $ra = chat($a, id => 1, content => "alpha private $$");
    is($ra && $ra->{content}, "echo: alpha private $$", 'global: A gets its reply');
    my $rb = chat($b, id => 1, content => "bravo $$");
    is($rb && $rb->{type}, 'complete', 'global, same id from B afterwards: complete');
    is($rb && $rb->{content}, "echo: bravo $$",
       'global, same id from B afterwards: the reply to B\'s own message');
    is(sent("bravo $$"), 1, 'global, same id from B afterwards: B\'s message was run');
    is($ra && $rb && $ra->{session}, $rb && $rb->{session}, 'global: one session');

    # at the same time
    $a->send_json({ id => 2, content => "{{slow 3 100}} alpha two $$" });
    $b->send_json({ id => 2, content => "{{slow 3 100}} bravo two $$" });
    my %end;
    for my $x ([$a, 'a'], [$b, 'b']) {
        my ($t) = grep { $_->{json} && ($_->{json}{type} // '') =~ /^(complete|error)$/ }
                  $x->[0]->until_terminal([2], 10);
        $end{ $x->[1] } = $t && $t->{json};
    }
    is($end{a} && $end{a}{content}, "echo: {{slow 3 100}} alpha two $$",
       'global, same id at once: A completes with its own reply');
    is($end{b} && $end{b}{content}, "echo: {{slow 3 100}} bravo two $$",
       'global, same id at once: B completes with its own reply');
    my @mine = grep { $_->{json} && ($_->{json}{content} // '') =~ /alpha/ } $b->frames;
    is(scalar @mine, 0, 'global: B never saw any of A\'s text');

    # per-message: the sessions of two connections' message 1 differ
    my ($p, $q) = (RelayClient->new($ngx, path => '/permsg'),
                   RelayClient->new($ngx, path => '/permsg'));
    my $rp = chat($p, id => 1, content => "per-message p $$");
    my $rq = chat($q, id => 1, content => "per-message q $$");
    is($rq && $rq->{content}, "echo: per-message q $$",
       'per-message, same id on two connections: each its own reply');
    isnt($rp && $rp->{session}, $rq && $rq->{session},
         'per-message, same id on two connections: two sessions');

    $_->close for $a, $b, $p, $q;
}

###########################################################################
# 4. "own": a sender can neither write into, read, reset nor delete
# another sender's session, however it names it

{
    my $s1 = RelayClient->new($ngx, path => '/own?sender=s1');
    my $s2 = RelayClient->new($ngx, path => '/own?sender=s2');
    my $s3 = RelayClient->new($ngx, path => '/own?sender=s3');
    my $k2 = 'agent:main:webhook:sender:s2';

    # squatting s2's default key first
    my $r = chat($s1, id => 'sq1', session => $k2, content => "squat $$");
    is($r && $r->{type}, 'error', 'own: naming another sender\'s default key is refused');
    like($r && $r->{error}, qr/another sender's own/, '... with an error that says why');
    is(sent("squat $$"), 0, '... and never sent to the gateway');
    $r = chat($s1, id => 'sq2', session => "$k2:sub", content => "squat sub $$");
    is($r && $r->{type}, 'error', 'own: a key below another sender\'s default key too');
    $r = chat($s1, id => 'sq3', session => 'agent:main:webhook:conn:1-1',
              content => "squat conn $$");
    is($r && $r->{type}, 'error', 'own: a connection\'s default key too');

    # s2's default session is s2's
    $r = chat($s2, id => 'own2', content => "s2 private $$");
    is($r && $r->{session}, $k2, 'own: s2 gets its default session');
    my $l = ctl($s2, { type => 'session.list', id => 'l2' });
    ok((grep { $_->{key} eq $k2 } @{ $l && $l->{data}{sessions} // [] }),
       'own: s2 lists its default session') or diag encode_json($l);
    my $g = ctl($s2, { type => 'session.get', key => $k2, id => 'g2' });
    is($g && $g->{data}{key}, $k2, 'own: s2 reads its default session');
    $l = ctl($s1, { type => 'session.list', id => 'l1' });
    ok(!(grep { $_->{key} eq $k2 } @{ $l && $l->{data}{sessions} // [] }),
       'own: s1 does not list it') or diag encode_json($l);
    for my $type (qw(session.get session.reset session.delete)) {
        my $x = ctl($s1, { type => $type, key => $k2, id => "x-$type" });
        ok($x && $x->{error}, "own: s1's $type of s2's default key is refused")
            or diag encode_json($x);
    }
    ok($gw->session($k2), 'own: the gateway still has s2\'s session');
    is(scalar $gw->requests('sessions.reset') + scalar $gw->requests('sessions.delete'), 0,
       'own: no reset or delete reached the gateway');

    # a named session is its first sender's
    $r = chat($s1, id => 'room1', session => 'room', content => "s1 room $$");
    is($r && $r->{type}, 'complete', 'own: s1 names a session');
    my $room = $r && $r->{session};
    $r = chat($s3, id => 'room3', session => 'room', content => "s3 room $$");
    is($r && $r->{type}, 'error', 'own: s3 cannot write into s1\'s session');
    like($r && $r->{error}, qr/belongs to another sender/, '... and is told why');
    is(sent("s3 room $$"), 0, '... and its message is never sent');
    $r = chat($s3, id => 'room3b', session => $room, content => "s3 room full $$");
    is($r && $r->{type}, 'error', 'own: nor by its full key');
    $g = ctl($s3, { type => 'session.get', key => 'room', id => 'g3' });
    is($g && $g->{error}, 'Session not found', 'own: nor read it');
    $r = chat($s1, id => 'room1b', session => 'room', content => "s1 again $$");
    is($r && $r->{type}, 'complete', 'own: s1 goes on in its session');

    # "all" shares the location's namespace among its senders on purpose
    my $a1 = RelayClient->new($ngx, path => '/all?sender=a1');
    my $a2 = RelayClient->new($ngx, path => '/all?sender=a2');
    $r = chat($a1, id => 'sh1', session => 'shared', content => "a1 shared $$");
    is($r && $r->{type}, 'complete', 'all: a1 names a session');
    $r = chat($a2, id => 'sh2', session => 'shared', content => "a2 shared $$");
    is($r && $r->{type}, 'complete', 'all: a2 writes into it too');

    $_->close for $s1, $s2, $s3, $a1, $a2;
}

###########################################################################
# 5. the namespace: the agent's other channels and main session are out
# of reach, for messages and control alike; malformed keys are refused

{
    $gw->seed_sessions({ key => 'agent:main:telegram:dm:42' },
                       { key => 'agent:main:main' });
    my $c = RelayClient->new($ngx, path => '/all?sender=eve');
    for my $key ('agent:main:telegram:dm:42', 'agent:main:main') {
        for my $type (qw(session.get session.reset session.delete)) {
            my $x = ctl($c, { type => $type, key => $key, id => "ns-$type" });
            like($x && $x->{error} // '', qr/outside this location's namespace/,
                 "all: $type of $key is refused");
        }
        ok($gw->session($key), "all: the gateway still has $key");
        my $r = chat($c, id => 'ns-msg', session => $key, content => "into $key $$");
        is($r && $r->{type}, 'error', "all: a message into $key is refused");
        is(sent("into $key $$"), 0, "all: a message into $key is never sent");
    }
    my $l = ctl($c, { type => 'session.list', id => 'ns-list' });
    ok(!(grep { $_->{key} !~ /^agent:main:webhook:/ } @{ $l && $l->{data}{sessions} // [] }),
       'all: session.list shows only the location\'s namespace') or diag encode_json($l);

    my @bad = (
        ["a\x{0}b", qr/control character/, 'a NUL'],
        ["a\nb", qr/control character/, 'a newline'],
        ["a\x{7f}b", qr/control character/, 'a DEL'],
        ['a::b', qr/empty part/, 'an empty part'],
        ['a:', qr/empty part/, 'a ":" at the end'],
        ['agent:main:webhook:', qr/outside|empty part/, 'only the prefix'],
        ['agent:main:webhook::x', qr/empty part/, 'an empty part after the prefix'],
        ['a:..:b', qr/"\.\." part/, 'a ".." part'],
        ['.', qr/"\." or/, 'a "." key'],
    );
    for my $b (@bad) {
        my ($key, $re, $name) = @$b;
        my $r = chat($c, id => "bad-$name", session => $key, content => "bad $name $$");
        is($r && $r->{type}, 'error', "a session key with $name: refused");
        like($r && $r->{error} // '', $re, "a session key with $name: the error says why");
        is(sent("bad $name $$"), 0, "a session key with $name: never sent");
        my $x = ctl($c, { type => 'session.get', key => $key, id => "badg-$name" });
        like($x && $x->{error} // '', $re, "session.get of a key with $name: refused");
    }
    $c->close;
}

###########################################################################
# 6. one connection cannot pin the zone with hung runs: sessions with a
# message in flight are never evicted, so how many it holds is bounded

{
    my $c = RelayClient->new($ngx, path => '/pin');
    $c->send_json({ id => "pin$_", session => "pin-$_", content => "{{hang}} pin $_ $$" })
        for 1 .. 3;
    ok($gw->wait_until(sub { 3 == grep { $_->{params}{message} =~ /^\{\{hang\}\} pin \d $$/ }
                                   $gw->requests('chat.send') }, 10),
       'pin: three sessions with a message in flight');
    my $r = chat($c, id => 'pin4', session => 'pin-4', content => "pin four $$");
    is($r && $r->{type}, 'error', 'pin: a fourth session is refused');
    like($r && $r->{error} // '', qr/too many sessions with messages in flight/,
         'pin: the error says why');
    is(sent("pin four $$"), 0, 'pin: never sent');
    $r = chat($c, id => 'pin1b', session => 'pin-1', content => "pin one again $$");
    is($r && $r->{type}, 'complete', 'pin: another message in a session it holds is fine');
    my @runs = map { $_->{params}{idempotencyKey} }
               grep { $_->{params}{message} =~ /^\{\{hang\}\} pin \d $$/ }
               $gw->requests('chat.send');
    $gw->action('finish', runId => $_) for @runs;
    my %done = map { $_->{json}{id} => $_->{json}{type} }
               grep { $_->{json} && ($_->{json}{type} // '') =~ /^(complete|error)$/ }
               $c->until_terminal([map { "pin$_" } 1 .. 3], 10);
    is(join(',', map { $done{"pin$_"} // 'none' } 1 .. 3), 'complete,complete,complete',
       'pin: the hung messages complete');
    $r = chat($c, id => 'pin4b', session => 'pin-4', content => "pin four again $$");
    is($r && $r->{type}, 'complete', 'pin: then a new session is fine again');
    $c->close;
}

same_worker('at the end');

$ngx->stop;
done_testing();
