#!/usr/bin/perl

# The chat relay against a scripted fake gateway (t/lib/FakeGateway.pm):
# several clients on two workers, pipelined and interleaved messages,
# each client gets exactly its own replies (progress with cumulative
# content and deltas, then one complete), ids echoed with their JSON type,
# session keys, idempotency keys, foreign runs never forwarded, bad input
# answered with specific errors and never sent on, ignored message types,
# the connect frame and upgrade request the gateway sees, and no token in
# the logs, even at debug level.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Digest::SHA qw(sha256_hex);
use Mojo::JSON qw(decode_json encode_json);
use Time::HiRes qw(sleep time);

use OCB;
use FakeGateway;
use RelayClient;

my $TOKEN = 'tok-7Qz9-SECRET-5f3a9c1e';

my $gw = FakeGateway->new(token => $TOKEN, foreign => 1, deltas => 3,
                          delta_ms => 10);

my $ngx = OCB->new(
    workers => 2,
    # a debug log next to the normal one: the token must not be in either
    main => 'error_log logs/debug.log debug;',
    http => <<"EOF");
openclaw_gateway ws://127.0.0.1:@{[ $gw->port ]};
openclaw_gateway_token $TOKEN;

server {
    listen 127.0.0.1:%%PORT%%;

    location / {
        openclaw_bridge;
    }

    location /ops {
        openclaw_bridge;
        openclaw_bridge_agent_id Ops;
    }

    # the Go bridge's keys: the agent's whole namespace, on purpose
    location /gb {
        openclaw_bridge;
        openclaw_bridge_agent_id Ops;
        openclaw_bridge_session_namespace agent;
    }

    location /s {
        openclaw_bridge;
        openclaw_bridge_sender \$arg_sender;
    }
}
EOF

sub links_up {
    my ($n) = @_;
    my @up = $ngx->error_log =~ /gateway link up/g;
    return @up >= $n;
}

ok($gw->wait_until(sub { links_up(2) }, 10), 'both workers linked to the gateway')
    or diag $ngx->error_log;

# the chat.send requests the gateway got, by message text
sub sends_by_message {
    my %by;
    push @{ $by{ $_->{params}{message} } }, $_ for $gw->requests('chat.send');
    return %by;
}

# replies of one client, grouped by id (as JSON text, so 7 and "7" differ)
sub by_id {
    my (@frames) = @_;
    my %by;
    for my $f (@frames) {
        my $j = $f->{json} or next;
        my $k = exists $j->{id} ? encode_json($j->{id}) : 'none';
        push @{ $by{$k} }, $f;
    }
    return %by;
}

# progress* then exactly one complete, cumulative content, deltas adding up
sub check_stream {
    my ($name, $frames, $text) = @_;
    my @types = map { $_->{json}{type} // '?' } @$frames;
    my $ok = 1;
    my @complete = grep { $_ eq 'complete' } @types;
    $ok &&= is(scalar @complete, 1, "$name: exactly one complete")
        or diag "types: @types";
    $ok &&= is($types[-1], 'complete', "$name: complete comes last");
    my @progress = grep { $_->{json}{type} eq 'progress' } @$frames;
    $ok &&= cmp_ok(scalar @progress, '>=', 1, "$name: progress before complete");
    my @p = RelayClient::delta_problems(map { $_->{json} } @$frames);
    $ok &&= ok(!@p, "$name: each content, the complete's too, is the "
                    . 'deltas so far')
        or diag join "\n", @p, map { $_->{payload} } @$frames;
    $ok &&= is($frames->[-1]{json}{content}, $text, "$name: complete content");
    return $ok;
}

###########################################################################
# what the gateway saw of the link

{
    my @c = $gw->connects;
    is(scalar @c, 2, 'one gateway connect per worker');
    for my $i (0 .. $#c) {
        my $p = $c[$i]{params};
        is($p->{auth}{token}, $TOKEN, "connect $i: the token");
        ok(!exists $p->{auth}{password}, "connect $i: no password");
        is($p->{minProtocol}, 3, "connect $i: minProtocol 3");
        is($p->{maxProtocol}, 4, "connect $i: maxProtocol 4");
        is($p->{client}{id}, 'gateway-client', "connect $i: client.id");
        is($p->{client}{mode}, 'backend', "connect $i: client.mode");
        is($p->{role}, 'operator', "connect $i: role");
        ok(grep({ $_ eq 'operator.write' } @{ $p->{scopes} // [] }),
           "connect $i: asks for operator.write");
    }
    my @u = $gw->upgrades;
    is(scalar @u, 2, 'two upgrade requests');
    for my $i (0 .. $#u) {
        my %h = map { lc($_) => $u[$i]{headers}{$_} } keys %{ $u[$i]{headers} };
        ok(!exists $h{origin}, "upgrade $i: no Origin header");
        my @fwd = grep { /^(x-forwarded-|forwarded$|x-real-ip$)/ } keys %h;
        ok(!@fwd, "upgrade $i: no forwarding headers") or diag "@fwd";
        is($h{host}, '127.0.0.1:' . $gw->port, "upgrade $i: loopback Host");
    }
}

###########################################################################
# five clients, four messages each, pipelined and interleaved

{
    my @clients = map { RelayClient->new($ngx) } 0 .. 4;
    my (%ids, %texts);

    for my $k (0 .. 3) {
        for my $i (0 .. $#clients) {
            # string and integer ids alternate
            my $id = $k % 2 ? 100 * ($i + 1) + $k : "c$i-m$k";
            my $content = "client $i message $k" . ($k == 2 ? " caf\x{e9} \x{2713}" : '')
                        . ('.' x ($i * 3 + $k));
            push @{ $ids{$i} }, $id;
            $texts{$i}{ encode_json($id) } = $content;
            $clients[$i]->send_json({ id => $id, content => $content });
        }
    }

    my (%session_of, %all_sessions);
    for my $i (0 .. $#clients) {
        my $c = $clients[$i];
        my @frames = $c->until_terminal($ids{$i}, 15);
        push @frames, $c->drain(0.3);       # anything late, or repeated
        my %by = by_id(@frames);

        my @strangers = grep { !exists $texts{$i}{$_} } keys %by;
        ok(!@strangers, "client $i: replies only for its own ids")
            or diag "unexpected ids: @strangers";

        my @leaks = grep { $_->{payload} =~ /FOREIGN|NOISE/ } @frames;
        ok(!@leaks, "client $i: no foreign run or non-chat event reached it")
            or diag join "\n", map { $_->{payload} } @leaks;

        my @bad = grep { !$_->{json} || ($_->{json}{type} // '') !~ /^(progress|complete)$/ }
                  @frames;
        ok(!@bad, "client $i: only progress and complete messages")
            or diag join "\n", map { $_->{payload} } @bad;

        for my $id (@{ $ids{$i} }) {
            my $key = encode_json($id);
            my $fr = $by{$key} // [];
            check_stream("client $i id $key", $fr, 'echo: ' . $texts{$i}{$key});
            my $raw_id = ref \$id eq 'SCALAR' && $id =~ /^\d+$/
                ? qr/"id":\Q$id\E[,}]/ : qr/"id":"\Q$id\E"/;
            my @typed = grep { $_->{payload} =~ $raw_id } @$fr;
            is(scalar @typed, scalar @$fr,
               "client $i id $key: echoed with its JSON type");
        }

        my %s = map { ($_->{json}{session} // '') => 1 } grep { $_->{json} } @frames;
        is(scalar keys %s, 1, "client $i: one session for all its messages");
        my ($s) = keys %s;
        like($s, qr/^agent:main:webhook:\S+$/,
             "client $i: per-connection fallback session key");
        $session_of{$i} = $s;
        $all_sessions{$s}++;
    }
    is(scalar keys %all_sessions, 5, 'each connection has a session of its own');

    # the gateway side of the same messages
    my %sends = sends_by_message();
    my %keys;
    for my $i (0 .. $#clients) {
        for my $id (@{ $ids{$i} }) {
            my $text = $texts{$i}{ encode_json($id) };
            my $s = $sends{$text} // [];
            is(scalar @$s, 1, "gateway got client $i id $id once");
            next unless @$s;
            is($s->[0]{params}{sessionKey}, $session_of{$i},
               "client $i id $id: sessionKey as in the replies");
            like($s->[0]{params}{idempotencyKey}, qr/^wh-[0-9a-f]{32}$/,
                 "client $i id $id: idempotencyKey wh-<32 hex>");
            $keys{ $s->[0]{params}{idempotencyKey} }++;
        }
    }
    is(scalar keys %keys, 20, '20 messages, 20 distinct idempotency keys');

    my %conns = map { $_->{conn} => 1 } $gw->requests('chat.send');
    diag 'chat.send came over ' . scalar(keys %conns) . ' gateway connection(s)';

    $_->close for @clients;
}

###########################################################################
# session keys (webhook-bridge-compat.md 3)

{
    my $root = RelayClient->new($ngx);
    my $ops = RelayClient->new($ngx, path => '/ops');
    my $gb = RelayClient->new($ngx, path => '/gb');

    my @root_cases = (
        # a bare key lies under the location's namespace
        [{ id => 's1', session => '  My-Key  ' }, 'agent:main:webhook:session:my-key'],
        [{ id => 's2', session => 'Agent:Main:Webhook:Foo' }, 'agent:main:webhook:foo'],
        # a full key outside the location's namespace is refused: another
        # agent, or the agent's other channels and its main session
        [{ id => 's5', session => 'agent:ops:foo' }, 'ERROR', qr/outside this location's namespace/],
        [{ id => 's6', session => 'agent:main:telegram:dm:42' }, 'ERROR',
         qr/outside this location's namespace/],
        [{ id => 's7', session => 'agent:main:main' }, 'ERROR',
         qr/outside this location's namespace/],
        [{ id => 's3', peerId => 'U-1' }, 'agent:main:webhook:dm:u-1'],
        [{ id => 's4', session => 'S1', peerId => 'X' }, 'agent:main:webhook:session:s1'],
    );
    my @ops_cases = (
        [{ id => 'm2', peerKind => 'Group', peerId => 'G-1', threadId => '7' },
         'agent:ops:webhook:group:g-1:topic:7'],
        [{ id => 'm3', chatId => 'U-9', threadId => '5' },
         'agent:ops:webhook:dm:u-9:thread:5'],
        [{ id => 'm3b', senderId => 'S-1' }, 'agent:ops:webhook:dm:s-1'],
        [{ id => 'm5', peerId => '  ', chatId => 'C1' }, 'agent:ops:webhook:dm:c1'],
        [{ id => 'm6', peerKind => 'dm', peerId => 'P', topicId => '9' },
         'agent:ops:webhook:dm:p'],
        [{ id => 'm7', peerKind => 'channel', peerId => 'C', topicId => 'T1',
           threadId => 'X' }, 'agent:ops:webhook:channel:c:topic:t1'],
        [{ id => 'm8', chatType => 'GROUP', chatId => 'G2', topicId => 'T' },
         'agent:ops:webhook:group:g2:topic:t'],
        [{ id => 'm4', session => '  My-Key  ' }, 'agent:ops:webhook:session:my-key'],
        [{ id => 'm4b', session => 'agent:ops:Key2' }, 'ERROR',
         qr/outside this location's namespace/],
        # "direct" is not a webhook peer kind: refused, naming the field
        [{ id => 'm9', peerKind => 'direct', peerId => 'Q' }, 'ERROR', qr/peerKind/],
        [{ id => 'm10' }, 'FALLBACK'],
        [{ id => 'm11', content => 'sk-m11' }, 'FALLBACK'],
    );
    # "openclaw_bridge_session_namespace agent": the Go bridge's table
    my @gb_cases = (
        [{ id => 'g4', session => '  My-Key  ' }, 'agent:ops:my-key'],
        [{ id => 'g4b', session => 'agent:ops:Key2' }, 'agent:ops:key2'],
        [{ id => 'g5', session => 'agent:main:key3' }, 'ERROR', qr/another agent/],
        [{ id => 'g6', session => 'agent:ops:webhook:uid:u1:x' }, 'ERROR',
         qr/uid-routed/],
        [{ id => 'g3', chatId => 'U-9', threadId => '5' },
         'agent:ops:webhook:dm:u-9:thread:5'],
    );

    for my $case ([$root, \@root_cases], [$ops, \@ops_cases],
                  [$gb, \@gb_cases]) {
        my ($c, $list) = @$case;
        $c->send_json({ %{ $_->[0] }, content => "sk-$_->[0]{id}" }) for @$list;
        my @frames = $c->until_terminal([ map { $_->[0]{id} } @$list ], 10);
        my %term = map { $_->{json}{id} => $_->{json} }
                   grep { $_->{json} && ($_->{json}{type} // '') =~ /^(complete|error)$/ }
                   @frames;
        my %sends = sends_by_message();
        my $fallback;
        for my $x (@$list) {
            my ($msg, $want, $err) = @$x;
            my $r = $term{ $msg->{id} };
            my $got = $r ? $r->{session} : undef;
            my $s = $sends{"sk-$msg->{id}"};
            if ($want eq 'ERROR') {
                is($r && $r->{type}, 'error', "$msg->{id}: refused with an error")
                    or diag encode_json($r);
                like($r && $r->{error}, $err, "$msg->{id}: the error names the problem");
                ok(!$s, "$msg->{id}: not sent to the gateway");
                next;
            }
            if ($want eq 'FALLBACK') {
                like($got // '', qr/^agent:ops:webhook:conn:\S+$/,
                     "session of $msg->{id}: per-connection fallback");
                $fallback //= $got;
                is($got, $fallback, "session of $msg->{id}: the connection's one");
            } else {
                is($got, $want, "session of " . encode_json($msg));
            }
            is($s && $s->[0]{params}{sessionKey}, $got,
               "$msg->{id}: the gateway got the same sessionKey");
            is($r && $r->{type}, 'complete', "$msg->{id}: completed")
                or diag encode_json($r);
        }
    }

    $_->close for $root, $ops, $gb;
}

###########################################################################
# idempotency keys: the same for the same session and id, else different

{
    my ($a, $b) = (RelayClient->new($ngx, path => '/s?sender=ann'),
                   RelayClient->new($ngx, path => '/s?sender=ann'));

    $a->send_json({ id => 'k1', session => 'idem-a', content => 'idem 1' });
    $a->until_terminal(['k1'], 5);
    $a->send_json({ id => 'k2', session => 'idem-a', content => 'idem 2' });
    $b->send_json({ id => 'k1', session => 'idem-b', content => 'idem 3' });
    $a->until_terminal(['k2'], 5);
    $b->until_terminal(['k1'], 5);

    # the same message again, from another connection of the same sender
    my $c = RelayClient->new($ngx, path => '/s?sender=ann');
    $c->send_json({ id => 'k1', session => 'idem-a', content => 'idem 4' });
    my @f = $c->until_terminal(['k1'], 5);
    my ($t) = grep { $_->{json} && $_->{json}{type} =~ /^(complete|error)$/ } @f;
    ok($t, 'the repeated message got a reply');

    # and two messages without an id
    $a->send_json({ session => 'idem-a', content => 'noid 1' });
    $a->send_json({ session => 'idem-a', content => 'noid 2' });
    my $done = 0;
    my $deadline = time + 5;
    while ($done < 2 && time < $deadline) {
        my $j = $a->next_json($deadline - time) or last;
        $done++ if ($j->{type} // '') eq 'complete';
        ok(!exists $j->{id}, 'no id in replies to a message without one')
            if ($j->{type} // '') eq 'complete';
    }
    is($done, 2, 'both messages without an id completed');

    my %k = map { $_->{params}{message} => $_->{params}{idempotencyKey} }
            $gw->requests('chat.send');
    ok($k{'idem 1'} && $k{'idem 4'} && $k{'idem 1'} eq $k{'idem 4'},
       'same session, sender and id: same idempotencyKey');
    isnt($k{'idem 1'}, $k{'idem 2'}, 'another id: another idempotencyKey');
    isnt($k{'idem 1'}, $k{'idem 3'}, 'another session: another idempotencyKey');
    ok($k{'noid 1'} && $k{'noid 2'} && $k{'noid 1'} ne $k{'noid 2'},
       'no id: a fresh idempotencyKey each time');
    like($_, qr/^wh-[0-9a-f]{32}$/, "key $_ is wh-<32 hex>")
        for grep { defined } @k{'idem 1', 'idem 2', 'idem 3', 'noid 1', 'noid 2'};

    # the key must not change between versions of the module: a message
    # sent again after an upgrade still finds its run
    my ($s1) = grep { $_->{params}{message} eq 'idem 1' } $gw->requests('chat.send');
    is($k{'idem 1'}, 'wh-' . substr(sha256_hex(
           "$s1->{params}{sessionKey}\0sender:ann\0k1"), 0, 32),
       'the key is the first 128 bits of SHA-256 of the session key, the '
       . 'sender, and the id, each after a zero byte');

    # another sender in the same session with the same id: its own message
    my $d = RelayClient->new($ngx, path => '/s?sender=bob');
    $d->send_json({ id => 'k1', session => 'idem-a', content => 'idem 5' });
    my ($e) = grep { $_->{json} && $_->{json}{type} =~ /^(complete|error)$/ }
              $d->until_terminal(['k1'], 5);
    is($e && $e->{json}{type}, 'complete', 'another sender, same session and id: completed')
        or diag encode_json($e && $e->{json});
    is($e && $e->{json}{content}, 'echo: idem 5', '... with the reply to its own message');
    %k = map { $_->{params}{message} => $_->{params}{idempotencyKey} }
         $gw->requests('chat.send');
    ok($k{'idem 5'} && $k{'idem 5'} ne $k{'idem 1'},
       'another sender, same session and id: another idempotencyKey');

    $_->close for $a, $b, $c, $d;
}

###########################################################################
# foreign runs on our very session, with run ids shaped like ours

{
    my $c = RelayClient->new($ngx);
    $c->send_json({ id => 'fx1', session => 'fx', content => '{{slow 8 60}} fx' });

    my $first = $c->next_json(5);
    is($first && $first->{type}, 'progress', 'the slow run streams');

    my $fake = 'wh-' . join '', map { sprintf '%x', int rand 16 } 1 .. 32;
    for my $state ('delta', 'final', 'error', 'aborted') {
        $gw->action('emit', frame => {
            type => 'event', event => 'chat',
            payload => { runId => $fake, sessionKey => 'agent:main:webhook:session:fx',
                         state => $state, seq => 1, deltaText => 'FOREIGN',
                         errorMessage => 'FOREIGN error',
                         message => { role => 'assistant',
                                      content => [{ type => 'text',
                                                    text => 'FOREIGN' }] } } });
    }
    $gw->action('emit', frame => {
        type => 'event', event => 'chat',
        payload => { sessionKey => 'agent:main:webhook:session:fx', state => 'final',
                     message => { role => 'assistant',
                                  content => [{ type => 'text', text => 'FOREIGN no run id' }] } } });

    my @f = $c->until_terminal(['fx1'], 5);
    unshift @f, { json => $first, payload => encode_json($first) } if $first;
    my @leaks = grep { $_->{payload} =~ /FOREIGN/ } @f;
    ok(!@leaks, 'no event of a foreign run on the same session reached the client')
        or diag join "\n", map { $_->{payload} } @leaks;
    my @term = grep { $_->{json} && $_->{json}{type} =~ /^(complete|error)$/ } @f;
    is(scalar @term, 1, 'one terminal reply');
    is($term[0] && $term[0]{json}{type}, 'complete', 'and it is the complete');
    is($term[0] && $term[0]{json}{content}, 'echo: {{slow 8 60}} fx', 'with our text');
    $c->close;
}

###########################################################################
# the complete carries what is new since the last progress, and says
# "replace" when the final rewrites the text rather than extends it

sub ends_with_the_rest {
    my ($c, $what) = @_;
    my %text = (
        plain => 'echo: plain end',
        early => 'echo: {{final_early}} the final comes first',
        rewrite => 'echo: {{rewrite}} the final says otherwise',
    );
    $c->send_json({ id => "$what-$_", content => substr($text{$_}, 6) })
        for sort keys %text;
    my @f = $c->until_terminal([ map { "$what-$_" } sort keys %text ], 10);
    push @f, $c->drain(0.3);            # the late delta, if it came out
    my %by = by_id(@f);
    my %end;
    for my $k (sort keys %text) {
        my $fr = $by{ encode_json("$what-$k") } // [];
        check_stream("$what, $k", $fr, $text{$k});
        $end{$k} = @$fr ? $fr->[-1]{json} : {};
    }
    is($end{plain}{delta}, '', "$what: after the last delta, an empty one");
    ok(!$end{plain}{replace}, "$what: which extends the text");
    like($end{early}{delta}, qr/\S/,
         "$what: a final before the last delta: the rest in the complete");
    ok(!$end{early}{replace}, "$what: which extends the text");
    ok($end{rewrite}{replace}, "$what: a final that rewrites: replace");
    is($end{rewrite}{delta}, $text{rewrite},
       "$what: and the whole text is the delta");
}

{
    my $c = RelayClient->new($ngx);
    ends_with_the_rest($c, 'protocol 4');
    $c->close;
}

###########################################################################
# bad input: a specific error, the id when there is one, nothing sent on

{
    my $c = RelayClient->new($ngx);
    my @cases = (
        ['not JSON', 'this is not json', qr/JSON/, undef],
        ['a JSON array', '[1,2,3]', qr/object/, undef],
        ['trailing data', '{"id":"b0","content":"bad-0"} xx', qr/trailing|JSON/, undef],
        ['missing content', '{"id":"b1"}', qr/missing.*content|content.*missing/, '"b1"'],
        ['empty content', '{"id":"b2","content":""}', qr/content.*empty|empty.*content/, '"b2"'],
        ['content not a string', '{"id":"b3","content":42}', qr/content.*string/, '"b3"'],
        ['content null', '{"id":33,"content":null}', qr/content/, '33'],
        ['id an object', '{"id":{"x":1},"content":"bad-4"}', qr/\bid\b.*(string|integer)/, undef],
        ['session a number', '{"id":"b5","content":"bad-5","session":7}', qr/session/, '"b5"'],
        ['peerId an object', '{"id":"b6","content":"bad-6","peerId":{}}', qr/peerId/, '"b6"'],
    );
    for my $case (@cases) {
        my ($name, $text, $re, $id) = @$case;
        $c->send_text($text);
        my $f = $c->next_frame(3);
        my $j = $f && $f->{json};
        ok($j && ($j->{type} // '') eq 'error', "$name: an error reply")
            or diag $f ? $f->{payload} : 'nothing';
        next unless $j;
        like($j->{error} // '', $re, "$name: the error names the problem");
        if (defined $id) {
            like($f->{payload}, qr/"id":\Q$id\E[,}]/, "$name: with the id, as sent");
        } else {
            ok(!exists $j->{id}, "$name: no id") or diag $f->{payload};
        }
    }

    $c->send_binary('{"id":"b7","content":"bad-7"}');
    my $f = $c->next_frame(3);
    ok($f && $f->{json} && $f->{json}{type} eq 'error', 'binary frame: an error reply');
    like($f && $f->{json} ? $f->{json}{error} : '', qr/binary/i,
         'binary frame: the error says so');

    # the connection is still good
    $c->send_json({ id => 'good', content => 'still here' });
    my @g = $c->until_terminal(['good'], 5);
    ok((grep { $_->{json} && $_->{json}{type} eq 'complete' } @g),
       'a good message after the bad ones completes');
    ok(!$c->closed, 'the connection stayed open');

    my @sent = grep { $_->{params}{message} =~ /^bad-/ } $gw->requests('chat.send');
    ok(!@sent, 'no bad message reached the gateway')
        or diag join ', ', map { $_->{params}{message} } @sent;
    $c->close;
}

###########################################################################
# our own reply types and hub frames are ignored: no answer, nothing sent

{
    my $c = RelayClient->new($ngx);
    for my $type (qw(progress complete error connected event res)) {
        $c->send_json({ type => $type, id => "ig-$type", content => "ign-$type",
                        session => 'ign' });
    }
    # replies go out in the order of the messages: any reply to those
    # would come before the first one to the next real message
    $c->send_json({ id => 'after', content => 'after ignored' });
    my @f = $c->until_terminal(['after'], 5);
    my @other = grep { !$_->{json} || ($_->{json}{id} // '') ne 'after' } @f;
    ok(@f && !@other,
       'no reply to progress/complete/error/connected/event/res messages')
        or diag join "\n", map { $_->{payload} } @f;
    my @sent = grep { $_->{params}{message} =~ /^ign-/ } $gw->requests('chat.send');
    ok(!@sent, 'no ignored message reached the gateway');
    $c->close;
}

###########################################################################
# a protocol 3 gateway: cumulative deltas without deltaText, and the run
# that carries the reply of a message answered with an empty final

{
    my $gw3 = FakeGateway->new(token => $TOKEN, protocol => 3, deltas => 4,
                               delta_ms => 10);
    my $ngx3 = OCB->new(http => <<"EOF");
openclaw_gateway ws://127.0.0.1:@{[ $gw3->port ]};
openclaw_gateway_token $TOKEN;
server {
    listen 127.0.0.1:%%PORT%%;
    location / { openclaw_bridge; }
}
EOF
    ok($ngx3->wait_log(qr/gateway link up, protocol 3/, 5), 'protocol 3: link up');

    my $c = RelayClient->new($ngx3);
    ends_with_the_rest($c, 'protocol 3');

    $c->send_json({ id => 'v3a', content => 'three' });
    $c->send_json({ id => 'v3b', session => 'v3h', content => '{{handover}} late reply' });
    my @f = $c->until_terminal([qw(v3a v3b)], 5);
    push @f, $c->drain(0.3);
    my %by = by_id(@f);
    check_stream('protocol 3, v3a', $by{'"v3a"'} // [], 'echo: three');
    my @t = grep { $_->{json}{type} =~ /^(complete|error)$/ } @{ $by{'"v3b"'} // [] };
    is(scalar @t, 1, 'protocol 3 hand-over: one end');
    is($t[0] && $t[0]{json}{type}, 'complete', 'protocol 3 hand-over: a complete');
    is($t[0] && $t[0]{json}{content}, 'echo: {{handover}} late reply',
       'protocol 3 hand-over: with the reply of the other run');

    # the other run starts before the empty final
    $c->send_json({ id => 'v3c', session => 'v3e', content => '{{handover_early}} early' });
    @f = $c->until_terminal(['v3c'], 5);
    push @f, $c->drain(0.3);
    @t = grep { $_->{json}{type} =~ /^(complete|error)$/ } @f;
    is(scalar @t, 1, 'protocol 3 early hand-over: one end');
    is($t[0] && $t[0]{json}{content}, 'echo: {{handover_early}} early',
       'protocol 3 early hand-over: with the reply of the other run')
        or diag join "\n", map { $_->{payload} } @f;
    # what streamed in the other run before the hand-over is the start of
    # the reply, not a rewrite of it
    check_stream('protocol 3 early hand-over',
                 [grep { ($_->{json}{id} // '') eq 'v3c' } @f],
                 'echo: {{handover_early}} early')
        or diag join "\n", map { $_->{payload} } @f;
    ok(!grep({ $_->{json}{replace} } @f),
       'protocol 3 early hand-over: no progress says the text was rewritten')
        or diag join "\n", map { $_->{payload} } @f;

    $c->close;
    $ngx3->stop;
    $gw3->stop;
}

###########################################################################

$ngx->stop;
$gw->stop;

my $log = $ngx->error_log;
my $debug = $ngx->read_log('debug.log');
like($debug, qr/\[debug\].*openclaw/, 'the debug log has openclaw debug lines');
ok(index($log, $TOKEN) < 0, 'the token is not in error.log');
ok(index($debug, $TOKEN) < 0, 'the token is not in the debug log');
ok(index($ngx->read_log('stderr.log'), $TOKEN) < 0, 'nor on stderr');

done_testing;
