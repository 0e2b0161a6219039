#!/usr/bin/perl

# openclaw_bridge_http with Accept: text/event-stream, against the scripted
# fake gateway: a 200 stream of "event: <type>" / "data: <reply JSON>"
# events, checked event by event as they arrive (each flushed as its
# reply is made, not at the end), with curl -N as well as a Perl client;
# the deltas add up to the complete, which ends the stream; an agent
# error is an error event; bad input is a plain 400 before any stream;
# several streams get their own events only; a client that leaves
# mid-stream has its run aborted; a run timeout and a shutdown end the
# stream with an error event.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use HTTP::Tiny;
use IO::Select;
use Mojo::JSON qw(decode_json encode_json);
use Time::HiRes qw(sleep time);

use OCB;
use FakeGateway;
use HttpClient;
use RelayClient;

my $TOKEN = 'tok-59-sse-91c4';
my $SSE = 'text/event-stream';

sub setup {
    my ($http, %gwo) = @_;
    my $gw = FakeGateway->new(token => $TOKEN, deltas => 4, delta_ms => 300,
                              %gwo);
    my $ngx = OCB->new(http => <<"EOF");
openclaw_gateway ws://127.0.0.1:@{[ $gw->port ]};
openclaw_gateway_token $TOKEN;
$http

server {
    # small socket buffers, so that a client that does not read is seen
    # to fill nginx's own
    listen 127.0.0.1:%%PORT%% sndbuf=32k;

    location = /http {
        openclaw_bridge_http;
    }

    location = /long {
        openclaw_bridge_http;
        openclaw_bridge_send_buffer 16m;
    }

    location = /bounded {
        openclaw_bridge_http;
        openclaw_bridge_send_buffer 64k;
    }

    location = /status {
        openclaw_bridge_status;
    }
}
EOF
    ok($ngx->wait_log(qr/gateway link up/, 10), 'link up')
        or diag $ngx->error_log;
    return ($gw, $ngx);
}

sub status {
    my ($ngx) = @_;
    my $r = HTTP::Tiny->new(timeout => 5)->get($ngx->http_url('/status'));
    return $r->{status} == 200 ? decode_json($r->{content}) : undef;
}

sub key_of {
    my ($gw, $message) = @_;
    my ($s) = grep { $_->{params}{message} eq $message } $gw->requests('chat.send');
    return $s ? $s->{params}{idempotencyKey} : undef;
}

# every event of a stream, until its end or $timeout
sub events {
    my ($s, $timeout) = @_;
    my $deadline = time + ($timeout // 10);
    my @e;
    while (my $e = $s->next_event($deadline - time)) {
        push @e, $e;
    }
    return @e;
}

my ($gw, $ngx) = setup('');

subtest 'a stream, event by event' => sub {
    my $s = HttpClient->open($ngx->port, '/http',
                             { id => 's1', content => 'four pieces here' },
                             accept => $SSE);
    my $h = $s->head(5);
    is($h->{status}, 200, 'status 200');
    is($h->{headers}{'content-type'}, $SSE, 'text/event-stream');
    is($h->{headers}{'cache-control'}, 'no-cache', 'not cached');
    is($h->{headers}{'x-accel-buffering'}, 'no', 'not buffered by a proxy');
    like($h->{headers}{'transfer-encoding'} // '', qr/chunked/,
         'chunked, with no length');

    my @e = events($s, 10);
    ok($s->ended, 'the stream ends after the complete, with the last chunk');
    my @types = map { $_->{event} // '?' } @e;
    is($types[-1], 'complete', 'the complete comes last') or diag "@types";
    is(scalar(grep { $_ eq 'complete' } @types), 1, 'once');
    cmp_ok(scalar(grep { $_ eq 'progress' } @types), '>=', 3,
           'progress events before it') or diag "@types";
    for my $e (@e) {
        like($e->{raw}, qr/\Aevent: [a-z]+\ndata: \{[^\n]*\}\z/,
             "$e->{event}: one event line, one data line");
        is($e->{json} && $e->{json}{type}, $e->{event},
           "$e->{event}: the data is the reply, of the event's type");
        is($e->{json} && $e->{json}{id}, 's1', "$e->{event}: its id");
    }
    my @p = RelayClient::delta_problems(map { $_->{json} } @e);
    ok(!@p, 'the deltas add up to each content') or diag join "\n", @p;
    is($e[-1]{json}{content}, 'echo: four pieces here', 'the whole text');

    # the fake spaces the events of the run 300 ms apart: each event
    # arrives as it is made, not with the end
    my @t = map { $_->{t} } @e;
    cmp_ok($t[-1] - $t[0], '>=', 0.6, 'the events arrive over the run')
        or diag "@t";
    my @gaps = map { $t[$_] - $t[$_ - 1] } 1 .. $#t - 1;
    ok(!(grep { $_ < 0.15 } @gaps), 'each progress apart from the one before')
        or diag "@t";
    $s->vanish;
};

subtest 'curl -N' => sub {
    my $body = encode_json({ id => 'c1', content => 'curl reads this' });
    my $t0 = time;
    my $pid = open(my $fh, '-|', 'curl', '-N', '-s', '-H', "Accept: $SSE",
                   '-H', 'Content-Type: application/json', '--data-binary',
                   $body, $ngx->http_url('/http'));
    ok($pid, 'curl runs') or return;
    my (@lines, @t);
    while (my $line = <$fh>) {
        chomp $line;
        push @lines, $line;
        push @t, time - $t0;
    }
    close $fh;
    is($? >> 8, 0, 'curl exits 0: the stream ended properly');
    my @events = grep { /^event: / } @lines;
    my @data = grep { /^data: / } @lines;
    is(scalar @events, scalar @data, 'an event line for each data line');
    is($events[-1], 'event: complete', 'the last is the complete');
    my ($first) = grep { $lines[$_] =~ /^data: / } 0 .. $#lines;
    my $last = (grep { $lines[$_] =~ /^data: / } 0 .. $#lines)[-1];
    cmp_ok($t[$last] - $t[$first], '>=', 0.6,
           'curl saw the first event well before the last');
    my $j = decode_json(substr $data[-1], 6);
    is($j->{content}, 'echo: curl reads this', 'the complete text');
};

subtest 'an agent error is an error event' => sub {
    my $s = HttpClient->open($ngx->port, '/http',
                             { id => 'e1', content => '{{error}} oops' },
                             accept => $SSE);
    is($s->head(5)->{status}, 200, '200: the stream had begun');
    my @e = events($s, 10);
    my @types = map { $_->{event} } @e;
    is($types[-1], 'error', 'the stream ends with an error event')
        or diag "@types";
    like($e[-1]{json}{error}, qr/^agent error: /, 'that says why');
    is($e[-1]{json}{id}, 'e1', 'with the id');
    ok($s->ended, 'and the stream ends');
    $s->vanish;
};

subtest 'bad input: a plain 400, no stream' => sub {
    my $r = HttpClient::post($ngx->port, '/http', { id => 'b1' },
                             accept => $SSE);
    is($r->{status}, 400, 'status 400');
    is($r->{headers}{'content-type'}, 'application/json', 'JSON');
    is($r->{json}{error}, 'missing field "content"', 'the error');
    $r = HttpClient::post($ngx->port, '/http', { content => 'x' },
                          accept => $SSE, method => 'GET');
    is($r->{status}, 405, 'GET: 405');
};

subtest 'several streams, each its own events' => sub {
    my @s = map {
        HttpClient->open($ngx->port, '/http',
                         { id => "p$_", content => "stream number $_" },
                         accept => "application/json, $SSE")
    } 1 .. 4;
    for my $i (1 .. 4) {
        my @e = events($s[$i - 1], 10);
        my @ids = map { $_->{json}{id} } @e;
        is(scalar(grep { $_ ne "p$i" } @ids), 0, "stream $i: only its own");
        is($e[-1]{event}, 'complete', "stream $i: ends with its complete");
        is($e[-1]{json}{content}, "echo: stream number $i",
           "stream $i: its text");
        $s[$i - 1]->vanish;
    }
};

subtest 'a client that leaves mid-stream' => sub {
    my $s = HttpClient->open($ngx->port, '/http',
                             { id => 'l1', content => '{{slow 40 100}} leave' },
                             accept => $SSE);
    my $e = $s->next_event(5);
    is($e && $e->{event}, 'progress', 'the run streams');
    $s->vanish;
    my $key = key_of($gw, '{{slow 40 100}} leave');
    ok($gw->wait_until(sub {
        (grep { ($_->{params}{runId} // '') eq $key } $gw->requests('chat.abort'))[0];
    }, 5), 'chat.abort for its run');
    ok($gw->wait_until(sub {
        my $st = status($ngx) or return 0;
        $st->{workers}[0]{clients} == 0 && $st->{workers}[0]{runs_in_flight} == 0;
    }, 5), 'nginx let go of it');
};

subtest 'a client that does not read is not buffered for without end' => sub {
    my $text = '{{slow 300 2}} ' . ('r' x 16000);
    my $s = HttpClient->open($ngx->port, '/bounded',
                             { id => 'r1', content => $text },
                             accept => $SSE, rcvbuf => 4096);
    ok($ngx->wait_log(qr/does not read its event stream/, 20),
       'nginx gives up on it past openclaw_bridge_send_buffer');
    my $key = key_of($gw, $text);
    ok($gw->wait_until(sub {
        (grep { ($_->{params}{runId} // '') eq $key } $gw->requests('chat.abort'))[0];
    }, 5), 'and aborts its run');
    $s->vanish;
};

subtest 'a long stream takes no memory per event' => sub {
    # 200 events of a 24 kB reply, 20 ms apart: their data adds up to
    # 2.4 MB, since each carries the whole text so far (paced, so that a
    # client on a busy machine keeps up)
    my ($pid) = $ngx->worker_pids;
    my $rss = sub {
        open my $f, '<', "/proc/$pid/status" or return 0;
        my ($kb) = join('', <$f>) =~ /^VmRSS:\s+(\d+)/m;
        return $kb // 0;
    };
    my $text = '{{slow 200 20}} ' . ('m' x 24000);
    my $before = $rss->();
    my $s = HttpClient->open($ngx->port, '/long',
                             { id => 'long', content => $text },
                             accept => $SSE);
    my ($n, $bytes, $last) = (0, 0);
    while (my $e = $s->next_event(20)) {
        $n++;
        $bytes += length $e->{data};
        $last = $e;
    }
    $s->vanish;
    my $grew = $rss->() - $before;
    is($last && $last->{event}, 'complete', 'the stream ends with its complete');
    cmp_ok($n, '>=', 150, "$n events");
    note sprintf '%d events, %.1f MB of data; the worker grew by %d kB', $n,
                 $bytes / 1e6, $grew;
    cmp_ok($grew, '<', 1536, 'the worker did not grow with them');
};

subtest 'the counters balance' => sub {
    my $st = status($ngx);
    my $w = $st->{workers}[0];
    is($w->{messages_out}, $w->{messages_in}, 'every message in ended');
    is($w->{clients}, 0, 'no client left');
};

$ngx->stop;
$gw->stop;

subtest 'a run timeout, then a shutdown, mid-stream' => sub {
    my ($gw, $ngx) = setup('openclaw_gateway_run_timeout 1s;');
    my $s = HttpClient->open($ngx->port, '/http',
                             { id => 't1', content => '{{hang}} timeout' },
                             accept => $SSE);
    is($s->head(5)->{status}, 200, 'a stream');
    my @e = events($s, 5);
    is($e[-1]{event}, 'error', 'the run timeout ends it with an error event');
    like($e[-1]{json}{error}, qr/^no reply from the agent within 1000 ms/,
         'that says why');
    ok($s->ended, 'and the stream ends');
    $s->vanish;

    $gw->set(delta_ms => 2000);
    $s = HttpClient->open($ngx->port, '/http',
                          { id => 'q1', content => 'slow on quit' },
                          accept => $SSE);
    is($s->head(5)->{status}, 200, 'another stream');
    ok($gw->wait_until(sub { key_of($gw, 'slow on quit') }, 5),
       'its run started');
    my $t0 = time;
    $ngx->signal('QUIT');
    @e = events($s, 5);
    cmp_ok(time - $t0, '<', 3, 'a shutdown ends it at once');
    is($e[-1] && $e[-1]{event}, 'error', 'with an error event');
    like($e[-1] && $e[-1]{json}{error},
         qr/^connection closing \(server shutting down\)/, 'that says why');
    ok($s->ended, 'and the end of the stream');
    cmp_ok($ngx->stop, '<', 10, 'nginx exits');
    $gw->stop;
};

done_testing;
