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

use Conformance;

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
