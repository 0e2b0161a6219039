#!/usr/bin/perl

# The status endpoint (README "Status") against the scripted fake gateway:
# one entry per worker with its link and counters, the sessions zones,
# counters that match the traffic (messages in and out, completed, input
# errors, runs in flight), the link going down when the gateway stops
# (last_error, reconnects) and coming back (last_error cleared), only GET
# and HEAD, the workers of a new generation after a reload, and a status
# location in a configuration without any openclaw_bridge location.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use HTTP::Tiny;
use List::Util qw(sum0);
use Mojo::JSON qw(decode_json encode_json);
use Time::HiRes qw(sleep time);

use OCB;
use FakeGateway;
use RelayClient;

my $T0 = time;
my $TOKEN = 'tok-71-status-77e1';

my $gw = FakeGateway->new(token => $TOKEN, deltas => 2, delta_ms => 5);

my $ngx = OCB->new(workers => 2, http => <<"EOF");
openclaw_gateway ws://127.0.0.1:@{[ $gw->port ]};
openclaw_gateway_token $TOKEN;
openclaw_bridge_zone st:1m;
openclaw_bridge_zone st2:64k;

server {
    listen 127.0.0.1:%%PORT%%;

    location / {
        openclaw_bridge;
        openclaw_bridge_session_zone st;
    }

    location = /status {
        openclaw_bridge_status;
    }
}
EOF

my $http = HTTP::Tiny->new(timeout => 5);

sub status_res { $http->request($_[1] // 'GET', ($_[0] // $ngx)->http_url('/status')) }

sub status {
    my ($n) = @_;
    my $r = status_res($n);
    return undef unless $r->{status} == 200;
    return eval { decode_json($r->{content}) };
}

# waits until $cond->($status) is true; returns the last status
sub wait_status {
    my ($cond, $timeout, $n) = @_;
    my $deadline = time + ($timeout // 10);
    my $st;
    for (;;) {
        $st = status($n);
        return $st if $st && $cond->($st);
        return $st if time >= $deadline;
        sleep 0.05;
    }
}

sub total {
    my ($st, $field) = @_;
    return sum0 map { $field =~ /^errors\.(\w+)$/ ? $_->{errors}{$1} : $_->{$field} }
                @{ $st->{workers} // [] };
}

sub zone {
    my ($st, $name) = @_;
    return (grep { $_->{name} eq $name } @{ $st->{zones} // [] })[0];
}

###########################################################################
# at rest

my $st = wait_status(sub {
    my @w = @{ $_[0]{workers} };
    @w == 2 && !grep { $_->{link}{state} ne 'ready' } @w;
}, 15);

{
    my $r = status_res();
    is($r->{status}, 200, 'GET /status: 200');
    like($r->{headers}{'content-type'}, qr{^application/json}, 'application/json');
    ok(eval { decode_json($r->{content}); 1 }, 'the body is JSON') or diag $r->{content};
}

my @w = @{ $st->{workers} // [] };
is(scalar @w, 2, 'one entry per worker');
is(join(',', sort { $a <=> $b } map { $_->{pid} } @w), join(',', $ngx->worker_pids),
   'the entries are the workers, by pid');
for my $i (0 .. $#w) {
    my $x = $w[$i];
    is($x->{link}{state}, 'ready', "worker $i: link ready");
    is($x->{link}{protocol}, 4, "worker $i: protocol 4");
    cmp_ok($x->{link}{since}, '>=', int($T0) - 1, "worker $i: link up since the start");
    cmp_ok($x->{started}, '>=', int($T0) - 1, "worker $i: started");
    cmp_ok($x->{started}, '<=', time + 1, "worker $i: started, not in the future");
    is($x->{link}{reconnects}, 0, "worker $i: no reconnect");
    is($x->{link}{last_error}, '', "worker $i: no last error");
    is($x->{clients}, 0, "worker $i: no client");
    is($x->{$_}, 0, "worker $i: $_ 0")
        for qw(messages_in messages_out completed runs_in_flight waiting_for_link);
    is_deeply($x->{errors}, { input => 0, gateway => 0, timeout => 0, link => 0,
                               overload => 0 },
              "worker $i: no errors");
}

my $z = zone($st, 'st');
ok($z, 'zone st listed');
is($z && $z->{size}, 1048576, 'zone st: size');
is($z && $z->{sessions}, 0, 'zone st: no session');
is($z && $z->{evicted}, 0, 'zone st: nothing evicted');
ok($z && $z->{free} > 0 && $z->{free} < $z->{size}, 'zone st: free, less than the size');
my $z2 = zone($st, 'st2');
is($z2 && $z2->{size}, 65536, 'zone st2 (used by no location): listed with its size');
is(scalar @{ $st->{zones} }, 2, 'two zones');

###########################################################################
# traffic: 5 messages and 2 bad inputs, from 3 clients

my @c = map { RelayClient->new($ngx) } 1 .. 3;
$st = wait_status(sub { total($_[0], 'clients') == 3 }, 5);
is(total($st, 'clients'), 3, 'three clients connected, summed over the workers');

my @plan = ([0, 'm1', 'st-a'], [1, 'm2', 'st-b'], [2, 'm3', 'st-c'],
            [0, 'm4', 'st-a'], [1, 'm5', 'st-b']);
$c[$_->[0]]->send_json({ id => $_->[1], session => $_->[2], content => "status $_->[1]" })
    for @plan;
$c[2]->send_text('this is not json');
$c[2]->send_json({ id => 'b2' });

my %term;
for my $i (0 .. 2) {
    my @ids = map { $_->[1] } grep { $_->[0] == $i } @plan;
    push @ids, 'b2' if $i == 2;
    for my $f ($c[$i]->until_terminal(\@ids, 10), $i == 2 ? $c[2]->drain(0.3) : ()) {
        my $j = $f->{json} or next;
        next unless ($j->{type} // '') =~ /^(complete|error)$/;
        $term{ $j->{id} // 'noid' } = $j->{type};
    }
}
is(scalar(grep { ($term{$_} // '') eq 'complete' } qw(m1 m2 m3 m4 m5)), 5,
   'the five messages completed');
is($term{b2}, 'error', 'missing content: an error');
is($term{noid}, 'error', 'not JSON: an error');

$st = wait_status(sub { total($_[0], 'messages_out') >= 7 }, 5);
is(total($st, 'messages_in'), 7, 'messages_in 7');
is(total($st, 'messages_out'), 7, 'messages_out 7');
is(total($st, 'completed'), 5, 'completed 5');
is(total($st, 'errors.input'), 2, 'errors.input 2');
is(total($st, $_), 0, "$_ 0") for qw(errors.gateway errors.timeout errors.link
                                     runs_in_flight waiting_for_link
                                     agent_runs agent_runs_undelivered);
is(zone($st, 'st')->{sessions}, 3, 'zone st: 3 sessions');
cmp_ok(zone($st, 'st')->{free}, '<=', $z->{free}, 'zone st: less free');
is(zone($st, 'st2')->{sessions}, 0, 'zone st2: still none');

# a control message is a message in and a reply out
$c[0]->send_json({ type => 'session.list', id => 'l1' });
my $l;
for (1 .. 20) { $l = $c[0]->next_json(5) or last; last if ($l->{type} // '') eq 'session.list' }
is($l && $l->{type}, 'session.list', 'session.list answered');
$st = wait_status(sub { total($_[0], 'messages_out') >= 8 }, 5);
is(total($st, 'messages_in'), 8, 'after a control message: messages_in 8');
is(total($st, 'messages_out'), 8, 'after a control message: messages_out 8');
is(total($st, 'completed'), 5, 'after a control message: completed still 5');

# ignored types are no message: nothing in, nothing out
$c[0]->send_json({ type => 'progress', id => 'ig', content => 'x' });
select undef, undef, undef, 0.5;
$st = wait_status(sub { 1 }, 5);
is(total($st, 'messages_in'), 8, 'an ignored message does not count in');
is(total($st, 'messages_out'), 8, 'and gets nothing out');

###########################################################################
# a run in flight

$c[1]->send_json({ id => 'h1', session => 'st-h', content => '{{hang}} status' });
$st = wait_status(sub { total($_[0], 'runs_in_flight') >= 1 }, 5);
is(total($st, 'runs_in_flight'), 1, 'runs_in_flight 1 while a run hangs');
is(total($st, 'messages_in'), 9, 'messages_in 9');
is(total($st, 'messages_out'), 8, 'messages_out 8: one is in flight');
my ($hw) = grep { $_->{runs_in_flight} } @{ $st->{workers} };
ok($hw && $hw->{clients} >= 1, 'on a worker that has clients');

# the module counts the run once chat.send is written; the fake records it a
# moment later
my $send = $gw->wait_until(sub {
    (grep { $_->{params}{message} eq '{{hang}} status' }
          $gw->requests('chat.send'))[0] }, 5);
$gw->action('finish', runId => $send->{params}{idempotencyKey}) if $send;
my @f = $c[1]->until_terminal(['h1'], 5);
ok(grep({ $_->{json} && ($_->{json}{type} // '') eq 'complete' } @f), 'the hung run completes');
$st = wait_status(sub { total($_[0], 'runs_in_flight') == 0 }, 5);
is(total($st, 'runs_in_flight'), 0, 'runs_in_flight back to 0');
is(total($st, 'completed'), 6, 'completed 6');
is(total($st, 'messages_out'), 9, 'messages_out 9');
is(total($st, 'messages_in'), total($st, 'messages_out'),
   'in equals out when nothing is in flight');
is(zone($st, 'st')->{sessions}, 4, 'zone st: 4 sessions');

###########################################################################
# methods

{
    my $r = status_res(undef, 'POST');
    is($r->{status}, 405, 'POST /status: 405');
    $r = status_res(undef, 'HEAD');
    is($r->{status}, 200, 'HEAD /status: 200');
    is($r->{content} // '', '', 'HEAD /status: no body');
}

$_->close for @c;
$st = wait_status(sub { total($_[0], 'clients') == 0 }, 5);
is(total($st, 'clients'), 0, 'the clients are gone');

###########################################################################
# the gateway goes away

$gw->stop;
$st = wait_status(sub {
    my @w = @{ $_[0]{workers} };
    @w == 2 && !grep { $_->{link}{state} ne 'down' || $_->{link}{last_error} eq '' } @w;
}, 10);
for my $x (@{ $st->{workers} }) {
    is($x->{link}{state}, 'down', "worker $x->{pid}: link down");
    isnt($x->{link}{last_error}, '', "worker $x->{pid}: last_error set")
        and note "last_error: $x->{link}{last_error}";
    cmp_ok($x->{link}{reconnects}, '>=', 1, "worker $x->{pid}: reconnects counted");
}
my %r0 = map { $_->{pid} => $_->{link}{reconnects} } @{ $st->{workers} };
$st = wait_status(sub {
    !grep { $_->{link}{reconnects} < $r0{ $_->{pid} } + 2 } @{ $_[0]{workers} };
}, 12);
for my $x (@{ $st->{workers} }) {
    cmp_ok($x->{link}{reconnects}, '>=', $r0{ $x->{pid} } + 2,
           "worker $x->{pid}: reconnects count up while the gateway is away");
    like($x->{link}{last_error}, qr/connect|refused/,
         "worker $x->{pid}: last_error is the failed reconnect")
        or diag encode_json($x->{link});
}

# and comes back
$gw->start;
$st = wait_status(sub { !grep { $_->{link}{state} ne 'ready' } @{ $_[0]{workers} } }, 40);
is(scalar(grep { $_->{link}{state} eq 'ready' } @{ $st->{workers} }), 2,
   'the links are ready again once the gateway is back');
for my $x (@{ $st->{workers} }) {
    is($x->{link}{last_error}, '',
       "worker $x->{pid}: ready again, the old error is gone");
}

###########################################################################
# a reload: the new generation's workers, once the old ones are gone

{
    my @old = $ngx->worker_pids;
    my @new = sort { $a <=> $b } $ngx->reload;
    $st = wait_status(sub {
        my @p = sort { $a <=> $b } map { $_->{pid} } @{ $_[0]{workers} };
        "@p" eq "@new";
    }, 15);
    is(join(' ', sort { $a <=> $b } map { $_->{pid} } @{ $st->{workers} }), "@new",
       'after a reload: the new workers, without the old ones');
    is(zone($st, 'st')->{sessions}, 4, 'after a reload: zone st keeps its sessions');
}

$ngx->stop;

###########################################################################
# a worker that dies: its entry goes, even when its replacement takes
# another slot (after a reload, the old generation's slots are free)

{
    my $n = OCB->new(workers => 2, http => <<"EOF");
openclaw_gateway ws://127.0.0.1:@{[ $gw->port ]};
openclaw_gateway_token $TOKEN;
server {
    listen 127.0.0.1:%%PORT%%;
    location / { openclaw_bridge; }
    location = /status { openclaw_bridge_status; }
}
EOF
    # the old generation's workers may still be shutting down below
    my %old = map { $_ => 1 } $n->worker_pids;
    my @new = sort { $a <=> $b } $n->reload;
    $st = wait_status(sub {
        my @p = sort { $a <=> $b } map { $_->{pid} } @{ $_[0]{workers} };
        "@p" eq "@new";
    }, 15, $n);
    kill 'KILL', $new[1];
    my @live;
    my $deadline = time + 10;
    while (time < $deadline) {
        @live = grep { !$old{$_} } $n->worker_pids;
        last if @live == 2 && !grep { $_ == $new[1] } @live;
        sleep 0.05;
    }
    is(scalar @live, 2, 'a killed worker is replaced');
    $st = wait_status(sub {
        join(' ', sort { $a <=> $b } map { $_->{pid} } @{ $_[0]{workers} })
            eq "@live";
    }, 10, $n);
    is(join(' ', sort { $a <=> $b } map { $_->{pid} } @{ $st->{workers} }), "@live",
       'the status lists the live workers only, not the killed one')
        or diag encode_json($st->{workers});

    # the kill is an [alert] of its own; anything else is not
    $n->stop(no_check => 1);
    my @bad = grep { /\[(alert|emerg)\]/ && !/exited on signal 9/ }
              split /\n/, $n->error_log;
    ok(!@bad, 'no [alert] or [emerg] but the kill') or diag join "\n", @bad;
    my $reports = '';
    for my $f (glob $n->prefix . '/logs/asan* ' . $n->prefix . '/logs/ubsan*') {
        open my $h, '<', $f or next;
        local $/;
        $reports .= join '', OCB::sanitizer_reports(<$h> // '');
    }
    $reports .= join '', OCB::sanitizer_reports($n->read_log($_))
        for 'stderr.log', 'error.log';
    ok($reports eq '', 'no sanitizer report') or diag $reports;
}

###########################################################################
# an error longer than the status keeps: cut after a whole word, marked

{
    my $words = join ' ', map { "word$_ \"quoted\"\tand\\more" } 1 .. 40;
    my $g = FakeGateway->new(token => $TOKEN, unavailable => -1,
                             retry_after_ms => 200,
                             unavailable_message => $words);
    my $n = OCB->new(http => <<"EOF");
openclaw_gateway ws://127.0.0.1:@{[ $g->port ]};
openclaw_gateway_token $TOKEN;
server {
    listen 127.0.0.1:%%PORT%%;
    location / { openclaw_bridge; }
    location = /status { openclaw_bridge_status; }
}
EOF
    $st = wait_status(sub { ($_[0]{workers}[0]{link}{last_error} // '') ne '' },
                      10, $n);
    my $e = $st && $st->{workers}[0]{link}{last_error} // '';
    my $full = "gateway refused connect: UNAVAILABLE $words";
    cmp_ok(length $e, '<=', 383, 'a long error: within the bound');
    like($e, qr/\.\.\.$/, 'a long error: marked as cut');
    (my $kept = $e) =~ s/\.\.\.$//;
    is(substr($full, 0, length $kept), $kept, 'a long error: its beginning kept');
    is(substr($full, length $kept, 1), ' ', 'a long error: cut after a whole word')
        or diag $e;
    $n->stop;
    $g->stop;
}

###########################################################################
# a status location without any openclaw_bridge location

{
    my $bare = OCB->new(http => <<"EOF");
server {
    listen 127.0.0.1:%%PORT%%;
    location = /status { openclaw_bridge_status; }
    location / { return 204; }
}
EOF
    my $r = status_res($bare);
    is($r->{status}, 200, 'status without openclaw_bridge: 200');
    my $j = eval { decode_json($r->{content}) };
    is_deeply($j, { identity => undef, workers => [], zones => [], hubs => [] },
              'status without openclaw_bridge: no identity, empty lists')
        or diag $r->{content};
    $bare->stop;
}

note sprintf 'total %.1f s', time - $T0;

done_testing;
