#!/usr/bin/perl

# Image attachments (chat.send "attachments"): what a client sends reaches
# the gateway as it came; every malformed or oversized attachment gets an
# error that names it and never reaches the gateway; the limit is the
# one the gateway advertises in hello-ok (policy.attachments), protocol
# 3's fixed 5000000 bytes without one, and the whole request still has to
# fit maxPayload.  The blocks of a final message that are not text reach
# the client on the complete, as "media".

use strict;
use warnings;

use lib 't/lib';
use OCB;
use FakeGateway;
use RelayClient;
use Test::More;
use MIME::Base64 qw(encode_base64);
use Mojo::JSON qw(encode_json);

# a 1x1 PNG, 68 bytes
my $png = encode_base64(pack('H*', '89504e470d0a1a0a0000000d4948445200000001'
    . '000000010806000000' . '1f15c4890000000d49444154789c6360000002000154'
    . 'a24f5d0000000049454e44ae426082'), '');

sub b64 { encode_base64('x' x $_[0], '') }

sub setup {
    my (%fake) = @_;
    my $gw = FakeGateway->new(token => 't', deltas => 2, %fake);
    my $ngx = OCB->new(http => 'openclaw_gateway ' . $gw->url . ";\n"
        . "openclaw_gateway_token t;\n"
        . "server { listen 127.0.0.1:%%PORT%%; location / { openclaw_bridge;"
        . " openclaw_bridge_max_message_size 8m; } }");
    $gw->wait_until(sub { $gw->records(kind => 'hello') }, 10);
    return ($gw, $ngx);
}

# the terminal reply of each id
sub ends {
    my ($c, $ids, $timeout) = @_;
    my %end;
    for my $f ($c->until_terminal($ids, $timeout // 10)) {
        my $j = $f->{json} or next;
        next unless ($j->{type} // '') =~ /^(complete|error)$/;
        $end{ $j->{id} } //= $j if defined $j->{id};
    }
    return \%end;
}

sub sent_ids {
    my ($gw) = @_;
    return map { ($_->{params}{message} // '') =~ /^(\S+)/ ? $1 : () }
           $gw->requests('chat.send');
}

###########################################################################

subtest 'protocol 4: limits from hello-ok, errors, pass-through' => sub {
    my ($gw, $ngx) = setup(max_payload => 4096,
                           attachments_policy => { maxBytes => 3000,
                                                   maxImageBytes => 600 });
    my $c = RelayClient->new($ngx);

    my $good = [{ mimeType => 'image/png', content => $png,
                  fileName => 'dot.png' }];
    $c->send_json({ id => 'good', content => 'good: look', attachments => $good });
    $c->send_json({ id => 'two', content => 'two: both',
                   attachments => [{ mimeType => 'image/png', content => $png },
                                   { mimeType => 'image/jpeg', type => 'image',
                                     content => b64(600) }] });
    $c->send_json({ id => 'none', content => 'none: empty list',
                   attachments => [] });
    $c->send_json({ id => 'null', content => 'null: no list',
                   attachments => undef });
    $c->send_json({ id => 'dataurl', content => 'dataurl: a browser',
                   attachments => [{ mimeType => 'image/png',
                                     content => "data:image/png;base64,$png" }] });
    # "/" written "\/" by the client's encoder
    (my $escaped = b64(30) . '////') =~ s{/}{\\/}g;
    $c->raw->send_frame(1, '{"id":"slashes","content":"slashes: escaped",'
        . '"attachments":[{"mimeType":"image\/gif","content":"' . $escaped
        . '"}]}');

    my $end = ends($c, [qw(good two none null dataurl slashes)]);
    is($end->{$_} && $end->{$_}{type}, 'complete', "$_: complete")
        for qw(good two none null dataurl slashes);

    my %got = map { ($_->{params}{message} =~ /^(\S+):/)[0] => $_->{params} }
              $gw->requests('chat.send');
    is_deeply($got{good}{attachments}, $good,
              'good: the gateway gets the attachment as it came');
    is(scalar @{ $got{two}{attachments} // [] }, 2, 'two: both reach it');
    is($got{two}{attachments}[1]{type}, 'image', 'two: "type" is passed on');
    ok(!exists $got{none}{attachments}, 'none: no attachments member');
    ok(!exists $got{null}{attachments}, 'null: no attachments member');
    is($got{dataurl}{attachments}[0]{content}, "data:image/png;base64,$png",
       'dataurl: passed on for the gateway to strip');
    is($got{slashes}{attachments}[0]{content}, b64(30) . '////',
       'slashes: the gateway reads the escapes decoded');

    # each bad one, with the error it must get
    my @bad = (
        [ 'notarray', 'x', qr/^field "attachments" must be an array$/ ],
        [ 'notobject', ['x'], qr/^attachments\[0\] must be an object$/ ],
        [ 'unknown', [{ mimeType => 'image/png', content => $png, size => 1 }],
          qr/^attachments\[0\] has an unknown field "size"$/ ],
        [ 'url', [{ mimeType => 'image/png', url => 'https://x/y.png' }],
          qr/^attachments\[0\]\.url is not supported: the gateway takes images only as base64 "content"$/ ],
        [ 'nomime', [{ mimeType => 'image/png', content => $png },
                     { content => $png }],
          qr/^attachments\[1\] has no "mimeType"$/ ],
        [ 'nocontent', [{ mimeType => 'image/png' }],
          qr/^attachments\[0\] has no "content"$/ ],
        [ 'mimenum', [{ mimeType => 7, content => $png }],
          qr/^attachments\[0\]\.mimeType must be a string$/ ],
        [ 'contentnull', [{ mimeType => 'image/png', content => undef }],
          qr/^attachments\[0\]\.content must be a string$/ ],
        [ 'filenum', [{ mimeType => 'image/png', content => $png, fileName => 1 }],
          qr/^attachments\[0\]\.fileName must be a string$/ ],
        [ 'notimage', [{ mimeType => 'text/plain', content => $png }],
          qr/^attachments\[0\]\.mimeType must be an image type \(image\/png, image\/jpeg, \.\.\.\), not "text\/plain"$/ ],
        [ 'imageonly', [{ mimeType => 'image/', content => $png }],
          qr/^attachments\[0\]\.mimeType must be an image type/ ],
        [ 'empty', [{ mimeType => 'image/png', content => '' }],
          qr/^attachments\[0\]\.content is empty$/ ],
        [ 'chars', [{ mimeType => 'image/png', content => $png },
                    { mimeType => 'image/png', content => 'ab!d' }],
          qr/^attachments\[1\]\.content is not valid base64$/ ],
        [ 'length', [{ mimeType => 'image/png', content => 'abcde' }],
          qr/^attachments\[0\]\.content is not valid base64$/ ],
        [ 'unpadded', [{ mimeType => 'image/png', content => 'YWI' }],
          qr/^attachments\[0\]\.content is not valid base64$/ ],
        [ 'midpad', [{ mimeType => 'image/png', content => 'YQ==YWJj' }],
          qr/^attachments\[0\]\.content is not valid base64$/ ],
        [ 'pad3', [{ mimeType => 'image/png', content => 'Y===' }],
          qr/^attachments\[0\]\.content is not valid base64$/ ],
        [ 'space', [{ mimeType => 'image/png', content => "YWJj\nYWJj" }],
          qr/^attachments\[0\]\.content is not valid base64$/ ],
        [ 'dataplain', [{ mimeType => 'image/png', content => 'data:image/png,abc' }],
          qr/^attachments\[0\]\.content is a data: URL without ";base64,"$/ ],
        [ 'dataempty', [{ mimeType => 'image/png', content => 'data:image/png;base64,' }],
          qr/^attachments\[0\]\.content is empty$/ ],
        [ 'oversize', [{ mimeType => 'image/png', content => $png },
                       { mimeType => 'image/png', content => b64(601) }],
          qr/^attachments\[1\]\.content is 601 bytes decoded, over the gateway's limit of 600 bytes for an image \(policy\.attachments\.maxImageBytes\)$/ ],
    );

    for my $b (@bad) {
        $c->send_json({ id => $b->[0], content => "$b->[0]: bad",
                        attachments => $b->[1] });
    }
    # one member twice: the gateway would take the last, unchecked
    $c->raw->send_frame(1, '{"id":"twice","content":"twice: bad","attachments":'
        . '[{"mimeType":"image/png","content":"' . $png
        . '","content":"!!!!"}]}');
    push @bad, [ 'twice', undef,
                 qr/^attachments\[0\] has "content" twice$/ ];
    # a member name spelt with escapes is not one the module knows
    $c->raw->send_frame(1, '{"id":"spelt","content":"spelt: bad","attachments":'
        . '[{"mimeType":"image/png","con\u0074ent":"' . $png . '"}]}');
    push @bad, [ 'spelt', undef,
                 qr/^attachments\[0\] has an unknown field "con\\u0074ent"$/ ];

    # fits the image limit, not the gateway's maxPayload of 4096
    $c->send_json({ id => 'frame', content => 'frame: too big',
                   attachments => [map { { mimeType => 'image/png',
                                           content => b64(600) } } 1 .. 6] });
    push @bad, [ 'frame', undef,
                 qr/^message too large for the gateway: \d+ bytes of chat\.send params, where its maxPayload of 4096 bytes/ ];

    $end = ends($c, [map { $_->[0] } @bad]);
    for my $b (@bad) {
        my $e = $end->{ $b->[0] };
        is($e && $e->{type}, 'error', "$b->[0]: error");
        like($e && $e->{error}, $b->[2], "$b->[0]: the error names the problem")
            or diag encode_json($e);
    }

    my %reached = map { $_ => 1 } sent_ids($gw);
    ok(!$reached{"$_->[0]:"}, "$_->[0]: never reached the gateway") for @bad;
    is(scalar $gw->records(kind => 'too_big'), 0, 'no frame over maxPayload');

    # the connection is still good
    $c->send_json({ id => 'after', content => 'after: fine',
                   attachments => $good });
    $end = ends($c, ['after']);
    is($end->{after} && $end->{after}{type}, 'complete',
       'a good message after the bad ones completes');

    $c->close;
    $ngx->stop;
    $gw->stop;
};

###########################################################################

# both gateways take an empty message with attachments ("message or
# attachment required" only when neither is there)
subtest 'an image without text' => sub {
    my ($gw, $ngx) = setup();
    my $c = RelayClient->new($ngx);

    my $img = [{ mimeType => 'image/png', content => $png }];
    $c->send_json({ id => 'nokey', attachments => $img });
    $c->send_json({ id => 'empty', content => '', attachments => $img });
    $c->send_json({ id => 'null', content => undef, attachments => $img });
    $c->send_json({ id => 'notext' });
    $c->send_json({ id => 'emptytext', content => '' });
    $c->send_json({ id => 'emptylist', attachments => [] });
    $c->send_json({ id => 'nulllist', content => '', attachments => undef });
    $c->send_json({ id => 'badtext', content => 7, attachments => $img });

    my $end = ends($c, [qw(nokey empty null notext emptytext emptylist
                           nulllist badtext)]);
    is($end->{$_} && $end->{$_}{type}, 'complete', "$_: complete")
        for qw(nokey empty null);
    my %want = (
        notext => 'missing field "content"',
        emptytext => 'field "content" is empty',
        emptylist => 'missing field "content"',
        nulllist => 'field "content" is empty',
        badtext => 'field "content" must be a string',
    );
    is($end->{$_} && $end->{$_}{error}, $want{$_}, "$_: $want{$_}")
        for sort keys %want;

    my @sends = map { $_->{params} } $gw->requests('chat.send');
    is(scalar @sends, 3, 'only the three with an image reached the gateway');
    is_deeply([map { $_->{message} } @sends], ['', '', ''],
              'each with an empty message');
    is_deeply([map { $_->{attachments} } @sends], [$img, $img, $img],
              'and its image');

    $c->close;
    $ngx->stop;
    $gw->stop;
};

###########################################################################

subtest 'protocol 3: no advertised limit, 5000000 bytes' => sub {
    my ($gw, $ngx) = setup(protocol => 3);
    my $c = RelayClient->new($ngx);

    $c->send_json({ id => 'limit', content => 'limit: at it',
                   attachments => [{ mimeType => 'image/jpeg',
                                     content => b64(5000000) }] });
    $c->send_json({ id => 'over', content => 'over: one more',
                   attachments => [{ mimeType => 'image/jpeg',
                                     content => b64(5000001) }] });

    my $end = ends($c, [qw(limit over)], 30);
    is($end->{limit} && $end->{limit}{type}, 'complete',
       '5000000 bytes: complete');
    like($end->{over} && $end->{over}{error},
         qr/^attachments\[0\]\.content is 5000001 bytes decoded, over the gateway's limit of 5000000 bytes for an image \(the gateway advertises none; protocol 3's\)$/,
         '5000001 bytes: error naming the default')
        or diag encode_json($end->{over});
    my %reached = map { $_ => 1 } sent_ids($gw);
    ok($reached{'limit:'}, 'the one at the limit reached the gateway');
    ok(!$reached{'over:'}, 'the one over it did not');

    $c->close;
    $ngx->stop;
    $gw->stop;
};

###########################################################################

subtest 'media of the final message on the complete' => sub {
    my $media = [
        { type => 'image', artifactId => 'img-1',
          url => '/api/chat/media/outgoing/x/1/full', mimeType => 'image/png',
          alt => 'a chart', width => 10, height => 20 },
        { type => 'thinking', thinking => 'not for the client' },
        { type => 'attachment',
          attachment => { kind => 'document', label => 'r.pdf',
                          mimeType => 'application/pdf', url => '/u' } },
        { type => 'text', text => ' and more text' },
    ];
    my ($gw, $ngx) = setup(final_media => $media);
    my $c = RelayClient->new($ngx);

    $c->send_json({ id => 'm', content => 'draw' });
    my @f = $c->until_terminal(['m'], 10);
    my ($end) = grep { ($_->{type} // '') =~ /^(complete|error)$/ }
                map { $_->{json} // () } @f;
    is($end && $end->{type}, 'complete', 'complete');
    is($end && $end->{content}, 'echo: draw and more text',
       'content is every text block');
    is_deeply($end && $end->{media}, [$media->[0], $media->[2]],
              'media: the other blocks as they came, thinking left out')
        or diag encode_json($end);
    ok(!grep({ ($_->{type} // '') eq 'progress' && exists $_->{media} }
             map { $_->{json} // () } @f),
       'no progress carries media');
    ok(!grep({ ($_->{id} // '') eq 'm' && exists $_->{media} }
             grep { ($_->{type} // '') eq 'progress' } map { $_->{json} // () } @f),
       'only the complete does');

    # a reply handed over (protocol 3's quirk): the run that carries it
    # may start, or even end, before the message's own empty final, and
    # its media are kept for the message that adopts it
    for my $mode (qw(handover handover_early handover_after)) {
        $c->send_json({ id => $mode, session => "s-$mode",
                        content => "{{$mode}} draw" });
        @f = $c->until_terminal([$mode], 10);
        ($end) = grep { ($_->{type} // '') =~ /^(complete|error)$/ }
                 map { $_->{json} // () } @f;
        is($end && $end->{content}, "echo: {{$mode}} draw and more text",
           "$mode: the reply of the run handed over");
        is_deeply($end && $end->{media}, [$media->[0], $media->[2]],
                  "$mode: with its media")
            or diag encode_json($end);
    }

    $gw->set(final_media => undef);
    $c->send_json({ id => 'plain', content => 'plain' });
    @f = $c->until_terminal(['plain'], 10);
    ($end) = grep { ($_->{type} // '') eq 'complete' } map { $_->{json} // () } @f;
    ok($end && !exists $end->{media}, 'a text-only final has no media');

    $c->close;
    $ngx->stop;
    $gw->stop;
};

done_testing;
