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

use Conformance;

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
