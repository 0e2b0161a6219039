#!/usr/bin/perl

# RFC 6455 conformance against openclaw_bridge_echo: Autobahn section 9
# (limits and performance) adapted, plus the module's message size limit
# (1009 on the header that crosses it) and the frame length encoding rules.

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

# /big allows Autobahn's largest messages; / keeps the default limit (1m)
my $t = OCB->new(http => <<'CONF');
server {
    listen 127.0.0.1:%%PORT%%;
    location /big {
        openclaw_bridge_echo;
        openclaw_bridge_max_message_size 16m;
    }
    location / {
        openclaw_bridge_echo;
    }
}
CONF
my $t0 = time;
my $MiB = 1 << 20;

sub big { my $c = $_[0]->ws(path => '/big', timeout => 5 * $SLOW);
          die 'handshake answered "' . ($c->status_line // 'nothing') . "\"\n"
              unless ($c->status // 0) == 101;
          return $c }

# like case(), on the 16m location
sub big_case {
    my ($name, $code) = @_;
    subtest $name => sub {
        my $c = eval { big($t) };
        if (!$c) { fail("$name: connect"); diag $@; return }
        my $s = time;
        eval { $code->($c); 1 } or fail("$name died: $@");
        note sprintf '%s: %.2f s', $name, time - $s;
        $c->close;
    };
}

srand 9;
# 16 KiB units: any multiple of 16 KiB is valid UTF-8, and euro signs
# straddle the fragment and chunk boundaries
my %unit = (
    TEXT, "ab\xe2\x82\xac" x 3276 . 'abcd',
    BIN,  join('', map { pack 'N', int rand 0xffffffff } 1 .. 4096),
);
# round-trip messages: 4-byte characters, cut on multiples of 4
my %small = (TEXT, "\xf0\x9f\x98\x80" x 1100, BIN, substr($unit{+BIN}, 0, 4400));
sub payload {
    my ($op, $len) = @_;
    my $unit = $unit{$op};
    return substr($unit x (int($len / length $unit) + 1), 0, $len);
}

# --- 9.1 / 9.2: single-frame messages up to 16 MiB ----------------------

for my $op (TEXT, BIN) {
    my $kind = $op == TEXT ? 'text' : 'binary';
    for my $len (64 * 1024, 256 * 1024, $MiB, 4 * $MiB, 8 * $MiB, 16 * $MiB) {
        big_case("9: $kind message of " . ($len < $MiB ? $len / 1024 . ' KiB' : $len / $MiB . ' MiB')
                 . ' in one frame echoed intact', sub {
            my ($c) = @_;
            my $p = payload($op, $len);
            $c->send_raw(mframe($op, $p));
            echo_ok($c, $op, $p, 'echo matches (sha256)', 30);
            bye_ok($c, "$kind $len");
        });
    }
}

# --- 9.3 / 9.4: 4 MiB in many fragments ----------------------------------

for my $op (TEXT, BIN) {
    my $kind = $op == TEXT ? 'text' : 'binary';
    for my $size (64, 256, 1024, 4096, 16384, 65536, 256 * 1024, $MiB, 4 * $MiB) {
        big_case("9: 4 MiB $kind message in " . ($size < 1024 ? "$size B" : $size < $MiB ? $size / 1024 . ' KiB' : $size / $MiB . ' MiB')
                 . ' fragments (' . 4 * $MiB / $size . ') echoed intact', sub {
            my ($c) = @_;
            my $p = payload($op, 4 * $MiB);
            my $n = length($p) / $size;
            my $bytes = '';
            for my $i (0 .. $n - 1) {
                $bytes .= mframe($i ? CONT : $op, substr($p, $i * $size, $size),
                                 fin => $i == $n - 1);
            }
            $c->send_raw($bytes);
            echo_ok($c, $op, $p, 'one echo, matches (sha256)', 30);
            bye_ok($c, "$kind in $size-byte fragments");
        });
    }
}

# --- 9.5 / 9.6: 1 MiB written to TCP in small chunks --------------------

for my $op (TEXT, BIN) {
    my $kind = $op == TEXT ? 'text' : 'binary';
    for my $chunk (64, 128, 256, 512, 1024, 2048) {
        big_case("9: 1 MiB $kind message written in $chunk-byte chunks echoed intact", sub {
            my ($c) = @_;
            my $p = payload($op, $MiB);
            send_chunked($c, mframe($op, $p), $chunk, 0);
            echo_ok($c, $op, $p, 'echo matches (sha256)', 30);
            bye_ok($c, "$kind in $chunk-byte writes");
        });
    }
}

# --- 9.7 / 9.8: round trips ----------------------------------------------

for my $op (TEXT, BIN) {
    my $kind = $op == TEXT ? 'text' : 'binary';
    big_case("9: 1000 sequential $kind round trips of 0 to 4 KiB", sub {
        my ($c) = @_;
        nodelay($c);
        my @sizes = (0, 16, 64, 256, 1024, 4096);
        my ($bad, $first) = (0);
        my $start = time;
        for my $i (1 .. 1000) {
            my $p = substr($small{$op}, 4 * ($i % 8), $sizes[$i % @sizes]);
            $c->send_raw(mframe($op, $p));
            my $got = fdesc(next_frame($c, 5 * $SLOW));
            next if $got eq want($op, $p);
            $bad++;
            $first //= "round trip $i: got $got, want " . want($op, $p);
            last if $got eq 'no frame';
        }
        is($bad, 0, '1000 echoes match') or diag $first;
        note sprintf '%.0f round trips/s', 1000 / (time - $start);
        bye_ok($c, "$kind round trips");
    });
}

# --- the limit: 1009 as soon as a header announces too much --------------

case($t, 'limit: a message of exactly 1 MiB is echoed (default limit 1m)', sub {
    my ($c) = @_;
    my $p = payload(BIN, $MiB);
    $c->send_raw(mframe(BIN, $p));
    echo_ok($c, BIN, $p, 'echo matches', 30);
    bye_ok($c, 'exactly 1 MiB');
});

case($t, 'limit: 1 MiB in 4 fragments is echoed', sub {
    my ($c) = @_;
    my $p = payload(TEXT, $MiB);
    my $q = $MiB / 4;
    $c->send_raw(join '', map { mframe($_ ? CONT : TEXT, substr($p, $_ * $q, $q), fin => $_ == 3) } 0 .. 3);
    echo_ok($c, TEXT, $p, 'echo matches', 30);
    bye_ok($c, '1 MiB in fragments');
});

for my $e (['1 MiB + 1 byte', $MiB + 1], ['2 MiB', 2 * $MiB], ['2^62 bytes', 1 << 62]) {
    my ($what, $len) = @$e;
    for my $op (TEXT, BIN) {
        my $kind = $op == TEXT ? 'text' : 'binary';
        case($t, "limit: header of a $what $kind frame alone gets 1009", sub {
            my ($c) = @_;
            # the header and masking key, not a byte of payload
            $c->send_raw(mframe($op, '', len => $len, enc => 64));
            close_ok($c, "$what header", [], 1009);
        });
    }
}

big_case('limit: on /big (16m) the header of a 16 MiB + 1 byte frame alone gets 1009', sub {
    my ($c) = @_;
    $c->send_raw(mframe(BIN, '', len => 16 * $MiB + 1, enc => 64));
    close_ok($c, '16 MiB + 1 header', [], 1009);
});

case($t, 'limit: 1 MiB + 1 byte sent whole gets 1009 and no echo', sub {
    my ($c) = @_;
    $c->send_raw(mframe(BIN, payload(BIN, $MiB + 1)));
    close_ok($c, '1 MiB + 1', [], 1009);
});

case($t, 'limit: fragments over the limit get 1009 at the header that crosses it', sub {
    my ($c) = @_;
    my $q = 256 * 1024;
    # 768 KiB in 3 fragments, then the header of a 512 KiB continuation
    $c->send_raw(join '', map { mframe($_ ? CONT : TEXT, payload(TEXT, $q), fin => 0) } 0 .. 2);
    quiet_ok($c, '768 KiB of fragments are fine', 0.3);
    $c->send_raw(mframe(CONT, '', len => 2 * $q, enc => 64, fin => 0));
    close_ok($c, 'crossing fragment header', [], 1009);
});

case($t, 'limit: fragments adding up to 1 MiB + 1 byte get 1009 at the last header', sub {
    my ($c) = @_;
    my $q = 256 * 1024;
    $c->send_raw(join '', map { mframe($_ ? CONT : BIN, payload(BIN, $q), fin => 0) } 0 .. 3);
    quiet_ok($c, '1 MiB of fragments are fine', 0.3);
    # a 1-byte final fragment: header (2 bytes) and key sent, payload not
    my $f = mframe(CONT, 'x');
    $c->send_raw(substr($f, 0, 6));
    close_ok($c, 'one byte over', [], 1009);
});

case($t, 'limit: many small fragments over the limit get 1009', sub {
    my ($c) = @_;
    my $p = payload(TEXT, 4096);
    my $n = 2 * $MiB / 4096;
    my $bytes = join '', map { mframe($_ ? CONT : TEXT, $p, fin => 0) } 0 .. $n - 1;
    # the server fails at fragment 257 and closes; the rest may not be taken
    $c->send_raw($bytes);
    close_ok($c, '2 MiB of 4 KiB fragments', [], 1009);
});

# --- length encodings -----------------------------------------------------

case($t, '64-bit length with the top bit set fails with 1002', sub {
    my ($c) = @_;
    $c->send_raw(mframe(BIN, '', len => (1 << 63) + 5, enc => 64));
    close_ok($c, 'top bit', [], 1002);
});

big_case('64-bit length with the top bit set fails with 1002 on /big (16m) too', sub {
    my ($c) = @_;
    $c->send_raw(mframe(TEXT, '', len => (1 << 63) | 1, enc => 64));
    close_ok($c, 'top bit on /big', [], 1002);
});

for my $e (['5 bytes with a 16-bit length', 5, 16],
           ['125 bytes with a 16-bit length', 125, 16],
           ['5 bytes with a 64-bit length', 5, 64],
           ['65535 bytes with a 64-bit length', 65535, 64])
{
    my ($what, $len, $enc) = @$e;
    for my $op (TEXT, PING) {
        next if $op == PING && $len > 125;
        my $kind = $op == TEXT ? 'text' : 'ping';
        case($t, "non-minimal length: $kind of $what fails with 1002", sub {
            my ($c) = @_;
            $c->send_raw(mframe($op, 'x' x $len, enc => $enc));
            close_ok($c, "$kind $what", [], 1002);
        });
    }
}

note sprintf 'cases took %.1f s', time - $t0;

$t->stop;

done_testing;
