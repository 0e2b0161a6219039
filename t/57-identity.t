#!/usr/bin/perl

# The device identity of openclaw_gateway_identity (issue 12) against the
# scripted fake gateway, which verifies device signatures as the real one
# does (t/lib/FakeGateway.pm, "device_check" and "pairing"): the key is
# created once (PKCS#8 PEM, 0600, owned by the worker user) and kept
# across reloads and restarts; bad key files are configuration errors
# naming the directive, the path and the reason; the connect carries a
# signed device with the challenge's nonce and ts; pairing is logged once
# per request with the command that approves it, shown in the status,
# and the link comes up by itself once approved; the device token is
# stored next to the key and used after a restart; a revoked token falls
# back to the shared secret and pairing starts over; a v2-only gateway,
# an expired signature, and the fake's own checks (a wrong device id, a
# bad signature).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Digest::SHA qw(sha256_hex);
use File::Path qw(make_path remove_tree);
use HTTP::Tiny;
use MIME::Base64 qw(encode_base64);
use Mojo::JSON qw(decode_json encode_json);
use Time::HiRes qw(sleep time);

use OCB;
use FakeGateway;
use RelayClient;

my $TOKEN = 'tok-56-identity-SECRET-0b7e';
my $http = HTTP::Tiny->new(timeout => 5);

# a directory the workers (nobody) can write, for the device token
my $dir = OCB::top() . "/build/t/56-identity-$$-keys";
remove_tree($dir);
make_path($dir);
my ($uid, $gid) = (getpwnam('nobody'))[2, 3];
chown $uid, $gid, $dir;
my $key = "$dir/device.pem";

sub conf {
    my ($gw, %o) = @_;
    my $id = $o{identity} // "openclaw_gateway_identity $key;";
    my $url = $gw ? $gw->url : 'ws://127.0.0.1:1';
    return "openclaw_gateway $url;\n"
         . "openclaw_gateway_token $TOKEN;\n"
         . "$id\n"
         . "server {\n"
         . "    listen 127.0.0.1:%%PORT%%;\n"
         . "    location / { openclaw_bridge; }\n"
         . "    location = /status { openclaw_bridge_status; }\n"
         . "}\n";
}

sub status {
    my ($ngx) = @_;
    my $r = $http->get($ngx->http_url('/status'));
    return $r->{status} == 200 ? decode_json($r->{content}) : undef;
}

sub wait_for {
    my ($cond, $timeout) = @_;
    my $deadline = time + ($timeout // 10);
    while (time < $deadline) {
        my $v = $cond->();
        return $v if $v;
        sleep 0.1;
    }
    return $cond->();
}

sub slurp { my ($f) = @_; open my $h, '<', $f or return undef; local $/; return <$h> }

sub raw_public_key {
    my ($file) = @_;
    my $der = `openssl pkey -in $file -pubout -outform DER 2>/dev/null`;
    return substr($der, -32);
}

sub relay_ok {
    my ($ngx, $text, $name) = @_;
    my $c = RelayClient->new($ngx);
    $c->send_json({ id => 'm1', content => $text });
    my @f = $c->until_terminal(['m1'], 15);
    my ($done) = grep { ($_->{json}{type} // '') eq 'complete' } @f;
    ok($done && ($done->{json}{content} // '') eq "echo: $text", $name)
        or diag explain [ map { $_->{json} } @f ];
    $c->close;
}

###########################################################################
# configuration errors: the directive, the path and the reason

{
    my $ngx = OCB->new(no_start => 1, http => conf(undef,
        identity => "openclaw_gateway_identity $dir/garbage.pem;"));
    open my $f, '>', "$dir/garbage.pem" or die;
    print $f "not a key\n";
    close $f;
    chmod 0600, "$dir/garbage.pem";
    my ($rc, $out) = $ngx->test_conf;
    isnt($rc, 0, 'a malformed key file fails the configuration');
    like($out, qr/\[emerg\].*"openclaw_gateway_identity" "\Q$dir\E\/garbage\.pem": not a PEM private key \(.+\)/,
         'the error names the directive, the path and the reason') or diag $out;

    system("openssl genpkey -algorithm x25519 -out $dir/x25519.pem 2>/dev/null");
    chmod 0600, "$dir/x25519.pem";
    $ngx->{http} = conf(undef, identity => "openclaw_gateway_identity $dir/x25519.pem;");
    $ngx->write_conf;
    ($rc, $out) = $ngx->test_conf;
    like($out, qr/\[emerg\].*"\Q$dir\E\/x25519\.pem": the key is X25519, the gateway takes Ed25519 keys only/,
         'a key of another type is refused') or diag $out;

    $ngx->{http} = conf(undef, identity => "openclaw_gateway_identity $dir/nodir/k.pem;");
    $ngx->write_conf;
    ($rc, $out) = $ngx->test_conf;
    like($out, qr/\[emerg\].*"\Q$dir\E\/nodir\/k\.pem": cannot create the key file \(2: No such file or directory\)/,
         'a missing directory is named') or diag $out;

    $ngx->{http} = conf(undef, identity => "openclaw_gateway_identity $dir;");
    $ngx->write_conf;
    ($rc, $out) = $ngx->test_conf;
    like($out, qr/\[emerg\].*"\Q$dir\E": not a regular file/,
         'a directory is not a key file') or diag $out;

    ok(!-e $key, 'no key was created by the failing configurations');
}

###########################################################################
# pairing, approval without a reload, the device token

my $gw = FakeGateway->new(token => $TOKEN, pairing => 1);

my $ngx = OCB->new(workers => 2, http => conf($gw));

ok(-f $key, 'the key file is created when missing');
my @st = stat $key;
is($st[2] & 07777, 0600, 'mode 0600');
is($st[4], $uid, 'owned by the worker user');
like(slurp($key), qr/\A-----BEGIN PRIVATE KEY-----\n/, 'PKCS#8 PEM');

my $device_id = sha256_hex(raw_public_key($key));
like($ngx->error_log . $ngx->read_log('stderr.log'), qr/device id $device_id/,
     'the device id is logged at start');

# the first connects are refused until the request is approved
ok(wait_for(sub { $ngx->error_log =~ /request req-1: on the gateway host, run "openclaw devices approve req-1"/ }, 10),
   'the pairing request is logged with the command that approves it')
    or diag $ngx->error_log;
like($ngx->error_log, qr/\[warn\].*gateway wants device $device_id paired \(not-paired\), request req-1/,
     'at warn, with the device id');

my ($c1) = $gw->connects;
my $d = $c1->{params}{device};
my $b64 = encode_base64(raw_public_key($key), '');
$b64 =~ tr{+/}{-_};
$b64 =~ s/=+$//;
is($d->{id}, $device_id, 'device.id is the sha256 of the raw public key');
is($d->{publicKey}, $b64, 'device.publicKey is the raw key in base64url');
is($c1->{params}{auth}{token}, $TOKEN, 'the first connect carries the shared secret');
ok((grep { $_->{kind} eq 'device' && $_->{version} == 3 } $gw->records),
   'the fake verified a v3 signature');

my $st = wait_for(sub { my $s = status($ngx);
                        $s && $s->{identity}{pairing} eq 'pending' && $s }, 5);
is($st->{identity}{device_id}, $device_id, 'status: device id');
is($st->{identity}{pairing}, 'pending', 'status: pairing pending');
is($st->{identity}{request_id}, 'req-1', 'status: the request id');

# both workers retry with backoff; the request is logged once
sleep 3;
my @lines = $ngx->error_log =~ /(gateway wants device)/g;
is(scalar @lines, 1, 'the request is logged once for both workers');
cmp_ok(scalar(() = grep { $_->{kind} eq 'pairing' } $gw->records), '>=', 2,
       'the link kept retrying');

ok($gw->action('approve', requestId => 'req-1')->{ok}, 'approved on the gateway');

ok(wait_for(sub { (() = $ngx->error_log =~ /gateway link up/g) >= 2 }, 40),
   'both links come up without a reload') or diag $ngx->error_log;
like($ngx->error_log, qr/device $device_id is paired with the gateway/, 'the pairing is logged');

relay_ok($ngx, 'paired hello', 'a message relays once paired');

my $token_file = "$key.token";
ok(wait_for(sub { -f $token_file }, 5), 'the device token is stored next to the key');
@st = stat $token_file;
is($st[2] & 07777, 0600, 'the token file has mode 0600');
my $stored = decode_json(slurp($token_file));
is($stored->{deviceId}, $device_id, 'the token file names the device');
like($stored->{token}, qr/^devtok-/, 'and holds the token hello-ok gave');

$st = status($ngx);
is($st->{identity}{pairing}, 'paired', 'status: paired');
is($st->{identity}{request_id}, undef, 'status: no request id once paired');
ok($st->{identity}{device_token}, 'status: a device token is stored');

unlike($ngx->error_log . $ngx->read_log('stderr.log'), qr/\Q$TOKEN\E|\Q$stored->{token}\E/,
       'neither the shared secret nor the device token is logged');

###########################################################################
# a reload and a restart keep the identity; the stored token is used

my $pem = slurp($key);
$gw->clear_records;
$ngx->reload;
ok(wait_for(sub { (grep { $_->{kind} eq 'hello' } $gw->records) >= 2 }, 15),
   'the links come back after a reload');
is(slurp($key), $pem, 'the key is the same after a reload');

$ngx->stop;
$gw->clear_records;
$ngx->start;
ok(wait_for(sub { (grep { $_->{kind} eq 'hello' } $gw->records) >= 2 }, 15),
   'the links come back after a restart') or diag $ngx->error_log;
is(slurp($key), $pem, 'the key is the same after a restart');

my @c = $gw->connects;
ok(@c && !(grep { !defined $_->{auth}{deviceToken}
                   || $_->{auth}{deviceToken} ne $stored->{token}
                   || defined $_->{auth}{token} } @c),
   'connects after the restart carry the stored device token, not the secret')
    or diag explain [ map { $_->{auth} } @c ];
ok((grep { $_->{kind} eq 'device' && $_->{token_used} } $gw->records),
   'the device token is in the signature');
relay_ok($ngx, 'by device token', 'a message relays on the device token');

###########################################################################
# the token revoked: the shared secret, and pairing again

$gw->clear_records;
my $log_before = length $ngx->error_log;
$gw->action('revoke', deviceId => $device_id);
$gw->action('close', code => 1012);

ok(wait_for(sub { substr($ngx->error_log, $log_before)
                  =~ /gateway refused the device token of device $device_id \(AUTH_DEVICE_TOKEN_MISMATCH\).*forgotten/ }, 15),
   'a refused device token is logged clearly') or diag $ngx->error_log;
ok(wait_for(sub { !-e $token_file }, 5), 'and forgotten');
ok(wait_for(sub { substr($ngx->error_log, $log_before) =~ /request req-2: .*openclaw devices approve req-2/ }, 15),
   'pairing starts over with a new request') or diag $ngx->error_log;
ok((grep { ($_->{auth}{token} // '') eq $TOKEN && defined $_->{params}{device} }
    $gw->connects), 'the fallback connect has the shared secret and the signed device');

$gw->action('approve', requestId => 'req-2');
ok(wait_for(sub { (() = substr($ngx->error_log, $log_before) =~ /gateway link up/g) >= 2 }, 40),
   'the links come back after the second approval');
ok(wait_for(sub { -f $token_file }, 5), 'a new device token is stored');

$ngx->stop;
$gw->stop;

###########################################################################
# a gateway that knows v2 only; a clock too far off

{
    my $gw2 = FakeGateway->new(token => $TOKEN, signature_versions => [2]);
    my $n2 = OCB->new(http => conf($gw2));
    ok(wait_for(sub { $n2->error_log =~ /gateway link up/ }, 15),
       'the link comes up with a v2-only gateway') or diag $n2->error_log;
    like($n2->error_log, qr/refused the v3 device signature, the next connect signs the v2 payload/,
         'after one refusal of v3');
    ok((grep { $_->{kind} eq 'device' && $_->{version} == 2 } $gw2->records),
       'the fake verified a v2 signature');
    $n2->stop;
    $gw2->stop;

    my $gw3 = FakeGateway->new(token => $TOKEN, challenge_skew_ms => 600000);
    my $n3 = OCB->new(http => conf($gw3));
    ok(wait_for(sub { $n3->error_log =~ /signature expired: the clocks of this host and of the gateway differ/ }, 10),
       'an expired signature says the clocks differ') or diag $n3->error_log;
    $n3->stop;
    $gw3->stop;
}

###########################################################################
# loopback without an identity works as before, with no device

{
    my $gw4 = FakeGateway->new(token => $TOKEN);
    my $n4 = OCB->new(http => conf($gw4, identity => ''));
    ok(wait_for(sub { $n4->error_log =~ /gateway link up/ }, 10), 'no identity: link up');
    ok(!grep({ defined $_->{params}{device} } $gw4->connects), 'no device block');
    is(status($n4)->{identity}, undef, 'status: identity null');
    $n4->stop;
    $gw4->stop;
}

###########################################################################
# the fake's own checks: a wrong device id, a bad signature, an old one

{
    my $gw5 = FakeGateway->new(token => $TOKEN);
    my $n5 = OCB->new(http => conf($gw5));
    ok(wait_for(sub { $n5->error_log =~ /gateway link up/ }, 10), 'link up');
    my ($c) = $gw5->connects;
    my $params = encode_json($c->{params});

    require Mojo::UserAgent;
    my $ua = Mojo::UserAgent->new;
    my $try = sub {
        my ($mutate) = @_;
        my $p = decode_json($params);
        my $result;
        $ua->websocket($gw5->url => sub {
            my ($ua, $tx) = @_;
            $tx->on(json => sub {
                my ($tx, $f) = @_;
                if (($f->{event} // '') eq 'connect.challenge') {
                    $p->{device}{nonce} = $f->{payload}{nonce};
                    $mutate->($p);
                    $tx->send({ json => { type => 'req', id => 'c', method => 'connect',
                                          params => $p } });
                    return;
                }
                if (($f->{type} // '') eq 'res') {
                    $result = $f->{ok} ? 'ok' : $f->{error}{details}{code};
                    Mojo::IOLoop->stop;
                }
            });
        });
        my $t = Mojo::IOLoop->timer(5 => sub { Mojo::IOLoop->stop });
        Mojo::IOLoop->start;
        Mojo::IOLoop->remove($t);
        return $result // 'no answer';
    };

    is($try->(sub { $_[0]{device}{id} =~ tr/0-9a-f/1-9a-f0/ }),
       'DEVICE_AUTH_DEVICE_ID_MISMATCH', 'fake: a wrong device id is refused');
    is($try->(sub { }), 'DEVICE_AUTH_SIGNATURE_INVALID',
       'fake: a signature over another nonce is refused');
    is($try->(sub { $_[0]{device}{signedAt} -= 300000 }), 'DEVICE_AUTH_SIGNATURE_EXPIRED',
       'fake: an old signedAt is refused');
    $n5->stop;
    $gw5->stop;
}

remove_tree($dir);

done_testing;
