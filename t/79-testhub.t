#!/usr/bin/perl

# The test hub itself (t/lib/TestHub.pm), with plain WebSocket clients and
# no nginx: the two behaviours the hub-mode tests rely on (rooms: uid from
# the path or the query, 400 without one, 426 for an Upgrade that is not
# exactly "websocket", fan-out to the OTHER sockets of the uid, binary
# kept; echo: greeting, /ws only, re-serialised JSON to every socket, the
# sender included, non-JSON dropped), and its controls (close, refuse,
# pause, send, crash and restart) and records.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Mojo::JSON qw(decode_json encode_json);
use File::Path ();
use Time::HiRes qw(time);

use OCB;
use TestHub;

# a socket without X-Hub-Client: what the hub takes for a bridge
sub bridge_sock {
    my ($hub, $path, %h) = @_;
    return OCB::Raw->connect($hub->port, path => $path,
                             headers => { Host => '127.0.0.1:' . $hub->port, %h });
}

sub next_data {
    my ($raw, $timeout) = @_;
    while (my $f = $raw->read_frame($timeout)) {
        return $f unless $f->{op} == 9 || $f->{op} == 10;
    }
    return undef;
}

###########################################################################
# rooms

{
    my $hub = TestHub->new(mode => 'rooms');

    my $r = bridge_sock($hub, '/ws');
    is($r->status, 400, 'rooms: no uid: 400');
    like($r->body // '', qr/^\{"error":"UID is required\./, 'rooms: its JSON error');
    $r->close;

    $r = bridge_sock($hub, '/ws?uid=a', Upgrade => 'WebSocket');
    is($r->status, 426, 'rooms: "Upgrade: WebSocket": 426 (case-sensitive)');
    $r->close;

    my $br = bridge_sock($hub, '/ws?uid=a%2Fb');
    is($br->status, 101, 'rooms: a bridge socket of uid "a/b" (percent-encoded)');
    my $a1 = $hub->client(uid => 'a/b', name => 'a1');
    my $a2 = $hub->client(path => '/ws/a%2Fb?uid=zzz', name => 'a2');
    my $b1 = $hub->client(uid => 'b', name => 'b1');

    ok($hub->wait_until(sub { $hub->sockets(uid => 'a/b') == 3 }, 5),
       'rooms: three sockets of a/b (the path wins over the query)');
    is(scalar $hub->bridges('a/b'), 1, 'rooms: one of them a bridge');
    is(scalar $hub->sockets(uid => 'b', role => 'client'), 1, 'rooms: one user of b');

    $a1->send_json({ id => 'x1', content => 'hello' });
    my $f = next_data($br, 5);
    is($f && $f->{payload}, '{"content":"hello","id":"x1"}',
       'rooms: the bridge gets the frame untouched');
    my $g = $a2->next_frame(5);
    is($g && $g->{payload}, '{"content":"hello","id":"x1"}', 'rooms: so does the other user');

    $br->send_frame(2, "\x00\x01binary");
    $f = $a1->next_frame(5);
    is($f && $f->{op}, 2, 'rooms: binary stays binary');
    is($f && $f->{payload}, "\x00\x01binary", 'rooms: its bytes untouched');
    $a2->next_frame(5);

    # nothing back to the sender, nothing to the other uid: a marker
    # sent after, from b1's side and a2's side, comes first
    $a2->send_json({ marker => 1 });
    $f = $a1->next_frame(5);
    is($f && $f->{payload}, '{"marker":1}', 'rooms: the sender got nothing of its own');
    $b1->send_json({ marker => 2 });
    $a1->send_json({ marker => 3 });
    $f = $a2->next_frame(5);
    is($f && $f->{payload}, '{"marker":3}', 'rooms: nothing of uid b reached uid a/b');

    # the bridge (of a/b) had markers 1 and 3
    is(join(',', map { $_->{payload} } grep { $_ } map { next_data($br, 5) } 1, 2),
       '{"marker":1},{"marker":3}', 'rooms: the bridge got the users\' frames of its uid');

    # records
    my ($up) = $hub->upgrades(conn => 3);
    is($up->{request_line}, 'GET /ws?uid=a%2Fb HTTP/1.1', 'records: the request line as sent');
    is($up->{role}, 'bridge', 'records: the role');
    is((TestHub::header_values($up, 'upgrade'))[0], 'websocket', 'records: the headers');
    my @in = $hub->bridge_sent;
    is(scalar @in, 1, 'records: one frame from the bridge');
    is($in[0]{op}, 2, 'records: binary');

    # inject
    $hub->inject(uid => 'a/b', json => { type => 'x' });
    $f = next_data($br, 5);
    is($f && $f->{payload}, '{"type":"x"}', 'send: to the bridge');
    $hub->inject(big => { id => 'h', size => 1000 }, op => 'binary');
    $f = next_data($br, 5);
    is($f && length $f->{payload}, 1000, 'send: a big frame of the given size');
    is($f && decode_json($f->{payload})->{id}, 'h', 'send: a valid message');
    is($f && $f->{op}, 2, 'send: binary');

    # pause: the bridge's frames are not read until resumed
    $hub->pause(uid => 'a/b');
    $br->send_frame(1, '{"while":"paused"}');
    $a1->send_json({ marker => 4 });
    $f = $a2->next_frame(5);
    is($f && $f->{payload}, '{"marker":4}', 'pause: users are still read');
    ok(!$a2->next_frame(0.3), 'pause: the paused bridge is not');
    $hub->resume(uid => 'a/b');
    $f = $a2->next_frame(5);
    is($f && $f->{payload}, '{"while":"paused"}', 'resume: read again');
    $a1->next_frame(5);

    # close the bridge's sockets with 1001
    $hub->close_all(code => 1001);
    my ($code) = $br->read_close(5);
    is($code, 1001, 'close: 1001 to the bridge');
    ok($hub->wait_until(sub { !$hub->bridges }, 5), 'close: no bridge socket left');
    is(scalar $hub->sockets(role => 'client'), 3, 'close: the users stay');

    # refuse the next bridge upgrade
    $hub->refuse(status => 503, count => 1);
    my $u = $hub->client(uid => 'a/b', name => 'a3');
    ok($u, 'refuse: users are not refused');
    $r = bridge_sock($hub, '/ws?uid=a');
    is($r->status, 503, 'refuse: 503');
    $r = bridge_sock($hub, '/ws?uid=a');
    is($r->status, 101, 'refuse: only the next one');
    $hub->refuse(status => 400, count => -1);
    is(bridge_sock($hub, '/ws?uid=a')->status, 400, 'refuse all: 400');
    is(bridge_sock($hub, '/ws?uid=a')->status, 400, 'refuse all: 400 again');
    $hub->refuse(status => 0);
    is(bridge_sock($hub, '/ws?uid=a')->status, 101, 'refuse: stopped');

    # a close frame is answered, or not with no_close_reply
    my $c1 = bridge_sock($hub, '/ws?uid=c');
    $c1->send_frame(8, pack('n', 1000));
    ($code) = $c1->read_close(5);
    is($code, 1000, 'close frame: answered');
    $hub->set(no_close_reply => 1);
    my $c2 = bridge_sock($hub, '/ws?uid=c');
    $c2->send_frame(8, pack('n', 1000));
    ok($hub->wait_until(sub { $hub->records(kind => 'close_frame', answered => 0) }, 5),
       'no_close_reply: the close frame is recorded');
    ok(!$c2->read_frame(0.3), 'no_close_reply: and not answered');
    is(scalar $hub->sockets(uid => 'c'), 1, 'no_close_reply: the socket stays open');
    $c2->close;

    # crash and restart
    $hub->crash;
    ok($br->wait_eof(5) || 1, 'crash: the hub is gone');
    ok(!eval { $hub->client(uid => 'a') }, 'crash: nothing listens');
    $hub->start;
    my $n = $hub->client(uid => 'a');
    ok($n, 'restart: listening on the same port');
    my @s = $hub->sockets;
    is(scalar @s, 1, 'restart: no socket of before');
    cmp_ok($s[0]{conn}, '>', 10, 'restart: socket numbers go on');
    $hub->stop;
}

###########################################################################
# echo

{
    my $hub = TestHub->new(mode => 'echo');

    my $r = bridge_sock($hub, '/ws/a');
    is($r->status, 400, 'echo: /ws/U: 400');

    my $br = bridge_sock($hub, '/ws?uid=whatever', Upgrade => 'WebSocket');
    is($br->status, 101, 'echo: query ignored, any case of Upgrade');
    my $f = next_data($br, 5);
    my $j = $f && decode_json($f->{payload});
    is($j && $j->{type}, 'connected', 'echo: greeting');
    like($j && $j->{connectionId}, qr/^conn-/, 'echo: connectionId');
    like($j && $j->{timestamp}, qr/^\d{4}-\d\d-\d\dT/, 'echo: timestamp');

    my $u = $hub->client(name => 'u1');
    my $g = $u->next_json(5);
    is($g && $g->{type}, 'connected', 'echo: the user is greeted too');

    $u->send_text('{"id":"m1","content":"caf' . "\xc3\xa9" . '","b":[1,2]}');
    $f = next_data($br, 5);
    is($f && $f->{payload}, '{"b": [1, 2], "content": "caf' . "\xc3\xa9" . '", "id": "m1"}',
       'echo: re-serialised (sorted keys, spaces), to the bridge');
    $f = $u->next_frame(5);
    is($f && $f->{payload}, '{"b": [1, 2], "content": "caf' . "\xc3\xa9" . '", "id": "m1"}',
       'echo: and back to the sender');

    $br->send_frame(1, 'not json');
    $br->send_frame(2, '{"z":1,"a":2}');
    $f = $u->next_frame(5);
    is($f && $f->{payload}, '{"a": 2, "z": 1}', 'echo: non-JSON dropped, binary JSON sent on');
    is($f && $f->{op}, 1, 'echo: as text');
    $f = next_data($br, 5);
    is($f && $f->{payload}, '{"a": 2, "z": 1}', 'echo: to the sender too');
    ok($hub->records(kind => 'dropped'), 'echo: the dropped frame is recorded');
    $hub->stop;
}

###########################################################################
# TLS: the hub on wss://, its users and controls on a plain port

{
    my $pki = OCB::top() . "/build/t/79-testhub-$$-pki";
    File::Path::make_path($pki);
    my $out = `cd '$pki' && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout hub.key -out hub.pem -days 2 -subj '/CN=hub.test' -addext 'subjectAltName=IP:127.0.0.1' 2>&1`;
    is($?, 0, 'tls: a certificate') or diag $out;
    my $hub = TestHub->new(mode => 'rooms', tls_cert => "$pki/hub.pem", tls_key => "$pki/hub.key");
    like($hub->url, qr{^wss://127\.0\.0\.1:\d+/ws$}, 'tls: wss:// URL');
    require IO::Socket::SSL;
    my $s = IO::Socket::SSL->new(PeerAddr => '127.0.0.1', PeerPort => $hub->port,
                                 SSL_verify_mode => 0);
    ok($s, 'tls: a TLS connection');
    print $s OCB::Raw->request(path => '/ws?uid=t', headers => { Host => 'h' });
    my $line = <$s>;
    like($line // '', qr{^HTTP/1\.1 101}, 'tls: upgraded over TLS');
    ok($hub->wait_until(sub { $hub->bridges('t') == 1 }, 5), 'tls: listed');
    my ($up) = $hub->upgrades(uid => 't');
    is($up->{tls}, 1, 'tls: recorded as TLS');
    my $u = $hub->client(uid => 't');
    ok($u, 'tls: a user on the plain port');
    close $s;
    $hub->stop;
    system('rm', '-rf', $pki);
}

done_testing;
