#!/usr/bin/perl

# The variables of a connection (README "Logging"), in the access log line
# written when an upgraded connection ends: the agent, uid and sender of
# the location, the last session used, the messages in and out and the
# errors among them, and the close code and reason: of the client's
# close, of the server's (idle timeout), 1006 for a connection lost
# without one; the close variables on an echo location; "-" for all of
# them before an upgrade and outside the module; an HTTP webhook
# request's relay variables, logged when it is answered; a map into
# $openclaw_agent, as earlier examples had, still loads.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use HTTP::Tiny;
use Time::HiRes qw(sleep time);

use OCB;
use FakeGateway;
use HttpClient;
use RelayClient;

my $TOKEN = 'tok-73-log-vars-9a41';

my @VARS = qw(openclaw_session openclaw_agent openclaw_uid openclaw_sender
              openclaw_messages_in openclaw_messages_out openclaw_errors
              openclaw_close_code openclaw_close_reason);

my $gw = FakeGateway->new(token => $TOKEN, deltas => 2, delta_ms => 5);

# tab-separated: nginx escapes a tab inside a value, not between them
my $format = join '\t', '$request_uri', '$status', map { "\$$_" } @VARS;

my $ngx = OCB->new(http => <<"EOF");
openclaw_gateway ws://127.0.0.1:@{[ $gw->port ]};
openclaw_gateway_token $TOKEN;

log_format ocb '$format';
access_log logs/ocb.log ocb;

server {
    listen 127.0.0.1:%%PORT%%;

    location / {
        openclaw_bridge;
        openclaw_bridge_agent_id \$arg_agent;
        openclaw_bridge_uid \$arg_uid;
        openclaw_bridge_sender \$arg_sender;
    }

    location /idle {
        openclaw_bridge;
        openclaw_bridge_idle_timeout 300ms;
    }

    location /echo {
        openclaw_bridge_echo;
    }

    location /plain {
        return 204;
    }

    location /http {
        openclaw_bridge_http;
        openclaw_bridge_uid \$arg_uid;
        openclaw_bridge_sender \$http_x_sender;
    }
}
EOF

# the log line of the request to $uri, as {var => value}, once written
sub line_of {
    my ($uri, $timeout) = @_;
    my $deadline = time + ($timeout // 30);
    for (;;) {
        for my $l (split /\n/, $ngx->read_log('ocb.log')) {
            my @f = split /\t/, $l, -1;
            next unless $f[0] eq $uri;
            my %v = (uri => $f[0], status => $f[1]);
            @v{@VARS} = @f[2 .. $#f];
            return \%v;
        }
        return undef if time >= $deadline;
        sleep 0.05;
    }
}

###########################################################################
# a connection with an identity: two messages that complete, a bad one,
# a run that fails, then the client closes with 4000 and a reason

my $session;
{
    my $uri = '/?agent=Alpha&uid=u-1&sender=Bob&t=a';
    my $c = RelayClient->new($ngx, path => $uri);

    $c->send_json({ id => 'a1', session => 'first', content => 'one' });
    $c->until_terminal(['a1'], 5);
    $c->send_json({ id => 'a2', session => 'second', content => 'two' });
    my @f = $c->until_terminal(['a2'], 5);
    $c->send_text('this is not json');
    $c->send_json({ id => 'a3', session => 'second', content => '{{error}} fails' });
    push @f, $c->until_terminal(['a3'], 5), $c->drain(0.3);

    my @term = grep { ($_->{type} // '') =~ /^(complete|error)$/ }
               map { $_->{json} // () } $c->frames;
    is(join(',', map { $_->{type} } @term), 'complete,complete,error,error',
       'two complete, two errors');
    ($session) = map { $_->{session} } grep { ($_->{id} // '') eq 'a3' } @term;
    like($session // '', qr/:second$/, 'the last message was in session "second"');

    ok(!line_of($uri, 0.2), 'nothing logged while the connection is open');

    $c->raw->send_frame(8, pack('n', 4000) . 'done here');
    my ($code) = $c->raw->read_close(5);
    is($code, 4000, 'the server echoes the close');
    $c->raw->wait_eof(2);
    $c->raw->close;

    my $v = line_of($uri);
    ok($v, 'the connection is logged when it ends') or diag $ngx->read_log('ocb.log');
    is($v->{status}, 101, 'status 101');
    is($v->{openclaw_agent}, 'alpha', '$openclaw_agent: the agent, lowercased');
    is($v->{openclaw_uid}, 'u-1', '$openclaw_uid');
    is($v->{openclaw_sender}, 'sender:bob', '$openclaw_sender: the sender as in session keys');
    is($v->{openclaw_session}, $session, '$openclaw_session: the last session used');
    is($v->{openclaw_messages_in}, 4, '$openclaw_messages_in: 4');
    is($v->{openclaw_messages_out}, 4, '$openclaw_messages_out: 4');
    is($v->{openclaw_errors}, 2, '$openclaw_errors: the bad one and the failed run');
    is($v->{openclaw_close_code}, 4000, '$openclaw_close_code: the client\'s');
    is($v->{openclaw_close_reason}, 'done here', '$openclaw_close_reason: the client\'s');
}

###########################################################################
# no identity, one message, then the TCP connection is dropped

{
    my $uri = '/?t=b';
    my $c = RelayClient->new($ngx, path => $uri);
    $c->send_json({ id => 'b1', content => 'hello' });
    my @f = $c->until_terminal(['b1'], 5);
    my ($s) = map { $_->{json}{session} } grep { ($_->{json}{type} // '') eq 'complete' } @f;
    $c->vanish;

    my $v = line_of($uri);
    ok($v, 'a lost connection is logged');
    is($v->{openclaw_agent}, 'main', '$openclaw_agent: main by default');
    is($v->{openclaw_uid}, '-', '$openclaw_uid: none');
    like($v->{openclaw_sender}, qr/^conn:\d+-\d+$/, '$openclaw_sender: the connection\'s own');
    is($v->{openclaw_session}, $s, '$openclaw_session: the per-sender session');
    is(join(',', map { $v->{"openclaw_$_"} } qw(messages_in messages_out errors)), '1,1,0',
       'one message in and out, no error');
    is($v->{openclaw_close_code}, 1006, '$openclaw_close_code: 1006 without a close frame');
    is($v->{openclaw_close_reason}, '', '$openclaw_close_reason: empty');
}

###########################################################################
# the server closes (idle timeout): its code and reason, and no message

{
    my $uri = '/idle?t=c';
    my $c = RelayClient->new($ngx, path => $uri);
    my ($code, $reason) = $c->raw->read_close(5);
    is($code, 1001, 'the idle client is closed with 1001');
    $c->raw->send_frame(8, pack('n', 1000));
    $c->raw->wait_eof(2);
    $c->raw->close;

    my $v = line_of($uri);
    is($v && $v->{openclaw_close_code}, 1001, '$openclaw_close_code: the server\'s, not the answer');
    is($v && $v->{openclaw_close_reason}, $reason, '$openclaw_close_reason: the server\'s');
    is($v && $v->{openclaw_session}, '-', '$openclaw_session: none without a message');
    is($v && $v->{openclaw_messages_in}, 0, '$openclaw_messages_in: 0');
}

###########################################################################
# an echo location: the close, but no relay

{
    my $uri = '/echo?t=d';
    my $ws = $ngx->ws(path => $uri);
    $ws->send_frame(8, pack('n', 1000) . 'bye');
    $ws->read_close(5);
    $ws->wait_eof(2);
    $ws->close;

    my $v = line_of($uri);
    is($v && $v->{openclaw_close_code}, 1000, 'echo: $openclaw_close_code');
    is($v && $v->{openclaw_close_reason}, 'bye', 'echo: $openclaw_close_reason');
    is($v && join(',', map { $v->{$_} } @VARS[0 .. 6]), join(',', ('-') x 7),
       'echo: no relay variables');
}

###########################################################################
# no upgrade: a plain request to the bridge, and another location

{
    # a connection per request: the 426 closes its connection, and
    # HTTP::Tiny, seeing two Connection fields ("close" from nginx,
    # "upgrade" from RFC 9110 7.8), would send the next request on it
    my $http = HTTP::Tiny->new(timeout => 30, keep_alive => 0);
    my $r = $http->get($ngx->http_url('/?t=e'));
    is($r->{status}, 426, 'a plain GET on the bridge location: 426');
    $r = $http->get($ngx->http_url('/plain?t=f'));
    is($r->{status}, 204, 'a plain GET on another location: 204');

    for my $uri ('/?t=e', '/plain?t=f') {
        my $v = line_of($uri);
        is($v && join(',', map { $v->{$_} } @VARS), join(',', ('-') x @VARS),
           "$uri: every variable is \"-\"");
    }
}

###########################################################################
# HTTP webhooks: each request is an endpoint, logged when it is answered;
# no close frame, so no close variables

{
    my $uri = '/http?uid=u-9&t=g';
    my $r = HttpClient::post($ngx->port, $uri,
                             { id => 'g1', session => 'web', content => 'via http' },
                             headers => { 'X-Sender' => 'Carol' });
    is($r->{status}, 200, 'http: the message completes');
    my $v = line_of($uri);
    ok($v, 'http: the request is logged') or diag $ngx->read_log('ocb.log');
    is($v && $v->{openclaw_agent}, 'main', 'http: $openclaw_agent');
    is($v && $v->{openclaw_uid}, 'u-9', 'http: $openclaw_uid');
    is($v && $v->{openclaw_sender}, 'sender:carol', 'http: $openclaw_sender');
    is($v && $v->{openclaw_session}, $r->{json}{session},
       'http: $openclaw_session: the session the reply names');
    like($v && $v->{openclaw_session}, qr/^agent:main:webhook:uid:u-9:.*web$/,
         'http: in the uid\'s namespace');
    is($v && join(',', map { $v->{"openclaw_$_"} } qw(messages_in messages_out errors)),
       '1,1,0', 'http: one message in and out, no error');
    is($v && "$v->{openclaw_close_code},$v->{openclaw_close_reason}", '-,-',
       'http: no close variables');

    my $bad = '/http?t=h';
    $r = HttpClient::post($ngx->port, $bad, { id => 'h1' });
    is($r->{status}, 400, 'http: a message without content: 400');
    $v = line_of($bad);
    is($v && join(',', map { $v->{"openclaw_$_"} } qw(messages_in messages_out errors)),
       '1,1,1', 'http: the bad message is in, its error out and counted')
        or diag explain $v;
}

$ngx->stop;

###########################################################################
# earlier configuration examples mapped uids into $openclaw_agent: such a
# configuration still loads, and the map defines the variable

{
    my $old = OCB->new(no_start => 1, http => <<"EOF");
openclaw_gateway ws://127.0.0.1:@{[ $gw->port ]};
openclaw_gateway_token $TOKEN;
map \$arg_uid \$openclaw_agent {
    default  main;
}
server {
    listen 127.0.0.1:%%PORT%%;
    location / {
        openclaw_bridge;
        openclaw_bridge_agent_id \$openclaw_agent;
    }
}
EOF
    my ($rc, $out) = $old->test_conf;
    is($rc, 0, 'a map into $openclaw_agent still loads') or diag $out;
}

$gw->stop;

done_testing;
