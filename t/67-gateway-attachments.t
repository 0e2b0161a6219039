#!/usr/bin/perl

# Image attachments through the bridge to a real OpenClaw gateway and on
# to the fake model (t/gateway/fake-model.pl, configured to take images),
# which names the images it was given in its reply.  An oversized and a
# malformed attachment get their errors from the module and reach neither
# the gateway nor the model.
#
# OCB_GW_VERSIONS="4 3" (the default) picks the gateways: protocol 4
# (openclaw@2026.9.6, limit advertised in hello-ok) and protocol 3
# (openclaw@2026.4.26, its fixed 5000000 bytes).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time);
use MIME::Base64 qw(encode_base64 decode_base64);
use Mojo::JSON qw(encode_json);

use OCB;
use OCGateway;

my @versions = split ' ', $ENV{OCB_GW_VERSIONS} // '4 3';
OCGateway::require_cache($_) for @versions;

# a 1x1 PNG, 68 bytes: the gateway sniffs the type from the bytes
my $png = encode_base64(pack('H*', '89504e470d0a1a0a0000000d4948445200000001'
    . '000000010806000000' . '1f15c4890000000d49444154789c6360000002000154'
    . 'a24f5d0000000049454e44ae426082'), '');

sub pump { OCGateway::Client::pump(@_) }

for my $v (@versions) {
    subtest "protocol $v" => sub {
        my $T0 = time;
        my $gw = OCGateway->new(version => $v,
                                model_input => ['text', 'image']);
        $gw->spy;
        note sprintf 'gateway ready after %.1f s in %s', $gw->ready_after,
            $gw->dir;

        my $ngx = $gw->nginx(workers => 1,
                             extra => 'openclaw_gateway_run_timeout 300s;',
                             loc => 'openclaw_bridge_max_message_size 16m;');
        ok(OCGateway::wait_links($ngx, 1, 30, $v), "link up, protocol $v");

        my $c = OCGateway::Client->new($ngx, name => 'att');
        is($c->status, 101, 'upgraded');

        # the bad ones first: nothing of them may reach the gateway
        my $limit = $v == 4 ? 6291456 : 5000000;
        $c->send_msg(id => 'big', content => 'too big', session => 't67-bad',
                     attachments => [{ mimeType => 'image/png',
                                       content => encode_base64(
                                           'x' x ($limit + 1), '') }]);
        $c->send_msg(id => 'broken', content => 'broken',
                     session => 't67-bad',
                     attachments => [{ mimeType => 'image/png',
                                       content => substr($png, 1) }]);
        ok(pump([$c], time + 30,
                sub { $c->done('big') && $c->done('broken') }),
           'the bad ones are answered at once');

        my ($big) = $c->terminals('big');
        my ($broken) = $c->terminals('broken');
        like($big && $big->{error},
             qr/^attachments\[0\]\.content is ${\($limit + 1)} bytes decoded, over the gateway's limit of $limit bytes for an image \(/,
             'oversized: the error names the size and the gateway\'s limit')
            or diag encode_json($big);
        like($big && $big->{error},
             $v == 4 ? qr/policy\.attachments\.maxImageBytes/
                     : qr/advertises none/,
             'oversized: and where the limit comes from');
        is($broken && $broken->{error},
           'attachments[0].content is not valid base64',
           'malformed: its error');

        # the image: through the gateway to the model
        my $t = time;
        $c->send_msg(id => 'img', content => 'describe this',
                     session => 't67-img',
                     attachments => [{ mimeType => 'image/png',
                                       content => $png,
                                       fileName => 'dot.png' }]);
        ok(pump([$c], time + 330, sub { $c->done('img') }),
           'the message with the image is answered');
        note sprintf 'the turn took %.1f s', time - $t;

        my ($end) = $c->terminals('img');
        is($end && $end->{type}, 'complete', 'complete')
            or diag encode_json($end);
        like($end && $end->{content},
             qr/^Reply to: describe this\. Images: 1 \(image\/png \d+ bytes\)\./,
             'the fake model got the image, as an image part')
            or diag encode_json($end);

        my @with = grep {
            grep { ref $_ eq 'HASH' && ref $_->{content} eq 'ARRAY'
                   && grep { ref $_ eq 'HASH'
                             && ($_->{type} // '') eq 'image_url' }
                           @{ $_->{content} } }
                 @{ $_->{messages} // [] }
        } grep { ref $_ eq 'HASH' } $gw->model_requests;
        ok(scalar @with, 'the model request holds an image_url part');

        # an image alone: both gateways take an empty message with it
        $t = time;
        $c->send_msg(id => 'imgonly', session => 't67-imgonly',
                     attachments => [{ mimeType => 'image/png',
                                       content => $png }]);
        ok(pump([$c], time + 330, sub { $c->done('imgonly') }),
           'the image without text is answered');
        note sprintf 'the turn took %.1f s', time - $t;
        my ($only) = $c->terminals('imgonly');
        is($only && $only->{type}, 'complete', 'image alone: complete')
            or diag encode_json($only);
        like($only && $only->{content},
             qr/Images: 1 \(image\/png \d+ bytes\)\./,
             'image alone: the fake model got it')
            or diag encode_json($only);

        # the agent's media: a model names a file it made with a line
        # "MEDIA:<path>" (the fake model's #media= marker); neither gateway
        # turns that into a block of its chat events (both drop the line
        # from the text), only tools' output and replies no model run made
        # carry blocks, which the fake model cannot play.  Whatever the
        # gateway's final holds, the complete holds the same: the text
        # blocks in "content", the others as they came in "media".
        my $dir = $gw->home . '/.openclaw/workspace/out';
        system('mkdir', '-p', $dir) == 0 or die "mkdir $dir";
        open my $f, '>', "$dir/dot.png" or die "$dir/dot.png: $!";
        print $f decode_base64($png);
        close $f;
        $c->send_msg(id => 'media', content => 'draw #media=out/dot.png',
                     session => 't67-media');
        ok(pump([$c], time + 330, sub { $c->done('media') }),
           'the reply naming a file is answered');
        my ($m) = $c->terminals('media');
        # the spy's own connection may get the final a little later
        my ($final, $until) = (undef, time + 30);
        while (!$final && time < $until) {
            ($final) = map { $_->{frame}{payload} }
                       grep { ($_->{frame}{payload}{state} // '') eq 'final' }
                       $gw->spy_chat('agent:main:webhook:session:t67-media');
            select undef, undef, undef, 0.1 unless $final;
        }
        ok($final, 'media: the gateway\'s final, as its spy saw it');
        my @blocks = @{ ($final // {})->{message}{content} // [] };
        my @text = grep { ($_->{type} // '') eq 'text' } @blocks;
        my @other = grep { ($_->{type} // '') ne 'text' } @blocks;
        is($m && $m->{content}, join('', map { $_->{text} } @text),
           'media: the complete has the final\'s text')
            or diag encode_json([$m, $final]);
        is_deeply($m && ($m->{media} // []), \@other,
                  'media: and its other blocks, as they came')
            or diag encode_json([$m, $final]);
        note 'the final: ' . encode_json($final);

        my @texts = map { encode_json($_->{messages} // []) }
                    grep { ref $_ eq 'HASH' } $gw->model_requests;
        ok(!grep({ /too big|broken/ } @texts),
           'the bad messages never reached the model');
        ok(!$gw->spy_chat('agent:main:webhook:session:t67-bad'),
           'nor made a run on the gateway');

        $gw->show($T0, $c, $_) for grep { !$c->done($_) } qw(img);

        $c->close if $c->can('close');
        $ngx->stop;
        $gw->stop;
    };
}

done_testing;
