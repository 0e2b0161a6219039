#!/usr/bin/perl

# openclaw_bridge_http against a real OpenClaw gateway speaking protocol 4
# (openclaw@2026.9.6) with the fake model of t/gateway/fake-model.pl: a
# POST answered with the whole reply (curl and a Perl client), the same
# session remembered across requests, the reply as Server-Sent Events
# checked event by event (the Perl client, and curl -N), a callback (202,
# then the reply and its progress delivered, signed), and a client that
# leaves mid-stream.  Short on purpose: t/60 covers the relay itself.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time);
use Mojo::JSON qw(decode_json encode_json);

use Digest::SHA qw(hmac_sha256_hex);

use OCB;
use OCGateway;
use HttpClient;
use RelayClient;
use CallbackReceiver;

OCGateway::require_cache(4);

my $rx = CallbackReceiver->new;
my $gw = OCGateway->new(version => 4);
note sprintf 'gateway 2026.9.6 ready after %.1f s in %s', $gw->ready_after,
    $gw->dir;

my $ngx = OCB->new(workers => 1, http => <<"EOF");
openclaw_gateway @{[ $gw->url ]};
openclaw_gateway_token @{[ $gw->token ]};
openclaw_gateway_run_timeout 120s;

server {
    listen 127.0.0.1:%%PORT%%;

    location = /http {
        openclaw_bridge_http;
        openclaw_bridge_sender \$arg_sender;
        openclaw_bridge_callback_allow @{[ $rx->url('/') ]};
        openclaw_bridge_callback_secret t65-secret;
    }

    location = /status {
        openclaw_bridge_status;
    }
}
EOF
ok(OCGateway::wait_links($ngx, 1, 30, 4), 'the link is up with protocol 4');

sub reply_for { OCGateway::Client::reply_for(@_) }

sub curl {
    my (@args) = @_;
    my $t0 = time;
    open(my $fh, '-|', 'curl', '-s', '-N', '--max-time', '150', @args)
        or return ();
    my @lines;
    while (my $line = <$fh>) {
        chomp $line;
        push @lines, [time - $t0, $line];
    }
    close $fh;
    return ($? >> 8, @lines);
}

# the warm-up turn on a fresh home is slow: a generous wait, with curl
my $t = time;
my ($rc, @lines) = curl('-H', 'Content-Type: application/json',
                        '-w', '\n%{http_code}\n', '--data-binary',
                        encode_json({ id => 'h1', content => 'first over HTTP',
                                      session => 't65' }),
                        $ngx->http_url('/http?sender=u1'));
note sprintf 'first turn took %.1f s', time - $t;
is($rc, 0, 'curl: the request ends');
is($lines[-1][1], '200', 'curl: 200');
my $j = eval { decode_json($lines[0][1]) } // {};
is($j->{type}, 'complete', 'the complete');
is($j->{content}, reply_for('first over HTTP'), "the model's whole reply");
is($j->{id}, 'h1', 'the id');
is($j->{session}, 'agent:main:webhook:session:t65', 'the session');

# the gateway keeps the session between requests
my $r = HttpClient::post($ngx->port, '/http?sender=u1',
                         { id => 'h2', content => 'second #history',
                           session => 't65' }, timeout => 150);
is($r->{status}, 200, 'the Perl client: 200');
is($r->{json}{content},
   reply_for('second #history', 'first over HTTP', 'second #history'),
   'the gateway remembers the session across requests');

# the stream, event by event
my $s = HttpClient->open($ngx->port, '/http?sender=u1',
                         { id => 'h3', content => 'stream #slow=300',
                           session => 't65-sse' },
                         accept => 'text/event-stream');
my $h = $s->head(30);
is($h && $h->{status}, 200, 'SSE: 200');
is($h && $h->{headers}{'content-type'}, 'text/event-stream', 'SSE: the type');
my @e;
while (my $e = $s->next_event(150)) {
    push @e, $e;
}
ok($s->ended, 'SSE: the stream ends');
my @types = map { $_->{event} } @e;
is($types[-1], 'complete', 'SSE: the complete ends it') or diag "@types";
cmp_ok(scalar(grep { $_ eq 'progress' } @types), '>=', 2,
       'SSE: progress events before it') or diag "@types";
is(scalar(grep { ($_->{json}{type} // '') ne $_->{event} } @e), 0,
   "SSE: each event's data is a reply of its type");
my @p = RelayClient::delta_problems(map { $_->{json} } @e);
ok(!@p, 'SSE: the deltas add up') or diag join "\n", @p;
is($e[-1]{json}{content}, reply_for('stream #slow=300'), 'SSE: the text');
my @pt = map { $_->{t} } grep { $_->{event} eq 'progress' } @e;
cmp_ok($pt[-1] - $pt[0], '>=', 0.25,
       'SSE: the progress events arrive as the model streams') or diag "@pt";
$s->vanish;

($rc, @lines) = curl('-H', 'Accept: text/event-stream', '-H',
                     'Content-Type: application/json', '--data-binary',
                     encode_json({ id => 'h4', content => 'curl stream #slow=300',
                                   session => 't65-sse' }),
                     $ngx->http_url('/http?sender=u1'));
is($rc, 0, 'curl -N: the stream ends properly');
my @ev = grep { $_->[1] =~ /^event: / } @lines;
is($ev[-1][1], 'event: complete', 'curl -N: the complete comes last');
cmp_ok($ev[-1][0] - $ev[0][0], '>=', 0.25,
       'curl -N: saw the first event well before the last');

# a callback: 202 at once, then the reply delivered, signed, once
$r = HttpClient::post($ngx->port, '/http?sender=u1',
                      { id => 'h6', content => 'call back #slow=100',
                        session => 't65-cb', callbackProgress => \1,
                        callback => $rx->url('/hooks') });
is($r->{status}, 202, 'callback: 202');
my $delivery = $r->{json}{delivery} // '';
my @d;
my $until = time + 120;
while (time < $until) {
    @d = grep { ($_->{headers}{'x-openclaw-delivery'} // '') eq $delivery }
         $rx->records;
    last if @d;
    select undef, undef, undef, 0.2;
}
is(scalar @d, 1, 'callback: the reply delivered once');
my $cj = eval { decode_json($d[0]{body}) } // {};
is($cj->{type}, 'complete', 'callback: the complete');
is($cj->{content}, reply_for('call back #slow=100'), "callback: the model's reply");
my $ts = $d[0]{headers}{'x-openclaw-timestamp'} // '';
is($d[0]{headers}{'x-openclaw-signature'},
   'sha256=' . hmac_sha256_hex("$ts.$d[0]{body}", 't65-secret'),
   'callback: signed');
my @progress = grep { ($_->{body} // '') =~ /"type":"progress"/ } $rx->records;
cmp_ok(scalar @progress, '>=', 1, 'callback: and its progress, as asked');

# a client that leaves mid-stream: its run is aborted, nginx lets go
$s = HttpClient->open($ngx->port, '/http?sender=u1',
                      { id => 'h5', content => 'leave #slow=1000',
                        session => 't65-leave' },
                      accept => 'text/event-stream');
my $first = $s->next_event(60);
is($first && $first->{event}, 'progress', 'a slow stream has begun');
$s->vanish;
my $deadline = time + 10;
my $st;
while (time < $deadline) {
    my $x = HttpClient::post($ngx->port, '/status', '', method => 'GET');
    $st = $x->{json};
    last if $st && $st->{workers}[0]{runs_in_flight} == 0
            && $st->{workers}[0]{clients} == 0;
    select undef, undef, undef, 0.1;
}
is($st && $st->{workers}[0]{runs_in_flight}, 0, 'the run of the client that left is gone');
is($st && $st->{workers}[0]{messages_out}, $st && $st->{workers}[0]{messages_in},
   'every message ended');

$ngx->stop;
$gw->stop;
$rx->stop;

done_testing;
