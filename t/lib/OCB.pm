package OCB;

# A throwaway nginx for each test: its own prefix under build/t/, a free
# port, "daemon off" as a direct child, and, when it stops, a check that
# error.log has no [alert] or [emerg] and that no sanitizer report was
# written.  OCB_MODULE names the module to load; OCB_ASAN=1 preloads the
# ASan runtime into the stock (uninstrumented) nginx binary, and with it
# build-asan/nodlclose.so (OCB_ASAN_DIR), so that LeakSanitizer can still
# name the module's frames at exit.

use strict;
use warnings;

use Cwd qw(abs_path);
use File::Basename qw(basename dirname);
use File::Path qw(make_path remove_tree);
use IO::Socket::INET;
use POSIX qw(:sys_wait_h);
use Test::More;
use Time::HiRes qw(sleep time);

our $TOP = abs_path(dirname(__FILE__) . '/../..');
our $NGINX = $ENV{OCB_NGINX} // '/usr/sbin/nginx';
my $count = 0;

sub top { $TOP }

sub module {
    return $ENV{OCB_MODULE} // "$TOP/build/ngx_http_openclaw_bridge_module.so";
}

sub asan { return ($ENV{OCB_ASAN} // '') eq '1' }

# where `make module-asan` puts nodlclose.so and the test helpers
sub asan_dir { return $ENV{OCB_ASAN_DIR} // "$TOP/build-asan" }

sub free_port {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Proto => 'tcp', Listen => 1, ReuseAddr => 1)
        or die "no free port: $!";
    my $port = $s->sockport;
    close $s;
    return $port;
}

# new(http => '...%%PORT%%...', main => '...', workers => N,
#     location => '...' (shortcut: one server, "location /" with this body),
#     no_start => 1,
#     dlclose => 1 (under ASan: nginx unmaps its modules before the leak
#                   report, as without the suite; only t/17-asan-leaks.t))
sub new {
    my ($class, %o) = @_;
    my $self = bless {%o}, $class;

    $self->{port} //= free_port();
    $self->{workers} //= 1;
    $self->{prefix} = "$TOP/build/t/" . basename($0, '.t') . "-$$-" . $count++;

    remove_tree($self->{prefix});
    make_path(map { "$self->{prefix}/$_" } qw(conf logs tmp));

    # workers run as nobody and must be able to write sanitizer reports
    chmod 01777, "$self->{prefix}/logs";

    $self->write_conf;
    $self->start unless $o{no_start};
    return $self;
}

sub port { $_[0]{port} }
sub prefix { $_[0]{prefix} }
sub url { my ($self, $path) = @_; return "ws://127.0.0.1:$self->{port}" . ($path // '/') }
sub http_url { my ($self, $path) = @_; return "http://127.0.0.1:$self->{port}" . ($path // '/') }

sub conf_text {
    my ($self) = @_;
    my $http = $self->{http};
    if (!defined $http) {
        my $loc = $self->{location} // 'openclaw_bridge_echo;';
        $http = "server {\n    listen 127.0.0.1:%%PORT%%;\n"
              . "    location / {\n        $loc\n    }\n}\n";
    }
    $http =~ s/%%PORT%%/$self->{port}/g;
    my $main = $self->{main} // '';
    my $level = $ENV{OCB_DEBUG} ? 'debug' : 'info';
    my $module = module();
    return <<"EOF";
load_module $module;
worker_processes $self->{workers};
pid logs/nginx.pid;
error_log logs/error.log $level;
$main
events {
    worker_connections 4096;
}
http {
    access_log logs/access.log;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;

$http
}
EOF
}

sub write_conf {
    my ($self) = @_;
    open my $f, '>', "$self->{prefix}/conf/nginx.conf" or die $!;
    print $f $self->conf_text;
    close $f;
}

sub env_for_nginx {
    my ($self) = @_;
    my %env;
    if (asan()) {
        my $asan = `gcc -print-file-name=libasan.so`; chomp $asan;
        # nginx dlclose()s the module before LeakSanitizer reports at exit,
        # which would leave the module's frames unnamed and its leaks unseen
        # by sanitizer_reports: nodlclose.so keeps it mapped.  The runtime
        # must come first.
        my @preload = ($asan);
        if (!$self->{dlclose}) {
            my $keep = asan_dir() . '/nodlclose.so';
            die "$keep is missing: make module-asan\n" unless -f $keep;
            push @preload, $keep;
        }
        $env{LD_PRELOAD} = join ':', @preload;
        # full malloc stacks: the stock binary has no frame pointers, and
        # check_logs needs to see which leaks come from the module
        $env{ASAN_OPTIONS} = join ':', 'detect_leaks=1', 'abort_on_error=0',
            'fast_unwind_on_malloc=0', "log_path=$self->{prefix}/logs/asan";
        $env{UBSAN_OPTIONS} = "print_stacktrace=1:halt_on_error=1:"
            . "log_path=$self->{prefix}/logs/ubsan";
    }
    return %env;
}

# nginx -t on the current conf: returns (exit status, output).  nginx -t
# returns from main() holding its cycle in a local only, which LeakSanitizer
# reports on every run: leak checking is off for it.
sub test_conf {
    my ($self) = @_;
    my %env = $self->env_for_nginx;
    $env{ASAN_OPTIONS} =~ s/detect_leaks=1/detect_leaks=0/ if $env{ASAN_OPTIONS};
    local @ENV{keys %env} = values %env;
    my $out = `$NGINX -p $self->{prefix}/ -c conf/nginx.conf -e logs/error.log -t 2>&1`;
    return ($? >> 8, $out);
}

sub start {
    my ($self) = @_;
    my %env = $self->env_for_nginx;
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        @ENV{keys %env} = values %env;
        open STDOUT, '>>', "$self->{prefix}/logs/stdout.log";
        open STDERR, '>>', "$self->{prefix}/logs/stderr.log";
        exec $NGINX, '-p', "$self->{prefix}/", '-c', 'conf/nginx.conf',
             '-e', 'logs/error.log', '-g', 'daemon off; master_process on;';
        exit 127;
    }
    $self->{pid} = $pid;

    my $deadline = time + (asan() ? 30 : 10);
    while (time < $deadline) {
        if (waitpid($pid, WNOHANG) == $pid) {
            delete $self->{pid};
            die "nginx exited at start:\n" . $self->read_log('error.log')
                . $self->read_log('stderr.log');
        }
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $self->{port}, Proto => 'tcp');
        if ($s) {
            close $s;
            $self->wait_workers($self->{workers});
            return $self;
        }
        sleep 0.05;
    }
    die "nginx did not listen on $self->{port}";
}

sub pid { $_[0]{pid} }

sub worker_pids {
    my ($self) = @_;
    return () unless $self->{pid};
    my @pids;
    for my $d (glob '/proc/[0-9]*') {
        open my $f, '<', "$d/stat" or next;
        my $stat = <$f>;
        close $f;
        next unless $stat && $stat =~ /\)\s+\S+\s+(\d+)/;
        next unless $1 == $self->{pid};
        open my $c, '<', "$d/cmdline" or next;
        my $cmd = <$c> // '';
        close $c;
        push @pids, basename($d) if $cmd =~ /worker process/;
    }
    return sort { $a <=> $b } @pids;
}

sub wait_workers {
    my ($self, $n, $timeout) = @_;
    my $deadline = time + ($timeout // 10);
    while (time < $deadline) {
        my @w = $self->worker_pids;
        return @w if @w >= $n;
        sleep 0.05;
    }
    return $self->worker_pids;
}

sub read_log {
    my ($self, $name) = @_;
    open my $f, '<', "$self->{prefix}/logs/$name" or return '';
    local $/;
    my $t = <$f>;
    close $f;
    return $t // '';
}

sub error_log { $_[0]->read_log('error.log') }

# waits until error.log matches $re; returns true if it did
sub wait_log {
    my ($self, $re, $timeout) = @_;
    my $deadline = time + ($timeout // 10);
    while (time < $deadline) {
        return 1 if $self->error_log =~ $re;
        sleep 0.05;
    }
    return 0;
}

# sends SIGHUP and waits for the new generation of workers
sub reload {
    my ($self, $timeout) = @_;
    my %old = map { $_ => 1 } $self->worker_pids;
    $self->write_conf;
    kill 'HUP', $self->{pid};
    my $deadline = time + ($timeout // 15);
    while (time < $deadline) {
        my @new = grep { !$old{$_} } $self->worker_pids;
        return @new if @new >= $self->{workers};
        sleep 0.05;
    }
    die "no new workers after reload";
}

sub signal { my ($self, $sig) = @_; kill $sig, $self->{pid} }

# stops nginx with $sig (QUIT by default), waits for it and checks the logs;
# returns the seconds it took to exit
sub stop {
    my ($self, %o) = @_;
    return unless $self->{pid};
    my $pid = delete $self->{pid};
    my $t0 = time;
    kill($o{signal} // 'QUIT', $pid);
    my $deadline = time + ($o{timeout} // 30);
    while (time < $deadline) {
        last if waitpid($pid, WNOHANG) == $pid;
        sleep 0.02;
    }
    my $took = time - $t0;
    if (kill 0, $pid) {
        kill 'KILL', $pid;
        waitpid($pid, 0);
        fail("nginx exited within the timeout");
    }
    $self->check_logs unless $o{no_check};
    return $took;
}

sub check_logs {
    my ($self) = @_;
    my $log = $self->error_log;
    my @bad = grep { /\[(alert|emerg)\]/ } split /\n/, $log;
    ok(!@bad, 'error.log has no [alert] or [emerg]') or diag join "\n", @bad;

    my $reports = '';
    for my $f (glob "$self->{prefix}/logs/asan* $self->{prefix}/logs/ubsan*") {
        open my $h, '<', $f or next;
        local $/;
        my $text = <$h>;
        close $h;
        $reports .= "== $f\n" . $_ for sanitizer_reports($text);
    }
    # nginx points stderr at error.log, so reports may land there too
    for my $name ('stderr.log', 'error.log') {
        $reports .= "== $name\n" . $_ for sanitizer_reports($self->read_log($name));
    }
    ok($reports eq '', 'no sanitizer report') or diag $reports;
}

# The sanitizer reports in a text that concern the module.  Every ASan or
# UBSan error counts; a leak counts when its allocation stack goes through
# the module, since stock nginx leaves its cycle arrays to the OS at exit
# in workers that served nothing.
sub sanitizer_reports {
    my ($text) = @_;
    my @found;
    push @found, $1 while $text =~ /(ERROR: AddressSanitizer(?!: \d+ byte).*?(?:\n\n|\z))/gs;
    push @found, $1 while $text =~ /(\S+:\d+:\d+: runtime error:.*\n)/g;
    push @found, $1 while $text =~ /^(\S.*runtime error:.*\n)/mg;
    for my $leak ($text =~ /((?:Direct|Indirect) leak of .*?(?:\n\n|\z))/gs) {
        push @found, $leak if $leak =~ /openclaw/;
    }
    my %seen;
    return grep { !$seen{$_}++ } @found;
}

sub DESTROY {
    my ($self) = @_;
    if ($self->{pid}) {
        kill 'KILL', $self->{pid};
        waitpid($self->{pid}, 0);
    }
}

# A raw WebSocket client over a blocking socket, for frames no library
# will send.  ws(path => '/', headers => {...}, extra => $bytes)
sub ws {
    my ($self, %o) = @_;
    return OCB::Raw->connect($self->{port}, %o);
}

package OCB::Raw;

use strict;
use warnings;

use IO::Select;
use IO::Socket::INET;
use Socket ();
use Mojo::WebSocket qw(build_frame parse_frame);
use Digest::SHA qw(sha1_base64);
use Time::HiRes qw(time);

our $KEY = 'dGhlIHNhbXBsZSBub25jZQ==';

# raw HTTP request text for an upgrade, with overridable headers
sub request {
    my ($class, %o) = @_;
    my %h = (
        'Host' => '127.0.0.1',
        'Upgrade' => 'websocket',
        'Connection' => 'Upgrade',
        'Sec-WebSocket-Key' => $KEY,
        'Sec-WebSocket-Version' => '13',
        %{ $o{headers} // {} },
    );
    my $req = ($o{method} // 'GET') . ' ' . ($o{path} // '/') . ' '
            . ($o{version} // 'HTTP/1.1') . "\r\n";
    for my $k (sort keys %h) {
        next unless defined $h{$k};
        $req .= "$k: $_\r\n" for ref $h{$k} ? @{ $h{$k} } : $h{$k};
    }
    return $req . "\r\n";
}

# connect($port, path => ..., rcvbuf => bytes): a small receive window
# is set before connecting, for a client that reads slowly
sub connect {
    my ($class, $port, %o) = @_;
    my $sock;
    if ($o{rcvbuf}) {
        $sock = IO::Socket::INET->new(Proto => 'tcp') or die "socket: $!";
        setsockopt($sock, Socket::SOL_SOCKET(), Socket::SO_RCVBUF(), $o{rcvbuf})
            or die "SO_RCVBUF: $!";
        connect($sock, Socket::pack_sockaddr_in($port, Socket::inet_aton('127.0.0.1')))
            or die "connect: $!";
    } else {
        $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                      Proto => 'tcp') or die "connect: $!";
    }
    $sock->autoflush(1);
    binmode $sock;
    my $self = bless { sock => $sock, buf => '' }, $class;
    $self->send_raw($class->request(%o) . ($o{extra} // ''));
    $self->read_response($o{timeout} // 5);
    return $self;
}

sub read_response {
    my ($self, $timeout) = @_;
    my $deadline = time + $timeout;
    while ($self->{buf} !~ /\r\n\r\n/) {
        last unless $self->fill($deadline - time);
    }
    if ($self->{buf} =~ s/^(.*?)\r\n\r\n//s) {
        my $head = $1;
        my ($status_line, @lines) = split /\r\n/, $head;
        $self->{status_line} = $status_line;
        ($self->{status}) = $status_line =~ m{^HTTP/1\.\d (\d{3})};
        for (@lines) {
            my ($k, $v) = /^([^:]+):\s*(.*)$/ or next;
            push @{ $self->{headers}{lc $k} }, $v;
        }
        # a non-101 response may have a body; keep it readable
        if (($self->{status} // 0) != 101 && $self->{headers}{'content-length'}) {
            my $len = $self->{headers}{'content-length'}[0];
            while (length $self->{buf} < $len) { last unless $self->fill($deadline - time) }
            $self->{body} = substr($self->{buf}, 0, $len, '');
        }
    }
    return $self->{status};
}

sub status { $_[0]{status} }
sub status_line { $_[0]{status_line} }
sub header { my ($self, $k) = @_; my $v = $self->{headers}{lc $k}; return $v ? $v->[0] : undef }
sub header_count { my ($self, $k) = @_; my $v = $self->{headers}{lc $k}; return $v ? scalar @$v : 0 }
sub body { $_[0]{body} }

sub expected_accept {
    my ($key) = @_;
    my $a = sha1_base64(($key // $KEY) . '258EAFA5-E914-47DA-95CA-C5AB0DC85B11');
    return $a . '=';
}

sub sock { $_[0]{sock} }

# reads more bytes into the buffer; false on EOF or timeout
sub fill {
    my ($self, $timeout) = @_;
    return 0 if $self->{eof};
    $timeout = 0 if $timeout < 0;
    my $sel = IO::Select->new($self->{sock});
    return 0 unless $sel->can_read($timeout);
    my $n = sysread($self->{sock}, my $chunk, 1 << 20);
    if (!$n) { $self->{eof} = 1; return 0 }
    $self->{buf} .= $chunk;
    return 1;
}

sub send_raw {
    my ($self, $bytes, $chunk) = @_;
    local $SIG{PIPE} = 'IGNORE';
    if ($chunk) {
        for (my $i = 0; $i < length $bytes; $i += $chunk) {
            syswrite($self->{sock}, substr($bytes, $i, $chunk)) // return 0;
        }
        return 1;
    }
    my $off = 0;
    while ($off < length $bytes) {
        my $n = syswrite($self->{sock}, $bytes, length($bytes) - $off, $off);
        return 0 unless defined $n;
        $off += $n;
    }
    return 1;
}

# frame(op, payload, fin => 1, mask => 1, rsv1 => 0, ...)
sub frame {
    my ($op, $payload, %o) = @_;
    return build_frame($o{mask} // 1, $o{fin} // 1, $o{rsv1} // 0, $o{rsv2} // 0,
                       $o{rsv3} // 0, $op, $payload // '');
}

sub send_frame {
    my ($self, $op, $payload, %o) = @_;
    return $self->send_raw(frame($op, $payload, %o), $o{chunk});
}

# next frame as {fin, op, payload} or undef on timeout or EOF
sub read_frame {
    my ($self, $timeout) = @_;
    my $deadline = time + ($timeout // 5);
    for (;;) {
        my $f = parse_frame(\$self->{buf}, 1 << 26);
        if (ref $f) {
            return { fin => $f->[0], rsv => $f->[1] | $f->[2] << 1 | $f->[3] << 2,
                     op => $f->[4], payload => $f->[5] };
        }
        return undef unless $self->fill($deadline - time);
    }
}

# reads frames until a close frame; returns (code, reason, [frames before])
sub read_close {
    my ($self, $timeout) = @_;
    my @before;
    while (my $f = $self->read_frame($timeout)) {
        if ($f->{op} == 8) {
            my $p = $f->{payload};
            return (undef, '', \@before) if length $p < 2;
            return (unpack('n', $p), substr($p, 2), \@before);
        }
        push @before, $f;
    }
    return (-1, 'no close frame', \@before);
}

# true if the server closes the TCP connection within $timeout
sub wait_eof {
    my ($self, $timeout) = @_;
    my $deadline = time + ($timeout // 5);
    while (!$self->{eof}) {
        $self->{buf} = '';
        $self->fill($deadline - time) or last;
    }
    return $self->{eof} ? 1 : 0;
}

sub close { CORE::close($_[0]{sock}) }

1;
