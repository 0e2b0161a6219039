#!/usr/bin/perl

# Keepalive pings, pong timeout, idle timeout and the close handshake
# timer of an inbound WebSocket connection, on an echo location.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(sleep time);

use OCB;

# timing slack: a sanitized nginx is slower to react
my $SLACK = OCB::asan() ? 0.6 : 0.3;

sub echo_nginx {
    my ($extra) = @_;
    return OCB->new(location => "openclaw_bridge_echo;\n        $extra");
}

# the next frame before $deadline, answering pings with pongs if $answer;
# pings seen are pushed as their arrival times onto @$pings
sub next_frame {
    my ($c, $deadline, %o) = @_;
    for (;;) {
        my $f = $c->read_frame($deadline - time) or return undef;
        if ($f->{op} == 9) {
            push @{ $o{pings} }, time if $o{pings};
            $c->send_frame(10, $f->{payload}) if $o{answer};
            next;
        }
        return $f;
    }
}

# connects; the server arms its timers between the two times returned,
# which bound every timing from below ($tb) and from above ($t0)
sub timed_ws {
    my ($ngx) = @_;
    my $tb = time;
    my $c = $ngx->ws;
    return ($c, $tb, time);
}

sub close_of {
    my ($f) = @_;
    return (undef, '') unless $f && $f->{op} == 8;
    return (undef, '') if length $f->{payload} < 2;
    return (unpack('n', $f->{payload}), substr($f->{payload}, 2));
}

# the error.log lines that match $re
sub log_lines {
    my ($ngx, $re) = @_;
    return grep { $_ =~ $re } split /\n/, $ngx->error_log;
}

sub no_bad_levels {
    my ($ngx, $name) = @_;
    my @bad = log_lines($ngx, qr/\[(crit|alert|emerg)\]/);
    ok(!@bad, "$name: no [crit], [alert] or [emerg] in error.log")
        or diag join "\n", @bad;
}

###########################################################################
# pings at the configured interval; answered, the connection stays open

{
    my $ngx = echo_nginx('openclaw_bridge_ping_interval 300ms;');
    my ($c, $tb, $t0) = timed_ws($ngx);
    is($c->status, 101, 'ping: handshake');

    my (@pings, @other);
    my $deadline = $t0 + 1.85;
    while (time < $deadline) {
        my $f = $c->read_frame($deadline - time) or last;
        if ($f->{op} == 9) {
            push @pings, { t => time - $t0, tb => time - $tb, fin => $f->{fin},
                           len => length $f->{payload} };
            $c->send_frame(10, $f->{payload});
        } else {
            push @other, $f;
        }
    }

    ok(!$c->{eof}, 'ping: connection still open after 1.85 s');
    is(scalar @other, 0, 'ping: nothing but pings was sent')
        or diag explain \@other;
    cmp_ok(scalar @pings, '>=', 4, 'ping: at least 4 pings in 1.85 s');
    cmp_ok(scalar @pings, '<=', 7, 'ping: at most 7 pings in 1.85 s');
    diag sprintf 'ping times: %s', join ' ', map { sprintf '%.3f', $_->{t} } @pings
        if $ENV{TEST_VERBOSE};

    my $first = @pings ? $pings[0]{t} : -1;
    ok(@pings && $pings[0]{tb} >= 0.25 && $first <= 0.3 + $SLACK,
       sprintf 'ping: first ping after about 300 ms (%.3f s)', $first);
    ok(@pings && !grep({ !$_->{fin} } @pings), 'ping: ping frames have FIN set');

    my @gaps = map { $pings[$_]{t} - $pings[$_ - 1]{t} } 1 .. $#pings;
    my @off = grep { $_ < 0.25 || $_ > 0.3 + $SLACK } @gaps;
    ok(@gaps && !@off, 'ping: pings about 300 ms apart')
        or diag 'gaps: ' . join ' ', map { sprintf '%.3f', $_ } @gaps;

    # still a working connection
    $c->send_frame(1, 'still here');
    my $f = next_frame($c, time + 2, answer => 1);
    is($f && $f->{payload}, 'still here', 'ping: echo works after several intervals');

    $c->send_frame(8, pack('n', 1000));
    $f = next_frame($c, time + 2, answer => 1);
    my ($code) = close_of($f);
    is($code, 1000, 'ping: close answered with 1000');
    ok($c->wait_eof(2), 'ping: TCP closed after the handshake');

    no_bad_levels($ngx, 'ping');
    $ngx->stop;
}

###########################################################################
# an unanswered ping: close 1008 after pong_timeout, then the close timer

{
    my $ngx = echo_nginx('openclaw_bridge_ping_interval 200ms;
        openclaw_bridge_pong_timeout 200ms;
        openclaw_bridge_close_timeout 500ms;');
    my ($c, $tb, $t0) = timed_ws($ngx);
    is($c->status, 101, 'pong timeout: handshake');

    my @pings;
    my $f = next_frame($c, $t0 + 3, pings => \@pings);
    my $t_close = time - $t0;
    my $tb_close = $t_close + $t0 - $tb;
    my ($code, $reason) = close_of($f);

    is(scalar @pings, 1, 'pong timeout: exactly one ping before the close');
    ok(@pings && $pings[0] - $tb >= 0.15 && $pings[0] - $t0 <= 0.2 + $SLACK,
       sprintf 'pong timeout: ping after about 200 ms (%.3f s)',
       @pings ? $pings[0] - $t0 : -1);
    is($code, 1008, 'pong timeout: close code 1008');
    like($reason, qr/pong/i, 'pong timeout: close reason mentions pong');
    ok($tb_close >= 0.35 && $t_close <= 0.4 + $SLACK,
       sprintf 'pong timeout: close after ping + pong timeout (%.3f s)', $t_close);

    # the client does not answer the close either
    my $limit = 0.2 + 0.2 + 0.5 + $SLACK;
    my $eof = $c->wait_eof($t0 + 3 - time);
    my $t_eof = time - $t0;
    ok($eof && $t_eof <= $limit,
       sprintf 'pong timeout: TCP closed within ping + pong + close timeout '
       . '(%.3f s, limit %.1f s)', $t_eof, $limit);
    ok($t_eof + $t0 - $tb >= 0.2 + 0.2 + 0.5 - 0.05,
       sprintf 'pong timeout: TCP kept open for the close timeout (%.3f s after '
       . 'the close frame)', $t_eof - $t_close);

    ok($ngx->wait_log(qr/close handshake timed out/, 2),
       'pong timeout: close timeout logged');

    my @lines = log_lines($ngx, qr/did not answer a WebSocket ping/);
    is(scalar @lines, 1, 'pong timeout: one error.log line for the pong timeout')
        or diag join "\n", @lines;
    like($lines[0] // '', qr/\[info\]/, 'pong timeout: logged at info level');

    @lines = log_lines($ngx, qr/close handshake timed out/);
    is(scalar @lines, 1, 'pong timeout: one error.log line for the close timeout')
        or diag join "\n", @lines;
    like($lines[0] // '', qr/\[info\]/, 'pong timeout: close timeout at info level');

    no_bad_levels($ngx, 'pong timeout');
    $ngx->stop;
}

###########################################################################
# idle timeout: pings do not count as activity, data messages do

{
    my $ngx = echo_nginx('openclaw_bridge_ping_interval 200ms;
        openclaw_bridge_idle_timeout 500ms;');

    # no data messages at all, pings answered
    my ($c, $tb, $t0) = timed_ws($ngx);
    is($c->status, 101, 'idle: handshake');
    my @pings;
    my $f = next_frame($c, $t0 + 3, answer => 1, pings => \@pings);
    my $t_close = time - $t0;
    my $tb_close = $t_close + $t0 - $tb;
    my ($code, $reason) = close_of($f);

    is($code, 1001, 'idle: close code 1001');
    is($reason, 'idle timeout', 'idle: close reason "idle timeout"');
    ok($tb_close >= 0.45 && $t_close <= 0.5 + $SLACK,
       sprintf 'idle: closed after about 0.5 s (%.3f s)', $t_close);
    cmp_ok(scalar @pings, '>=', 1, 'idle: pings were sent and answered meanwhile');

    $c->send_frame(8, pack('n', 1001));
    my $t1 = time;
    ok($c->wait_eof(2) && time - $t1 < 0.5, 'idle: TCP closed after the answer');

    # a message every 200 ms keeps the connection open
    $c = $ngx->ws;
    is($c->status, 101, 'idle active: handshake');
    $t0 = time;
    my ($sent, $echoed, $closed, $bad, $t_sent) = (0, 0, 0, 0, 0);
    while (time - $t0 < 1.8) {
        my $msg = "msg $sent";
        $c->send_frame(1, $msg) or last;
        $t_sent = time;
        $sent++;
        my $deadline = time + 0.2;
        while (time < $deadline) {
            my $f = next_frame($c, $deadline, answer => 1) or last;
            if ($f->{op} == 8) { $closed = time - $t0; last }
            $f->{payload} eq $msg ? $echoed++ : $bad++;
        }
        last if $closed || $c->{eof};
    }
    my $t_last = time;
    ok(!$closed && !$c->{eof},
       sprintf 'idle active: still open after %.2f s of a message every 200 ms',
       $t_last - $t0)
        or diag "closed at $closed s";
    ok($sent >= 7 && $echoed == $sent && !$bad,
       "idle active: all $sent messages echoed ($echoed, $bad wrong)");

    # then silence: the idle close follows about 0.5 s after the last message
    $f = next_frame($c, time + 3, answer => 1);
    my $quiet = time - $t_sent;
    ($code, $reason) = close_of($f);
    is($code, 1001, 'idle active: close 1001 once the messages stop');
    ok($quiet >= 0.45 && $quiet <= 0.5 + $SLACK,
       sprintf 'idle active: closed about 0.5 s after the last message (%.3f s)',
       $quiet);
    $c->send_frame(8, pack('n', 1001));
    ok($c->wait_eof(2), 'idle active: TCP closed after the answer');

    my @lines = log_lines($ngx, qr/idle for \d+ ms/);
    is(scalar @lines, 2, 'idle: one error.log line per idle close')
        or diag join "\n", @lines;
    is(scalar(grep { /\[info\]/ } @lines), scalar @lines,
       'idle: idle closes logged at info level') or diag join "\n", @lines;

    no_bad_levels($ngx, 'idle');
    $ngx->stop;
}

###########################################################################
# close handshake timeout: the server initiates the close (idle timeout)

{
    my $ngx = echo_nginx('openclaw_bridge_idle_timeout 300ms;
        openclaw_bridge_close_timeout 500ms;');

    # a client that never answers the close
    my ($c, $tb, $t0) = timed_ws($ngx);
    is($c->status, 101, 'close timeout: handshake');
    my $f = next_frame($c, $t0 + 3, answer => 1);
    my $t_close = time;
    my ($code) = close_of($f);
    is($code, 1001, 'close timeout: server sent close 1001');
    ok($t_close - $tb >= 0.25 && $t_close - $t0 <= 0.3 + $SLACK,
       sprintf 'close timeout: close sent after the idle timeout (%.3f s)',
       $t_close - $t0);
    my $eof = $c->wait_eof(3);
    my $wait = time - $t_close;
    ok($eof, 'close timeout: TCP closed by the server');
    ok(time - $tb >= 0.3 + 0.5 - 0.05 && $wait <= 0.5 + $SLACK,
       sprintf 'close timeout: closed about 0.5 s after the close frame (%.3f s)',
       $wait);

    my @lines = log_lines($ngx, qr/close handshake timed out/);
    is(scalar @lines, 1, 'close timeout: logged once') or diag join "\n", @lines;
    like($lines[0] // '', qr/\[info\]/, 'close timeout: logged at info level');

    # a client that answers the close
    $c = $ngx->ws;
    is($c->status, 101, 'close answered: handshake');
    $f = next_frame($c, time + 3, answer => 1);
    ($code) = close_of($f);
    is($code, 1001, 'close answered: server sent close 1001');
    $c->send_frame(8, pack('n', 1001));
    my $t1 = time;
    $f = $c->read_frame(2);
    my $took = time - $t1;
    ok(!$f && $c->{eof}, 'close answered: nothing after the close, then EOF')
        or diag explain $f;
    ok($took < 0.2, sprintf 'close answered: TCP closed promptly (%.3f s)', $took);

    @lines = log_lines($ngx, qr/close handshake timed out/);
    is(scalar @lines, 1, 'close answered: no close timeout logged for it');

    no_bad_levels($ngx, 'close timeout');
    $ngx->stop;
}

done_testing;
