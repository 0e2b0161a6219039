#!/usr/bin/perl

# Copyright (C) The ngx_http_openclaw_bridge_module authors

# Writes the seed corpora of the fuzz targets:
#
#   fuzz/corpus/frame/   for fuzz_frame: 3 control bytes, then the stream
#   fuzz/corpus/utf8/    for fuzz_utf8: the text itself
#
# Control byte 0 of a frame seed: bit 0 server mode (frames masked),
# bits 1-3 index of max_message in { 0, 1, 2, 125, 126, 1000, 65535,
# 65536 }, bits 4-5 how reads are cut; bytes 1-2 seed the read sizes.
#
# Masking keys are fixed, so that the files only change when this script
# does.  Run from anywhere: perl fuzz/make_corpus.pl

use strict;
use warnings;

use File::Basename qw(dirname);
use File::Path qw(make_path);
use File::Spec;

my $top = File::Spec->rel2abs(dirname(__FILE__));
my $frame_dir = "$top/corpus/frame";
my $utf8_dir = "$top/corpus/utf8";

use constant {
    CONT => 0x0, TEXT => 0x1, BINARY => 0x2,
    CLOSE => 0x8, PING => 0x9, PONG => 0xa,
    FIN => 0x80,
};

my @keys = ("\x37\xfa\x21\x3d", "\x01\x02\x03\x04", "\x00\x00\x00\x00",
            "\xa5\x5a\xff\x10");
my $key_n = 0;

# A frame as RFC 6455 5.2 lays it out, with the minimal length encoding
# unless "form" (7, 16, 64) forces another.

sub frame {
    my (%a) = @_;
    my $payload = defined $a{payload} ? $a{payload} : '';
    my $len = length $payload;
    my $mask = $a{masked} ? 0x80 : 0;
    my $form = $a{form} || ($len < 126 ? 7 : $len < 65536 ? 16 : 64);
    my $b0 = ($a{fin} ? FIN : 0) | ($a{rsv} || 0) | $a{op};
    my $f = chr($b0);

    if ($form == 7) {
        $f .= chr($mask | $len);
    } elsif ($form == 16) {
        $f .= chr($mask | 126) . pack('n', $len);
    } else {
        $f .= chr($mask | 127) . pack('NN', int($len / 2**32), $len % 2**32);
    }

    return $f . $payload unless $a{masked};

    my $key = $keys[$key_n++ % @keys];
    my $stream = substr($key x (int($len / 4) + 1), 0, $len);

    return $f . $key . ($payload ^ $stream);
}

sub control {
    my ($server, $max_index, $pattern, $seed) = @_;
    return chr(($server ? 1 : 0) | ($max_index << 1) | ($pattern << 4))
           . pack('n', $seed);
}

# client frames (masked) for a server-mode parser
sub c { return frame(masked => 1, fin => 1, @_) }

# server frames (unmasked) for a client-mode parser
sub srv { return frame(masked => 0, fin => 1, @_) }

sub text {
    my ($len) = @_;
    my @chars = ("a", "z", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80",
                 "\xc2\x80", "\xdf\xbf", "\xe0\xa0\x80", "\xef\xbf\xbf",
                 "\xf4\x8f\xbf\xbf");
    my ($t, $i) = ('', 0);

    while (length($t) < $len) {
        my $c = $chars[$i++ % @chars];
        $c = 'x' if length($t) + length($c) > $len;
        $t .= $c;
    }

    return $t;
}

my $kosme = "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5";
my $t300 = text(300);

my %frame = (
    'text-7bit' => control(1, 0, 0, 1) . c(op => TEXT, payload => 'Hello'),
    'text-empty' => control(1, 0, 1, 2) . c(op => TEXT, payload => ''),
    'text-utf8' => control(1, 0, 2, 3) . c(op => TEXT, payload => $kosme),
    'text-16bit' => control(1, 0, 3, 4) . c(op => TEXT, payload => $t300),
    'binary-125' => control(1, 0, 0, 5)
        . c(op => BINARY,
            payload => pack('C*', map { ($_ * 7) & 0xff } 0 .. 124)),
    'binary-16bit' => control(1, 0, 1, 6)
        . c(op => BINARY, payload => pack('C*', map { $_ & 0xff } 0 .. 299)),
    'binary-64bit' => control(1, 0, 3, 7)
        . c(op => BINARY, payload => "\x5a" x 65536),
    'binary-64bit-header' => control(1, 0, 2, 8)
        . substr(c(op => BINARY, payload => "\x01" x 70000), 0, 17),
    'fragmented-text' => control(1, 0, 1, 9)
        . c(op => TEXT, fin => 0, payload => substr($t300, 0, 13))
        . c(op => PING, payload => 'ping')
        . c(op => CONT, fin => 0, payload => substr($t300, 13, 1))
        . c(op => CONT, fin => 0, payload => '')
        . c(op => PONG, payload => '')
        . c(op => CONT, payload => substr($t300, 14)),
    'fragmented-binary' => control(1, 0, 2, 10)
        . c(op => BINARY, fin => 0, payload => "\x00\xff")
        . c(op => CONT, fin => 0, payload => "\x80")
        . c(op => CONT, payload => "\xc0"),
    'ping-pong' => control(1, 0, 0, 11)
        . c(op => PING, payload => '') . c(op => PING, payload => 'x' x 125)
        . c(op => PONG, payload => 'pong'),
    'close-1000' => control(1, 0, 1, 12)
        . c(op => CLOSE, payload => pack('n', 1000) . 'bye'),
    'close-empty' => control(1, 0, 2, 13) . c(op => CLOSE),
    'close-reason' => control(1, 0, 3, 14)
        . c(op => CLOSE, payload => pack('n', 4000) . $kosme),
    'close-bad-code' => control(1, 0, 0, 15)
        . c(op => CLOSE, payload => pack('n', 1005)),
    'session' => control(1, 0, 3, 16)
        . c(op => TEXT, payload => 'hello')
        . c(op => BINARY, payload => "\x00\x01\x02")
        . c(op => PING, payload => '1')
        . c(op => TEXT, fin => 0, payload => "\xe2\x82")
        . c(op => CONT, payload => "\xac")
        . c(op => CLOSE, payload => pack('n', 1001))
        . c(op => TEXT, payload => 'after close'),
    'max-1000-ok' => control(1, 5, 1, 17)
        . c(op => BINARY, fin => 0, payload => 'a' x 600)
        . c(op => PING, payload => '')
        . c(op => CONT, payload => 'b' x 400),
    'max-1000-over' => control(1, 5, 2, 18)
        . c(op => TEXT, fin => 0, payload => 'a' x 600)
        . c(op => CONT, payload => 'b' x 401),
    'max-125' => control(1, 3, 0, 19)
        . c(op => TEXT, payload => 'x' x 125)
        . c(op => TEXT, payload => 'x' x 126),
    'utf8-invalid' => control(1, 0, 1, 20)
        . c(op => TEXT, fin => 0, payload => "ok\xed\xa0\x80"),
    'utf8-truncated' => control(1, 0, 2, 21)
        . c(op => TEXT, payload => "end\xf0\x9f\x98"),
    'rsv1' => control(1, 0, 0, 22) . c(op => TEXT, rsv => 0x40,
                                        payload => 'x'),
    'opcode-3' => control(1, 0, 0, 23) . c(op => 3, payload => 'x'),
    'non-minimal' => control(1, 0, 1, 24)
        . c(op => BINARY, form => 16, payload => 'short'),
    'unmasked-to-server' => control(1, 0, 0, 25)
        . srv(op => TEXT, payload => 'x'),
    'client-mode' => control(0, 0, 1, 26)
        . srv(op => TEXT, payload => 'from server')
        . srv(op => BINARY, fin => 0, payload => "\x01")
        . srv(op => PING, payload => '')
        . srv(op => CONT, payload => "\x02" x 200)
        . srv(op => CLOSE, payload => pack('n', 1000)),
    'client-mode-masked' => control(0, 0, 2, 27)
        . c(op => TEXT, payload => 'masked'),
);

my %utf8 = (
    'ascii' => join('', map { chr } 0 .. 127),
    'kosme' => $kosme,
    'boundaries' => "\xc2\x80\xdf\xbf\xe0\xa0\x80\xed\x9f\xbf\xee\x80\x80"
        . "\xef\xbf\xbd\xef\xbf\xbe\xef\xbf\xbf\xf0\x90\x80\x80"
        . "\xf4\x8f\xbf\xbf",
    'mixed' => text(200),
    'overlongs' => "\xc0\x80\xc1\xbf\xe0\x80\x80\xe0\x9f\xbf\xf0\x80\x80\x80"
        . "\xf0\x8f\xbf\xbf",
    'surrogates' => "\xed\xa0\x80\xed\xaf\xbf\xed\xb0\x80\xed\xbf\xbf",
    'above-10ffff' => "\xf4\x90\x80\x80\xf5\x80\x80\x80\xfe\xff",
    'truncated' => "abc\xe2\x82",
    'long-reason' => 'r' x 120 . "\xe2\x82\xac\xe2\x82\xac",
);

for my $d ($frame_dir, $utf8_dir) {
    make_path($d);
    unlink glob "$d/*";
}

sub write_all {
    my ($dir, $files) = @_;

    for my $name (sort keys %$files) {
        open my $fh, '>:raw', "$dir/$name" or die "$dir/$name: $!\n";
        print $fh $files->{$name};
        close $fh or die "$dir/$name: $!\n";
    }
}

write_all($frame_dir, \%frame);
write_all($utf8_dir, \%utf8);

printf "%d frame seeds in %s, %d utf8 seeds in %s\n",
    scalar(keys %frame), $frame_dir, scalar(keys %utf8), $utf8_dir;
