package CallbackReceiver;

# A receiver of callbacks for the tests: a forked HTTP server, one child
# per connection, that records every request (one JSON line each, with its
# time, headers and body) and answers by its path, so that a test scripts
# failures per delivery attempt (X-OpenClaw-Attempt):
#
#   any other path    200 (the scripts below may follow a prefix)
#   /status/CODE      CODE every time
#   /fail/N/CODE/RA   CODE (with Retry-After: RA unless RA is "-") for the
#                     first N attempts, then 200
#   /hang/N/SECS      the first N attempts get nothing for SECS seconds
#                     (then the connection closes), then 200
#   /slow/SECS        200 after SECS seconds
#
#   my $rx = CallbackReceiver->new(port => $port);   # started
#   $rx->url('/ok'); $rx->records; $rx->stop; $rx->start;
#   tls => [cert, key]: https (IO::Socket::SSL)

use strict;
use warnings;

use IO::Socket::INET;
use Fcntl qw(:flock);
use Mojo::JSON qw(encode_json decode_json);
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(time sleep);
use File::Temp qw(tempfile);

sub free_port {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Proto => 'tcp', Listen => 1, ReuseAddr => 1)
        or die "no free port: $!";
    my $port = $s->sockport;
    close $s;
    return $port;
}

sub new {
    my ($class, %o) = @_;
    my $self = bless { port => $o{port} // free_port(), tls => $o{tls} }, $class;
    (undef, $self->{file}) = tempfile('cbrx-XXXXXX', TMPDIR => 1, UNLINK => 1);
    $self->start unless $o{no_start};
    return $self;
}

sub port { $_[0]{port} }
sub url {
    my ($self, $path) = @_;
    return ($self->{tls} ? 'https://localhost' : 'http://127.0.0.1')
           . ":$self->{port}" . ($path // '/');
}

sub start {
    my ($self) = @_;
    my $listen = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                       LocalPort => $self->{port},
                                       Proto => 'tcp', Listen => 1024,
                                       ReuseAddr => 1)
        or die "receiver cannot listen on $self->{port}: $!";
    my $pid = fork // die "fork: $!";
    if ($pid) {
        close $listen;
        $self->{pid} = $pid;
        return $self;
    }
    $SIG{CHLD} = 'IGNORE';
    setpgrp(0, 0);
    while (1) {
        my $c = $listen->accept or next;
        my $child = fork;
        if (!defined $child) { close $c; next }
        if ($child) { close $c; next }
        close $listen;
        $self->serve($c);
        # not exit: the test's objects, copied into this child, would be
        # destroyed, and stop the gateway and nginx they stand for
        POSIX::_exit(0);
    }
}

sub serve {
    my ($self, $c) = @_;
    if ($self->{tls}) {
        require IO::Socket::SSL;
        IO::Socket::SSL->start_SSL($c, SSL_server => 1,
                                   SSL_cert_file => $self->{tls}[0],
                                   SSL_key_file => $self->{tls}[1])
            or return;
    }
    my $t = time;
    my $buf = '';
    while ($buf !~ /\r\n\r\n/) {
        my $n = sysread($c, $buf, 65536, length $buf) or return;
    }
    my ($head, $body) = split /\r\n\r\n/, $buf, 2;
    my ($line, @lines) = split /\r\n/, $head;
    my %h;
    for (@lines) { my ($k, $v) = /^([^:]+):\s*(.*)$/ or next; $h{ lc $k } = $v }
    my $len = $h{'content-length'} // 0;
    while (length($body) < $len) {
        sysread($c, $body, $len - length $body, length $body) or last;
    }
    my ($method, $path) = split / /, $line;
    my $attempt = $h{'x-openclaw-attempt'} // 1;
    my ($code, @extra) = (200);
    if ($path =~ m{/status/(\d+)}) {
        $code = $1;
    } elsif ($path =~ m{/fail/(\d+)/(\d+)/([^/]+)}) {
        if ($attempt <= $1) {
            $code = $2;
            push @extra, "Retry-After: $3" if $3 ne '-';
        }
    } elsif ($path =~ m{/hang/(\d+)/([\d.]+)}) {
        if ($attempt <= $1) {
            $self->record({ t => $t, method => $method, path => $path,
                            headers => \%h, body => $body, answer => 'hang' });
            sleep $2;
            return;
        }
    } elsif ($path =~ m{/slow/([\d.]+)}) {
        sleep $1;
    }
    $self->record({ t => $t, method => $method, path => $path,
                    headers => \%h, body => $body, answer => $code });
    my $reply = "{\"ok\":true}";
    print $c "HTTP/1.1 $code X\r\nContent-Type: application/json\r\n"
           . join('', map { "$_\r\n" } @extra)
           . "Content-Length: " . length($reply) . "\r\nConnection: close\r\n\r\n$reply";
    close $c;
}

sub record {
    my ($self, $rec) = @_;
    open my $f, '>>', $self->{file} or return;
    flock $f, LOCK_EX;
    print $f encode_json($rec) . "\n";
    close $f;
}

# every request so far (those in /path if given), oldest first
sub records {
    my ($self, $path) = @_;
    open my $f, '<', $self->{file} or return ();
    my @r;
    while (my $line = <$f>) {
        next unless $line =~ /\n\z/;
        my $r = eval { decode_json($line) } or next;
        next if defined $path && index($r->{path}, $path) != 0;
        push @r, $r;
    }
    return @r;
}

sub stop {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return;
    kill 'KILL', -$pid;
    kill 'KILL', $pid;
    waitpid $pid, 0;
}

sub DESTROY { $_[0]->stop }

1;
