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
# The gateway runs in a network namespace of this test's own, joined to
# the root namespace by a veth pair (10.213.N.1/30 on this side, .2 in
# the namespace): nginx connects to 10.213.N.2, and the gateway sees
# 10.213.N.1 as the peer, not 127.0.0.1.  Its fake model and its CLI
# (openclaw devices ...) run in the namespace too, over its loopback.
# No traffic goes anywhere but loopback and the namespace's addresses.
# The namespace and the veth go at the end, whatever happened (END);
# without ip, or without the right to make a namespace (root or
# CAP_NET_ADMIN), the test is skipped.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use File::Path qw(make_path remove_tree);
use Mojo::JSON qw(decode_json);
use Scalar::Util qw(weaken);
use Time::HiRes qw(sleep time);

use OCB;
use OCGateway;

# the namespace, its two interfaces (at most 15 characters), and the
# gateways in it, stopped before it goes
my $OWNER = $$;
my $NS = "ocb64-$$";
my $HOST_IF = "ocb64h-$$";
my $NS_IF = "ocb64n-$$";
my ($made_ns, $made_link, @GATEWAYS);

# runs ip with these arguments (names and addresses only: no quoting
# needed); returns whether it succeeded, and its output
sub ip {
    my $out = `ip @_ 2>&1`;
    return ($? == 0, $out // '');
}

END {
    return unless $OWNER && $$ == $OWNER;   # not in a forked child
    local ($?, $!, $@);
    for my $gw (grep { defined } @GATEWAYS) {
        eval { $gw->stop_all };
    }
    if ($made_ns) {
        # anything still in the namespace was started by this test
        my (undef, $pids) = ip('netns', 'pids', $NS);
        my @pids = $pids =~ /^(\d+)$/mg;
        if (@pids) {
            kill 'KILL', @pids;
            waitpid($_, 0) for @pids;   # our own children, if they are
        }
    }
    # one end of a veth pair takes the other with it
    ip('link', 'delete', $HOST_IF) if $made_link;
    ip('netns', 'delete', $NS) if $made_ns;
}

# an end by signal runs END as well
$SIG{$_} = sub { exit 1 } for qw(INT TERM HUP);

sub setup_netns {
    my ($ok, $out) = ip('-V');
    return "no ip command (iproute2) to make a network namespace with"
        unless $ok;
    ($ok, $out) = ip('netns', 'add', $NS);
    return "cannot make a network namespace (needs root or "
           . "CAP_NET_ADMIN): ip netns add: $out" unless $ok;
    $made_ns = 1;
    ($ok, $out) = ip('netns', 'exec', $NS, 'ip', 'link', 'set', 'lo', 'up');
    return "cannot run commands in a network namespace: ip netns exec: $out"
        unless $ok;
    ($ok, $out) = ip('link', 'add', $HOST_IF, 'type', 'veth',
                     'peer', 'name', $NS_IF);
    return "cannot make a veth pair: ip link add: $out" unless $ok;
    $made_link = 1;

    # a /30 of 10.213.0.0/16 that no interface here has yet (another run)
    my (undef, $taken) = ip('-o', 'addr', 'show', 'to', '10.213.0.0/16');
    my %taken = map { $_ => 1 } $taken =~ /\binet 10\.213\.(\d+)\./g;
    my ($n) = grep { !$taken{$_} }
              map { ($$ + $_) % 254 + 1 } 0 .. 253;
    die "no free 10.213.N.0/30 left\n" unless defined $n;

    for my $cmd (['link', 'set', $NS_IF, 'netns', $NS],
                 ['addr', 'add', "10.213.$n.1/30", 'dev', $HOST_IF],
                 ['link', 'set', $HOST_IF, 'up'],
                 ['-n', $NS, 'addr', 'add', "10.213.$n.2/30", 'dev', $NS_IF],
                 ['-n', $NS, 'link', 'set', $NS_IF, 'up']) {
        ($ok, $out) = ip(@$cmd);
        die "ip @$cmd: $out" unless $ok;
    }
    # the namespace's address answers once both ends are up
    my $deadline = time + 10;
    until ((ip('-n', $NS, 'link', 'show', $NS_IF))[1] =~ /\bLOWER_UP\b/
           && (ip('link', 'show', $HOST_IF))[1] =~ /\bLOWER_UP\b/) {
        die "the veth pair $HOST_IF/$NS_IF did not come up\n"
            if time > $deadline;
        sleep 0.1;
    }
    return (undef, "10.213.$n.2");
}

my ($why_not, $ADDR) = setup_netns();
plan skip_all => $why_not if $why_not;

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

# Protocol 3 spends 30 to 40 s of CPU on a turn here when the machine is
# idle (gateway-protocol.md 13.8), and its event loop is busy meanwhile:
# beside two busy loops (make test-stress) a turn took over 150 s, and
# the gateway answered no upgrade for 30 s.  The waits below are for
# conditions, so generous ones cost nothing when the machine is idle.
my $RUN_TIMEOUT = 420;
my $LINK_WAIT = 180;

sub nginx_for {
    my ($gw, $key, %o) = @_;
    my $token = $o{no_token} ? '' : "openclaw_gateway_token " . $gw->token . ";";
    return OCB->new(workers => 2, %o, http => <<"EOF");
    openclaw_gateway ws://$ADDR:@{[ $gw->port ]};
    $token
    openclaw_gateway_identity $key;
    openclaw_gateway_run_timeout ${RUN_TIMEOUT}s;
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
        my $gw = OCGateway->new(version => $v, bind => 'lan',
                                netns => $NS, host => $ADDR);
        push @GATEWAYS, $gw;
        weaken($GATEWAYS[-1]);
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
               $request }, $LINK_WAIT),
           'the first connect gets NOT_PAIRED, logged with its request')
            or diag $log->();
        like($log->(), qr/run "openclaw devices approve \Q$request\E"/,
             'with the command that approves it') if $request;

        approve($gw, $ngx, $request, $device) if $request;

        ok(OCGateway::wait_links($ngx, 2, $LINK_WAIT, $v),
           'both links come up without a reload') or diag $log->();
        ok(-f "$key.token", 'the device token is stored next to the key');

        relay($gw, $ngx, "v$v-first", "remote hello v$v", $RUN_TIMEOUT);

        # a restart without the shared secret: only the device token
        $ngx->stop;
        $ngx = nginx_for($gw, $key, no_token => 1);
        ok(OCGateway::wait_links($ngx, 2, $LINK_WAIT, $v),
           'after a restart without the shared secret, the stored device '
           . 'token brings the links up') or diag $log->();
        relay($gw, $ngx, "v$v-token", "by device token v$v", $RUN_TIMEOUT);
        $ngx->stop;

        # the token revoked: the shared secret and the signed device
        my ($out, $rc) = $gw->cli('devices', 'revoke', '--device', $device,
                                  '--role', 'operator');
        is($rc, 0, 'openclaw devices revoke') or diag $out;

        $ngx = nginx_for($gw, $key);
        ok(wait_for($gw, sub { $log->() =~ /gateway refused the device token of device \Q$device\E/ }, $LINK_WAIT),
           'the revoked token is refused, and said so') or diag $log->();

        # a revoked token may leave the pairing in place, or not
        my $again;
        wait_for($gw, sub {
            ($again) = $log->() =~ /gateway wants device \Q$device\E paired \([^)]*\), request (\S+):/;
            $again || OCGateway::links_up($ngx, $v) >= 2 }, $LINK_WAIT);
        if ($again) {
            note "pairing again: request $again";
            approve($gw, $ngx, $again, $device);
        }
        ok(OCGateway::wait_links($ngx, 2, $LINK_WAIT, $v),
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
