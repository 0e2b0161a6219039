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

use Conformance;

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
