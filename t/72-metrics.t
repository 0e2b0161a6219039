#!/usr/bin/perl

# The metrics endpoint (README "Metrics") against the scripted fake
# gateway, read with the reference parser (python3-prometheus-client,
# t/lib/prom_parse.py): every sample under its # HELP and # TYPE, one
# series per worker by pid, the same figures as the status JSON, the link
# state as a state set, the sessions zones, and the latency histograms
# (fixed buckets, cumulative, _count the completed messages, a slow run
# in a slow bucket); only GET and HEAD; a metrics location in a
# configuration without any openclaw_bridge location.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use HTTP::Tiny;
use IPC::Open3;
use List::Util qw(sum0);
use Mojo::JSON qw(decode_json encode_json);
use Symbol qw(gensym);
use Time::HiRes qw(sleep time);

use OCB;
use FakeGateway;
use RelayClient;

my $T0 = time;
my $TOKEN = 'tok-72-metrics-5d0c';
my $PY = '/usr/bin/python3';
my $PARSER = "$FindBin::Bin/lib/prom_parse.py";

plan skip_all => "no $PY with prometheus_client: make deps"
    unless system($PY, '-c', 'import prometheus_client') == 0;

my $gw = FakeGateway->new(token => $TOKEN, deltas => 2, delta_ms => 5);

my $ngx = OCB->new(workers => 2, http => <<"EOF");
openclaw_gateway ws://127.0.0.1:@{[ $gw->port ]};
openclaw_gateway_token $TOKEN;
openclaw_bridge_zone mz:1m;

server {
    listen 127.0.0.1:%%PORT%%;

    location / {
        openclaw_bridge;
        openclaw_bridge_session_zone mz;
    }

    location = /status {
        openclaw_bridge_status;
    }

    location = /metrics {
        openclaw_bridge_metrics;
    }
}
EOF

my $http = HTTP::Tiny->new(timeout => 5);

my @LE = qw(0.005 0.01 0.025 0.05 0.1 0.25 0.5 1 2.5 5 10 30 60 +Inf);
my @HIST = qw(openclaw_bridge_message_first_progress_seconds
              openclaw_bridge_message_complete_seconds);

sub scrape_res { $http->request($_[1] // 'GET', ($_[0] // $ngx)->http_url('/metrics')) }

# the text through the reference parser: (families, error)
sub parse {
    my ($text) = @_;
    my $err = gensym;
    my $pid = open3(my $in, my $out, $err, $PY, $PARSER);
    print $in $text;
    close $in;
    my $json = do { local $/; <$out> } // '';
    my $msg = do { local $/; <$err> } // '';
    waitpid $pid, 0;
    return (undef, $msg || "exit $?") if $?;
    return (decode_json($json), '');
}

# {families => [...], by => {name => family}, text} or undef
sub scrape {
    my ($n) = @_;
    my $r = scrape_res($n);
    return undef unless $r->{status} == 200;
    my ($f) = parse($r->{content});
    return undef unless $f;
    return { families => $f, by => { map { $_->{name} => $_ } @$f },
             text => $r->{content} };
}

# the value of the sample $name with the labels %l (all of them given)
sub value {
    my ($m, $family, $name, %l) = @_;
    my $f = $m->{by}{$family} or return undef;
    for my $s (@{ $f->{samples} }) {
        next unless $s->{name} eq $name;
        next unless keys %{ $s->{labels} } == keys %l;
        next if grep { ($s->{labels}{$_} // "\0") ne $l{$_} } keys %l;
        return $s->{value};
    }
    return undef;
}

# the sum over the workers of the sample $name with the labels %l
sub total {
    my ($m, $family, $name, %l) = @_;
    my $f = $m->{by}{$family} or return undef;
    return sum0 map { $_->{value} } grep {
        my $s = $_;
        $s->{name} eq $name && !grep { ($s->{labels}{$_} // "\0") ne $l{$_} } keys %l
    } @{ $f->{samples} };
}

sub wait_metrics {
    my ($cond, $timeout, $n) = @_;
    my $deadline = time + ($timeout // 10);
    my $m;
    for (;;) {
        $m = scrape($n);
        return $m if $m && $cond->($m);
        return $m if time >= $deadline;
        sleep 0.05;
    }
}

sub status_json {
    my $r = $http->get($ngx->http_url('/status'));
    return $r->{status} == 200 ? decode_json($r->{content}) : undef;
}

###########################################################################
# at rest

my @pids = sort { $a <=> $b } $ngx->worker_pids;

my $m = wait_metrics(sub {
    my $m = $_[0];
    !grep { (value($m, 'openclaw_bridge_link_state', 'openclaw_bridge_link_state',
                   pid => $_, state => 'ready') // 0) != 1 } @pids;
}, 15);

{
    my $r = scrape_res();
    is($r->{status}, 200, 'GET /metrics: 200');
    is($r->{headers}{'content-type'}, 'text/plain; version=0.0.4; charset=utf-8',
       'the text format, version 0.0.4');
    my ($f, $err) = parse($r->{content});
    ok($f, 'the reference parser takes it') or diag "$err\n$r->{content}";
}

ok($m, 'scraped and parsed');
my @fam = @{ $m->{families} // [] };

my @untyped = grep { $_->{type} eq 'untyped' } @fam;
ok(!@untyped, 'every sample is under a # TYPE of its family')
    or diag encode_json(\@untyped);
my @nohelp = grep { ($_->{help} // '') eq '' } @fam;
ok(!@nohelp, 'every family has a # HELP') or diag join ' ', map { $_->{name} } @nohelp;
{
    my %seen;
    my @twice = grep { $seen{$_->{name}}++ } @fam;
    ok(!@twice, 'each family once, in one group') or diag join ' ', map { $_->{name} } @twice;
    my @heads = $m->{text} =~ /^# TYPE (\S+)/mg;
    my @helps = $m->{text} =~ /^# HELP (\S+)/mg;
    is("@helps", "@heads", 'a # HELP before each # TYPE');
}

# the parser names counters without their _total
my %want = (
    openclaw_bridge_worker_start_time_seconds => 'gauge',
    openclaw_bridge_clients => 'gauge',
    openclaw_bridge_messages_in => 'counter',
    openclaw_bridge_messages_out => 'counter',
    openclaw_bridge_completed => 'counter',
    openclaw_bridge_errors => 'counter',
    openclaw_bridge_runs_in_flight => 'gauge',
    openclaw_bridge_agent_runs => 'counter',
    openclaw_bridge_agent_runs_undelivered => 'counter',
    openclaw_bridge_runs_waiting_for_link => 'gauge',
    openclaw_bridge_callbacks_pending => 'gauge',
    openclaw_bridge_callbacks => 'counter',
    openclaw_bridge_callback_retries => 'counter',
    openclaw_bridge_link_reconnects => 'counter',
    openclaw_bridge_link_protocol => 'gauge',
    openclaw_bridge_link_state => 'gauge',
    openclaw_bridge_message_first_progress_seconds => 'histogram',
    openclaw_bridge_message_complete_seconds => 'histogram',
    openclaw_bridge_zone_size_bytes => 'gauge',
    openclaw_bridge_zone_free_bytes => 'gauge',
    openclaw_bridge_zone_sessions => 'gauge',
    openclaw_bridge_zone_evictions => 'counter',
    openclaw_bridge_hub_link_state => 'gauge',
    openclaw_bridge_hub_reconnects => 'counter',
    openclaw_bridge_hub_replies_queued => 'gauge',
    openclaw_bridge_hub_replies_dropped => 'counter',
);
is_deeply({ map { $_->{name} => $_->{type} } @fam }, \%want, 'the families and their types');

# every per-worker series is labelled with a live worker's pid
{
    my %p = map { $_ => 1 } @pids;
    my @bad;
    for my $f (grep { $_->{name} !~ /^openclaw_bridge_(?:zone|hub)_/ } @fam) {
        my %seen;
        for my $s (@{ $f->{samples} }) {
            my $pid = $s->{labels}{pid};
            push @bad, "$s->{name} pid " . ($pid // 'none')
                unless defined $pid && $p{$pid};
            $seen{$pid // ''}++;
        }
        push @bad, "$f->{name}: not every worker" unless keys %seen == @pids;
    }
    ok(!@bad, 'every worker series has the pid of a worker, each worker has its series')
        or diag join "\n", @bad;
}

for my $pid (@pids) {
    is(value($m, 'openclaw_bridge_link_protocol', 'openclaw_bridge_link_protocol',
             pid => $pid), 4, "worker $pid: protocol 4");
    is(sum0(map { value($m, 'openclaw_bridge_link_state', 'openclaw_bridge_link_state',
                        pid => $pid, state => $_) // 9 }
            qw(down connecting upgrading challenge hello ready)),
       1, "worker $pid: one link state is 1, the others 0");
    is(value($m, 'openclaw_bridge_link_reconnects', 'openclaw_bridge_link_reconnects_total',
             pid => $pid), 0, "worker $pid: no reconnect");
    my $st = value($m, 'openclaw_bridge_worker_start_time_seconds',
                   'openclaw_bridge_worker_start_time_seconds', pid => $pid);
    ok($st && $st >= int($T0) - 1 && $st <= time + 1, "worker $pid: start time")
        or diag $st;
}

is(value($m, 'openclaw_bridge_zone_size_bytes', 'openclaw_bridge_zone_size_bytes',
         zone => 'mz'), 1048576, 'zone mz: size');
is(value($m, 'openclaw_bridge_zone_sessions', 'openclaw_bridge_zone_sessions',
         zone => 'mz'), 0, 'zone mz: no session');
my $free0 = value($m, 'openclaw_bridge_zone_free_bytes',
                  'openclaw_bridge_zone_free_bytes', zone => 'mz');
ok($free0 && $free0 < 1048576, 'zone mz: free, less than the size');
is(value($m, 'openclaw_bridge_zone_evictions', 'openclaw_bridge_zone_evictions_total',
         zone => 'mz'), 0, 'zone mz: no eviction');
is(total($m, 'openclaw_bridge_message_complete_seconds',
         'openclaw_bridge_message_complete_seconds_count'), 0,
   'no message yet: the histogram is empty');

###########################################################################
# traffic: 4 messages that complete, one slow, one that the agent fails,
# one that is not JSON

my @c = map { RelayClient->new($ngx) } 1 .. 2;

my @plan = ([0, 'm1', 'mt-a', 'fast one'], [1, 'm2', 'mt-b', 'fast two'],
            [0, 'm3', 'mt-a', 'fast three'], [1, 'm4', 'mt-b', 'fast four'],
            [0, 's1', 'mt-s', '{{slow 3 150}} slow'],
            [1, 'e1', 'mt-e', '{{error}} fails']);
$c[$_->[0]]->send_json({ id => $_->[1], session => $_->[2], content => $_->[3] })
    for @plan;
$c[1]->send_text('this is not json');

my %term;
for my $i (0, 1) {
    my @ids = map { $_->[1] } grep { $_->[0] == $i } @plan;
    for my $f ($c[$i]->until_terminal(\@ids, 15), $i == 1 ? $c[1]->drain(0.3) : ()) {
        my $j = $f->{json} or next;
        next unless ($j->{type} // '') =~ /^(complete|error)$/;
        $term{ $j->{id} // 'noid' } = $j->{type};
    }
}
is(join(',', map { $term{$_} // 'none' } qw(m1 m2 m3 m4 s1 e1 noid)),
   'complete,complete,complete,complete,complete,error,error',
   'five complete, the failed run and the bad input are errors');

$m = wait_metrics(sub {
    total($_[0], 'openclaw_bridge_messages_out', 'openclaw_bridge_messages_out_total') >= 7
}, 5);

my $completed = total($m, 'openclaw_bridge_completed', 'openclaw_bridge_completed_total');
is(total($m, 'openclaw_bridge_messages_in', 'openclaw_bridge_messages_in_total'), 7,
   'messages in: 7, summed over the workers');
is(total($m, 'openclaw_bridge_messages_out', 'openclaw_bridge_messages_out_total'), 7,
   'messages out: 7');
is($completed, 5, 'completed: 5');
is(total($m, 'openclaw_bridge_errors', 'openclaw_bridge_errors_total', kind => 'input'), 1,
   'errors of kind input: 1');
is(total($m, 'openclaw_bridge_errors', 'openclaw_bridge_errors_total', kind => 'gateway'), 1,
   'errors of kind gateway: 1');
is(total($m, 'openclaw_bridge_errors', 'openclaw_bridge_errors_total', kind => $_), 0,
   "errors of kind $_: 0") for qw(timeout link overload);
is(total($m, 'openclaw_bridge_clients', 'openclaw_bridge_clients'), 2, 'clients: 2');
is(total($m, 'openclaw_bridge_runs_in_flight', 'openclaw_bridge_runs_in_flight'), 0,
   'nothing in flight');
is(value($m, 'openclaw_bridge_zone_sessions', 'openclaw_bridge_zone_sessions',
         zone => 'mz'), 4, 'zone mz: 4 sessions');

# the histograms, per worker: the buckets in order, cumulative, +Inf the count
for my $h (@HIST) {
    my @bad;
    for my $pid (@pids) {
        my @le = map { $_->{labels}{le} } grep { $_->{name} eq "${h}_bucket"
                                                 && $_->{labels}{pid} == $pid }
                 @{ $m->{by}{$h}{samples} };
        push @bad, "$pid: le @le" unless "@le" eq "@LE";
        my @v = map { value($m, $h, "${h}_bucket", pid => $pid, le => $_) // -1 } @LE;
        for my $i (1 .. $#v) {
            push @bad, "$pid: le $LE[$i] $v[$i] < le $LE[$i - 1] $v[$i - 1]"
                if $v[$i] < $v[$i - 1];
        }
        my $count = value($m, $h, "${h}_count", pid => $pid);
        push @bad, "$pid: +Inf $v[-1] != _count " . ($count // 'none')
            unless defined $count && $v[-1] == $count;
        push @bad, "$pid: no _sum" unless defined value($m, $h, "${h}_sum", pid => $pid);
    }
    ok(!@bad, "$h: the fixed buckets, cumulative, +Inf is _count, and _sum")
        or diag join "\n", @bad;
}

my $cs = 'openclaw_bridge_message_complete_seconds';
is(total($m, $cs, "${cs}_count"), $completed,
   'complete histogram: _count is the completed messages');
for my $pid (@pids) {
    is(value($m, $cs, "${cs}_count", pid => $pid),
       value($m, 'openclaw_bridge_completed', 'openclaw_bridge_completed_total', pid => $pid),
       "worker $pid: _count is its completed messages");
}
cmp_ok(total($m, $cs, "${cs}_bucket", le => '+Inf') - total($m, $cs, "${cs}_bucket", le => '0.25'),
       '>=', 1, 'the slow message (450 ms) is above the 0.25 s bucket');
cmp_ok(total($m, $cs, "${cs}_sum"), '>=', 0.4, 'complete _sum: at least the slow message');
cmp_ok(total($m, $cs, "${cs}_sum"), '<', 30, 'complete _sum: in seconds, not ms');

my $fp = 'openclaw_bridge_message_first_progress_seconds';
is(total($m, $fp, "${fp}_count"), 6,
   'first progress: the five completed and the failed run, which streamed first');
cmp_ok(total($m, $fp, "${fp}_sum"), '<', total($m, $cs, "${cs}_sum"),
       'first progress comes sooner than the complete');

###########################################################################
# the same figures as the status JSON, at rest

{
    my $st = status_json();
    my $m2 = scrape();
    my @bad;
    for my $w (@{ $st->{workers} // [] }) {
        my $p = $w->{pid};
        my %pairs = (
            openclaw_bridge_clients => [$w->{clients}],
            openclaw_bridge_messages_in_total => [$w->{messages_in}],
            openclaw_bridge_messages_out_total => [$w->{messages_out}],
            openclaw_bridge_completed_total => [$w->{completed}],
            openclaw_bridge_runs_in_flight => [$w->{runs_in_flight}],
            openclaw_bridge_runs_waiting_for_link => [$w->{waiting_for_link}],
            openclaw_bridge_agent_runs_total => [$w->{agent_runs}],
            openclaw_bridge_agent_runs_undelivered_total =>
                [$w->{agent_runs_undelivered}],
            openclaw_bridge_link_reconnects_total => [$w->{link}{reconnects}],
            openclaw_bridge_link_protocol => [$w->{link}{protocol}],
            openclaw_bridge_worker_start_time_seconds => [$w->{started}],
        );
        for my $name (sort keys %pairs) {
            (my $family = $name) =~ s/_total$//;
            my $v = value($m2, $family, $name, pid => $p);
            push @bad, "$p $name: " . ($v // 'none') . " != $pairs{$name}[0]"
                unless defined $v && $v == $pairs{$name}[0];
        }
        for my $k (sort keys %{ $w->{errors} }) {
            my $v = value($m2, 'openclaw_bridge_errors', 'openclaw_bridge_errors_total',
                          pid => $p, kind => $k);
            push @bad, "$p errors $k: " . ($v // 'none') . " != $w->{errors}{$k}"
                unless defined $v && $v == $w->{errors}{$k};
        }
        my $s = value($m2, 'openclaw_bridge_link_state', 'openclaw_bridge_link_state',
                      pid => $p, state => $w->{link}{state});
        push @bad, "$p link state $w->{link}{state} not 1" unless ($s // 0) == 1;
    }
    for my $z (@{ $st->{zones} // [] }) {
        for (['size_bytes', 'size'], ['free_bytes', 'free'], ['sessions', 'sessions'],
             ['evictions', 'evicted'])
        {
            my $family = "openclaw_bridge_zone_$_->[0]";
            my $name = $_->[0] eq 'evictions' ? "${family}_total" : $family;
            my $v = value($m2, $family, $name, zone => $z->{name});
            push @bad, "zone $z->{name} $_->[0]: " . ($v // 'none') . " != $z->{$_->[1]}"
                unless defined $v && $v == $z->{$_->[1]};
        }
    }
    is(scalar @{ $st->{workers} // [] }, 2, 'the status JSON has both workers');
    ok(!@bad, 'every figure of the status JSON, per worker and zone, is in the metrics')
        or diag join "\n", @bad;
}

###########################################################################
# methods, and cheap enough to scrape often

{
    my $r = scrape_res(undef, 'POST');
    is($r->{status}, 405, 'POST /metrics: 405');
    $r = scrape_res(undef, 'HEAD');
    is($r->{status}, 200, 'HEAD /metrics: 200');
    is($r->{content} // '', '', 'HEAD /metrics: no body');

    $r = scrape_res();
    cmp_ok(length $r->{content}, '<', 32768, 'two workers: under 32 KB')
        or diag length $r->{content};

    my $t = time;
    my $ok = 0;
    for (1 .. 100) { $ok++ if scrape_res()->{status} == 200 }
    my $dt = time - $t;
    is($ok, 100, '100 scrapes in a row answered');
    cmp_ok($dt, '<', 10, 'in well under a second each') and note sprintf '%.1f ms a scrape', $dt * 10;
}

$_->close for @c;
$ngx->stop;

###########################################################################
# a metrics location without any openclaw_bridge location: families
# without samples, still valid

{
    my $bare = OCB->new(http => <<"EOF");
server {
    listen 127.0.0.1:%%PORT%%;
    location = /metrics { openclaw_bridge_metrics; }
    location / { return 204; }
}
EOF
    my $r = scrape_res($bare);
    is($r->{status}, 200, 'metrics without openclaw_bridge: 200');
    my ($f, $err) = parse($r->{content});
    ok($f, 'metrics without openclaw_bridge: parsed') or diag $err;
    is(scalar(map { @{ $_->{samples} } } @{ $f // [] }), 0, 'and no sample')
        or diag $r->{content};
    $bare->stop;
}

$gw->stop;

note sprintf 'total %.1f s', time - $T0;

done_testing;
