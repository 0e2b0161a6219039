#!/usr/bin/perl

# Sessions against the scripted fake gateway (t/lib/FakeGateway.pm): the
# session keys of every scope (README "Sessions"), uid routing and agent
# selection through map, keys outside the namespace, bad agent ids, uids
# and senders; the sessions zone shared by two workers, surviving a
# reload, and evicting its least recently used idle session when full;
# the session_control permissions (own, all, off); and the session.*
# control replies, merged with the gateway's sessions.list and acting
# through sessions.reset / sessions.delete.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use HTTP::Tiny;
use Mojo::JSON qw(decode_json encode_json);
use Time::HiRes qw(sleep time);

use OCB;
use FakeGateway;
use RelayClient;

my $T0 = time;
my $TOKEN = 'tok-70-sessions-0b1c';

my $gw = FakeGateway->new(token => $TOKEN, deltas => 2, delta_ms => 5);

my $ngx = OCB->new(workers => 2, http => <<"EOF");
openclaw_gateway ws://127.0.0.1:@{[ $gw->port ]};
openclaw_gateway_token $TOKEN;
openclaw_gateway_admin on;

openclaw_bridge_zone s:1m;
openclaw_bridge_session_zone s;

map \$arg_uid \$uid_agent {
    default  main;
    ops      ops;
    ~*^sales sales;
}

server {
    listen 127.0.0.1:%%PORT%%;

    location = /ps       { openclaw_bridge; }
    location = /ops      { openclaw_bridge; openclaw_bridge_agent_id Ops; }
    location = /snd      { openclaw_bridge; openclaw_bridge_sender \$arg_sender; }
    location = /global   { openclaw_bridge; openclaw_bridge_session_scope global; }
    location = /explicit { openclaw_bridge; openclaw_bridge_session_scope explicit; }
    location = /permsg   { openclaw_bridge; openclaw_bridge_session_scope per-message; }
    location = /agent    { openclaw_bridge; openclaw_bridge_agent_id \$arg_agent; }

    location = /uid {
        openclaw_bridge;
        openclaw_bridge_uid \$arg_uid;
        openclaw_bridge_agent_id \$uid_agent;
        openclaw_bridge_sender \$arg_sender;
    }

    location = /all {
        openclaw_bridge;
        openclaw_bridge_uid \$arg_uid;
        openclaw_bridge_sender \$arg_sender;
        openclaw_bridge_session_control all;
    }

    location = /all-ops {
        openclaw_bridge;
        openclaw_bridge_agent_id ops;
        openclaw_bridge_uid \$arg_uid;
        openclaw_bridge_sender \$arg_sender;
        openclaw_bridge_session_control all;
    }

    location = /pager {
        openclaw_bridge;
        openclaw_bridge_agent_id pager;
        openclaw_bridge_session_control all;
    }

    location = /off      { openclaw_bridge; openclaw_bridge_session_control off; }
    location = /status   { openclaw_bridge_status; }
}
EOF

my $http = HTTP::Tiny->new(timeout => 5);

sub links_up {
    my ($n, $ngx_) = @_;
    my @up = ($ngx_ // $ngx)->error_log =~ /gateway link up/g;
    return @up >= $n;
}

ok($gw->wait_until(sub { links_up(2) }, 15), 'both workers linked to the gateway')
    or diag $ngx->error_log;

sub status {
    my ($n) = @_;
    my $r = $http->get(($n // $ngx)->http_url('/status'));
    return $r->{success} ? decode_json($r->{content}) : undef;
}

my $N = 0;

# sends a chat message and returns its terminal reply (complete or error)
sub chat {
    my ($c, %m) = @_;
    $m{content} //= 'msg ' . ++$N . " $$";
    my $has_id = exists $m{id};
    $c->send_json(\%m);
    my $deadline = time + 10;
    while (my $f = $c->next_frame($deadline - time)) {
        my $j = $f->{json} or next;
        next unless ($j->{type} // '') =~ /^(complete|error)$/;
        next if $has_id && (!defined $j->{id} || $j->{id} ne $m{id});
        return $j;
    }
    return undef;
}

# the sessionKey of the fake's chat.send for a message text, or undef
sub gw_key {
    my ($content) = @_;
    my @s = grep { $_->{params}{message} eq $content } $gw->requests('chat.send');
    return @s ? $s[-1]{params}{sessionKey} : undef;
}

# a message that must complete in session $want (a string or a regexp),
# with the gateway getting the same sessionKey; returns the session
sub key_is {
    my ($c, $msg, $want, $name) = @_;
    my %m = %$msg;
    $m{id} //= 'k' . ++$N;
    $m{content} //= "$name #" . ++$N;
    my $r = chat($c, %m);
    is($r && $r->{type}, 'complete', "$name: completed")
        or diag encode_json($r);
    my $got = $r ? $r->{session} : undef;
    if (ref $want) { like($got // '', $want, "$name: session key") }
    else { is($got, $want, "$name: session key $want") }
    is(gw_key($m{content}), $got, "$name: the gateway got the same sessionKey");
    return $got;
}

# a message that must be refused with an error matching $re, never sent on
sub refused {
    my ($c, $msg, $re, $name) = @_;
    my %m = %$msg;
    $m{id} //= 'r' . ++$N;
    $m{content} //= "$name #" . ++$N;
    my $r = chat($c, %m);
    is($r && $r->{type}, 'error', "$name: refused with an error")
        or diag encode_json($r);
    like($r ? $r->{error} // '' : '', $re, "$name: the error says why");
    is($r && $r->{id}, $m{id}, "$name: the error carries the id");
    ok(!defined gw_key($m{content}), "$name: not sent to the gateway");
}

# sends a control message; returns the reply of its type (and the raw text)
sub ctl {
    my ($c, $msg, $timeout) = @_;
    $c->send_json($msg);
    my $deadline = time + ($timeout // 10);
    while (my $f = $c->next_frame($deadline - time)) {
        next unless $f->{json} && ($f->{json}{type} // '') eq $msg->{type};
        return wantarray ? ($f->{json}, $f->{payload}) : $f->{json};
    }
    return;
}

# the fake's answer to one of its request records
sub gw_answer {
    my ($req) = @_;
    return undef unless $req;
    my ($res) = grep { $_->{conn} == $req->{conn} && defined $_->{id}
                       && $_->{id} eq $req->{id} } $gw->records(kind => 'res');
    return $res;
}

sub list_rows {
    my ($c) = @_;
    my $r = ctl($c, { type => 'session.list' });
    return () unless $r && ref $r->{data} eq 'HASH'
                     && ref $r->{data}{sessions} eq 'ARRAY';
    return @{ $r->{data}{sessions} };
}

sub list_keys { return map { $_->{key} } list_rows(@_) }

sub has { my ($list, $k) = @_; return scalar grep { $_ eq $k } @$list }

sub client { RelayClient->new($ngx, path => $_[0]) }

###########################################################################
# per-sender (the default)

{
    my $c = client('/ps');
    key_is($c, { session => '  My-Key  ' }, 'agent:main:webhook:session:my-key',
           'per-sender, a bare session');
    key_is($c, { session => 'agent:main:webhook:Full-Key' },
           'agent:main:webhook:full-key',
           'per-sender, a full session key of the namespace');
    key_is($c, { peerKind => 'group', peerId => 'G-7', topicId => 'T' },
           'agent:main:webhook:group:g-7:topic:t', 'per-sender, group peer with topic');
    key_is($c, { peerId => 'U-1', threadId => 3 },
           'agent:main:webhook:dm:u-1:thread:3', 'per-sender, dm peer with integer thread');
    key_is($c, { session => 'S1', peerId => 'X' }, 'agent:main:webhook:session:s1',
           'per-sender, the session wins over the peer fields');

    # the README's table, with openclaw_bridge_agent_id Ops
    my $ops = client('/ops');
    key_is($ops, { id => 'm2', peerKind => 'Group', peerId => 'G-1', threadId => '7' },
           'agent:ops:webhook:group:g-1:topic:7', 'README m2');
    key_is($ops, { id => 'm3', chatId => 'U-9', threadId => '5' },
           'agent:ops:webhook:dm:u-9:thread:5', 'README m3');
    key_is($ops, { id => 'm3b', senderId => 'S-1' },
           'agent:ops:webhook:dm:s-1', 'README m3b');
    key_is($ops, { id => 'm4', session => '  My-Key  ' },
           'agent:ops:webhook:session:my-key', 'README m4');

    # the per-connection fallback: one key for a connection, another for
    # another connection
    my $k1 = key_is($c, {}, qr/^agent:main:webhook:conn:[^:]+$/,
                    'fallback, first message');
    my $k2 = key_is($c, {}, qr/^agent:main:webhook:conn:[^:]+$/,
                    'fallback, second message on the same connection');
    is($k1, $k2, 'fallback: two messages on one connection share the key');
    my $c2 = client('/ps');
    my $k3 = key_is($c2, {}, qr/^agent:main:webhook:conn:[^:]+$/,
                    'fallback, another connection');
    isnt($k3, $k1, 'fallback: another connection, another key');

    # openclaw_bridge_sender
    my $a1 = client('/snd?sender=Alice-1');
    my $a2 = client('/snd?sender=Alice-1');
    my $bo = client('/snd?sender=bob');
    key_is($a1, {}, 'agent:main:webhook:sender:alice-1', 'sender, first connection');
    key_is($a2, {}, 'agent:main:webhook:sender:alice-1',
           'sender, another connection of the same sender: the same key');
    key_is($bo, {}, 'agent:main:webhook:sender:bob', 'sender, another sender');
    key_is($bo, { peerId => 'P9' }, 'agent:main:webhook:dm:p9',
           'sender, the peer fields still win');

    $_->close for $c, $c2, $ops, $a1, $a2, $bo;
}

###########################################################################
# global, explicit, per-message

{
    my ($g1, $g2) = (client('/global'), client('/global'));
    key_is($g1, {}, 'agent:main:webhook:global', 'global, no fields');
    key_is($g1, { session => 'mine' }, 'agent:main:webhook:global',
           'global, a session field');
    key_is($g2, { peerKind => 'group', peerId => 'G1' }, 'agent:main:webhook:global',
           'global, peer fields, another connection');

    my $e = client('/explicit');
    key_is($e, { session => 'Ex-1' }, 'agent:main:webhook:session:ex-1',
           'explicit, a session');
    key_is($e, { chatId => 'C-3' }, 'agent:main:webhook:dm:c-3', 'explicit, peer fields');
    refused($e, {}, qr/session.*required|required.*session/,
            'explicit, neither session nor peer fields');
    refused($e, { topicId => 'T' }, qr/session.*required|required.*session/,
            'explicit, only a topic');

    # per sender: under the sender's own part (here the connection's)
    my $m = client('/permsg');
    my $own = key_is($m, { id => 'M-1' },
                     qr/^agent:main:webhook:conn:[^:]+:msg:m-1$/,
                     'per-message, string id');
    $own =~ s/:msg:m-1$//;
    key_is($m, { id => 42, session => 'ignored', peerId => 'P' },
           "$own:msg:42", 'per-message, integer id, other fields ignored');
    key_is($m, { id => 'M-2' }, "$own:msg:m-2",
           'per-message, the next message, a fresh key');
    my $m2 = client('/permsg');
    my $other = key_is($m2, { id => 'M-1' },
                       qr/^agent:main:webhook:conn:[^:]+:msg:m-1$/,
                       'per-message, another connection');
    isnt($other, "$own:msg:m-1",
         'per-message: the same id on another connection, another session');
    $m2->close;
    my @fresh;
    for my $i (1, 2) {
        my $content = "per-message without id $i $$";
        $m->send_json({ content => $content });
        my $r;
        my $deadline = time + 10;
        while (my $j = $m->next_json($deadline - time)) {
            if (($j->{type} // '') =~ /^(complete|error)$/) { $r = $j; last }
        }
        is($r && $r->{type}, 'complete', "per-message without id $i: completed");
        like($r && $r->{session}, qr/^\Q$own\E:msg:[0-9a-f]{32}$/,
             "per-message without id $i: a random key");
        is(gw_key($content), $r && $r->{session},
           "per-message without id $i: the gateway got the same sessionKey");
        push @fresh, $r && $r->{session};
    }
    isnt($fresh[0], $fresh[1], 'per-message without ids: a fresh key each time');

    $_->close for $g1, $g2, $e, $m;
}

###########################################################################
# uid routing, map, keys outside the namespace, bad names

{
    my $u = client('/uid?uid=U7&sender=s1');
    key_is($u, {}, 'agent:main:webhook:uid:u7:sender:s1', 'uid, sender fallback');
    key_is($u, { peerId => 'P' }, 'agent:main:webhook:uid:u7:dm:p', 'uid, peer fields');
    key_is($u, { session => 'Bare' }, 'agent:main:webhook:uid:u7:session:bare',
           'uid, a bare session');
    key_is($u, { session => 'agent:main:webhook:uid:u7:mine' },
           'agent:main:webhook:uid:u7:mine', 'uid, a full key of its own uid');
    refused($u, { session => 'agent:main:webhook:uid:u8:theirs' }, qr/uid|namespace|outside/,
            'uid, a full key of another uid');
    refused($u, { session => 'agent:main:other' }, qr/uid|namespace|outside/,
            'uid, a full key outside the uid namespace');
    refused($u, { session => 'agent:ops:webhook:uid:u7:x' }, qr/uid|agent|outside/,
            'uid, a full key of another agent');
    my $g = ctl($u, { type => 'session.get', key => 'Bare', id => 'ub' });
    is($g && $g->{data}{key}, 'agent:main:webhook:uid:u7:session:bare',
       'uid, session.get of a bare key: the uid\'s key');
    $g = ctl($u, { type => 'session.get', key => 'agent:main:webhook:uid:u8:theirs' });
    like($g && $g->{error}, qr/uid|outside/, 'uid, session.get of another uid\'s key: refused');
    my $uc = client('/uid?uid=u7');
    key_is($uc, {}, qr/^agent:main:webhook:uid:u7:conn:[^:]+$/,
           'uid, per-connection fallback');

    my $o = client('/uid?uid=ops&sender=s2');
    key_is($o, {}, 'agent:ops:webhook:uid:ops:sender:s2', 'map: uid ops selects agent ops');
    key_is($o, { session => 'k' }, 'agent:ops:webhook:uid:ops:session:k',
           'map: agent ops, bare session');
    my $s = client('/uid?uid=Sales-EU&sender=s3');
    key_is($s, {}, 'agent:sales:webhook:uid:sales-eu:sender:s3',
           'map: a regex entry selects agent sales');

    my $root = client('/ps');
    refused($root, { session => 'agent:ops:foo' }, qr/outside this location's namespace/,
            'no uid, a full key of another agent');
    refused($root, { session => 'agent:main:webhook:uid:u7:x' }, qr/uid/,
            'no uid, a full key in the uid-routed namespace');
    key_is($root, { session => 'webhook:uid:u7:x' },
           'agent:main:webhook:session:webhook:uid:u7:x',
           'no uid, a bare key that looks uid-routed stays a bare key');

    my $ag = client('/agent?agent=Team.A_1-x');
    key_is($ag, { session => 'k' }, 'agent:team.a_1-x:webhook:session:k',
           'agent id from a variable: letters, digits, ".", "_" and "-"');

    for my $case (['/agent?agent=a:b', 'an agent id with ":"'],
                  ['/agent?agent=a%20b', 'an agent id with "%"'],
                  ['/agent?agent=a/b', 'an agent id with "/"'],
                  ['/uid?uid=u:1', 'a uid with ":"'],
                  ['/uid?uid=u%3A1', 'a uid with "%"'],
                  ['/uid?uid=u*1&sender=x', 'a uid with "*"'],
                  ['/snd?sender=a:b', 'a sender with ":"'],
                  ['/snd?sender=a%20b', 'a sender with "%"'],
                  ['/uid?uid=' . ('u' x 129), 'a uid of 129 characters']) {
        my ($path, $name) = @$case;
        my $raw = $ngx->ws(path => $path);
        is($raw->status, 400, "$name: 400 at the handshake")
            or diag $raw->status_line;
        $raw->close;
    }
    my $ok = $ngx->ws(path => '/uid?uid=' . ('u' x 128));
    is($ok->status, 101, 'a uid of 128 characters is fine');
    $ok->close;

    $_->close for $u, $uc, $o, $s, $root, $ag;
}

###########################################################################
# the zone, shared by the two workers: a session made through one worker
# is listed and controlled through the other

# the pid of the worker whose client count went up, comparing with %$before
sub new_client_on {
    my ($path, $before) = @_;
    my $c = client($path);
    for (1 .. 40) {
        my $st = status() or next;
        my %now = map { $_->{pid} => $_->{clients} } @{ $st->{workers} };
        my @up = grep { $now{$_} > ($before->{$_} // 0) } keys %now;
        if (@up == 1) {
            %$before = %now;
            return ($c, $up[0]);
        }
        sleep 0.05;
    }
    return ($c, undef);
}

{
    my $st = status();
    is(scalar @{ $st->{workers} // [] }, 2, 'status: two workers');
    my %before = map { $_->{pid} => $_->{clients} } @{ $st->{workers} };

    my (%on, @spare);
    for (1 .. 40) {
        my ($c, $pid) = new_client_on('/snd?sender=xw', \%before);
        last unless defined $pid;
        if ($on{$pid}) { push @spare, $c } else { $on{$pid} = $c }
        last if keys %on == 2;
    }
    is(scalar keys %on, 2, 'connections of one sender on both workers')
        or diag encode_json(status());
    $_->close for @spare;

    SKIP: {
        skip 'no connections on two workers', 14 unless keys %on == 2;
        my ($pa, $pb) = sort keys %on;
        my ($ca, $cb) = @on{$pa, $pb};

        my $key = key_is($ca, { peerId => 'XW1' }, 'agent:main:webhook:dm:xw1',
                         "a session made through worker $pa");
        my ($send) = grep { $_->{params}{sessionKey} eq $key } $gw->requests('chat.send');

        my @rows = list_rows($cb);
        my ($row) = grep { $_->{key} eq $key } @rows;
        ok($row, "listed through worker $pb");
        is($row && $row->{messagesIn}, 1, 'with its messagesIn');
        is($row && $row->{messagesOut}, 1, 'and its messagesOut');

        my $g = ctl($cb, { type => 'session.get', key => $key, id => 'xw-get' });
        is($g && $g->{data}{key}, $key, "session.get through worker $pb");
        is($g && $g->{data}{sessionId}, $gw->session($key)->{sessionId},
           'with the gateway\'s sessionId');

        my $r = ctl($cb, { type => 'session.reset', key => $key, id => 'xw-reset' });
        ok($r && $r->{data}{success}, "session.reset through worker $pb")
            or diag encode_json($r);
        my ($reset) = grep { $_->{params}{key} eq $key } $gw->requests('sessions.reset');
        ok($reset, 'the gateway got sessions.reset for the key');
        isnt($reset && $reset->{conn}, $send && $send->{conn},
             'over the other worker\'s gateway link');
        ok($gw->records(kind => 'session', action => 'reset', key => $key),
           'the gateway reset the session');

        my ($rowa) = grep { $_->{key} eq $key } list_rows($ca);
        is($rowa && $rowa->{sessionId}, $gw->session($key)->{sessionId},
           "worker $pa lists the gateway's sessionId");
        is($rowa && $rowa->{messagesIn}, 1, 'and the zone\'s counters are kept');
        $_->close for $ca, $cb;
    }
}

###########################################################################
# permissions: own (the default), all, off; uids never mix

{
    my $alice = client('/snd?sender=alice');
    my $bob = client('/snd?sender=bob');
    my $ka = key_is($alice, { peerId => 'PA' }, 'agent:main:webhook:dm:pa', 'own: alice\'s session');
    my $kb = key_is($bob, { peerId => 'PB' }, 'agent:main:webhook:dm:pb', 'own: bob\'s session');

    my @bl = list_keys($bob);
    ok(has(\@bl, $kb), 'own: bob lists his session');
    ok(!has(\@bl, $ka), 'own: bob does not list alice\'s');
    for my $type (qw(session.get session.reset session.delete)) {
        my $r = ctl($bob, { type => $type, key => $ka, id => "own-$type" });
        is($r && $r->{error}, 'Session not found', "own: bob's $type of alice's session: not found")
            or diag encode_json($r);
        is($r && $r->{data}{error}, 'Session not found', "own: $type: data.error too");
    }
    ok(!grep({ $_->{params}{key} eq $ka } $gw->requests('sessions.reset'),
             $gw->requests('sessions.delete')),
       'own: no reset or delete of alice\'s session reached the gateway');
    my $g = ctl($alice, { type => 'session.get', key => $ka });
    is($g && $g->{data}{key}, $ka, 'own: alice still gets her session');
    ok(has([list_keys($alice)], $ka), 'own: and lists it');

    # uids, with the same sender name
    my $u1 = client('/uid?uid=u1&sender=same');
    my $u2 = client('/uid?uid=u2&sender=same');
    my $k1 = key_is($u1, { peerId => 'Q' }, 'agent:main:webhook:uid:u1:dm:q', 'uid u1 session');
    my $k2 = key_is($u2, { peerId => 'Q' }, 'agent:main:webhook:uid:u2:dm:q', 'uid u2 session');
    my @l2 = list_keys($u2);
    ok(has(\@l2, $k2) && !has(\@l2, $k1), 'own: uid u2 lists its session, not u1\'s')
        or diag "@l2";
    my $r = ctl($u2, { type => 'session.get', key => $k1 });
    ok($r && $r->{error} && !$r->{data}{key}, 'own: uid u2 cannot get u1\'s session')
        or diag encode_json($r);
    $r = ctl($u2, { type => 'session.reset', key => $k1 });
    ok($r && $r->{error}, 'own: nor reset it');
    ok(!grep({ $_->{params}{key} eq $k1 } $gw->requests('sessions.reset')),
       'own: no reset of the u1 session reached the gateway');

    # all: every session of the uid (and agent), never another uid's
    my $carol = client('/all?uid=u1&sender=carol');
    my $kc = key_is($carol, { peerId => 'PC' }, 'agent:main:webhook:uid:u1:dm:pc',
                    'all: carol\'s session in uid u1');
    my $dave = client('/all?uid=u1&sender=dave');
    my @dl = list_keys($dave);
    ok(has(\@dl, $kc), 'all: dave lists carol\'s session of the same uid') or diag "@dl";
    ok(has(\@dl, $k1), 'all: and the uid\'s sessions made on another location');
    ok(!has(\@dl, $k2), 'all: but not uid u2\'s');
    ok(!grep({ !/^agent:main:webhook:uid:u1:/ } @dl),
       'all: every listed key is in uid u1\'s namespace') or diag "@dl";
    $g = ctl($dave, { type => 'session.get', key => $kc });
    is($g && $g->{data}{key}, $kc, 'all: dave gets carol\'s session');
    is($g && $g->{data}{messagesIn}, 1, 'all: with its counters');

    my $eve = client('/all?uid=u2&sender=eve');
    my @el = list_keys($eve);
    ok(has(\@el, $k2), 'all: uid u2 lists its session');
    ok(!grep({ /:uid:u1:/ } @el), 'all: uid u2 lists none of uid u1\'s') or diag "@el";
    $r = ctl($eve, { type => 'session.get', key => $kc });
    ok($r && $r->{error} && !$r->{data}{key}, 'all: uid u2 cannot get u1\'s session')
        or diag encode_json($r);
    $r = ctl($eve, { type => 'session.delete', key => $kc });
    ok($r && $r->{error}, 'all: nor delete it');
    ok(!grep({ $_->{params}{key} eq $kc } $gw->requests('sessions.delete')),
       'all: no delete of the u1 session reached the gateway');

    # all, another agent with the same uid: README, "every session of its
    # uid and agent"
    my $ops = client('/all-ops?uid=u1&sender=olga');
    my $ko = key_is($ops, { peerId => 'PO' }, 'agent:ops:webhook:uid:u1:dm:po',
                    'all: a session of agent ops in uid u1');
    @dl = list_keys($dave);
    ok(!has(\@dl, $ko), 'all: agent main\'s list has no session of agent ops')
        or diag "@dl";
    my @ol = list_keys($ops);
    ok(has(\@ol, $ko), 'all: agent ops lists its session');
    ok(!has(\@ol, $kc), 'all: agent ops\'s list has no session of agent main')
        or diag "@ol";

    # all without a uid: never the uid-routed sessions
    my $nou = client('/all?sender=nobody');
    my @nl = list_keys($nou);
    ok(!grep({ /^agent:main:webhook:uid:/ } @nl),
       'all without uid: no uid-routed session listed')
        or diag "@nl";
    ok(has(\@nl, $ka), 'all without uid: the sessions of other senders are listed');
    ok(!grep({ !/^agent:main:/ } @nl), 'all without uid: only agent main\'s sessions')
        or diag "@nl";

    # off
    my $off = client('/off');
    key_is($off, {}, qr/^agent:main:webhook:conn:/, 'off: chat still works');
    for my $type (qw(session.list session.get session.reset session.delete)) {
        my $r = ctl($off, { type => $type, key => $ka, id => "off-$type" });
        like($r && $r->{error}, qr/disabled/, "off: $type refused")
            or diag encode_json($r);
        ok($r && !$r->{data}{sessions} && !$r->{data}{key}, "off: $type: no data");
    }

    $_->close for $alice, $bob, $u1, $u2, $carol, $dave, $eve, $ops, $nou, $off;
}

###########################################################################
# control replies: shapes, ids, errors; reset and delete with admin

{
    my $c = client('/snd?sender=erin');
    my $key = key_is($c, { session => 'Erin-K' }, 'agent:main:webhook:session:erin-k', 'erin\'s session');

    my ($l, $raw) = ctl($c, { type => 'session.list', id => 7 });
    is($l && $l->{type}, 'session.list', 'list: type');
    like($raw // '', qr/"id":7[,}]/, 'list: integer id echoed as an integer');
    ok($l && ref $l->{data}{sessions} eq 'ARRAY', 'list: data.sessions is an array');
    is($l && $l->{data}{count}, $l && scalar @{ $l->{data}{sessions} }, 'list: data.count');
    ok(!exists $l->{error}, 'list: no error');
    my ($row) = grep { $_->{key} eq $key } @{ $l->{data}{sessions} // [] };
    ok($row, 'list: erin\'s session');
    my $gwrow = $gw->session($key);
    is($row && $row->{sessionId}, $gwrow && $gwrow->{sessionId}, 'list row: the gateway\'s sessionId');
    is($row && $row->{updatedAt}, $gwrow && $gwrow->{updatedAt}, 'list row: the gateway\'s updatedAt');
    is($row && $row->{totalTokens}, 14, 'list row: the gateway\'s totalTokens');
    is($row && $row->{model}, 'fake-model', 'list row: the gateway\'s model');
    is($row && $row->{agentId}, 'main', 'list row: agentId');
    is($row && $row->{messagesIn}, 1, 'list row: messagesIn');
    is($row && $row->{messagesOut}, 1, 'list row: messagesOut');
    is($row && $row->{inFlight}, 0, 'list row: inFlight');

    ($l, $raw) = ctl($c, { type => 'session.list', id => 'L-1' });
    like($raw // '', qr/"id":"L-1"/, 'list: string id echoed as a string');

    my ($g, $graw) = ctl($c, { type => 'session.get', key => 'Erin-K', id => 'g1' });
    is($g && $g->{data}{key}, $key, 'get by bare key: the canonical key');
    is($g && $g->{data}{sessionId}, $gwrow && $gwrow->{sessionId}, 'get: the gateway\'s sessionId');
    is($g && $g->{id}, 'g1', 'get: id');
    is($g && $g->{data}{messagesIn}, 1, 'get: messagesIn');

    ($g, $graw) = ctl($c, { type => 'session.get', key => 'no-such-session', id => 'g2' });
    is($g && $g->{data}{error}, 'Session not found', 'get unknown: data.error');
    is($g && $g->{error}, 'Session not found', 'get unknown: top-level error');
    like($graw // '', qr/"id":"g2"/, 'get unknown: id echoed');

    ($g, $graw) = ctl($c, { type => 'session.get' });
    like($g && $g->{error}, qr/missing field "key"/, 'get without key: names the field');
    is($g && $g->{data}{error}, $g && $g->{error}, 'get without key: data.error too');
    ok($g && !exists $g->{id}, 'get without key: no id');
    ($g, $graw) = ctl($c, { type => 'session.get', id => 5 });
    like($graw // '', qr/"id":5[,}]/, 'get without key, integer id: echoed');
    like($g && $g->{error}, qr/key/, 'get without key, integer id: the error');

    ($g) = ctl($c, { type => 'session.get', key => 'agent:ops:x', id => 'g3' });
    like($g && $g->{error}, qr/agent/, 'get of another agent\'s key: refused');

    # reset on a key nobody has: not found, and no sessions.reset (which
    # would create it)
    my $r = ctl($c, { type => 'session.reset', key => 'never-made', id => 'r0' });
    is($r && $r->{error}, 'Session not found', 'reset of an unknown session: not found');
    ok(!grep({ $_->{params}{key} eq 'agent:main:webhook:session:never-made' } $gw->requests('sessions.reset')),
       'reset of an unknown session: nothing sent to the gateway');
    ok(!$gw->session('agent:main:webhook:session:never-made'), 'and the gateway did not make it');

    # reset with admin
    my $old = $gwrow->{sessionId};
    my $rraw;
    ($r, $rraw) = ctl($c, { type => 'session.reset', key => 'Erin-K', id => 'r1' });
    is($r && $r->{type}, 'session.reset', 'reset: type');
    ok($r && $r->{data}{success}, 'reset: success') or diag encode_json($r);
    is($r && $r->{data}{key}, $key, 'reset: the key');
    is($r && $r->{id}, 'r1', 'reset: id');
    ok($r && !exists $r->{error}, 'reset: no error');
    my @resets = grep { $_->{params}{key} eq $key } $gw->requests('sessions.reset');
    is(scalar @resets, 1, 'reset: the gateway got one sessions.reset for the key');
    my $res = gw_answer($resets[0]);
    ok($res && $res->{ok}, 'reset: the gateway accepted it (admin granted)');
    my @done = $gw->records(kind => 'session', action => 'reset', key => $key);
    is(scalar @done, 1, 'reset: the gateway reset the session');
    ($g) = ctl($c, { type => 'session.get', key => $key });
    is($g && $g->{data}{sessionId}, $old, 'reset: session.get shows the gateway\'s sessionId');
    is($g && $g->{data}{totalTokens}, 0, 'reset: and its row after the reset');
    is($g && $g->{data}{messagesIn}, 1, 'reset: the zone record stays');

    # delete with admin
    my $d = ctl($c, { type => 'session.delete', key => $key, id => 99 });
    ok($d && $d->{data}{success}, 'delete: success') or diag encode_json($d);
    is($d && $d->{data}{key}, $key, 'delete: the key');
    is($d && $d->{id}, 99, 'delete: id');
    my @dels = grep { $_->{params}{key} eq $key } $gw->requests('sessions.delete');
    is(scalar @dels, 1, 'delete: the gateway got one sessions.delete for the key');
    ok(!$gw->session($key), 'delete: the gateway no longer has it');
    ok(!has([list_keys($c)], $key), 'delete: gone from session.list');
    ($g) = ctl($c, { type => 'session.get', key => $key });
    is($g && $g->{error}, 'Session not found', 'delete: session.get finds nothing');
    # a session the gateway never had (it refused the message): delete
    # drops the zone's record without asking the gateway
    my $m = chat($c, id => 'ae', session => 'erin-refused', content => "{{ack_error}} erin $$");
    is($m && $m->{type}, 'error', 'a message the gateway refuses');
    my $rk = 'agent:main:webhook:session:erin-refused';
    ok(!$gw->session($rk), 'the gateway has no such session');
    ($g) = ctl($c, { type => 'session.get', key => $rk });
    is($g && $g->{data}{key}, $rk, 'the zone has it');
    like($g && $g->{data}{lastError}, qr/refused/, 'with its last error');
    is($g && $g->{data}{messagesOut}, 1, 'and its error counted out');
    my $zcount = sub { (grep { $_->{name} eq 's' } @{ status()->{zones} // [] })[0]{sessions} };
    my $zs = $zcount->();
    my $nd = () = $gw->requests('sessions.delete');
    $d = ctl($c, { type => 'session.delete', key => $rk, id => 'zd' });
    ok($d && $d->{data}{success}, 'delete of a zone-only session: success')
        or diag encode_json($d);
    is(scalar(() = $gw->requests('sessions.delete')), $nd,
       'delete of a zone-only session: nothing sent to the gateway');
    ($g) = ctl($c, { type => 'session.get', key => $rk });
    is($g && $g->{error}, 'Session not found', 'delete of a zone-only session: gone');
    is($zcount->(), $zs - 1, 'the zone counts one session less');

    # the key works again afterwards: a new session
    key_is($c, { session => 'Erin-K' }, 'agent:main:webhook:session:erin-k', 'a message after the delete');
    ok($gw->session($key), 'the gateway has a session again');
    ($g) = ctl($c, { type => 'session.get', key => $key });
    is($g && $g->{data}{messagesIn}, 1, 'a fresh zone record');
    $c->close;
}

###########################################################################
# the gateway's sessions in the namespace, over several pages of
# sessions.list (100 rows a page)

{
    my @seed = map { { key => sprintf('agent:pager:webhook:dm:seed-%03d', $_),
                       updatedAt => 1_000_000 + $_, label => "seed $_" } } 0 .. 229;
    $gw->seed_sessions(@seed, { key => 'agent:pager:other:x', updatedAt => 5 });
    my $p = client('/pager');
    my $mine = key_is($p, { peerId => 'pp' }, 'agent:pager:webhook:dm:pp', 'pager session');
    my $before = () = $gw->requests('sessions.list');
    my $l = ctl($p, { type => 'session.list', id => 'pg' }, 20);
    my @keys = map { $_->{key} } @{ $l && $l->{data}{sessions} // [] };
    my @seeds = grep { /seed-/ } @keys;
    is(scalar @seeds, 230, 'all: the 230 gateway sessions of the namespace, from 3 pages');
    ok(has(\@keys, $mine), 'all: and the zone\'s session');
    ok(!has(\@keys, 'agent:pager:other:x'), 'all: not a key outside agent:pager:webhook');
    is($l && $l->{data}{count}, scalar @keys, 'count');
    my @pages = ($gw->requests('sessions.list'))[$before .. $before + 10];
    @pages = grep { defined } @pages;
    my @offsets = map { $_->{params}{offset} // 0 } @pages;
    ok(scalar(grep { $_ == 100 } @offsets) && scalar(grep { $_ == 200 } @offsets),
       'the bridge paged through sessions.list') or diag "@offsets";
    ok(!grep({ ($_->{params}{limit} // 0) > 100 } @pages), 'pages of at most 100');

    my $g = ctl($p, { type => 'session.get', key => 'agent:pager:webhook:dm:seed-000' }, 20);
    is($g && $g->{data}{key}, 'agent:pager:webhook:dm:seed-000',
       'all: session.get finds a gateway session on the last page');
    is($g && $g->{data}{label}, 'seed 0', 'with the gateway\'s fields');
    ok($g && !exists $g->{data}{messagesIn}, 'and no zone counters');

    # own does not see them
    my $o = client('/ps');
    $g = ctl($o, { type => 'session.get', key => 'agent:main:webhook:dm:zz' });
    is($g && $g->{error}, 'Session not found', 'own: a session nobody made: not found');
    $_->close for $p, $o;
}

###########################################################################
# reload: the zone keeps the sessions and their counters

{
    my $c = client('/snd?sender=rl');
    my $cc = client('/ps');
    my $key = key_is($c, {}, 'agent:main:webhook:sender:rl', 'reload: first message');
    key_is($c, {}, $key, 'reload: second message');
    my $ck = key_is($cc, {}, qr/^agent:main:webhook:conn:/, 'reload: a per-connection session');
    my $all = client('/all');
    my %before = map { $_->{key} => $_ } grep { defined $_->{messagesIn} } list_rows($all);
    $all->close;
    is($before{$key} && $before{$key}{messagesIn}, 2, 'before the reload: messagesIn 2');
    is($before{$key} && $before{$key}{messagesOut}, 2, 'before the reload: messagesOut 2');
    my $zs_before = (grep { $_->{name} eq 's' } @{ status()->{zones} })[0]{sessions};

    my @old = $ngx->worker_pids;
    my @new = $ngx->reload;
    ok(@new == 2, 'reload: two new workers');

    # the old workers close their clients with 1001
    for my $x ($c, $cc) {
        my $deadline = time + 10;
        while (!$x->closed && !$x->raw->{eof} && time < $deadline) {
            $x->next_frame(0.5);
        }
        is($x->closed && $x->closed->[0], 1001, 'reload: a client got close 1001');
        $x->close;
    }
    ok($gw->wait_until(sub { links_up(4) }, 15), 'reload: the new workers linked');

    my $n = client('/snd?sender=rl');
    my @rows = list_rows($n);
    my ($row) = grep { $_->{key} eq $key } @rows;
    ok($row, 'after the reload: the session is listed');
    is($row && $row->{messagesIn}, 2, 'after the reload: messagesIn unchanged');
    is($row && $row->{messagesOut}, 2, 'after the reload: messagesOut unchanged');
    is($row && $row->{createdAt}, $before{$key}{createdAt}, 'after the reload: createdAt unchanged');

    $all = client('/all');
    my %after = map { $_->{key} => $_ } grep { defined $_->{messagesIn} } list_rows($all);
    $all->close;
    ok($after{$ck}, 'after the reload: the per-connection session is still in the zone');
    is($after{$ck} && $after{$ck}{messagesIn}, $before{$ck}{messagesIn},
       'after the reload: its counters unchanged');
    my @lost = grep { !$after{$_} } keys %before;
    ok(!@lost, 'after the reload: no zone record lost') or diag "@lost";
    my $zs_after = (grep { $_->{name} eq 's' } @{ status()->{zones} })[0]{sessions};
    is($zs_after, $zs_before, 'after the reload: the zone holds as many sessions');

    my $sends = grep { $_->{params}{sessionKey} eq $key } $gw->requests('chat.send');
    key_is($n, {}, $key, 'after the reload: the same sender continues the same session');
    my $sends2 = grep { $_->{params}{sessionKey} eq $key } $gw->requests('chat.send');
    is($sends2, $sends + 1, 'after the reload: the gateway got chat.send on that sessionKey');
    my ($g) = ctl($n, { type => 'session.get', key => $key });
    is($g && $g->{data}{messagesIn}, 3, 'after the reload: messagesIn goes on from 2');
    $n->close;
}

$ngx->stop;

###########################################################################
# a tiny zone fills up

{
    my $tiny = OCB->new(http => <<"EOF");
openclaw_gateway ws://127.0.0.1:@{[ $gw->port ]};
openclaw_gateway_token $TOKEN;
openclaw_bridge_zone tiny:32k;

server {
    listen 127.0.0.1:%%PORT%%;
    location = /t {
        openclaw_bridge;
        openclaw_bridge_session_zone tiny;
        openclaw_bridge_max_in_flight 1000;
        openclaw_bridge_max_sessions_in_flight 1000;
    }
    location = /status { openclaw_bridge_status; }
}
EOF
    ok($gw->wait_until(sub { links_up(1, $tiny) }, 15), 'tiny: linked');
    my $zone = sub {
        my $st = status($tiny) or return {};
        return (grep { $_->{name} eq 'tiny' } @{ $st->{zones} })[0] // {};
    };
    is($zone->()->{size}, 32768, 'tiny: a zone of 32k');

    my $c = RelayClient->new($tiny, path => '/t');
    my $k = sub { sprintf 'agent:main:webhook:session:tk-%03d', $_[0] };
    my @hung;

    # the least recently used session has a message in flight
    $c->send_json({ id => 'hang-0', session => 'tk-000', content => "{{hang}} tk 0 $$" });
    ok($gw->wait_until(sub { grep { $_->{params}{sessionKey} eq $k->(0) }
                             $gw->requests('chat.send') }, 5),
       'tiny: the first session has a message in flight');

    my $n = 0;
    my $cap;
    while ($n < 400) {
        $n++;
        my $r = chat($c, id => "f$n", session => sprintf('tk-%03d', $n));
        if (!$r || $r->{type} ne 'complete') {
            fail("tiny: session $n completes") ;
            diag encode_json($r);
            last;
        }
        if (($zone->()->{evicted} // 0) > 0) { $cap = $n; last }
    }
    ok($cap, "tiny: the zone filled up after " . ($cap // '?') . ' sessions');
    my $z = $zone->();
    is($z->{evicted}, 1, 'tiny: one session evicted');
    is($z->{sessions}, $cap, 'tiny: as many sessions as before the last one');
    ok($tiny->wait_log(qr/openclaw_bridge_zone "tiny" full: evicted 1 least recently used session, the last "\Q${\ $k->(1)}\E"/, 3),
       'tiny: a notice names the zone and the evicted session, the LRU idle one')
        or diag join "\n", grep { /evict|full/ } split /\n/, $tiny->error_log;

    # (the order of session.list is not documented: compared as sets)
    my @zk = map { $_->{key} } grep { defined $_->{messagesIn} } list_rows($c);
    my @want = ((map { $k->($_) } reverse 2 .. $cap), $k->(0));
    is(join(' ', sort @zk), join(' ', sort @want),
       'tiny: the zone holds the rest, the hung one included');

    # touch the oldest idle one: the next eviction takes the one after it
    my $r = chat($c, id => 'touch', session => 'tk-002');
    is($r && $r->{type}, 'complete', 'tiny: touching tk-002');
    $r = chat($c, id => 'next', session => sprintf('tk-%03d', $cap + 1));
    is($r && $r->{type}, 'complete', 'tiny: one more session');
    ok($tiny->wait_log(qr/evicted 1 least recently used session, the last "\Q${\ $k->(3)}\E"/, 3),
       'tiny: the touched session stays, tk-003 is evicted')
        or diag join "\n", grep { /evict/ } split /\n/, $tiny->error_log;
    @zk = map { $_->{key} } grep { defined $_->{messagesIn} } list_rows($c);
    @want = ($k->($cap + 1), $k->(2), (map { $k->($_) } reverse 4 .. $cap), $k->(0));
    is(join(' ', sort @zk), join(' ', sort @want), 'tiny: the sessions kept after the touch');
    my ($h) = grep { $_->{key} eq $k->(0) } list_rows($c);
    is($h && $h->{inFlight}, 1, 'tiny: the hung session is still there, in flight');
    is($zone->()->{evicted}, 2, 'tiny: two evictions in all');

    # every session in flight: a new one is refused, nothing is lost
    my @live = grep { $_ ne $k->(0) } @zk;
    my $i = 0;
    for my $key (@live) {
        (my $bare = $key) =~ s/^agent:main:webhook:session://;
        $c->send_json({ id => 'h' . ++$i, session => $bare, content => "{{hang}} $bare $$" });
    }
    ok($gw->wait_until(sub { $i <= grep { $_->{params}{message} =~ /^\{\{hang\}\} tk-/ }
                                   $gw->requests('chat.send') }, 10),
       'tiny: a message in flight in every session');
    my $sessions = $zone->()->{sessions};
    $r = chat($c, id => 'nofit', session => 'tk-999', content => "no room $$");
    is($r && $r->{type}, 'error', 'tiny: a new session when all are in flight: an error');
    like($r && $r->{error}, qr/no room|full/, 'tiny: the error says the zone is full');
    is($r && $r->{session}, $k->(999), 'tiny: for that session');
    ok(!defined gw_key("no room $$"), 'tiny: not sent to the gateway');
    is($zone->()->{evicted}, 2, 'tiny: nothing evicted');
    is($zone->()->{sessions}, $sessions, 'tiny: every session kept');
    @zk = map { $_->{key} } grep { defined $_->{messagesIn} } list_rows($c);
    is(scalar @zk, $sessions, 'tiny: all listed');
    ok(!grep({ $_->{inFlight} < 1 } grep { defined $_->{messagesIn} } list_rows($c)),
       'tiny: all in flight');

    # the hung runs end: every message gets its complete
    my @runs = map { $_->{params}{idempotencyKey} }
               grep { $_->{params}{message} =~ /^\{\{hang\}\}/ } $gw->requests('chat.send');
    $gw->action('finish', runId => $_) for @runs;
    my @ids = ('hang-0', map { "h$_" } 1 .. $i);
    my @f = $c->until_terminal(\@ids, 15);
    my %done = map { $_->{json}{id} => $_->{json}{type} }
               grep { $_->{json} && ($_->{json}{type} // '') =~ /^(complete|error)$/ } @f;
    is(scalar(grep { ($done{$_} // '') eq 'complete' } @ids), scalar @ids,
       'tiny: every hung message completes once its run ends');
    ok(!grep({ $_->{inFlight} } list_rows($c)), 'tiny: nothing in flight any more');
    $r = chat($c, id => 'fits', session => 'tk-998');
    is($r && $r->{type}, 'complete', 'tiny: a new session fits again');
    is($zone->()->{evicted}, 3, 'tiny: by evicting one');

    $c->close;
    $tiny->stop;
}

###########################################################################
# reset and delete without openclaw_gateway_admin

{
    my $na = OCB->new(http => <<"EOF");
openclaw_gateway ws://127.0.0.1:@{[ $gw->port ]};
openclaw_gateway_token $TOKEN;
openclaw_bridge_zone s2:64k;
openclaw_bridge_session_zone s2;

server {
    listen 127.0.0.1:%%PORT%%;
    location = /snd { openclaw_bridge; openclaw_bridge_sender \$arg_sender; }
    location = /nozone { openclaw_bridge; openclaw_bridge_session_zone off; }
    location = /nozone-all {
        openclaw_bridge;
        openclaw_bridge_session_zone off;
        openclaw_bridge_session_control all;
    }
}
EOF
    ok($gw->wait_until(sub { links_up(1, $na) }, 15), 'no admin: linked');
    my $hello = ($gw->records(kind => 'hello'))[-1];
    ok($hello && !grep({ $_ eq 'operator.admin' } @{ $hello->{scopes} }),
       'no admin: the link was granted no operator.admin');

    my $c = RelayClient->new($na, path => '/snd?sender=frank');
    my $m = chat($c, id => 'na1', session => 'frank-k', content => "frank $$");
    is($m && $m->{type}, 'complete', 'no admin: a session');
    my $key = 'agent:main:webhook:session:frank-k';
    my $sid = $gw->session($key)->{sessionId};

    for my $type (qw(session.reset session.delete)) {
        (my $method = $type) =~ s/session/sessions/;
        my $before = () = $gw->requests($method);
        my $r = ctl($c, { type => $type, key => $key, id => "na-$type" });
        is($r && $r->{type}, $type, "no admin: $type: type");
        ok($r && !$r->{data}{success}, "no admin: $type: no success");
        like($r && $r->{error}, qr/operator\.admin/, "no admin: $type: names the missing scope")
            or diag encode_json($r);
        like($r && $r->{error}, qr/openclaw_gateway_admin/,
             "no admin: $type: mentions openclaw_gateway_admin");
        is($r && $r->{data}{error}, $r && $r->{error}, "no admin: $type: data.error too");
        is($r && $r->{id}, "na-$type", "no admin: $type: id");
        my @after = $gw->requests($method);
        is(scalar @after, $before + 1, "no admin: the gateway got the $method");
        is($after[-1] && $after[-1]{params}{key}, $key, "no admin: $method of the key");
        my $res = gw_answer($after[-1]);
        is($res && $res->{error}{details}{code}, 'MISSING_SCOPE',
           "no admin: and answered MISSING_SCOPE");
    }
    is($gw->session($key) && $gw->session($key)->{sessionId}, $sid,
       'no admin: the gateway\'s session is untouched');
    my ($g) = ctl($c, { type => 'session.get', key => $key });
    is($g && $g->{data}{key}, $key, 'no admin: the session is still there');

    # without a zone, own has nothing to go by; all lists the gateway's
    # sessions of the namespace
    my $nz = RelayClient->new($na, path => '/nozone');
    my $nk = key_is($nz, {}, qr/^agent:main:webhook:conn:/, 'no zone: chat works');
    $g = ctl($nz, { type => 'session.list', id => 'nz' });
    like($g && $g->{error}, qr/openclaw_bridge_session_zone/,
         'no zone, own: session control needs a zone, says so');
    my $na_all = RelayClient->new($na, path => '/nozone-all');
    my @k = map { $_->{key} } @{ (ctl($na_all, { type => 'session.list' }) // {})->{data}{sessions} // [] };
    ok(has(\@k, $nk), 'no zone, all: the gateway\'s session of the namespace is listed') or diag "@k";
    ok(!grep({ !/^agent:main:webhook:/ } @k), 'no zone, all: only keys of the namespace');

    $_->close for $c, $nz, $na_all;
    $na->stop;
}

$gw->stop;
note sprintf 'total %.1f s', time - $T0;

done_testing;
