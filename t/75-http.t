#!/usr/bin/perl

# openclaw_bridge_http, waiting for the whole reply, against the scripted
# fake gateway: a POSTed message is answered 200 with its complete; bad
# input 400, gateway refusals and agent errors 502, a link down past the
# request timeout 503, a run past the run timeout 504, a message already
# in flight 409, each with the error JSON of the WebSocket protocol; the
# method (405), the content type (415) and the size (413) are checked
# before anything is relayed; nginx's own access control, limit_req and
# body size apply; a client that leaves mid-wait has its run aborted; a waiting
# request gets its error at once on shutdown; the counters balance.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use HTTP::Tiny;
use Mojo::JSON qw(decode_json encode_json);
use Time::HiRes qw(sleep time);

use OCB;
use FakeGateway;
use HttpClient;

my $TOKEN = 'tok-58-http-2b7e';

sub setup {
    my ($http, %gwo) = @_;
    my $gw = FakeGateway->new(token => $TOKEN, deltas => 3, delta_ms => 20,
                              %gwo);
    my $ngx = OCB->new(http => <<"EOF");
openclaw_gateway ws://127.0.0.1:@{[ $gw->port ]};
openclaw_gateway_token $TOKEN;
openclaw_bridge_zone sessions:1m;
limit_req_zone \$binary_remote_addr zone=one:1m rate=1r/m;
$http

server {
    listen 127.0.0.1:%%PORT%%;

    location = /http {
        openclaw_bridge_http;
        openclaw_bridge_max_message_size 1k;
    }

    location = /sender {
        openclaw_bridge_http;
        openclaw_bridge_sender \$arg_sender;
        openclaw_bridge_session_zone sessions;
    }

    location = /noabort {
        openclaw_bridge_http;
        openclaw_bridge_abort_on_disconnect off;
    }

    location = /small {
        openclaw_bridge_http;
        client_max_body_size 100;
    }

    location = /limited {
        openclaw_bridge_http;
        limit_req zone=one nodelay;
    }

    location = /denied {
        openclaw_bridge_http;
        deny all;
    }

    location = /status {
        openclaw_bridge_status;
    }
}
EOF
    ok($ngx->wait_log(qr/gateway link up/, 10), 'link up')
        or diag $ngx->error_log;
    return ($gw, $ngx);
}

sub post { HttpClient::post($_[0]->port, @_[1 .. $#_]) }

sub status {
    my ($ngx) = @_;
    my $r = HTTP::Tiny->new(timeout => 5)->get($ngx->http_url('/status'));
    return $r->{status} == 200 ? decode_json($r->{content}) : undef;
}

sub key_of {
    my ($gw, $message) = @_;
    my ($s) = grep { $_->{params}{message} eq $message } $gw->requests('chat.send');
    return $s ? $s->{params}{idempotencyKey} : undef;
}

# an error answer: the status, JSON, the error text and the id
sub is_error {
    my ($name, $r, $status, $error, $id) = @_;
    is($r->{status}, $status, "$name: $status");
    is($r->{headers}{'content-type'}, 'application/json', "$name: JSON");
    is($r->{json} && $r->{json}{type}, 'error', "$name: an error reply")
        or diag $r->{body};
    like($r->{json} && $r->{json}{error}, $error, "$name: the error says why");
    is($r->{json} && $r->{json}{id}, $id, "$name: the id") if defined $id;
}

my ($gw, $ngx) = setup('');

subtest 'a message, and its complete' => sub {
    my $r = post($ngx, '/http', { id => 'm1', content => 'hello' });
    is($r->{status}, 200, 'status 200');
    is($r->{headers}{'content-type'}, 'application/json', 'JSON');
    is($r->{json}{type}, 'complete', 'the complete');
    is($r->{json}{content}, 'echo: hello', 'its whole text');
    is($r->{json}{id}, 'm1', 'the id');
    like($r->{json}{session}, qr/^agent:main:webhook:conn:\d+-\d+$/,
         'a session of its own, as a sender of its own');
    is($r->{headers}{'content-length'}, length $r->{body}, 'a length');
    my @s = grep { $_->{params}{message} eq 'hello' } $gw->requests('chat.send');
    is(scalar @s, 1, 'one chat.send');

    $r = post($ngx, '/http', { id => 42, content => 'number',
                               session => 'my-key' });
    is($r->{status}, 200, 'an integer id: 200');
    is($r->{body} =~ /"id":42\b/ ? 1 : 0, 1, 'the id is echoed as an integer');
    is($r->{json}{session}, 'agent:main:webhook:session:my-key',
       'the session field, as over WebSocket');

    $r = post($ngx, '/http', { id => 'cs', content => 'charset' },
              type => 'Application/JSON; charset=utf-8');
    is($r->{status}, 200, 'application/json with a charset');

    $r = post($ngx, '/http', { id => 'ch', content => 'chunked' },
              chunked => 1);
    is($r->{status}, 200, 'a chunked body');
    is($r->{json}{content}, 'echo: chunked', 'is read whole');

    my $text = 'ü' . ('y' x 900);
    $r = post($ngx, '/sender?sender=big', { id => 'big', content => $text });
    is($r->{status}, 200, 'a body past client_body_buffer_size (in a file)');
    is($r->{json}{content}, "echo: $text", 'is read back whole');

    # an image alone, as over WebSocket
    my $img = [{ mimeType => 'image/png', content => 'iVBORw0KGgo=' }];
    $r = post($ngx, '/http', { id => 'img', attachments => $img });
    is($r->{status}, 200, 'an image without text: 200');
    is($r->{json}{type}, 'complete', 'and its complete');
    @s = grep { $_->{params}{message} eq '' } $gw->requests('chat.send');
    is(scalar @s, 1, 'one chat.send with an empty message');
    is_deeply($s[0]{params}{attachments}, $img, 'and the image');
};

subtest 'bad input: 400, never relayed' => sub {
    my $before = () = $gw->requests('chat.send');
    is_error('not JSON', post($ngx, '/http', 'nope'), 400,
             qr/^message is not valid JSON$/);
    is_error('not an object', post($ngx, '/http', '[1]'), 400,
             qr/^message must be a JSON object$/);
    is_error('no content', post($ngx, '/http', { id => 'x1' }), 400,
             qr/^missing field "content"$/, 'x1');
    is_error('empty content', post($ngx, '/http', { id => 'x2', content => '' }),
             400, qr/^field "content" is empty$/, 'x2');
    is_error('empty body', post($ngx, '/http', ''), 400,
             qr/^message is not valid JSON$/);
    is_error('a key of another agent',
             post($ngx, '/http', { id => 'x3', content => 'c',
                                   session => 'agent:other:x' }),
             400, qr/agent/, 'x3');
    my $after = () = $gw->requests('chat.send');
    is($after, $before, 'none reached the gateway');
};

subtest 'method, type and size' => sub {
    my $r = post($ngx, '/http', undef, method => 'GET');
    is_error('GET', $r, 405, qr/POST/);
    is($r->{headers}{allow}, 'POST', 'Allow: POST');
    is(post($ngx, '/http', '{}', method => 'PUT')->{status}, 405, 'PUT: 405');
    is_error('text/plain', post($ngx, '/http', { content => 'x' },
                                type => 'text/plain'),
             415, qr{application/json});
    is_error('no Content-Type', post($ngx, '/http', { content => 'x' },
                                     type => undef),
             415, qr{application/json});
    is_error('application/jsonx', post($ngx, '/http', { content => 'x' },
                                       type => 'application/jsonx'),
             415, qr{application/json});
    my $big = encode_json({ id => 'b', content => 'z' x 1100 });
    is_error('Content-Length past openclaw_bridge_max_message_size',
             post($ngx, '/http', $big), 413, qr/too large/);
    is_error('chunked past openclaw_bridge_max_message_size',
             post($ngx, '/http', $big, chunked => 1), 413, qr/too large/);
    is(post($ngx, '/small', encode_json({ content => 'z' x 200 }))->{status},
       413, "nginx's client_max_body_size applies");
    is(post($ngx, '/denied', { content => 'x' })->{status}, 403,
       "nginx's access control applies");
    is(post($ngx, '/limited', { id => 'l1', content => 'first' })->{status},
       200, 'limit_req: the first message passes');
    is(post($ngx, '/limited', { id => 'l2', content => 'second' })->{status},
       503, 'limit_req applies to the next');
    my @s = grep { $_->{params}{message} =~ /^(z+|second)$/ }
            $gw->requests('chat.send');
    is(scalar @s, 0, 'none of the refused reached the gateway');
};

subtest 'the gateway refuses, the agent fails: 502' => sub {
    is_error('refused', post($ngx, '/http', { id => 'r1',
                                              content => '{{ack_error}}' }),
             502, qr/^gateway refused the message: UNAVAILABLE/, 'r1');
    is_error('agent error', post($ngx, '/http', { id => 'r2',
                                                  content => '{{error}} x' }),
             502, qr/^agent error: /, 'r2');
};

subtest 'a message in flight: 409; the same again after: its reply' => sub {
    my $c = HttpClient->open($ngx->port, '/sender?sender=s1',
                             { id => 'dup', content => '{{hang}} dup' });
    ok($gw->wait_until(sub { key_of($gw, '{{hang}} dup') }, 5),
       'the first reached the gateway');
    is_error('again, while in flight',
             post($ngx, '/sender?sender=s1', { id => 'dup',
                                               content => '{{hang}} dup' }),
             409, qr/already in flight/, 'dup');
    $gw->action('finish', runId => key_of($gw, '{{hang}} dup'),
                text => 'finished');
    my $h = $c->head(5);
    is($h && $h->{status}, 200, 'the first: 200 once the run ends');
    my $b = decode_json($c->body(5) // '{}');
    is($b->{content}, 'finished', 'with the text');
    $c->vanish;

    my $r = post($ngx, '/sender?sender=s1', { id => 'dup',
                                              content => '{{hang}} dup' });
    is($r->{status}, 200, 'again, after: 200');
    is($r->{json}{content}, 'finished', "the first run's reply");
    my @s = grep { $_->{params}{message} eq '{{hang}} dup' } $gw->requests('chat.send');
    is(scalar(grep { $_ ne $s[0]{params}{idempotencyKey} }
              map { $_->{params}{idempotencyKey} } @s), 0,
       'every try with the same idempotency key');
};

subtest 'session control' => sub {
    my $r = post($ngx, '/sender?sender=s1', { type => 'session.list', id => 5 });
    is($r->{status}, 200, 'session.list: 200');
    is($r->{json}{type}, 'session.list', 'its reply');
    is($r->{json}{id}, 5, 'with the id');
    ok((grep { $_->{key} eq 'agent:main:webhook:sender:s1' }
        @{ $r->{json}{data}{sessions} // [] }), "the sender's session")
        or diag $r->{body};
    $r = post($ngx, '/sender?sender=s1', { type => 'session.get',
                                           key => 'nothing-here' });
    is($r->{status}, 404, 'session.get of no session: 404');
    is($r->{json}{type}, 'session.get', 'its reply');
    is($r->{json}{error}, 'Session not found', 'says so');
};

subtest 'a client that leaves mid-wait' => sub {
    my $c1 = HttpClient->open($ngx->port, '/http',
                              { id => 'g1', content => '{{hang}} leave' });
    my $c2 = HttpClient->open($ngx->port, '/noabort',
                              { id => 'g2', content => '{{hang}} stay' });
    my ($k1, $k2);
    ok($gw->wait_until(sub { ($k1 = key_of($gw, '{{hang}} leave'))
                             && ($k2 = key_of($gw, '{{hang}} stay')) }, 5),
       'both runs reached the gateway');
    $c1->vanish;
    $c2->vanish;
    my $abort = $gw->wait_until(sub {
        (grep { ($_->{params}{runId} // '') eq $k1 } $gw->requests('chat.abort'))[0];
    }, 5);
    ok($abort, 'chat.abort for the run of the client that left');
    ok($gw->wait_until(sub {
        my $st = status($ngx) or return 0;
        $st->{workers}[0]{clients} == 0 && $st->{workers}[0]{runs_in_flight} == 0;
    }, 5), 'nginx let go of both') or diag explain status($ngx);
    ok(!(grep { ($_->{params}{runId} // '') eq ($k2 // '') }
         $gw->requests('chat.abort')),
       'no chat.abort with openclaw_bridge_abort_on_disconnect off');
    $gw->action('finish', runId => $k2, text => 'late');
};

subtest 'the counters balance' => sub {
    my $st;
    ok($gw->wait_until(sub {
        $st = status($ngx) or return 0;
        $st->{workers}[0]{runs_in_flight} == 0 && $st->{workers}[0]{clients} == 0;
    }, 5), 'no run and no client left') or diag explain $st;
    my $w = $st->{workers}[0];
    is($w->{messages_out}, $w->{messages_in}, 'every message in ended');
    cmp_ok($w->{errors}{input}, '>=', 5, 'the bad input is counted');
};

$ngx->stop;
$gw->stop;

subtest 'timeouts: 504 for the run, 503 for the link' => sub {
    my ($gw, $ngx) = setup("openclaw_gateway_run_timeout 1s;\n"
                           . "openclaw_gateway_request_timeout 1s;");
    my $t0 = time;
    is_error('a run with no end', post($ngx, '/http', { id => 't1',
                                                        content => '{{hang}}' }),
             504, qr/^no reply from the agent within 1000 ms$/, 't1');
    cmp_ok(time - $t0, '<', 5, 'in about the run timeout');
    is_error('no acknowledgement', post($ngx, '/http', { id => 't2',
                                                         content => '{{noack}}' }),
             504, qr/^gateway did not acknowledge/, 't2');
    $gw->stop;
    ok($ngx->wait_log(qr/closed the connection|link down|lost/, 5),
       'the link went down');
    $t0 = time;
    is_error('the link down', post($ngx, '/http', { id => 't3', content => 'c' }),
             503, qr/^gateway not connected within 1000 ms/, 't3');
    cmp_ok(time - $t0, '<', 5, 'in about the request timeout');
    $ngx->stop;
};

subtest 'shutdown: a waiting request gets its error at once' => sub {
    my ($gw, $ngx) = setup('');
    my $c = HttpClient->open($ngx->port, '/http',
                             { id => 'q1', content => '{{hang}} quit' });
    ok($gw->wait_until(sub { key_of($gw, '{{hang}} quit') }, 5),
       'the run reached the gateway');
    my $t0 = time;
    $ngx->signal('QUIT');
    my $h = $c->head(10);
    cmp_ok(time - $t0, '<', 3, 'answered at once');
    is($h && $h->{status}, 503, 'status 503');
    my $b = eval { decode_json($c->body(5)) } // {};
    like($b->{error}, qr/^connection closing \(server shutting down\)/,
         'the error says so, and to send it again');
    is($b->{id}, 'q1', 'with the id');
    my $took = $ngx->stop;
    cmp_ok($took, '<', 10, 'nginx exits');
    $gw->stop;
};

done_testing;
