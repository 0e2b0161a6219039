#!/usr/bin/perl

# Graceful shutdown and reload with open WebSocket clients: every client
# is told 1001, the workers exit promptly whether or not the clients
# answer, worker_shutdown_timeout cuts the close handshake short, and no
# connection is left open at exit.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(sleep time);

use OCB;

# ---- helpers (kept in this file: t/lib/OCB.pm is shared) -----------------

# generous: the bounds only have to tell them from the 5-10 s timeouts
my $SLACK = OCB::asan() ? 3 : 1.5;

sub echo_ok {
    my ($c, $msg) = @_;
    $c->send_frame(1, $msg) or return 0;
    my $f = $c->read_frame(3);
    return $f && $f->{op} == 1 && $f->{payload} eq $msg ? 1 : 0;
}

# opens $n clients, each checked with one echo; returns them
sub clients {
    my ($ngx, $n, $name) = @_;
    my @c = map { $ngx->ws } 1 .. $n;
    my $ok = grep { ($_->status // 0) == 101 && echo_ok($_, "hello $name") } @c;
    is($ok, $n, "$name: $n clients connected and echoing");
    return @c;
}

# reads the close frame of every client; returns the list of codes
sub close_codes {
    my ($timeout, @c) = @_;
    my @codes;
    for my $c (@c) {
        my ($code) = $c->read_close($timeout);
        push @codes, $code // 'none';
    }
    return @codes;
}

sub all_1001 {
    my ($name, @codes) = @_;
    my @other = grep { $_ ne '1001' } @codes;
    is(scalar @other, 0, "$name: all " . scalar(@codes) . ' clients got close 1001')
        or diag "other close codes: @other";
}

sub no_open_socket {
    my ($ngx, $name) = @_;
    my @lines = grep { /open socket|left in connection/ } split /\n/, $ngx->error_log;
    ok(!@lines, "$name: no \"open socket ... left in connection\" in error.log")
        or diag join "\n", @lines;
}

# bytes client $c sent that nginx has not read yet (Recv-Q of nginx's
# side of the connection), or undef
sub unread {
    my ($ngx, $c) = @_;
    my $peer = $c->sock->sockport;
    open my $f, '<', '/proc/net/tcp' or return undef;
    while (my $line = <$f>) {
        my @x = split ' ', $line;
        next unless @x > 4 && $x[1] =~ /:([0-9A-F]{4})$/ && hex($1) == $ngx->port;
        next unless $x[2] =~ /:([0-9A-F]{4})$/ && hex($1) == $peer;
        my (undef, $rx) = split /:/, $x[4];
        return hex $rx;
    }
    return undef;
}

sub gone {
    my (@pids) = @_;
    return !grep { -e "/proc/$_" } @pids;
}

###########################################################################
# graceful quit, clients answer the close: nginx exits within 2 s

{
    my $ngx = OCB->new(workers => 2);
    my @c = clients($ngx, 20, 'quit answered');

    my $t0 = time;
    $ngx->signal('QUIT');
    my @codes;
    for my $c (@c) {
        my ($code) = $c->read_close(3);
        push @codes, $code // 'none';
        $c->send_frame(8, pack('n', 1001));
    }
    all_1001('quit answered', @codes);

    my $eofs = grep { $_->wait_eof(3) } @c;
    is($eofs, 20, 'quit answered: every TCP connection closed by nginx');

    $ngx->stop(timeout => 10);
    my $took = time - $t0;
    cmp_ok($took, '<', 2, sprintf 'quit answered: nginx exited within 2 s (%.2f s)',
           $took);
    no_open_socket($ngx, 'quit answered');
}

###########################################################################
# graceful quit, clients never answer: the close timer ends the wait

{
    my $ngx = OCB->new(workers => 2,
        location => "openclaw_bridge_echo;\n        openclaw_bridge_close_timeout 1s;");
    my @c = clients($ngx, 20, 'quit unanswered');

    my $t0 = time;
    $ngx->signal('QUIT');
    all_1001('quit unanswered', close_codes(3, @c));

    $ngx->stop(timeout => 15);
    my $took = time - $t0;
    cmp_ok($took, '<', 1 + $SLACK,
           sprintf 'quit unanswered: nginx exited within close_timeout + slack '
           . '(%.2f s, limit %.2f s)', $took, 1 + $SLACK);

    my $eofs = grep { $_->wait_eof(1) } @c;
    is($eofs, 20, 'quit unanswered: every TCP connection closed');

    my @lines = grep { /close handshake timed out/ } split /\n/, $ngx->error_log;
    is(scalar @lines, 20, 'quit unanswered: 20 close timeouts logged');
    no_open_socket($ngx, 'quit unanswered');
}

###########################################################################
# reload with 100 open clients

{
    my $ngx = OCB->new(workers => 2);
    my @old = $ngx->worker_pids;
    is(scalar @old, 2, 'reload: two workers');
    my @c = clients($ngx, 100, 'reload');

    my @new = $ngx->reload;
    my $t0 = time;
    is(scalar @new, 2, 'reload: two new workers');

    my @codes;
    for my $c (@c) {
        my ($code) = $c->read_close(5);
        push @codes, $code // 'none';
        $c->send_frame(8, pack('n', 1001));
    }
    all_1001('reload', @codes);

    my $eofs = grep { $_->wait_eof(3) } @c;
    is($eofs, 100, 'reload: every old connection closed by nginx');

    my $deadline = time + 5;
    sleep 0.05 until gone(@old) || time > $deadline;
    my $took = time - $t0;
    ok(gone(@old), sprintf 'reload: old workers exited (%.2f s after the new '
       . 'ones started)', $took)
        or diag 'still there: ' . join ' ', grep { -e "/proc/$_" } @old;
    cmp_ok($took, '<', 3, 'reload: old workers gone within 3 s');

    my @now = $ngx->worker_pids;
    is("@now", join(' ', sort { $a <=> $b } @new), 'reload: only the new workers run');

    my @fresh = clients($ngx, 10, 'after reload');
    for my $c (@fresh) {
        $c->send_frame(8, pack('n', 1000));
        $c->read_close(2);
    }

    $ngx->stop(timeout => 10);
    no_open_socket($ngx, 'reload');
}

###########################################################################
# quit while a client is in the middle of a fragmented message or a frame

{
    my $ngx = OCB->new(workers => 2);
    my ($frag, $part, $idle) = clients($ngx, 3, 'mid-message');

    # a fragmented message: first fragment and one continuation sent
    $frag->send_frame(1, 'first fragment, ', fin => 0);
    $frag->send_frame(0, 'second fragment, ', fin => 0);

    # half a frame: the header and part of the payload
    my $bytes = OCB::Raw::frame(1, 'x' x 100);
    $part->send_raw(substr($bytes, 0, 40));

    # nginx has read all of it: both are inside their message when it quits
    my $deadline = time + 10;
    sleep 0.02 until time > $deadline
                     || !grep { (unread($ngx, $_) // 1) != 0 } $frag, $part;
    ok(!grep({ (unread($ngx, $_) // 1) != 0 } $frag, $part),
       'mid-message: nginx read what the two clients sent');

    my $t0 = time;
    $ngx->signal('QUIT');

    my ($code, $reason) = $frag->read_close(3);
    is($code, 1001, 'mid-message: client inside a fragmented message got 1001');
    $frag->send_frame(8, pack('n', 1001));

    ($code) = $part->read_close(3);
    is($code, 1001, 'mid-message: client inside a frame got 1001');
    # it cannot send a close frame in the middle of its frame: it hangs up
    $part->close;

    ($code) = $idle->read_close(3);
    is($code, 1001, 'mid-message: idle client got 1001');
    $idle->send_frame(8, pack('n', 1001));

    ok($frag->wait_eof(3), 'mid-message: fragmented client closed after its answer');

    $ngx->stop(timeout => 10);
    my $took = time - $t0;
    cmp_ok($took, '<', 2, sprintf 'mid-message: nginx exited within 2 s (%.2f s)',
           $took);
    no_open_socket($ngx, 'mid-message');
}

###########################################################################
# worker_shutdown_timeout cuts a long close handshake short

{
    my $ngx = OCB->new(workers => 2, main => 'worker_shutdown_timeout 1s;',
        location => "openclaw_bridge_echo;\n        openclaw_bridge_close_timeout 10s;");
    my @c = clients($ngx, 20, 'shutdown timeout');

    my $t0 = time;
    $ngx->signal('QUIT');
    all_1001('shutdown timeout', close_codes(3, @c));

    $ngx->stop(timeout => 15);
    my $took = time - $t0;
    cmp_ok($took, '<', 1 + $SLACK,
           sprintf 'shutdown timeout: nginx exited within worker_shutdown_timeout '
           . '+ slack (%.2f s, limit %.2f s)', $took, 1 + $SLACK);

    my $eofs = grep { $_->wait_eof(1) } @c;
    is($eofs, 20, 'shutdown timeout: every TCP connection closed');
    no_open_socket($ngx, 'shutdown timeout');
}

done_testing;
