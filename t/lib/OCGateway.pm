package OCGateway;

# A real OpenClaw gateway for a test (gateway-protocol.md, section 13):
# Node 24 and the gateway releases come from the cache that
# t/gateway/install.sh fills; each gateway gets a fresh OPENCLAW_HOME
# (and HOME) under build/t/, its own free port, token auth, and a fake
# model provider (t/gateway/fake-model.pl) on a free port of its own.
# Both run as direct children and are stopped by PID; so are the helper
# processes the gateway starts, if they outlive it.
#
#   my $gw = OCGateway->new(version => 4);     # started: /readyz is 200
#   $gw->port; $gw->url; $gw->token; $gw->home; $gw->model_url;
#   $gw->model(delay_ms => 500);               # fake model knobs
#   $gw->restart; $gw->kill; $gw->start; $gw->stop; $gw->stop_all;
#   $gw->spy;                                  # record what it broadcasts
#   $gw->idle(sub { ... });                    # run while waiting on it
#   my $ngx = $gw->nginx(workers => 2);        # OCB nginx relaying to it
#
# With netns => NAME and host => ADDRESS, the gateway, its fake model
# and its CLI run inside that network namespace (ip netns exec), talking
# to each other over the namespace's loopback; the test, in the root
# namespace, reaches the gateway and the model at ADDRESS, an address of
# the namespace (url, model_url, /readyz, the spy, nginx()).
#
# The one thing shared between homes is the stage of the bundled
# plugins' runtime dependencies (OPENCLAW_PLUGIN_STAGE_DIR, under
# build/t/): package files that 2026.4.26 otherwise copies into every
# home (800 MB, a minute or two), not gateway state.
#
# OCGateway::Client, below, is a WebSocket client of nginx for these
# tests: JSON messages out, replies sorted by message id, and checks of
# a message's replies.

use strict;
use warnings;

use File::Basename qw(basename dirname);
use File::Path qw(make_path remove_tree);
use HTTP::Tiny;
use IO::Socket::INET;
use Mojo::IOLoop;
use Mojo::JSON qw(decode_json encode_json);
use Mojo::UserAgent;
use POSIX qw(:sys_wait_h);
use Test::More;
use Time::HiRes qw(sleep time);

use RelayClient ();

use OCB;

# gateway texts (emoji in /status, for one) go to the TAP output
binmode Test::More->builder->$_, ':encoding(UTF-8)'
    for qw(output failure_output todo_output);

our $TOKEN = 'ocb-test-token-0123456789abcdef';
my $count = 0;

my %APP = (4 => { dir => 'app-v4', version => '2026.9.6' },
           3 => { dir => 'app-v3', version => '2026.4.26' });

# read once: the children get another HOME
our $CACHE = $ENV{OCB_CACHE} // "$ENV{HOME}/.cache/openclaw-bridge";

sub cache { return $CACHE }

our $STAGE = OCB::top() . '/build/t/openclaw-plugin-stage';

sub node { return cache() . '/node24/package/bin/node' }

sub entry {
    my ($version) = @_;
    return cache() . "/$APP{$version}{dir}/node_modules/openclaw/openclaw.mjs";
}

# The Makefile installs the cache before the tests run: a missing cache
# is a broken set-up, not a reason to skip.
sub require_cache {
    my (@versions) = @_;
    my @missing;
    push @missing, node() unless -x node();
    for my $v (@versions) {
        my $pkg = cache() . "/$APP{$v}{dir}/node_modules/openclaw/package.json";
        if (!-f entry($v) || !-f $pkg) {
            push @missing, entry($v);
            next;
        }
        open my $f, '<', $pkg or die "$pkg: $!";
        local $/;
        my $json = decode_json(<$f>);
        close $f;
        push @missing, "$pkg (version $json->{version}, "
                       . "expected $APP{$v}{version})"
            unless ($json->{version} // '') eq $APP{$v}{version};
    }
    return unless @missing;
    BAIL_OUT('OpenClaw gateway cache incomplete (run t/gateway/install.sh '
             . cache() . '): ' . join ', ', @missing);
}

# new(version => 4|3, token => ..., model_env => {FAKE_MODEL_...},
#     gateway_env => {NAME => value, ...}, ready_timeout => seconds (150),
#     bind => 'lan' (gateway.bind; 'loopback' by default), no_start => 1,
#     model_input => ['text', 'image'] (what the fake model takes; text),
#     netns => NAME, host => ADDRESS (see the top))
sub new {
    my ($class, %o) = @_;
    my $self = bless { version => 4, token => $TOKEN, %o }, $class;

    require_cache($self->{version});

    $self->{dir} = OCB::top() . '/build/t/' . basename($0, '.t')
                   . "-$$-gw" . $count++;
    $self->{home} = "$self->{dir}/home";
    remove_tree($self->{dir});
    make_path("$self->{home}/.openclaw/workspace");

    # the gateway also listens on port + 2 (browser control)
    $self->{port} = free_port_block(3);
    $self->{model_port} = OCB::free_port();
    $self->{model_port} = OCB::free_port()
        while $self->{model_port} >= $self->{port}
              && $self->{model_port} <= $self->{port} + 2;

    $self->write_config;
    $self->start_model;
    $self->start unless $o{no_start};
    return $self;
}

# a free port P with P + 1 .. P + $n - 1 free as well
sub free_port_block {
    my ($n) = @_;
    for (1 .. 100) {
        my $port = OCB::free_port();
        next if $port + $n - 1 > 65535;
        my @held;
        for my $p ($port + 1 .. $port + $n - 1) {
            my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                          LocalPort => $p, Proto => 'tcp',
                                          Listen => 1, ReuseAddr => 1)
                or last;
            push @held, $s;
        }
        my $ok = @held == $n - 1;
        close $_ for @held;
        return $port if $ok;
    }
    die "no block of $n free ports";
}

sub version { $_[0]{version} }
sub port { $_[0]{port} }
sub host { $_[0]{host} // '127.0.0.1' }
sub netns { $_[0]{netns} }
sub url { "ws://" . $_[0]->host . ":$_[0]{port}" }
sub token { $_[0]{token} }
sub home { $_[0]{home} }
sub dir { $_[0]{dir} }
sub pid { $_[0]{pid} }
sub model_port { $_[0]{model_port} }
sub model_url { "http://" . $_[0]->host . ":$_[0]{model_port}" }

# what runs a command in the gateway's network namespace: nothing, or
# ip netns exec NAME (which execs the command: the PID stays the same)
sub in_netns {
    my ($self) = @_;
    return $self->{netns} ? ('ip', 'netns', 'exec', $self->{netns}) : ();
}

# A namespace has no way out: npm, which 2026.4.26 runs to stage its
# bundled plugins' runtime dependencies when the stage lacks them, would
# retry the registry for minutes; offline, it gives up at once and the
# gateway starts without those plugins (none of which the tests use).
sub netns_env {
    my ($self) = @_;
    return $self->{netns} ? (npm_config_offline => 'true') : ();
}

sub write_config {
    my ($self) = @_;
    my $config = {
        gateway => {
            mode => 'local', port => $self->{port} + 0,
            bind => $self->{bind} // 'loopback',
            auth => { mode => 'token', token => $self->{token} },
        },
        models => {
            mode => 'merge',
            providers => {
                fake => {
                    # over the loopback of the gateway's namespace
                    baseUrl => "http://127.0.0.1:$self->{model_port}/v1",
                    apiKey => 'fake-local',
                    api => 'openai-completions',
                    models => [{
                        id => 'fake-model', name => 'Fake Model',
                        reasoning => Mojo::JSON->false,
                        input => $self->{model_input} // ['text'],
                        cost => { input => 0, output => 0, cacheRead => 0,
                                  cacheWrite => 0 },
                        contextWindow => 128000, maxTokens => 4096,
                    }],
                },
            },
        },
        agents => {
            defaults => {
                model => { primary => 'fake/fake-model' },
                workspace => "$self->{home}/.openclaw/workspace",
            },
        },
        logging => { file => "$self->{home}/gateway-file.log" },
        # in a namespace npm cannot fetch what the bundled plugins need
        ($self->{netns} ? (plugins => { enabled => Mojo::JSON->false }) : ()),
    };
    open my $f, '>', "$self->{home}/.openclaw/openclaw.json" or die $!;
    print $f encode_json($config);
    close $f;
}

sub spawn {
    my ($self, $out, $env, @cmd) = @_;
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        @ENV{keys %$env} = values %$env;
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', $out or POSIX::_exit(127);
        open STDERR, '>&', \*STDOUT;
        exec($self->in_netns, @cmd) or POSIX::_exit(127);
    }
    return $pid;
}

sub start_model {
    my ($self) = @_;
    my $script = OCB::top() . '/t/gateway/fake-model.pl';
    $self->{model_pid} = $self->spawn("$self->{dir}/fake-model.out",
                                      $self->{model_env} // {},
                                      $^X, $script, $self->{model_port},
                                      "$self->{dir}/model-requests.jsonl",
                                      $self->{host} ? $self->{host} : ());
    my $http = HTTP::Tiny->new(timeout => 2);
    my $deadline = time + 20;
    while (time < $deadline) {
        if (waitpid($self->{model_pid}, WNOHANG) == $self->{model_pid}) {
            delete $self->{model_pid};
            die "fake model exited at start:\n"
                . slurp("$self->{dir}/fake-model.out");
        }
        return if $http->get($self->model_url . '/v1/models')->{success};
        sleep 0.1;
    }
    die "fake model did not listen on $self->{model_port}";
}

# fake model knobs: delay_ms, status, hang; returns its counters
sub model {
    my ($self, %set) = @_;
    my $http = HTTP::Tiny->new(timeout => 5);
    my $r = %set
        ? $http->post($self->model_url . '/control',
                      { content => encode_json(\%set),
                        headers => { 'Content-Type' => 'application/json' } })
        : $http->get($self->model_url . '/control');
    die "fake model control: $r->{status} $r->{content}" unless $r->{success};
    return decode_json($r->{content});
}

# the request bodies the fake model received, oldest first
sub model_requests {
    my ($self) = @_;
    my @r;
    open my $f, '<', "$self->{dir}/model-requests.jsonl" or return ();
    while (<$f>) {
        my $j = eval { decode_json($_) } or next;
        push @r, $j->{body};
    }
    close $f;
    return @r;
}

sub start {
    my ($self, %o) = @_;
    die "gateway already running" if $self->{pid};
    my $env = {
        OPENCLAW_HOME => $self->{home},
        HOME => $self->{home},
        PATH => dirname(node()) . ":$ENV{PATH}",
        # staged once, shared by every test home (see the top)
        OPENCLAW_PLUGIN_STAGE_DIR => $STAGE,
        OPENCLAW_GATEWAY_TOKEN => undef,
        OPENCLAW_GATEWAY_PASSWORD => undef,
        OPENCLAW_CONFIG_PATH => undef,
        OPENCLAW_STATE_DIR => undef,
        OPENCLAW_GATEWAY_PORT => undef,
        $self->netns_env,
        %{ $self->{gateway_env} // {} },
    };
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        for my $k (keys %$env) {
            if (defined $env->{$k}) { $ENV{$k} = $env->{$k} }
            else { delete $ENV{$k} }
        }
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', "$self->{dir}/gateway.out" or POSIX::_exit(127);
        open STDERR, '>&', \*STDOUT;
        exec($self->in_netns, node(), entry($self->{version}),
             'gateway', 'run')
            or POSIX::_exit(127);
    }
    $self->{pid} = $pid;
    $self->{starts}++;
    $self->wait_ready($o{timeout} // $self->{ready_timeout} // 150);
    return $self;
}

# runs the gateway's own CLI ("devices", "list", "--json", ...) against
# this gateway's home, as an operator on the gateway host (in its
# network namespace, if it has one); returns its output and exit status
sub cli {
    my ($self, @args) = @_;
    my $out = "$self->{dir}/cli.out";
    my $pid = $self->spawn($out . '.tmp', {
        OPENCLAW_HOME => $self->{home}, HOME => $self->{home},
        PATH => dirname(node()) . ":$ENV{PATH}",
        OPENCLAW_PLUGIN_STAGE_DIR => $STAGE,
        $self->netns_env,
    }, node(), entry($self->{version}), @args);
    my $deadline = time + 120;
    my $done = 0;
    while (time < $deadline) {
        if (waitpid($pid, WNOHANG) == $pid) { $done = 1; last }
        $self->pause(0.2);
    }
    if (!$done) { CORE::kill('KILL', $pid); waitpid($pid, 0) }
    my $rc = $? >> 8;
    my $text = slurp($out . '.tmp');
    unlink $out . '.tmp';
    open my $f, '>>', $out;
    print $f "\$ openclaw @args (exit $rc)\n$text\n";
    close $f;
    return wantarray ? ($text, $rc) : $text;
}

# polls GET /readyz until 200
sub wait_ready {
    my ($self, $timeout) = @_;
    my $http = HTTP::Tiny->new(timeout => 2);
    my $t0 = time;
    my $deadline = $t0 + $timeout;
    while (time < $deadline) {
        if (waitpid($self->{pid}, WNOHANG) == $self->{pid}) {
            delete $self->{pid};
            die "gateway v$self->{version} exited at start:\n"
                . tail(slurp("$self->{dir}/gateway.out"), 40);
        }
        my $r = $http->get("http://" . $self->host . ":$self->{port}/readyz");
        if ($r->{status} == 200) {
            $self->{ready_after} = time - $t0;
            return $self->{ready_after};
        }
        $self->pause(0.25);
    }
    die sprintf "gateway v%d not ready after %d s:\n%s", $self->{version},
        $timeout, tail(slurp("$self->{dir}/gateway.out"), 40);
}

sub ready_after { $_[0]{ready_after} }

# idle(sub { my ($seconds) = @_; ... }): what to do instead of sleeping
# while waiting for the gateway to start or stop, such as keeping
# WebSocket clients answered
sub idle {
    my ($self, $cb) = @_;
    $self->{idle} = $cb;
}

sub pause {
    my ($self, $seconds) = @_;
    return $self->{idle}->($seconds) if $self->{idle};
    sleep $seconds;
}

sub alive { my ($self) = @_; return $self->{pid} && CORE::kill(0, $self->{pid}) }

# the processes below $pid, from /proc
sub descendants {
    my ($pid) = @_;
    my %kids;
    for my $d (glob '/proc/[0-9]*') {
        open my $f, '<', "$d/stat" or next;
        my $stat = <$f>;
        close $f;
        next unless $stat && $stat =~ /\)\s+\S+\s+(\d+)/;
        push @{ $kids{$1} }, basename($d);
    }
    my @all;
    my @todo = ($pid);
    while (@todo) {
        my $p = shift @todo;
        for my $k (@{ $kids{$p} // [] }) {
            push @all, $k;
            push @todo, $k;
        }
    }
    return @all;
}

# TERM, a wait, then KILL; helpers the gateway started are reaped by it
# on TERM, and ended by their PIDs if they outlive it
sub stop_pid {
    my ($pid, $timeout, $pause) = @_;
    return 0 unless $pid;
    CORE::kill 'TERM', $pid;
    my $deadline = time + $timeout;
    while (time < $deadline) {
        return 1 if waitpid($pid, WNOHANG) == $pid;
        $pause ? $pause->(0.05) : sleep 0.05;
    }
    CORE::kill 'KILL', $pid;
    waitpid($pid, 0);
    return 0;
}

sub end_helpers {
    my (@helpers) = @_;
    my @alive = grep { CORE::kill 0, $_ } @helpers;
    return unless @alive;
    CORE::kill 'TERM', @alive;
    my $deadline = time + 5;
    while (time < $deadline && (@alive = grep { CORE::kill 0, $_ } @alive)) {
        sleep 0.05;
    }
    CORE::kill 'KILL', @alive if @alive;
}

# stops the gateway (TERM, then KILL after $timeout); true if it exited
# on TERM
sub stop {
    my ($self, %o) = @_;
    my $pid = delete $self->{pid} or return 1;
    my @helpers = descendants($pid);
    my $clean = stop_pid($pid, $o{timeout} // 30,
                         sub { $self->pause(@_) });
    end_helpers(@helpers);
    return $clean;
}

# SIGKILL: no shutdown event, no close frame
sub kill {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return;
    my @helpers = descendants($pid);
    CORE::kill 'KILL', $pid;
    waitpid($pid, 0);
    end_helpers(@helpers);
}

sub restart {
    my ($self, %o) = @_;
    $self->stop(%o);
    return $self->start(%o);
}

# A second operator connection that writes every frame the gateway sends
# it to spy.jsonl, as {t, frame}: what the gateway broadcast, for
# diagnostics.  It reconnects every second while the gateway is away.
sub spy {
    my ($self) = @_;
    return if $self->{spy_pid};
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        eval { spy_main($self->url, $self->{token}, "$self->{dir}/spy.jsonl") };
        POSIX::_exit(0);
    }
    $self->{spy_pid} = $pid;
}

sub spy_main {
    my ($url, $token, $file) = @_;
    require Mojo::UserAgent;
    require Mojo::IOLoop;
    open my $out, '>>', $file or die "$file: $!";
    $out->autoflush(1);
    $SIG{TERM} = sub { Mojo::IOLoop->stop };
    my $ua = Mojo::UserAgent->new(inactivity_timeout => 0,
                                  connect_timeout => 5);
    my $n = 0;
    my $connect;
    $connect = sub {
        $ua->websocket("$url/" => sub {
            my ($ua, $tx) = @_;
            if (!$tx->is_websocket) {
                Mojo::IOLoop->timer(1 => $connect);
                return;
            }
            $n++;
            $tx->max_websocket_size(64 << 20);
            print $out encode_json({ t => time, open => $n }), "\n";
            $tx->on(text => sub {
                my ($tx, $text) = @_;
                my $f = eval { decode_json($text) } // { raw => $text };
                print $out encode_json({ t => time, frame => $f }), "\n";
                return unless ($f->{event} // '') eq 'connect.challenge';
                $tx->send(encode_json({
                    type => 'req', id => 'spy-connect', method => 'connect',
                    params => {
                        minProtocol => 3, maxProtocol => 4,
                        client => { id => 'gateway-client',
                                    displayName => 'ocb-test-spy',
                                    version => '0.0.1', platform => 'linux',
                                    mode => 'backend',
                                    instanceId => "ocb-spy-$$" },
                        role => 'operator', scopes => ['operator.read'],
                        caps => [], auth => { token => $token },
                    } }));
            });
            $tx->on(finish => sub {
                my ($tx, $code) = @_;
                print $out encode_json({ t => time, close => $code }), "\n";
                Mojo::IOLoop->timer(1 => $connect);
            });
        });
    };
    $connect->();
    Mojo::IOLoop->start;
}

# the spy's frames: list of {t, frame} (or {t, open}/{t, close})
sub spy_frames {
    my ($self) = @_;
    my @r;
    open my $f, '<', "$self->{dir}/spy.jsonl" or return ();
    while (<$f>) {
        my $j = eval { decode_json($_) } or next;
        push @r, $j;
    }
    close $f;
    return @r;
}

# chat events the spy saw, optionally only those of one session key
sub spy_chat {
    my ($self, $session) = @_;
    return grep {
        my $f = $_->{frame};
        $f && ($f->{event} // '') eq 'chat'
           && (!defined $session
               || ($f->{payload}{sessionKey} // '') eq $session)
    } $self->spy_frames;
}

# one line per chat event: time, run, state, text
sub spy_summary {
    my ($self, $session, $t0) = @_;
    my @l;
    for my $e ($self->spy_chat($session)) {
        my $p = $e->{frame}{payload};
        my $text = '';
        my $c = ref $p->{message} eq 'HASH' ? $p->{message}{content} : undef;
        $text = ref $c eq 'ARRAY'
            ? join('', map { $_->{text} // '' } @$c) : $c // '';
        push @l, sprintf '%7.2f %s %s %s %s%s%s', $e->{t} - ($t0 // 0),
            $p->{sessionKey} // '-', $p->{runId} // '-', $p->{state} // '-',
            defined $p->{deltaText} ? "delta=" . encode_json($p->{deltaText}) . ' ' : '',
            length $text ? 'text=' . encode_json($text) : '',
            $p->{errorMessage} ? ' error=' . encode_json($p->{errorMessage}) : '';
    }
    return @l;
}

sub stop_all {
    my ($self) = @_;
    if (my $pid = delete $self->{spy_pid}) {
        stop_pid($pid, 5);
    }
    my $clean = $self->stop;
    if (my $pid = delete $self->{model_pid}) {
        stop_pid($pid, 10);
    }
    # the bulky caches go (2026.9.6 unpacks its 50 MB control UI into
    # every home); logs, config and sessions stay for a look afterwards
    remove_tree("$self->{home}/.openclaw/cache",
                "$self->{home}/.openclaw/plugin-runtime-deps")
        if $self->{home};
    return $clean;
}

sub DESTROY {
    my ($self) = @_;
    local ($?, $!, $@);
    $self->stop_all;
}

sub log_text {
    my ($self) = @_;
    return slurp("$self->{dir}/gateway.out") . "\n"
         . slurp("$self->{home}/gateway-file.log");
}

sub slurp {
    my ($file) = @_;
    open my $f, '<', $file or return '';
    local $/;
    my $t = <$f>;
    close $f;
    return $t // '';
}

sub tail {
    my ($text, $n) = @_;
    my @l = split /\n/, $text;
    splice @l, 0, @l - $n if @l > $n;
    return join "\n", @l;
}

# nginx for these tests: $workers workers, "location /ws" relaying to
# this gateway; %o: extra => main-level directives, loc => location ones
sub nginx {
    my ($self, %o) = @_;
    my $extra = $o{extra} // '';
    my $loc = $o{loc} // '';
    # protocol 3 stalls for tens of seconds while a turn runs (13.9), and
    # longer on a busy machine: a chat.send is acknowledged only then
    $extra = "openclaw_gateway_request_timeout 120s;\n    $extra"
        unless $extra =~ /openclaw_gateway_request_timeout/;
    my $ngx = OCB->new(
        workers => $o{workers} // 2,
        http => <<"EOF");
    openclaw_gateway @{[ $self->url ]};
    openclaw_gateway_token $self->{token};
    $extra
    server {
        listen 127.0.0.1:%%PORT%%;
        location /ws {
            openclaw_bridge;
            $loc
        }
        location = /status {
            openclaw_bridge_status;
        }
    }
EOF
    return $ngx;
}

# every worker's gateway link as nginx's status shows it: {state, since,
# reconnects, last_error, ...}; () when the status cannot be read
sub link_states {
    my ($ngx) = @_;
    my $r = HTTP::Tiny->new(timeout => 5)->get($ngx->http_url('/status'));
    return () unless $r->{success};
    my $st = eval { decode_json($r->{content}) } or return ();
    return map { $_->{link} // {} } @{ $st->{workers} // [] };
}

# how many times nginx's workers logged that their link came up
sub links_up {
    my ($ngx, $protocol) = @_;
    my $re = qr/gateway link up, protocol \d+/;
    $re = qr/gateway link up, protocol $protocol\b/ if $protocol;
    my @l = grep { $_ =~ $re } split /\n/, $ngx->error_log;
    return scalar @l;
}

# waits until that count reaches $n; true if it did
sub wait_links {
    my ($ngx, $n, $timeout, $protocol) = @_;
    my $deadline = time + $timeout;
    while (time < $deadline) {
        return 1 if links_up($ngx, $protocol) >= $n;
        sleep 0.1;
    }
    return links_up($ngx, $protocol) >= $n;
}

# Diagnostics for a test that failed on client $c's replies to $id: the
# frames it got (with their time since $t0) and, given a session, the
# gateway's own chat events of that session as the spy saw them.
sub show {
    my ($self, $t0, $c, $id, $session) = @_;
    my @l = ("replies to $id on $c->{name}:",
             map { sprintf '  %.2f %s', $_->{t} - $t0, $_->{raw} }
             grep { ref $_->{json} eq 'HASH' && ($_->{json}{id} // '') eq $id }
             @{ $c->{log} });
    push @l, "gateway chat events of $session (spy):",
             map { "  $_" } $self->spy_summary($session, $t0)
        if $session;
    return join "\n", @l;
}

# one test: $c's replies to $id have the shape reply_problems() wants
sub check {
    my ($self, $t0, $c, $id, $name, %o) = @_;
    my @p = $c->reply_problems($id, %o);
    ok(!@p, $name)
        or diag join "\n", @p, $self->show($t0, $c, $id, $o{session});
    return !@p;
}


# One request over an operator connection of the test's own (the
# loopback backend path, with the gateway's token): ($res, $err), $res the
# whole "res" frame.  scopes => [...] (default operator.read), timeout.
#
# One user agent serves every call of the test: Mojo ends a
# WebSocket transaction as soon as its close frame is queued, so the
# connection is still draining when the call returns, and the gateway's
# close frame that arrives then must find a live agent (it drops it) and
# not a freed one (Mojo: "I/O watcher failed").  A call that timed out
# leaves its connection closing, with its handlers muted by $done.
my $operator_ua;

sub operator_call {
    my ($self, $method, $params, %o) = @_;
    my ($res, $err, $done, $conn);
    my $ua = $operator_ua //= Mojo::UserAgent->new(
        inactivity_timeout => 0, connect_timeout => 5);
    my $timer = Mojo::IOLoop->timer($o{timeout} // 60 => sub {
        $err = 'timeout';
        Mojo::IOLoop->stop;
    });
    $ua->websocket($self->url . '/' => sub {
        my ($ua, $tx) = @_;
        if ($done) {
            $tx->finish if $tx->is_websocket;
            return;
        }
        if (!$tx->is_websocket) {
            $err = 'no WebSocket';
            Mojo::IOLoop->stop;
            return;
        }
        $conn = $tx;
        $tx->max_websocket_size(64 << 20);
        $tx->on(finish => sub { Mojo::IOLoop->stop unless $done });
        $tx->on(text => sub {
            my ($tx, $text) = @_;
            return if $done;
            my $f = eval { decode_json($text) } or return;
            if (($f->{event} // '') eq 'connect.challenge') {
                $tx->send(encode_json({
                    type => 'req', id => 'ocb-op-connect', method => 'connect',
                    params => {
                        minProtocol => 3, maxProtocol => 4,
                        client => { id => 'gateway-client',
                                    displayName => 'ocb-test-operator',
                                    version => '0.0.1', platform => 'linux',
                                    mode => 'backend',
                                    instanceId => "ocb-op-$$" },
                        role => 'operator',
                        scopes => $o{scopes} // ['operator.read'],
                        caps => [], auth => { token => $self->token },
                    } }));
                return;
            }
            return unless ($f->{type} // '') eq 'res';
            if ($f->{id} eq 'ocb-op-connect') {
                if (!$f->{ok}) {
                    $err = 'connect refused: ' . encode_json($f->{error});
                    $tx->finish;
                    return;
                }
                $tx->send(encode_json({ type => 'req', id => 'ocb-op-call',
                                        method => $method,
                                        params => $params }));
            } elsif ($f->{id} eq 'ocb-op-call') {
                $res = $f;
                $tx->finish;
            }
        });
    });
    Mojo::IOLoop->start;
    Mojo::IOLoop->remove($timer);
    $done = 1;
    $conn->finish if $conn && !$conn->is_finished;
    return ($res, $err);
}

package OCGateway::Client;

# A WebSocket client of nginx's bridge location.  send_msg() sends one
# JSON message; every reply is decoded and filed under its "id"; pings
# are answered.  OCGateway::Client::pump(\@clients, $deadline, $done)
# reads all clients until $done->() is true or the deadline passes.

use strict;
use warnings;

use IO::Select;
use Mojo::JSON qw(decode_json encode_json);
use Mojo::WebSocket ();
use Time::HiRes qw(time);

# the fake model's sentence for a message text
sub reply_for {
    my ($text, @seen) = @_;
    return "Reply to: $text."
         . (@seen ? ' Seen: ' . join(' | ', @seen) . '.' : '')
         . ' This reply is streamed in pieces.';
}

sub new {
    my ($class, $ngx, %o) = @_;
    my $ws = $ngx->ws(path => $o{path} // '/ws');
    return bless { ws => $ws, name => $o{name} // 'client', log => [],
                   by_id => {}, sent => [], closed => 0 }, $class;
}

sub name { $_[0]{name} }
sub status { $_[0]{ws}->status }
sub sock { $_[0]{ws}->sock }

sub send_msg {
    my ($self, %m) = @_;
    push @{ $self->{sent} }, { %m, t => time };
    return $self->{ws}->send_frame(1, encode_json(\%m));
}

sub send_raw_text {
    my ($self, $text) = @_;
    return $self->{ws}->send_frame(1, $text);
}

# handles what is already buffered, then reads once if $wait; false on
# EOF
sub poll {
    my ($self, $wait) = @_;
    my $ws = $self->{ws};
    for (;;) {
        my $f = Mojo::WebSocket::parse_frame(\$ws->{buf}, 1 << 26);
        if (!ref $f) {
            return 0 if $ws->{eof};
            return 1 unless $wait;
            $wait = 0;
            $ws->fill(0) or return !$ws->{eof};
            next;
        }
        my ($op, $payload) = ($f->[4], $f->[5]);
        if ($op == 9) {
            $ws->send_frame(10, $payload);
        } elsif ($op == 8) {
            $self->{closed} = 1;
            $self->{close_code} = length $payload >= 2
                ? unpack('n', $payload) : undef;
        } elsif ($op == 1) {
            my $j = eval { decode_json($payload) };
            my $e = { t => time, raw => $payload, json => $j };
            push @{ $self->{log} }, $e;
            my $id = ref $j eq 'HASH' && defined $j->{id} ? $j->{id} : '';
            push @{ $self->{by_id}{$id} }, $j;
        }
    }
}

sub events { my ($self, $id) = @_; return @{ $self->{by_id}{$id} // [] } }

# the terminal replies (complete or error) of message $id
sub terminals {
    my ($self, $id) = @_;
    return grep { ref $_ eq 'HASH' && ($_->{type} // '') =~ /^(complete|error)$/ }
                $self->events($id);
}

sub done { my ($self, $id) = @_; return scalar $self->terminals($id) }

sub all_events { map { $_->{json} } @{ $_[0]{log} } }

sub sent { @{ $_[0]{sent} } }

# What is wrong with the replies to message $id, as a list of strings
# (empty: nothing).  Right is: zero or more "progress", then exactly one
# terminal reply, last; every progress "content", and the complete's, is
# the concatenation of the deltas so far (since the last reply with
# "replace", whose delta is its whole content), the complete's delta
# being what is new since the last progress (maybe ""); every reply
# carries $o{session}.  $o{type} is the terminal
# type wanted ("complete", "error", or a regexp), $o{content} the
# complete's content (a string or a regexp), $o{error} the error's text
# (a regexp).  $o{no_consistency}: leave out the checks that the content
# is the concatenated deltas (consistency_problems() has them alone).
sub reply_problems {
    my ($self, $id, %o) = @_;
    my @ev = $self->events($id);
    return ('no reply at all') unless @ev;
    my @p;
    my @term = grep { ($_->{type} // '') =~ /^(complete|error)$/ } @ev;
    push @p, scalar(@term) . ' terminal replies instead of one'
        if @term != 1;
    push @p, 'a reply after the terminal one'
        if @term && $ev[-1] != $term[0];
    my $acc = '';
    my $n = 0;
    for my $e (@ev) {
        my $type = $e->{type} // '(none)';
        push @p, "reply for session " . ($e->{session} // '(none)')
                 . ", not $o{session}"
            if defined $o{session} && ($e->{session} // '') ne $o{session};
        last if $type eq 'error';
        if ($type ne 'progress' && $type ne 'complete') {
            push @p, "unexpected reply type $type";
            next;
        }
        $n++;
        if (!defined $e->{delta} || !defined $e->{content}) {
            push @p, "reply $n ($type) without delta or content";
            last if $type eq 'complete';
            next;
        }
        $acc = '' if $e->{replace};
        $acc .= $e->{delta};
        push @p, "reply $n ($type): content " . encode_json($e->{content})
                 . ' is not the deltas so far ' . encode_json($acc)
            if $e->{content} ne $acc && !$o{no_consistency};
        last if $type eq 'complete';
    }
    return @p unless @term;
    my $t = $term[0];
    my $want = $o{type} // 'complete';
    push @p, "terminal reply is $t->{type}, not $want"
             . ($t->{type} eq 'error' ? ": $t->{error}" : '')
        unless ref $want ? $t->{type} =~ $want : $t->{type} eq $want;
    if ($t->{type} eq 'complete') {
        my $c = $t->{content} // '(none)';
        if (defined $o{content}) {
            my $good = ref $o{content} ? $c =~ $o{content}
                                       : $c eq $o{content};
            push @p, 'complete content ' . encode_json($c) . ', expected '
                     . (ref $o{content} ? "$o{content}"
                                        : encode_json($o{content}))
                unless $good;
        }
    }
    if ($t->{type} eq 'error' && $o{error}) {
        push @p, "error text '$t->{error}' does not match $o{error}"
            unless ($t->{error} // '') =~ $o{error};
    }
    return @p;
}

# only the checks that every progress content, and a complete's content,
# is the concatenation of the deltas so far (a rewritten text starts
# over: its delta is the whole of it)
sub consistency_problems {
    my ($self, $id) = @_;
    return RelayClient::delta_problems($self->events($id));
}

# events this client got for ids it never sent, or for another session
# than the one it sent that id with
sub foreign_events {
    my ($self) = @_;
    my %session;
    for my $m ($self->sent) {
        $session{$m->{id}} = $m->{session} if defined $m->{id};
    }
    my @bad;
    for my $e ($self->all_events) {
        my $id = ref $e eq 'HASH' ? $e->{id} : undef;
        if (!defined $id || !exists $session{$id}) {
            push @bad, $e;
            next;
        }
        my $want = $session{$id};
        next unless defined $want;
        $want = "agent:main:webhook:session:$want" unless $want =~ /^agent:/;
        push @bad, $e if ($e->{session} // '') ne lc $want;
    }
    return @bad;
}

# reads every client until $done->() or the deadline; true if $done
sub pump {
    my ($clients, $deadline, $done) = @_;
    $clients = [ grep { defined fileno $_->sock } @$clients ];
    my %by_fd = map { fileno($_->sock) => $_ } @$clients;
    for (;;) {
        $_->poll(0) for @$clients;
        return 1 if $done->();
        my $left = $deadline - time;
        return 0 if $left <= 0;
        my $sel = IO::Select->new(map { $_->sock } grep { !$_->{ws}{eof} }
                                  @$clients);
        if (!$sel->count) {
            # nothing left to read: wait out the time asked for
            sleep($left > 0.5 ? 0.5 : $left);
            next;
        }
        my @ready = $sel->can_read($left > 0.5 ? 0.5 : $left);
        $by_fd{fileno $_}->poll(1) for @ready;
    }
}

sub close { $_[0]{ws}->close }

1;
