#!/usr/bin/perl

# Text goes through the relay without being decoded and encoded again:
# escapes, control characters, multi-byte and astral characters, written
# by the client in any escaping, come back as the same characters, in
# progress and complete messages whose deltas add up to their content.

use strict;
use warnings;
use utf8;

use lib 't/lib';
use OCB;
use FakeGateway;
use RelayClient;
use Test::More;

my $gw = FakeGateway->new(token => 't', deltas => 5);
my $ngx = OCB->new(http => 'openclaw_gateway ' . $gw->url . ";\n"
    . "openclaw_gateway_token t;\n"
    . "server { listen 127.0.0.1:%%PORT%%; location / { openclaw_bridge; } }");

$gw->wait_until(sub { $gw->records(kind => 'hello') }, 10);

my $c = RelayClient->new($ngx);

my %sent = (
    plain   => "hello",
    escapes => "quote \" back \\ slash / nl \n cr \r tab \t",
    control => "ctl \x01\x1f end",
    unicode => "é € 中文 😀 𝄞",
    # more than a run's block of memory: its own allocation
    long    => join('', map { "line $_ é \"q\" 😀\n" } 1 .. 200),
);

# the same characters, spelled with \u escapes and \/ by the client
$c->raw->send_frame(1, '{"id":"spelled","content":'
    . '"\u00e9 \u20ac \ud83d\ude00 \/ \"q\""}');
$sent{spelled} = "é € 😀 / \"q\"";

$c->send_json({ id => $_, content => $sent{$_} })
    for grep { $_ ne 'spelled' } sort keys %sent;

my @f = $c->until_terminal([sort keys %sent], 10);

for my $id (sort keys %sent) {
    my @mine = grep { $_->{json} && ($_->{json}{id} // '') eq $id } @f;
    my ($end) = grep { $_->{json}{type} =~ /^(complete|error)$/ } @mine;

    is($end && $end->{json}{type}, 'complete', "$id: complete");
    is($end && $end->{json}{content}, "echo: $sent{$id}",
       "$id: the text comes back as the same characters");

    my @bad = RelayClient::delta_problems(map { $_->{json} } @mine);
    ok(!@bad, "$id: the deltas add up to every content, the complete's too")
        or diag join "\n", @bad;
    ok(scalar(grep { $_->{json}{type} eq 'progress' } @mine) >= 2,
       "$id: streamed in several progress messages");
}

my %got = map { $_->{params}{message} => 1 } $gw->requests('chat.send');
ok($got{$sent{$_}}, "$_: the gateway got the same characters")
    for sort keys %sent;

$c->close;
$ngx->stop;
$gw->stop;

done_testing;
