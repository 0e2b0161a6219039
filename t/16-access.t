#!/usr/bin/perl

# nginx's own access phase (allow/deny, auth_basic, auth_request,
# limit_conn, limit_req) runs before the upgrade; the Origin allow-list;
# WebSocket over TLS.

use strict;
use warnings;

use lib 't/lib';
use OCB;
use Test::More;
use Test::Mojo;
use IO::Socket::SSL;
use MIME::Base64 qw(encode_base64);
use Time::HiRes qw(sleep time);

my $tls_port = OCB::free_port();

my $http = <<'EOF';
limit_conn_zone $binary_remote_addr zone=lc:1m;
limit_req_zone $binary_remote_addr zone=lr:1m rate=1r/m;

server {
    listen 127.0.0.1:%%PORT%%;

    location /deny {
        deny all;
        openclaw_bridge_echo;
    }

    location /allow {
        allow 127.0.0.1;
        deny all;
        openclaw_bridge_echo;
    }

    location /basic {
        auth_basic "openclaw";
        auth_basic_user_file htpasswd;
        openclaw_bridge_echo;
    }

    location = /auth-no {
        internal;
        return 403;
    }

    location = /auth-yes {
        internal;
        return 204;
    }

    location /ar-no {
        auth_request /auth-no;
        openclaw_bridge_echo;
    }

    location /ar-yes {
        auth_request /auth-yes;
        openclaw_bridge_echo;
    }

    location /lc {
        limit_conn lc 1;
        openclaw_bridge_echo;
    }

    location /lr {
        limit_req zone=lr;
        openclaw_bridge_echo;
    }

    location /origin {
        openclaw_bridge_allow_origin https://good.example http://localhost:3000;
        openclaw_bridge_echo;
    }
}

server {
    listen 127.0.0.1:%%TLSPORT%% ssl;
    ssl_certificate cert.pem;
    ssl_certificate_key key.pem;

    location / {
        openclaw_bridge_echo;
    }
}
EOF
$http =~ s/%%TLSPORT%%/$tls_port/g;

my $o = OCB->new(no_start => 1, http => $http);
my $conf = $o->prefix . '/conf';

# a self-signed certificate, relative paths resolve against conf/
system("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1"
       . " -nodes -days 2 -subj /CN=localhost -keyout $conf/key.pem"
       . " -out $conf/cert.pem 2>/dev/null") == 0
    or BAIL_OUT('openssl could not make a certificate');

# an apr1 entry made by the openssl CLI and a {PLAIN} one
my $apr1 = `openssl passwd -apr1 s3cret`;
chomp $apr1;
like($apr1, qr/^\$apr1\$/, 'openssl made an apr1 hash');
open my $pw, '>', "$conf/htpasswd" or die $!;
print $pw "alice:$apr1\nbob:{PLAIN}hunter2\n";
close $pw;
chmod 0644, "$conf/htpasswd";      # workers run as nobody

$o->start;

# helpers --------------------------------------------------------------------

my $n = 0;

sub upgrade {
    my (%o) = @_;
    $o{path} .= ($o{path} =~ /\?/ ? '&' : '?') . 'n=' . ++$n;
    return $o->ws(timeout => 5, %o);
}

sub echo_ok {
    my ($ws, $name) = @_;
    my $msg = "$name " . int rand 1e9;
    $ws->send_frame(1, $msg);
    my $f = $ws->read_frame(5);
    ok($f && $f->{op} == 1 && $f->{payload} eq $msg, "$name: message echoed")
        or diag explain $f;
}

sub close_ok {
    my ($ws, $name) = @_;
    $ws->send_frame(8, pack('n', 1000));
    my ($code) = $ws->read_close(5);
    is($code, 1000, "$name: close 1000 answered with 1000");
    ok($ws->wait_eof(5), "$name: connection closed");
}

sub upgraded {
    my ($name, %o) = @_;
    my $ws = upgrade(%o);
    is($ws->status, 101, "$name: 101") or diag $ws->status_line;
    is($ws->header('Sec-WebSocket-Accept'), OCB::Raw::expected_accept(),
       "$name: Sec-WebSocket-Accept");
    echo_ok($ws, $name) if $ws->status && $ws->status == 101;
    return $ws;
}

sub refused {
    my ($name, $status, %o) = @_;
    my $ws = upgrade(%o);
    is($ws->status, $status, "$name: $status") or diag $ws->status_line;
    ok(!defined $ws->header('Sec-WebSocket-Accept'),
       "$name: no Sec-WebSocket-Accept");
    ok(lc($ws->header('Connection') // '') ne 'upgrade',
       "$name: no Connection: upgrade");
    my $deadline = time + 0.3;
    1 while $ws->fill($deadline - time);
    is(length $ws->{buf}, 0, "$name: nothing sent after the response")
        or diag explain $ws->{buf};
    return $ws;
}

# waits for the access log line of a request whose target contains $re
sub logged {
    my ($re, $timeout) = @_;
    my $deadline = time + ($timeout // 5);
    while (time < $deadline) {
        my ($l) = $o->read_log('access.log') =~ /^(.*$re.*)$/m;
        return $l if $l;
        sleep 0.02;
    }
    return undef;
}

# allow / deny -------------------------------------------------------------------

refused('deny all', 403, path => '/deny')->close;
upgraded('allow 127.0.0.1; deny all', path => '/allow')->close;

# auth_basic ---------------------------------------------------------------------

{
    my $ws = refused('auth_basic without credentials', 401, path => '/basic');
    like($ws->header('WWW-Authenticate') // '', qr/^Basic realm="openclaw"/,
         'auth_basic: WWW-Authenticate challenge');
    $ws->close;

    my $bad = 'Basic ' . encode_base64('alice:wrong', '');
    refused('auth_basic with a wrong password', 401, path => '/basic',
            headers => { Authorization => $bad })->close;

    my $alice = 'Basic ' . encode_base64('alice:s3cret', '');
    $ws = upgraded('auth_basic apr1 user', path => '/basic',
                   headers => { Authorization => $alice });
    close_ok($ws, 'auth_basic apr1 user');

    my $bob = 'Basic ' . encode_base64('bob:hunter2', '');
    upgraded('auth_basic {PLAIN} user', path => '/basic',
             headers => { Authorization => $bob })->close;

    # the access phase must not eat bytes that came with the request
    $ws = upgrade(path => '/basic', headers => { Authorization => $alice },
                  extra => OCB::Raw::frame(1, 'glued') . OCB::Raw::frame(1, 'two'));
    is($ws->status, 101, 'auth_basic + preread: 101');
    my @f = map { $ws->read_frame(5) } 1 .. 2;
    is_deeply([ map { $_ && $_->{payload} } @f ], ['glued', 'two'],
              'auth_basic + preread: glued frames echoed');
    $ws->close;
}

# auth_request -------------------------------------------------------------------

refused('auth_request answered 403', 403, path => '/ar-no')->close;
{
    my $ws = upgraded('auth_request answered 204', path => '/ar-yes');
    close_ok($ws, 'auth_request answered 204');

    $ws = upgrade(path => '/ar-yes',
                  extra => OCB::Raw::frame(1, 'after subrequest'));
    is($ws->status, 101, 'auth_request + preread: 101');
    my $f = $ws->read_frame(5);
    is($f && $f->{payload}, 'after subrequest',
       'auth_request + preread: glued frame echoed');
    close_ok($ws, 'auth_request + preread');
}

# limit_conn: the count is released when a WebSocket connection ends -------------

{
    my $ws1 = upgraded('limit_conn first', path => '/lc');
    refused('limit_conn second while the first is open', 503,
            path => '/lc')->close;

    # a clean close handshake ends the first
    close_ok($ws1, 'limit_conn first');

    my $ws3 = upgraded('limit_conn after a close handshake', path => '/lc');
    my $n3 = $n;
    refused('limit_conn second while the third is open', 503,
            path => '/lc')->close;

    # the client vanishes without a close frame
    $ws3->close;
    ok(logged(qr{"GET /lc\?n=$n3 HTTP/1\.1" 101 }),
       'limit_conn: the dropped connection is finalized and logged');

    my $ws5 = upgraded('limit_conn after the client dropped', path => '/lc');

    # the server fails the connection (unmasked frame: 1002)
    $ws5->send_frame(1, 'unmasked', mask => 0);
    my ($code) = $ws5->read_close(5);
    is($code, 1002, 'limit_conn: unmasked frame closed with 1002');
    ok($ws5->wait_eof(5), 'limit_conn: server closed the connection');

    my $ws6 = upgraded('limit_conn after the server failed the connection',
                       path => '/lc');
    close_ok($ws6, 'limit_conn last');
}

# limit_req ----------------------------------------------------------------------

{
    my $ws1 = upgraded('limit_req first', path => '/lr');
    refused('limit_req second immediate handshake', 503, path => '/lr')->close;
    close_ok($ws1, 'limit_req first');
}

# Origin allow-list ----------------------------------------------------------------

refused('Origin: https://evil.example', 403, path => '/origin',
        headers => { Origin => 'https://evil.example' })->close;
refused('Origin: http://good.example (other scheme)', 403, path => '/origin',
        headers => { Origin => 'http://good.example' })->close;
refused('Origin: https://good.example.evil.example', 403, path => '/origin',
        headers => { Origin => 'https://good.example.evil.example' })->close;
refused('Origin: https://good.exampl', 403, path => '/origin',
        headers => { Origin => 'https://good.exampl' })->close;
refused('Origin: http://localhost:30000', 403, path => '/origin',
        headers => { Origin => 'http://localhost:30000' })->close;
refused('Origin: http://localhost', 403, path => '/origin',
        headers => { Origin => 'http://localhost' })->close;
refused('Origin: null', 403, path => '/origin',
        headers => { Origin => 'null' })->close;
refused('empty Origin', 403, path => '/origin',
        headers => { Origin => '' })->close;

upgraded('Origin: https://good.example', path => '/origin',
         headers => { Origin => 'https://good.example' })->close;
upgraded('Origin: https://GOOD.Example', path => '/origin',
         headers => { Origin => 'https://GOOD.Example' })->close;
upgraded('Origin: HTTPS://GOOD.EXAMPLE', path => '/origin',
         headers => { Origin => 'HTTPS://GOOD.EXAMPLE' })->close;
upgraded('Origin: http://localhost:3000', path => '/origin',
         headers => { Origin => 'http://localhost:3000' })->close;
upgraded('Origin: http://LocalHost:3000', path => '/origin',
         headers => { Origin => 'http://LocalHost:3000' })->close;
upgraded('no Origin header', path => '/origin')->close;
upgraded('Origin on a location without a list', path => '/allow',
         headers => { Origin => 'https://evil.example' })->close;

refused('two Origin headers, good then evil', 403, path => '/origin',
        headers => { Origin => ['https://good.example', 'https://evil.example'] })->close;
refused('two Origin headers, evil then good', 403, path => '/origin',
        headers => { Origin => ['https://evil.example', 'https://good.example'] })->close;

# TLS ------------------------------------------------------------------------------

{
    my $t = Test::Mojo->new;
    $t->ua->insecure(1);
    $t->ua->inactivity_timeout(10);
    my $big = join '', map { chr($_ % 251) } 1 .. 200_000;
    $t->websocket_ok("wss://127.0.0.1:$tls_port/tls?n=" . ++$n)
      ->status_is(101)
      ->header_is('Sec-WebSocket-Accept' =>
          OCB::Raw::expected_accept($t->tx->req->headers->sec_websocket_key))
      ->send_ok('hello over TLS')
      ->message_ok->message_is('hello over TLS')
      ->send_ok({binary => $big})
      ->message_ok('TLS: a 200 kB message, several TLS records')
      ->message_is({binary => $big})
      ->finish_ok(1000)
      ->finished_ok(1000);
}

{
    # raw TLS: handshake and a frame in one write, close 1000
    my $s = IO::Socket::SSL->new(PeerAddr => '127.0.0.1', PeerPort => $tls_port,
                                 SSL_verify_mode => SSL_VERIFY_NONE,
                                 Timeout => 5);
    ok($s, 'TLS: raw connection') or diag $IO::Socket::SSL::SSL_ERROR;
    SKIP: {
        skip 'no TLS connection', 6 unless $s;
        my $ws = bless { sock => $s, buf => '' }, 'TLSRaw';
        $ws->send_raw(OCB::Raw->request(path => '/raw-tls')
                      . OCB::Raw::frame(1, 'glued over TLS'));
        $ws->read_response(5);
        is($ws->status_line, 'HTTP/1.1 101 Switching Protocols',
           'TLS raw: status line');
        is($ws->header('Sec-WebSocket-Accept'), OCB::Raw::expected_accept(),
           'TLS raw: Sec-WebSocket-Accept');
        is($ws->header_count('Content-Length'), 0, 'TLS raw: no Content-Length');
        my $f = $ws->read_frame(5);
        is($f && $f->{payload}, 'glued over TLS',
           'TLS raw: frame glued to the handshake echoed');
        $ws->send_frame(8, pack('n', 1000) . 'bye');
        my ($code) = $ws->read_close(5);
        is($code, 1000, 'TLS raw: close 1000 answered with 1000');
        ok($ws->wait_eof(5), 'TLS raw: connection closed');
    }
}

$o->stop;

done_testing;

# OCB::Raw over an IO::Socket::SSL socket: decrypted bytes may wait inside
# OpenSSL where select() does not see them
package TLSRaw;

use parent -norequire, 'OCB::Raw';

sub fill {
    my ($self, $timeout) = @_;
    return 0 if $self->{eof};
    if (!$self->{sock}->pending) {
        $timeout = 0 if $timeout < 0;
        my $sel = IO::Select->new($self->{sock});
        return 0 unless $sel->can_read($timeout);
    }
    my $n = sysread($self->{sock}, my $chunk, 1 << 20);
    if (!defined $n && $!{EAGAIN}) { return 1 }
    if (!$n) { $self->{eof} = 1; return 0 }
    $self->{buf} .= $chunk;
    return 1;
}
