#!/usr/bin/perl

# Hub links live in the slots of a fixed shared zone, which a reload keeps.
# Workers that start together take each link once (150 links, 2 workers).
# a reload to a configuration whose links are all new (150 links, then
# 150 others) must still start its workers and bring every new link up,
# while the old generation's workers, which hold the old links' slots,
# are still alive at the new ones' start.
#
# (Both failed once: the new workers found no free slot, the old ones'
# links holding 150 of the 256, exited with a fatal code and were not
# respawned, leaving nginx without workers; and two workers starting
# together could both take a link, two links to the hub.)

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use HTTP::Tiny;
use Mojo::JSON qw(decode_json);
use Time::HiRes qw(sleep time);

use OCB;
use FakeGateway;
use TestHub;

my $N = 150;

my $gw = FakeGateway->new();
my $hub = TestHub->new(mode => 'rooms', record_max => 0);

sub conf {
    my ($prefix) = @_;
    my $locs = join '', map {
        "    location /h$_ {\n"
      . "        openclaw_bridge_hub @{[ $hub->url('/ws') ]};\n"
      . "        openclaw_bridge_uid $prefix$_;\n"
      . "    }\n"
    } 1 .. $N;
    return <<"EOF";
openclaw_gateway ws://127.0.0.1:@{[ $gw->port ]};

server {
    listen 127.0.0.1:%%PORT%%;
$locs
    location = /status {
        openclaw_bridge_status;
    }
}
EOF
}

sub wait_for {
    my ($cond, $timeout) = @_;
    my $deadline = time + ($timeout // 10);
    for (;;) {
        my $v = $cond->();
        return $v if $v || time >= $deadline;
        sleep 0.1;
    }
}

# the bridge's sockets at the hub whose uid starts with $prefix
sub links { my ($prefix) = @_; return scalar grep { $_->{uid} =~ /^\Q$prefix\E\d+$/ } $hub->bridges }

my $ngx = OCB->new(workers => 2, http => conf('a'));
ok(wait_for(sub { links('a') >= $N }, 30), "$N links up");

# workers that start together never both take a link
{
    my %n;
    $n{ $_->{uid} }++ for $hub->upgrades(role => 'bridge');
    my @twice = grep { $n{$_} > 1 } sort keys %n;
    ok(!@twice, 'one upgrade per link, though the workers started together')
        or diag "dialled more than once: @twice";
    is(links('a'), $N, "$N sockets at the hub, one per link");
}

$ngx->{http} = conf('b');
my @new = eval { $ngx->reload(15) };
ok(@new == 2, 'reload to 150 other links: the new workers start')
    or diag $@, join "\n", grep { /\[(alert|emerg)\]/ } split /\n/, $ngx->error_log;
ok(wait_for(sub { links('b') == $N && links("a") == 0 }, 30),
   "reload: the $N new links up, the old ones gone")
    or diag sprintf 'new %d, old %d', links('b'), links('a');

my $r = HTTP::Tiny->new(timeout => 5)->get($ngx->http_url('/status'));
my $st = eval { decode_json($r->{content}) } // {};
is(scalar(grep { ($_->{uid} // '') =~ /^b\d+$/ } @{ $st->{hubs} // [] }), $N,
   'reload: the status lists the new links');

$ngx->stop;
$hub->stop;
$gw->stop;

done_testing;
