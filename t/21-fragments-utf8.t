#!/usr/bin/perl

# RFC 6455 conformance against openclaw_bridge_echo: Autobahn sections 5
# (fragmentation) and 6 (UTF-8 in text messages, fail-fast included).

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

my $t = OCB->new(location => 'openclaw_bridge_echo;');
my $t0 = time;

# frames of one message: ($op, @pieces) -> the pieces as fragments
sub fragments {
    my ($op, @pieces) = @_;
    return map { mframe($_ ? CONT : $op, $pieces[$_], fin => $_ == $#pieces) }
           0 .. $#pieces;
}

# --- section 5: fragmentation --------------------------------------------

for my $op (PING, PONG) {
    my $kind = $op == PING ? 'ping' : 'pong';
    case($t, "5: $kind in 2 fragments fails with 1002", sub {
        my ($c) = @_;
        $c->send_raw(mframe($op, 'fragment1', fin => 0)
                     . mframe(CONT, 'fragment2'));
        close_ok($c, "fragmented $kind", [], 1002);
    });
}

my %send = (
    'in one write' => sub { my $c = shift; $c->send_raw(join '', @_) },
    'frame-wise'   => sub { my $c = shift; send_parts($c, 0.05, @_) },
    'byte-wise'    => sub { my $c = shift; send_chunked($c, join('', @_), 1, 0.0005) },
    'in 3-byte chunks' => sub { my $c = shift; send_chunked($c, join('', @_), 3, 0.0005) },
);
my @how = ('in one write', 'frame-wise', 'byte-wise', 'in 3-byte chunks');

for my $how (@how) {
    case($t, "5: text in 2 fragments $how is echoed as one message", sub {
        my ($c) = @_;
        $send{$how}->($c, fragments(TEXT, 'fragment1', 'fragment2'));
        echo_ok($c, TEXT, 'fragment1fragment2', 'one echo');
        quiet_ok($c, 'nothing else');
        bye_ok($c, 'two fragments');
    });

    case($t, "5: text in 2 fragments with a ping between, $how: pong, then echo", sub {
        my ($c) = @_;
        my ($f1, $f2) = fragments(TEXT, 'fragment1', 'fragment2');
        $send{$how}->($c, $f1, mframe(PING, 'pongme 2!'), $f2);
        echo_ok($c, PONG, 'pongme 2!', 'the pong comes first');
        echo_ok($c, TEXT, 'fragment1fragment2', 'then the echo');
        bye_ok($c, 'ping between fragments');
    });

    for my $fin (1, 0) {
        case($t, "5: continuation (FIN=$fin) without a start, $how, fails with 1002", sub {
            my ($c) = @_;
            $send{$how}->($c, mframe(CONT, 'non-continuation payload', fin => $fin),
                          mframe(TEXT, 'Hello, world!'));
            close_ok($c, "stray continuation FIN=$fin", [], 1002);
        });

        case($t, "5: continuation (FIN=$fin) without a start, text and continuation after it, $how: 1002", sub {
            my ($c) = @_;
            $send{$how}->($c, mframe(CONT, 'fragment1', fin => $fin),
                          mframe(TEXT, 'fragment2', fin => 0),
                          mframe(CONT, 'fragment3'));
            close_ok($c, "stray continuation FIN=$fin, then a message", [], 1002);
        });
    }
}

case($t, '5: valid fragmented message, then a stray continuation: echo, then 1002', sub {
    my ($c) = @_;
    $c->send_raw(join '', fragments(TEXT, 'fragment1', 'fragment2'),
                 mframe(CONT, 'fragment3', fin => 0),
                 mframe(TEXT, 'fragment4'));
    close_ok($c, 'stray continuation after a message',
             [[TEXT, 'fragment1fragment2']], 1002);
});

case($t, '5: second fragment with opcode text instead of continuation fails with 1002', sub {
    my ($c) = @_;
    $c->send_raw(mframe(TEXT, 'fragment1', fin => 0) . mframe(TEXT, 'fragment2'));
    close_ok($c, 'text inside a fragmented message', [], 1002);
});

case($t, '5: second fragment with opcode binary instead of continuation fails with 1002', sub {
    my ($c) = @_;
    $c->send_raw(mframe(TEXT, 'fragment1', fin => 0) . mframe(BIN, 'fragment2', fin => 0)
                 . mframe(CONT, 'fragment3'));
    close_ok($c, 'binary inside a fragmented message', [], 1002);
});

for my $chunk (0, 1) {
    my $how = $chunk ? ', byte-wise' : '';
    case($t, "5: text in 5 fragments with pings between and delays$how: pongs, then one echo", sub {
        my ($c) = @_;
        my @f = fragments(TEXT, map { "fragment$_" } 1 .. 5);
        my $send = sub {
            my $b = join '', @_;
            $chunk ? send_chunked($c, $b, 1, 0.0005) : $c->send_raw($b);
        };
        $send->(@f[0, 1], mframe(PING, 'pongme 1!'));
        sleep 0.2;
        echo_ok($c, PONG, 'pongme 1!', 'first pong while the message is open');
        $send->(@f[2, 3], mframe(PING, 'pongme 2!'));
        sleep 0.2;
        echo_ok($c, PONG, 'pongme 2!', 'second pong while the message is open');
        quiet_ok($c, 'no echo before the last fragment', 0.2);
        $send->($f[4]);
        echo_ok($c, TEXT, join('', map { "fragment$_" } 1 .. 5), 'one echo');
        bye_ok($c, 'five fragments');
    });
}

# --- section 6: UTF-8 ----------------------------------------------------

my $HELLO = "Hello-\xc2\xb5\@\xc3\x9f\xc3\xb6\xc3\xa4\xc3\xbc\xc3\xa0\xc3\xa1-UTF-8!!";
my $KOSME = "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5";

case($t, '6: empty text message', sub {
    my ($c) = @_;
    $c->send_raw(mframe(TEXT, ''));
    echo_ok($c, TEXT, '', 'echoed');
    bye_ok($c, 'empty');
});

case($t, '6: empty text message in 3 empty fragments', sub {
    my ($c) = @_;
    $c->send_raw(join '', fragments(TEXT, '', '', ''));
    echo_ok($c, TEXT, '', 'echoed once');
    quiet_ok($c, 'nothing else');
    bye_ok($c, 'empty fragments');
});

case($t, '6: text message of empty, non-empty and empty fragments', sub {
    my ($c) = @_;
    $c->send_raw(join '', fragments(TEXT, '', 'middle frame payload', ''));
    echo_ok($c, TEXT, 'middle frame payload', 'echoed once');
    bye_ok($c, 'empty fragments around');
});

# a valid text split into two fragments at every byte offset, so that every
# code point is cut inside at least once
for my $s (['Hello-µ@ßöäüàá-UTF-8!!', $HELLO], ['κόσμε', $KOSME],
           ['U+10000..U+10FFFF', "\xf0\x90\x80\x80\xf4\x8f\xbf\xbf"])
{
    my ($name, $text) = @$s;
    case($t, "6: \"$name\" split in 2 fragments at every offset", sub {
        my ($c) = @_;
        for my $i (1 .. length($text) - 1) {
            $c->send_raw(join '', fragments(TEXT, substr($text, 0, $i), substr($text, $i)));
            echo_ok($c, TEXT, $text, "split at $i echoed");
        }
        bye_ok($c, $name);
    });

    case($t, "6: \"$name\" as 1-byte fragments", sub {
        my ($c) = @_;
        $c->send_raw(join '', fragments(TEXT, split //, $text));
        echo_ok($c, TEXT, $text, 'echoed as one message');
        bye_ok($c, $name);
    });

    case($t, "6: \"$name\" in one frame written byte by byte", sub {
        my ($c) = @_;
        send_chunked($c, mframe(TEXT, $text), 1, 0.0005);
        echo_ok($c, TEXT, $text, 'echoed');
        bye_ok($c, $name);
    });
}

# 6.6: κόσμε cut after every byte: valid only on character boundaries
for my $i (1 .. length $KOSME) {
    my $prefix = substr($KOSME, 0, $i);
    my $valid = grep { $_ == $i } 2, 5, 7, 9, 11;
    case($t, sprintf('6: first %d bytes of κόσμε %s', $i, $valid ? 'echoed' : 'fail with 1007'), sub {
        my ($c) = @_;
        $c->send_raw(mframe(TEXT, $prefix));
        if ($valid) { echo_ok($c, TEXT, $prefix, 'echoed'); bye_ok($c, "prefix $i") }
        else { close_ok($c, "prefix $i", [], 1007) }
    });
}

# the decoder stress corpus (Markus Kuhn's UTF-8 test file, as in Autobahn
# 6.7-6.23): [description, bytes, valid]
my @corpus = (
    # 6.7 first code point of each length
    ['U+0000', "\x00", 1], ['U+0080', "\xc2\x80", 1],
    ['U+0800', "\xe0\xa0\x80", 1], ['U+10000', "\xf0\x90\x80\x80", 1],
    # 6.8 5- and 6-byte sequences
    ['5-byte U+200000', "\xf8\x88\x80\x80\x80", 0],
    ['6-byte U+4000000', "\xfc\x84\x80\x80\x80\x80", 0],
    # 6.9 last code point of each length
    ['U+007F', "\x7f", 1], ['U+07FF', "\xdf\xbf", 1],
    ['U+FFFF', "\xef\xbf\xbf", 1], ['U+10FFFF', "\xf4\x8f\xbf\xbf", 1],
    # 6.10 beyond U+10FFFF
    ['U+110000', "\xf4\x90\x80\x80", 0], ['U+1FFFFF', "\xf7\xbf\xbf\xbf", 0],
    ['5-byte U+3FFFFFF', "\xfb\xbf\xbf\xbf\xbf", 0],
    ['6-byte U+7FFFFFFF', "\xfd\xbf\xbf\xbf\xbf\xbf", 0],
    # 6.11 other boundaries
    ['U+D7FF', "\xed\x9f\xbf", 1], ['U+E000', "\xee\x80\x80", 1],
    ['U+FFFD', "\xef\xbf\xbd", 1], ['U+10FFFF again', "\xf4\x8f\xbf\xbf", 1],
    ['U+FFFE', "\xef\xbf\xbe", 1],
    # 6.12 unexpected continuation bytes
    ['lone 0x80', "\x80", 0], ['lone 0xBF', "\xbf", 0],
    ['2 continuation bytes', "\x80\xbf", 0],
    ['3 continuation bytes', "\x80\xbf\x80", 0],
    ['4 continuation bytes', "\x80\xbf\x80\xbf", 0],
    ['5 continuation bytes', "\x80\xbf\x80\xbf\x80", 0],
    ['6 continuation bytes', "\x80\xbf\x80\xbf\x80\xbf", 0],
    ['7 continuation bytes', "\x80\xbf\x80\xbf\x80\xbf\x80", 0],
    ['all 64 continuation bytes', join('', map { chr } 0x80 .. 0xbf), 0],
    ['continuation after ASCII', "a\x80", 0],
    ['extra continuation after a 2-byte character', "\xc2\x80\x80", 0],
    # 6.13 lonely start bytes followed by a space
    ['all 2-byte starts, each followed by a space',
     join('', map { chr($_) . ' ' } 0xc0 .. 0xdf), 0],
    ['all 3-byte starts, each followed by a space',
     join('', map { chr($_) . ' ' } 0xe0 .. 0xef), 0],
    ['all 4-byte starts, each followed by a space',
     join('', map { chr($_) . ' ' } 0xf0 .. 0xf7), 0],
    ['5-byte starts, each followed by a space',
     join('', map { chr($_) . ' ' } 0xf8 .. 0xfb), 0],
    ['6-byte starts, each followed by a space', "\xfc \xfd ", 0],
    ['lone 0xC2 followed by a space', "\xc2 ", 0],
    ['lone 0xE1 followed by a space', "\xe1 ", 0],
    ['lone 0xF1 followed by a space', "\xf1 ", 0],
    # 6.14 sequences with the last byte missing
    ['U+0000 as 2 bytes, truncated', "\xc0", 0],
    ['U+0000 as 3 bytes, truncated', "\xe0\x80", 0],
    ['U+0000 as 4 bytes, truncated', "\xf0\x80\x80", 0],
    ['U+0000 as 5 bytes, truncated', "\xf8\x80\x80\x80", 0],
    ['U+0000 as 6 bytes, truncated', "\xfc\x80\x80\x80\x80", 0],
    ['U+07FF truncated', "\xdf", 0],
    ['U+FFFF truncated', "\xef\xbf", 0],
    ['U+1FFFFF truncated', "\xf7\xbf\xbf", 0],
    ['U+10FFFF truncated', "\xf4\x8f\xbf", 0],
    ['U+0800 truncated', "\xe0\xa0", 0],
    ['U+10000 truncated', "\xf0\x90\x80", 0],
    ['U+10000 truncated after 2 bytes', "\xf0\x90", 0],
    ['U+3FFFFFF truncated', "\xfb\xbf\xbf\xbf", 0],
    ['U+7FFFFFFF truncated', "\xfd\xbf\xbf\xbf\xbf", 0],
    ['valid text then a truncated sequence', "$KOSME\xe1\xbd", 0],
    # 6.15 concatenated incomplete sequences
    ['all truncated sequences concatenated',
     "\xc0\xe0\x80\xf0\x80\x80\xf8\x80\x80\x80\xfc\x80\x80\x80\x80"
     . "\xdf\xef\xbf\xf7\xbf\xbf\xfb\xbf\xbf\xbf\xfd\xbf\xbf\xbf\xbf", 0],
    # 6.16 impossible bytes
    ['0xFE', "\xfe", 0], ['0xFF', "\xff", 0], ['FE FE FF FF', "\xfe\xfe\xff\xff", 0],
    ['0xFF after valid text', "${KOSME}\xff", 0],
    # 6.17 overlong '/'
    ['overlong / (2 bytes)', "\xc0\xaf", 0], ['overlong / (3 bytes)', "\xe0\x80\xaf", 0],
    ['overlong / (4 bytes)', "\xf0\x80\x80\xaf", 0],
    ['overlong / (5 bytes)', "\xf8\x80\x80\x80\xaf", 0],
    ['overlong / (6 bytes)', "\xfc\x80\x80\x80\x80\xaf", 0],
    # 6.18 maximal overlongs
    ['overlong U+007F', "\xc1\xbf", 0], ['overlong U+07FF', "\xe0\x9f\xbf", 0],
    ['overlong U+FFFF', "\xf0\x8f\xbf\xbf", 0],
    ['overlong U+1FFFFF', "\xf8\x87\xbf\xbf\xbf", 0],
    ['overlong U+3FFFFFF', "\xfc\x83\xbf\xbf\xbf\xbf", 0],
    # 6.19 overlong NUL
    ['overlong NUL (2 bytes)', "\xc0\x80", 0], ['overlong NUL (3 bytes)', "\xe0\x80\x80", 0],
    ['overlong NUL (4 bytes)', "\xf0\x80\x80\x80", 0],
    ['overlong NUL (5 bytes)', "\xf8\x80\x80\x80\x80", 0],
    ['overlong NUL (6 bytes)', "\xfc\x80\x80\x80\x80\x80", 0],
    # 6.20 single surrogates
    ['U+D800', "\xed\xa0\x80", 0], ['U+DB7F', "\xed\xad\xbf", 0],
    ['U+DB80', "\xed\xae\x80", 0], ['U+DBFF', "\xed\xaf\xbf", 0],
    ['U+DC00', "\xed\xb0\x80", 0], ['U+DF80', "\xed\xbe\x80", 0],
    ['U+DFFF', "\xed\xbf\xbf", 0],
    ['surrogate inside valid text', "$KOSME\xed\xa0\x80edited", 0],
    # 6.21 paired surrogates
    ['U+D800 U+DC00', "\xed\xa0\x80\xed\xb0\x80", 0],
    ['U+D800 U+DFFF', "\xed\xa0\x80\xed\xbf\xbf", 0],
    ['U+DB7F U+DC00', "\xed\xad\xbf\xed\xb0\x80", 0],
    ['U+DB7F U+DFFF', "\xed\xad\xbf\xed\xbf\xbf", 0],
    ['U+DB80 U+DC00', "\xed\xae\x80\xed\xb0\x80", 0],
    ['U+DB80 U+DFFF', "\xed\xae\x80\xed\xbf\xbf", 0],
    ['U+DBFF U+DC00', "\xed\xaf\xbf\xed\xb0\x80", 0],
    ['U+DBFF U+DFFF', "\xed\xaf\xbf\xed\xbf\xbf", 0],
    # 6.22 non-characters: valid
    ['U+FFFE U+FFFF', "\xef\xbf\xbe\xef\xbf\xbf", 1],
    ['U+FDD0..U+FDEF', join('', map { "\xef\xb7" . chr } 0x90 .. 0xaf), 1],
    ['U+1FFFE U+1FFFF', "\xf0\x9f\xbf\xbe\xf0\x9f\xbf\xbf", 1],
    ['U+2FFFE U+2FFFF', "\xf0\xaf\xbf\xbe\xf0\xaf\xbf\xbf", 1],
    ['U+10FFFE U+10FFFF', "\xf4\x8f\xbf\xbe\xf4\x8f\xbf\xbf", 1],
    # 6.23 U+FFFD and friends
    ['U+FFFD alone', "\xef\xbf\xbd", 1],
    ['U+FFFD U+FFFD', "\xef\xbf\xbd" x 2, 1],
    ['κόσμε', $KOSME, 1], ['Hello-µ@ßöäüàá-UTF-8!!', $HELLO, 1],
    ['emoji U+1F600', "\xf0\x9f\x98\x80", 1],
    ['mixed lengths', "a\xc2\x80\xe0\xa0\x80\xf0\x90\x80\x80z", 1],
);

for my $e (@corpus) {
    my ($name, $bytes, $valid) = @$e;
    my $hex = unpack 'H*', $bytes;
    $hex = substr($hex, 0, 40) . '...' if length $hex > 40;

    case($t, "6: $name ($hex) in one frame: " . ($valid ? 'echoed' : '1007'), sub {
        my ($c) = @_;
        $c->send_raw(mframe(TEXT, $bytes));
        if ($valid) { echo_ok($c, TEXT, $bytes, 'echoed'); bye_ok($c, $name) }
        else { close_ok($c, $name, [], 1007) }
    });

    next if length $bytes < 2;

    case($t, "6: $name ($hex) in 1-byte fragments: " . ($valid ? 'echoed' : '1007'), sub {
        my ($c) = @_;
        $c->send_raw(join '', fragments(TEXT, split //, $bytes));
        if ($valid) { echo_ok($c, TEXT, $bytes, 'echoed'); bye_ok($c, $name) }
        else { close_ok($c, $name, [], 1007) }
    });
}

# invalid UTF-8 in binary messages is not the server's business
case($t, '6: invalid UTF-8 in a binary message is echoed', sub {
    my ($c) = @_;
    my $bytes = "\xff\xfe\xed\xa0\x80\xc0\xaf";
    $c->send_raw(join '', fragments(BIN, "\xff\xfe\xed", "\xa0\x80\xc0\xaf"));
    echo_ok($c, BIN, $bytes, 'echoed');
    bye_ok($c, 'binary');
});

# 6.4: fail fast.  The close must come while the message is unfinished: the
# final fragment (or the rest of the frame) is only sent after it.
my @fast = (
    ['6.4.1: invalid code point in the 2nd of 3 fragments',
     [mframe(TEXT, $KOSME, fin => 0), mframe(CONT, "\xf4\x90\x80\x80", fin => 0)],
     mframe(CONT, 'edited')],
    ['6.4.2: invalid byte at the start of the 2nd fragment',
     [mframe(TEXT, "$KOSME\xf4", fin => 0), mframe(CONT, "\x90", fin => 0)],
     mframe(CONT, "\x80\x80edited")],
    ['invalid UTF-8 in the first fragment',
     [mframe(TEXT, "ab\xff", fin => 0)],
     mframe(CONT, 'cd')],
    ['surrogate cut across two fragments',
     [mframe(TEXT, "ab\xed", fin => 0), mframe(CONT, "\xa0\x80", fin => 0)],
     mframe(CONT, 'cd')],
    ['overlong cut across two fragments',
     [mframe(TEXT, "$KOSME\xe0", fin => 0), mframe(CONT, "\x80", fin => 0)],
     mframe(CONT, "\xaf")],
);

{
    # 6.4.3 and 6.4.4: one frame, the invalid bytes arrive in a middle chunk
    my $payload = "$KOSME\xf4\x90\x80\x80edited";
    my $frame = mframe(TEXT, $payload);
    my $head = length($frame) - length($payload);
    my $k = length $KOSME;
    push @fast,
        ['6.4.3: one frame, the chunk with the invalid code point',
         [substr($frame, 0, $head + $k), substr($frame, $head + $k, 4)],
         substr($frame, $head + $k + 4)],
        ['6.4.4: one frame, the chunk with the invalid continuation byte',
         [substr($frame, 0, $head + $k + 1), substr($frame, $head + $k + 1, 1)],
         substr($frame, $head + $k + 2)];
}

for my $e (@fast) {
    my ($name, $parts, $rest) = @$e;
    case($t, "6: fail fast, $name: 1007 before the message is complete", sub {
        my ($c) = @_;
        send_parts($c, 0.1, @$parts);
        my ($code, $reason, $before) = next_close($c, 3 * $SLOW);
        is($code // 'none', 1007, 'close 1007 arrives with the message still unfinished')
            or diag "reason: $reason";
        is(scalar @$before, 0, 'and nothing before it');
        $c->send_raw($rest);
        eof_ok($c, 'server closed TCP');
    });
}

note sprintf 'cases took %.1f s', time - $t0;

$t->stop;

done_testing;
