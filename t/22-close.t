#!/usr/bin/perl

# RFC 6455 conformance against openclaw_bridge_echo: Autobahn section 7
# (close handling: the handshake, close payloads and codes).

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

# --- section 7: close handling -------------------------------------------

case($t, '7: message then close: echo, then the close answered', sub {
    my ($c) = @_;
    $c->send_raw(mframe(TEXT, 'Hello World') . mframe(CLOSE, close_payload(1000)));
    close_ok($c, 'message then close', [[TEXT, 'Hello World']], 1000);
});

case($t, '7: 256 KiB message, close, ping: echo, close, no pong', sub {
    my ($c) = @_;
    my $payload = 'BAsd7&jh23' x 26214 . 'BAsd';
    $c->send_raw(mframe(BIN, $payload) . mframe(CLOSE, close_payload(1000))
                 . mframe(PING, 'after close'));
    close_ok($c, 'big message then close', [[BIN, $payload]], 1000);
});

my @after = (
    ['a second close', mframe(CLOSE, close_payload(1001))],
    ['a ping', mframe(PING, 'after close')],
    ['a text message', mframe(TEXT, 'after close')],
    ['a fragment', mframe(TEXT, 'fragment1', fin => 0)],
    ['a fragmented message', mframe(TEXT, 'fragment1', fin => 0) . mframe(CONT, 'fragment2')],
    ['an invalid frame', mframe(5, 'reserved')],
);

for my $e (@after) {
    my ($what, $bytes) = @$e;
    for my $split (0, 1) {
        my $how = $split ? 'a moment later' : 'in the same write';
        case($t, "7: close, then $what $how: ignored", sub {
            my ($c) = @_;
            if ($split) {
                send_parts($c, 0.05, mframe(CLOSE, close_payload(1000)), $bytes);
            } else {
                $c->send_raw(mframe(CLOSE, close_payload(1000)) . $bytes);
            }
            close_ok($c, "close then $what", [], 1000);
        });
    }
}

case($t, '7: close in the middle of a fragmented message: answered, no echo', sub {
    my ($c) = @_;
    $c->send_raw(mframe(TEXT, 'fragment1', fin => 0) . mframe(CLOSE, close_payload(1000))
                 . mframe(CONT, 'fragment2'));
    close_ok($c, 'close between fragments', [], 1000);
});

case($t, '7: empty close payload: answered with a close (no code or 1000), TCP closed', sub {
    my ($c) = @_;
    $c->send_raw(mframe(CLOSE, ''));
    close_ok($c, 'empty close', [], 'none-or-1000');
});

case($t, '7: 1-byte close payload fails with 1002', sub {
    my ($c) = @_;
    $c->send_raw(mframe(CLOSE, "\x03"));
    close_ok($c, '1-byte close', [], 1002);
});

case($t, '7: close with a code only: the code is echoed', sub {
    my ($c) = @_;
    $c->send_raw(mframe(CLOSE, close_payload(1000)));
    close_ok($c, 'code only', [], 1000);
});

case($t, '7: close with code and reason: answered with the code', sub {
    my ($c) = @_;
    $c->send_raw(mframe(CLOSE, close_payload(1000, 'Hello World!')));
    close_ok($c, 'code and reason', [], 1000);
});

case($t, '7: close with code and a 123-byte reason: answered with the code', sub {
    my ($c) = @_;
    $c->send_raw(mframe(CLOSE, close_payload(1000, '*' x 123)));
    close_ok($c, '123-byte reason', [], 1000);
});

case($t, '7: close with code and a 123-byte multi-byte UTF-8 reason: answered with the code', sub {
    my ($c) = @_;
    my $reason = "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5" x 11 . 'a' x 2;
    $c->send_raw(mframe(CLOSE, close_payload(3000, $reason)));
    close_ok($c, 'UTF-8 reason', [], 3000);
});

case($t, '7: close with code and a 124-byte reason (payload 126) fails with 1002', sub {
    my ($c) = @_;
    $c->send_raw(mframe(CLOSE, close_payload(1000, '*' x 124)));
    close_ok($c, '124-byte reason', [], 1002);
});

for my $e (['a surrogate', "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"],
           ['a truncated sequence', "edited\xe1\xbd"],
           ['0xFF', "\xff"],
           ['an overlong', "\xc0\xaf"])
{
    my ($what, $reason) = @$e;
    case($t, "7: close reason with invalid UTF-8 ($what) fails with 1002", sub {
        my ($c) = @_;
        $c->send_raw(mframe(CLOSE, close_payload(1000, $reason)));
        close_ok($c, "reason with $what", [], 1002);
    });
}

for my $code (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012,
              1013, 1014, 3000, 3999, 4000, 4999)
{
    case($t, "7: close code $code is echoed", sub {
        my ($c) = @_;
        $c->send_raw(mframe(CLOSE, close_payload($code)));
        close_ok($c, "code $code", [], $code);
    });
}

for my $code (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000,
              65535)
{
    case($t, "7: close code $code fails with 1002", sub {
        my ($c) = @_;
        $c->send_raw(mframe(CLOSE, close_payload($code)));
        close_ok($c, "code $code", [], 1002);
    });
}

case($t, '7: close sent byte by byte is answered', sub {
    my ($c) = @_;
    send_chunked($c, mframe(CLOSE, close_payload(1000, 'bye')), 1, 0.001);
    close_ok($c, 'byte-wise close', [], 1000);
});

case($t, '7: the server closes TCP promptly without waiting for us', sub {
    my ($c) = @_;
    my $start = time;
    $c->send_raw(mframe(CLOSE, close_payload(1000)));
    my ($code) = next_close($c, 5 * $SLOW);
    is($code // 'none', 1000, 'close answered');
    ok($c->wait_eof(2 * $SLOW), 'TCP closed by the server');
    cmp_ok(time - $start, '<', 2 * $SLOW, 'within 2 s');
});

note sprintf 'cases took %.1f s', time - $t0;

$t->stop;

done_testing;
