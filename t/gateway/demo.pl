#!/usr/bin/perl

# make demo: a real OpenClaw gateway from npm (t/gateway/install.sh) with a
# canned fake model, nginx with the module in front of it, and a prompt:
# each line typed is sent as a message, and the reply streams back.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/../lib";

use Mojo::JSON qw(decode_json encode_json);
use OCB;
use OCGateway;
use Test::More ();

Test::More->builder->no_ending(1);
binmode STDIN, ':encoding(UTF-8)';
binmode STDOUT, ':encoding(UTF-8)';
$| = 1;

print "starting the OpenClaw gateway (the first start takes 20-30 s)...\n";
my $gw = OCGateway->new(version => 4);
my $ngx = $gw->nginx(workers => 2);

print "gateway:  ws://127.0.0.1:", $gw->port, " (token ", $gw->token, ")\n",
      "nginx:    ", $ngx->url('/ws'), "\n\n",
      "Type a message and Enter; an empty line or Ctrl-D ends.\n",
      "The first reply of a fresh gateway takes a few seconds.\n\n";

my $ws = $ngx->ws(path => '/ws');
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
$gw->stop_all;
