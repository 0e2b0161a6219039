#!/usr/bin/perl

# Configuration errors are reported by "nginx -t" with the directive and the
# file:line; a configuration using every directive is accepted, loaded and
# in effect.

use strict;
use warnings;

use lib 't/lib';
use OCB;
use Test::More;

# the line of the conf file holding $marker (the first match)
sub line_of {
    my ($o, $marker) = @_;
    my @lines = split /\n/, $o->conf_text;
    for my $i (0 .. $#lines) {
        return $i + 1 if index($lines[$i], $marker) >= 0;
    }
    die "\"$marker\" not in the configuration";
}

# nginx -t leaves no sanitizer report; error.log holds the [emerg] on
# purpose, so OCB::check_logs cannot be used for the failing ones
sub no_reports {
    my ($o, $name, $out) = @_;
    my @r = glob $o->prefix . '/logs/asan* ' . $o->prefix . '/logs/ubsan*';
    ok(!@r && $out !~ /AddressSanitizer|LeakSanitizer|runtime error:/,
       "$name: no sanitizer report") or diag "@r\n$out";
}

# bad_conf(name, http => ..., marker => text of the offending line,
#          like => [regexps the message must match])
sub bad_conf {
    my ($name, %c) = @_;
    my $o = OCB->new(no_start => 1, http => $c{http});
    my ($rc, $out) = $o->test_conf;
    my $conf = $o->prefix . '/conf/nginx.conf';
    my $line = line_of($o, $c{marker});

    isnt($rc, 0, "$name: nginx -t fails");
    like($out, qr/\[emerg\]/, "$name: an [emerg] message");
    like($out, qr/\Q$conf\E:$line\b/, "$name: names $conf:$line")
        or diag $out;
    like($out, $_, "$name: message matches $_") or diag $out
        for @{ $c{like} };
    unlike($out, qr/test is successful/, "$name: not reported successful");
    no_reports($o, $name, $out);
}

sub server {
    my ($loc, %o) = @_;
    return "server {\n    listen 127.0.0.1:%%PORT%%;\n"
         . ($o{srv} // '')
         . "    location / {\n        $loc\n    }\n}\n";
}

my $D = '"openclaw_bridge_max_message_size" directive';

bad_conf('max_message_size 0',
    http => server("openclaw_bridge_max_message_size 0;\n        openclaw_bridge;"),
    marker => 'openclaw_bridge_max_message_size 0;',
    like => [ qr/"openclaw_bridge_max_message_size" directive must be greater than zero/ ]);

bad_conf('max_message_size abc',
    http => server("openclaw_bridge;\n        openclaw_bridge_max_message_size abc;"),
    marker => 'openclaw_bridge_max_message_size abc;',
    like => [ qr/"openclaw_bridge_max_message_size" directive invalid value/ ]);

bad_conf('max_message_size 0 at http level',
    http => "openclaw_bridge_max_message_size 0;\n" . server('openclaw_bridge;'),
    marker => 'openclaw_bridge_max_message_size 0;',
    like => [ qr/"openclaw_bridge_max_message_size" directive must be greater than zero/ ]);

bad_conf('send_buffer 0',
    http => server("openclaw_bridge;\n        openclaw_bridge_send_buffer 0;"),
    marker => 'openclaw_bridge_send_buffer 0;',
    like => [ qr/"openclaw_bridge_send_buffer" directive must be greater than zero/ ]);

bad_conf('ping_interval xyz',
    http => server("openclaw_bridge;\n        openclaw_bridge_ping_interval xyz;"),
    marker => 'openclaw_bridge_ping_interval xyz;',
    like => [ qr/"openclaw_bridge_ping_interval" directive invalid value/ ]);

bad_conf('pong_timeout 0',
    http => server("openclaw_bridge;\n        openclaw_bridge_pong_timeout 0;"),
    marker => 'openclaw_bridge_pong_timeout 0;',
    like => [ qr/"openclaw_bridge_pong_timeout" directive must be greater than zero/ ]);

bad_conf('close_timeout 0',
    http => server("openclaw_bridge;\n        openclaw_bridge_close_timeout 0;"),
    marker => 'openclaw_bridge_close_timeout 0;',
    like => [ qr/"openclaw_bridge_close_timeout" directive must be greater than zero/ ]);

bad_conf('idle_timeout 1x',
    http => server("openclaw_bridge;\n        openclaw_bridge_idle_timeout 1x;"),
    marker => 'openclaw_bridge_idle_timeout 1x;',
    like => [ qr/"openclaw_bridge_idle_timeout" directive invalid value/ ]);

bad_conf('allow_origin example.com',
    http => server("openclaw_bridge;\n        openclaw_bridge_allow_origin example.com;"),
    marker => 'openclaw_bridge_allow_origin example.com;',
    like => [ qr/invalid origin "example\.com"/, qr/openclaw_bridge_allow_origin/ ]);

bad_conf('allow_origin with a path',
    http => server("openclaw_bridge;\n        openclaw_bridge_allow_origin https://ok.example https://a.example/path;"),
    marker => 'https://a.example/path;',
    like => [ qr{invalid origin "https://a\.example/path"}, qr/openclaw_bridge_allow_origin/ ]);

bad_conf('allow_origin with a trailing slash',
    http => server("openclaw_bridge;\n        openclaw_bridge_allow_origin https://a.example/;"),
    marker => 'https://a.example/;',
    like => [ qr{invalid origin "https://a\.example/"}, qr/openclaw_bridge_allow_origin/ ]);

bad_conf('allow_origin without a host',
    http => server("openclaw_bridge;\n        openclaw_bridge_allow_origin https://;"),
    marker => 'openclaw_bridge_allow_origin https://;',
    like => [ qr{invalid origin "https://"}, qr/openclaw_bridge_allow_origin/ ]);

bad_conf('allow_origin twice in a location',
    http => server("openclaw_bridge;\n        openclaw_bridge_allow_origin https://a.example;\n"
                   . "        openclaw_bridge_allow_origin https://b.example;"),
    marker => 'openclaw_bridge_allow_origin https://b.example;',
    like => [ qr/"openclaw_bridge_allow_origin" directive is duplicate/ ]);

bad_conf('openclaw_bridge twice',
    http => server("openclaw_bridge;\n        openclaw_bridge; # second"),
    marker => 'openclaw_bridge; # second',
    like => [ qr/"openclaw_bridge" directive is duplicate/ ]);

bad_conf('openclaw_bridge and openclaw_bridge_echo',
    http => server("openclaw_bridge;\n        openclaw_bridge_echo;"),
    marker => 'openclaw_bridge_echo;',
    like => [ qr/"openclaw_bridge_echo" directive is duplicate/ ]);

bad_conf('openclaw_bridge_echo and openclaw_bridge',
    http => server("openclaw_bridge_echo;\n        openclaw_bridge; # second"),
    marker => 'openclaw_bridge; # second',
    like => [ qr/"openclaw_bridge" directive is duplicate/ ]);

bad_conf('openclaw_bridge on',
    http => server('openclaw_bridge on;'),
    marker => 'openclaw_bridge on;',
    like => [ qr/invalid number of arguments in "openclaw_bridge" directive/ ]);

bad_conf('openclaw_bridge_echo with an argument',
    http => server('openclaw_bridge_echo 1;'),
    marker => 'openclaw_bridge_echo 1;',
    like => [ qr/invalid number of arguments in "openclaw_bridge_echo" directive/ ]);

bad_conf('allow_origin without arguments',
    http => server("openclaw_bridge;\n        openclaw_bridge_allow_origin;"),
    marker => 'openclaw_bridge_allow_origin;',
    like => [ qr/invalid number of arguments in "openclaw_bridge_allow_origin" directive/ ]);

bad_conf('openclaw_bridge at http level',
    http => "openclaw_bridge;\n" . server('return 204;'),
    marker => 'openclaw_bridge;',
    like => [ qr/"openclaw_bridge" directive is not allowed here/ ]);

bad_conf('openclaw_bridge at server level',
    http => "server {\n    listen 127.0.0.1:%%PORT%%;\n    openclaw_bridge;\n}\n",
    marker => 'openclaw_bridge;',
    like => [ qr/"openclaw_bridge" directive is not allowed here/ ]);

# the gateway link's directives -------------------------------------------

sub gw_server {
    my ($main) = @_;
    return $main . server('openclaw_bridge;');
}

bad_conf('gateway URL without ws://',
    http => gw_server("openclaw_gateway http://127.0.0.1:18789;\n"),
    marker => 'openclaw_gateway http://',
    like => [ qr/invalid OpenClaw gateway URL "http:\/\/127.0.0.1:18789": it must start with ws:\/\/ or wss:\/\// ]);

bad_conf('gateway URL with a bad port',
    http => gw_server("openclaw_gateway ws://127.0.0.1:99999;\n"),
    marker => 'openclaw_gateway ws://',
    like => [ qr/invalid port in OpenClaw gateway URL/ ]);

bad_conf('openclaw_gateway twice',
    http => gw_server("openclaw_gateway ws://127.0.0.1:1;\nopenclaw_gateway ws://127.0.0.1:2;\n"),
    marker => 'openclaw_gateway ws://127.0.0.1:2',
    like => [ qr/"openclaw_gateway" directive is duplicate/ ]);

bad_conf('openclaw_gateway in a server',
    http => "server {\n    listen 127.0.0.1:%%PORT%%;\n    openclaw_gateway ws://127.0.0.1:1;\n}\n",
    marker => 'openclaw_gateway ws://',
    like => [ qr/"openclaw_gateway" directive is not allowed here/ ]);

bad_conf('max_runs 0',
    http => gw_server("openclaw_gateway_max_runs 0;\n"),
    marker => 'openclaw_gateway_max_runs 0;',
    like => [ qr/"openclaw_gateway_max_runs" directive must be greater than zero/ ]);

bad_conf('max_runs abc',
    http => gw_server("openclaw_gateway_max_runs abc;\n"),
    marker => 'openclaw_gateway_max_runs abc;',
    like => [ qr/"openclaw_gateway_max_runs" directive invalid number/ ]);

bad_conf('max_queued 0',
    http => gw_server("openclaw_gateway_max_queued 0;\n"),
    marker => 'openclaw_gateway_max_queued 0;',
    like => [ qr/"openclaw_gateway_max_queued" directive must be greater than zero/ ]);

bad_conf('max_queued 1x',
    http => gw_server("openclaw_gateway_max_queued 1x;\n"),
    marker => 'openclaw_gateway_max_queued 1x;',
    like => [ qr/"openclaw_gateway_max_queued" directive invalid value/ ]);

bad_conf('max_runs in a server',
    http => "server {\n    listen 127.0.0.1:%%PORT%%;\n    openclaw_gateway_max_runs 10;\n}\n",
    marker => 'openclaw_gateway_max_runs 10;',
    like => [ qr/"openclaw_gateway_max_runs" directive is not allowed here/ ]);

bad_conf('token file missing',
    http => gw_server("openclaw_gateway_token_file /nonexistent/openclaw.json;\n"),
    marker => 'openclaw_gateway_token_file',
    like => [ qr/open\(\) "\/nonexistent\/openclaw.json" failed/ ]);

{
    my $dir = OCB->new(no_start => 1, http => '')->prefix;

    open my $f, '>', "$dir/notoken.json" or die;
    print $f qq({ "gateway": { "auth": { "mode": "token" } } }\n);
    close $f;

    bad_conf('openclaw.json without a token',
        http => gw_server("openclaw_gateway_token_file $dir/notoken.json;\n"),
        marker => 'openclaw_gateway_token_file',
        like => [ qr/no string gateway.auth.token or gateway.auth.password in "\Q$dir\E\/notoken.json"/ ]);

    open $f, '>', "$dir/twolines" or die;
    print $f "first\nsecond\n";
    close $f;

    bad_conf('token file with two lines',
        http => gw_server("openclaw_gateway_token_file $dir/twolines;\n"),
        marker => 'openclaw_gateway_token_file',
        like => [ qr/must hold the gateway token on one line/ ]);

    # OpenClaw's own file is JSON5: comments and trailing commas are fine
    open $f, '>', "$dir/openclaw.json" or die;
    print $f qq({\n  // the gateway\n  "gateway": {\n    "auth": { "mode": "token", "token": "t0k3n-from-json", },\n  },\n  /* end */\n}\n);
    close $f;

    my $o = OCB->new(no_start => 1,
                     http => gw_server("openclaw_gateway_token_file $dir/openclaw.json;\n"));
    my ($rc, $out) = $o->test_conf;
    is($rc, 0, 'JSON5 openclaw.json is read') or diag $out;
    unlike($out, qr/t0k3n-from-json/, 'the token is not printed');
}

bad_conf('max_in_flight 0',
    http => gw_server('') . "server {\n    listen 127.0.0.1:%%PORT%%;\n    location /x {\n        openclaw_bridge;\n        openclaw_bridge_max_in_flight 0;\n    }\n}\n",
    marker => 'openclaw_bridge_max_in_flight 0;',
    like => [ qr/"openclaw_bridge_max_in_flight" directive must be greater than zero/ ]);

bad_conf('session_namespace with a bad value',
    http => gw_server('') . "server {\n    listen 127.0.0.1:%%PORT%%;\n    location /x {\n        openclaw_bridge;\n        openclaw_bridge_session_namespace everything;\n    }\n}\n",
    marker => 'openclaw_bridge_session_namespace everything;',
    like => [ qr/invalid value "everything"/ ]);

bad_conf('session_namespace agent with a uid',
    http => gw_server('') . "server {\n    listen 127.0.0.1:%%PORT%%;\n    location /x {\n        openclaw_bridge;\n        openclaw_bridge_uid \$arg_uid;\n        openclaw_bridge_session_namespace agent;\n    }\n}\n",
    marker => 'openclaw_bridge_session_namespace agent;',
    like => [ qr/"openclaw_bridge_session_namespace agent" cannot be used with openclaw_bridge_uid/ ]);

bad_conf('session_namespace agent inherited by a location with a uid',
    http => gw_server('') . "openclaw_bridge_session_namespace agent;\nserver {\n    listen 127.0.0.1:%%PORT%%;\n    location /x {\n        openclaw_bridge;\n        openclaw_bridge_uid u1;\n    }\n}\n",
    marker => 'openclaw_bridge_session_namespace agent;',
    like => [ qr/cannot be used with openclaw_bridge_uid/ ]);

{
    local $ENV{OPENCLAW_GATEWAY_TOKEN};
    my $o = OCB->new(no_start => 1, http => gw_server(''));
    my ($rc, $out) = $o->test_conf;
    is($rc, 0, 'no credential at all: nginx -t still passes (auth mode none)')
        or diag $out;
    like($out, qr/\[warn\] no credential for the OpenClaw gateway/,
         'no credential at all: a warning says so');
}

# every directive, at every level it is allowed, with valid values --------

my %all = (http => <<'EOF');
openclaw_gateway ws://127.0.0.1:9/gateway;
openclaw_gateway_token test-token;
openclaw_gateway_admin off;
openclaw_gateway_connect_timeout 5s;
openclaw_gateway_request_timeout 20s;
openclaw_gateway_run_timeout 300s;
openclaw_gateway_queue 100;
openclaw_gateway_max_runs 5000;
openclaw_gateway_max_queued 8m;
openclaw_gateway_ssl_verify on;
openclaw_gateway_ssl_server_name on;
openclaw_bridge_agent_id main;
openclaw_bridge_abort_on_disconnect on;
openclaw_bridge_max_in_flight 32;
openclaw_bridge_max_message_size 64k;
openclaw_bridge_send_buffer 512k;
openclaw_bridge_ping_interval 20s;
openclaw_bridge_pong_timeout 5s;
openclaw_bridge_idle_timeout 1h;
openclaw_bridge_close_timeout 2s;
openclaw_bridge_allow_origin https://app.example;

server {
    listen 127.0.0.1:%%PORT%%;
    openclaw_bridge_max_message_size 1m;
    openclaw_bridge_ping_interval 0;
    openclaw_bridge_allow_origin https://app.example http://localhost:3000 HTTPS://Upper.Example:8443;

    location / {
        openclaw_bridge;
        openclaw_bridge_agent_id $arg_agent;
        openclaw_bridge_max_in_flight 8;
        openclaw_bridge_abort_on_disconnect off;
    }

    location /echo {
        openclaw_bridge_echo;
        openclaw_bridge_max_message_size 1000;
        openclaw_bridge_send_buffer 64k;
        openclaw_bridge_ping_interval 30s;
        openclaw_bridge_pong_timeout 10s;
        openclaw_bridge_idle_timeout 0;
        openclaw_bridge_close_timeout 1500ms;
        openclaw_bridge_allow_origin https://echo.example;
    }

    location /inherit {
        openclaw_bridge_echo;
    }

    location /plain {
        return 200 "plain\n";
    }
}
EOF

{
    my $o = OCB->new(no_start => 1, %all);
    my ($rc, $out) = $o->test_conf;
    is($rc, 0, 'every directive: nginx -t succeeds') or diag $out;
    like($out, qr/syntax is ok/, 'every directive: syntax is ok');
    like($out, qr/test is successful/, 'every directive: test is successful');
    unlike($out, qr/\[(emerg|alert|crit|error|warn)\]/,
           'every directive: no complaint') or diag $out;
    no_reports($o, 'every directive', $out);

    # and it runs with the values in effect
    $o->start;

    my $ws = $o->ws(path => '/echo');
    is($ws->status, 101, 'every directive: /echo upgrades without Origin');
    $ws->send_frame(1, 'x' x 1000);
    my $f = $ws->read_frame(5);
    ok($f && $f->{payload} eq 'x' x 1000,
       'every directive: a message of max_message_size is echoed');
    $ws->send_frame(1, 'x' x 1001);
    my ($code) = $ws->read_close(5);
    is($code, 1009, 'every directive: one byte more closes with 1009');
    $ws->close;

    $ws = $o->ws(path => '/echo', headers => { Origin => 'https://app.example' });
    is($ws->status, 403, 'every directive: location allow_origin replaces '
                       . 'the inherited list');
    $ws->close;

    $ws = $o->ws(path => '/echo', headers => { Origin => 'https://echo.example' });
    is($ws->status, 101, 'every directive: location allow_origin applies');
    $ws->close;

    $ws = $o->ws(path => '/inherit', headers => { Origin => 'http://localhost:3000' });
    is($ws->status, 101, 'every directive: server allow_origin is inherited');
    $ws->close;

    $ws = $o->ws(path => '/inherit', headers => { Origin => 'https://upper.example:8443' });
    is($ws->status, 101, 'every directive: configured origins compare '
                       . 'case-insensitively');
    $ws->close;

    $ws = $o->ws(path => '/inherit', headers => { Origin => 'https://echo.example' });
    is($ws->status, 403, 'every directive: a sibling location list does not leak');
    $ws->close;

    # /inherit has the server's 1m, not the http level's 64k
    $ws = $o->ws(path => '/inherit');
    my $big = 'y' x (100 * 1024);
    $ws->send_frame(2, $big);
    $f = $ws->read_frame(5);
    ok($f && $f->{op} == 2 && $f->{payload} eq $big,
       'every directive: server-level max_message_size is inherited');
    $ws->close;

    $ws = $o->ws(path => '/');
    is($ws->status, 101, 'every directive: openclaw_bridge location upgrades');
    $ws->close;

    $ws = $o->ws(path => '/plain');
    is($ws->status, 200, 'every directive: other locations are unaffected');
    $ws->close;

    $o->stop;
}

# the stock Debian nginx, load_module and a plain "openclaw_bridge;" --------

{
    local $OCB::NGINX = '/usr/sbin/nginx';
    my $o = OCB->new(no_start => 1, location => 'openclaw_bridge;');
    like($o->conf_text, qr/^load_module \S+ngx_http_openclaw_bridge_module\.so;/m,
         'stock nginx: the conf loads the module');
    my ($rc, $out) = $o->test_conf;
    is($rc, 0, 'stock nginx: nginx -t succeeds') or diag $out;
    like($out, qr/test is successful/, 'stock nginx: test is successful');
    my $v = `/usr/sbin/nginx -v 2>&1`;
    like($v, qr{nginx/1\.22\.1}, 'stock nginx: it is the Debian 1.22.1 binary');
    no_reports($o, 'stock nginx', $out);
}

done_testing;
