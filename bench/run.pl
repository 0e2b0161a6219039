#!/usr/bin/perl
#
# make bench: the module (scenario A: loadgen -> nginx + openclaw_bridge ->
# fakegw) side by side with stock nginx WebSocket proxying (scenario B:
# loadgen -> nginx proxy_pass -> echo), interleaved, repeated; see
# bench/README.md.
#
# Environment (defaults in brackets; BENCH_QUICK=1 changes the marked ones):
#   BENCH_QUICK=1          smoke variant, about 2 minutes
#   BENCH_MODULE           the module .so [build/ngx_http_openclaw_bridge_module.so,
#                          built with `make module`; when set, nothing is built]
#   BENCH_NGINX            [/usr/sbin/nginx]
#   BENCH_REPS             repetitions [3; quick 1]
#   BENCH_DURATION         measured seconds per run [10; quick 3]
#   BENCH_WARMUP           warm-up seconds per run [2; quick 1]
#   BENCH_CONNS            connections of the load runs [100]
#   BENCH_LOADS            total msg/s, or "flood" [2000,10000,20000,flood]
#   BENCH_LOADS_2W         loads also run with 2 workers [10000,flood]
#   BENCH_SIZE             bytes of "content" per message [32]
#   BENCH_WINDOW           outstanding messages per connection in flood [8]
#   BENCH_DELTAS           delta events per reply from fakegw [0]
#   BENCH_BROADCAST=1      fakegw sends chat events to every gateway link
#   BENCH_IDLE_CONNS       idle connections for memory [10000, capped by
#                          the hard RLIMIT_NOFILE]
#   BENCH_OUT              where results.md/.csv go [bench/]
#   BENCH_WAIT_QUIET=S     before each run, wait up to S seconds for the
#                          machine to be nearly idle (other processes
#                          under half a core) [0: do not wait]
#   BENCH_INFLIGHT         runs in flight of the slow-gateway runs
#                          [1000,10000,100000; "" for none]
#   BENCH_INFLIGHT_RATE    their offered msg/s [20000]; fakegw delays each
#                          run's events by IN_FLIGHT / RATE seconds
#   BENCH_INFLIGHT_DURATION  their measured seconds [5]
#   BENCH_PIPELINE         windows of the pipelining runs: every client
#                          keeps W messages outstanding, one worker with
#                          openclaw_bridge_max_in_flight raised to fit
#                          [1,64,1024; "" for none]
#   BENCH_PIPELINE_CONNS   their connections [BENCH_CONNS]
#   BENCH_PIPELINE_DURATION  their measured seconds [5; quick 3]
#   BENCH_ONLY=inflight    only the slow-gateway runs, 1 repetition unless
#                          BENCH_REPS says otherwise (make bench-inflight);
#                          results in results-inflight.md/.csv
#   BENCH_ONLY=pipeline    only the pipelining runs, the same way (make
#                          bench-pipeline); results in results-pipeline.md/.csv

use strict;
use warnings;

use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Path qw(make_path remove_tree);
use IO::Socket::INET;
use POSIX qw(:sys_wait_h strftime);
use Time::HiRes qw(sleep time);

my $TOP = abs_path(dirname(abs_path(__FILE__)) . '/..');

# every child (nginx, upstreams, loadgen) gets the hard limit of open files:
# re-run this script under a shell that raised it
if (!$ENV{BENCH_ULIMIT_DONE}) {
    $ENV{BENCH_ULIMIT_DONE} = 1;
    exec 'sh', '-c', 'ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@"',
         'sh', $^X, abs_path(__FILE__), @ARGV;
    die "exec sh: $!";
}

my $QUICK = $ENV{BENCH_QUICK} ? 1 : 0;
my $NGINX = $ENV{BENCH_NGINX} // '/usr/sbin/nginx';
my $BB = "$TOP/build/bench";
my $OUT = $ENV{BENCH_OUT} // "$TOP/bench";
my $REPS = $ENV{BENCH_REPS} // ($QUICK ? 1 : 3);
my $DURATION = $ENV{BENCH_DURATION} // ($QUICK ? 3 : 10);
my $WARMUP = $ENV{BENCH_WARMUP} // ($QUICK ? 1 : 2);
my $DRAIN = 2;
my $CONNS = $ENV{BENCH_CONNS} // 100;
my @LOADS = split /,/, ($ENV{BENCH_LOADS} // '2000,10000,20000,flood');
my @LOADS_2W = split /,/, ($ENV{BENCH_LOADS_2W} // '10000,flood');
my $SIZE = $ENV{BENCH_SIZE} // 32;
my $WINDOW = $ENV{BENCH_WINDOW} // 8;
my $DELTAS = $ENV{BENCH_DELTAS} // 0;
my $BROADCAST = $ENV{BENCH_BROADCAST} ? 1 : 0;
my $IDLE_WANT = $ENV{BENCH_IDLE_CONNS} // 10000;
my $WAIT_QUIET = $ENV{BENCH_WAIT_QUIET} // 0;
my $ONLY = $ENV{BENCH_ONLY} // '';
my @INFLIGHT = split /,/, ($ENV{BENCH_INFLIGHT} // '1000,10000,100000');
my $INFLIGHT_RATE = $ENV{BENCH_INFLIGHT_RATE} // 20000;
my $INFLIGHT_DURATION = $ENV{BENCH_INFLIGHT_DURATION} // 5;
my @PIPELINE = split /,/, ($ENV{BENCH_PIPELINE} // '1,64,1024');
my $PIPELINE_CONNS = $ENV{BENCH_PIPELINE_CONNS} // $CONNS;
my $PIPELINE_DURATION = $ENV{BENCH_PIPELINE_DURATION} // ($QUICK ? 3 : 5);
die "BENCH_ONLY: only \"inflight\" and \"pipeline\" are known\n"
    if $ONLY && $ONLY ne 'inflight' && $ONLY ne 'pipeline';
@PIPELINE = () if $ONLY eq 'inflight';
@INFLIGHT = () if $ONLY eq 'pipeline';
$REPS = $ENV{BENCH_REPS} // 1 if $ONLY;
my $SUFFIX = $ONLY ? "-$ONLY" : '';
my $TOKEN = 'bench';

my %children;           # pid => name, killed at the end whatever happens
my $RUNDIR = "$BB/run";
my $T0 = time;

sub say_ { print @_, "\n"; }

sub note { printf "[%6.1fs] %s\n", time - $T0, join '', @_; }

sub sh_out {
    my ($cmd) = @_;
    my $o = `$cmd 2>&1`;
    chomp $o;
    return $o;
}

###########################################################################
# children

sub spawn {
    my ($name, $stdout, $stderr, @cmd) = @_;
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        setpgrp(0, 0);                    # our signals only, not the tty's
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', $stdout or die "$stdout: $!";
        open STDERR, '>', $stderr or die "$stderr: $!";
        exec @cmd or POSIX::_exit(127);
    }
    $children{$pid} = $name;
    return $pid;
}

sub reap {
    my ($pid, $timeout) = @_;
    my $deadline = time + ($timeout // 10);
    while (time < $deadline) {
        my $r = waitpid($pid, WNOHANG);
        if ($r == $pid || $r == -1) {
            delete $children{$pid};
            return 1;
        }
        sleep 0.02;
    }
    return 0;
}

sub stop_child {
    my ($pid, $sig, $timeout) = @_;
    return unless $pid && $children{$pid};
    kill $sig // 'TERM', $pid;
    return if reap($pid, $timeout // 10);
    kill 'KILL', $pid;
    reap($pid, 5);
}

sub stop_all {
    for my $pid (keys %children) {
        kill 'TERM', $pid;
    }
    for my $pid (keys %children) {
        next if reap($pid, 5);
        kill 'KILL', $pid;
        reap($pid, 2);
    }
}

$SIG{INT} = $SIG{TERM} = sub { note("interrupted: stopping children"); stop_all(); exit 130; };
END { local $?; stop_all() if %children; }

sub free_port {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Proto => 'tcp', Listen => 1, ReuseAddr => 1)
        or die "no free port: $!";
    my $port = $s->sockport;
    close $s;
    return $port;
}

sub slurp {
    my ($f) = @_;
    open my $h, '<', $f or return '';
    local $/;
    my $t = <$h>;
    return $t // '';
}

sub wait_for {
    my ($cond, $timeout) = @_;
    my $deadline = time + ($timeout // 10);
    while (time < $deadline) {
        return 1 if $cond->();
        sleep 0.02;
    }
    return 0;
}

sub worker_pids {
    my ($master) = @_;
    my @pids;
    for my $d (glob '/proc/[0-9]*') {
        my $stat = slurp("$d/stat");
        next unless $stat =~ /\)\s+\S+\s+(\d+)/ && $1 == $master;
        my $cmd = slurp("$d/cmdline");
        push @pids, (split m{/}, $d)[-1] if $cmd =~ /worker process/;
    }
    return sort { $a <=> $b } @pids;
}

sub rss_kb {
    my ($pid) = @_;
    return slurp("/proc/$pid/status") =~ /VmRSS:\s+(\d+)/ ? $1 : 0;
}

# the most the process ever had resident: a fresh nginx per run makes it
# the run's peak, which the samples at the window's edges can miss
sub hwm_kb {
    my ($pid) = @_;
    return slurp("/proc/$pid/status") =~ /VmHWM:\s+(\d+)/ ? $1 : 0;
}

# established TCP connections of the given pids whose peer port is $port
sub conns_to {
    my ($port, @pids) = @_;
    my %want = map { $_ => 0 } @pids;
    for my $line (split /\n/, sh_out("ss -Htnp state established '( dport = :$port )'")) {
        while ($line =~ /pid=(\d+)/g) {
            $want{$1}++ if exists $want{$1};
        }
    }
    return map { $want{$_} } @pids;
}

###########################################################################
# build

sub build {
    make_path($BB, $RUNDIR);
    for my $p (qw(loadgen fakegw echo)) {
        my $src = "$TOP/bench/$p.c";
        my $bin = "$BB/$p";
        next if -x $bin && -M $bin < -M $src && -M $bin < -M "$TOP/bench/ws_common.h";
        note("cc -O2 bench/$p.c");
        system('cc', '-O2', '-Wall', '-Wextra', '-o', $bin, $src, '-lcrypto') == 0
            or die "cc $p failed\n";
    }

    if (!$ENV{BENCH_MODULE}) {
        note("make module");
        system('make', '-s', '-C', $TOP, 'module') == 0 or die "make module failed\n";
    }
}

###########################################################################
# one nginx + one upstream

my $nofile_hard = sh_out(q{sh -c 'ulimit -Hn'});
$nofile_hard = 1048576 if $nofile_hard eq 'unlimited';
my $nofile_soft = sh_out(q{sh -c 'ulimit -n'});
my $CLK_TCK = sh_out('getconf CLK_TCK');

sub module_path { $ENV{BENCH_MODULE} ? abs_path($ENV{BENCH_MODULE}) : "$TOP/build/ngx_http_openclaw_bridge_module.so" }

sub nginx_conf {
    my (%o) = @_;
    my $main = '';
    my $loc;
    my $http = '';
    if ($o{scen} eq 'A') {
        $main = "load_module " . module_path() . ";\n";
        $http = "    openclaw_gateway ws://127.0.0.1:$o{up};\n"
              . "    openclaw_gateway_token $TOKEN;\n";
        $loc = "            openclaw_bridge;\n"
             . "            openclaw_bridge_ping_interval 0;\n";
        $http .= $o{http_extra} // '';
        $loc .= $o{loc_extra} // '';
    } else {
        $http = "    map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }\n"
              . "    upstream ws_echo { server 127.0.0.1:$o{up}; }\n";
        $loc = "            proxy_pass http://ws_echo;\n"
             . "            proxy_http_version 1.1;\n"
             . "            proxy_set_header Upgrade \$http_upgrade;\n"
             . "            proxy_set_header Connection \$connection_upgrade;\n"
             . "            proxy_set_header Host \$host;\n"
             . "            proxy_read_timeout 1h;\n"
             . "            proxy_send_timeout 1h;\n";
    }
    return <<"EOF";
${main}worker_processes $o{workers};
worker_rlimit_nofile $nofile_hard;
pid logs/nginx.pid;
error_log logs/error.log warn;
events {
    worker_connections $o{wconns};
}
http {
    access_log off;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
$http
    server {
        listen 127.0.0.1:$o{port} reuseport;
        location / {
$loc        }
@{[ $o{scen} eq 'A' ? "        location = /status {\n            openclaw_bridge_status;\n        }\n" : '' ]}    }
}
EOF
}

# the module's status (README "Status"), decoded, or undef
sub status_json {
    my ($s) = @_;
    my $c = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $s->{port},
                                  Proto => 'tcp', Timeout => 5) or return undef;
    print $c "GET /status HTTP/1.0\r\nHost: bench\r\n\r\n";
    local $/;
    my $r = <$c> // '';
    close $c;
    my ($body) = $r =~ /\r\n\r\n(.*)\z/s or return undef;
    require JSON::PP;
    return eval { JSON::PP::decode_json($body) };
}

# starts upstream and nginx; returns a hash describing them
sub start_pair {
    my (%o) = @_;
    my $dir = "$RUNDIR/$o{tag}";
    remove_tree($dir);
    make_path("$dir/conf", "$dir/logs", "$dir/tmp");
    chmod 01777, "$dir/logs", "$dir/tmp";

    my $up = free_port();
    my $port = free_port();
    $port = free_port() while $port == $up;

    my $s = { %o, dir => $dir, up => $up, port => $port };

    if ($o{scen} eq 'A') {
        $s->{up_name} = 'fakegw';
        $s->{up_pid} = spawn('fakegw', "$dir/logs/up.out", "$dir/logs/up.err",
            "$BB/fakegw", '-p', $up, '-k', $TOKEN, '-n', $DELTAS,
            ($BROADCAST ? ('-B') : ()),
            ($o{latency_ms} ? ('-L', $o{latency_ms}) : ()));
    } else {
        $s->{up_name} = 'echo';
        $s->{up_pid} = spawn('echo', "$dir/logs/up.out", "$dir/logs/up.err",
            "$BB/echo", '-p', $up);
    }
    wait_for(sub { slurp("$dir/logs/up.out") =~ /listening/ }, 5)
        or die "$s->{up_name} did not start: " . slurp("$dir/logs/up.err");

    open my $f, '>', "$dir/conf/nginx.conf" or die $!;
    print $f nginx_conf(%$s);
    close $f;

    $s->{nginx_pid} = spawn('nginx', "$dir/logs/stdout.log", "$dir/logs/stderr.log",
        $NGINX, '-p', "$dir/", '-c', 'conf/nginx.conf', '-e', 'logs/error.log',
        '-g', 'daemon off; master_process on;');

    my $ok = wait_for(sub {
        return 0 if waitpid($s->{nginx_pid}, WNOHANG) == $s->{nginx_pid};
        my $c = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                      Proto => 'tcp');
        return 0 unless $c;
        close $c;
        return 1;
    }, 10);
    die "nginx did not start:\n" . slurp("$dir/logs/error.log") . slurp("$dir/logs/stderr.log")
        unless $ok;

    wait_for(sub { my @w = worker_pids($s->{nginx_pid}); @w >= $o{workers} }, 10);
    $s->{workers_pids} = [worker_pids($s->{nginx_pid})];

    if ($o{scen} eq 'A') {
        # every worker's gateway link past hello-ok
        wait_for(sub { my @h = slurp("$dir/logs/up.out") =~ /^hello /mg; @h >= $o{workers} }, 15)
            or note("WARNING: $o{tag}: only some gateway links are up: "
                    . slurp("$dir/logs/up.out") . slurp("$dir/logs/error.log"));
    }

    return $s;
}

sub stop_pair {
    my ($s) = @_;
    stop_child($s->{nginx_pid}, 'TERM', 15);
    stop_child($s->{up_pid}, 'TERM', 5);

    my $log = slurp("$s->{dir}/logs/error.log");
    my %lv;
    my @bad;
    for my $line (split /\n/, $log) {
        next unless $line =~ /\[(\w+)\]/;
        $lv{$1}++;
        push @bad, $line if $1 =~ /^(emerg|alert|crit|error)$/ && @bad < 5;
    }
    $s->{log_levels} = join(' ', map { "$_=$lv{$_}" } sort keys %lv) || 'clean';
    $s->{log_bad} = \@bad;
    $s->{log_errors} = ($lv{emerg} // 0) + ($lv{alert} // 0) + ($lv{crit} // 0) + ($lv{error} // 0);
    $s->{log_warns} = $lv{warn} // 0;
    my @hello = slurp("$s->{dir}/logs/up.out") =~ /^hello /mg;
    $s->{gw_hellos} = scalar @hello;
    $s->{up_stats} = (grep { /connections=/ } split /\n/, slurp("$s->{dir}/logs/up.err"))[0] // '';
}

sub parse_result {
    my ($file) = @_;
    my ($line) = grep { /^RESULT / } split /\n/, slurp($file);
    return undef unless $line;
    my %r = $line =~ /(\w+)=(\S+)/g;
    return \%r;
}

###########################################################################
# runs

my @RUNS;       # every run's figures

sub cpu_busy_ticks {
    my @v = (split ' ', (split /\n/, slurp('/proc/stat'))[0])[1 .. 8];
    return $v[0] + $v[1] + $v[2] + $v[5] + $v[6] + $v[7];
}

# waits (BENCH_WAIT_QUIET) until the machine is nearly idle
sub wait_quiet {
    return unless $WAIT_QUIET > 0;
    my $deadline = time + $WAIT_QUIET;
    my $t0 = time;
    while (time < $deadline) {
        my $b0 = cpu_busy_ticks();
        sleep 0.5;
        my $pct = (cpu_busy_ticks() - $b0) / $CLK_TCK / 0.5 * 100;
        if ($pct < 50) {
            note(sprintf "waited %.1f s for a quiet machine", time - $t0) if time - $t0 > 1;
            return;
        }
    }
    note("machine still busy after $WAIT_QUIET s: running anyway");
}

# figures computed from the measured ones (also when re-reading runs.json)
sub derive {
    my ($run) = @_;
    return if $run->{load} eq 'idle';

    # CPU of everything else on the machine during the window.  irq and
    # softirq time is shown apart but not subtracted: with tick-based
    # accounting it is also in the stime of whoever was running
    my @wpct = split /\+/, $run->{wcpu_pct};
    my $ours = $run->{lg_pct} + $run->{up_pct};
    $ours += $_ for @wpct;
    $run->{other_pct} = $run->{machine_pct} - $ours;
    $run->{other_pct} = 0 if $run->{other_pct} < 0;

    # the busiest of the three processes; the bottleneck when near a core
    my %busy = ('nginx worker' => $run->{wcpu_max}, loadgen => $run->{lg_pct},
                $run->{up_name} => $run->{up_pct});
    my ($top) = sort { $busy{$b} <=> $busy{$a} } keys %busy;
    $run->{busiest} = sprintf '%s %.0f%%', $top, $busy{$top};
    $run->{bottleneck} = $busy{$top} >= 85 ? $top
                       : $run->{machine_pct} >= 180 ? "CPU: both cores busy; busiest: $top"
                       : "none; busiest: $top";
}

# $inflight: a slow gateway (fakegw -L) and an open loop that together
# hold that many runs in flight in the worker, through the whole window.
# $pipe: clients that pipeline, each keeping that many messages
# outstanding (issue 10's overload case), against a fast gateway
sub run_load {
    my ($scen, $workers, $load, $rep, $inflight, $pipe) = @_;
    my $tag = sprintf '%s%dw-%s-r%d', $scen, $workers,
                      $inflight ? "inflight$inflight"
                      : $pipe ? "pipeW$pipe" : $load, $rep;
    my ($duration, $warmup, $drain) = ($DURATION, $WARMUP, $DRAIN);
    my ($conns, $window) = ($CONNS, $WINDOW);
    my %extra;
    if ($pipe) {
        # the same limits for every window, so that only W differs between
        # the runs: the connection's above the largest window, the worker's
        # above every client's window together.  The drain has a whole
        # window of every client to answer
        my $maxw = (sort { $b <=> $a } @PIPELINE)[0];
        my $conn_max = 2 * $maxw < 4096 ? 4096 : 2 * $maxw;
        my $runs_max = 2 * $PIPELINE_CONNS * $maxw + 1000;
        $runs_max = 100000 if $runs_max < 100000;
        ($load, $conns, $window) = ('flood', $PIPELINE_CONNS, $pipe);
        ($duration, $drain) = ($PIPELINE_DURATION, $DRAIN + 8);
        %extra = (http_extra => "    openclaw_gateway_max_runs $runs_max;\n",
                  loc_extra => "            openclaw_bridge_max_in_flight "
                               . "$conn_max;\n");
    }
    if ($inflight) {
        # Little's law: a run lasts inflight / rate seconds; the warm-up
        # fills the worker, the drain waits for the last runs
        $load = $INFLIGHT_RATE;
        my $lat = $inflight / $load;
        ($duration, $warmup, $drain) = ($INFLIGHT_DURATION, $lat + 1, $lat + 2);
        my $per_conn = int($inflight / $CONNS) + 1;
        %extra = (latency_ms => int($lat * 1000 + 0.5),
                  http_extra => '    openclaw_gateway_max_runs '
                                . (2 * $inflight + 1000) . ";\n",
                  loc_extra => '            openclaw_bridge_max_in_flight '
                               . (2 * $per_conn + 64) . ";\n");
    }
    wait_quiet();
    my $s = start_pair(tag => $tag, scen => $scen, workers => $workers,
                       wconns => 4096, %extra);
    my @w = @{ $s->{workers_pids} };
    my $rss_idle = 0;
    $rss_idle += rss_kb($_) for @w;

    my @load_args = $load eq 'flood' ? ('-f', '-W', $window) : ('-R', $load);
    my $lg = spawn('loadgen', "$s->{dir}/logs/loadgen.out", "$s->{dir}/logs/loadgen.err",
        "$BB/loadgen", '-p', $s->{port}, '-c', $conns, @load_args,
        '-d', $duration, '-w', $warmup, '-D', $drain, '-s', $SIZE,
        '-m', $scen eq 'A' ? 'bridge' : 'echo',
        '-P', join(',', @w, $s->{up_pid}));

    # in the middle of the measurement: who holds connections to the upstream
    sleep($warmup + $duration / 2 + 0.2);
    my @up_conns = conns_to($s->{up}, @w);
    my $rss_mid = 0;
    $rss_mid += rss_kb($_) for @w;
    my $st = $inflight || $pipe ? status_json($s) : undef;
    my $runs_mid = 0;
    $runs_mid += $_->{runs_in_flight} for @{ $st ? $st->{workers} : [] };

    reap($lg, $duration + $drain + 60) or do {
        note("WARNING: $tag: loadgen did not finish, killed");
        stop_child($lg, 'KILL', 2);
    };
    my $hwm = 0;
    $hwm += hwm_kb($_) for @w;
    stop_pair($s);

    my $r = parse_result("$s->{dir}/logs/loadgen.out");
    if (!$r) {
        note("ERROR: $tag: no result: " . slurp("$s->{dir}/logs/loadgen.err"));
        return;
    }

    my ($wcpu, $wticks, $wrss, $wrss0) = (0, 0, 0, 0);
    my @wpct;
    for my $i (0 .. $#w) {
        $wcpu += $r->{"cpu${i}_s"};
        $wticks += $r->{"cpu${i}_ticks"};
        $wrss += $r->{"rss${i}_kb"};
        $wrss0 += $r->{"rss${i}_start_kb"};
        push @wpct, $r->{"cpu${i}_pct"};
    }
    my $ui = scalar @w;
    my $completed = $r->{completed} || 0;
    my %run = (
        tag => $tag, scen => $scen, workers => $workers,
        load => $inflight ? "inflight$inflight" : $load, rep => $rep,
        msgs => $r->{throughput},
        p50 => $r->{p50_us} / 1000, p90 => $r->{p90_us} / 1000,
        p99 => $r->{p99_us} / 1000, p999 => $r->{p999_us} / 1000,
        cpu_rt => $completed ? $wcpu * 1e6 / $completed : 0,
        wticks => $wticks,
        wrss_mb => $wrss / 1024,
        wrss_peak_mb => $hwm / 1024,
        rss_growth_kb => $wrss - $wrss0,
        wcpu_pct => join('+', @wpct),
        wcpu_max => (sort { $b <=> $a } @wpct)[0],
        lg_pct => $r->{loadgen_cpu_pct},
        up_pct => $r->{"cpu${ui}_pct"},
        machine_pct => $r->{machine_cpu_pct},
        completed => $completed,
        errors => $r->{error_replies} + $r->{lost} + $r->{closed} + $r->{connect_failed}
                  + $r->{proto_errors} + $r->{unmatched} + ($r->{unanswered} // 0),
        sent => $r->{sent}, completed_all => $r->{completed_all},
        errors_all => $r->{errors_all}, unanswered => $r->{unanswered},
        unmatched => $r->{unmatched}, proto_errors => $r->{proto_errors},
        conns => $conns,
        error_replies => $r->{error_replies}, lost => $r->{lost},
        closed => $r->{closed}, connected => $r->{connected},
        skipped => $r->{skipped}, late => $r->{late},
        up_conns => join('+', @up_conns),
        gw_ok => ($scen eq 'A' ? ((grep { $_ != 1 } @up_conns) ? 0 : 1) : undef),
        gw_hellos => $s->{gw_hellos},
        log_levels => $s->{log_levels}, log_errors => $s->{log_errors},
        log_bad => $s->{log_bad},
    );

    $run{irq_pct} = $r->{irq_cpu_pct} // 0;
    $run{up_name} = $s->{up_name};
    if ($inflight) {
        @run{qw(inflight rate latency_ms runs_mid rss_idle_kb)}
            = ($inflight, $load, $extra{latency_ms}, $runs_mid, $rss_idle);
        $run{kb_per_run} = ($wrss - $rss_idle) / ($runs_mid || 1);
    }
    if ($pipe) {
        # every message of the run, warm-up included, got exactly one
        # reply and it was a complete: anything else fails the bench
        @run{qw(pipeline runs_mid rss_idle_kb)} = ($pipe, $runs_mid, $rss_idle);
        my @why;
        push @why, "$run{unanswered} of $run{sent} messages never answered"
            if !defined $run{unanswered} || $run{unanswered};
        push @why, "$run{unmatched} replies to no outstanding message (a second reply?)"
            if $run{unmatched};
        push @why, "$run{errors_all} error replies" if $run{errors_all};
        push @why, "$run{completed_all} completes for $run{sent} messages"
            if ($run{completed_all} // -1) != $run{sent};
        push @why, "$run{closed} connections closed, $run{connected}/$conns connected"
            if $run{closed} || $run{connected} != $conns;
        push @why, "$run{proto_errors} protocol errors" if $run{proto_errors};
        $run{exact_fail} = join '; ', @why;
    }
    derive(\%run);

    push @RUNS, \%run;
    note(sprintf "%-18s %8.0f msg/s  p50 %6.3f ms  p99 %7.3f ms  worker %5.1f us/rt %s%%  "
         . "rss %5.1f MB  loadgen %s%%  %s %s%%  irq %.0f%%  others %.0f%%  err %d  upconns %s  log %s",
         $tag, $run{msgs}, $run{p50}, $run{p99}, $run{cpu_rt}, $run{wcpu_pct},
         $run{wrss_mb}, $run{lg_pct}, $s->{up_name}, $run{up_pct}, $run{irq_pct}, $run{other_pct},
         $run{errors}, $run{up_conns}, $run{log_levels});
    note(sprintf "    %d runs in flight mid-window; worker RSS %.1f MB over %.1f MB idle: "
         . "%.2f kB per run in flight", $runs_mid, $wrss / 1024, $rss_idle / 1024,
         $run{kb_per_run})
        if $inflight;
    note(sprintf "    W=%d on %d connections: %d runs in flight mid-window, worker RSS peak "
         . "%.1f MB; whole run: %d sent, %d completes, %d unanswered: %s",
         $pipe, $conns, $runs_mid, $hwm / 1024, $run{sent}, $run{completed_all} // 0,
         $run{unanswered} // -1,
         $run{exact_fail} ? "FAILED: $run{exact_fail}" : 'exactly one complete each')
        if $pipe;
    note("    error.log: $_") for @{ $s->{log_bad} };
    if ($run{errors}) {
        my ($fe) = slurp("$s->{dir}/logs/loadgen.err") =~ /first error: (.*)/;
        note("    loadgen: error replies $run{error_replies}, lost $run{lost}, closed $run{closed}"
             . ($fe ? "; first: $fe" : ''));
    }
}

my $IDLE_N = $IDLE_WANT;
{
    # scenario B holds two sockets per client in one worker, and nginx
    # starts closing connections that wait for a request (reusable ones)
    # when fewer than 1/16 of worker_connections are free
    my $cap = int((($nofile_hard - 100) * 15 / 16 - 100) / 2 / 500) * 500;
    $IDLE_N = $cap if $cap < $IDLE_N;
}

sub run_idle {
    my ($scen, $rep) = @_;
    my $tag = sprintf '%s1w-idle-r%d', $scen, $rep;
    wait_quiet();
    my $wconns = $nofile_hard - 100;
    my $s = start_pair(tag => $tag, scen => $scen, workers => 1, wconns => $wconns);
    my ($w) = @{ $s->{workers_pids} };

    sleep 1;
    my $rss0 = rss_kb($w);
    my $up0 = rss_kb($s->{up_pid});

    my $hold = $QUICK ? 4 : 5;
    my $lg = spawn('loadgen', "$s->{dir}/logs/loadgen.out", "$s->{dir}/logs/loadgen.err",
        "$BB/loadgen", '-p', $s->{port}, '-c', $IDLE_N, '-i', '-w', 1, '-d', $hold,
        '-m', $scen eq 'A' ? 'bridge' : 'echo', '-C', 256,
        '-P', join(',', $w, $s->{up_pid}));

    # while the connections are held: the worker's descriptors, then its
    # sockets to the upstream (ss takes a while with 20 000 sockets)
    my $upc = 0;
    wait_for(sub { slurp("$s->{dir}/logs/loadgen.err") =~ /connected/ }, 60);
    sleep 0.3;
    my $fds = () = glob("/proc/$w/fd/*");
    ($upc) = conns_to($s->{up}, $w);

    reap($lg, 120) or stop_child($lg, 'KILL', 2);
    stop_pair($s);

    my $r = parse_result("$s->{dir}/logs/loadgen.out");
    if (!$r) {
        note("ERROR: $tag: no result: " . slurp("$s->{dir}/logs/loadgen.err"));
        return;
    }
    my $n = $r->{connected} || 1;
    my %run = (
        tag => $tag, scen => $scen, workers => 1, load => 'idle', rep => $rep,
        idle_conns => $r->{connected}, idle_failed => $r->{connect_failed} + $r->{closed},
        rss0_kb => $rss0, rss1_kb => $r->{rss0_kb},
        per_conn => ($r->{rss0_kb} - $rss0) * 1024 / $n,
        up_per_conn => ($r->{rss1_kb} - $up0) * 1024 / $n,
        sockets_per_client => $scen eq 'A' ? 1 : 2,
        up_conns => $upc, worker_fds => $fds,
        connect_s => $r->{connect_s},
        log_levels => $s->{log_levels}, log_errors => $s->{log_errors},
        log_bad => $s->{log_bad},
    );
    $run{per_socket} = $run{per_conn} / $run{sockets_per_client};
    push @RUNS, \%run;
    note(sprintf "%-18s %d conns (%d failed) in %.2f s: worker RSS %d -> %d kB = %.0f B/conn"
         . " (%.0f B/socket); upstream %.0f B/conn; worker fds %d, upstream conns %d; log %s",
         $tag, $r->{connected}, $run{idle_failed}, $r->{connect_s}, $rss0, $r->{rss0_kb},
         $run{per_conn}, $run{per_socket}, $run{up_per_conn}, $fds, $upc, $run{log_levels});
    note("    error.log: $_") for @{ $s->{log_bad} };
}

###########################################################################
# statistics and reports

sub median {
    my @v = sort { $a <=> $b } grep { defined } @_;
    return undef unless @v;
    return @v % 2 ? $v[$#v / 2] : ($v[@v / 2 - 1] + $v[@v / 2]) / 2;
}

sub stats {
    my @v = grep { defined } @_;
    return (undef, undef, undef) unless @v;
    my @s = sort { $a <=> $b } @v;
    return (median(@v), $s[0], $s[-1]);
}

sub fmt {
    my ($v, $d) = @_;
    return '–' unless defined $v;
    my $s = sprintf "%.${d}f", $v;
    # thousands separators for big numbers
    1 while $s =~ s/^(-?\d+)(\d{3})/$1 $2/;
    return $s;
}

sub fmt_mr {
    my ($d, @v) = @_;
    my ($m, $lo, $hi) = stats(@v);
    return '–' unless defined $m;
    return fmt($m, $d) if @v == 1 || fmt($lo, $d) eq fmt($hi, $d);
    return fmt($m, $d) . ' (' . fmt($lo, $d) . '–' . fmt($hi, $d) . ')';
}

sub mode_of {
    my %c;
    $c{$_}++ for @_;
    return join ', ', map { $c{$_} == @_ ? $_ : "$_ ×$c{$_}" }
                      sort { $c{$b} <=> $c{$a} || $a cmp $b } keys %c;
}

sub groups {
    my %g;
    my @order;
    for my $r (@RUNS) {
        next if $r->{load} eq 'idle' || $r->{inflight} || $r->{pipeline};
        my $k = "$r->{scen}|$r->{workers}|$r->{load}";
        push @order, $k unless $g{$k};
        push @{ $g{$k} }, $r;
    }
    my %lrank = map { $LOADS[$_] => $_ } 0 .. $#LOADS;
    @order = sort {
        my @a = split /\|/, $a; my @b = split /\|/, $b;
        $a[1] <=> $b[1] || ($lrank{$a[2]} // 99) <=> ($lrank{$b[2]} // 99) || $a[0] cmp $b[0]
    } @order;
    return (\%g, \@order);
}

sub load_label {
    my ($l) = @_;
    return $l eq 'flood' ? "flood (W=$WINDOW)" : fmt($l, 0) . ' msg/s';
}

sub gsum {
    my ($g, $k) = @_;
    return undef unless $g->{$k};
    my @r = @{ $g->{$k} };
    return {
        runs => scalar @r,
        msgs => [stats(map { $_->{msgs} } @r)],
        p50 => [stats(map { $_->{p50} } @r)],
        p99 => [stats(map { $_->{p99} } @r)],
        cpu_rt => [stats(map { $_->{cpu_rt} } @r)],
    };
}

sub machine_desc {
    my $cpu = (slurp('/proc/cpuinfo') =~ /^model name\s*:\s*(.*)$/m)[0] // '?';
    my $nginx_v = sh_out("$NGINX -v");
    $nginx_v =~ s/^nginx version: //;
    my $git = sh_out("git -C $TOP rev-parse --short HEAD");
    my $dirty = sh_out("git -C $TOP status --porcelain -- src config") ne '' ? ' + uncommitted changes in src/' : '';
    my $mod = module_path();
    my @st = stat $mod;
    return (
        date => strftime('%Y-%m-%d %H:%M:%S %Z', localtime),
        nproc => sh_out('nproc'),
        cpu => $cpu,
        kernel => sh_out('uname -sr'),
        nginx => $nginx_v,
        module => $mod . (@st ? ' (built ' . strftime('%Y-%m-%d %H:%M', localtime $st[9]) . ')' : ''),
        git => "$git$dirty",
        nofile => "soft $nofile_soft, hard $nofile_hard",
        # what this run was asked to do, so that a report says how to
        # make it again (the make target only sets BENCH_ONLY)
        env => join(' ', map { "$_=$ENV{$_}" }
                         grep { /^BENCH_/ && $_ ne 'BENCH_ULIMIT_DONE' } sort keys %ENV),
    );
}

sub report {
    my ($machine, $load_before, $load_after, $busy_before) = @_;
    my ($g, $order) = groups();
    my @md;

    push @md, $ONLY eq 'inflight' ? '# make bench-inflight: openclaw_bridge with runs in flight'
            : $ONLY eq 'pipeline' ? '# make bench-pipeline: openclaw_bridge with clients that pipeline'
            : '# make bench: openclaw_bridge (A) vs nginx proxy_pass (B)', '';
    push @md, sprintf('- date: %s', $machine->{date});
    push @md, sprintf('- machine: %s CPUs, %s, %s', $machine->{nproc}, $machine->{cpu}, $machine->{kernel});
    push @md, sprintf('- nginx: %s (stock binary %s)', $machine->{nginx}, $NGINX);
    push @md, sprintf('- module: %s; git %s', $machine->{module}, $machine->{git});
    push @md, sprintf('- environment: %s', $machine->{env} || 'no BENCH_ variables')
        if defined $machine->{env};
    push @md, sprintf('- load average before / after: %s / %s', $load_before, $load_after);
    push @md, sprintf('- busiest other processes before the start: %s', $busy_before) if $busy_before;
    push @md, sprintf('- settings: %d repetition(s); %d connections, %d-byte content; runs in flight %s',
                      $REPS, $CONNS, $SIZE, join(', ', map { fmt($_, 0) } @INFLIGHT))
        if $ONLY eq 'inflight';
    push @md, sprintf('- settings: %d repetition(s); %d connections, %d-byte content; windows %s; '
                      . '%g s warm-up + %g s measured per run; CLK_TCK %s',
                      $REPS, $PIPELINE_CONNS, $SIZE, join(', ', @PIPELINE), $WARMUP,
                      $PIPELINE_DURATION, $CLK_TCK)
        if $ONLY eq 'pipeline';
    push @md, sprintf('- settings: %s; %d repetition(s), interleaved; %g s warm-up + %g s measured per run; '
                      . '%d connections, %d-byte content, flood window %d per connection, %d delta events '
                      . 'per reply%s; open files %s; CLK_TCK %s',
                      $QUICK ? 'BENCH_QUICK=1' : 'full', $REPS, $WARMUP, $DURATION, $CONNS, $SIZE,
                      $WINDOW, $DELTAS, $BROADCAST ? ', chat events broadcast to every link' : '',
                      $machine->{nofile}, $CLK_TCK)
        unless $ONLY;
    push @md, '- A: loadgen (bridge mode) -> nginx + `openclaw_bridge` -> bench/fakegw; '
            . 'B: loadgen (echo mode) -> nginx `proxy_pass` -> bench/echo', '';
    push @md, 'Figures are medians over the runs, with the range (min–max) in brackets. '
            . '"worker µs/rt" is the nginx worker CPU (utime+stime, all workers) per completed round trip. '
            . 'CPU % are of one core over the measured window. "irq %" is the irq and softirq time of '
            . 'the whole machine (mostly loopback TCP work; with tick-based accounting it is also '
            . 'in the system time of whichever process was running); "other %" is the machine '
            . '(200 % = both cores) minus the nginx worker(s), loadgen and the upstream: whatever else '
            . 'ran during the window, hypervisor steal included, a noise gauge. The bottleneck is the process at '
            . '85 % of a core or more; when none is and the machine was at 180 % or more, the CPU itself, '
            . 'shared with the other processes.', '';

    push @md, '| scenario | workers | load | runs | completed msg/s | p50 ms | p99 ms | worker µs/rt '
            . '| worker RSS MB | worker CPU % | loadgen CPU % | upstream CPU % | irq % | other % '
            . '| errors | gateway links per worker | bottleneck |',
              '|' . join('|', ('---') x 17) . '|'
        if @$order;

    my @csv = ('scenario,workers,load,runs,msgs_med,msgs_min,msgs_max,p50_ms_med,p50_ms_min,p50_ms_max,'
             . 'p99_ms_med,p99_ms_min,p99_ms_max,p999_ms_med,cpu_us_per_rt_med,cpu_us_per_rt_min,'
             . 'cpu_us_per_rt_max,worker_rss_mb_med,worker_cpu_pct_med,loadgen_cpu_pct_med,'
             . 'upstream_cpu_pct_med,machine_cpu_pct_med,irq_cpu_pct_med,other_cpu_pct_med,errors_total,gateway_links,bottleneck,'
             . 'idle_conns,rss_bytes_per_conn_med,rss_bytes_per_conn_min,rss_bytes_per_conn_max');

    for my $k (@$order) {
        my @r = @{ $g->{$k} };
        my ($scen, $workers, $load) = split /\|/, $k;
        my $name = $scen eq 'A' ? 'A module' : 'B proxy_pass';
        my @wsum = map { my $t = 0; $t += $_ for split /\+/, $_->{wcpu_pct}; $t } @r;
        my $errs = 0;
        $errs += $_->{errors} for @r;
        my $links = $scen eq 'A' ? mode_of(map { $_->{up_conns} } @r) : '–';
        my $bn = mode_of(map { $_->{bottleneck} } @r);
        push @md, sprintf '| %s | %d | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |',
            $name, $workers, load_label($load), scalar @r,
            fmt_mr(0, map { $_->{msgs} } @r),
            fmt_mr(3, map { $_->{p50} } @r),
            fmt_mr(3, map { $_->{p99} } @r),
            fmt_mr(1, map { $_->{cpu_rt} } @r),
            fmt_mr(1, map { $_->{wrss_mb} } @r),
            fmt_mr(0, @wsum),
            fmt_mr(0, map { $_->{lg_pct} } @r),
            fmt_mr(0, map { $_->{up_pct} } @r),
            fmt_mr(0, map { $_->{irq_pct} } @r),
            fmt_mr(0, map { $_->{other_pct} } @r),
            $errs, $links, $bn;
        my @m = stats(map { $_->{msgs} } @r);
        my @p50 = stats(map { $_->{p50} } @r);
        my @p99 = stats(map { $_->{p99} } @r);
        my @cr = stats(map { $_->{cpu_rt} } @r);
        push @csv, join ',', $scen, $workers, $load, scalar @r,
            (map { sprintf '%.1f', $_ } @m), (map { sprintf '%.4f', $_ } @p50, @p99),
            sprintf('%.4f', median(map { $_->{p999} } @r)),
            (map { sprintf '%.2f', $_ } @cr),
            sprintf('%.2f', median(map { $_->{wrss_mb} } @r)),
            sprintf('%.1f', median(@wsum)),
            sprintf('%.1f', median(map { $_->{lg_pct} } @r)),
            sprintf('%.1f', median(map { $_->{up_pct} } @r)),
            sprintf('%.1f', median(map { $_->{machine_pct} } @r)),
            sprintf('%.1f', median(map { $_->{irq_pct} } @r)),
            sprintf('%.1f', median(map { $_->{other_pct} } @r)),
            $errs, '"' . ($scen eq 'A' ? $links : '') . '"', '"' . $bn . '"', '', '', '', '';
    }

    # memory per idle connection
    my %idle;
    push @{ $idle{$_->{scen}} }, $_ for grep { $_->{load} eq 'idle' } @RUNS;
    push @md, '', "### Memory per idle connection", '',
              '| scenario | idle connections | runs | worker RSS before, MB | worker RSS with them, MB '
            . '| bytes per client connection | sockets per client in the worker | bytes per socket '
            . '| upstream bytes per connection | failed | error.log |',
              '|' . join('|', ('---') x 11) . '|'
        if %idle;
    for my $scen (sort keys %idle) {
        my @r = @{ $idle{$scen} };
        push @md, sprintf '| %s | %s | %d | %s | %s | %s | %d | %s | %s | %d | %s |',
            $scen eq 'A' ? 'A module' : 'B proxy_pass',
            fmt(median(map { $_->{idle_conns} } @r), 0), scalar @r,
            fmt_mr(1, map { $_->{rss0_kb} / 1024 } @r),
            fmt_mr(1, map { $_->{rss1_kb} / 1024 } @r),
            fmt_mr(0, map { $_->{per_conn} } @r),
            $r[0]{sockets_per_client},
            fmt_mr(0, map { $_->{per_socket} } @r),
            fmt_mr(0, map { $_->{up_per_conn} } @r),
            (eval { my $t = 0; $t += $_->{idle_failed} for @r; $t }),
            mode_of(map { $_->{log_levels} } @r);
        my @pc = stats(map { $_->{per_conn} } @r);
        push @csv, join ',', $scen, 1, 'idle', scalar @r, ('') x 23,
            median(map { $_->{idle_conns} } @r), map { sprintf '%.0f', $_ } @pc;
    }
    if (%idle && $IDLE_N < $IDLE_WANT) {
        push @md, '', "The hard limit of open files ($nofile_hard, which this user cannot raise) "
                . "caps the idle test at $IDLE_N connections: scenario B needs two descriptors "
                . "per client in the worker.";
    }

    # runs in flight
    my %inf;
    push @{ $inf{$_->{inflight}} }, $_ for grep { $_->{inflight} } @RUNS;
    if (%inf) {
        push @md, '', '### Runs in flight (slow gateway)', '';
        push @md, sprintf('One worker, %d connections, an open loop of %s msg/s; fakegw acknowledges '
                . 'each chat.send at once and sends its final after a delay of in flight / rate, '
                . 'so that the worker holds that many runs through the window (%g s, after a '
                . 'warm-up of the delay + 1 s). "runs in flight" is the status endpoint\'s count '
                . 'in the middle of the window; "kB per run" is (worker RSS at the end of the '
                . 'window − RSS before the load) / runs in flight.',
                $CONNS, fmt($INFLIGHT_RATE, 0), $INFLIGHT_DURATION), '';
        push @md, '| in flight | runs | delay ms | runs in flight | completed msg/s | worker µs/msg '
                . '| worker CPU % | worker RSS MB | kB per run | p50 ms | errors | bottleneck |';
        push @md, '|' . join('|', ('---') x 12) . '|';
        for my $n (sort { $a <=> $b } keys %inf) {
            my @r = @{ $inf{$n} };
            my $errs = 0;
            $errs += $_->{errors} for @r;
            push @md, sprintf '| %s | %d | %d | %s | %s | %s | %s | %s | %s | %s | %d | %s |',
                fmt($n, 0), scalar @r, $r[0]{latency_ms},
                fmt_mr(0, map { $_->{runs_mid} } @r),
                fmt_mr(0, map { $_->{msgs} } @r),
                fmt_mr(1, map { $_->{cpu_rt} } @r),
                fmt_mr(0, map { $_->{wcpu_max} } @r),
                fmt_mr(1, map { $_->{wrss_mb} } @r),
                fmt_mr(2, map { $_->{kb_per_run} } @r),
                fmt_mr(3, map { $_->{p50} } @r),
                $errs, mode_of(map { $_->{bottleneck} } @r);
            push @csv, join ',', 'A', 1, "inflight$n", scalar @r,
                (map { sprintf '%.1f', $_ } stats(map { $_->{msgs} } @r)),
                (map { sprintf '%.4f', $_ } stats(map { $_->{p50} } @r)), ('') x 4,
                (map { sprintf '%.2f', $_ } stats(map { $_->{cpu_rt} } @r)),
                sprintf('%.2f', median(map { $_->{wrss_mb} } @r)), ('') x 6, $errs,
                '', '', '', '', '', '';
        }
    }

    # clients that pipeline
    my %pip;
    push @{ $pip{$_->{pipeline}} }, $_ for grep { $_->{pipeline} } @RUNS;
    if (%pip) {
        my @ws = sort { $a <=> $b } keys %pip;
        my $base_cpu = median(map { $_->{cpu_rt} } @{ $pip{$ws[0]} });
        push @md, '', '### Clients that pipeline (fast gateway)', '';
        push @md, sprintf('One worker, %d connections, each keeping W messages outstanding: a '
                . 'reply sends the next message at once, so W = 1 is a client that waits for '
                . 'each reply (paced) and a larger W one that pipelines without waiting. '
                . '`openclaw_bridge_max_in_flight` and `openclaw_gateway_max_runs` are raised '
                . 'above the largest window for every run. fakegw answers each chat.send at once. '
                . '"worker µs/msg" is the worker\'s CPU (utime + stime) over the %g s window per '
                . 'message completed in it; "vs W=%d" divides it by that of the first row. '
                . '"runs in flight" is the status count in the middle of the window; "RSS peak" '
                . 'the worker\'s VmHWM after the run. "whole run" counts every message, warm-up '
                . 'and drain included: it must be sent = completes with nothing unanswered, no '
                . 'error reply and no second reply, or the bench fails.',
                $PIPELINE_CONNS, $PIPELINE_DURATION, $ws[0]), '';
        push @md, "| W | runs | messages in window | goodput msg/s | worker µs/msg | vs W=$ws[0] "
                . '| worker CPU % | runs in flight | worker RSS peak MB | whole run: sent / completes '
                . '| exactly one complete | p50 ms | other % | bottleneck |';
        push @md, '|' . join('|', ('---') x 14) . '|';
        for my $w (@ws) {
            my @r = @{ $pip{$w} };
            my $cpu = median(map { $_->{cpu_rt} } @r);
            my ($sent, $done) = (0, 0);
            $sent += $_->{sent} for @r;
            $done += $_->{completed_all} // 0 for @r;
            my $bad = grep { $_->{exact_fail} } @r;
            push @md, sprintf '| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s / %s | %s | %s | %s | %s |',
                fmt($w, 0), scalar @r,
                fmt_mr(0, map { $_->{completed} } @r),
                fmt_mr(0, map { $_->{msgs} } @r),
                fmt_mr(1, map { $_->{cpu_rt} } @r),
                $base_cpu ? fmt($cpu / $base_cpu, 2) : '–',
                fmt_mr(0, map { $_->{wcpu_max} } @r),
                fmt_mr(0, map { $_->{runs_mid} } @r),
                fmt_mr(1, map { $_->{wrss_peak_mb} } @r),
                fmt($sent, 0), fmt($done, 0),
                $bad ? "NO ($bad of " . scalar(@r) . ' runs)' : 'yes',
                fmt_mr(3, map { $_->{p50} } @r),
                fmt_mr(0, map { $_->{other_pct} } @r),
                mode_of(map { $_->{bottleneck} } @r);
            push @csv, join ',', 'A', 1, "pipeW$w", scalar @r,
                (map { sprintf '%.1f', $_ } stats(map { $_->{msgs} } @r)),
                (map { sprintf '%.4f', $_ } stats(map { $_->{p50} } @r)), ('') x 4,
                (map { sprintf '%.2f', $_ } stats(map { $_->{cpu_rt} } @r)),
                sprintf('%.2f', median(map { $_->{wrss_peak_mb} } @r)), ('') x 6,
                $bad ? scalar(grep { $_->{exact_fail} } @r) : 0,
                '', '', '', '', '', '';
        }
    }

    # targets
    my @t = targets($g);
    push @md, '', '### Targets', '';
    push @md, '| target | A | B | value | goal | verdict |', '|---|---|---|---|---|---|';
    push @md, map { sprintf '| %s | %s | %s | %s | %s | %s |', @$_ } @t;

    # anomalies
    my @anom = anomalies();
    push @md, '', '### Anomalies', '';
    push @md, @anom ? map { "- $_" } @anom : ('- none seen: no error replies, lost messages, closed '
                                             . 'connections or error.log errors');

    my $md = join("\n", @md) . "\n";
    my $base = $ONLY ? "results-$ONLY" : 'results';
    open my $f, '>', "$OUT/$base.md" or die "$OUT/$base.md: $!";
    print $f $md;
    close $f;
    open $f, '>', "$OUT/$base.csv" or die $!;
    print $f join("\n", @csv), "\n";
    close $f;

    # every run, raw
    my @cols = qw(tag scen workers load rep msgs p50 p90 p99 p999 cpu_rt wticks wrss_mb wcpu_pct
                  rss_growth_kb lg_pct up_pct machine_pct irq_pct other_pct completed errors error_replies lost closed skipped late
                  up_conns gw_hellos bottleneck busiest idle_conns rss0_kb rss1_kb per_conn
                  up_per_conn log_levels inflight latency_ms runs_mid kb_per_run
                  pipeline conns sent completed_all errors_all unanswered unmatched
                  wrss_peak_mb exact_fail);
    open $f, '>', "$OUT/$base-runs.csv" or die $!;
    print $f join(',', @cols), "\n";
    for my $r (@RUNS) {
        print $f join(',', map { my $v = $r->{$_} // ''; $v =~ /[, ]/ ? "\"$v\"" : $v } @cols), "\n";
    }
    close $f;

    return ($md, \@t);
}

sub targets {
    my ($g) = @_;
    my @t;
    my $A = sub { gsum($g, "A|1|$_[0]") };
    my $B = sub { gsum($g, "B|1|$_[0]") };

    if (my ($ga, $gb) = ($A->('10000'), $B->('10000'))) {
        if ($ga && $gb && $gb->{cpu_rt}[0]) {
            my $v = $ga->{cpu_rt}[0] / $gb->{cpu_rt}[0];
            push @t, ['worker CPU per round trip at 10k msg/s, A/B', fmt($ga->{cpu_rt}[0], 1) . ' µs',
                      fmt($gb->{cpu_rt}[0], 1) . ' µs', fmt($v, 2), '≤ 1.5', $v <= 1.5 ? 'PASS' : 'MISS'];
        }
    }
    if (my ($ga, $gb) = ($A->('flood'), $B->('flood'))) {
        if ($ga && $gb && $gb->{msgs}[0]) {
            my $v = $ga->{msgs}[0] / $gb->{msgs}[0];
            push @t, ['flood throughput, A/B', fmt($ga->{msgs}[0], 0) . ' msg/s',
                      fmt($gb->{msgs}[0], 0) . ' msg/s', fmt($v, 2), '≥ 0.6', $v >= 0.6 ? 'PASS' : 'MISS'];
        }
    }
    my $worst;
    for my $l (grep { $_ ne 'flood' && $_ <= 10000 } @LOADS) {
        my ($ga, $gb) = ($A->($l), $B->($l));
        next unless $ga && $gb;
        my $d = $ga->{p50}[0] - $gb->{p50}[0];
        $worst = $d if !defined $worst || $d > $worst;
        push @t, ["p50 latency A−B at " . fmt($l, 0) . ' msg/s', fmt($ga->{p50}[0], 3) . ' ms',
                  fmt($gb->{p50}[0], 3) . ' ms', fmt($d, 3) . ' ms', '≤ 0.1 ms', $d <= 0.1 ? 'PASS' : 'MISS'];
    }
    # per-message cost flat as the runs in flight grow: most against fewest
    my %inf;
    push @{ $inf{$_->{inflight}} }, $_->{cpu_rt} for grep { $_->{inflight} } @RUNS;
    my @levels = sort { $a <=> $b } keys %inf;
    if (@levels >= 2) {
        my ($lo, $hi) = (median(@{ $inf{$levels[0]} }), median(@{ $inf{$levels[-1]} }));
        my $v = $lo ? $hi / $lo : 0;
        push @t, ['worker CPU per message, ' . fmt($levels[-1], 0) . ' vs ' . fmt($levels[0], 0)
                  . ' runs in flight', fmt($hi, 1) . ' µs', fmt($lo, 1) . ' µs', fmt($v, 2),
                  '≤ 1.5', $v && $v <= 1.5 ? 'PASS' : 'MISS'];
    }
    # pipelining clients cost the worker what paced ones do
    my %pip;
    push @{ $pip{$_->{pipeline}} }, $_->{cpu_rt} for grep { $_->{pipeline} } @RUNS;
    my @ws = sort { $a <=> $b } keys %pip;
    if (@ws >= 2) {
        my ($lo, $hi) = (median(@{ $pip{$ws[0]} }), median(@{ $pip{$ws[-1]} }));
        my $v = $lo ? $hi / $lo : 0;
        push @t, ['worker CPU per message, window ' . fmt($ws[-1], 0) . ' vs ' . fmt($ws[0], 0)
                  . ' per connection', fmt($hi, 1) . ' µs', fmt($lo, 1) . ' µs', fmt($v, 2),
                  '≤ 1.5', $v && $v <= 1.5 ? 'PASS' : 'MISS'];
    }
    if (my @bad = grep { $_->{exact_fail} } @RUNS) {
        push @t, ['every pipelined message answered by exactly one complete',
                  scalar(@bad) . ' run(s) failed', '', '', 'all', 'FAIL'];
    } elsif (@ws) {
        push @t, ['every pipelined message answered by exactly one complete',
                  'all runs', '', '', 'all', 'PASS'];
    }
    my (@ia, @ib);
    for (grep { $_->{load} eq 'idle' } @RUNS) {
        push @ia, $_->{per_conn} if $_->{scen} eq 'A';
        push @ib, $_->{per_conn} if $_->{scen} eq 'B';
    }
    if (@ia && @ib) {
        my ($ma, $mb) = (median(@ia), median(@ib));
        push @t, ['memory per idle connection (worker RSS), A vs B', fmt($ma, 0) . ' B',
                  fmt($mb, 0) . ' B', $mb ? fmt($ma / $mb, 2) . '×' : '–', 'A ≤ B', $ma <= $mb ? 'PASS' : 'MISS'];
    }
    return @t;
}

sub anomalies {
    my @a;
    for my $r (@RUNS) {
        my @w;
        if ($r->{load} eq 'idle') {
            push @w, "$r->{idle_failed} connections failed or closed" if $r->{idle_failed};
            my $want = $r->{scen} eq 'A' ? 1 : $r->{idle_conns};
            push @w, "the worker held $r->{up_conns} connections to the upstream (want $want) "
                     . "and $r->{worker_fds} descriptors while the clients were connected"
                if $r->{up_conns} != $want;
        } else {
            push @w, "$r->{error_replies} error replies" if $r->{error_replies};
            push @w, "$r->{lost} messages sent in the window never completed" if $r->{lost};
            push @w, "$r->{closed} connections closed by the server" if $r->{closed};
            push @w, "$r->{connected}/" . ($r->{conns} // $CONNS) . " connected"
                if $r->{connected} != ($r->{conns} // $CONNS);
            push @w, "not exactly one complete per message: $r->{exact_fail}"
                if $r->{exact_fail};
            push @w, "gateway links per worker $r->{up_conns} (want 1 each)"
                if $r->{scen} eq 'A' && !$r->{gw_ok};
            push @w, "$r->{gw_hellos} gateway handshakes for $r->{workers} worker(s): the link reconnected"
                if $r->{scen} eq 'A' && $r->{gw_hellos} > $r->{workers};
            push @w, "open loop fell behind: $r->{skipped} sends skipped" if $r->{skipped};
            push @w, sprintf("worker RSS grew by %d kB during the window (%.0f B per message)",
                             $r->{rss_growth_kb}, $r->{rss_growth_kb} * 1024 / ($r->{completed} || 1))
                if $r->{rss_growth_kb} > 2048 && !$r->{inflight};
        }
        push @w, "error.log: $r->{log_levels}" . (@{ $r->{log_bad} } ? " — first: $r->{log_bad}[0]" : '')
            if $r->{log_errors};
        push @a, "$r->{tag}: " . join('; ', @w) if @w;
    }
    # memory growth over the repetitions of the same run
    my ($g, $order) = groups();
    for my $k (@$order) {
        my @r = sort { $a->{rep} <=> $b->{rep} } @{ $g->{$k} };
        next unless @r >= 2;
        my @rss = map { $_->{wrss_mb} } @r;
        my ($m, $lo, $hi) = stats(@rss);
        push @a, "$k: worker RSS varies between runs from $lo to $hi MB"
            if $hi - $lo > 8 && $hi > 1.5 * $lo;
    }
    return @a;
}

###########################################################################
# main

make_path($OUT);

# BENCH_REPORT=build/bench/runs.json: only write the report again from the
# figures a previous run saved
if (my $saved = $ENV{BENCH_REPORT}) {
    require JSON::PP;
    my $d = JSON::PP::decode_json(slurp($saved) || die "$saved: nothing to read\n");
    my $st = $d->{settings};
    ($QUICK, $REPS, $DURATION, $WARMUP, $CONNS, $SIZE, $WINDOW, $DELTAS, $BROADCAST,
     $IDLE_N, $IDLE_WANT, $nofile_soft, $nofile_hard, $CLK_TCK, $NGINX)
        = @$st{qw(quick reps duration warmup conns size window deltas broadcast
                  idle_n idle_want nofile_soft nofile_hard clk_tck nginx)};
    @LOADS = @{ $st->{loads} };
    @LOADS_2W = @{ $st->{loads_2w} };
    $ONLY = $st->{only} // '';
    $INFLIGHT_RATE = $st->{inflight_rate} // $INFLIGHT_RATE;
    $INFLIGHT_DURATION = $st->{inflight_duration} // $INFLIGHT_DURATION;
    @PIPELINE = @{ $st->{pipeline} // [] };
    $PIPELINE_CONNS = $st->{pipeline_conns} // $PIPELINE_CONNS;
    $PIPELINE_DURATION = $st->{pipeline_duration} // $PIPELINE_DURATION;
    @RUNS = @{ $d->{runs} };
    derive($_) for @RUNS;
    my ($md, $targets) = report($d->{machine}, $d->{load_before}, $d->{load_after},
                                $d->{busy_before});
    print $md;
    exit 0;
}

build();
die "module not found: " . module_path() . "\n" unless -f module_path();

my %machine = machine_desc();
my $load_before = join ' ', (split ' ', slurp('/proc/loadavg'))[0 .. 2];
my $busy_before = sh_out("ps -eo pcpu=,comm= --sort=-pcpu | head -3 | awk '{printf \"%s %s%%, \", \$2, \$1}'");
$busy_before =~ s/, $//;

note("machine: $machine{nproc} CPUs, $machine{cpu}, $machine{kernel}, nginx $machine{nginx}");
note("module: $machine{module}");
note("load average $load_before; busiest processes: $busy_before");
note("open files: soft $nofile_soft, hard $nofile_hard; idle test with $IDLE_N connections");
my $nruns = $ONLY ? 0 : $REPS * (2 * @LOADS + 2 * @LOADS_2W + 2);
my $secs = $nruns * ($WARMUP + $DURATION + 2.5);
for my $n (@INFLIGHT) {
    $nruns += $REPS;
    $secs += $REPS * (2 * $n / $INFLIGHT_RATE + $INFLIGHT_DURATION + 5.5);
}
$nruns += $REPS * @PIPELINE;
$secs += $REPS * @PIPELINE * ($WARMUP + $PIPELINE_DURATION + 4);
note(sprintf "%d runs, about %.0f minutes", $nruns, $secs / 60);

for my $rep (1 .. $REPS) {
    # the slow-gateway runs, fewest runs in flight first
    run_load('A', 1, 'inflight', $rep, $_) for sort { $a <=> $b } @INFLIGHT;
    # clients that pipeline, paced (smallest window) first
    run_load('A', 1, 'flood', $rep, undef, $_) for sort { $a <=> $b } @PIPELINE;
    next if $ONLY;

    # alternate which scenario goes first, against order effects
    my @sc = $rep % 2 ? ('A', 'B') : ('B', 'A');
    for my $load (@LOADS) {
        run_load($_, 1, $load, $rep) for @sc;
    }
    for my $load (@LOADS_2W) {
        run_load($_, 2, $load, $rep) for @sc;
    }
    run_idle($_, $rep) for @sc;
}

my $load_after = join ' ', (split ' ', slurp('/proc/loadavg'))[0 .. 2];

{
    # everything measured, to write the report again (BENCH_REPORT=...)
    require JSON::PP;
    open my $f, '>', "$BB/runs$SUFFIX.json" or die "$BB/runs$SUFFIX.json: $!";
    print $f JSON::PP->new->canonical->pretty->encode({
        machine => \%machine, load_before => $load_before,
        load_after => $load_after, busy_before => $busy_before,
        settings => { quick => $QUICK, reps => $REPS, duration => $DURATION,
                      warmup => $WARMUP, conns => $CONNS, size => $SIZE,
                      window => $WINDOW, deltas => $DELTAS, broadcast => $BROADCAST,
                      idle_n => $IDLE_N, idle_want => $IDLE_WANT,
                      nofile_soft => $nofile_soft, nofile_hard => $nofile_hard,
                      clk_tck => $CLK_TCK, nginx => $NGINX,
                      loads => \@LOADS, loads_2w => \@LOADS_2W, only => $ONLY,
                      inflight => \@INFLIGHT, inflight_rate => $INFLIGHT_RATE,
                      inflight_duration => $INFLIGHT_DURATION,
                      pipeline => \@PIPELINE, pipeline_conns => $PIPELINE_CONNS,
                      pipeline_duration => $PIPELINE_DURATION },
        runs => \@RUNS });
    close $f;
}

my ($md, $targets) = report(\%machine, $load_before, $load_after, $busy_before);

print "\n", $md, "\n";
print "Target ratios:\n";
printf "  %-55s %s (goal %s): %s\n", $_->[0], $_->[3], $_->[4], $_->[5] for @$targets;
my $base = $ONLY ? "results-$ONLY" : 'results';
print "\nwritten: $OUT/$base.md, $OUT/$base.csv, $OUT/$base-runs.csv; "
    . "logs under $RUNDIR/; figures in $BB/runs$SUFFIX.json\n";
note("done");
stop_all();

# a bench that loses or doubles replies measured nothing: say so, and fail
if (my @bad = grep { $_->{exact_fail} } @RUNS) {
    print STDERR "\nFAIL: $_->{tag}: not exactly one complete per message: $_->{exact_fail}\n"
        for @bad;
    exit 1;
}
exit 0;
