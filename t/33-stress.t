#!/usr/bin/perl

# Stress: many short WebSocket sessions with a clean close handshake, then
# many abrupt disconnects (partial frames, whole messages, RSTs), after
# which nginx must still serve, hold no leftover connection and exit clean.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Socket qw(SOL_SOCKET SO_LINGER);
use Test::More;
use Time::HiRes qw(sleep time);

use OCB;

# ---- helpers (kept in this file: t/lib/OCB.pm is shared) -----------------

my $CYCLES = 1000;
my $ABRUPT = 1000;
my $BATCH = 20;

# sockets held by the worker process
sub worker_sockets {
    my ($pid) = @_;
    opendir my $d, "/proc/$pid/fd" or return undef;
    my $n = 0;
    for my $fd (readdir $d) {
        next if $fd =~ /^\./;
        my $l = readlink "/proc/$pid/fd/$fd" // next;
        $n++ if $l =~ /^socket:/;
    }
    return $n;
}

# waits until the worker holds $want sockets; returns the last count
sub wait_sockets {
    my ($pid, $want, $timeout) = @_;
    my $deadline = time + $timeout;
    my $n;
    while (1) {
        $n = worker_sockets($pid);
        return $n if !defined $n || $n == $want || time > $deadline;
        sleep 0.05;
    }
}

# payload sizes around every length-encoding boundary, text or binary
my @SIZES = (0, 1, 2, 125, 126, 127, 1000, 4095, 4096, 16384, 65535, 65536,
             70000);

sub payload_for {
    my ($i) = @_;
    my $size = $SIZES[$i % @SIZES];
    my $head = "cycle $i:";
    my $body = join '', map { chr(97 + ($i * 31 + $_ * 7) % 26) } 0 .. 63;
    my $p = $head . $body x (1 + int($size / 64));
    return substr($p, 0, $size < length $head ? length $head : $size);
}

sub rst_close {
    my ($c) = @_;
    setsockopt($c->sock, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0));
    $c->close;
}

my $t_start = time;
my $ngx = OCB->new;
my ($worker) = $ngx->worker_pids;
ok($worker, 'one worker');
my $base_sockets = worker_sockets($worker);
ok(defined $base_sockets, "worker holds $base_sockets sockets at start");

###########################################################################
# connect, one message, close handshake: $CYCLES times, $BATCH at a time

{
    my ($connected, $echoed, $closed, $eof) = (0, 0, 0, 0);
    my @bad;
    my $t0 = time;

    for (my $i = 0; $i < $CYCLES; $i += $BATCH) {
        my $n = $i + $BATCH > $CYCLES ? $CYCLES - $i : $BATCH;
        my @c;
        for my $k (0 .. $n - 1) {
            my $c = eval { $ngx->ws };
            if ($c && ($c->status // 0) == 101) {
                $connected++;
                push @c, [$c, $i + $k];
            } else {
                push @bad, "cycle " . ($i + $k) . ': handshake failed '
                    . ($@ || $c && $c->status_line // '');
            }
        }
        for (@c) {
            my ($c, $id) = @$_;
            $c->send_frame($id % 2 ? 2 : 1, payload_for($id));
        }
        for (@c) {
            my ($c, $id) = @$_;
            my $f = $c->read_frame(10);
            if ($f && $f->{op} == ($id % 2 ? 2 : 1) && $f->{fin}
                && $f->{payload} eq payload_for($id))
            {
                $echoed++;
            } else {
                push @bad, "cycle $id: wrong echo "
                    . ($f ? "op $f->{op} len " . length $f->{payload} : 'none');
            }
        }
        for (@c) {
            $_->[0]->send_frame(8, pack('n', 1000) . 'bye');
        }
        for (@c) {
            my ($c, $id) = @$_;
            my ($code, $reason) = $c->read_close(10);
            if (($code // 0) == 1000) {
                $closed++;
            } else {
                push @bad, "cycle $id: close answered with " . ($code // 'nothing');
            }
            $c->wait_eof(10) ? $eof++ : push @bad, "cycle $id: no EOF";
        }
    }

    my $took = time - $t0;
    is($connected, $CYCLES, "cycles: $CYCLES handshakes");
    is($echoed, $CYCLES, "cycles: $CYCLES correct echoes");
    is($closed, $CYCLES, "cycles: $CYCLES closes answered with 1000");
    is($eof, $CYCLES, "cycles: $CYCLES TCP connections closed by nginx");
    diag join "\n", @bad[0 .. ($#bad < 9 ? $#bad : 9)] if @bad;
    diag sprintf 'cycles: %.1f s', $took if $ENV{TEST_VERBOSE};

    my $n = wait_sockets($worker, $base_sockets, 5);
    is($n, $base_sockets, 'cycles: the worker holds no connection afterwards');
}

###########################################################################
# abrupt disconnects: no close frame, some with an RST

{
    my %kinds = (
        0 => 'one byte of a frame header',
        1 => 'header and part of the payload',
        2 => 'a whole message, echo not read',
        3 => 'first fragment of a message',
        4 => 'a big message, echo not read',
        5 => 'part of a frame, then RST',
        6 => 'a whole message, then RST',
        7 => 'nothing after the handshake, then RST',
        8 => 'big fragments (reassembly buffer), then RST',
        9 => 'a close frame, then RST before the answer',
        10 => 'half of the upgrade request',
    );
    my $nkinds = keys %kinds;
    my ($done, @bad) = (0);
    my $big = 'B' x 200000;
    my $t0 = time;

    for my $i (1 .. $ABRUPT) {
        my $kind = $i % $nkinds;

        if ($kind == 10) {
            my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                          PeerPort => $ngx->port, Proto => 'tcp');
            if (!$s) { push @bad, "$i: connect: $!"; next }
            my $req = OCB::Raw->request;
            syswrite $s, substr($req, 0, length($req) / 2);
            close $s;
            $done++;
            next;
        }

        my $c = eval { $ngx->ws };
        if (!$c || ($c->status // 0) != 101) {
            push @bad, "$i ($kinds{$kind}): handshake failed";
            next;
        }

        my $frame = OCB::Raw::frame(1, "abrupt $i " . ('x' x 200));

        if ($kind == 0) {
            $c->send_raw(substr($frame, 0, 1));
        } elsif ($kind == 1) {
            $c->send_raw(substr($frame, 0, 50));
        } elsif ($kind == 2) {
            $c->send_raw($frame);
        } elsif ($kind == 3) {
            $c->send_frame(1, "first fragment $i", fin => 0);
        } elsif ($kind == 4) {
            $c->send_frame(2, $big);
        } elsif ($kind == 5) {
            $c->send_raw(substr($frame, 0, 50));
        } elsif ($kind == 6) {
            $c->send_raw($frame);
        } elsif ($kind == 8) {
            $c->send_frame(2, $big, fin => 0);
            $c->send_frame(0, $big, fin => 0);
        } elsif ($kind == 9) {
            $c->send_frame(8, pack('n', 1000));
        }

        # let nginx see the data first in about half of the cases
        sleep 0.002 if $i % 2;

        $kind >= 5 ? rst_close($c) : $c->close;
        $done++;
    }

    my $took = time - $t0;
    is($done, $ABRUPT, "abrupt: $ABRUPT abrupt disconnects made");
    diag join "\n", @bad[0 .. ($#bad < 9 ? $#bad : 9)] if @bad;
    diag sprintf 'abrupt: %.1f s', $took if $ENV{TEST_VERBOSE};

    my $n = wait_sockets($worker, $base_sockets, 10);
    is($n, $base_sockets, 'abrupt: the worker holds no connection afterwards');

    my @w = $ngx->worker_pids;
    is("@w", $worker, 'abrupt: the worker did not die (same PID)');

    # a normal client is served as usual
    my $c = $ngx->ws;
    is($c->status, 101, 'abrupt: handshake after the disconnects');
    $c->send_frame(1, 'still alive');
    my $f = $c->read_frame(5);
    is($f && $f->{payload}, 'still alive', 'abrupt: echo after the disconnects');
    $c->send_frame(8, pack('n', 1000));
    my ($code) = $c->read_close(5);
    is($code, 1000, 'abrupt: close handshake after the disconnects');
    ok($c->wait_eof(5), 'abrupt: TCP closed after the handshake');

    my @crashes = grep { /exited on signal|worker process \d+ exited with code [1-9]/ }
                  split /\n/, $ngx->error_log;
    ok(!@crashes, 'abrupt: no worker crashed') or diag join "\n", @crashes;
}

my $took = $ngx->stop;
cmp_ok($took, '<', 5, sprintf 'nginx stops promptly (%.2f s)', $took);

my $total = time - $t_start;
cmp_ok($total, '<', OCB::asan() ? 180 : 60,
       sprintf 'the whole file ran in %.1f s', $total);

done_testing;
