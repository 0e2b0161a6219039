#!/usr/bin/perl

# Backpressure on an inbound WebSocket connection: a client that sends but
# does not read must stop being read (bounded worker memory, other clients
# unaffected), and nginx's send_timeout must close a client that stopped
# reading while output is pending.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Select;
use Mojo::WebSocket qw(parse_frame);
use Socket qw(IPPROTO_TCP TCP_INFO);
use Test::More;
use Time::HiRes qw(sleep time);

use OCB;

# ---- helpers (kept in this file: t/lib/OCB.pm is shared) -----------------

my $SLACK = OCB::asan() ? 0.6 : 0.3;

my $MSG = 65536;                        # payload of one flood message
my $OFFER = 200 * 1024 * 1024;          # what the flood tries to send

sub rss_kb {
    my ($pid) = @_;
    open my $f, '<', "/proc/$pid/status" or return undef;
    while (<$f>) {
        return $1 if /^VmRSS:\s+(\d+)\s+kB/;
    }
    return undef;
}

# Recv-Q of nginx's side of the connection from client port $peer: bytes
# the client sent that nginx has not read
sub server_recv_q {
    my ($port, $peer) = @_;
    open my $f, '<', '/proc/net/tcp' or return undef;
    while (<$f>) {
        my @x = split ' ';
        next unless @x > 4 && $x[1] =~ /:([0-9A-F]{4})$/ && hex($1) == $port;
        next unless $x[2] =~ /:([0-9A-F]{4})$/ && hex($1) == $peer;
        my (undef, $rx) = split /:/, $x[4];
        return hex $rx;
    }
    return undef;
}

# the client socket's TCP state, read without consuming anything:
# 1 established, 7 closed (RST), 8 close-wait (FIN received)
sub tcp_state {
    my ($sock) = @_;
    my $info = getsockopt($sock, IPPROTO_TCP, TCP_INFO);
    return defined $info ? unpack('C', $info) : -1;
}

sub flood_frame {
    my ($seq) = @_;
    return OCB::Raw::frame(2, pack('N', $seq) . ('f' x ($MSG - 4)));
}

# one echo round trip on $c; returns the seconds it took, or undef
sub echo_time {
    my ($c, $msg) = @_;
    my $t = time;
    $c->send_frame(1, $msg) or return undef;
    my $f = $c->read_frame(1);
    return undef unless $f && $f->{op} == 1 && $f->{payload} eq $msg;
    return time - $t;
}

###########################################################################
# a client that sends without reading is not read any more, memory stays
# bounded, and the other clients of the worker are served meanwhile

{
    my $ngx = OCB->new(location => 'openclaw_bridge_echo;');
    my ($worker) = $ngx->worker_pids;
    ok($worker, 'flood: one worker');

    my $flood = $ngx->ws;
    is($flood->status, 101, 'flood: handshake');
    my $probe = $ngx->ws;
    is($probe->status, 101, 'flood: probe client handshake');
    ok(defined echo_time($probe, 'warm-up'), 'flood: probe echo before the flood');

    my $base = rss_kb($worker);
    ok($base, "flood: worker RSS at start ${\($base // '?')} kB");

    my $sock = $flood->sock;
    $sock->blocking(0);
    my $wsel = IO::Select->new($sock);

    my ($pending, $msgs, $offered, $written) = ('', 0, 0, 0);
    my ($max_rss, $errno) = ($base // 0, '');
    my (@probe_ok, @probe_bad, $fresh_ok);
    my $t0 = time;
    my $next_probe = $t0 + 0.5;

    while (time - $t0 < 4) {
        if ($pending eq '') {
            last if $offered >= $OFFER;
            $pending = flood_frame($msgs + 1);
            $offered += $MSG;
        }
        my $n = syswrite($sock, $pending);
        if (defined $n) {
            substr($pending, 0, $n, '');
            $written += $n;
            $msgs++ if $pending eq '';
        } elsif ($!{EAGAIN} || $!{EWOULDBLOCK}) {
            $wsel->can_write(0.05);
        } else {
            $errno = "$!";
            last;
        }

        if (time >= $next_probe) {
            my $rss = rss_kb($worker) // 0;
            $max_rss = $rss if $rss > $max_rss;
            my $took = echo_time($probe, "probe $msgs");
            defined $took && $took < 1 ? push @probe_ok, $took
                                       : push @probe_bad, $took // 'none';
            $next_probe = time + 0.5;
        }
    }
    my $elapsed = time - $t0;

    # a brand-new client is served too while the flood is stuck
    my $fresh = $ngx->ws;
    my $took = $fresh->status && $fresh->status == 101
               ? echo_time($fresh, 'fresh client') : undef;
    ok(defined $took && $took < 1,
       sprintf 'flood: a new client gets its echo within 1 s (%s)',
       defined $took ? sprintf('%.3f s', $took) : 'no echo');

    my $rss = rss_kb($worker) // 0;
    $max_rss = $rss if $rss > $max_rss;

    is($errno, '', 'flood: no write error on the flooding socket');
    diag sprintf 'flood: wrote %.1f MB (%d messages) of %d MB offered in %.1f s; '
        . 'worker RSS %d kB -> max %d kB', $written / 1048576, $msgs,
        $OFFER / 1048576, $elapsed, $base // 0, $max_rss
        if $ENV{TEST_VERBOSE};

    cmp_ok($written, '<', 64 * 1024 * 1024,
           sprintf 'flood: nginx stopped reading: only %.1f MB of %d MB were '
           . 'accepted in %.1f s', $written / 1048576, $OFFER / 1048576, $elapsed);

    my $q1 = server_recv_q($ngx->port, $sock->sockport);
    sleep 0.5;
    my $q2 = server_recv_q($ngx->port, $sock->sockport);
    ok(defined $q1 && $q1 > 0 && defined $q2 && $q2 == $q1,
       sprintf 'flood: unread input waits in nginx\'s socket and stays there '
       . '(Recv-Q %s, then %s)', $q1 // '?', $q2 // '?');

    cmp_ok($max_rss - ($base // 0), '<', 100 * 1024,
           sprintf 'flood: worker RSS stayed within +100 MB (%d -> max %d kB)',
           $base // 0, $max_rss);

    cmp_ok(scalar @probe_ok, '>=', 5, 'flood: probe echoes during the flood');
    is(scalar @probe_bad, 0, 'flood: every probe echo came within 1 s')
        or diag "late or missing: @probe_bad";

    # the flooding client now reads (and writes the rest of its last
    # message): every message it sent comes back, in order
    $msgs++ if $pending ne '';
    my ($got, $wrong, $buf, $eof) = (0, 0, '', 0);
    my $rsel = IO::Select->new($sock);
    my $deadline = time + 30;
    while (($pending ne '' || $got < $msgs) && !$wrong && !$eof
           && time < $deadline)
    {
        my ($r, $w) = IO::Select->select($rsel, $pending ne '' ? $wsel : undef,
                                         undef, 1);
        if ($w && @$w) {
            my $n = syswrite($sock, $pending);
            substr($pending, 0, $n, '') if $n;
        }
        next unless $r && @$r;
        my $n = sysread($sock, my $chunk, 1 << 20);
        if (!$n) { $eof = 1 unless !defined $n && $!{EAGAIN}; next }
        $buf .= $chunk;
        while (ref(my $f = parse_frame(\$buf, 1 << 26))) {
            if ($f->[4] == 2 && length $f->[5] == $MSG
                && unpack('N', $f->[5]) == $got + 1)
            {
                $got++;
            } else {
                $wrong++;
                last;
            }
        }
    }
    ok(!$eof, 'flood: connection still open when the client reads again');
    is($got, $msgs, "flood: all $msgs messages echoed once the client reads");
    is($wrong, 0, 'flood: echoes complete and in order');
    $sock->blocking(1);
    $flood->{buf} = $buf;

    $flood->send_frame(8, pack('n', 1000));
    my ($code) = $flood->read_close(5);
    is($code, 1000, 'flood: close handshake afterwards');
    ok(defined echo_time($probe, 'after'), 'flood: probe still served after');

    for my $c ($probe, $fresh) {
        $c->send_frame(8, pack('n', 1000));
        $c->read_close(2);
        $c->wait_eof(2);
    }
    my $stopped = $ngx->stop;
    cmp_ok($stopped, '<', 2, 'flood: nginx stops promptly');
}

###########################################################################
# send_timeout: output pending and the client does not read -> closed

{
    my $ngx = OCB->new(location => "openclaw_bridge_echo;\n        send_timeout 1s;");
    my $c = $ngx->ws;
    is($c->status, 101, 'send_timeout: handshake');

    my $sock = $c->sock;
    $sock->blocking(0);
    my $wsel = IO::Select->new($sock);
    my ($pending, $seq, $written, $t_last, $blocked) = ('', 0, 0, time, 0);
    my $t0 = time;

    # write until nothing moves for 0.3 s
    while (time - $t0 < 5) {
        $pending = flood_frame(++$seq) if $pending eq '';
        my $n = syswrite($sock, $pending);
        if (defined $n) {
            substr($pending, 0, $n, '');
            $written += $n;
            $t_last = time;
        } elsif ($!{EAGAIN} || $!{EWOULDBLOCK}) {
            if (!$wsel->can_write(0.3)) { $blocked = 1; last }
        } else {
            last;
        }
    }
    ok($blocked, sprintf 'send_timeout: writes blocked after %.1f MB',
       $written / 1048576);

    # watch the socket state without reading anything
    my $state;
    while (time - $t_last < 5) {
        $state = tcp_state($sock);
        last if $state != 1;
        sleep 0.01;
    }
    my $closed_after = time - $t_last;
    ok($state == 7 || $state == 8,
       "send_timeout: nginx closed the connection (TCP state $state)");
    ok($closed_after >= 0.7 && $closed_after <= 1 + $SLACK + 0.2,
       sprintf 'send_timeout: closed about 1 s after the last progress (%.3f s)',
       $closed_after);

    $sock->blocking(1);
    ok($c->wait_eof(5), 'send_timeout: EOF when reading');

    ok($ngx->wait_log(qr/timed out/, 2), 'send_timeout: timeout logged');
    my @lines = grep { /timed out/ } split /\n/, $ngx->error_log;
    is(scalar @lines, 1, 'send_timeout: one "timed out" line')
        or diag join "\n", @lines;
    like($lines[0] // '', qr/\[info\]/, 'send_timeout: logged at info level');

    my @bad = grep { /\[(crit|alert|emerg)\]/ } split /\n/, $ngx->error_log;
    ok(!@bad, 'send_timeout: no [crit], [alert] or [emerg]') or diag join "\n", @bad;

    # the worker goes on serving
    my $c2 = $ngx->ws;
    ok(defined echo_time($c2, 'after timeout'), 'send_timeout: next client served');
    $c2->send_frame(8, pack('n', 1000));
    $c2->read_close(2);
    $c2->wait_eof(2);

    my $took = $ngx->stop;
    cmp_ok($took, '<', 2, 'send_timeout: nginx stops promptly');
}

done_testing;
