package TestHub;

# A WebSocket "hub" of the kind the Go webhook bridge dials into
# (webhook-bridge-compat.md, sections 1 and 11), for the hub-mode tests:
# nginx dials OUT to it as the bridge would, and the test's end users are
# plain WebSocket clients of the same hub.
#
# Two behaviours, chosen per instance:
#
#   rooms  the Cloudflare Durable Object hub: GET /ws?uid=U or /ws/U (the
#          path wins, both URL-decoded); no uid: HTTP 400
#          {"error":"UID is required. ..."}; an Upgrade header other than
#          exactly "websocket" (case-sensitive): 426; no greeting; each
#          frame is re-sent to every OTHER socket of the same uid,
#          untouched (binary stays binary); 32 MiB per message
#   echo   the Node test hub: /ws only (the query is ignored, /ws/U gets
#          400); greets each socket with {"type":"connected",
#          "connectionId":"conn-...","timestamp":"..."}; each frame is
#          JSON-parsed and re-serialised (keys sorted, a space after ":"
#          and ",", so never the bytes it got) and sent to ALL sockets,
#          the sender included; a frame that is not JSON is dropped
#          (record "dropped"); binary is re-sent as text; 100 MiB
#
# Like FakeGateway, the hub runs in a FORKED child (Mojolicious on a
# Mojo::Server::Daemon), so that a test may block on its clients; the test
# drives it through HTTP endpoints under /_hub/ on the hub's own port and
# reads a JSON-lines record file that survives the child.
#
# The bridge's sockets and the test's users are told apart by the users'
# request header X-Hub-Client (its value names the user): a socket without
# it is a "bridge" socket.  Fan-out treats both alike, as a real hub does.
#
# Synopsis:
#
#   my $hub = TestHub->new(mode => 'rooms');      # or 'echo'
#   $hub->url('/ws');                             # ws://127.0.0.1:PORT/ws
#   my $u = $hub->client(uid => 'shop-1');        # a user of uid shop-1
#   $u->send_json({id => 'm1', content => 'hi'});
#   my %r = $u->collect(['m1'], 10);             # id => [replies]
#   $hub->wait_until(sub { $hub->bridges('shop-1') == 1 }, 10);
#   $hub->close_all(code => 1001);                # the bridge's sockets
#   $hub->refuse(status => 503, count => 2);      # next 2 bridge upgrades
#   $hub->pause(uid => 'shop-1');                 # stop reading them
#   $hub->inject(uid => 'shop-1', op => 'binary', payload => "\x00\x01");
#   $hub->crash; $hub->start;                     # killed, back on the port
#   my @f = $hub->frames(role => 'bridge', dir => 'in');  # what nginx sent
#
# Options (constructor or ->set):
#
#   mode            rooms   rooms | echo (fixed at new)
#   no_close_reply  0       1: a close frame from a socket is recorded and
#                           never answered (the Cloudflare hub's old
#                           compatibility date): the peer times out
#   max_size        32 MiB (rooms), 100 MiB (echo): a bigger message closes
#                           its socket with 1009
#   record_max      65536   frames up to this size are recorded whole;
#                           longer ones by their first 256 bytes
#   tls_cert        undef   with tls_key, PEM files: the hub listens with
#   tls_key         undef   TLS (->url is wss://); users and the control
#                           endpoints then use a plain port of their own
#                           (->user_port), the same hub behind it
#   refuse          undef   {status => 503, count => N, clients => 0}: the
#                           "refuse" action in effect from the start (a
#                           hub that comes back refusing: ->set it, then
#                           ->start); ->refuse(status => 0) ends it
#
# Actions (->action(NAME, ARGS), or the methods below).  ARGS select the
# sockets: role => bridge|client|all (bridge by default), uid => U,
# conn => N.
#
#   close    code => 1001, reason => '': a close frame, then the socket ends
#   drop     the TCP connection is closed without a close frame
#   refuse   status => 400|503|..., count => N (-1: all, 0: stop),
#            clients => 1 (refuse users too, not only the bridge): the next
#            upgrades are answered with this status
#   pause    the hub stops reading the sockets (their peers' writes block)
#   resume   reads again
#   send     op => text|binary|ping|NUMBER, payload => BYTES | json => {...}
#            | hex => "c3 28 ..." | big => {id => ID, size => BYTES}: a
#            message to the sockets (big: a valid chat message
#            {"id":ID,"content":"xxx..."} of exactly that many bytes, made
#            in the child); fragments => N sends it in N frames
#
# Records (->records(kind => ...)), each with t, kind and conn (a socket
# number, from 1 for the hub's whole life, restarts included):
#
#   upgrade     request_line ("GET /ws?uid=a HTTP/1.1"), method, target, tls,
#               version, headers => [[name, value], ...] as received,
#               uid (resolved, or undef), role, name, remote
#   refused     status, reason: an upgrade answered without 101
#   open        uid, role, name: a socket accepted
#   frame       dir (in: received, out: sent by the hub), op (1 text,
#               2 binary), len, payload (or head => first bytes and
#               truncated => 1), type and id when it is a JSON object
#   dropped     why: an echo-hub frame that was not JSON
#   close_frame code, reason: a close frame received (answered => 0|1)
#   pong        payload: a pong received
#   closed      code, reason: the socket ended (1006: without a close)
#   action      action, conns: an action applied

use strict;
use warnings;

use File::Temp qw(tempdir);
use HTTP::Tiny;
use IO::Socket::INET;
use Mojo::JSON qw(decode_json encode_json);
use POSIX ();
use Time::HiRes qw(sleep time);

use OCB;
use RelayClient;

my %DEFAULTS = (
    mode => 'rooms',
    no_close_reply => 0,
    max_size => undef,
    record_max => 65536,
);

sub free_port { OCB::free_port() }

# new(%options, port => N, no_start => 1)
sub new {
    my ($class, %o) = @_;
    my $self = bless {
        port => delete $o{port} // free_port(),
        plain_port => free_port(),
        dir => tempdir('testhub-XXXXXX', TMPDIR => 1, CLEANUP => 1),
        opts => { %DEFAULTS, %o },
        http => HTTP::Tiny->new(timeout => 10),
    }, $class;
    my $no_start = delete $self->{opts}{no_start};
    die "TestHub: mode is rooms or echo\n"
        unless $self->{opts}{mode} =~ /^(rooms|echo)$/;
    $self->{opts}{max_size} //= $self->{opts}{mode} eq 'rooms'
        ? 32 * 1024 * 1024 : 100 * 1024 * 1024;
    $self->{records_file} = "$self->{dir}/records.jsonl";
    open my $f, '>', $self->{records_file} or die $!;
    close $f;
    $self->start unless $no_start;
    return $self;
}

sub port { $_[0]{port} }
sub mode { $_[0]{opts}{mode} }
sub running { $_[0]{pid} ? 1 : 0 }
sub tls { $_[0]{opts}{tls_cert} ? 1 : 0 }

# where users and the control endpoints connect: the port, or with TLS a
# plain port of their own
sub user_port { $_[0]->tls ? $_[0]{plain_port} : $_[0]{port} }

# ws://127.0.0.1:PORT/ws (wss:// with TLS), or another path
sub url {
    my ($self, $path) = @_;
    return ($self->tls ? 'wss' : 'ws') . "://127.0.0.1:$self->{port}" . ($path // '/ws');
}

sub _control_url { "http://127.0.0.1:" . $_[0]->user_port . "/_hub/$_[1]" }

sub start {
    my ($self) = @_;
    die "test hub already running" if $self->{pid};
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        # no END blocks or destructors of the test in here (OCB's would
        # kill nginx): leave through _exit only
        $SIG{$_} = 'DEFAULT' for qw(TERM INT HUP);
        open STDOUT, '>>', "$self->{dir}/hub.log";
        open STDERR, '>>', "$self->{dir}/hub.log";
        eval { TestHub::Server->run($self->{port}, $self->{opts},
                                    $self->{records_file}, $self->{plain_port}) };
        print STDERR "test hub died: $@" if $@;
        POSIX::_exit(0);
    }
    $self->{pid} = $pid;
    my $deadline = time + 10;
    while (time < $deadline) {
        if (waitpid($pid, POSIX::WNOHANG()) == $pid) {
            delete $self->{pid};
            die "test hub exited at start:\n" . $self->log_text;
        }
        my $r = $self->{http}->get($self->_control_url('ping'));
        return $self if $r->{success} && $r->{content} eq 'pong';
        sleep 0.02;
    }
    die "test hub did not listen on $self->{port}:\n" . $self->log_text;
}

# graceful end: the child exits (its sockets end without close frames)
sub stop {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return;
    kill 'TERM', $pid;
    waitpid($pid, 0);
}

# the hub dies at once (SIGKILL)
sub crash {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return;
    kill 'KILL', $pid;
    waitpid($pid, 0);
}

sub restart { my ($self) = @_; $self->crash; $self->start }

sub DESTROY {
    my ($self) = @_;
    local $?;
    $self->crash if $self->{pid};
}

sub log_text {
    my ($self) = @_;
    open my $f, '<', "$self->{dir}/hub.log" or return '';
    local $/;
    return <$f> // '';
}

sub _post {
    my ($self, $path, $body) = @_;
    die "test hub not running" unless $self->{pid};
    my $r = $self->{http}->post($self->_control_url($path), {
        headers => { 'Content-Type' => 'application/json' },
        content => encode_json($body),
    });
    die "test hub control $path failed: $r->{status} $r->{content}"
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

sub close_all { my ($self, %a) = @_; return $self->action('close', code => 1001, %a) }
sub drop      { my ($self, %a) = @_; return $self->action('drop', %a) }
sub refuse {
    my ($self, %a) = @_;
    # a refusal ended now is not resumed by a later restart
    delete $self->{opts}{refuse} unless $a{status} && ($a{count} // -1);
    return $self->action('refuse', %a);
}
sub pause     { my ($self, %a) = @_; return $self->action('pause', %a) }
sub resume    { my ($self, %a) = @_; return $self->action('resume', %a) }
sub inject    { my ($self, %a) = @_; return $self->action('send', %a) }

# the open sockets: [{conn, uid, role, name, target, paused, since}];
# filters: uid => U, role => bridge|client
sub sockets {
    my ($self, %f) = @_;
    die "test hub not running" unless $self->{pid};
    my $r = $self->{http}->get($self->_control_url('sockets'));
    die "test hub control sockets failed: $r->{status} $r->{content}"
        unless $r->{success};
    my @s = @{ decode_json($r->{content})->{sockets} };
    for my $k (keys %f) {
        @s = grep { defined $_->{$k} && $_->{$k} eq $f{$k} } @s;
    }
    return @s;
}

# the bridge's open sockets (of one uid)
sub bridges {
    my ($self, $uid) = @_;
    return $self->sockets(role => 'bridge', defined $uid ? (uid => $uid) : ());
}

# every record so far, oldest first; ->records(kind => 'frame', ...)
# keeps those whose fields equal the given values
sub records {
    my ($self, %match) = @_;
    open my $f, '<', $self->{records_file} or return ();
    my @r;
    while (my $line = <$f>) {
        next unless $line =~ /\n\z/;
        my $rec = eval { decode_json($line) } or next;
        next if grep { !defined $rec->{$_} || $rec->{$_} ne $match{$_} }
                keys %match;
        push @r, $rec;
    }
    close $f;
    return @r;
}

sub clear_records { truncate $_[0]{records_file}, 0 }

sub upgrades { my ($self, %m) = @_; return $self->records(%m, kind => 'upgrade') }

# frame records: frames(dir => 'in', role => 'bridge', type => 'complete')
sub frames { my ($self, %m) = @_; return $self->records(%m, kind => 'frame') }

# the frames a bridge socket sent the hub (the module's replies), decoded
# when they are JSON: [{conn, uid, op, json, payload}]
sub bridge_sent {
    my ($self, %m) = @_;
    return map { { %$_, json => (defined $_->{payload}
                                 ? scalar(eval { decode_json($_->{payload}) }) : undef) } }
           $self->frames(%m, dir => 'in', role => 'bridge');
}

# one header of an upgrade record, by case-insensitive name: its values
sub header_values {
    my ($rec, $name) = @_;
    return map { $_->[1] } grep { lc $_->[0] eq lc $name } @{ $rec->{headers} };
}

sub wait_until {
    my ($self, $cond, $timeout) = @_;
    my $deadline = time + ($timeout // 5);
    for (;;) {
        my $v = $cond->();
        return $v if $v || time >= $deadline;
        sleep 0.02;
    }
}

# a user's raw socket (OCB::Raw), as OCB's ws(): ws(path => P, name => N,
# headers => {}); so that clients written for nginx (OCGateway::Client)
# can be users of the hub
sub ws {
    my ($self, %o) = @_;
    return OCB::Raw->connect($self->user_port, path => $o{path} // '/ws',
        headers => { Host => '127.0.0.1:' . $self->user_port,
                     'X-Hub-Client' => $o{name} // 'user',
                     %{ $o{headers} // {} } });
}

# a user of the hub: client(uid => U, name => N, path => P, headers => {})
sub client {
    my ($self, %o) = @_;
    return TestHub::Client->new($self, %o);
}

###########################################################################
# a user of the hub

package TestHub::Client;

# A plain WebSocket client of the hub (RelayClient's reading and waiting,
# over OCB::Raw): connects as uid U (/ws?uid=U on a rooms hub, /ws on an
# echo hub, or path => ...), sends messages and collects the replies that
# the bridge fans out through the hub.

use strict;
use warnings;

use Mojo::JSON qw(decode_json encode_json);
use Mojo::Util qw(url_escape);
use Time::HiRes qw(time);

our @ISA = ('RelayClient');

my $NCLIENT = 0;

sub new {
    my ($class, $hub, %o) = @_;
    my $name = $o{name} // 'user-' . ++$NCLIENT;
    my $path = $o{path}
        // ($hub->mode eq 'rooms' ? '/ws?uid=' . url_escape($o{uid} // '') : '/ws');
    my $raw = OCB::Raw->connect($hub->user_port, path => $path,
        headers => { Host => '127.0.0.1:' . $hub->user_port, 'X-Hub-Client' => $name,
                     %{ $o{headers} // {} } });
    die "no 101 from the hub: " . ($raw->status_line // 'nothing') . "\n"
        unless ($raw->status // 0) == 101;
    return bless { raw => $raw, frames => [], closed => undef, name => $name,
                   uid => $o{uid} }, $class;
}

sub name { $_[0]{name} }

# the replies (decoded) received so far for one id: progress, complete,
# error and control replies; not the messages of users echoed back
sub replies {
    my ($self, $id) = @_;
    my $k = ref $id ? encode_json($id) : $id;
    return grep { defined $_->{id} && (ref $_->{id} ? encode_json($_->{id}) : $_->{id}) eq $k
                  && is_reply($_) }
           map { $_->{json} // () } $self->frames;
}

# a frame the bridge wrote: a chat reply, or a control reply (data/error)
sub is_reply {
    my ($j) = @_;
    my $type = $j->{type} // '';
    return 1 if $type =~ /^(progress|complete|error)$/;
    return 1 if $type =~ /^session\./ && (exists $j->{data} || exists $j->{error});
    return 0;
}

# reads until each id has a complete or an error (a chat message) or, for
# a control id, a control reply; returns id => [its replies so far]
sub collect {
    my ($self, $ids, $timeout) = @_;
    my $deadline = time + ($timeout // 10);
    my $done = sub {
        for my $id (@$ids) {
            return 0 unless grep { ($_->{type} // '') !~ /^progress$/ }
                            $self->replies($id);
        }
        return 1;
    };
    until ($done->()) {
        $self->next_frame($deadline - time) or last;
    }
    return map { ($_ => [ $self->replies($_) ]) } @$ids;
}

# sends one chat message and waits for its end; returns its replies
sub ask {
    my ($self, $id, $content, %extra) = @_;
    $self->send_json({ id => $id, content => $content, %extra });
    my %r = $self->collect([$id], $extra{_timeout} // 10);
    return @{ $r{$id} };
}

# the terminal replies (complete or error) of an id so far
sub terminals {
    my ($self, $id) = @_;
    return grep { ($_->{type} // '') =~ /^(complete|error)$/ } $self->replies($id);
}

###########################################################################
# the hub, in the child

package TestHub::Server;

use strict;
use warnings;

use IO::Handle;
use JSON::PP ();
use Mojo::IOLoop;
use Mojo::JSON qw(decode_json encode_json);
use Mojo::Server::Daemon;
use Mojo::URL;
use Mojo::Util qw(url_unescape);
use Mojo::WebSocket qw(WS_TEXT WS_BINARY WS_CLOSE);
use Mojolicious;
use POSIX qw(strftime);
use Time::HiRes qw(time);

my ($CFG, $REC, %SOCKS, $NCONN, %REFUSE, $ECHO_JSON, $CONN_FILE);

sub record {
    my (%r) = @_;
    $r{t} = time;
    print $REC encode_json(\%r), "\n";
}

sub run {
    my ($class, $port, $opts, $file, $plain_port) = @_;
    $CFG = { %$opts };
    open $REC, '>>', $file or die "$file: $!";
    $REC->autoflush(1);
    # socket numbers go on across restarts: a record names one socket
    $CONN_FILE = "$file.nconn";
    $NCONN = 0;
    if (open my $f, '<', $CONN_FILE) { $NCONN = <$f> // 0; chomp $NCONN; close $f }
    %REFUSE = (status => 0, count => 0, clients => 0);
    # refusing from the first upgrade on (a hub that comes back refusing)
    %REFUSE = (status => 0, count => -1, clients => 0, %{ $CFG->{refuse} })
        if ref $CFG->{refuse} eq 'HASH' && $CFG->{refuse}{status};
    $ECHO_JSON = JSON::PP->new->utf8->canonical->space_after->allow_nonref(1);

    my $app = Mojolicious->new;
    $app->log->level('fatal');
    $app->secrets(['test-hub']);
    $app->max_request_size(0);
    my $r = $app->routes;

    $r->get('/_hub/ping' => sub { $_[0]->render(text => 'pong') });
    $r->post('/_hub/set' => sub {
        my $c = shift;
        my $o = $c->req->json // {};
        $CFG->{$_} = $o->{$_} for keys %$o;
        $c->render(json => $CFG);
    });
    $r->post('/_hub/action' => sub {
        my $c = shift;
        $c->render(json => control($c->req->json // {}));
    });
    $r->get('/_hub/sockets' => sub {
        my $c = shift;
        $c->render(json => { sockets => [
            map { { conn => $_->{n}, uid => $_->{uid}, role => $_->{role},
                    name => $_->{name}, target => $_->{target},
                    paused => $_->{paused} ? 1 : 0, since => $_->{since} } }
            sort { $a->{n} <=> $b->{n} } values %SOCKS ] });
    });
    $r->get('/health' => sub { $_[0]->render(text => 'OK') });
    $r->any('/*any' => { any => '' } => \&upgrade);
    $r->any('/' => \&upgrade);

    my @listen = ("http://127.0.0.1:$port");
    if ($CFG->{tls_cert}) {
        my $u = Mojo::URL->new("https://127.0.0.1:$port");
        $u->query(cert => $CFG->{tls_cert}, key => $CFG->{tls_key});
        @listen = ("$u", "http://127.0.0.1:$plain_port");
    }
    my $daemon = Mojo::Server::Daemon->new(
        app => $app, listen => \@listen, silent => 1,
        inactivity_timeout => 0, max_clients => 10000);
    $daemon->start;
    Mojo::IOLoop->start;
    undef $daemon;
}

sub upgrade {
    my ($c) = @_;
    my $req = $c->req;
    my $target = $req->url->path_query;
    my @headers;
    my $h = $req->headers;
    for my $name (@{ $h->names }) {
        push @headers, [$name, $_] for @{ $h->every_header($name) };
    }
    my $name = $h->header('X-Hub-Client');
    my $role = defined $name ? 'client' : 'bridge';
    my $n = ++$NCONN;
    if (open my $f, '>', $CONN_FILE) { print $f $NCONN; close $f }

    # the uid, as each hub finds it
    my $path = $req->url->path->to_string;
    my ($uid, $bad);
    if ($CFG->{mode} eq 'rooms') {
        if ($path =~ m{^/ws/([^/]+)/?$}) {
            $uid = url_unescape($1);
        } elsif ($path =~ m{^/ws/?$}) {
            $uid = $req->url->query->param('uid');
        } else {
            $bad = [404, 'Not found'];
        }
        $bad //= [400, encode_json({ error => 'UID is required. Use /ws?uid=xxx or /ws/xxx' }),
                  'application/json']
            unless defined $uid && length $uid;
    } else {
        $bad = [400, 'Bad Request'] unless $path eq '/ws';
    }

    my $stream = Mojo::IOLoop->stream($c->tx->connection);
    my $tls = $stream && $stream->handle->isa('IO::Socket::SSL') ? 1 : 0;
    record(kind => 'upgrade', conn => $n, tls => $tls,
           request_line => $req->method . ' ' . $target . ' HTTP/' . $req->version,
           method => $req->method, target => $target, version => $req->version,
           headers => \@headers, uid => $uid, role => $role, name => $name,
           remote => $c->tx->remote_address);

    my $refuse = sub {
        my ($status, $body, $type) = @_;
        record(kind => 'refused', conn => $n, status => $status,
               reason => substr($body, 0, 200), role => $role);
        $c->res->headers->content_type($type // 'text/plain');
        $c->res->headers->connection('close');
        return $c->render(data => $body, status => $status);
    };

    return $refuse->(@$bad) if $bad;

    # the Cloudflare hub compares the header's value case-sensitively
    my $upgrade = $h->upgrade // '';
    if (($CFG->{mode} eq 'rooms' && $upgrade ne 'websocket') || !$c->tx->is_websocket) {
        return $refuse->(426, 'Expected Upgrade: websocket');
    }

    if ($REFUSE{status} && $REFUSE{count} && ($role eq 'bridge' || $REFUSE{clients})) {
        $REFUSE{count}-- if $REFUSE{count} > 0;
        my $st = $REFUSE{status};
        return $refuse->($st, $REFUSE{body} // ($st == 503 ? 'hub unavailable'
                                                : "refused by the test hub ($st)"));
    }

    my $tx = $c->tx;
    bless $tx, 'TestHub::WS';          # our own handling of close frames
    $c->inactivity_timeout(0);
    $tx->max_websocket_size($CFG->{max_size});

    my $sock = $SOCKS{$n} = {
        n => $n, c => $c, tx => $tx, uid => $CFG->{mode} eq 'rooms' ? $uid : undef,
        role => $role, name => $name, target => $target, since => time,
    };
    $tx->{hub_sock} = $sock;

    $tx->on(text => sub { frame_in($sock, WS_TEXT, $_[1]) });
    $tx->on(binary => sub { frame_in($sock, WS_BINARY, $_[1]) });
    $tx->on(finish => sub {
        my ($tx, $code, $reason) = @_;
        record(kind => 'closed', conn => $n, code => $code, reason => $reason,
               uid => $sock->{uid}, role => $role);
        delete $SOCKS{$n};
    });
    $c->rendered(101);
    record(kind => 'open', conn => $n, uid => $sock->{uid}, role => $role,
           name => $name);

    if ($CFG->{mode} eq 'echo') {
        my $hello = echo_encode({
            type => 'connected',
            connectionId => sprintf('conn-%d-%d', time * 1000, $n),
            timestamp => strftime('%Y-%m-%dT%H:%M:%S.000Z', gmtime) });
        out($sock, WS_TEXT, $hello);
    }
}

# JSON as the echo hub writes it: keys sorted, a space after ":" and ","
# (never the bytes a compact writer sends)
sub echo_encode {
    my ($v) = @_;
    if (ref $v eq 'HASH') {
        return '{' . join(', ', map { $ECHO_JSON->encode($_) . ': ' . echo_encode($v->{$_}) }
                                sort keys %$v) . '}';
    }
    if (ref $v eq 'ARRAY') {
        return '[' . join(', ', map { echo_encode($_) } @$v) . ']';
    }
    return $ECHO_JSON->encode($v);
}

sub json_fields {
    my ($bytes) = @_;
    my $j = length $bytes <= 1024 * 1024 ? eval { decode_json($bytes) } : undef;
    if (ref $j eq 'HASH') {
        return ((defined $j->{type} && !ref $j->{type} ? (type => $j->{type}) : ()),
                (defined $j->{id} ? (id => $j->{id}) : ()));
    }
    if (!defined $j && length $bytes > 1024 * 1024) {
        my $head = substr($bytes, 0, 4096);
        my ($type) = $head =~ /"type"\s*:\s*"([^"]*)"/;
        my ($id) = $head =~ /"id"\s*:\s*"?([^",}]*)/;
        return ((defined $type ? (type => $type) : ()), (defined $id ? (id => $id) : ()));
    }
    return ();
}

sub frame_record {
    my ($sock, $dir, $op, $bytes) = @_;
    my $whole = length $bytes <= $CFG->{record_max};
    record(kind => 'frame', conn => $sock->{n}, dir => $dir, op => $op,
           uid => $sock->{uid}, role => $sock->{role}, len => length $bytes,
           ($whole ? (payload => $bytes)
                   : (head => substr($bytes, 0, 256), truncated => 1)),
           json_fields($bytes));
}

sub out {
    my ($sock, $op, $bytes) = @_;
    return unless $SOCKS{ $sock->{n} };
    frame_record($sock, 'out', $op, $bytes);
    $sock->{tx}->send([1, 0, 0, 0, $op, $bytes]);
}

sub frame_in {
    my ($sock, $op, $bytes) = @_;
    frame_record($sock, 'in', $op, $bytes);
    if ($CFG->{mode} eq 'rooms') {
        for my $other (sort { $a->{n} <=> $b->{n} } values %SOCKS) {
            next if $other == $sock;
            next unless defined $other->{uid} && $other->{uid} eq $sock->{uid};
            out($other, $op, $bytes);
        }
        return;
    }
    my $j = eval { $ECHO_JSON->decode($bytes) };
    if (!defined $j) {
        record(kind => 'dropped', conn => $sock->{n}, why => 'not JSON',
               head => substr($bytes, 0, 200));
        return;
    }
    my $text = echo_encode($j);
    out($_, WS_TEXT, $text) for sort { $a->{n} <=> $b->{n} } values %SOCKS;
}

# the sockets an action applies to
sub select_socks {
    my ($arg) = @_;
    my $role = $arg->{role} // 'bridge';
    return grep {
        ($role eq 'all' || $_->{role} eq $role)
        && (!defined $arg->{uid} || (defined $_->{uid} && $_->{uid} eq $arg->{uid}))
        && (!defined $arg->{conn} || $_->{n} == $arg->{conn})
    } sort { $a->{n} <=> $b->{n} } values %SOCKS;
}

sub control {
    my ($arg) = @_;
    my $name = $arg->{action} // '';
    my @socks = select_socks($arg);
    my @conns = map { $_->{n} } @socks;

    if ($name eq 'close') {
        record(kind => 'action', action => 'close', conns => \@conns,
               code => $arg->{code});
        $_->{tx}->finish($arg->{code} // 1001, $arg->{reason} // '') for @socks;
        return { ok => 1, conns => \@conns };
    }
    if ($name eq 'drop') {
        record(kind => 'action', action => 'drop', conns => \@conns);
        for my $s (@socks) {
            my $stream = Mojo::IOLoop->stream($s->{tx}->connection);
            $stream->close if $stream;
        }
        return { ok => 1, conns => \@conns };
    }
    if ($name eq 'refuse') {
        %REFUSE = (status => $arg->{status} // 0, count => $arg->{count} // -1,
                   clients => $arg->{clients} // 0, body => $arg->{body});
        %REFUSE = (status => 0, count => 0, clients => 0)
            if !$REFUSE{status} || !$REFUSE{count};
        record(kind => 'action', action => 'refuse', status => $REFUSE{status},
               count => $REFUSE{count});
        return { ok => 1 };
    }
    if ($name eq 'pause' || $name eq 'resume') {
        for my $s (@socks) {
            my $stream = Mojo::IOLoop->stream($s->{tx}->connection) or next;
            if ($name eq 'pause') {
                next if $s->{paused};
                $stream->stop;
                $s->{paused} = 1;
            } else {
                next unless $s->{paused};
                $stream->start;
                $s->{paused} = 0;
            }
        }
        record(kind => 'action', action => $name, conns => \@conns);
        return { ok => 1, conns => \@conns };
    }
    if ($name eq 'send') {
        my $op = $arg->{op} // 'text';
        $op = $op eq 'text' ? WS_TEXT : $op eq 'binary' ? WS_BINARY
            : $op eq 'ping' ? 9 : 0 + $op;
        my $bytes;
        if (exists $arg->{json}) {
            $bytes = encode_json($arg->{json});
        } elsif (my $big = $arg->{big}) {
            my $head = encode_json({ id => $big->{id} // 'big' });
            $head =~ s/\}$/,"content":"/;
            my $fill = $big->{size} - length($head) - 2;
            $bytes = $head . ('x' x ($fill > 0 ? $fill : 0)) . '"}';
        } elsif (defined $arg->{hex}) {
            ($bytes = $arg->{hex}) =~ s/\s+//g;
            $bytes = pack('H*', $bytes);
        } else {
            $bytes = $arg->{payload} // '';
        }
        record(kind => 'action', action => 'send', conns => \@conns,
               op => $op, len => length $bytes);
        my $n = $arg->{fragments} // 1;
        for my $sock (@socks) {
            if ($n <= 1) {
                out($sock, $op, $bytes);
                next;
            }
            # the message in $n frames: the first with its opcode, then
            # continuations, FIN on the last
            frame_record($sock, 'out', $op, $bytes);
            my $size = int(length($bytes) / $n) || 1;
            for my $i (0 .. $n - 1) {
                my $part = $i == $n - 1 ? substr($bytes, $i * $size)
                                        : substr($bytes, $i * $size, $size);
                $sock->{tx}->send([$i == $n - 1 ? 1 : 0, 0, 0, 0, $i ? 0 : $op, $part]);
            }
        }
        return { ok => 1, conns => \@conns, len => length $bytes };
    }
    return { ok => 0, error => "unknown action \"$name\"" };
}

###########################################################################
# a hub socket: close frames are answered, or only recorded when
# no_close_reply is set (the Cloudflare hub never answers them)

package TestHub::WS;

use strict;
use warnings;

use Mojo::WebSocket qw(WS_CLOSE);
use Mojo::Util qw(decode);

our @ISA = ('Mojo::Transaction::WebSocket');

sub parse_message {
    my ($self, $frame) = @_;
    if ($frame->[4] == 10) {
        my $sock = $self->{hub_sock};
        TestHub::Server::record(kind => 'pong', conn => $sock ? $sock->{n} : undef,
                                payload => $frame->[5]);
    }
    if ($frame->[4] == WS_CLOSE) {
        my $p = $frame->[5];
        my ($code, $reason) = length $p >= 2
            ? (unpack('n', $p), decode('UTF-8', substr($p, 2)) // '') : (undef, '');
        my $sock = $self->{hub_sock};
        my $answer = !$CFG->{no_close_reply};
        TestHub::Server::record(kind => 'close_frame', conn => $sock ? $sock->{n} : undef,
                                code => $code, reason => $reason,
                                answered => $answer ? 1 : 0);
        if (!$answer) {
            # keep the socket, answer nothing; ignore what else comes
            $self->{hub_closing} = 1;
            return undef;
        }
    }
    return undef if $self->{hub_closing};
    return $self->SUPER::parse_message($frame);
}

1;
