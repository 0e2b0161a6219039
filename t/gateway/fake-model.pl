#!/usr/bin/perl

# A fake OpenAI-compatible model provider for the real-gateway tests
# (gateway-protocol.md, section 13.4): plain HTTP/1.1 on 127.0.0.1.
#
#   t/gateway/fake-model.pl PORT [REQUEST_LOG [ADDRESS]]
#
# ADDRESS: listen there too (the address of the network namespace the
# model runs in, for a test in the root namespace).
#
# GET  /v1/models            the one model, "fake-model"
# POST /v1/chat/completions  with "stream":true: SSE chunks (role chunk,
#                            one chunk per piece of text, finish chunk,
#                            usage chunk, [DONE]); without: one object
# GET  /control              knobs and counters, as JSON
# POST /control              JSON object: knobs to change
# anything else              404
#
# The reply echoes the first line of the latest genuine user message,
# without what the gateway adds to it (a "[date]" prefix, context blocks
# sent as user messages of their own), in a fixed sentence:
#
#   Reply to: <text>. This reply is streamed in pieces.
#
# so that a test can match each reply to its request.
#
# Knobs (environment at start, or POST /control later):
#   FAKE_MODEL_DELAY_MS   delay between chunks (default 60)
#   FAKE_MODEL_STATUS     answer every completion with this HTTP status
#                         (e.g. 500) instead of a reply (default 200)
#   FAKE_MODEL_HANG       1: send the role chunk, then nothing, holding
#                         the response open until the client goes away
#
# Every request body is appended to REQUEST_LOG (JSON lines), if given.
#
# Markers anywhere in the latest genuine user message act on that request
# only (a turn the gateway retries or continues keeps them):
#   #fail       HTTP 500        #fail=NNN   that HTTP status
#   #hang       as FAKE_MODEL_HANG
#   #slow       1000 ms between chunks      #slow=MS   MS between chunks
#   #history    the sentence also lists every genuine user message of the
#               request, oldest first: "Seen: a | b | c."
#   #media=PATH the reply ends with a line "MEDIA:PATH", the way a model
#               names a file it made for the gateway to send
#
# Images in the latest user message (OpenAI "image_url" parts with a data:
# URL, as the gateway sends an image attachment to a model that takes
# images) are counted in the sentence, with their types and decoded sizes:
#
#   Reply to: <text>. Images: 2 (image/png 68 bytes, image/jpeg 600 bytes).
#   This reply is streamed in pieces.

use strict;
use warnings;

use Mojolicious::Lite -signatures;
use Mojo::IOLoop;
use Mojo::JSON qw(decode_json encode_json);
use Time::HiRes qw(time);

my $port = shift // die "usage: $0 PORT [REQUEST_LOG [ADDRESS]]\n";
my $request_log = shift;
my $address = shift;

my %knobs = (
    delay_ms => $ENV{FAKE_MODEL_DELAY_MS} // 60,
    status   => $ENV{FAKE_MODEL_STATUS} // 200,
    hang     => $ENV{FAKE_MODEL_HANG} // 0,
);

my %stats = (requests => 0, completions => 0, streaming => 0, failed => 0,
             hung => 0, finished => 0, aborted => 0);
my $next_id = 0;

app->log->level('warn');

sub text_of {
    my ($content) = @_;
    return $content if !ref $content;
    # parts on lines of their own: 2026.9.6 puts its runtime context in
    # a text part after the user's, with an image between them
    return join "\n", map { ref $_ eq 'HASH' && ($_->{type} // '') eq 'text'
                               ? $_->{text} // () : () } @$content
        if ref $content eq 'ARRAY';
    return '';
}

# The gateway's own additions: a user message that is only a context
# block, and a "[Mon 2026-01-02 03:04 UTC] " prefix on the user's text.
sub genuine {
    my ($text) = @_;
    return undef unless defined $text;
    $text =~ s/\A\s+//;
    # whole-message context blocks the gateway injects as user turns
    # (2026.9.6: "<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>> ... <<<END_...>>>";
    # 2026.4.26: "OpenClaw runtime context for the immediately preceding
    # user message. ...")
    return undef if $text =~ /\A(?:<<<|<[A-Za-z_][\w-]*[\s>\/]|OpenClaw runtime context\b)/;
    # "[Fri 2026-11-27 01:13 UTC] ", and on a retried turn (2026.9.6)
    # "[Queued user message from a previous active turn; ...]\n"
    while ($text =~ s/\A\[[^\]\n]*\]\s*//) { }
    return length $text ? $text : undef;
}

sub first_line {
    my ($text) = @_;
    my ($first) = split /\n/, $text, 2;
    $first //= '';
    $first =~ s/\s+\z//;
    return $first;
}

# the images of the latest user message: "type size" each
sub user_images {
    my ($messages) = @_;
    my ($last) = grep { ref $_ eq 'HASH' && ($_->{role} // '') eq 'user'
                        && ref $_->{content} eq 'ARRAY'
                        && grep { ref $_ eq 'HASH'
                                  && ($_->{type} // '') eq 'image_url' }
                                @{ $_->{content} } }
                 reverse @{ $messages // [] };
    return () unless $last;
    my @images;
    for my $part (@{ $last->{content} }) {
        next unless ref $part eq 'HASH' && ($part->{type} // '') eq 'image_url';
        my $url = ref $part->{image_url} ? $part->{image_url}{url} // ''
                                         : $part->{image_url} // '';
        my ($type, $b64) = $url =~ /\Adata:([^;,]+);base64,(.*)\z/s
            or do { push @images, 'url'; next };
        my $pad = $b64 =~ /(=+)\z/ ? length $1 : 0;
        push @images, "$type " . (length($b64) / 4 * 3 - $pad) . ' bytes';
    }
    return @images;
}

# the genuine user messages, whole
sub user_texts {
    my ($messages) = @_;
    my @texts;
    for my $m (@{ $messages // [] }) {
        next unless ref $m eq 'HASH' && ($m->{role} // '') eq 'user';
        my $text = genuine(text_of($m->{content}));
        push @texts, $text if defined $text && length first_line($text);
    }
    return @texts;
}

sub log_request {
    my ($body) = @_;
    return unless $request_log;
    open my $f, '>>', $request_log or return;
    print $f encode_json({ t => time, body => $body }), "\n";
    close $f;
}

get '/v1/models' => sub ($c) {
    $stats{requests}++;
    $c->render(json => { object => 'list',
                         data => [{ id => 'fake-model', object => 'model',
                                    owned_by => 'fake' }] });
};

get '/control' => sub ($c) {
    $c->render(json => { %knobs, %stats });
};

post '/control' => sub ($c) {
    my $set = $c->req->json // {};
    for my $k (keys %$set) {
        $knobs{$k} = $set->{$k} if exists $knobs{$k};
    }
    $c->render(json => { %knobs, %stats });
};

post '/v1/chat/completions' => sub ($c) {
    $stats{requests}++;
    $stats{completions}++;

    my $body = eval { decode_json($c->req->body) };
    log_request($body // $c->req->body);

    if (ref $body ne 'HASH') {
        $c->render(status => 400,
                   json => { error => { message => 'invalid JSON body',
                                        type => 'invalid_request_error' } });
        return;
    }

    my @texts = user_texts($body->{messages});
    my $whole = @texts ? $texts[-1] : 'nothing';
    my @lines = map { first_line($_) } @texts;
    my $text = first_line($whole);

    my $status = $knobs{status};
    # markers anywhere in the message: a retried turn moves the text
    $status = $1 // 500 if $whole =~ /#fail(?:=(\d{3}))?/;
    my $delay = $knobs{delay_ms};
    $delay = $1 // 1000 if $whole =~ /#slow(?:=(\d+))?/;
    my $hang = $knobs{hang} || $whole =~ /#hang/;

    if ($status != 200) {
        $stats{failed}++;
        $c->render(status => $status,
                   json => { error => { message => "fake model failure "
                                                   . "(HTTP $status)",
                                        type => 'server_error',
                                        code => 'fake_failure' } });
        return;
    }

    my $reply = "Reply to: $text.";
    $reply .= ' Seen: ' . join(' | ', @lines) . '.' if $text =~ /#history/;
    my @images = user_images($body->{messages});
    $reply .= ' Images: ' . @images . ' (' . join(', ', @images) . ').'
        if @images;
    $reply .= ' This reply is streamed in pieces.';
    $reply .= "\nMEDIA:$1" if $whole =~ /#media=(\S+)/;

    my $id = 'chatcmpl-fake-' . ++$next_id;
    my $model = $body->{model} // 'fake-model';
    my $created = int time;
    my $usage = { prompt_tokens => 10, completion_tokens => 4 + @lines,
                  total_tokens => 14 + @lines };

    if (!$body->{stream}) {
        if ($hang) {
            $stats{hung}++;
            $c->render_later;
            $c->inactivity_timeout(3600);
            return;
        }
        $stats{finished}++;
        $c->render(json => {
            id => $id, object => 'chat.completion', created => $created,
            model => $model,
            choices => [{ index => 0,
                          message => { role => 'assistant',
                                       content => $reply },
                          finish_reason => 'stop' }],
            usage => $usage });
        return;
    }

    my $chunk = sub ($delta, $finish, %extra) {
        return 'data: ' . encode_json({
            id => $id, object => 'chat.completion.chunk',
            created => $created, model => $model,
            choices => defined $delta
                ? [{ index => 0, delta => $delta,
                     finish_reason => $finish }]
                : [],
            %extra }) . "\n\n";
    };

    # pieces of a few words each, the spaces kept
    my @words = $reply =~ /(\S+\s*)/g;
    my @pieces;
    push @pieces, join '', splice @words, 0, 2 while @words;

    my @out = ($chunk->({ role => 'assistant', content => '' }, undef));
    push @out, $chunk->({ content => $_ }, undef) for @pieces;
    push @out, $chunk->({}, 'stop');
    push @out, $chunk->(undef, undef, usage => $usage);
    push @out, "data: [DONE]\n\n";

    $stats{streaming}++;
    $c->inactivity_timeout(3600);
    $c->res->headers->content_type('text/event-stream');
    $c->res->headers->cache_control('no-cache');

    my $gone = 0;
    my $timer;
    $c->on(finish => sub {
        $stats{aborted}++ if @out;
        $gone = 1;
        Mojo::IOLoop->remove($timer) if $timer;
        $stats{streaming}--;
    });

    my $next;
    $next = sub {
        return if $gone;
        if (!@out) {
            $stats{finished}++;
            $c->finish;
            return;
        }
        $c->write_chunk(shift @out => sub {
            return if $gone;
            if ($hang) {
                $stats{hung}++;
                return;
            }
            $timer = Mojo::IOLoop->timer($delay / 1000 => $next);
        });
    };
    $next->();
};

any '/*whatever' => { whatever => '' } => sub ($c) {
    $stats{requests}++;
    $c->render(status => 404, json => { error => { message => 'not found' } });
};

$SIG{TERM} = sub { Mojo::IOLoop->stop };

app->start('daemon', '-l', "http://127.0.0.1:$port",
           ($address ? ('-l', "http://$address:$port") : ()),
           '-m', 'production');
