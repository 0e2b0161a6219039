package Conformance;

# Helpers of the RFC 6455 conformance tests (t/20-23): masked client frames
# with any bits and length encodings, writes in chunks, and assertions on
# echoes, closes and the end of the TCP connection.

use strict;
use warnings;
use feature 'bitwise';

use Digest::SHA qw(sha256_hex);
use Exporter qw(import);
use Socket qw(IPPROTO_TCP TCP_NODELAY);
use Test::More;
use Time::HiRes qw(time sleep);

use OCB;

our @EXPORT = qw(
    CONT TEXT BIN CLOSE PING PONG $SLOW mframe xmask close_payload nodelay
    send_chunked send_parts conn fdesc want next_frame next_close echo_ok
    quiet_ok eof_ok close_ok bye_ok case
);

use constant { CONT => 0x0, TEXT => 0x1, BIN => 0x2, CLOSE => 0x8,
               PING => 0x9, PONG => 0xa };

# ASan makes nginx several times slower: generous waits, never tight ones
our $SLOW = OCB::asan() ? 4 : 1;

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

1;
