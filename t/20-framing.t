#!/usr/bin/perl

# RFC 6455 conformance against openclaw_bridge_echo: Autobahn sections 1
# (framing), 2 (pings and pongs), 3 (reserved bits), 4 (opcodes) and 10.

use strict;
use warnings;
use feature 'bitwise';

use FindBin;
use lib "$FindBin::Bin/lib";

use Digest::SHA qw(sha256_hex);
use Socket qw(IPPROTO_TCP TCP_NODELAY);
use Test::More;
use Time::HiRes qw(time sleep);

use OCB;

# ---- helpers (kept in this file: t/lib/OCB.pm is shared) -----------------

use constant { CONT => 0x0, TEXT => 0x1, BIN => 0x2, CLOSE => 0x8,
               PING => 0x9, PONG => 0xa };

# ASan makes nginx several times slower: generous waits, never tight ones
my $SLOW = OCB::asan() ? 4 : 1;

# a masked client frame built here, so that any bit and any length
# encoding can be sent: fin => 0|1, rsv => 0..7 (4 = RSV1, 2 = RSV2,
# 1 = RSV3), enc => 7|16|64 (length field size), len => the length to
# announce (default: the real one), key => 4 bytes
sub mframe {
    my ($op, $payload, %o) = @_;
    $payload //= '';
    my $len = $o{len} // length $payload;
    my $enc = $o{enc} // ($len < 126 ? 7 : $len < 65536 ? 16 : 64);
    my $h = pack 'C', (($o{fin} // 1) ? 0x80 : 0) | (($o{rsv} // 0) << 4)
                      | ($op & 0x0f);
    $h .= $enc == 7  ? pack('C', 0x80 | $len)
        : $enc == 16 ? pack('Cn', 0x80 | 126, $len)
        :              pack('CQ>', 0x80 | 127, $len);
    my $key = $o{key} // pack('N', 1 + int rand 0xfffffffe);
    return $h . $key . xmask($payload, $key);
}

sub xmask {
    my ($data, $key) = @_;
    my $n = length $data;
    return '' unless $n;
    return $data ^. substr($key x (($n >> 2) + 1), 0, $n);
}

sub close_payload { my ($code, $reason) = @_; pack('n', $code) . ($reason // '') }

sub nodelay {
    my ($c) = @_;
    setsockopt($c->sock, IPPROTO_TCP, TCP_NODELAY, 1);
}

# writes $bytes in pieces of $chunk bytes with $delay seconds between them,
# so that the server really sees them in separate reads
sub send_chunked {
    my ($c, $bytes, $chunk, $delay) = @_;
    nodelay($c);
    local $SIG{PIPE} = 'IGNORE';
    for (my $i = 0; $i < length $bytes; $i += $chunk) {
        my $piece = substr($bytes, $i, $chunk);
        my $off = 0;
        while ($off < length $piece) {
            my $n = syswrite($c->sock, $piece, length($piece) - $off, $off);
            return 0 unless defined $n;
            $off += $n;
        }
        sleep $delay if $delay;
    }
    return 1;
}

# writes each element of @parts as its own TCP write, $delay apart
sub send_parts {
    my ($c, $delay, @parts) = @_;
    nodelay($c);
    for my $p (@parts) {
        $c->send_raw($p) or return 0;
        sleep $delay if $delay;
    }
    return 1;
}

sub conn {
    my ($t) = @_;
    my $c = $t->ws;
    die 'handshake answered "' . ($c->status_line // 'nothing') . "\"\n"
        unless ($c->status // 0) == 101;
    return $c;
}

# one line per frame, so that sequences compare with is_deeply and a
# mismatch reads well even for megabytes of payload
sub fdesc {
    my ($f) = @_;
    return 'no frame' unless $f;
    my $p = $f->{payload} // '';
    my $s = sprintf 'op=%d fin=%d rsv=%d len=%d', $f->{op}, $f->{fin},
                    $f->{rsv} // 0, length $p;
    $s .= ' MASKED' if $f->{masked};
    if ($f->{op} == CLOSE && length $p >= 2) {
        $s .= ' code=' . unpack('n', $p);
    } elsif (length $p <= 24) {
        $s .= ' hex=' . unpack('H*', $p);
    } else {
        $s .= ' sha256=' . substr(sha256_hex($p), 0, 20);
    }
    return $s;
}

sub want { my ($op, $payload) = @_; fdesc({op => $op, fin => 1, rsv => 0, payload => $payload}) }

# OCB::Raw::read_frame, plus "masked" from the raw header: a server must
# never mask its frames (RFC 6455 5.1), and the parser would hide it
sub next_frame {
    my ($c, $timeout) = @_;
    my $deadline = time + $timeout;
    while (length $c->{buf} < 2) {
        $c->fill($deadline - time) or return undef;
    }
    my $masked = ord(substr($c->{buf}, 1, 1)) & 0x80;
    my $f = $c->read_frame($deadline - time) or return undef;
    $f->{masked} = 1 if $masked;
    return $f;
}

# frames up to a close frame: (code or undef, reason, [frames before]);
# code -1 when no close frame came
sub next_close {
    my ($c, $timeout) = @_;
    my $deadline = time + $timeout;
    my @before;
    while (my $f = next_frame($c, $deadline - time)) {
        if ($f->{op} == CLOSE && !$f->{masked}) {
            my $p = $f->{payload};
            return (undef, '', \@before) if length $p < 2;
            return (unpack('n', $p), substr($p, 2), \@before);
        }
        push @before, $f;
    }
    return (-1, 'no close frame', \@before);
}

sub echo_ok {
    my ($c, $op, $payload, $name, $timeout) = @_;
    return is(fdesc(next_frame($c, ($timeout // 5) * $SLOW)), want($op, $payload), $name);
}

# nothing arrives for $wait seconds and the connection stays open
sub quiet_ok {
    my ($c, $name, $wait) = @_;
    my $f = next_frame($c, $wait // 0.3);
    ok(!$f && !$c->{eof}, $name)
        or diag $f ? 'got ' . fdesc($f) : 'the server closed the connection';
}

# reads what follows the close frame: true if the server closes the TCP
# connection within $timeout and sent nothing after its close frame
sub eof_ok {
    my ($c, $name, $timeout) = @_;
    my $extra = length $c->{buf};
    my $deadline = time + ($timeout // 2) * $SLOW;
    while (!$c->{eof}) {
        $extra += length $c->{buf};
        $c->{buf} = '';
        $c->fill($deadline - time) or last;
    }
    $extra += length $c->{buf};
    ok($c->{eof} && !$extra, $name)
        or diag $c->{eof} ? "$extra bytes after the close frame"
                          : 'TCP connection still open';
}

# the server must send exactly the frames in @$before (as [op, payload]),
# then a close frame with $code (undef: no code, 'none-or-1000': either),
# then close the TCP connection
sub close_ok {
    my ($c, $name, $before, $code, %o) = @_;
    my ($got, $reason, $frames) = next_close($c, ($o{timeout} // 5) * $SLOW);
    is_deeply([map { fdesc($_) } @$frames],
              [map { want(@$_) } @{ $before // [] }],
              "$name: frames before the close");
    my $gc = $got // 'none';
    $gc = 'none-or-1000' if $code && $code eq 'none-or-1000'
                            && ($gc eq 'none' || $gc eq '1000');
    is($gc, $code // 'none', "$name: close code")
        or diag "reason: $reason";
    eof_ok($c, "$name: server closed TCP", $o{eof_timeout});
}

# a clean close from our side: the server echoes 1000 and closes TCP
sub bye_ok {
    my ($c, $name) = @_;
    $c->send_raw(mframe(CLOSE, close_payload(1000)));
    close_ok($c, "$name, closing", [], 1000);
}

# runs a case as a subtest on a fresh connection; a die fails it
sub case {
    my ($t, $name, $code) = @_;
    subtest $name => sub {
        my $c = eval { conn($t) };
        if (!$c) { fail("$name: connect"); diag $@; return }
        eval { $code->($c); 1 } or fail("$name died: $@");
        $c->close;
    };
}

# ---------------------------------------------------------------------------

my $t = OCB->new(location => 'openclaw_bridge_echo;');
my $t0 = time;

# --- section 1: framing --------------------------------------------------

srand 6455;

for my $op (TEXT, BIN) {
    my $kind = $op == TEXT ? 'text' : 'binary';
    for my $len (0, 125, 126, 127, 128, 65535, 65536) {
        my $payload = $op == TEXT ? '*' x $len
                                  : join '', map { chr int rand 256 } 1 .. $len;
        case($t, "1: $kind message of $len bytes", sub {
            my ($c) = @_;
            $c->send_raw(mframe($op, $payload));
            echo_ok($c, $op, $payload, "$kind $len echoed");
            bye_ok($c, "$kind $len");
        });
    }

    my $payload = $op == TEXT ? 'BAsd7&jh23' x 6553 . 'BAsd7&'
                              : join '', map { chr int rand 256 } 1 .. 65536;
    case($t, "1: $kind message of 65536 bytes written in 997-byte chunks", sub {
        my ($c) = @_;
        send_chunked($c, mframe($op, $payload), 997, 0.001);
        echo_ok($c, $op, $payload, "$kind 65536 chunked echoed");
        bye_ok($c, "$kind 65536 chunked");
    });
}

# --- section 2: pings and pongs ------------------------------------------

for my $p (['empty', ''], ['text', 'Hello, world!'],
           ['binary', "\x00\xff\xfe\xfd\xfc\xfb\x00\xff"],
           ['125 bytes', "\xfe" x 125])
{
    my ($what, $payload) = @$p;
    case($t, "2: ping with $what payload gets an identical pong", sub {
        my ($c) = @_;
        $c->send_raw(mframe(PING, $payload));
        echo_ok($c, PONG, $payload, 'pong');
        quiet_ok($c, 'nothing else');
        bye_ok($c, 'ping');
    });
}

case($t, '2: ping with a 126-byte payload fails the connection with 1002', sub {
    my ($c) = @_;
    $c->send_raw(mframe(PING, "\xfe" x 126) . mframe(TEXT, 'after'));
    close_ok($c, '126-byte ping', [], 1002);
});

case($t, '2: 125-byte ping written byte by byte gets a pong', sub {
    my ($c) = @_;
    my $payload = join '', map { chr(0x20 + $_ % 90) } 1 .. 125;
    send_chunked($c, mframe(PING, $payload), 1, 0.001);
    echo_ok($c, PONG, $payload, 'pong');
    bye_ok($c, 'byte-wise ping');
});

for my $p (['without payload', ''], ['with payload', 'unsolicited pong payload']) {
    my ($what, $payload) = @$p;
    case($t, "2: unsolicited pong $what is ignored", sub {
        my ($c) = @_;
        $c->send_raw(mframe(PONG, $payload));
        quiet_ok($c, 'no reply, connection open', 0.5);
        $c->send_raw(mframe(TEXT, 'still here'));
        echo_ok($c, TEXT, 'still here', 'a following message is echoed');
        bye_ok($c, 'unsolicited pong');
    });
}

case($t, '2: unsolicited pong then ping gets exactly one pong', sub {
    my ($c) = @_;
    $c->send_raw(mframe(PONG, 'unsolicited pong payload')
                 . mframe(PING, 'ping payload'));
    echo_ok($c, PONG, 'ping payload', 'the pong answers the ping');
    quiet_ok($c, 'and it is the only frame', 0.5);
    bye_ok($c, 'pong then ping');
});

for my $chunk (0, 1, 7, 50) {
    my $how = $chunk ? "written in $chunk-byte chunks" : 'in one write';
    case($t, "2: ten pings $how get ten pongs in order", sub {
        my ($c) = @_;
        my $bytes = join '', map { mframe(PING, "payload-$_") } 1 .. 10;
        if ($chunk) { send_chunked($c, $bytes, $chunk, 0.0005) }
        else { $c->send_raw($bytes) }
        my @got = map { fdesc(next_frame($c, 5 * $SLOW)) } 1 .. 10;
        is_deeply(\@got, [map { want(PONG, "payload-$_") } 1 .. 10],
                  'ten pongs, in order');
        quiet_ok($c, 'nothing else');
        bye_ok($c, 'ten pings');
    });
}

# --- section 3: reserved bits --------------------------------------------

my %bad = (
    text   => sub { mframe(TEXT, 'Hello, world!', rsv => $_[0]) },
    binary => sub { mframe(BIN, "\x00\xff\xfe\xfd", rsv => $_[0]) },
    ping   => sub { mframe(PING, 'Hello, world!', rsv => $_[0]) },
    close  => sub { mframe(CLOSE, close_payload(1000), rsv => $_[0]) },
);

for my $kind (qw(text binary ping close)) {
    for my $rsv (1 .. 7) {
        my @bits = grep { $rsv & (4 >> ($_ - 1)) } 1 .. 3;
        my $bits = join '+', map { "RSV$_" } @bits;
        case($t, "3: $kind frame with $bits fails with 1002 after the earlier message", sub {
            my ($c) = @_;
            $c->send_raw(mframe(TEXT, 'Hello, world!') . $bad{$kind}->($rsv)
                         . mframe(PING, 'after'));
            close_ok($c, "$kind $bits", [[TEXT, 'Hello, world!']], 1002);
        });
    }
}

# the same frame-wise (separate writes) and byte-wise
for my $mode (['frame-wise', sub { send_parts($_[0], 0.05, @_[1 .. $#_]) }],
              ['byte-wise', sub { send_chunked($_[0], join('', @_[1 .. $#_]), 1, 0.0005) }])
{
    my ($how, $send) = @$mode;
    for my $kind (qw(text binary)) {
        case($t, "3: $kind frame with RSV1+RSV2 sent $how fails with 1002", sub {
            my ($c) = @_;
            $send->($c, mframe(TEXT, 'Hello, world!'), $bad{$kind}->(6),
                    mframe(PING, 'after'));
            close_ok($c, "$kind $how", [[TEXT, 'Hello, world!']], 1002);
        });
    }
}

# --- section 4: opcodes --------------------------------------------------

for my $opc (3 .. 7, 11 .. 15) {
    my $what = $opc < 8 ? 'non-control' : 'control';
    case($t, "4: empty frame with reserved $what opcode $opc fails with 1002", sub {
        my ($c) = @_;
        $c->send_raw(mframe($opc, ''));
        close_ok($c, "opcode $opc", [], 1002);
    });

    case($t, "4: message, reserved opcode $opc with payload, ping: echo, 1002, no pong", sub {
        my ($c) = @_;
        $c->send_raw(mframe(TEXT, 'Hello, world!')
                     . mframe($opc, 'reserved opcode payload')
                     . mframe(PING, 'must not be answered'));
        close_ok($c, "opcode $opc", [[TEXT, 'Hello, world!']], 1002);
    });
}

case($t, '4: reserved opcode 5 sent frame-wise after a message: echo, 1002, no pong', sub {
    my ($c) = @_;
    send_parts($c, 0.05, mframe(TEXT, 'Hello, world!'),
               mframe(5, 'reserved opcode payload'),
               mframe(PING, 'must not be answered'));
    close_ok($c, 'opcode 5 frame-wise', [[TEXT, 'Hello, world!']], 1002);
});

# --- section 10: auto-fragmentation --------------------------------------

case($t, '10: 64 KiB text message in 1300-byte fragments echoed as one message', sub {
    my ($c) = @_;
    my $payload = join '', map { chr(0x21 + $_ % 94) } 1 .. 65536;
    my @frags = unpack '(a1300)*', $payload;
    my $bytes = '';
    for my $i (0 .. $#frags) {
        $bytes .= mframe($i ? CONT : TEXT, $frags[$i], fin => $i == $#frags);
    }
    $c->send_raw($bytes);
    echo_ok($c, TEXT, $payload, scalar(@frags) . ' fragments, one echo');
    quiet_ok($c, 'nothing else');
    bye_ok($c, 'auto-fragmented');
});

note sprintf 'cases took %.1f s', time - $t0;

$t->stop;

done_testing;
