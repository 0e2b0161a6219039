#!/usr/bin/perl

# The server side of the RFC 6455 opening handshake on an
# "openclaw_bridge_echo" location: the 101 response, the header variants
# that must be accepted, the refusals (426, 400, 405) with nothing sent
# after them, bytes glued to the handshake, and the access log status.

use strict;
use warnings;

use lib 't/lib';
use OCB;
use Test::More;
use MIME::Base64 qw(encode_base64);
use IO::Socket::INET;
use Time::HiRes qw(sleep time);

my $o = OCB->new(http => <<'EOF');
server {
    listen 127.0.0.1:%%PORT%%;

    location / {
        openclaw_bridge_echo;
    }

    location /plain {
        return 200 "plain\n";
    }
}
EOF

my $RFC_KEY = 'dGhlIHNhbXBsZSBub25jZQ==';
my $RFC_ACCEPT = 's3pPLMBiTxaQ9kYGzzhZRbK+xOo=';      # RFC 6455 section 1.3

# helpers ---------------------------------------------------------------

sub b64 { my $s = encode_base64($_[0], ''); return $s }

sub random_key { return b64(join '', map { chr int rand 256 } 1 .. 16) }

sub upgrade { return $o->ws(timeout => 5, @_) }

# everything the server sends within $timeout after the response (and its
# body) was read, and whether it closed the connection
sub trailing {
    my ($ws, $timeout) = @_;
    my $deadline = time + ($timeout // 0.5);
    1 while $ws->fill($deadline - time);
    return ($ws->{buf}, $ws->{eof} ? 1 : 0);
}

# one text message round trip, then a clean close
sub round_trip_ok {
    my ($ws, $name) = @_;
    my $msg = "hello $name " . int rand 1e9;
    $ws->send_frame(1, $msg);
    my $f = $ws->read_frame(5);
    ok($f && $f->{op} == 1 && $f->{fin} && $f->{payload} eq $msg,
       "$name: text message echoed")
        or diag explain $f;
    $ws->send_frame(8, pack('n', 1000));
    my ($code) = $ws->read_close(5);
    is($code, 1000, "$name: close 1000 answered with 1000");
    ok($ws->wait_eof(5), "$name: server closes the TCP connection");
}

sub is_101 {
    my ($ws, $name, $key) = @_;
    is($ws->status_line, 'HTTP/1.1 101 Switching Protocols',
       "$name: status line");
    is($ws->header('Sec-WebSocket-Accept'),
       OCB::Raw::expected_accept($key // $RFC_KEY),
       "$name: Sec-WebSocket-Accept");
}

# a refusal: status, no frames and no upgrade afterwards, no [alert]; its
# access log line is checked at the end
my (@logged, $nref);

sub refused {
    my ($name, $status, %req) = @_;
    $req{path} //= '/refused-' . ++$nref;
    push @logged, [$name, $req{path}, $status];
    my $before = length $o->error_log;
    my $ws = upgrade(%req, timeout => $req{timeout} // 5);
    is($ws->status, $status, "$name: $status")
        or diag $ws->status_line;
    ok(!defined $ws->header('Sec-WebSocket-Accept'),
       "$name: no Sec-WebSocket-Accept");
    my ($rest) = trailing($ws, 0.3);
    is(length $rest, 0, "$name: nothing sent after the response")
        or diag explain $rest;
    # whatever the server does with the connection next, it is no WebSocket:
    # a masked frame now must not be echoed as a frame
    $ws->send_frame(1, 'after refusal');
    my ($more) = trailing($ws, 0.3);
    ok($more !~ /^\x81/, "$name: a frame after the refusal is not echoed")
        or diag explain $more;
    $ws->close;
    my @alerts = grep { /\[(alert|emerg|crit)\]/ }
                 split /\n/, substr($o->error_log, $before);
    ok(!@alerts, "$name: no [alert] in error.log") or diag join "\n", @alerts;
    return $ws;
}

# good handshake ---------------------------------------------------------

{
    my $ws = upgrade();
    is_101($ws, 'RFC key');
    is($ws->header('Sec-WebSocket-Accept'), $RFC_ACCEPT,
       'RFC key: accept value from RFC 6455 1.3');
    is(lc($ws->header('Upgrade') // ''), 'websocket', 'Upgrade: websocket');
    is($ws->header_count('Upgrade'), 1, 'one Upgrade header');
    is(lc($ws->header('Connection') // ''), 'upgrade', 'Connection: upgrade');
    is($ws->header_count('Connection'), 1, 'one Connection header');
    is($ws->header_count('Content-Length'), 0, 'no Content-Length on the 101');
    is($ws->header_count('Transfer-Encoding'), 0,
       'no Transfer-Encoding on the 101');
    is($ws->header_count('Content-Type'), 0, 'no Content-Type on the 101');
    is($ws->header_count('Sec-WebSocket-Protocol'), 0,
       'no subprotocol chosen when none was offered');
    is($ws->header_count('Sec-WebSocket-Extensions'), 0,
       'no extension negotiated');
    round_trip_ok($ws, 'RFC key');
}

for my $i (1 .. 3) {
    my $key = random_key();
    my $ws = upgrade(headers => { 'Sec-WebSocket-Key' => $key });
    is_101($ws, "random key $key", $key);
    round_trip_ok($ws, "random key $i");
}

# header variants that must be accepted ------------------------------------

my @accepted = (
    [ 'Connection: Upgrade'             => { Connection => 'Upgrade' } ],
    [ 'Connection: keep-alive, Upgrade' => { Connection => 'keep-alive, Upgrade' } ],
    [ 'Connection: keep-alive,Upgrade'  => { Connection => 'keep-alive,Upgrade' } ],
    [ 'Connection: Upgrade, keep-alive' => { Connection => 'Upgrade, keep-alive' } ],
    [ 'Connection: upgrade'             => { Connection => 'upgrade' } ],
    [ 'Connection: UPGRADE'             => { Connection => 'UPGRADE' } ],
    [ 'Connection: uPgRaDe'             => { Connection => 'uPgRaDe' } ],
    [ 'Upgrade: WebSocket'              => { Upgrade => 'WebSocket' } ],
    [ 'Upgrade: WEBSOCKET'              => { Upgrade => 'WEBSOCKET' } ],
    [ 'header names in lower case'      => {
        Upgrade => undef, Connection => undef, 'Sec-WebSocket-Key' => undef,
        'Sec-WebSocket-Version' => undef,
        upgrade => 'websocket', connection => 'upgrade',
        'sec-websocket-key' => $RFC_KEY, 'sec-websocket-version' => '13' } ],
);

for my $case (@accepted) {
    my ($name, $h) = @$case;
    my $ws = upgrade(headers => $h);
    is($ws->status, 101, "$name: 101") or diag $ws->status_line;
    is($ws->header('Sec-WebSocket-Accept'), $RFC_ACCEPT,
       "$name: Sec-WebSocket-Accept");
    $ws->send_frame(2, "\x00\x01$name");
    my $f = $ws->read_frame(5);
    ok($f && $f->{op} == 2 && $f->{payload} eq "\x00\x01$name",
       "$name: binary message echoed");
    $ws->close;
}

# refusals -----------------------------------------------------------------

my %no_ws = (Upgrade => undef, Connection => undef,
             'Sec-WebSocket-Key' => undef, 'Sec-WebSocket-Version' => undef);

{
    my $ws = refused('plain GET', 426, headers => \%no_ws);
    is($ws->header('Sec-WebSocket-Version'), '13',
       'plain GET: Sec-WebSocket-Version: 13');
    ok(defined $ws->body && length $ws->body > 0 && length $ws->body < 512,
       'plain GET: a short body')
        or diag explain $ws->body;
    like($ws->header('Content-Type') // '', qr{^text/plain}i,
         'plain GET: text/plain body');
    like($ws->status_line, qr{^HTTP/1\.1 426 Upgrade Required$},
         'plain GET: 426 status line has its reason phrase');
    is(lc($ws->header('Upgrade') // ''), 'websocket',
       'plain GET: 426 names the protocol in Upgrade (RFC 9110 15.5.22)');
    like(join(',', @{ $ws->{headers}{connection} // [] }),
         qr/(^|,)\s*upgrade\s*(,|$)/i,
         'plain GET: 426 lists upgrade in Connection (RFC 9110 7.8)');
}

for my $case (
    [ 'Sec-WebSocket-Version: 8'     => { 'Sec-WebSocket-Version' => '8' } ],
    [ 'Sec-WebSocket-Version: 12'    => { 'Sec-WebSocket-Version' => '12' } ],
    [ 'Sec-WebSocket-Version: 130'   => { 'Sec-WebSocket-Version' => '130' } ],
    [ 'no Sec-WebSocket-Version'     => { 'Sec-WebSocket-Version' => undef } ],
    [ 'two Sec-WebSocket-Version'    => { 'Sec-WebSocket-Version' => ['13', '13'] } ],
    [ 'Sec-WebSocket-Version 13 and 8' => { 'Sec-WebSocket-Version' => ['13', '8'] } ],
    [ 'Upgrade: h2c'                 => { Upgrade => 'h2c' } ],
    [ 'Connection: keep-alive only'  => { Connection => 'keep-alive' } ],
    [ 'Connection: upgraded'         => { Connection => 'upgraded' } ],
    [ 'no Upgrade header'            => { Upgrade => undef } ],
    [ 'no Connection header'         => { Connection => undef } ],
)
{
    my ($name, $h) = @$case;
    my $ws = refused($name, 426, headers => $h);
    is($ws->header('Sec-WebSocket-Version'), '13',
       "$name: Sec-WebSocket-Version: 13");
}

for my $case (
    [ 'no Sec-WebSocket-Key'         => { 'Sec-WebSocket-Key' => undef } ],
    [ 'empty Sec-WebSocket-Key'      => { 'Sec-WebSocket-Key' => '' } ],
    [ 'key of 22 characters'         => { 'Sec-WebSocket-Key' => 'dGhlIHNhbXBsZSBub25jZQ' } ],
    [ 'key of 28 characters'         => { 'Sec-WebSocket-Key' => b64('x' x 20) } ],
    [ 'key decoding to 15 bytes'     => { 'Sec-WebSocket-Key' => b64('y' x 15) } ],
    [ 'key decoding to 17 bytes'     => { 'Sec-WebSocket-Key' => b64('z' x 17) } ],
    [ 'key with a non-base64 digit'  => { 'Sec-WebSocket-Key' => 'dGhlIHNhbXBsZSBub25j*Q==' } ],
    [ 'two Sec-WebSocket-Key'        => { 'Sec-WebSocket-Key' => [$RFC_KEY, random_key()] } ],
    [ 'two identical Sec-WebSocket-Key' => { 'Sec-WebSocket-Key' => [$RFC_KEY, $RFC_KEY] } ],
)
{
    my ($name, $h) = @$case;
    refused($name, 400, headers => $h);
}

for my $method (qw(POST PUT DELETE)) {
    my $ws = refused("$method with upgrade headers", 405, method => $method);
    is($ws->header('Allow'), 'GET', "$method: Allow: GET");
}

{
    # no body comes with a response to HEAD: do not wait for one
    my $ws = refused('HEAD with upgrade headers', 405, method => 'HEAD',
                     timeout => 1);
    is($ws->header('Allow'), 'GET', 'HEAD: Allow: GET');
}

{
    my $ws = refused('HTTP/1.0 with upgrade headers', 426,
                     version => 'HTTP/1.0');
    is($ws->header('Sec-WebSocket-Version'), '13',
       'HTTP/1.0: Sec-WebSocket-Version: 13');
}

# the body bytes would be parsed as a frame if the request were upgraded
refused('request with Content-Length: 5 and a body', 400,
        headers => { 'Content-Length' => 5 }, extra => "\x81\x80abc");
refused('request with a chunked body', 400,
        headers => { 'Transfer-Encoding' => 'chunked' },
        extra => "5\r\n\x81\x80abc\r\n0\r\n\r\n");

{
    # Content-Length: 0 is no body at all
    my $ws = upgrade(headers => { 'Content-Length' => 0 });
    is($ws->status, 101, 'Content-Length: 0 is accepted');
    $ws->close;
}

# preread: handshake and frames in one write ----------------------------------

{
    my @msgs = map { "glued message $_ " . ('x' x ($_ * 50)) } 1 .. 3;
    my $frames = join '', map { OCB::Raw::frame(1, $_) } @msgs;
    my $ws = upgrade(extra => $frames);
    is($ws->status, 101, 'preread: 101');
    for my $i (0 .. 2) {
        my $f = $ws->read_frame(5);
        ok($f && $f->{op} == 1 && $f->{payload} eq $msgs[$i],
           "preread: message " . ($i + 1) . " echoed in order")
            or diag explain $f;
    }

    # frames and a close glued to the handshake: all echoed, then the close
    my $glued = OCB::Raw::frame(1, 'a') . OCB::Raw::frame(2, 'b')
              . OCB::Raw::frame(9, 'p') . OCB::Raw::frame(8, pack('n', 1000));
    my $ws2 = upgrade(extra => $glued);
    is($ws2->status, 101, 'preread with close: 101');
    my ($code, $reason, $before) = $ws2->read_close(5);
    is_deeply([ map { [$_->{op}, $_->{payload}] } @$before ],
              [ [1, 'a'], [2, 'b'], [10, 'p'] ],
              'preread with close: echoes and pong before the close');
    is($code, 1000, 'preread with close: close 1000 answered');
    ok($ws2->wait_eof(5), 'preread with close: connection closed');

    # handshake and a frame written byte by byte
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $o->port, Proto => 'tcp')
        or die "connect: $!";
    binmode $s;
    my $ws3 = bless { sock => $s, buf => '' }, 'OCB::Raw';
    $ws3->send_raw(OCB::Raw->request . OCB::Raw::frame(1, 'slow'), 1);
    $ws3->read_response(5);
    is($ws3->status, 101, 'byte by byte: 101');
    my $f = $ws3->read_frame(5);
    ok($f && $f->{payload} eq 'slow', 'byte by byte: message echoed');
    $ws->close;
    $ws3->close;
}

# keep-alive connections and big headers -----------------------------------

# an OCB::Raw over a fresh connection with nothing sent yet
sub raw_conn {
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $o->port, Proto => 'tcp')
        or die "connect: $!";
    binmode $s;
    return bless { sock => $s, buf => '' }, 'OCB::Raw';
}

sub next_response {
    my ($ws) = @_;
    delete @$ws{qw(headers status status_line body)};
    return $ws->read_response(5);
}

my $PLAIN = "GET /plain HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

{
    # a plain request, then the upgrade on the same connection
    my $ws = raw_conn();
    $ws->send_raw($PLAIN);
    is(next_response($ws), 200, 'keep-alive: plain request first');
    $ws->send_raw(OCB::Raw->request . OCB::Raw::frame(1, 'second request'));
    is(next_response($ws), 101, 'keep-alive: then an upgrade on the same '
                              . 'connection');
    my $f = $ws->read_frame(5);
    is($f && $f->{payload}, 'second request',
       'keep-alive: frame glued to the second request echoed');
    $ws->close;

    # pipelined: plain request, upgrade and a frame in one write
    $ws = raw_conn();
    $ws->send_raw($PLAIN . OCB::Raw->request . OCB::Raw::frame(1, 'pipelined'));
    is(next_response($ws), 200, 'pipelined: plain response');
    is($ws->body, "plain\n", 'pipelined: plain body');
    is(next_response($ws), 101, 'pipelined: then 101');
    $f = $ws->read_frame(5);
    is($f && $f->{payload}, 'pipelined', 'pipelined: frame echoed');
    $ws->close;

    # headers larger than client_header_buffer_size (1k) go to a large
    # buffer: the bytes after them must still be found
    my $cookie = join '; ', map { "c$_=" . ('v' x 40) } 1 .. 60;
    $ws = $o->ws(headers => { Cookie => $cookie },
                 extra => OCB::Raw::frame(1, 'after big headers')
                        . OCB::Raw::frame(2, 'x' x 3000));
    is($ws->status, 101, 'big headers: 101');
    $f = $ws->read_frame(5);
    is($f && $f->{payload}, 'after big headers', 'big headers: first frame');
    $f = $ws->read_frame(5);
    is($f && $f->{payload}, 'x' x 3000, 'big headers: second frame');
    $ws->close;

    # the 426 says "Connection: keep-alive": the connection must stay
    # usable, e.g. for the retry that RFC 6455 4.4 describes
    $ws = raw_conn();
    $ws->send_raw(OCB::Raw->request(headers => { 'Sec-WebSocket-Version' => 25 }));
    is(next_response($ws), 426, 'retry: 426 for version 25');
    my $conn = $ws->header('Connection') // '';
    $ws->send_raw(OCB::Raw->request);
    my $st = next_response($ws);
    if ($conn =~ /keep-alive/i) {
        is($st, 101, 'retry: version 13 on the same kept-alive connection '
                   . 'upgrades');
    } else {
        ok(!defined $st, "retry: connection closed as announced ($conn)");
    }
    $ws->close;

    # likewise after a 400 nginx closes: say so, and do it
    $ws = raw_conn();
    $ws->send_raw(OCB::Raw->request(headers => { 'Sec-WebSocket-Key' => 'short' }));
    is(next_response($ws), 400, '400 for a short key');
    is(lc($ws->header('Connection') // ''), 'close', '400: Connection: close');
    ok($ws->wait_eof(2), '400: connection closed');
    $ws->close;
}

# the access log ------------------------------------------------------------

{
    my $tag = "logcheck$$";
    my $ws = upgrade(path => "/$tag");
    is($ws->status, 101, 'access log: 101');
    $ws->send_frame(8, pack('n', 1000));
    $ws->read_close(5);
    $ws->wait_eof(5);

    my ($line, $log);
    my $deadline = time + 5;
    while (time < $deadline) {
        $log = $o->read_log('access.log');
        last if $log =~ m{"GET /$tag HTTP/1\.1"}
             && !grep { $log !~ m{"\S+ \Q$_->[1]\E HTTP/1\.[01]"} } @logged;
        sleep 0.05;
    }
    ($line) = $log =~ m{^(.*"GET /$tag HTTP/1\.1".*)$}m;
    like($line // '', qr{"GET /$tag HTTP/1\.1" 101 },
         'access log: WebSocket connection logged with status 101')
        or diag $line;

    for (@logged) {
        my ($name, $path, $status) = @$_;
        my ($l) = $log =~ m{^(.*"\S+ \Q$path\E HTTP/1\.[01]".*)$}m;
        like($l // '', qr{" $status \d+ }, "access log: $name logged as $status")
            or diag $l;
    }
}

$o->stop;

done_testing;
