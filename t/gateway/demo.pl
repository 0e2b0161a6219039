#!/usr/bin/perl

# make demo: a real OpenClaw gateway from npm (t/gateway/install.sh) with a
# canned fake model, nginx with the module in front of it, and a prompt:
# each line typed is sent as a message, and the reply streams back.
#
# make demo-hub (--hub): the same through a WebSocket hub of the kind the
# Go bridge dials (t/lib/TestHub.pm, the Cloudflare hub's behaviour):
# nginx dials OUT to the hub with openclaw_bridge_hub, and the prompt is a
# user of the hub's uid "demo", as a webhook service's client would be.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/../lib";

use Mojo::JSON qw(decode_json encode_json);
use OCB;
use OCGateway;
use TestHub;
use Test::More ();

Test::More->builder->no_ending(1);
binmode STDIN, ':encoding(UTF-8)';
binmode STDOUT, ':encoding(UTF-8)';
$| = 1;

print "starting the OpenClaw gateway (the first start takes 20-30 s)...\n";
my $via_hub = grep { $_ eq '--hub' } @ARGV;
my $gw = OCGateway->new(version => 4);
my ($hub, $ngx, $ws);

if ($via_hub) {
    $hub = TestHub->new(mode => 'rooms');
    $ngx = $gw->nginx(workers => 2,
                      loc => 'openclaw_bridge_hub ' . $hub->url('/ws') . ";\n"
                           . "            openclaw_bridge_uid demo;");
    $hub->wait_until(sub { $hub->bridges('demo') == 1 }, 30)
        or die "nginx did not dial the hub\n";
    $ws = $hub->client(uid => 'demo', name => 'you')->raw;

} else {
    $ngx = $gw->nginx(workers => 2);
    $ws = $ngx->ws(path => '/ws');
}

print "gateway:  ws://127.0.0.1:", $gw->port, " (token ", $gw->token, ")\n",
      "nginx:    ", $ngx->url('/ws'), "\n",
      $via_hub ? ("hub:      ", $hub->url('/ws?uid=demo'),
                  " (nginx dials it; you are a user of uid demo)\n") : (),
      "\n",
      "Type a message and Enter; an empty line or Ctrl-D ends.\n",
      "The first reply of a fresh gateway takes a few seconds.\n\n";

my $n = 0;

while (1) {
    print "you> ";
    my $line = <STDIN>;
    last unless defined $line && $line =~ /\S/;
    chomp $line;

    my $id = 'demo-' . ++$n;
    $ws->send_frame(1, encode_json({ id => $id, content => $line }));

    print "agent> ";

    while (my $f = $ws->read_frame(180)) {
        next if $f->{op} == 9 && $ws->send_frame(10, $f->{payload});
        next unless $f->{op} == 1;

        my $m = eval { decode_json($f->{payload}) } or next;
        next unless ($m->{id} // '') eq $id;

        if ($m->{type} eq 'progress') {
            print $m->{replace} ? "\n       $m->{content}" : $m->{delta};
            next;
        }

        print $m->{type} eq 'complete'
              ? "\n       [complete, session $m->{session}]\n"
              : "\n       [error: $m->{error}]\n";
        last;
    }
}

$ws->close;
$ngx->stop(no_check => 1);
$hub->stop if $hub;
$gw->stop_all;
