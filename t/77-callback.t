#!/usr/bin/perl

# Callbacks of openclaw_bridge_http (libcurl's multi-socket API in nginx's
# event loop), against the fake gateway and the scripted receiver of
# t/lib/CallbackReceiver.pm: 202 at once, then exactly one accepted
# delivery of the final reply per message, signed (HMAC-SHA256 over the
# timestamp and the body, verified here) with a delivery id stable across
# attempts; retries after 503 with Retry-After, a refused connection and
# a receiver that hangs past the timeout, spaced as the backoff says; no
# retry after a 404; a receiver down past the last attempt logged with the
# URL, the status and the message id; callbacks outside the allowed
# prefixes refused with 400 before anything runs; https verified against
# a test CA; deliveries pending on shutdown finished by the old worker;
# and a worker that stays responsive with 1000 deliveries pending against
# a receiver that never answers.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Digest::SHA qw(hmac_sha256_hex);
use File::Basename qw(basename);
use File::Path qw(make_path remove_tree);
use IO::Socket::INET;
use Mojo::JSON qw(decode_json encode_json);
use Time::HiRes qw(sleep time);

use OCB;
use FakeGateway;
use HttpClient;
use CallbackReceiver;

my $TOKEN = 'tok-74-callback-5e2d';
my $SECRET = 'cb-secret-74-9a1f';

my $PKI = OCB::top() . '/build/t/' . basename($0, '.t') . "-$$-pki";
remove_tree($PKI);
make_path($PKI);

sub openssl {
    my (@args) = @_;
    my $out = `cd '$PKI' && openssl @args 2>&1`;
    die "openssl @args failed:\n$out" if $?;
    return $out;
}

{
    my $ec = '-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes';
    openssl("req -x509 $ec -keyout ca.key -out ca.pem -days 2"
            . " -subj '/CN=callback test CA'"
            . " -addext 'basicConstraints=critical,CA:TRUE'"
            . " -addext 'keyUsage=critical,keyCertSign,cRLSign'");
    openssl("req $ec -keyout rx.key -out rx.csr -subj '/CN=localhost'");
    open my $f, '>', "$PKI/rx.ext" or die $!;
    print $f "subjectAltName = DNS:localhost\nbasicConstraints = CA:FALSE\n"
           . "extendedKeyUsage = serverAuth\n";
    close $f;
    openssl('x509 -req -in rx.csr -CA ca.pem -CAkey ca.key'
            . ' -CAcreateserial -out rx.pem -days 2 -extfile rx.ext');
    openssl("req -x509 $ec -keyout self.key -out self.pem -days 2"
            . " -subj '/CN=localhost' -addext 'subjectAltName=DNS:localhost'");
}

my $gw = FakeGateway->new(token => $TOKEN, deltas => 2, delta_ms => 10);
my $rx = CallbackReceiver->new;
my $down = CallbackReceiver->new(no_start => 1);     # started later
my $dead = CallbackReceiver->free_port;               # never listens
my $tls = CallbackReceiver->new(tls => ["$PKI/rx.pem", "$PKI/rx.key"]);
my $self = CallbackReceiver->new(tls => ["$PKI/self.pem", "$PKI/self.key"]);

# a receiver that never answers: connections wait in its backlog
my $never = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Proto => 'tcp', Listen => 4096,
                                  ReuseAddr => 1) or die $!;
my $never_port = $never->sockport;

sub conf {
    my ($extra) = @_;
    $extra //= '';
    return <<"EOF";
openclaw_gateway ws://127.0.0.1:@{[ $gw->port ]};
openclaw_gateway_token $TOKEN;

server {
    listen 127.0.0.1:%%PORT%%;

    openclaw_bridge_callback_secret $SECRET;
    openclaw_bridge_callback_backoff 200ms;
    openclaw_bridge_callback_timeout 1s;
    openclaw_bridge_callback_attempts 4;
    $extra

    location = /http {
        openclaw_bridge_http;
        openclaw_bridge_callback_allow @{[ $rx->url('/hooks/') ]}
                                       @{[ $down->url('/') ]};
        openclaw_bridge_callback_allow http://127.0.0.1:$dead/
                                       http://127.0.0.1:$never_port/;
        openclaw_bridge_callback_allow @{[ $tls->url('/') ]}
                                       @{[ $self->url('/') ]};
        openclaw_bridge_callback_ssl_trusted_certificate $PKI/ca.pem;
    }

    location = /pending {
        openclaw_bridge_http;
        openclaw_bridge_callback_allow http://127.0.0.1:$never_port/;
        openclaw_bridge_callback_timeout 60s;
        openclaw_bridge_callback_attempts 1;
    }

    location = /patient {
        openclaw_bridge_http;
        openclaw_bridge_callback_allow @{[ $down->url('/') ]};
        openclaw_bridge_callback_backoff 1s;
        openclaw_bridge_callback_attempts 6;
    }

    location = /dflt {
        openclaw_bridge_http;
        openclaw_bridge_callback_allow @{[ $rx->url('/hooks/') ]};
        openclaw_bridge_callback_url @{[ $rx->url('/hooks/dflt') ]};
    }

    location = /nocb {
        openclaw_bridge_http;
    }

    location = /status {
        openclaw_bridge_status;
    }
}
EOF
}

my $ngx = OCB->new(http => conf());
ok($ngx->wait_log(qr/gateway link up/, 10), 'link up') or diag $ngx->error_log;

sub post { HttpClient::post($ngx->port, @_) }

sub accepted {
    my ($name, $msg, $path) = @_;
    my $r = post($path // '/http', $msg);
    is($r->{status}, 202, "$name: 202") or diag $r->{body};
    is($r->{json}{type}, 'accepted', "$name: accepted");
    is($r->{json}{id}, $msg->{id}, "$name: the id");
    like($r->{json}{delivery} // '', qr/^[0-9a-f]{32}$/, "$name: a delivery id");
    return $r->{json};
}

# the receiver's records of one delivery
sub deliveries {
    my ($recv, $delivery) = @_;
    return grep { ($_->{headers}{'x-openclaw-delivery'} // '') eq $delivery }
           $recv->records;
}

# waits until $cond->() returns a true first value; returns what it returned
sub wait_for {
    my ($cond, $timeout) = @_;
    my $deadline = time + ($timeout // 10);
    my @v;
    while (time < $deadline) {
        @v = $cond->();
        last if @v && $v[0];
        sleep 0.05;
    }
    @v = $cond->() unless @v && $v[0];
    return wantarray ? @v : $v[0];
}

sub signature_ok {
    my ($rec) = @_;
    my $ts = $rec->{headers}{'x-openclaw-timestamp'} // '';
    my $sig = $rec->{headers}{'x-openclaw-signature'} // '';
    return $sig eq 'sha256=' . hmac_sha256_hex("$ts.$rec->{body}", $SECRET);
}

subtest 'one message, one signed delivery of its reply' => sub {
    my $a = accepted('ok', { id => 'c1', content => 'call me back',
                             callback => $rx->url('/hooks/ok') });
    like($a->{session}, qr/^agent:main:webhook:/, 'the session');
    my @d = wait_for(sub { deliveries($rx, $a->{delivery}) }, 10);
    is(scalar @d, 1, 'exactly one delivery');
    my $j = eval { decode_json($d[0]{body}) } // {};
    is($j->{type}, 'complete', 'of the complete');
    is($j->{content}, 'echo: call me back', 'with the text');
    is($j->{id}, 'c1', 'and the id');
    is($j->{session}, $a->{session}, 'and the session of the 202');
    is($d[0]{headers}{'content-type'}, 'application/json', 'as JSON');
    ok(signature_ok($d[0]), 'the signature verifies');
    cmp_ok(abs(($d[0]{headers}{'x-openclaw-timestamp'} // 0) - time), '<', 30,
           'the timestamp is now');
    is($d[0]{headers}{'x-openclaw-attempt'}, 1, 'attempt 1');

    # a tampered body does not verify
    my %bad = (%{ $d[0] }, body => $d[0]{body} . ' ');
    ok(!signature_ok(\%bad), 'a changed body does not verify');
};

subtest 'progress too, when asked' => sub {
    my $a = accepted('progress', { id => 'p1', content => 'with progress',
                                   callbackProgress => \1,
                                   callback => $rx->url('/hooks/progress') });
    my @d = wait_for(sub {
        my @x = grep { $_->{path} eq '/hooks/progress' } $rx->records;
        (grep { $_->{body} =~ /"complete"/ } @x) ? @x : ();
    }, 10);
    my @types = map { eval { decode_json($_->{body})->{type} } // '?' } @d;
    is(scalar(grep { $_ eq 'complete' } @types), 1, 'one complete');
    cmp_ok(scalar(grep { $_ eq 'progress' } @types), '>=', 1, 'and progress')
        or diag "@types";
    my %ids = map { $_->{headers}{'x-openclaw-delivery'} => 1 } @d;
    is(scalar keys %ids, scalar @d, 'each a delivery of its own');
    ok($ids{ $a->{delivery} }, 'the complete under the id of the 202')
        or diag explain \%ids;
    ok(!(grep { !signature_ok($_) } @d), 'all signed');
};

subtest "the location's default URL" => sub {
    my $a = accepted('default', { id => 'd1', content => 'by default' }, '/dflt');
    my @d = wait_for(sub { deliveries($rx, $a->{delivery}) }, 10);
    is(scalar @d, 1, 'delivered');
    is($d[0]{path}, '/hooks/dflt', 'to the default URL');
    my $s = HttpClient->open($ngx->port, '/dflt', { id => 'd2', content => 'stream' },
                             accept => 'text/event-stream');
    is($s->head(5)->{status}, 200, 'a request for a stream still streams');
    $s->vanish;

    my $bad = OCB->new(no_start => 1, http => <<"EOF2");
server {
    listen 127.0.0.1:%%PORT%%;
    location = /x {
        openclaw_bridge_http;
        openclaw_bridge_callback_allow http://127.0.0.1:1/a/;
        openclaw_bridge_callback_url http://127.0.0.1:1/b;
    }
}
EOF2
    my ($rc, $out) = $bad->test_conf;
    isnt($rc, 0, 'a default URL outside the prefixes: nginx -t fails');
    like($out, qr/openclaw_bridge_callback_url .*not under a prefix/, 'and says why');
};

subtest 'refused before anything runs' => sub {
    my $before = () = $gw->requests('chat.send');
    my $received = () = $rx->records;
    for my $case (['another host', 'http://evil.example/hooks/'],
                  ['outside the prefix path', $rx->url('/other')],
                  ['the prefix without its slash', $rx->url('/hooks')],
                  ['another port', 'http://127.0.0.1:1/hooks/'],
                  ['a space', $rx->url('/hooks/a b')],
                  ['a dot segment', $rx->url('/hooks/../admin')],
                  ['a dot segment at the end', $rx->url('/hooks/x/..')],
                  ['an encoded dot', $rx->url('/hooks/%2e%2e/admin')],
                  ['a backslash', $rx->url('/hooks/..\\admin')])
    {
        my $r = post('/http', { id => 'x', content => 'no',
                                callback => $case->[1] });
        is($r->{status}, 400, "$case->[0]: 400");
        like($r->{json}{error} // '', qr/callback/, "$case->[0]: says why");
    }
    my $r = post('/nocb', { id => 'x', content => 'no',
                            callback => $rx->url('/hooks/ok') });
    is($r->{status}, 400, 'a location without openclaw_bridge_callback_allow: 400');
    like($r->{json}{error}, qr/not enabled/, 'says so');
    $r = post('/http', { id => 'x', content => 'no', callback => 7 });
    is($r->{status}, 400, 'a callback that is no string: 400');
    $r = post('/http', { id => 'x', callback => $rx->url('/hooks/ok') });
    is($r->{status}, 400, 'bad input with a callback: 400 at once');
    is($r->{json}{error}, 'missing field "content"', 'the error of the input');
    my $after = () = $gw->requests('chat.send');
    is($after, $before, 'nothing reached the gateway');
    sleep 0.3;
    is(scalar(() = $rx->records), $received, 'and nothing was delivered');
};

subtest '503 with Retry-After, then accepted' => sub {
    my $a = accepted('503', { id => 'c2', content => 'retry after',
                              callback => $rx->url('/hooks/fail/2/503/1') });
    my @d = wait_for(sub {
        my @x = deliveries($rx, $a->{delivery});
        @x >= 3 ? @x : ();
    }, 15);
    is(scalar @d, 3, 'three attempts');
    is_deeply([map { $_->{answer} } @d], [503, 503, 200],
              'two refused, the third accepted');
    is_deeply([map { $_->{headers}{'x-openclaw-attempt'} } @d], [1, 2, 3],
              'numbered');
    ok(!(grep { !signature_ok($_) } @d), 'each signed');
    my @gaps = map { $d[$_]{t} - $d[$_ - 1]{t} } 1 .. $#d;
    # the lower bound proves Retry-After (the backoff is 200 ms here); the
    # upper one only that a retry comes, with room for a busy machine
    ok(!(grep { $_ < 0.95 || $_ > 6 } @gaps),
       'each retry waited the Retry-After of 1 s, not the backoff')
        or diag "@gaps";
    sleep 0.5;
    is(scalar(deliveries($rx, $a->{delivery})), 3, 'no attempt after it');
};

subtest '500s: exponential backoff with jitter' => sub {
    my $a = accepted('500', { id => 'c3', content => 'backoff',
                              callback => $rx->url('/hooks/fail/3/500/-') });
    my @d = wait_for(sub {
        my @x = deliveries($rx, $a->{delivery});
        @x >= 4 ? @x : ();
    }, 15);
    is(scalar @d, 4, 'four attempts, the last accepted');
    is($d[-1]{answer}, 200, 'accepted');
    # equal jitter: each delay is between half and all of 200, 400, 800 ms
    my @gaps = map { $d[$_]{t} - $d[$_ - 1]{t} } 1 .. $#d;
    for my $i (0 .. $#gaps) {
        my $b = 0.2 * 2 ** $i;
        # late by up to 3 s on a busy machine, never early
        ok($gaps[$i] >= $b / 2 - 0.02 && $gaps[$i] <= $b + 3,
           sprintf('retry %d after %.3f s, within [%.1f, %.1f + 3]', $i + 1,
                   $gaps[$i], $b / 2, $b));
    }
};

subtest 'a receiver that hangs past the timeout' => sub {
    my $a = accepted('hang', { id => 'c4', content => 'hang',
                               callback => $rx->url('/hooks/hang/1/3') });
    my @d = wait_for(sub {
        my @x = grep { $_->{answer} eq '200' } deliveries($rx, $a->{delivery});
        @x ? deliveries($rx, $a->{delivery}) : ();
    }, 15);
    is(scalar @d, 2, 'two attempts');
    is($d[0]{answer}, 'hang', 'the first hung');
    is($d[1]{answer}, 200, 'the second was accepted');
    cmp_ok($d[1]{t} - $d[0]{t}, '>=', 1.05, 'after the 1 s timeout and a backoff');
    ok($ngx->wait_log(qr/callback attempt 1 failed \(Timeout was reached/, 5),
       'the timeout is logged');
};

subtest 'connection refused, then the receiver comes up' => sub {
    # slower retries here: the receiver starts once the first is refused
    my $a = accepted('refused', { id => 'c5', content => 'refused',
                                  callback => $down->url('/ok') }, '/patient');
    ok($ngx->wait_log(qr/callback attempt 1 failed \(Couldn't connect.*\Q$a->{delivery}\E/, 5),
       'the first attempt is refused');
    $down->start;
    my @d = wait_for(sub { deliveries($down, $a->{delivery}) }, 10);
    is(scalar @d, 1, 'exactly one delivery once it is up');
    is($d[0]{answer}, 200, 'accepted');
    cmp_ok($d[0]{headers}{'x-openclaw-attempt'}, '>=', 2, 'on a later attempt');
};

subtest 'no retry after a 404' => sub {
    my $a = accepted('404', { id => 'c6', content => 'not found',
                              callback => $rx->url('/hooks/status/404') });
    ok($ngx->wait_log(qr/callback not delivered after 1 attempt: status 404.*\Q$a->{delivery}\E.*message id: "c6"/, 5),
       'given up at once, logged with the status and the message id');
    sleep 0.5;
    is(scalar(deliveries($rx, $a->{delivery})), 1, 'one attempt only');
};

subtest 'a receiver down past the last attempt' => sub {
    my $url = "http://127.0.0.1:$dead/gone";
    my $a = accepted('down', { id => 'c7', content => 'nobody',
                               callback => $url });
    ok($ngx->wait_log(qr/callback not delivered after 4 attempts: Couldn't connect to server, status 0 while delivering a callback, callback: \Q$url\E, delivery: $a->{delivery}, message id: "c7"/, 10),
       'logged with the URL, the status and the message id')
        or diag $ngx->error_log;
};

subtest 'https, verified against a test CA' => sub {
    my $a = accepted('https', { id => 'c8', content => 'over tls',
                                callback => $tls->url('/ok') });
    my @d = wait_for(sub { deliveries($tls, $a->{delivery}) }, 10);
    is(scalar @d, 1, 'delivered over TLS');
    ok(@d && signature_ok($d[0]), 'signed');
    $a = accepted('untrusted', { id => 'c9', content => 'untrusted',
                                 callback => $self->url('/ok') });
    ok($ngx->wait_log(qr/callback not delivered after 1 attempt: SSL peer certificate.*message id: "c9"/, 10),
       'a certificate no CA vouches for: not delivered, not retried')
        or diag $ngx->error_log;
    is(scalar(deliveries($self, $a->{delivery})), 0, 'nothing reached it');
};

subtest 'the status counts the deliveries' => sub {
    my $cb;
    ok(wait_for(sub {
        my $st = HttpClient::post($ngx->port, '/status', '', method => 'GET');
        $cb = $st->{json} && $st->{json}{workers}[0]{callbacks};
        $cb && $cb->{pending} == 0;
    }, 10), 'nothing pending') or diag explain $cb;
    # ok, progress (3 or more), default, 503 x2, 500 x3, hang, refused,
    # https: delivered; 404, down, self-signed: failed
    cmp_ok($cb->{delivered}, '>=', 10, 'delivered');
    is($cb->{failed}, 3, 'failed after the last attempt');
    cmp_ok($cb->{retries}, '>=', 2 + 3 + 1 + 1 + 3, 'the retries');
};

subtest '1000 callbacks pending, the worker stays responsive' => sub {
    my $t0 = time;
    my $n = 0;
    for my $i (1 .. 1000) {
        my $r = post('/pending', { id => "n$i", content => "pending $i",
                                   callback => "http://127.0.0.1:$never_port/x" });
        $n++ if $r->{status} == 202;
    }
    is($n, 1000, '1000 accepted');
    note sprintf '1000 callbacks posted in %.1f s', time - $t0;

    # the fake gateway, in Perl, is slow with 1000 runs: once they have
    # ended, 1000 deliveries wait for a receiver that never answers
    ok(wait_for(sub {
        my $st = HttpClient::post($ngx->port, '/status', '', method => 'GET');
        $st->{json} && $st->{json}{workers}[0]{runs_in_flight} == 0;
    }, 30), 'the runs have ended');
    my $count = sub {
        my $hex = sprintf '%04X', $never_port;
        open my $f, '<', '/proc/net/tcp' or return 0;
        return scalar grep { /^\s*\d+: \S+ 0100007F:$hex 01 / } <$f>;
    };
    my $conns = wait_for(sub { my $n = $count->(); $n >= 900 ? $n : 0 }, 20)
                || $count->();
    cmp_ok($conns, '>=', 900, "$conns connections wait on the receiver");
    my $st = HttpClient::post($ngx->port, '/status', '', method => 'GET');
    is($st->{json}{workers}[0]{callbacks}{pending}, 1000,
       'the status counts them pending');

    my (@st, @msg);
    for my $i (1 .. 20) {
        my $t = time;
        my $r = HttpClient::post($ngx->port, '/status', '', method => 'GET');
        push @st, time - $t;
        $t = time;
        $r = post('/http', { id => "w$i", content => "meanwhile $i" });
        push @msg, time - $t;
        is($r->{status}, 200, 'a message meanwhile: 200') if $i == 1;
    }
    @st = sort { $a <=> $b } @st;
    @msg = sort { $a <=> $b } @msg;
    note sprintf 'status: median %.1f ms, slowest %.1f ms; messages: median '
                 . '%.1f ms, slowest %.1f ms', 1000 * $st[10], 1000 * $st[-1],
                 1000 * $msg[10], 1000 * $msg[-1];
    cmp_ok($st[-1], '<', 0.25, 'the status answers at once meanwhile');
    cmp_ok($msg[-1], '<', 0.5, 'messages are relayed at once meanwhile');

    # the receiver goes: its waiting connections are reset, given up (a
    # shutdown, since receivers forked since hold the socket too)
    shutdown($never, 2);
    ok($ngx->wait_log(qr/not delivered after 1 attempt.*message id: "n1000"/, 20),
       'the pending ones end, logged');
};

subtest 'reload: the old worker finishes what is pending' => sub {
    my $a = accepted('reload', { id => 'h1', content => 'on reload',
                                 callback => $rx->url('/hooks/fail/1/503/2') });
    ok(wait_for(sub { deliveries($rx, $a->{delivery}) }, 5),
       'the first attempt was refused');
    my @old = $ngx->worker_pids;
    my @new = $ngx->reload;
    ok(@new, 'new workers');
    my @d = wait_for(sub {
        my @x = deliveries($rx, $a->{delivery});
        @x >= 2 ? @x : ();
    }, 10);
    is($d[-1]{answer}, 200, 'the old worker made the delivery');
    ok(wait_for(sub { !(grep { kill 0, $_ } @old) }, 10),
       'and then exited');
    my $b = accepted('after', { id => 'h2', content => 'after reload',
                                callback => $rx->url('/hooks/ok') });
    ok(wait_for(sub { deliveries($rx, $b->{delivery}) }, 10),
       'the new worker delivers');
};

subtest 'shutdown: the old worker finishes what is pending' => sub {
    my $a = accepted('backoff', { id => 's1', content => 'on quit',
                                  callback => $rx->url('/hooks/fail/1/503/2') });
    ok(wait_for(sub { deliveries($rx, $a->{delivery}) }, 5),
       'the first attempt was refused');
    my $b = accepted('in flight', { id => 's2', content => '{{hang}} on quit',
                                    callback => $rx->url('/hooks/ok') });
    sleep 0.3;
    my $took = $ngx->stop;
    cmp_ok($took, '<', 15, sprintf('nginx exited in %.1f s', $took));
    my @d = deliveries($rx, $a->{delivery});
    is($d[-1]{answer}, 200, 'the delivery in backoff was made before');
    my @e = deliveries($rx, $b->{delivery});
    is(scalar @e, 1, 'the run in flight got its error, delivered');
    like(eval { decode_json($e[0]{body})->{error} } // '',
         qr/^connection closing \(server shutting down\)/, 'that says so');
};

$gw->stop;
$_->stop for $rx, $down, $tls, $self;

done_testing;
