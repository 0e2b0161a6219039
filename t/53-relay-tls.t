#!/usr/bin/perl

# The gateway link over TLS (wss://), against the fake gateway listening
# with TLS (t/lib/FakeGateway.pm, tls_cert and tls_key).  A CA, a server
# certificate it signed for "gateway.test" and 127.0.0.1, and a
# self-signed certificate are made with the openssl CLI at test time.
# Checked: a CA-signed certificate with the URL's IP in its
# subjectAltName; openclaw_gateway_ssl_name with the SNI the gateway sees;
# openclaw_gateway_ssl_server_name off; a certificate the CA did not sign
# and a name the certificate does not have are refused, logged, never
# sent the upgrade (nor the token), and a message gets an error within
# openclaw_gateway_request_timeout; openclaw_gateway_ssl_verify off
# accepts the untrusted certificate.  The token is in no log.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use File::Basename qw(basename);
use File::Path qw(make_path remove_tree);
use Test::More;
use Mojo::JSON qw(encode_json);
use Time::HiRes qw(sleep time);

use OCB;
use FakeGateway;
use RelayClient;

my $TOKEN = 'tok-53-tls-8d1f0a6e-SECRET';

###########################################################################
# the certificates

my $PKI = OCB::top() . '/build/t/' . basename($0, '.t') . "-$$-pki";
remove_tree($PKI);
make_path($PKI);

sub openssl {
    my (@args) = @_;
    my $out = `cd '$PKI' && openssl @args 2>&1`;
    die "openssl @args failed:\n$out" if $?;
    return $out;
}

{
    my $ec = '-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes';

    openssl("req -x509 $ec -keyout ca.key -out ca.pem -days 2"
            . " -subj '/CN=OpenClaw bridge test CA'"
            . " -addext 'basicConstraints=critical,CA:TRUE'"
            . " -addext 'keyUsage=critical,keyCertSign,cRLSign'");

    openssl("req $ec -keyout server.key -out server.csr"
            . " -subj '/CN=gateway.test'");
    open my $f, '>', "$PKI/server.ext" or die $!;
    print $f "subjectAltName = DNS:gateway.test, IP:127.0.0.1\n"
           . "basicConstraints = CA:FALSE\n"
           . "keyUsage = critical, digitalSignature\n"
           . "extendedKeyUsage = serverAuth\n";
    close $f;
    openssl('x509 -req -in server.csr -CA ca.pem -CAkey ca.key'
            . ' -CAcreateserial -out server.pem -days 2 -extfile server.ext');

    # the same names, but signed by no one the bridge trusts
    openssl("req -x509 $ec -keyout self.key -out self.pem -days 2"
            . " -subj '/CN=gateway.test'"
            . " -addext 'subjectAltName=DNS:gateway.test,IP:127.0.0.1'");
}

my $chain = openssl('verify -CAfile ca.pem server.pem');
like($chain, qr/server\.pem: OK/, 'the server certificate verifies against the CA');
my $untrusted = `cd '$PKI' && openssl verify -CAfile ca.pem self.pem 2>&1`;
unlike($untrusted, qr/self\.pem: OK/, 'the self-signed one does not');

###########################################################################
# fake gateways: one with the CA's certificate, one with the self-signed

my $gw_ca = FakeGateway->new(token => $TOKEN, deltas => 3, delta_ms => 5,
                             tls_cert => "$PKI/server.pem",
                             tls_key => "$PKI/server.key");
my $gw_self = FakeGateway->new(token => $TOKEN, deltas => 3, delta_ms => 5,
                               tls_cert => "$PKI/self.pem",
                               tls_key => "$PKI/self.key");

like($gw_ca->url, qr{^wss://127\.0\.0\.1:\d+$}, 'the fake gateway has a wss:// URL');

# an nginx relaying to $gw over wss://, with a debug log next to error.log
#   http => 'more gateway directives'
sub setup {
    my ($gw, %o) = @_;
    return OCB->new(
        main => 'error_log logs/debug.log debug;',
        http => <<"EOF");
openclaw_gateway @{[ $gw->url ]};
openclaw_gateway_token $TOKEN;
openclaw_gateway_request_timeout 2s;
@{[ $o{http} // '' ]}

server {
    listen 127.0.0.1:%%PORT%%;

    location / {
        openclaw_bridge;
    }
}
EOF
}

sub wait_up {
    my ($ngx, $timeout) = @_;
    return $ngx->wait_log(qr/gateway link up/, $timeout // 5);
}

# the upgrade records the fake got since $since (a time)
sub upgrades_since {
    my ($gw, $since) = @_;
    return grep { $_->{t} >= $since } $gw->upgrades;
}

# sends one message and reads until its complete or error; returns the
# final reply (or undef) and the seconds it took
sub one_message {
    my ($ngx, $id, $content, $timeout) = @_;
    my $c = RelayClient->new($ngx);
    my $t0 = time;
    $c->send_json({ id => $id, content => $content });
    my @frames = $c->until_terminal([$id], $timeout // 5);
    my $took = time - $t0;
    my ($end) = grep { ($_->{type} // '') =~ /^(complete|error)$/ }
                map { $_->{json} // () } @frames;
    $c->close;
    return ($end, $took);
}

# the link comes up and relays a message end to end
sub relays {
    my ($name, $ngx) = @_;
    ok(wait_up($ngx), "$name: the link comes up")
        or diag $ngx->error_log;
    my ($end) = one_message($ngx, "$name-1", "over TLS ($name)");
    is($end && $end->{type}, 'complete', "$name: a message is relayed")
        or diag encode_json($end);
    is($end && $end->{content}, "echo: over TLS ($name)",
       "$name: with the gateway's reply");
}

# the link is refused: logged as $re, the fake never got an upgrade, and a
# message gets an error once openclaw_gateway_request_timeout (2 s) is over
sub refused {
    my ($name, $ngx, $gw, $since, $re) = @_;
    ok($ngx->wait_log($re, 5), "$name: error.log says why")
        or diag $ngx->error_log;
    my ($end, $took) = one_message($ngx, "$name-1", "refused ($name)", 6);
    is($end && $end->{type}, 'error', "$name: a message gets an error")
        or diag encode_json($end);
    like($end && $end->{error}, qr/gateway not connected/,
         "$name: saying the gateway is not connected")
        or diag encode_json($end);
    cmp_ok($took, '>=', 1.8, "$name: after the request timeout (2 s)");
    cmp_ok($took, '<', 4.5, "$name: not much later") or diag "took $took s";
    ok(!($ngx->error_log =~ /gateway link up/), "$name: the link never came up");
    is(scalar upgrades_since($gw, $since), 0,
       "$name: no upgrade request (nor token) reached the gateway");
}

sub no_token {
    my ($name, $ngx) = @_;
    unlike($ngx->error_log, qr/\Q$TOKEN\E/, "$name: the token is not in error.log");
    unlike($ngx->read_log('debug.log'), qr/\Q$TOKEN\E/,
           "$name: nor in the debug log");
}

###########################################################################

subtest 'CA-signed certificate, the URL\'s IP in subjectAltName' => sub {
    my $ngx = setup($gw_ca, http => "openclaw_gateway_ssl_trusted_certificate $PKI/ca.pem;");
    relays('ip', $ngx);
    no_token('ip', $ngx);
    $ngx->stop;
};

subtest 'openclaw_gateway_ssl_name gateway.test on an IP URL' => sub {
    my $since = time;
    my $ngx = setup($gw_ca, http => "openclaw_gateway_ssl_trusted_certificate $PKI/ca.pem;\n"
                                  . 'openclaw_gateway_ssl_name gateway.test;');
    relays('name', $ngx);
    my @u = upgrades_since($gw_ca, $since);
    ok(@u, 'name: the gateway got the upgrade');
    ok(@u && exists $u[0]{sni}, 'name: the fake saw the TLS server name');
    is($u[0]{sni}, 'gateway.test', 'name: SNI is gateway.test') if @u;
    my %h = @u ? map { lc($_) => $u[0]{headers}{$_} } keys %{ $u[0]{headers} } : ();
    is($h{host}, '127.0.0.1:' . $gw_ca->port,
       'name: the Host header is still the URL\'s');
    no_token('name', $ngx);
    $ngx->stop;
};

subtest 'openclaw_gateway_ssl_server_name off' => sub {
    my $since = time;
    my $ngx = setup($gw_ca, http => "openclaw_gateway_ssl_trusted_certificate $PKI/ca.pem;\n"
                                  . "openclaw_gateway_ssl_name gateway.test;\n"
                                  . 'openclaw_gateway_ssl_server_name off;');
    relays('nosni', $ngx);
    my @u = upgrades_since($gw_ca, $since);
    ok(@u && !defined $u[0]{sni}, 'nosni: no server name sent')
        or diag 'sni: ' . ($u[0]{sni} // 'none');
    no_token('nosni', $ngx);
    $ngx->stop;
};

subtest 'a certificate the trusted CA did not sign' => sub {
    my $since = time;
    my $ngx = setup($gw_self, http => "openclaw_gateway_ssl_trusted_certificate $PKI/ca.pem;\n"
                                    . 'openclaw_gateway_ssl_name gateway.test;');
    refused('untrusted', $ngx, $gw_self, $since,
            qr/\[error\][^\n]*certificate verify error[^\n]*self[- ]signed/);
    no_token('untrusted', $ngx);
    $ngx->stop;
};

subtest 'a name the certificate does not have' => sub {
    my $since = time;
    my $ngx = setup($gw_ca, http => "openclaw_gateway_ssl_trusted_certificate $PKI/ca.pem;\n"
                                  . 'openclaw_gateway_ssl_name wrong.test;');
    refused('mismatch', $ngx, $gw_ca, $since,
            qr/\[error\][^\n]*certificate does not match[^\n]*wrong\.test/);
    unlike($ngx->error_log, qr/certificate verify error/,
           'mismatch: the chain itself was fine');
    no_token('mismatch', $ngx);
    $ngx->stop;
};

subtest 'openclaw_gateway_ssl_verify off with the untrusted certificate' => sub {
    my $since = time;
    my $ngx = setup($gw_self, http => 'openclaw_gateway_ssl_verify off;');
    relays('noverify', $ngx);
    unlike($ngx->error_log, qr/certificate (verify error|does not match)/,
           'noverify: nothing about the certificate');
    my ($u) = upgrades_since($gw_self, $since);
    # RFC 6066 3, and what nginx's own proxy_ssl_server_name does
    ok($u && !defined $u->{sni}, 'noverify: no SNI for an IP URL')
        or diag 'SNI sent: ' . ($u ? $u->{sni} // 'none' : 'no upgrade');
    no_token('noverify', $ngx);
    $ngx->stop;
};

$gw_ca->stop;
$gw_self->stop;

done_testing;
