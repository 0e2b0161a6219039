package FakeGateway;

# A scriptable fake OpenClaw Gateway for the relay tests.
#
# It speaks the operator protocol of gateway-protocol.md (sections 2, 3, 5,
# 6 and 7) well enough for ngx_http_openclaw_bridge_module: the
# connect.challenge, connect -> hello-ok (protocol 4 or 3) with closed-schema
# checks of the connect params, chat.send -> {runId, status} followed by a
# stream of chat events, chat.abort, chat.history, the session calls
# sessions.list, sessions.reset and sessions.delete (section 10), tick
# events, and the usual faults.
#
# The server runs in a FORKED child (a Mojolicious app on a
# Mojo::Server::Daemon), so that a test may block on its raw WebSocket
# clients without freezing the fake.  The test talks to the child in two
# ways:
#
#   - control: small HTTP endpoints on the fake's own port, under /_fake/
#     (set options, trigger faults);
#   - records: the child appends one JSON line per thing it sees or does to
#     a file, which the test reads.  The file survives the child being
#     killed, so a test can look at what a crashed gateway received.
#
# Synopsis:
#
#   my $gw = FakeGateway->new(token => 'sekrit', protocol => 4);
#   my $ngx = OCB->new(http => "openclaw_gateway " . $gw->url . "; ...");
#   ...
#   $gw->set(deltas => 10, delta_ms => 100);      # change behaviour
#   $gw->action('shutdown', restart_expected_ms => 500);
#   my @sends = $gw->requests('chat.send');      # what it received
#   $gw->crash; $gw->start;                      # killed, back on the port
#   $gw->seed_sessions({ key => 'agent:main:x' });  # sessions it knows
#   my @rows = $gw->sessions;                    # its sessions.list rows
#   $gw->stop;
#
# Options (constructor or ->set), with their defaults:
#
#   protocol        4       the protocol this gateway speaks (3 or 4; any
#                           other value makes every connect a protocol
#                           mismatch: INVALID_REQUEST PROTOCOL_MISMATCH,
#                           then close 1002)
#   token           undef   the shared token the gateway expects; a connect
#                           with another token is refused with
#                           INVALID_REQUEST + details.code AUTH_TOKEN_MISMATCH
#                           (AUTH_TOKEN_MISSING without one), then close
#                           1008.  undef accepts anything.
#   password        undef   the same for auth.password
#   scopes          undef   the scopes granted in hello-ok; undef echoes the
#                           requested ones, [] grants none
#   unavailable     0       the next N connects are answered UNAVAILABLE
#                           with retryAfterMs (-1: all of them)
#   retry_after_ms  1500    retryAfterMs of those answers
#   unavailable_message  "gateway is starting"  their error message
#   tick_ms         30000   policy.tickIntervalMs, and how often tick events
#                           are sent
#   send_ticks      1       0: announce tick_ms but never send a tick
#   max_payload     26214400  policy.maxPayload; a longer frame after
#                           hello-ok closes its connection with 1009, as
#                           the gateway's WebSocket library does (record
#                           "too_big")
#   unresponsive    0       1: new connections get the 101 and then nothing
#                           at all (no challenge, no answers, no ticks)
#   deltas          3       deltas per run (the reply is cut in this many
#                           pieces)
#   delta_ms        15      spacing of the events of a run
#   status_events   1       protocol 4: send "status" chat events first
#   foreign         0       1: every chat.send also starts two foreign runs
#                           whose events interleave with ours: one on
#                           another session (agent:main:telegram:dm:42), one
#                           on the very session of the request; their text
#                           contains "FOREIGN".  Also sends agent, health
#                           and presence events, some mentioning our run,
#                           with the text "NOISE".
#   dedupe          1       a repeated idempotencyKey is answered "in_flight"
#                           while its run is running and "ok" once it has
#                           ended (its reply is then in chat.history, with
#                           __openclaw.runId on protocol 4); 0: every
#                           chat.send starts a new run
#   reply_prefix    "echo: "  the reply text is reply_prefix . message
#   broadcast       1       chat events go to every connection that passed
#                           hello-ok (as the real gateway does), 0: only to
#                           the connection that sent chat.send
#   device_check    1       a connect's "device" block is verified as the
#                           gateway does (4.3): all five fields, the id
#                           against the public key (DEVICE_AUTH_DEVICE_ID_
#                           MISMATCH), the challenge's nonce, signedAt
#                           within 120 s of the fake's clock (DEVICE_AUTH_
#                           SIGNATURE_EXPIRED) and the Ed25519 signature
#                           (DEVICE_AUTH_SIGNATURE_INVALID), with the
#                           openssl CLI; each failure closes with 1008
#   signature_versions [3, 2]  the payload versions accepted, tried in order
#   challenge_skew_ms 0     added to the challenge's ts, as a gateway whose
#                           clock is off
#   pairing         0       1: a signed device must be paired: an unknown
#                           one gets NOT_PAIRED / PAIRING_REQUIRED with a
#                           requestId ("req-N", the same while pending),
#                           then close 1008; ->action('approve', requestId
#                           => ID) pairs it, and hello-ok then carries an
#                           auth.deviceToken ("devtok-..."); a connect with
#                           auth.deviceToken alone is judged by that token
#                           (AUTH_DEVICE_TOKEN_MISMATCH when unknown or
#                           revoked); ->action('revoke', deviceId => ID)
#                           revokes its tokens and unpairs it
#   attachments_policy undef  a hash: hello-ok's policy.attachments, as
#                           2026.9.6 sends it ({maxBytes, maxImageBytes})
#   final_media     undef   an array of content blocks added after the
#                           text of every final message (images, files
#                           the agent made)
#   tls_cert        undef   with tls_key, PEM files: the fake listens with
#   tls_key         undef   TLS (->url is wss://, the control endpoints are
#                           https:// and not verified); read when the child
#                           starts, so a ->set of them takes effect at the
#                           next ->start (a gateway that changes its
#                           certificate across a restart)
#
# Per-message directives, anywhere in the message text (they stay in the
# echoed text):
#
#   {{hang}}            acknowledged, status events, then nothing: the run
#                       never ends unless aborted or ->action('finish')
#   {{slow N MS}}       N deltas spaced MS ms
#   {{error}}           one delta, then an "error" event
#   {{double_error}}    one delta, then two "error" events for the run (as
#                       observed with gateway 2026.9.6)
#   {{ack_error}}       chat.send answered ok:false UNAVAILABLE
#   {{ack_status WORD}} chat.send answered ok with status WORD, no run
#   {{noack}}           chat.send never answered, no run
#   {{close_link}}      chat.send not answered: the connection it came on
#                       is closed with 1011 at once, as a gateway that
#                       cannot take a message may do (every time it is
#                       sent)
#   {{empty_final}}     no deltas, a final without a message
#   {{handover}}        protocol 3's quirk (gateway-protocol.md 13.9): a
#                       final without text for the run, then the reply
#                       streamed in a run of the gateway's choosing
#                       ("gw-run-N") on the same session
#   {{handover_early}}  the same, but the other run starts before the
#                       empty final
#   {{handover_after}}  the same, but the other run ends before the
#                       empty final
#   {{final_early}}     the final (with the whole text) comes before the
#                       last delta, as a real gateway's coalescing allows
#   {{rewrite}}         the deltas stream "DRAFT " and the text, the final
#                       has the text alone: it rewrites what streamed
#
# The events of a run always come out in this order, however late the
# fake's loop is: each is scheduled by the one before it.
#
# Sessions (gateway-protocol.md 10.1, 13.9): the fake keeps a row for every
# session it has seen through chat.send (the canonical sessionKey), plus
# those a test seeds with ->seed_sessions; they live in the child, like the
# history, and are gone after ->crash or ->stop.  A row is {key, sessionId
# ("sess-N"), kind, chatType, agentId, createdAt, updatedAt, status, model,
# modelProvider, inputTokens, outputTokens, totalTokens (14 more for each
# chat.send), hasActiveRun, activeRunIds}; a seeded row may set any field.
#
#   sessions.list    scope operator.read (or write or admin); params limit
#                    (default 100) and offset (0); at most 100 rows a page,
#                    newest updatedAt first, with count, totalCount,
#                    limitApplied, hasMore and nextOffset (null on the last
#                    page)
#   sessions.reset   scope operator.admin; {key, agentId?, reason?,
#                    expectedSessionId?}: an empty history and token counts,
#                    the same sessionId (as 2026.9.6 does); an unknown key
#                    is created (as the real gateway does)
#   sessions.delete  scope operator.admin; {key, agentId?, deleteTranscript?,
#                    archivedOnly?, expectedSessionId?}: the row and its
#                    history go; deleted:false for an unknown key
#
# Without the scope among those granted to the connection (see "scopes"),
# the answer is FORBIDDEN with details.code MISSING_SCOPE, as a protocol 4
# gateway gives it (6.1).  Params are checked against closed schemas.
#
# Actions (->action(NAME, ARGS)):
#
#   shutdown  restart_expected_ms => MS, down_ms => MS, forget => 1
#             a "shutdown" event to every connection, then close 1012;
#             upgrades are refused with 503 for down_ms; with forget (the
#             default) every run is dropped, as a restart would
#   freeze    every current connection goes silent for good (nothing is
#             sent on it any more, ticks included) but stays open; new
#             connections behave normally
#   close     code => 1000, reason => '': closes every connection
#   emit      frame => {...}: sends this frame to every connection past
#             hello-ok
#   agent_run session => KEY, text => '...', runId => ID, message => '...':
#             starts a run that no chat.send asked for, on KEY (a message
#             with {{...}} markers shapes it as for chat.send)
#   recover   runId => ID, text => '...', message => '...': as a restarted
#             2026.9.6 recovers a run a SIGKILL cut, while the bridge is
#             away: every connection is closed (1012), the run is dropped
#             without events, and a run of the gateway's writes the reply
#             (text, default the run's) to the history after a prompt of
#             its own (no_reply => 1: the prompt alone, as a recovery that
#             failed); the next chat.send with the key starts a run that
#             ends in an error event (message), its assistant message in
#             the history marked stopReason "error", as 2026.9.6 has it
#   finish    runId => ID, text => '...': ends a running run with a final
#   fail      runId => ID, message => '...': ends a run with an error event
#
# Records (->records, ->requests, ...) are hashes with "t" (time, seconds),
# "kind" and "conn" (a connection number, from 1 in each child):
#
#   upgrade   headers => {name => value}, remote => address, and with
#             TLS sni => the server name the client sent (undef: none)
#   req       id, method, params (the whole params object)
#   connect   auth, params: a connect request, before it is judged
#   device    deviceId, version (3 or 2), token_used: a device signature
#             that verified
#   pairing   requestId, deviceId: a pairing request opened (record kind
#             "refused" follows)
#   hello     protocol, scopes: hello-ok sent
#   refused   code, details_code: connect refused
#   res       id, method, ok, status, error: an answer sent
#   chat      runId, sessionKey, state: a chat event sent (each event once,
#             even when broadcast)
#   closed    code, reason: a connection ended (code the peer's close
#             code, if it sent one)
#   bad       raw: a frame that was not a JSON object
#   too_big   size: a frame over max_payload (the connection is closed)
#   tick      a tick event sent
#   session   action (created, reset, deleted, seeded), key, sessionId,
#             by ("chat.send", "sessions.reset", "sessions.delete" or
#             "seed"): what happened to the fake's sessions (the requests
#             themselves are "req" records, their answers "res" records)

use strict;
use warnings;

use File::Temp qw(tempdir tempfile);
use HTTP::Tiny;
use IO::Socket::INET;
use Mojo::JSON qw(decode_json encode_json true false);
use POSIX ();
use Time::HiRes qw(sleep time);

use Mojolicious;
use Mojo::IOLoop;
use Mojo::Server::Daemon;
use Mojo::URL;

my %DEFAULTS = (
    protocol => 4,
    token => undef,
    password => undef,
    scopes => undef,
    unavailable => 0,
    retry_after_ms => 1500,
    unavailable_message => 'gateway is starting',
    tick_ms => 30000,
    send_ticks => 1,
    max_payload => 26214400,
    unresponsive => 0,
    deltas => 3,
    delta_ms => 15,
    status_events => 1,
    foreign => 0,
    dedupe => 1,
    reply_prefix => 'echo: ',
    broadcast => 1,
    tls_cert => undef,
    tls_key => undef,
    device_check => 1,
    signature_versions => [3, 2],
    challenge_skew_ms => 0,
    pairing => 0,
    attachments_policy => undef,
    final_media => undef,
);

# closed schemas (gateway-protocol.md 3.2 and 7)
my %CONNECT_KEYS = map { $_ => 1 } qw(minProtocol maxProtocol client role
    scopes caps auth device locale userAgent commands permissions pathEnv);
my %CLIENT_KEYS = map { $_ => 1 } qw(id displayName version platform mode
    instanceId deviceFamily modelIdentifier);
my %CLIENT_IDS = map { $_ => 1 } qw(webchat-ui openclaw-control-ui
    openclaw-tui webchat cli gateway-client openclaw-macos openclaw-ios
    openclaw-android node-host test fingerprint openclaw-probe);
my %CLIENT_MODES = map { $_ => 1 } qw(webchat cli ui backend node worker
    probe test);
my %AUTH_KEYS = map { $_ => 1 } qw(token password deviceToken bootstrapToken);
my %SEND_KEYS = map { $_ => 1 } qw(sessionKey message idempotencyKey thinking
    deliver timeoutMs attachments originatingChannel originatingTo
    originatingAccountId originatingThreadId systemInputProvenance
    systemProvenanceReceipt);
my %ABORT_KEYS = map { $_ => 1 } qw(sessionKey runId);
my %HISTORY_KEYS = map { $_ => 1 } qw(sessionKey limit maxChars);
my %LIST_KEYS = map { $_ => 1 } qw(limit offset activeMinutes activeOnly
    sortBy includeGlobal includeUnknown includeDerivedTitles
    includeLastMessage label agentId spawnedBy search archived);
my %RESET_KEYS = map { $_ => 1 } qw(key agentId reason expectedSessionId);
my %DELETE_KEYS = map { $_ => 1 } qw(key agentId deleteTranscript
    archivedOnly expectedSessionId);

###########################################################################
# the test's side

sub free_port {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Proto => 'tcp', Listen => 1, ReuseAddr => 1)
        or die "no free port: $!";
    my $port = $s->sockport;
    close $s;
    return $port;
}

# new(%options, port => N, no_start => 1)
sub new {
    my ($class, %o) = @_;
    my $self = bless {
        port => delete $o{port} // free_port(),
        dir => tempdir('fakegw-XXXXXX', TMPDIR => 1, CLEANUP => 1),
        opts => { %DEFAULTS, %o },
        http => HTTP::Tiny->new(timeout => 5, verify_SSL => 0),
    }, $class;
    my $no_start = delete $self->{opts}{no_start};
    $self->{records_file} = "$self->{dir}/records.jsonl";
    open my $f, '>', $self->{records_file} or die $!;
    close $f;
    $self->start unless $no_start;
    return $self;
}

sub port { $_[0]{port} }
sub tls { $_[0]{opts}{tls_cert} ? 1 : 0 }
sub url { ($_[0]->tls ? 'wss' : 'ws') . "://127.0.0.1:$_[0]{port}" }
sub running { $_[0]{pid} ? 1 : 0 }

# the control endpoints, on the scheme the child was started with
sub _control_url {
    my ($self, $path) = @_;
    return ($self->{scheme} // 'http') . "://127.0.0.1:$self->{port}/_fake/$path";
}

# starts the child (again) on the same port; the options are those given to
# new() plus every ->set since, so a restarted gateway behaves the same
sub start {
    my ($self) = @_;
    die "fake gateway already running" if $self->{pid};

    my $pid = fork // die "fork: $!";

    if ($pid == 0) {
        # never run the test's END blocks or destructors (OCB's would kill
        # nginx) from here: leave through _exit only
        $SIG{$_} = 'DEFAULT' for qw(TERM INT HUP);
        open STDOUT, '>>', "$self->{dir}/fake.log";
        open STDERR, '>>', "$self->{dir}/fake.log";
        eval { FakeGateway::Server->run($self->{port}, $self->{opts},
                                        $self->{records_file}) };
        print STDERR "fake gateway died: $@" if $@;
        POSIX::_exit(0);
    }

    $self->{pid} = $pid;
    $self->{scheme} = $self->tls ? 'https' : 'http';

    my $deadline = time + 10;
    while (time < $deadline) {
        if (waitpid($pid, POSIX::WNOHANG()) == $pid) {
            delete $self->{pid};
            die "fake gateway exited at start:\n" . $self->log_text;
        }
        my $r = $self->{http}->get($self->_control_url('ping'));
        return $self if $r->{success} && $r->{content} eq 'pong';
        sleep 0.02;
    }
    die "fake gateway did not listen on $self->{port}:\n" . $self->log_text;
}

# graceful end of the child
sub stop {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return;
    kill 'TERM', $pid;
    waitpid($pid, 0);
}

# the gateway process dies at once (SIGKILL): the kernel resets its sockets
sub crash {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return;
    kill 'KILL', $pid;
    waitpid($pid, 0);
}

sub DESTROY {
    my ($self) = @_;
    local $?;
    $self->crash if $self->{pid};
}

sub log_text {
    my ($self) = @_;
    open my $f, '<', "$self->{dir}/fake.log" or return '';
    local $/;
    return <$f> // '';
}

sub _post {
    my ($self, $path, $body) = @_;
    die "fake gateway not running" unless $self->{pid};
    my $r = $self->{http}->post($self->_control_url($path), {
        headers => { 'Content-Type' => 'application/json' },
        content => encode_json($body),
    });
    die "fake gateway control $path failed: $r->{status} $r->{content}"
        unless $r->{success};
    return decode_json($r->{content});
}

# changes options now, and for later restarts
sub set {
    my ($self, %o) = @_;
    $self->{opts}{$_} = $o{$_} for keys %o;
    return $self->_post('set', \%o) if $self->{pid};
    return { %{ $self->{opts} } };
}

sub action {
    my ($self, $name, %args) = @_;
    return $self->_post('action', { %args, action => $name });
}

# every record so far, oldest first; ->records(kind => 'req', ...) filters
# on equal fields
sub records {
    my ($self, %match) = @_;
    open my $f, '<', $self->{records_file} or return ();
    my @r;
    while (my $line = <$f>) {
        next unless $line =~ /\n\z/;          # a line being written
        my $rec = eval { decode_json($line) } or next;
        next if grep { !defined $rec->{$_} || $rec->{$_} ne $match{$_} }
                keys %match;
        push @r, $rec;
    }
    close $f;
    return @r;
}

sub clear_records {
    my ($self) = @_;
    truncate $self->{records_file}, 0;
}

# the requests received, optionally only those of one method
sub requests {
    my ($self, $method) = @_;
    return $self->records(kind => 'req', defined $method ? (method => $method) : ());
}

sub connects { $_[0]->records(kind => 'connect') }
sub upgrades { $_[0]->records(kind => 'upgrade') }

# adds sessions to those the fake knows: hashes with at least "key" (made
# canonical); other fields override the defaults of a row.  Returns the
# number of rows the fake has.
sub seed_sessions {
    my ($self, @rows) = @_;
    return $self->_post('sessions', { sessions => \@rows })->{total};
}

# the fake's session rows, as sessions.list orders them (newest first)
sub sessions {
    my ($self) = @_;
    die "fake gateway not running" unless $self->{pid};
    my $r = $self->{http}->get($self->_control_url('sessions'));
    die "fake gateway control sessions failed: $r->{status} $r->{content}"
        unless $r->{success};
    return @{ decode_json($r->{content})->{sessions} };
}

# one row by key (canonical), or undef
sub session {
    my ($self, $key) = @_;
    my ($row) = grep { $_->{key} eq $key } $self->sessions;
    return $row;
}

# waits until $cond->() returns true; returns its last value
sub wait_until {
    my ($self, $cond, $timeout) = @_;
    my $deadline = time + ($timeout // 5);
    for (;;) {
        my $v = $cond->();
        return $v if $v || time >= $deadline;
        sleep 0.02;
    }
}

###########################################################################
# the gateway, in the child

package FakeGateway::Server;

use strict;
use warnings;

use Digest::SHA ();
use File::Path ();
use File::Temp ();
use IO::Handle;
use MIME::Base64 ();
use Mojo::JSON qw(decode_json encode_json true false);
use Time::HiRes qw(time);

my ($CFG, $REC, %CONNS, %RUNS, %HISTORY, %SESSIONS, $NCONN, $NRUN,
    $NSESSION, $DOWN_UNTIL, %PAIRED, %PENDING, %DEVICE_TOKENS, $NREQ,
    %RECOVERED);

sub record {
    my (%r) = @_;
    $r{t} = time;
    print $REC encode_json(\%r), "\n";
}

sub run {
    my ($class, $port, $opts, $file) = @_;

    $CFG = { %$opts };
    open $REC, '>>', $file or die "$file: $!";
    $REC->autoflush(1);
    $NCONN = 0;
    $NRUN = 0;
    $NSESSION = 0;
    $DOWN_UNTIL = 0;

    my $app = Mojolicious->new;
    $app->log->level('fatal');
    $app->secrets(['fake-gateway']);
    my $r = $app->routes;

    $r->get('/_fake/ping' => sub { $_[0]->render(text => 'pong') });

    $r->post('/_fake/set' => sub {
        my $c = shift;
        my $o = $c->req->json // {};
        $CFG->{$_} = $o->{$_} for keys %$o;
        $c->render(json => $CFG);
    });

    $r->post('/_fake/action' => sub {
        my $c = shift;
        $c->render(json => control($c->req->json // {}));
    });

    $r->post('/_fake/sessions' => sub {
        my $c = shift;
        my $o = $c->req->json // {};
        for my $row (@{ $o->{sessions} // [] }) {
            next unless ref $row eq 'HASH' && defined $row->{key};
            my $key = canonical($row->{key});
            my $s = $SESSIONS{$key} // new_session($key, 'seed');
            $s->{$_} = $row->{$_} for grep { $_ ne 'key' } keys %$row;
            record(kind => 'session', action => 'seeded', key => $key,
                   sessionId => $s->{sessionId}, by => 'seed');
        }
        $c->render(json => { ok => 1, total => scalar keys %SESSIONS });
    });

    $r->get('/_fake/sessions' => sub {
        my $c = shift;
        $c->render(json => { sessions => [ map { session_row($_) }
                                           sorted_sessions() ] });
    });

    $r->websocket('/' => \&accept_ws);

    my $listen = Mojo::URL->new("http://127.0.0.1:$port");
    if ($CFG->{tls_cert}) {
        $listen->scheme('https')->query(cert => $CFG->{tls_cert},
                                        key => $CFG->{tls_key});
    }

    my $daemon = Mojo::Server::Daemon->new(
        app => $app, listen => ["$listen"], silent => 1,
        inactivity_timeout => 0);
    $daemon->start;

    Mojo::IOLoop->start;
    undef $daemon;
}

sub accept_ws {
    my ($c) = @_;

    my %headers;
    my $h = $c->req->headers;
    for my $name (@{ $h->names }) {
        $headers{$name} = $h->header($name);
    }
    my $n = ++$NCONN;
    my $sock = Mojo::IOLoop->stream($c->tx->connection)->handle;
    record(kind => 'upgrade', conn => $n, headers => \%headers,
           remote => $c->tx->remote_address,
           ($sock->isa('IO::Socket::SSL')
            ? (sni => scalar $sock->get_servername) : ()));

    if (time < $DOWN_UNTIL) {
        record(kind => 'refused', conn => $n, code => 503);
        return $c->render(text => 'gateway restarting', status => 503);
    }

    $c->inactivity_timeout(0);
    $c->tx->max_websocket_size(64 * 1024 * 1024);

    my $conn = $CONNS{$n} = {
        n => $n, c => $c, ready => 0, seq => 0,
        frozen => $CFG->{unresponsive} ? 1 : 0,
    };

    $c->on(text => sub { frame_in($conn, $_[1]) });
    $c->on(binary => sub {
        record(kind => 'bad', conn => $n, raw => 'binary frame');
    });
    $c->on(finish => sub {
        my ($c, $code, $reason) = @_;
        record(kind => 'closed', conn => $n, code => $code,
               reason => $reason);
        Mojo::IOLoop->remove($conn->{tick}) if $conn->{tick};
        delete $CONNS{$n};
    });

    # the server speaks first (3.1); protocol 3 sends only nonce and ts
    my $payload = { nonce => sprintf('nonce-%d-%d', $$, $n),
                    ts => int(time * 1000) + $CFG->{challenge_skew_ms} };
    $conn->{nonce} = $payload->{nonce};
    $payload->{capabilities} = ['model-catalog-snapshot']
        if $CFG->{protocol} != 3;
    out($conn, { type => 'event', event => 'connect.challenge',
                 payload => $payload });
}

# sends a frame unless the connection went silent; events get the
# per-connection seq once the connection is past hello-ok
sub out {
    my ($conn, $frame) = @_;
    return 0 if $conn->{frozen} || !$CONNS{ $conn->{n} };
    if ($frame->{type} eq 'event' && $conn->{ready}) {
        $frame = { %$frame, seq => ++$conn->{seq} };
    }
    $conn->{c}->send({ json => $frame });
    return 1;
}

sub res {
    my ($conn, $req, $ok, $x) = @_;
    my $frame = { type => 'res', id => $req->{id}, ok => $ok ? true : false };
    if ($ok) { $frame->{payload} = $x } else { $frame->{error} = $x }
    record(kind => 'res', conn => $conn->{n}, id => $req->{id},
           method => $req->{method}, ok => $ok ? 1 : 0,
           ($ok && ref $x eq 'HASH' && defined $x->{status}
            ? (status => $x->{status}) : ()),
           ($ok ? () : (error => $x)));
    out($conn, $frame);
}

sub close_conn {
    my ($conn, $code, $reason) = @_;
    return unless $CONNS{ $conn->{n} };
    $conn->{c}->finish($code, $reason // '');
}

sub frame_in {
    my ($conn, $bytes) = @_;

    if ($conn->{ready} && length($bytes) > $CFG->{max_payload}) {
        record(kind => 'too_big', conn => $conn->{n}, size => length $bytes);
        close_conn($conn, 1009, 'Max payload size exceeded');
        return;
    }

    my $f = eval { decode_json($bytes) };
    if (ref $f ne 'HASH') {
        record(kind => 'bad', conn => $conn->{n}, raw => substr($bytes, 0, 200));
        # the real gateway closes with 1000 on a non-JSON frame (6.2)
        close_conn($conn, 1000, 'invalid frame');
        return;
    }

    return unless ($f->{type} // '') eq 'req';

    my $method = $f->{method} // '';
    my $params = $f->{params};

    if ($method eq 'connect') {
        record(kind => 'connect', conn => $conn->{n},
               auth => ref $params eq 'HASH' ? $params->{auth} : undef,
               params => $params);
    }
    record(kind => 'req', conn => $conn->{n}, id => $f->{id},
           method => $method, params => $params);

    return if $conn->{frozen};

    if (!defined $f->{id} || ref $f->{id} || $f->{id} eq '') {
        close_conn($conn, 1008, 'invalid request frame');
        return;
    }

    if (!$conn->{ready}) {
        if ($method ne 'connect') {
            res($conn, $f, 0, { code => 'INVALID_REQUEST',
                                message => 'first request must be connect' });
            close_conn($conn, 1008, 'first request must be connect');
            return;
        }
        return hello($conn, $f, $params);
    }

    if ($method eq 'chat.send') { return chat_send($conn, $f, $params) }
    if ($method eq 'chat.abort') { return chat_abort($conn, $f, $params) }
    if ($method eq 'chat.history') { return chat_history($conn, $f, $params) }
    if ($method eq 'sessions.list') { return sessions_list($conn, $f, $params) }
    if ($method eq 'sessions.reset') { return sessions_reset($conn, $f, $params) }
    if ($method eq 'sessions.delete') { return sessions_delete($conn, $f, $params) }

    res($conn, $f, 0, { code => 'INVALID_REQUEST',
                        message => "unknown method: $method" });
}

# closed-schema check: the first unexpected property, or undef
sub unexpected {
    my ($h, $allowed) = @_;
    for my $k (sort keys %$h) {
        return $k unless $allowed->{$k};
    }
    return undef;
}

sub hello {
    my ($conn, $req, $p) = @_;

    my $refuse = sub {
        my ($err, $close, $reason) = @_;
        record(kind => 'refused', conn => $conn->{n}, code => $err->{code},
               details_code => $err->{details} ? $err->{details}{code} : undef);
        res($conn, $req, 0, $err);
        close_conn($conn, $close, $reason) if $close;
    };

    if (ref $p ne 'HASH') {
        return $refuse->({ code => 'INVALID_REQUEST',
                           message => 'invalid connect params: must be object' },
                         1008, 'invalid connect params');
    }

    # schema problems first, as the real gateway validates before anything
    my $bad;
    if (my $k = unexpected($p, \%CONNECT_KEYS)) {
        $bad = "at root: unexpected property '$k'";
    } elsif (ref $p->{client} ne 'HASH') {
        $bad = "at root: must have required property 'client'";
    } elsif (my $ck = unexpected($p->{client}, \%CLIENT_KEYS)) {
        $bad = "at /client: unexpected property '$ck'";
    } elsif (!$CLIENT_IDS{ $p->{client}{id} // '' }) {
        $bad = 'at /client/id: must be equal to one of the allowed values';
    } elsif (!$CLIENT_MODES{ $p->{client}{mode} // '' }) {
        $bad = 'at /client/mode: must be equal to one of the allowed values';
    } elsif (($p->{client}{version} // '') eq ''
             || ($p->{client}{platform} // '') eq '') {
        $bad = 'at /client: must have required properties version, platform';
    } elsif (defined $p->{auth}
             && (ref $p->{auth} ne 'HASH'
                 || unexpected($p->{auth}, \%AUTH_KEYS))) {
        $bad = 'at /auth: unexpected property';
    } elsif (!defined $p->{minProtocol} || !defined $p->{maxProtocol}) {
        $bad = "at root: must have required property 'minProtocol'";
    }
    if ($bad) {
        return $refuse->({ code => 'INVALID_REQUEST',
                           message => "invalid connect params: $bad" },
                         1008, 'invalid connect params');
    }

    if ($CFG->{unavailable}) {
        $CFG->{unavailable}-- if $CFG->{unavailable} > 0;
        return $refuse->({ code => 'UNAVAILABLE',
                           message => $CFG->{unavailable_message},
                           retryable => true,
                           retryAfterMs => 0 + $CFG->{retry_after_ms},
                           details => { reason => 'startup-sidecars' } });
    }

    my $proto = $CFG->{protocol};
    if ($p->{minProtocol} > $proto || $p->{maxProtocol} < $proto) {
        return $refuse->({ code => 'INVALID_REQUEST',
                           message => 'protocol mismatch',
                           details => { code => 'PROTOCOL_MISMATCH',
                                        expectedProtocol => 0 + $proto } },
                         1002, 'protocol mismatch');
    }

    my $auth = $p->{auth} // {};
    my $device;
    if (defined $p->{device}) {
        my ($err, $id) = check_device($conn, $p);
        return $refuse->($err, 1008, 'device auth failed') if $err;
        $device = $id;
    }

    # a device token stands for the shared secret (4.4)
    my $by_device_token = 0;
    if (defined $auth->{deviceToken} && !defined $auth->{token}
        && !defined $auth->{password}) {
        my $owner = $DEVICE_TOKENS{ $auth->{deviceToken} };
        if (!defined $device || !defined $owner || $owner ne $device) {
            return $refuse->({
                code => 'INVALID_REQUEST',
                message => 'unauthorized: device token mismatch (rotate/reissue device token)',
                details => { code => 'AUTH_DEVICE_TOKEN_MISMATCH',
                             authReason => 'device_token_mismatch',
                             canRetryWithDeviceToken => false,
                             recommendedNextStep => 'update_auth_credentials' } },
                1008, 'unauthorized');
        }
        $by_device_token = 1;
    }

    for my $kind ('token', 'password') {
        last if $by_device_token;
        my $want = $CFG->{$kind};
        next unless defined $want;
        my $got = $auth->{$kind};
        next if defined $got && $got eq $want;
        my $code = uc("AUTH_${kind}_") . (defined $got ? 'MISMATCH' : 'MISSING');
        return $refuse->({
            code => 'INVALID_REQUEST',
            message => "unauthorized: gateway $kind "
                     . (defined $got ? 'mismatch' : 'missing')
                     . " (provide gateway auth $kind)",
            details => { code => $code,
                         authReason => "${kind}_" . (defined $got ? 'mismatch' : 'missing'),
                         canRetryWithDeviceToken => false,
                         recommendedNextStep => 'update_auth_credentials' } },
            1008, 'unauthorized');
    }

    my $device_token;
    if (defined $device && $CFG->{pairing}) {
        if (!$PAIRED{$device}) {
            my $req_id = $PENDING{$device} //= 'req-' . ++$NREQ;
            record(kind => 'pairing', conn => $conn->{n},
                   requestId => $req_id, deviceId => $device);
            return $refuse->({
                code => 'NOT_PAIRED',
                message => 'pairing required: device is not approved yet',
                details => { code => 'PAIRING_REQUIRED', reason => 'not-paired',
                             requestId => $req_id, deviceId => $device,
                             requestedRole => $p->{role} // 'operator',
                             requestedScopes => $p->{scopes} // [] } },
                1008, 'pairing required');
        }
        ($device_token) = grep { $DEVICE_TOKENS{$_} eq $device }
                          sort keys %DEVICE_TOKENS;
        if (!defined $device_token) {
            $device_token = sprintf 'devtok-%d-%d', $$, int(rand(1e9));
            $DEVICE_TOKENS{$device_token} = $device;
        }
    }

    my $scopes = $CFG->{scopes} // $p->{scopes} // [];
    $conn->{ready} = 1;
    $conn->{seq} = 0;
    $conn->{scopes} = ref $scopes eq 'ARRAY' ? [@$scopes] : [];

    my $payload = {
        type => 'hello-ok', protocol => 0 + $proto,
        server => { version => $proto == 3 ? '2026.4.26' : '2026.9.6',
                    connId => "conn-$$-$conn->{n}" },
        auth => { role => 'operator', scopes => $scopes,
                  ($proto == 3 ? ()
                   : (method => $by_device_token ? 'device-token' : 'token')),
                  (defined $device_token ? (deviceToken => $device_token) : ()) },
        policy => { maxPayload => 0 + $CFG->{max_payload},
                    maxBufferedBytes => 52428800,
                    tickIntervalMs => 0 + $CFG->{tick_ms},
                    ($CFG->{attachments_policy}
                     ? (attachments => $CFG->{attachments_policy}) : ()) },
    };
    if ($proto != 3) {
        $payload->{features} = { methods => ['health', 'chat.send', 'chat.abort',
                                             'chat.history', 'sessions.list',
                                             'sessions.reset',
                                             'sessions.delete'],
                                 events => ['connect.challenge', 'chat', 'tick',
                                            'shutdown'] };
        $payload->{snapshot} = { sessionDefaults => {
            defaultAgentId => 'main', mainKey => 'main',
            mainSessionKey => 'agent:main:main', scope => 'per-sender' } };
    }
    record(kind => 'hello', conn => $conn->{n}, protocol => 0 + $proto,
           scopes => $scopes);
    res($conn, $req, 1, $payload);

    my $every = ($CFG->{tick_ms} || 30000) / 1000;
    $conn->{tick} = Mojo::IOLoop->recurring($every => sub {
        return unless $CFG->{send_ticks};
        record(kind => 'tick', conn => $conn->{n})
            if out($conn, { type => 'event', event => 'tick',
                            payload => { ts => int(time * 1000) } });
    });
}

sub b64url_decode {
    my ($s) = @_;
    return undef unless defined $s && !ref $s && $s =~ /^[A-Za-z0-9_-]*$/;
    $s =~ tr{-_}{+/};
    $s .= '=' x ((4 - length($s) % 4) % 4);
    return MIME::Base64::decode_base64($s);
}

sub normalize_meta {
    my ($v) = @_;
    return '' unless defined $v && !ref $v;
    $v =~ s/^\s+|\s+$//g;
    $v =~ tr/A-Z/a-z/;
    return $v;
}

# Ed25519 verification with the openssl CLI: true when it verifies
sub ed25519_verify {
    my ($raw_pub, $data, $sig) = @_;
    my $dir = File::Temp::tempdir(CLEANUP => 1);
    my $der = pack('H*', '302a300506032b6570032100') . $raw_pub;
    my $pem = "-----BEGIN PUBLIC KEY-----\n"
            . MIME::Base64::encode_base64($der) . "-----END PUBLIC KEY-----\n";
    for (['pub.pem', $pem], ['data', $data], ['sig', $sig]) {
        open my $f, '>', "$dir/$_->[0]" or die $!;
        binmode $f;
        print $f $_->[1];
        close $f;
    }
    my $rc = system("openssl pkeyutl -verify -pubin -inkey $dir/pub.pem "
                    . "-rawin -in $dir/data -sigfile $dir/sig >/dev/null 2>&1");
    File::Path::remove_tree($dir);
    return $rc == 0;
}

# (error, device id): the gateway's checks of a connect's device (4.3)
sub check_device {
    my ($conn, $p) = @_;
    my $d = $p->{device};
    my $fail = sub {
        my ($code, $msg) = @_;
        return ({ code => 'INVALID_REQUEST', message => "device auth: $msg",
                  details => { code => $code } }, undef);
    };
    if (ref $d ne 'HASH' || grep { !defined $d->{$_} }
                                qw(id publicKey signature signedAt nonce)) {
        return $fail->('DEVICE_AUTH_INVALID', 'device needs id, publicKey, '
                       . 'signature, signedAt and nonce');
    }
    return (undef, $d->{id}) unless $CFG->{device_check};

    my $raw = b64url_decode($d->{publicKey});
    return $fail->('DEVICE_AUTH_PUBLIC_KEY_INVALID', 'invalid public key')
        unless defined $raw && length $raw == 32;
    return $fail->('DEVICE_AUTH_DEVICE_ID_MISMATCH', 'device id mismatch')
        unless $d->{id} eq Digest::SHA::sha256_hex($raw);
    return $fail->('DEVICE_AUTH_NONCE_MISMATCH', 'nonce mismatch')
        unless $d->{nonce} eq ($conn->{nonce} // '');
    return $fail->('DEVICE_AUTH_SIGNATURE_EXPIRED', 'signature expired')
        if abs($d->{signedAt} - time * 1000) > 120000;

    my $auth = ref $p->{auth} eq 'HASH' ? $p->{auth} : {};
    my $token = $auth->{token} // $auth->{deviceToken}
                // $auth->{bootstrapToken} // '';
    my @common = ($d->{id}, $p->{client}{id}, $p->{client}{mode},
                  $p->{role} // 'operator', join(',', @{ $p->{scopes} // [] }),
                  $d->{signedAt}, $token, $d->{nonce});
    my $sig = b64url_decode($d->{signature});
    for my $v (@{ $CFG->{signature_versions} }) {
        my $payload = $v == 3
            ? join('|', 'v3', @common, normalize_meta($p->{client}{platform}),
                   normalize_meta($p->{client}{deviceFamily}))
            : join('|', 'v2', @common);
        if (defined $sig && length $sig == 64
            && ed25519_verify($raw, $payload, $sig)) {
            record(kind => 'device', conn => $conn->{n}, deviceId => $d->{id},
                   version => $v, token_used => $token eq '' ? 0 : 1);
            return (undef, $d->{id});
        }
    }
    return $fail->('DEVICE_AUTH_SIGNATURE_INVALID', 'device signature invalid');
}

sub canonical {
    my ($key) = @_;
    return $key =~ /^agent:/i ? lc $key : 'agent:main:' . lc $key;
}

sub chat_send {
    my ($conn, $req, $p) = @_;

    my $bad;
    if (ref $p ne 'HASH') {
        $bad = 'must be object';
    } elsif (my $k = unexpected($p, \%SEND_KEYS)) {
        $bad = "at root: unexpected property '$k'";
    } elsif (!defined $p->{sessionKey} || ref $p->{sessionKey}
             || length($p->{sessionKey}) < 1 || length($p->{sessionKey}) > 512) {
        $bad = "at /sessionKey: must be a string of 1 to 512 characters";
    } elsif (!defined $p->{message} || ref $p->{message}) {
        $bad = "must have required property 'message'";
    } elsif (!defined $p->{idempotencyKey} || $p->{idempotencyKey} eq '') {
        $bad = "must have required property 'idempotencyKey'";
    }
    if ($bad) {
        return res($conn, $req, 0, { code => 'INVALID_REQUEST',
                                     message => "invalid chat.send params: $bad" });
    }

    # as both gateways: an image may come without text, nothing may not
    if ($p->{message} !~ /\S/
        && !(ref $p->{attachments} eq 'ARRAY' && @{ $p->{attachments} }))
    {
        return res($conn, $req, 0, { code => 'INVALID_REQUEST',
                                     message => 'message or attachment required' });
    }

    my $key = $p->{idempotencyKey};
    my $msg = $p->{message};
    my $session = canonical($p->{sessionKey});

    return if $msg =~ /\{\{noack\}\}/;

    if ($msg =~ /\{\{close_link\}\}/) {
        return close_conn($conn, 1011, 'cannot take this message');
    }

    if ($msg =~ /\{\{ack_error\}\}/) {
        return res($conn, $req, 0, { code => 'UNAVAILABLE',
                                     message => 'chat run admission failed',
                                     retryable => true });
    }

    if ($msg =~ /\{\{ack_status (\w+)\}\}/) {
        return res($conn, $req, 1, { runId => $key, status => $1 });
    }

    # a key whose run the fake "recovered" (the action recover): its run
    # fails, as 2026.9.6 failed a message sent again after a restart
    if (defined(my $why = delete $RECOVERED{$key})) {
        res($conn, $req, 1, { runId => $key, status => 'started' });
        start_run($conn, $key, $session, $msg, $CFG->{reply_prefix} . $msg,
                  fail => $why);
        return;
    }

    if ($CFG->{dedupe} && (my $old = $RUNS{$key})) {
        return res($conn, $req, 1, {
            runId => $key,
            status => $old->{state} eq 'running' ? 'in_flight' : 'ok' });
    }

    res($conn, $req, 1, { runId => $key, status => 'started' });

    my $row = $SESSIONS{$session} // new_session($session, 'chat.send');
    $row->{updatedAt} = int(time * 1000);
    $row->{inputTokens} += 10;
    $row->{outputTokens} += 4;
    $row->{totalTokens} += 14;

    push @{ $HISTORY{$session} }, {
        role => 'user', content => $msg, timestamp => int(time * 1000),
        idempotencyKey => "$key:user",
        __openclaw => { kind => 'user' } };

    my $run = start_run($conn, $key, $session, $msg,
                        $CFG->{reply_prefix} . $msg);

    if ($CFG->{foreign}) {
        my $n = ++$NRUN;
        start_run($conn, "foreign-other-$n", 'agent:main:telegram:dm:42',
                  'x', "FOREIGN other session $n, not for you", foreign => 1);
        start_run($conn, "foreign-same-$n", $session, 'x',
                  "FOREIGN same session $n, not for you", foreign => 1);
        noise($conn, $key, $session);
    }
}

# events that are not chat events of our runs, some of them about our run
sub noise {
    my ($conn, $key, $session) = @_;
    my $t = Mojo::IOLoop->timer(0.005 => sub {
        my @frames = (
            { type => 'event', event => 'agent',
              payload => { runId => $key, seq => 1, stream => 'assistant',
                           ts => int(time * 1000), sessionKey => $session,
                           data => { text => 'NOISE agent text',
                                     delta => 'NOISE agent text' } } },
            { type => 'event', event => 'health', payload => { ok => true } },
            { type => 'event', event => 'presence', payload => { presence => [] } },
            { type => 'event', event => 'heartbeat', payload => { ts => 1 } },
            { type => 'event', event => 'chat.side_result',
              payload => { runId => $key, sessionKey => $session,
                           text => 'NOISE side result' } },
            { type => 'res', id => 'ocb-999999', ok => true,
              payload => { text => 'NOISE stray response' } },
        );
        for my $f (@frames) { broadcast($conn, $f) }
    });
}

# the connections that get a run's events
sub audience {
    my ($conn) = @_;
    return grep { $_->{ready} } values %CONNS if $CFG->{broadcast};
    return ($conn && $CONNS{ $conn->{n} } && $conn->{ready}) ? ($conn) : ();
}

sub broadcast {
    my ($conn, $frame) = @_;
    out($_, $frame) for audience($conn);
}

sub chat_event {
    my ($run, %p) = @_;
    my $payload = { runId => $run->{key}, sessionKey => $run->{session},
                    seq => ++$run->{seq}, %p };
    $payload->{agentId} = 'main'
        if $CFG->{protocol} != 3 && !exists $p{agentId};
    delete $payload->{agentId} unless defined $payload->{agentId};
    record(kind => 'chat', runId => $run->{key}, sessionKey => $run->{session},
           state => $p{state}, foreign => $run->{foreign} ? 1 : 0);
    broadcast($run->{conn}, { type => 'event', event => 'chat',
                              payload => $payload });
}

sub assistant {
    my ($text) = @_;
    return { role => 'assistant', content => [{ type => 'text', text => $text }],
             timestamp => int(time * 1000) };
}

# cuts $text in $n non-empty pieces
sub pieces {
    my ($text, $n) = @_;
    $n = 1 if $n < 1;
    $n = length $text if $n > length $text;
    return ($text) if $n <= 1;
    my @p;
    my $size = int(length($text) / $n);
    for my $i (0 .. $n - 1) {
        push @p, $i == $n - 1 ? substr($text, $i * $size)
                              : substr($text, $i * $size, $size);
    }
    return @p;
}

sub start_run {
    my ($conn, $key, $session, $msg, $text, %o) = @_;

    my $run = $RUNS{$key} = {
        key => $key, session => $session, conn => $conn, text => $text,
        sent => '', state => 'running', seq => 0,
        foreign => $o{foreign},
    };

    my $deltas = $CFG->{deltas};
    my $spacing = $CFG->{delta_ms};
    if ($msg =~ /\{\{slow\s+(\d+)\s+(\d+)\}\}/) {
        ($deltas, $spacing) = ($1, $2);
    }
    my $v4 = $CFG->{protocol} != 3;
    my $mode = defined $o{fail} ? 'fail'
             : $msg =~ /\{\{hang\}\}/ ? 'hang'
             : $msg =~ /\{\{double_error\}\}/ ? 'double_error'
             : $msg =~ /\{\{error\}\}/ ? 'error'
             : $msg =~ /\{\{empty_final\}\}/ ? 'empty_final'
             : $msg =~ /\{\{handover_early\}\}/ ? 'handover_early'
             : $msg =~ /\{\{handover_after\}\}/ ? 'handover_after'
             : $msg =~ /\{\{handover\}\}/ ? 'handover'
             : $msg =~ /\{\{final_early\}\}/ ? 'final_early'
             : $msg =~ /\{\{rewrite\}\}/ ? 'rewrite'
             : 'normal';

    my @steps;
    if ($v4 && $CFG->{status_events}) {
        push @steps, sub { chat_event($run, state => 'status',
                                      phase => 'preparing_workspace') };
        push @steps, sub { chat_event($run, state => 'status',
                                      phase => 'starting_model') };
    }

    my @parts = $mode =~ /^(hang|empty_final|handover|fail)/ ? ()
              : $mode =~ /error/ ? ((pieces($text, 2))[0])
              : $mode eq 'rewrite' ? pieces("DRAFT $text", $deltas)
              : pieces($text, $deltas);
    # the last delta comes after the final
    my $late = $mode eq 'final_early' && @parts > 1 ? pop @parts : undef;
    for my $part (@parts) {
        push @steps, sub {
            $run->{sent} .= $part;
            chat_event($run, state => 'delta',
                       ($v4 ? (deltaText => $part) : ()),
                       message => assistant($run->{sent}));
        };
    }

    if ($mode eq 'normal' || $mode eq 'rewrite') {
        push @steps, sub { finish_run($run, $text) };
    } elsif ($mode eq 'final_early') {
        push @steps, sub {
            finish_run($run, $text);
            return unless defined $late;
            chat_event($run, state => 'delta',
                       ($v4 ? (deltaText => $late) : ()),
                       message => assistant($text));
        };
    } elsif ($mode eq 'empty_final') {
        push @steps, sub { finish_run($run, undef) };
    } elsif ($mode =~ /^handover/) {
        my $other = sub {
            start_run($conn, 'gw-run-' . ++$NRUN, $session, 'plain', $text);
        };
        if ($mode eq 'handover_after') {
            # this run's empty final once the other one's final is out
            push @steps, sub {
                start_run($conn, 'gw-run-' . ++$NRUN, $session, 'plain',
                          $text)->{then} = sub { finish_run($run, undef) };
            };
        } elsif ($mode eq 'handover') {
            # finish_run ends this run's chain: the other run is started
            # by a timer of its own
            push @steps, sub {
                finish_run($run, undef);
                Mojo::IOLoop->timer($spacing / 1000 => $other);
            };
        } else {
            push @steps, $other, sub {}, sub {}, sub { finish_run($run, undef) };
        }
    } elsif ($mode eq 'fail') {
        # 2026.9.6 writes the failed run's assistant message first, with
        # the run's id and stopReason "error" (chat.history shows it with a
        # text of its own)
        push @steps, sub {
            push @{ $HISTORY{$session} }, {
                %{ assistant('The agent run failed before producing a reply.') },
                stopReason => 'error',
                ($v4 ? (__openclaw => { runId => $key }) : ()) };
            fail_run($run, $o{fail});
        };
    } elsif ($mode =~ /error/) {
        push @steps, sub {
            fail_run($run, 'LLM request failed: connection refused by the '
                         . 'provider endpoint.');
        };
        if ($mode eq 'double_error') {
            push @steps, sub {
                # the second one: seq 1, no agentId (gateway 2026.9.6)
                $run->{seq} = 0;
                chat_event($run, state => 'error', agentId => undef,
                           errorMessage => "\x{26a0}\x{fe0f} Agent failed "
                                         . 'before reply: LLM request failed.');
            };
        }
    }

    chain($run, $spacing / 1000, @steps);

    return $run;
}

# The steps of a run, one after the other, each scheduled by the one
# before: a loop that is late delays a run but never reorders it, where
# timers of their own, due together, would fire in any order.
sub chain {
    my ($run, $spacing, @steps) = @_;
    return unless @steps;
    my $step = shift @steps;
    $run->{timer} = Mojo::IOLoop->timer($spacing => sub {
        delete $run->{timer};
        # the error steps run after the run has ended, on purpose
        return if $run->{state} eq 'aborted' || $run->{dropped};
        $step->();
        chain($run, $spacing, @steps) unless $run->{stopped};
    });
}

sub stop_timers {
    my ($run) = @_;
    Mojo::IOLoop->remove(delete $run->{timer}) if $run->{timer};
    $run->{stopped} = 1;
}

sub finish_run {
    my ($run, $text) = @_;
    return unless $run->{state} eq 'running';
    $run->{state} = 'done';
    stop_timers($run);
    my $msg;
    if (defined $text) {
        $msg = assistant($text);
        push @{ $msg->{content} }, @{ $CFG->{final_media} }
            if $CFG->{final_media};
        my $hist = { %$msg, stopReason => 'stop' };
        # protocol 4 marks the assistant message with its run (13.9)
        $hist->{__openclaw} = { runId => $run->{key} } if $CFG->{protocol} != 3;
        push @{ $HISTORY{ $run->{session} } }, $hist unless $run->{foreign};
    }
    chat_event($run, state => 'final', stopReason => 'stop',
               (defined $msg ? (message => $msg) : ()));
    (delete $run->{then})->() if $run->{then};
}

sub fail_run {
    my ($run, $message) = @_;
    return unless $run->{state} eq 'running';
    $run->{state} = 'error';
    chat_event($run, state => 'error', errorMessage => $message,
               errorKind => 'unknown');
}

sub chat_abort {
    my ($conn, $req, $p) = @_;
    if (ref $p ne 'HASH' || !defined $p->{sessionKey}
        || unexpected($p, \%ABORT_KEYS)) {
        return res($conn, $req, 0, { code => 'INVALID_REQUEST',
                                     message => 'invalid chat.abort params' });
    }
    my $session = canonical($p->{sessionKey});
    my @ids;
    for my $run (values %RUNS) {
        next unless $run->{state} eq 'running' && $run->{session} eq $session;
        next if defined $p->{runId} && $run->{key} ne $p->{runId};
        push @ids, $run->{key};
        $run->{state} = 'aborted';
        stop_timers($run);
        chat_event($run, state => 'aborted', stopReason => 'rpc',
                   message => assistant($run->{sent}));
    }
    res($conn, $req, 1, { ok => true, aborted => @ids ? true : false,
                          runIds => \@ids });
}

sub chat_history {
    my ($conn, $req, $p) = @_;
    if (ref $p ne 'HASH' || !defined $p->{sessionKey}
        || unexpected($p, \%HISTORY_KEYS)) {
        return res($conn, $req, 0, { code => 'INVALID_REQUEST',
                                     message => 'invalid chat.history params' });
    }
    my $session = canonical($p->{sessionKey});
    my @all = @{ $HISTORY{$session} // [] };
    my $limit = $p->{limit} // 200;
    my @msgs = @all > $limit ? @all[-$limit .. -1] : @all;
    res($conn, $req, 1, { sessionKey => $session, sessionId => "sess-$session",
                          messages => \@msgs,
                          hasMore => @all > $limit ? true : false,
                          totalMessages => scalar @all });
}

###########################################################################
# sessions (gateway-protocol.md 10.1)

sub new_session {
    my ($key, $by) = @_;
    my $now = int(time * 1000);
    my ($agent) = $key =~ /^agent:([^:]+):/;
    my $kind = $key =~ /:(group|channel):/ ? 'group'
             : $key =~ /:global$/ ? 'global' : 'direct';
    my $s = $SESSIONS{$key} = {
        key => $key, sessionId => 'sess-' . ++$NSESSION, kind => $kind,
        chatType => $kind eq 'group' ? 'group' : 'direct',
        agentId => $agent // 'main', createdAt => $now, updatedAt => $now,
        model => 'fake-model', modelProvider => 'fake', inputTokens => 0,
        outputTokens => 0, totalTokens => 0,
    };
    record(kind => 'session', action => 'created', key => $key,
           sessionId => $s->{sessionId}, by => $by);
    return $s;
}

# a row as sessions.list shows it: with its runs' state now
sub session_row {
    my ($s) = @_;
    my @active = sort map { $_->{key} }
                 grep { $_->{state} eq 'running' && !$_->{foreign}
                        && $_->{session} eq $s->{key} } values %RUNS;
    return { status => @active ? 'running' : 'done', %$s,
             hasActiveRun => @active ? true : false,
             activeRunIds => \@active };
}

sub sorted_sessions {
    return sort { $b->{updatedAt} <=> $a->{updatedAt} || $a->{key} cmp $b->{key} }
           values %SESSIONS;
}

# FORBIDDEN unless the connection was granted one of @scopes; the first is
# the one named as missing
sub need_scope {
    my ($conn, $req, @scopes) = @_;
    my %granted = map { $_ => 1 } @{ $conn->{scopes} // [] };
    return 1 if grep { $granted{$_} } @scopes;
    res($conn, $req, 0, { code => 'FORBIDDEN',
                          message => "missing scope: $scopes[0]",
                          details => { code => 'MISSING_SCOPE',
                                       missingScope => $scopes[0],
                                       requiredScopes => [ $scopes[0] ] } });
    return 0;
}

sub whole {
    my ($v, $min) = @_;
    return defined $v && !ref $v && $v =~ /^\d+$/ && $v >= $min;
}

sub sessions_list {
    my ($conn, $req, $p) = @_;
    return unless need_scope($conn, $req, 'operator.read', 'operator.write',
                             'operator.admin');
    $p //= {};
    my $bad;
    if (ref $p ne 'HASH') {
        $bad = 'must be object';
    } elsif (my $k = unexpected($p, \%LIST_KEYS)) {
        $bad = "at root: unexpected property '$k'";
    } elsif (exists $p->{limit} && !whole($p->{limit}, 1)) {
        $bad = 'at /limit: must be >= 1';
    } elsif (exists $p->{offset} && !whole($p->{offset}, 0)) {
        $bad = 'at /offset: must be >= 0';
    }
    if ($bad) {
        return res($conn, $req, 0, { code => 'INVALID_REQUEST',
                                     message => "invalid sessions.list params: $bad" });
    }
    my $limit = $p->{limit} // 100;
    $limit = 100 if $limit > 100;
    my $offset = $p->{offset} // 0;
    my @all = sorted_sessions();
    my $end = $offset + $limit;
    $end = @all if $end > @all;
    my @page = $offset < @all ? @all[$offset .. $end - 1] : ();
    my $more = $end < @all;
    res($conn, $req, 1, {
        ts => int(time * 1000), path => '/fake/sessions.json',
        count => scalar @page, totalCount => scalar @all,
        limitApplied => 0 + $limit,
        hasMore => $more ? true : false,
        nextOffset => $more ? 0 + $end : undef,
        defaults => { model => 'fake-model', modelProvider => 'fake' },
        sessions => [ map { session_row($_) } @page ] });
}

# the checks that reset and delete share; the canonical key, or undef
# after an answer
sub session_target {
    my ($conn, $req, $p, $allowed) = @_;
    return undef unless need_scope($conn, $req, 'operator.admin');
    my $bad;
    if (ref $p ne 'HASH') {
        $bad = 'must be object';
    } elsif (my $k = unexpected($p, $allowed)) {
        $bad = "at root: unexpected property '$k'";
    } elsif (!defined $p->{key} || ref $p->{key} || $p->{key} eq ''
             || length($p->{key}) > 512) {
        $bad = "must have required property 'key'";
    }
    if ($bad) {
        res($conn, $req, 0, { code => 'INVALID_REQUEST',
                              message => "invalid $req->{method} params: $bad" });
        return undef;
    }
    my $key = canonical($p->{key});
    my $s = $SESSIONS{$key};
    if (defined $p->{expectedSessionId}
        && (!$s || $s->{sessionId} ne $p->{expectedSessionId})) {
        res($conn, $req, 0, { code => 'INVALID_REQUEST',
                              message => "session $key changed: expected "
                                       . "sessionId $p->{expectedSessionId}" });
        return undef;
    }
    return $key;
}

sub sessions_reset {
    my ($conn, $req, $p) = @_;
    my $key = session_target($conn, $req, $p, \%RESET_KEYS) // return;
    my $s = $SESSIONS{$key};
    if ($s) {
        $s->{updatedAt} = int(time * 1000);
        $s->{$_} = 0 for qw(inputTokens outputTokens totalTokens);
    } else {
        $s = new_session($key, 'sessions.reset');
    }
    delete $HISTORY{$key};
    record(kind => 'session', action => 'reset', key => $key,
           sessionId => $s->{sessionId}, by => 'sessions.reset');
    res($conn, $req, 1, { ok => true, key => $key, entry => session_row($s),
                          resolved => { modelProvider => 'fake',
                                        model => 'fake-model' } });
}

sub sessions_delete {
    my ($conn, $req, $p) = @_;
    my $key = session_target($conn, $req, $p, \%DELETE_KEYS) // return;
    my $s = delete $SESSIONS{$key};
    delete $HISTORY{$key};
    record(kind => 'session', action => 'deleted', key => $key,
           sessionId => $s ? $s->{sessionId} : undef, by => 'sessions.delete')
        if $s;
    res($conn, $req, 1, { ok => true, key => $key,
                          deleted => $s ? true : false, archived => [] });
}

# the /_fake/action endpoint
sub control {
    my ($arg) = @_;
    my $name = $arg->{action} // '';

    if ($name eq 'shutdown') {
        my $ms = $arg->{restart_expected_ms};
        for my $conn (values %CONNS) {
            out($conn, { type => 'event', event => 'shutdown',
                         payload => { reason => 'gateway restarting',
                                      (defined $ms ? (restartExpectedMs => 0 + $ms) : ()) } });
            close_conn($conn, 1012, 'service restart');
        }
        $DOWN_UNTIL = time + ($arg->{down_ms} // 0) / 1000;
        if ($arg->{forget} // 1) {
            for my $run (values %RUNS) {
                stop_timers($run);
                $run->{dropped} = 1;
            }
            %RUNS = ();
        }
        record(kind => 'action', action => 'shutdown');
        return { ok => 1, closed => scalar keys %CONNS };
    }

    if ($name eq 'freeze') {
        $_->{frozen} = 1 for values %CONNS;
        record(kind => 'action', action => 'freeze',
               conns => [ sort { $a <=> $b } keys %CONNS ]);
        return { ok => 1, frozen => scalar keys %CONNS };
    }

    if ($name eq 'close') {
        close_conn($_, $arg->{code} // 1000, $arg->{reason}) for values %CONNS;
        record(kind => 'action', action => 'close');
        return { ok => 1 };
    }

    if ($name eq 'emit') {
        out($_, $arg->{frame}) for grep { $_->{ready} } values %CONNS;
        return { ok => 1 };
    }

    if ($name eq 'agent_run') {

        # a run nobody sent a message for (a cron job, another operator's
        # message): it streams to every connection, as a gateway does
        my ($conn) = grep { $_->{ready} } values %CONNS
            or return { ok => 0, error => 'no connection' };
        my $key = $arg->{runId} // 'agent-run-' . ++$NRUN;
        start_run($conn, $key, $arg->{session}, $arg->{message} // 'cron',
                  $arg->{text} // 'a message of the agent');
        return { ok => 1, runId => $key };
    }

    if ($name eq 'recover') {

        # What a restarted 2026.9.6 does with a run a SIGKILL cut
        # (main-session restart recovery), seen while the bridge's link
        # was still down: the reply is made in a run of the gateway's,
        # under a prompt of its own, and lands in the history only; the
        # message sent again then fails.  Every connection is closed
        # first, so that no event of either run reaches one.
        my $key = $arg->{runId} // '';
        my $run = $RUNS{$key} or return { ok => 0, error => 'no such run' };
        close_conn($_, 1012, 'service restart') for values %CONNS;
        stop_timers($run);
        $run->{dropped} = 1;
        delete $RUNS{$key};
        my $gw = 'gw-run-' . ++$NRUN;
        my $now = int(time * 1000);
        push @{ $HISTORY{ $run->{session} } },
            { role => 'user', timestamp => $now,
              content => 'Your previous turn was interrupted by a gateway '
                       . 'restart. Continue from the existing transcript.',
              idempotencyKey => "$gw:user",
              __openclaw => { kind => 'user' } },
            ($arg->{no_reply} ? () : {
                %{ assistant($arg->{text} // $run->{text}) },
                stopReason => 'stop',
                ($CFG->{protocol} != 3 ? (__openclaw => { runId => $gw }) : ()) });
        $RECOVERED{$key} = $arg->{message}
                           // 'run superseded by restart recovery';
        record(kind => 'action', action => 'recover', runId => $key,
               recoveryRunId => $gw);
        return { ok => 1, runId => $gw };
    }

    if ($name eq 'finish' || $name eq 'fail') {
        my $run = $RUNS{ $arg->{runId} // '' }
            or return { ok => 0, error => 'no such run' };
        if ($name eq 'finish') { finish_run($run, $arg->{text} // $run->{text}) }
        else { stop_timers($run); fail_run($run, $arg->{message} // 'failed') }
        return { ok => 1 };
    }

    if ($name eq 'approve') {
        my ($device) = grep { $PENDING{$_} eq ($arg->{requestId} // '') }
                       keys %PENDING
            or return { ok => 0, error => 'no such request' };
        delete $PENDING{$device};
        $PAIRED{$device} = 1;
        record(kind => 'action', action => 'approve', deviceId => $device);
        return { ok => 1, deviceId => $device };
    }

    if ($name eq 'revoke') {
        my $device = $arg->{deviceId} // '';
        delete $DEVICE_TOKENS{$_}
            for grep { $DEVICE_TOKENS{$_} eq $device } keys %DEVICE_TOKENS;
        delete $PAIRED{$device};
        record(kind => 'action', action => 'revoke', deviceId => $device);
        return { ok => 1 };
    }

    if ($name eq 'pending') {
        return { ok => 1, pending => { %PENDING }, paired => [ sort keys %PAIRED ] };
    }

    if ($name eq 'state') {
        return { conns => [ map { { n => $_->{n}, ready => $_->{ready},
                                    frozen => $_->{frozen} } } values %CONNS ],
                 runs => { map { $_ => $RUNS{$_}{state} } keys %RUNS } };
    }

    return { ok => 0, error => "unknown action \"$name\"" };
}

1;
