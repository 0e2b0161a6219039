#!/usr/bin/perl

# What a worker holds for the gateway is bounded (README "Directives"):
# past openclaw_gateway_max_runs runs in flight, or with
# openclaw_gateway_max_queued bytes queued towards the gateway, a message
# gets an error that names the limit, reaches no gateway and is counted in
# the status errors as "overload"; the runs in flight are unaffected and
# there is room again once they end.

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

my $TOKEN = 'tok-56-overload-3f1a';

sub setup {
    my ($http) = @_;
    my $gw = FakeGateway->new(token => $TOKEN, deltas => 1, delta_ms => 5);
    my $ngx = OCB->new(http => <<"EOF");
openclaw_gateway ws://127.0.0.1:@{[ $gw->port ]};
openclaw_gateway_token $TOKEN;
$http

server {
    listen 127.0.0.1:%%PORT%%;

    location / {
        openclaw_bridge;
    }

    location = /status {
        openclaw_bridge_status;
    }
}
EOF
    my $deadline = time + 5;
    sleep 0.02 while $ngx->error_log !~ /gateway link up/ && time < $deadline;
    like($ngx->error_log, qr/gateway link up/, 'link up');
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

# the one complete or error of $id among what $c reads within $timeout
sub end_of {
    my ($c, $id, $timeout) = @_;
    my @f = $c->until_terminal([$id], $timeout // 5);
    my ($t) = grep { $_->{json} && ($_->{json}{id} // '') eq $id
                     && ($_->{json}{type} // '') =~ /^(complete|error)$/ } @f;
    return $t ? $t->{json} : undef;
}

subtest 'openclaw_gateway_max_runs' => sub {
    my ($gw, $ngx) = setup('openclaw_gateway_max_runs 3;');

    # the limit is the worker's: three hung runs on two connections fill it
    my $a = RelayClient->new($ngx);
    my $b = RelayClient->new($ngx);
    $a->send_json({ id => 'h1', content => '{{hang}} one' });
    $a->send_json({ id => 'h2', content => '{{hang}} two' });
    $b->send_json({ id => 'h3', content => '{{hang}} three' });

    ok($gw->wait_until(sub { $gw->requests('chat.send') >= 3 }, 5),
       'the three runs reached the gateway');
    ok($gw->wait_until(sub { (grep { $_->{ok} } $gw->records(kind => 'res',
                                  method => 'chat.send')) >= 3 }, 5),
       'and were acknowledged');

    $b->send_json({ id => 'o1', content => 'one too many' });
    my $e = end_of($b, 'o1');
    is($e && $e->{type}, 'error', 'the next message gets an error');
    is($e && $e->{error}, 'the worker has 3 messages in flight, its limit '
       . '(openclaw_gateway_max_runs): try again later', 'naming the limit');
    sleep 0.2;
    ok(!key_of($gw, 'one too many'), 'it never reached the gateway');

    my $st = status($ngx);
    my $w = $st && $st->{workers}[0];
    is($w && $w->{errors}{overload}, 1, 'status: errors.overload 1');
    is($w && $w->{errors}{input}, 0, 'status: no input error');
    is($w && $w->{runs_in_flight}, 3, 'status: 3 runs in flight');

    # the hung runs end: each gets its reply, and there is room again
    for my $m ('one', 'two', 'three') {
        my $key = key_of($gw, "{{hang}} $m");
        ok($key && $gw->action('finish', runId => $key)->{ok},
           "the gateway finishes run \"$m\"");
    }

    for ([$a, 'h1'], [$a, 'h2'], [$b, 'h3']) {
        my ($c, $id) = @$_;
        my $r = end_of($c, $id);
        is($r && $r->{type}, 'complete', "hung message $id completes");
    }

    $b->send_json({ id => 'o2', content => 'room again' });
    my $r = end_of($b, 'o2');
    is($r && $r->{type}, 'complete', 'a message after them completes');
    is($r && $r->{content}, 'echo: room again', 'with its reply');

    $st = status($ngx);
    $w = $st && $st->{workers}[0];
    is($w && $w->{errors}{overload}, 1, 'status: still one overload error');
    is($w && $w->{messages_in}, $w && $w->{messages_out},
       'status: every message ended');

    $a->close;
    $b->close;
    $ngx->stop;
    $gw->stop;
};

subtest 'openclaw_gateway_max_queued' => sub {

    # one byte: a chat.send queued and not yet written fills it
    my ($gw, $ngx) = setup('openclaw_gateway_max_queued 1;');

    my $c = RelayClient->new($ngx);

    # both frames in one write, so that nginx reads them in one go: the
    # second is handled before the first one's request is written
    $c->raw->send_raw(OCB::Raw::frame(1, encode_json({ id => 'q1', content => 'first' }))
                      . OCB::Raw::frame(1, encode_json({ id => 'q2', content => 'second' })));

    my $e = end_of($c, 'q2');
    is($e && $e->{type}, 'error', 'a message behind a queued request gets an error');
    like($e && $e->{error}, qr/^the worker has \d+ bytes queued towards the gateway, its limit \(openclaw_gateway_max_queued\): try again later$/,
         'naming the limit');
    my $r = end_of($c, 'q1');
    is($r && $r->{type}, 'complete', 'the queued one completes');
    ok(!key_of($gw, 'second'), 'the refused one never reached the gateway');

    $c->send_json({ id => 'q3', content => 'third' });
    $r = end_of($c, 'q3');
    is($r && $r->{type}, 'complete', 'once written, there is room again');

    my $st = status($ngx);
    is($st && $st->{workers}[0]{errors}{overload}, 1, 'status: errors.overload 1');

    $c->close;
    $ngx->stop;
    $gw->stop;
};

done_testing;
