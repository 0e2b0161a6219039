#!/usr/bin/perl

# A real OpenClaw gateway (2026.9.6 and 2026.4.26, with the fake model)
# reached over a non-loopback address, as a gateway on another host is:
# the gateway clears the scopes of a link without a paired device, so
# nginx relays with openclaw_gateway_identity.  The first connect gets
# NOT_PAIRED; the request nginx logs is approved with the gateway's own
# CLI (openclaw devices list / approve); the links come up without a
# reload and messages relay end to end; after a restart the stored device
# token is used (nginx then has no shared secret at all); a revoked token
# falls back to the shared secret and the signed device.
#
# The address is this machine's own non-loopback IPv4 address: the
# gateway then sees that address as the peer, not 127.0.0.1.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use File::Path qw(make_path remove_tree);
use Mojo::JSON qw(decode_json);
use Time::HiRes qw(sleep time);

use OCB;
use OCGateway;

sub remote_address {
    for (`ip -4 -o addr show scope global 2>/dev/null`) {
        return $1 if m{\binet (\d+\.\d+\.\d+\.\d+)/};
    }
    return undef;
}

my $ADDR = remote_address();
plan skip_all => 'this machine has no non-loopback IPv4 address to reach '
               . 'a gateway through as a remote one'
    unless defined $ADDR;

my @VERSIONS = split /,/, ($ENV{OCB_REMOTE_VERSIONS} // '4,3');
OCGateway::require_cache(@VERSIONS);

my $T0 = time;
my ($uid, $gid) = (getpwnam('nobody'))[2, 3];

sub wait_for {
    my ($gw, $cond, $timeout) = @_;
    my $deadline = time + $timeout;
    while (time < $deadline) {
        my $v = $cond->();
        return $v if $v;
        $gw->pause(0.2);
    }
    return $cond->();
}

sub nginx_for {
    my ($gw, $key, %o) = @_;
    my $token = $o{no_token} ? '' : "openclaw_gateway_token " . $gw->token . ";";
    return OCB->new(workers => 2, %o, http => <<"EOF");
    openclaw_gateway ws://$ADDR:@{[ $gw->port ]};
    $token
    openclaw_gateway_identity $key;
    openclaw_gateway_run_timeout 150s;
    server {
        listen 127.0.0.1:%%PORT%%;
        location /ws { openclaw_bridge; }
    }
EOF
}

sub relay {
    my ($gw, $ngx, $id, $text, $timeout) = @_;
    my $c = OCGateway::Client->new($ngx, name => $id);
    $c->send_msg(id => $id, content => $text, session => "t64-$id");
    OCGateway::Client::pump([$c], time + $timeout, sub { $c->done($id) });
    $gw->check($T0, $c, $id, "$id: the message relays end to end",
               content => OCGateway::Client::reply_for($text));
}

sub approve {
    my ($gw, $ngx, $request, $device) = @_;
    my ($list, $rc) = $gw->cli('devices', 'list', '--json');
    my $j = eval { decode_json($list =~ /(\{.*\})/s ? $1 : $list) } // {};
    my @pending = grep { ($_->{requestId} // '') eq $request }
                  @{ $j->{pending} // [] };
    ok(@pending && ($pending[0]{deviceId} // '') eq $device,
       "openclaw devices list shows request $request of the device")
        or diag "exit $rc: $list";
    my ($out, $arc) = $gw->cli('devices', 'approve', $request);
    is($arc, 0, "openclaw devices approve $request") or diag $out;
}

for my $v (@VERSIONS) {
    subtest "gateway protocol $v over $ADDR" => sub {
        my $gw = OCGateway->new(version => $v, bind => 'lan');
        note sprintf 'gateway v%d ready after %.1f s in %s', $v,
            $gw->ready_after, $gw->dir;

        my $dir = $gw->dir . '/nginx-identity';
        make_path($dir);
        chown $uid, $gid, $dir;
        my $key = "$dir/device.pem";

        my $ngx = nginx_for($gw, $key);
        my $log = sub { $ngx->error_log };

        my ($device, $request);
        ok(wait_for($gw, sub {
               ($device, $request) = $log->() =~
                   /gateway wants device ([0-9a-f]{64}) paired \([^)]*\), request (\S+):/;
               $request }, 30),
           'the first connect gets NOT_PAIRED, logged with its request')
            or diag $log->();
        like($log->(), qr/run "openclaw devices approve \Q$request\E"/,
             'with the command that approves it') if $request;

        approve($gw, $ngx, $request, $device) if $request;

        ok(OCGateway::wait_links($ngx, 2, 45, $v),
           'both links come up without a reload') or diag $log->();
        ok(-f "$key.token", 'the device token is stored next to the key');

        relay($gw, $ngx, "v$v-first", "remote hello v$v", 150);

        # a restart without the shared secret: only the device token
        $ngx->stop;
        $ngx = nginx_for($gw, $key, no_token => 1);
        ok(OCGateway::wait_links($ngx, 2, 30, $v),
           'after a restart without the shared secret, the stored device '
           . 'token brings the links up') or diag $log->();
        relay($gw, $ngx, "v$v-token", "by device token v$v", 150);
        $ngx->stop;

        # the token revoked: the shared secret and the signed device
        my ($out, $rc) = $gw->cli('devices', 'revoke', '--device', $device,
                                  '--role', 'operator');
        is($rc, 0, 'openclaw devices revoke') or diag $out;

        $ngx = nginx_for($gw, $key);
        ok(wait_for($gw, sub { $log->() =~ /gateway refused the device token of device \Q$device\E/ }, 30),
           'the revoked token is refused, and said so') or diag $log->();

        # a revoked token may leave the pairing in place, or not
        my $again;
        wait_for($gw, sub {
            ($again) = $log->() =~ /gateway wants device \Q$device\E paired \([^)]*\), request (\S+):/;
            $again || OCGateway::links_up($ngx, $v) >= 2 }, 45);
        if ($again) {
            note "pairing again: request $again";
            approve($gw, $ngx, $again, $device);
        }
        ok(OCGateway::wait_links($ngx, 2, 45, $v),
           'the links come back on the shared secret and the signed device')
            or diag $log->();
        ok(wait_for($gw, sub { -f "$key.token" }, 10), 'a new device token is stored');

        unlike($log->(), qr/\Q@{[ $gw->token ]}\E/, 'the shared secret is not logged');
        $ngx->stop;
        $gw->stop_all;
    };
}

note sprintf 'total %.1f s', time - $T0;

done_testing;
