#!/usr/bin/perl

# Hub mode (issue 11): nginx DIALS OUT to users' WebSocket hubs, as the Go
# webhook bridge does, and relays what arrives there to the gateway (a
# scripted fake, t/lib/FakeGateway.pm).  The hubs are t/lib/TestHub.pm in
# both behaviours (rooms: the Cloudflare hub, fan-out to the OTHER sockets
# of a uid; echo: the Node hub, everything to every socket, the sender
# included), and the end users are plain WebSocket clients of the hubs.
#
# Checked: the upgrade request (lowercase Upgrade, the hub's Host, no
# Origin, the extra headers, ?uid= and &uid=, a /ws/<uid> URL dialled as
# is); several uids on one hub and two hubs in one location, each message
# answered once through the hub it came from, with per-message sessions
# (agent:<agent>:webhook:uid:<uid>:hub:msg:<id>) or the session and peer
# fields; the echo hub's greeting, echoed replies and echoed control
# replies never answered (each message reaches the gateway once, each
# user sees one complete); binary, non-JSON and oversized frames answered
# with an error while the link stays up and nothing else is disturbed; a
# wss:// hubs (a trusted CA, an untrusted certificate, verification off);
# a hub refusing the upgrade (its status line in error.log, state and
# last_error in the status JSON, then the link comes up); a hub that
# restarts, or closes with 1001; a hub that stops answering pings (the
# link is redialled); a hub that stops reading (the worker
# keeps serving an inbound client); replies made while a link is down
# delivered when it is back, and the overflow of a small queue counted;
# the close at shutdown bounded by openclaw_bridge_close_timeout when the
# hub never answers it; configuration errors.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use HTTP::Tiny;
use File::Copy ();
use File::Path ();
use Mojo::JSON qw(decode_json encode_json);
use Time::HiRes qw(sleep time);

use OCB;
use FakeGateway;
use RelayClient;
use TestHub;

my $TOKEN = 'tok-80-hub-4e1d';

my $gw = FakeGateway->new(token => $TOKEN, deltas => 3, delta_ms => 10);

# certificates for the wss:// hubs: one signed by a test CA, for
# 127.0.0.1, and a self-signed one
my $PKI = OCB::top() . "/build/t/80-hub-$$-pki";
File::Path::remove_tree($PKI);
File::Path::make_path($PKI);
sub openssl {
    my $out = `cd '$PKI' && openssl @_ 2>&1`;
    die "openssl @_ failed:\n$out" if $?;
}
{
    my $ec = '-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes';
    openssl("req -x509 $ec -keyout ca.key -out ca.pem -days 2 -subj '/CN=hub test CA'"
            . " -addext 'basicConstraints=critical,CA:TRUE'"
            . " -addext 'keyUsage=critical,keyCertSign,cRLSign'");
    openssl("req $ec -keyout hub.key -out hub.csr -subj '/CN=hub.test'");
    open my $f, '>', "$PKI/hub.ext" or die $!;
    print $f "subjectAltName = IP:127.0.0.1\nbasicConstraints = CA:FALSE\n"
           . "extendedKeyUsage = serverAuth\n";
    close $f;
    openssl('x509 -req -in hub.csr -CA ca.pem -CAkey ca.key -CAcreateserial'
            . ' -out hub.pem -days 2 -extfile hub.ext');
    openssl("req -x509 $ec -keyout self.key -out self.pem -days 2 -subj '/CN=hub.test'"
            . " -addext 'subjectAltName=IP:127.0.0.1'");
}

my $hubA = TestHub->new(mode => 'rooms');       # shop-1, shop-2, /ws/<uid>
my $hubB = TestHub->new(mode => 'rooms');       # shop-1's second hub
my $hubE = TestHub->new(mode => 'echo');
my $hubR = TestHub->new(mode => 'rooms', refuse => { status => 400, count => -1 });
my $hubP = TestHub->new(mode => 'rooms');       # stops reading
my $hubQ = TestHub->new(mode => 'rooms');       # goes away while replies come
my $hubK = TestHub->new(mode => 'rooms');       # stops answering pings
my $hubT = TestHub->new(mode => 'rooms', tls_cert => "$PKI/hub.pem",
                        tls_key => "$PKI/hub.key");
my $hubS = TestHub->new(mode => 'rooms', tls_cert => "$PKI/self.pem",
                        tls_key => "$PKI/self.key");

my %URL = (
    a1 => $hubA->url('/ws') . '?uid=shop-1',
    a2 => $hubA->url('/ws') . '?uid=shop-2',
    ap => $hubA->url('/ws/Shop.Path_4'),
    a3 => $hubA->url('/ws') . '?uid=shop-3',
    b1 => $hubB->url('/ws') . '?x=1&y=a%20b&uid=shop-1',
    e  => $hubE->url('/ws') . '?uid=echo-1',
    r  => $hubR->url('/ws') . '?uid=ref',
    p  => $hubP->url('/ws') . '?uid=bp',
    q  => $hubQ->url('/ws') . '?uid=q',
    qs => $hubQ->url('/ws') . '?uid=qs',
    k  => $hubK->url('/ws') . '?uid=k',
    t  => $hubT->url('/ws') . '?uid=tls',
    tb => $hubS->url('/ws') . '?uid=tlsbad',
    to => $hubS->url('/ws') . '?uid=tlsoff',
);

my $ngx = OCB->new(workers => 1, http => <<"EOF");
openclaw_gateway ws://127.0.0.1:@{[ $gw->port ]};
openclaw_gateway_token $TOKEN;
openclaw_bridge_zone hubsessions:1m;

server {
    listen 127.0.0.1:%%PORT%%;

    location / {
        openclaw_bridge;
    }

    location = /status {
        openclaw_bridge_status;
    }

    location /bridge-shop1 {
        openclaw_bridge_hub @{[ $hubA->url('/ws') ]};
        openclaw_bridge_hub @{[ $hubB->url('/ws') ]}?x=1&y=a%20b;
        openclaw_bridge_uid shop-1;
        openclaw_bridge_agent_id Ops;
        openclaw_bridge_session_zone hubsessions;
        openclaw_bridge_hub_header Authorization "Bearer x-80";
        openclaw_bridge_hub_header X-Hub-Extra "two words";
        openclaw_bridge_close_timeout 1s;
    }

    location /bridge-shop2 {
        openclaw_bridge_hub @{[ $hubA->url('/ws') ]};
        openclaw_bridge_uid shop-2;
        openclaw_bridge_agent_id ops;
        openclaw_bridge_max_message_size 64k;
        openclaw_bridge_close_timeout 1s;
    }

    location /bridge-path {
        openclaw_bridge_hub @{[ $hubA->url('/ws/Shop.Path_4') ]};
        openclaw_bridge_close_timeout 1s;
    }

    # a hub location that also serves inbound clients
    location /bridge-both {
        openclaw_bridge;
        openclaw_bridge_hub @{[ $hubA->url('/ws') ]};
        openclaw_bridge_uid shop-3;
    }

    location /bridge-echo {
        openclaw_bridge_hub @{[ $hubE->url('/ws') ]};
        openclaw_bridge_uid echo-1;
        openclaw_bridge_session_zone hubsessions;
    }

    location /bridge-ref {
        openclaw_bridge_hub @{[ $hubR->url('/ws') ]};
        openclaw_bridge_uid ref;
    }

    location /bridge-bp {
        openclaw_bridge_hub @{[ $hubP->url('/ws') ]};
        openclaw_bridge_uid bp;
        openclaw_bridge_ping_interval 300s;
        openclaw_bridge_hub_queue 64m;
    }

    location /bridge-q {
        openclaw_bridge_hub @{[ $hubQ->url('/ws') ]};
        openclaw_bridge_uid q;
        openclaw_bridge_hub_queue 1m;
    }

    location /bridge-ping {
        openclaw_bridge_hub @{[ $hubK->url('/ws') ]};
        openclaw_bridge_uid k;
        openclaw_bridge_ping_interval 1s;
        openclaw_bridge_pong_timeout 1s;
        openclaw_bridge_close_timeout 1s;
    }

    location /bridge-tls {
        openclaw_bridge_hub @{[ $hubT->url('/ws') ]};
        openclaw_bridge_uid tls;
        openclaw_bridge_hub_ssl_verify on;
        openclaw_bridge_hub_ssl_trusted_certificate $PKI/ca.pem;
    }

    location /bridge-tls-bad {
        openclaw_bridge_hub @{[ $hubS->url('/ws') ]};
        openclaw_bridge_uid tlsbad;
        openclaw_bridge_hub_ssl_trusted_certificate $PKI/ca.pem;
    }

    location /bridge-tls-off {
        openclaw_bridge_hub @{[ $hubS->url('/ws') ]};
        openclaw_bridge_uid tlsoff;
        openclaw_bridge_hub_ssl_verify off;
    }

    location /bridge-qs {
        openclaw_bridge_hub @{[ $hubQ->url('/ws') ]};
        openclaw_bridge_uid qs;
        openclaw_bridge_hub_queue 8k;
    }
}
EOF

my $http = HTTP::Tiny->new(timeout => 5);

sub status {
    my $r = $http->get($ngx->http_url('/status'));
    return undef unless $r->{status} == 200;
    return eval { decode_json($r->{content}) };
}

sub hub_entry {
    my ($st, $url) = @_;
    my ($h) = grep { ($_->{url} // '') eq $url } @{ ($st // {})->{hubs} // [] };
    return $h;
}

# waits until the hub entry of $url satisfies $cond; returns it (or the
# last one seen)
sub wait_hub {
    my ($url, $cond, $timeout) = @_;
    my $deadline = time + ($timeout // 10);
    my $h;
    for (;;) {
        $h = hub_entry(status(), $url);
        return $h if $h && $cond->($h);
        return $h if time >= $deadline;
        sleep 0.05;
    }
}

sub wait_for {
    my ($cond, $timeout) = @_;
    my $deadline = time + ($timeout // 10);
    for (;;) {
        my $v = $cond->();
        return $v if $v || time >= $deadline;
        sleep 0.02;
    }
}

sub ready { ($_[0]{state} // '') eq 'ready' }

sub show_status { diag encode_json(status() // {}) }

# one user message: exactly one complete, last, with the fake's echo, the
# deltas adding up; returns the complete
sub one_complete {
    my ($name, $replies, $content, $session) = @_;
    my @types = map { $_->{type} } @$replies;
    my @done = grep { $_->{type} eq 'complete' } @$replies;
    is(scalar @done, 1, "$name: exactly one complete") or diag "types: @types";
    is(scalar(grep { $_->{type} eq 'error' } @$replies), 0, "$name: no error")
        or diag encode_json($replies);
    my $c = $done[0] // {};
    is($c->{content}, "echo: $content", "$name: the reply to its own text");
    my @p = RelayClient::delta_problems(@$replies);
    ok(!@p, "$name: the deltas add up") or diag join "\n", @p;
    is($c->{session}, $session, "$name: session $session") if defined $session;
    return $c;
}

# the chat.send requests whose message is $text
sub sends_of {
    my ($text) = @_;
    return grep { ($_->{params}{message} // '') eq $text } $gw->requests('chat.send');
}

my $wpid = ($ngx->worker_pids)[0];

###########################################################################
# the links come up, one socket per (hub, uid)

{
    for my $k (qw(a1 a2 ap a3 b1 e p q qs k t to)) {
        my $h = wait_hub($URL{$k}, \&ready, 20);
        ok($h && ready($h), "link $k ($URL{$k}) ready") or show_status();
    }
    is(scalar $hubA->bridges('shop-1'), 1, 'hub A: one socket of shop-1');
    is(scalar $hubA->bridges('shop-2'), 1, 'hub A: one socket of shop-2');
    is(scalar $hubA->bridges('Shop.Path_4'), 1, 'hub A: one socket of Shop.Path_4');
    is(scalar $hubB->bridges('shop-1'), 1, 'hub B: one socket of shop-1');
    is(scalar $hubE->bridges, 1, 'echo hub: one socket');

    my $h = hub_entry(status(), $URL{a1});
    is($h->{location}, '/bridge-shop1', 'status: location');
    is($h->{uid}, 'shop-1', 'status: uid');
    is($h->{pid}, $wpid, 'status: the owner is the worker');
    is($h->{reconnects}, 0, 'status: no reconnect');
    is($h->{queued}, 0, 'status: nothing queued');
    is($h->{dropped}, 0, 'status: nothing dropped');
    is($h->{last_error}, '', 'status: no last_error');
    my @hubs = @{ status()->{hubs} };
    is(scalar @hubs, 14, 'status: one entry per link') or show_status();
}

###########################################################################
# wss:// hubs: verified against the trusted CA by default

{
    my ($up) = $hubT->upgrades(role => 'bridge');
    is($up && $up->{tls}, 1, 'wss: the link came over TLS');
    my $u = $hubT->client(uid => 'tls');
    my @r = $u->ask('t1', 'over tls');
    one_complete('wss: a message', \@r, 'over tls', 'agent:main:webhook:uid:tls:hub:msg:t1');
    $u->close;

    my $h = wait_hub($URL{tb}, sub { ($_[0]{last_error} // '') ne '' }, 20);
    ok($h && !ready($h), 'wss: an untrusted certificate: not ready') or show_status();
    isnt($h && $h->{last_error}, '', 'wss: last_error says why');
    is(scalar $hubS->upgrades(uid => 'tlsbad'), 0, 'wss: no request sent to it');
    is(scalar $hubS->bridges('tlsoff'), 1, 'wss: with verification off, the link is up');
}

###########################################################################
# a hub that refuses the upgrade, then accepts

{
    ok(wait_for(sub { $hubR->records(kind => 'refused', role => 'bridge') >= 2 }, 20),
       'refusing hub: the link keeps trying');
    ok($ngx->wait_log(qr{HTTP/1\.1 400 Bad Request}, 5),
       "refusing hub: its status line is in error.log");
    my $h = hub_entry(status(), $URL{r});
    ok($h, 'refusing hub: in the status');
    isnt($h && $h->{state}, 'ready', 'refusing hub: not ready');
    like($h && $h->{last_error}, qr/400/, 'refusing hub: last_error names the status')
        or show_status();
    is($h && $h->{pid}, $wpid, 'refusing hub: owned by the worker');
    is(scalar $hubR->bridges, 0, 'refusing hub: no socket');

    $hubR->refuse(status => 0);
    $h = wait_hub($URL{r}, \&ready, 40);
    ok($h && ready($h), 'refusing hub: the link comes up once it accepts') or show_status();
    is($h && $h->{last_error}, '', 'refusing hub: last_error cleared');
    cmp_ok($h && $h->{reconnects}, '>=', 1, 'refusing hub: reconnects counted');
    is(scalar $hubR->bridges('ref'), 1, 'refusing hub: one socket');

    my $u = $hubR->client(uid => 'ref');
    my @r = $u->ask('r1', 'after the refusal');
    one_complete('refusing hub: a message', \@r, 'after the refusal',
                 'agent:main:webhook:uid:ref:hub:msg:r1');
}

###########################################################################
# the upgrade request

{
    my ($up) = $hubA->upgrades(uid => 'shop-1', role => 'bridge');
    is($up->{request_line}, 'GET /ws?uid=shop-1 HTTP/1.1', 'request: ?uid= appended');
    is_deeply([TestHub::header_values($up, 'Upgrade')], ['websocket'],
              'request: "Upgrade: websocket", lowercase');
    like(join(',', TestHub::header_values($up, 'Connection')), qr/\bupgrade\b/i,
         'request: Connection: upgrade');
    is_deeply([TestHub::header_values($up, 'Host')], ['127.0.0.1:' . $hubA->port],
              "request: the hub's Host");
    is_deeply([TestHub::header_values($up, 'Origin')], [], 'request: no Origin');
    is_deeply([TestHub::header_values($up, 'Sec-WebSocket-Version')], ['13'],
              'request: version 13');
    is_deeply([TestHub::header_values($up, 'Authorization')], ['Bearer x-80'],
              'request: the extra Authorization header');
    is_deeply([TestHub::header_values($up, 'X-Hub-Extra')], ['two words'],
              'request: the other extra header');
    my @fwd = grep { $_->[0] =~ /^(x-forwarded-|forwarded$|x-real-ip$)/i } @{ $up->{headers} };
    ok(!@fwd, 'request: no forwarding header');

    ($up) = $hubA->upgrades(uid => 'shop-2', role => 'bridge');
    is_deeply([TestHub::header_values($up, 'Authorization')], [],
              "request: another location's link has not its headers");

    ($up) = $hubB->upgrades(role => 'bridge');
    is($up->{request_line}, 'GET /ws?x=1&y=a%20b&uid=shop-1 HTTP/1.1',
       'request: &uid= after a query, which is kept as it is');
    ($up) = $hubA->upgrades(uid => 'Shop.Path_4', role => 'bridge');
    is($up->{request_line}, 'GET /ws/Shop.Path_4 HTTP/1.1',
       'request: a /ws/<uid> URL without a uid directive is dialled as is');
    ($up) = $hubE->upgrades(role => 'bridge');
    is($up->{request_line}, 'GET /ws?uid=echo-1 HTTP/1.1', 'request: the echo hub too');
}

###########################################################################
# several uids on one hub, two hubs in one location, sessions

{
    my $s1 = $hubA->client(uid => 'shop-1', name => 's1');
    my $s1b = $hubA->client(uid => 'shop-1', name => 's1b');
    my $s2 = $hubA->client(uid => 'shop-2', name => 's2');
    my $b1 = $hubB->client(uid => 'shop-1', name => 'b1');

    $s1->send_json({ id => 'M-1', content => 'shop one first' });
    $s2->send_json({ id => 'M-1', content => 'shop two first' });
    $s1->send_json({ id => 'm-2', content => 'shop one named', session => 'My-Key' });
    $s2->send_json({ id => 7, content => 'shop two peer', peerKind => 'dm', peerId => 'U-9' });
    $b1->send_json({ id => 'hb-1', content => 'through hub B' });

    my %r1 = $s1->collect(['M-1', 'm-2'], 15);
    my %r2 = $s2->collect(['M-1', 7], 15);
    my %rb = $b1->collect(['hb-1'], 15);

    one_complete('shop-1 M-1', $r1{'M-1'}, 'shop one first',
                 'agent:ops:webhook:uid:shop-1:hub:msg:m-1');
    one_complete('shop-2 M-1 (the same id, another uid)', $r2{'M-1'}, 'shop two first',
                 'agent:ops:webhook:uid:shop-2:hub:msg:m-1');
    one_complete('shop-1 with a session', $r1{'m-2'}, 'shop one named',
                 'agent:ops:webhook:uid:shop-1:session:my-key');
    my $c = one_complete('shop-2 with peer fields', $r2{7}, 'shop two peer',
                         'agent:ops:webhook:uid:shop-2:dm:u-9');
    my @typed = grep { $_->{payload} =~ /"id":7[,}]/ } grep { $_->{json} && ($_->{json}{id} // '') eq '7' } $s2->frames;
    ok(@typed >= 2, 'shop-2: an integer id echoed as an integer');
    one_complete('hub B', $rb{'hb-1'}, 'through hub B',
                 'agent:ops:webhook:uid:shop-1:hub:msg:hb-1');

    # the other user of shop-1 sees shop-1's replies (the hub fans them
    # out), nothing of shop-2
    my %rs = $s1b->collect(['M-1', 'm-2'], 15);
    is(scalar(grep { $_->{type} eq 'complete' } @{ $rs{'M-1'} }), 1,
       "shop-1's other user: the complete of M-1 once");
    my @cross = grep { ($_->{payload} // '') =~ /shop two|through hub B/ } $s1->frames, $s1b->frames;
    ok(!@cross, 'shop-1 users: nothing of shop-2 or of hub B')
        or diag join "\n", map { $_->{payload} } @cross;
    @cross = grep { ($_->{payload} // '') =~ /shop one|through hub B/ } $s2->frames;
    ok(!@cross, 'shop-2 user: nothing of shop-1') or diag join "\n", map { $_->{payload} } @cross;

    # a reply goes back through the hub its message came from
    my @a_hb = grep { ($_->{id} // '') eq 'hb-1' } $hubA->bridge_sent;
    ok(!@a_hb, 'hub B message: no reply of it on hub A');
    my @b_m1 = grep { ($_->{id} // '') eq 'M-1' } $hubB->bridge_sent;
    ok(!@b_m1, 'hub A message: no reply of it on hub B');

    for my $t ('shop one first', 'shop two first', 'shop one named', 'shop two peer',
               'through hub B') {
        is(scalar(sends_of($t)), 1, "gateway: \"$t\" sent once");
    }
    my ($send) = sends_of('shop one first');
    is($send->{params}{sessionKey}, 'agent:ops:webhook:uid:shop-1:hub:msg:m-1',
       'gateway: the session key of a per-message session');

    # a /ws/<uid> link without a uid directive
    my $pu = $hubA->client(uid => 'Shop.Path_4');
    my @r = $pu->ask('p1', 'by the path');
    my $pc = one_complete('/ws/<uid> link', \@r, 'by the path');
    like($pc->{session} // '', qr/^agent:main:webhook:(?!.*:uid:shop-)\S*hub:msg:p1$/,
         '/ws/<uid> link: a per-message session of its own');

    # a session of another uid is out of reach
    $s1->send_json({ id => 'x-uid', content => 'into shop two',
                     session => 'agent:ops:webhook:uid:shop-2:hub:msg:m-1' });
    my %x = $s1->collect(['x-uid'], 10);
    is(join(',', map { $_->{type} } @{ $x{'x-uid'} }), 'error',
       "shop-1: another uid's session is refused");
    is(scalar(sends_of('into shop two')), 0, 'shop-1: and not sent');

    # session.list shows this uid's sessions only
    $s1->send_json({ type => 'session.list', id => 'sl-1' });
    my %l = $s1->collect(['sl-1'], 10);
    my @keys = map { $_->{key} } @{ ($l{'sl-1'}[0] // {})->{data}{sessions} // [] };
    ok(scalar(grep { $_ eq 'agent:ops:webhook:uid:shop-1:hub:msg:m-1' } @keys),
       'shop-1: session.list has its per-message session') or diag "@keys";
    my @other = grep { !/^agent:ops:webhook:uid:shop-1:/ } @keys;
    ok(!@other, "shop-1: session.list has no other uid's session") or diag "@other";

    $_->close for $s1, $s1b, $s2, $b1, $pu;
}

###########################################################################
# a hub location serves no requests unless it also says openclaw_bridge

{
    my $r = $ngx->ws(path => '/bridge-shop1');
    isnt($r->status, 101, 'a hub location alone upgrades no request');
    $r->close;
    my $in = RelayClient->new($ngx, path => '/bridge-both');
    $in->send_json({ id => 'both-1', content => 'inbound in a hub location' });
    my @f = $in->until_terminal(['both-1'], 10);
    my $c = ($f[-1] // {})->{json} // {};
    is($c->{type}, 'complete', 'a hub location with openclaw_bridge: an inbound client');
    like($c->{session} // '', qr/^agent:main:webhook:uid:shop-3:(?!hub:msg)/,
         'its own session, not a per-message hub one');
    $in->close;
    my $u = $hubA->client(uid => 'shop-3');
    my @r = $u->ask('both-2', 'hub in a both location');
    one_complete('and its hub link', \@r, 'hub in a both location',
                 'agent:main:webhook:uid:shop-3:hub:msg:both-2');
    $u->close;
}

###########################################################################
# a run the agent starts in a hub session reaches that uid's users, and
# only theirs (issue 14, through a hub link)

{
    my $s2 = $hubA->client(uid => 'shop-2', name => 'ar2');
    my $s1 = $hubA->client(uid => 'shop-1', name => 'ar1');
    my $session = 'agent:ops:webhook:uid:shop-2:hub:msg:m-1';
    my $r = $gw->action('agent_run', session => $session, text => 'agent reminder');
    ok($r->{ok}, 'agent run: started at the gateway');
    my @got;
    my $deadline = time + 10;
    while (time < $deadline) {
        my $j = $s2->next_json($deadline - time) or last;
        push @got, $j;
        last if ($j->{origin} // '') eq 'agent' && ($j->{type} // '') =~ /^(complete|error)$/;
    }
    my @ends = grep { ($_->{origin} // '') eq 'agent' && $_->{type} =~ /^(complete|error)$/ } @got;
    is(scalar @ends, 1, "agent run: shop-2's user gets its end once");
    is($ends[0] && $ends[0]{content}, 'agent reminder', 'agent run: with its text');
    is($ends[0] && $ends[0]{session}, $session, 'agent run: in its session');
    # a barrier on shop-1's link, after the agent's run
    my @b = $s1->ask('ar-b', 'after the agent run');
    one_complete('agent run: barrier', \@b, 'after the agent run');
    my @leak = grep { ($_->{json}{origin} // '') eq 'agent' } grep { $_->{json} }
               $s1->frames, map { $hubB->bridge_sent } 1;
    ok(!@leak, "agent run: nothing of it on shop-1's links");
    $_->close for $s1, $s2;
}

###########################################################################
# the echo hub: greetings, its echoes of our replies and of control
# replies are never answered

{
    my $e1 = $hubE->client(name => 'e1');
    my $e2 = $hubE->client(name => 'e2');
    $e1->send_json({ id => 'em1', content => 'echo one' });
    $e2->send_json({ id => 'em2', content => 'echo two' });
    my %r1 = $e1->collect(['em1', 'em2'], 15);
    my %r2 = $e2->collect(['em1', 'em2'], 15);

    # a barrier: frames the bridge might still send about em1 and em2 (it
    # reads its echoes before this message) come before its complete
    my @bar = $e1->ask('em3', 'echo barrier');
    $e2->collect(['em3'], 15);
    one_complete('echo hub: barrier', \@bar, 'echo barrier');

    for my $u ([e1 => $e1], [e2 => $e2]) {
        my ($n, $c) = @$u;
        for my $id (qw(em1 em2)) {
            my $text = $id eq 'em1' ? 'echo one' : 'echo two';
            one_complete("echo hub: $n sees $id", [ $c->replies($id) ], $text,
                         "agent:main:webhook:uid:echo-1:hub:msg:$id");
        }
    }
    is(scalar(sends_of('echo one')), 1, 'echo hub: em1 reached the gateway once');
    is(scalar(sends_of('echo two')), 1, 'echo hub: em2 reached the gateway once');
    my @errs = grep { ($_->{type} // '') eq 'error' } $hubE->bridge_sent;
    ok(!@errs, 'echo hub: no error written (greeting and echoes ignored)')
        or diag join "\n", map { $_->{payload} } @errs;

    my $lists = () = $gw->requests('sessions.list');
    $e1->send_json({ type => 'session.list', id => 'l1' });
    my %l = $e1->collect(['l1'], 15);
    is(scalar @{ $l{l1} }, 1, 'echo hub: session.list answered');
    ok($l{l1}[0] && exists $l{l1}[0]{data}, 'echo hub: with data');
    @bar = $e1->ask('em4', 'echo barrier two');
    one_complete('echo hub: second barrier', \@bar, 'echo barrier two');
    is(scalar($e1->replies('l1')), 1, 'echo hub: the echoed control reply is not answered');
    my @ctl = grep { ($_->{type} // '') eq 'session.list' } $hubE->bridge_sent;
    is(scalar @ctl, 1, 'echo hub: one control reply written in all');
    my $lists2 = () = $gw->requests('sessions.list');
    is($lists2 - $lists, 1, 'echo hub: the gateway got one sessions.list');
    @errs = grep { ($_->{type} // '') eq 'error' } $hubE->bridge_sent;
    ok(!@errs, 'echo hub: still no error written');
    is(scalar $hubE->bridges, 1, 'echo hub: the same link');
    $_->close for $e1, $e2;
}

###########################################################################
# garbage from a hub: an error, the link stays, nothing else is disturbed

{
    my ($link) = $hubA->bridges('shop-2');
    my $conn = $link->{conn};
    my $u2 = $hubA->client(uid => 'shop-2', name => 'g2');

    $hubA->inject(uid => 'shop-2', op => 'binary',
                  payload => '{"id":"bin-1","content":"binary hi"}');
    $hubA->inject(uid => 'shop-2', op => 'text', payload => 'not json {');
    $hubA->inject(uid => 'shop-2', big => { id => 'big-1', size => 200_000 });
    ok(wait_for(sub { $hubA->bridge_sent(conn => $conn, type => 'error') >= 3 }, 10),
       'garbage: three error replies') or diag explain [ $hubA->bridge_sent(conn => $conn) ];
    my @e = $hubA->bridge_sent(conn => $conn, type => 'error');
    ok(!grep({ !defined $_->{json}{error} || $_->{json}{error} eq '' } @e),
       'garbage: each error says what was wrong');
    is(scalar(grep { ($_->{params}{message} // "") =~ /binary hi/ } $gw->requests('chat.send')), 0,
       'garbage: the binary message did not reach the gateway');

    my @r = $u2->ask('g-1', 'after the garbage');
    one_complete('garbage: the link still relays', \@r, 'after the garbage');
    is(($hubA->bridges('shop-2'))[0]{conn}, $conn, 'garbage: the same socket');
    ok(!$hubA->records(kind => 'closed', conn => $conn), 'garbage: it was never closed');

    my $s1 = $hubA->client(uid => 'shop-1');
    @r = $s1->ask('g-s1', 'shop one unaffected');
    one_complete('garbage: another link of the same hub', \@r, 'shop one unaffected');
    my $b1 = $hubB->client(uid => 'shop-1');
    @r = $b1->ask('g-b1', 'hub B unaffected');
    one_complete('garbage: another hub', \@r, 'hub B unaffected');
    my $in = RelayClient->new($ngx);
    $in->send_json({ id => 'in-1', content => 'inbound unaffected' });
    my @f = $in->until_terminal(['in-1'], 10);
    is(($f[-1] && $f[-1]{json}{type}) // '', 'complete', 'garbage: an inbound client');
    my $h = hub_entry(status(), $URL{a2});
    is($h->{reconnects}, 0, 'garbage: no reconnect in the status');
    ok(ready($h), 'garbage: ready');
    $_->close for $u2, $s1, $b1, $in;
}

###########################################################################
# frames a hub may send: a message in fragments, a ping; and one it must
# not: text that is not UTF-8 (the link may end for it, and comes back)

{
    my ($link) = $hubA->bridges('shop-2');
    my $u2 = $hubA->client(uid => 'shop-2', name => 'f2');
    $hubA->inject(uid => 'shop-2', json => { id => 'frag-1', content => 'in three fragments' },
                  fragments => 3);
    my %r = $u2->collect(['frag-1'], 10);
    one_complete('a message in fragments', $r{'frag-1'}, 'in three fragments');

    $hubA->inject(uid => 'shop-2', op => 'ping', payload => 'hub-ping-1');
    ok(wait_for(sub { $hubA->records(kind => 'pong', conn => $link->{conn},
                                     payload => 'hub-ping-1') }, 10),
       "a hub's ping is answered with its payload");

    my $bad = unpack('H*', '{"id":"u8","content":"') . 'c328' . unpack('H*', '"}');
    $hubA->inject(uid => 'shop-2', hex => $bad);
    # whatever became of the link, it is (again) up and relays
    my @r;
    ok(wait_for(sub {
        my $h = hub_entry(status(), $URL{a2});
        return 0 unless $h && ready($h) && $hubA->bridges('shop-2') == 1;
        @r = $u2->ask('after-u8', 'after bad utf-8', _timeout => 5);
        return grep { $_->{type} eq 'complete' } @r;
    }, 40), 'invalid UTF-8 from the hub: the link relays afterwards');
    my ($now) = $hubA->bridges('shop-2');
    note "invalid UTF-8: the link was " . ($now->{conn} == $link->{conn} ? 'kept' : 'redialled');
    is(scalar(grep { ($_->{params}{message} // '') =~ /^\x{c3}/ } $gw->requests('chat.send')), 0,
       'invalid UTF-8 from the hub: not relayed');
    $u2->close;
}

###########################################################################
# a hub that stops reading: the worker goes on serving

{
    my $u = $hubP->client(uid => 'bp');
    $hubP->pause(uid => 'bp');
    my @ids = map { "bp-$_" } 1 .. 10;
    my %text = map { $_ => "$_ {{slow 1 5}} " . ('y' x 100_000) } @ids;
    $u->send_json({ id => $_, content => $text{$_} }) for @ids;

    ok(wait_for(sub { scalar(grep { ($_->{params}{message} // '') =~ /^bp-\d+ / }
                             $gw->requests('chat.send')) == 10 }, 30),
       'back-pressure: the 10 messages reached the gateway');
    ok(wait_for(sub { scalar(grep { ($_->{sessionKey} // '') =~ /:uid:bp:/ }
                             $gw->records(kind => 'chat', state => 'final')) == 10 }, 30),
       'back-pressure: and their runs ended');
    my $port = $hubP->port;
    # the largest Send-Q of the sockets connected to the hub (nginx's,
    # and the user's, which has nothing to send)
    my $sendq = sub {
        my $max = 0;
        for (`ss -Htn state established dst 127.0.0.1:$port`) {
            $max = $1 if /^\s*\d+\s+(\d+)/ && $1 > $max;
        }
        return $max;
    };
    ok(wait_for(sub { $sendq->() > 0 }, 10),
       "back-pressure: nginx's writes to the hub are blocked");

    my $in = RelayClient->new($ngx);
    my $t = time;
    $in->send_json({ id => 'bp-in', content => 'still served' });
    my @f = $in->until_terminal(['bp-in'], 10);
    is(($f[-1] && $f[-1]{json}{type}) // '', 'complete',
       'back-pressure: an inbound client is served meanwhile');
    ok(status(), 'back-pressure: the status answers');
    is_deeply([$ngx->worker_pids], [$wpid], 'back-pressure: the same worker');

    $hubP->resume(uid => 'bp');
    my %r = $u->collect(\@ids, 60);
    my $bad = 0;
    for my $id (@ids) {
        my @done = grep { $_->{type} eq 'complete' } @{ $r{$id} };
        $bad++ unless @done == 1 && $done[0]{content} eq "echo: $text{$id}";
    }
    is($bad, 0, 'back-pressure: every message got its one complete once the hub reads');
    $in->close;
    $u->close;
}

###########################################################################
# a hub that stops answering pings: the link is found dead and redialled

{
    my ($old) = $hubK->bridges('k');
    my $t = time;
    $hubK->pause(uid => 'k');
    # the hub, not reading, does not see the old socket end
    ok(wait_for(sub { grep { $_->{conn} != $old->{conn} } $hubK->bridges('k') }, 30),
       'pings: a hub that does not answer is left for a new link');
    $hubK->resume(conn => $old->{conn});
    ok(wait_for(sub { $hubK->bridges('k') == 1 }, 10), 'pings: the old socket was closed');
    note sprintf 'pings: new link after %.1f s', time - $t;
    my $h = wait_hub($URL{k}, sub { ready($_[0]) && $_[0]{reconnects} >= 1 }, 10);
    ok($h && ready($h) && $h->{reconnects} >= 1, 'pings: ready again, reconnect counted')
        or show_status();
    my $u = $hubK->client(uid => 'k');
    my @r = $u->ask('k1', 'after the pings');
    one_complete('pings: messages flow', \@r, 'after the pings');
    $u->close;
}

###########################################################################
# replies made while the link is down wait for it; a small queue overflows

{
    my $uq = $hubQ->client(uid => 'q');
    my $uqs = $hubQ->client(uid => 'qs');
    # the first delta comes a second after the message: the hub is gone
    # by then, so every reply of it is made while the link is down (one
    # written to the hub just before it died would go with it)
    my $tq = 'queued one {{slow 3 1000}}';
    my $tqs = 'overflow ' . ('z' x 20_000) . ' {{slow 3 1000}}';
    $uq->send_json({ id => 'qm1', content => $tq });
    $uqs->send_json({ id => 'qsm1', content => $tqs });
    ok(wait_for(sub { sends_of($tq) && sends_of($tqs) }, 10), 'queue: both messages sent');

    $hubQ->set(refuse => { status => 503, count => -1 });
    $hubQ->crash;
    $hubQ->start;
    ok(wait_for(sub {
        my %fin = map { ($_->{sessionKey} // '') => 1 } $gw->records(kind => 'chat', state => 'final');
        $fin{'agent:main:webhook:uid:q:hub:msg:qm1'} && $fin{'agent:main:webhook:uid:qs:hub:msg:qsm1'}
    }, 15), 'queue: both runs ended while the links were down');
    my $h = wait_hub($URL{q}, sub { $_[0]{queued} > 0 }, 10);
    cmp_ok($h && $h->{queued}, '>', 0, 'queue: replies queued') or show_status();
    isnt($h && $h->{state}, 'ready', 'queue: the link is not ready');
    $h = wait_hub($URL{qs}, sub { $_[0]{dropped} > 0 }, 10);
    cmp_ok($h && $h->{dropped}, '>', 0, 'queue: the small queue overflowed, counted')
        or show_status();

    my $uq2 = $hubQ->client(uid => 'q');
    my $uqs2 = $hubQ->client(uid => 'qs');
    $hubQ->refuse(status => 0);
    my %r = $uq2->collect(['qm1'], 40);
    one_complete('queue: the reply, once the link is back', $r{qm1}, $tq,
                 'agent:main:webhook:uid:q:hub:msg:qm1');
    $h = wait_hub($URL{q}, sub { ready($_[0]) && $_[0]{queued} == 0 }, 10);
    ok($h && ready($h) && $h->{queued} == 0, 'queue: empty, the link ready') or show_status();
    $h = wait_hub($URL{qs}, \&ready, 40);
    ok($h && ready($h), 'queue: the overflowed link is ready too');
    cmp_ok($h && $h->{dropped}, '>', 0, 'queue: dropped stays counted');
    my @r = $uqs2->ask('qs-after', 'after the overflow');
    one_complete('queue: the overflowed link relays', \@r, 'after the overflow');
    $_->close for $uq2, $uqs2;
}

###########################################################################
# a hub that restarts (and refuses once with 503), a hub that closes 1001

{
    my $before = hub_entry(status(), $URL{a1})->{reconnects};
    $hubA->set(refuse => { status => 503, count => 1 });
    $hubA->crash;
    $hubA->start;
    for my $k (qw(a1 a2 ap a3)) {
        my $h = wait_hub($URL{$k}, \&ready, 40);
        ok($h && ready($h), "hub restart: link $k back") or show_status();
    }
    is(scalar $hubA->records(kind => 'refused', status => 503), 1, 'hub restart: refused once');
    is(scalar $hubA->bridges('shop-1'), 1, 'hub restart: one socket of shop-1');
    is(scalar $hubA->bridges('shop-2'), 1, 'hub restart: one socket of shop-2');
    cmp_ok(hub_entry(status(), $URL{a1})->{reconnects}, '>', $before,
           'hub restart: reconnects counted');
    my $s1 = $hubA->client(uid => 'shop-1');
    my @r = $s1->ask('rs-1', 'after the restart');
    one_complete('hub restart: messages flow', \@r, 'after the restart');
    $s1->close;

    my ($old) = $hubA->bridges('shop-1');
    $before = hub_entry(status(), $URL{a1})->{reconnects};
    $hubA->close_all(code => 1001, uid => 'shop-1');
    ok(wait_for(sub { my @b = $hubA->bridges('shop-1');
                      @b == 1 && $b[0]{conn} != $old->{conn} }, 40),
       'hub close 1001: a new link');
    my $h = wait_hub($URL{a1}, sub { ready($_[0]) && $_[0]{reconnects} > $before }, 10);
    ok($h && ready($h), 'hub close 1001: ready, reconnect counted') or show_status();
    $s1 = $hubA->client(uid => 'shop-1');
    @r = $s1->ask('cl-1', 'after the close');
    one_complete('hub close 1001: messages flow', \@r, 'after the close');
    $s1->close;
}

###########################################################################
# shutdown: hubs that never answer a close frame hold nginx at most
# openclaw_bridge_close_timeout (1 s here for hubs A and B)

{
    $hubA->set(no_close_reply => 1);
    $hubB->set(no_close_reply => 1);
    my $took = $ngx->stop;
    cmp_ok($took, '<', 8, sprintf('shutdown: nginx exited in %.1f s', $took));
    ok($hubA->records(kind => 'close_frame', answered => 0),
       'shutdown: the link sent a close frame');
}

###########################################################################
# configuration errors

sub line_of {
    my ($o, $marker) = @_;
    my @lines = split /\n/, $o->conf_text;
    for my $i (0 .. $#lines) {
        return $i + 1 if index($lines[$i], $marker) >= 0;
    }
    die "\"$marker\" not in the configuration";
}

sub bad_conf {
    my ($name, $loc, $directive, @markers) = @_;
    my $o = OCB->new(no_start => 1, http => <<"EOF");
openclaw_gateway ws://127.0.0.1:@{[ $gw->port ]};
server {
    listen 127.0.0.1:%%PORT%%;
    location /h {
$loc
    }
}
EOF
    my ($rc, $out) = $o->test_conf;
    my $conf = $o->prefix . '/conf/nginx.conf';
    my @lines = map { line_of($o, $_) } @markers;
    my $lines = join '|', @lines;
    isnt($rc, 0, "$name: nginx -t fails");
    like($out, qr/\[emerg\].*"?\Q$directive\E"?/, "$name: names $directive") or diag $out;
    like($out, qr/\Q$conf\E:($lines)\b/, "$name: names the file and line") or diag $out;
}

my $H = 'openclaw_bridge_hub ws://127.0.0.1:9/ws;';
bad_conf('uid with a variable', "$H\nopenclaw_bridge_uid \$arg_uid;",
         'openclaw_bridge_uid', 'openclaw_bridge_uid', 'openclaw_bridge_hub');
bad_conf('agent with a variable', "$H\nopenclaw_bridge_uid u;\nopenclaw_bridge_agent_id \$x_agent;",
         'openclaw_bridge_agent_id', 'openclaw_bridge_agent_id', 'openclaw_bridge_hub');
bad_conf('sender with a variable', "$H\nopenclaw_bridge_uid u;\nopenclaw_bridge_sender \$http_x_sender;",
         'openclaw_bridge_sender', 'openclaw_bridge_sender', 'openclaw_bridge_hub');
bad_conf('uid with a character a session key cannot have', "$H\nopenclaw_bridge_uid shop/1;",
         'openclaw_bridge_uid', 'openclaw_bridge_uid', 'openclaw_bridge_hub');
bad_conf('agent id with a character a session key cannot have',
         "$H\nopenclaw_bridge_agent_id 'a b';",
         'openclaw_bridge_agent_id', 'openclaw_bridge_agent_id', 'openclaw_bridge_hub');
bad_conf('http:// URL', 'openclaw_bridge_hub http://127.0.0.1:9/ws;',
         'openclaw_bridge_hub', 'openclaw_bridge_hub');
bad_conf('URL without a host', 'openclaw_bridge_hub ws:///ws;',
         'openclaw_bridge_hub', 'openclaw_bridge_hub');
bad_conf('URL with a bad port', 'openclaw_bridge_hub ws://127.0.0.1:99999/ws;',
         'openclaw_bridge_hub', 'openclaw_bridge_hub');
bad_conf('not a URL', 'openclaw_bridge_hub "not a url";',
         'openclaw_bridge_hub', 'openclaw_bridge_hub');
bad_conf('bad queue size', "$H\nopenclaw_bridge_hub_queue lots;",
         'openclaw_bridge_hub_queue', 'openclaw_bridge_hub_queue');

# and a good one, with every hub directive
{
    my $o = OCB->new(no_start => 1, http => <<"EOF");
openclaw_gateway ws://127.0.0.1:@{[ $gw->port ]};
openclaw_bridge_zone z:64k;
server {
    listen 127.0.0.1:%%PORT%%;
    location /h {
        openclaw_bridge_hub ws://127.0.0.1:9/ws;
        openclaw_bridge_hub wss://127.0.0.1:9/ws?a=b;
        openclaw_bridge_uid shop-1;
        openclaw_bridge_agent_id ops;
        openclaw_bridge_session_zone z;
        openclaw_bridge_hub_header Authorization "Bearer x";
        openclaw_bridge_hub_header X-Two two;
        openclaw_bridge_hub_queue 1m;
        openclaw_bridge_hub_ssl_verify off;
    }
}
EOF
    my ($rc, $out) = $o->test_conf;
    is($rc, 0, 'every hub directive: nginx -t passes') or diag $out;
}

# conf-examples/hub.conf loads as it is
{
    my $o = OCB->new(no_start => 1, http => '');
    my $p = $o->prefix;
    File::Path::make_path("$p/modules");
    symlink(OCB::module(), "$p/modules/ngx_http_openclaw_bridge_module.so") or die $!;
    my $example = OCB::top() . '/conf-examples/hub.conf';
    File::Copy::copy($example, "$p/conf/nginx.conf") or die "$example: $!";
    my ($rc, $out) = $o->test_conf;
    is($rc, 0, 'conf-examples/hub.conf: nginx -t passes') or diag $out;
}

$gw->stop;
$_->stop for $hubA, $hubB, $hubE, $hubR, $hubP, $hubQ, $hubK, $hubT, $hubS;
File::Path::remove_tree($PKI);

done_testing;
