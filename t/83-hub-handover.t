#!/usr/bin/perl

# A reload's hand-over of a hub link when the old worker is late: frames
# the hub sent to the old link before the new link existed must still be
# handled, once.  The old worker keeps its link after the reload for a run
# in flight (it drains); the hub refuses the new worker's upgrade for a
# while, so that the old link is the only one when a user's message
# comes; the old worker is held (SIGSTOP, a few seconds: a busy worker)
# so that it reads the message only after the new link has come up.
#
# A draining worker used to leave every frame it read after the new
# holder's link was up to the new holder, which never received this one:
# it was never answered.  Now such a frame is held a moment and handled by
# the old worker when the new link took no copy of it.

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
use TestHub;

my $gw = FakeGateway->new(deltas => 2, delta_ms => 5);
my $hub = TestHub->new(mode => 'rooms');

my $ngx = OCB->new(workers => 1, http => <<"EOF");
openclaw_gateway ws://127.0.0.1:@{[ $gw->port ]};
server {
    listen 127.0.0.1:%%PORT%%;
    location /h {
        openclaw_bridge_hub @{[ $hub->url('/ws') ]};
        openclaw_bridge_uid late;
    }
}
EOF

sub wait_for {
    my ($cond, $timeout) = @_;
    my $deadline = time + ($timeout // 10);
    for (;;) {
        my $v = $cond->();
        return $v if $v || time >= $deadline;
        sleep 0.05;
    }
}

ok(wait_for(sub { $hub->bridges('late') == 1 }, 20), 'the link is up');
my ($old_link) = $hub->bridges('late');
my ($old) = $ngx->worker_pids;
my $u = $hub->client(uid => 'late');

# a run in flight keeps the old link open after the reload
$u->send_json({ id => 'slow', content => 'slow {{slow 10 500}}' });
ok(wait_for(sub { grep { ($_->{params}{message} // '') =~ /^slow/ }
                  $gw->requests('chat.send') }, 10), 'a run in flight');

$hub->refuse(status => 503, count => -1);
my %was = map { $_ => 1 } $ngx->worker_pids;
kill 'HUP', $ngx->pid;
ok(wait_for(sub { $hub->records(kind => 'refused', role => 'bridge') }, 15),
   'the new generation dials, and is refused for now');

kill 'STOP', $old;
$u->send_json({ id => 'early', content => 'sent before the new link' });
ok(wait_for(sub { grep { ($_->{id} // '') eq 'early' }
                  $hub->frames(conn => $old_link->{conn}, dir => 'out') }, 5),
   'the hub sent the message to the old link, the only one');
$hub->refuse(status => 0);
my $new_link;
ok(wait_for(sub { ($new_link) = grep { $_->{conn} != $old_link->{conn} } $hub->bridges('late');
                  $new_link }, 20),
   'the new link comes up while the old worker is held');
kill 'CONT', $old;

my %r = $u->collect(['early', 'slow'], 20);
my @ends = grep { $_->{type} =~ /^(complete|error)$/ } @{ $r{early} };
is(scalar @ends, 1, 'the message sent to the old link alone is answered once')
    or diag encode_json($r{early});
is($ends[0] && $ends[0]{type}, 'complete', 'with its reply');

# and the new link relays
my @b = $u->ask('after', 'after the hand-over', _timeout => 15);
is((grep { $_->{type} eq 'complete' } @b) ? 1 : 0, 1, 'the new link relays');

$u->close;
$ngx->stop;
$hub->stop;
$gw->stop;

done_testing;
