#!/usr/bin/perl

# Session control against a real OpenClaw gateway speaking protocol 4
# (openclaw@2026.9.6), with the fake model of t/gateway/fake-model.pl and
# openclaw_gateway_admin on: a session with a few turns; session.get and
# session.list show the gateway's sessionId; session.reset makes the agent
# forget (the model is no longer given the earlier turns); session.delete
# removes the session from the gateway, as the gateway's own sessions.list
# (asked over an operator connection of the test's) confirms.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time);
use Mojo::JSON qw(decode_json encode_json);

use OCB;
use OCGateway;

OCGateway::require_cache(4);

my $T0 = time;
my $gw = OCGateway->new(version => 4);
$gw->spy;
note sprintf 'gateway 2026.9.6 ready after %.1f s in %s', $gw->ready_after,
    $gw->dir;

my $ngx = $gw->nginx(
    workers => 2,
    extra => "openclaw_gateway_admin on;\n"
           . "    openclaw_gateway_run_timeout 120s;\n"
           . "    openclaw_gateway_request_timeout 60s;\n"
           . "    openclaw_bridge_zone s:1m;",
    loc => "openclaw_bridge_session_zone s;\n"
         . "            openclaw_bridge_sender \$arg_sender;");
ok(OCGateway::wait_links($ngx, 2, 30, 4),
   'both workers brought their gateway link up with protocol 4');

sub reply_for { OCGateway::Client::reply_for(@_) }
sub pump { OCGateway::Client::pump(@_) }

# one request over an operator connection of the test's own (read scope,
# the loopback backend path): the gateway's own view
sub gateway_call { $gw->operator_call(@_[0, 1], timeout => $_[2] // 60) }

# the gateway's own row of $key, or undef; dies when it cannot say
sub gateway_row {
    my ($key) = @_;
    my $offset = 0;
    for (1 .. 20) {
        my ($res, $err) = gateway_call('sessions.list',
                                       { limit => 100, ($offset ? (offset => $offset) : ()) });
        die "sessions.list: " . ($err // encode_json($res)) . "\n"
            unless $res && $res->{ok};
        my $p = $res->{payload};
        my ($row) = grep { ($_->{key} // '') eq $key } @{ $p->{sessions} // [] };
        return $row if $row;
        return undef unless $p->{hasMore} && $p->{nextOffset};
        $offset = $p->{nextOffset};
    }
    return undef;
}

# for diagnostics: the gateway's first page of sessions, briefly
sub gateway_keys {
    my ($res, $err) = gateway_call('sessions.list', { limit => 100 });
    return $err // 'no answer' unless $res;
    return encode_json($res->{error}) unless $res->{ok};
    return join ', ', map { "$_->{key}=" . ($_->{sessionId} // '-') }
                      @{ $res->{payload}{sessions} // [] };
}

sub ctl {
    my ($c, $msg, $timeout) = @_;
    my $id = $msg->{id};
    $c->send_msg(%$msg);
    pump([$c], time + ($timeout // 60), sub {
        grep { ($_->{type} // '') eq $msg->{type} } $c->events($id) });
    my ($r) = grep { ($_->{type} // '') eq $msg->{type} } $c->events($id);
    return $r;
}

sub check { $gw->check($T0, @_) }

my $KEY = 'agent:main:webhook:session:t63-s';
my $c = OCGateway::Client->new($ngx, path => '/ws?sender=t63', name => 'c');
is($c->status, 101, 'client upgraded');

###########################################################################
# two turns; the second asks the model for the history it was given

my @texts = ('t63 first fact alpha', 't63 second fact beta #history');
my $t = time;
$c->send_msg(id => 't63-1', content => $texts[0], session => 't63-s');
ok(pump([$c], time + 150, sub { $c->done('t63-1') }), 'first turn: answered within 150 s');
note sprintf 'first turn took %.1f s', time - $t;
check($c, 't63-1', 'first turn: one complete with the echo',
      session => $KEY, content => reply_for($texts[0]));

$c->send_msg(id => 't63-2', content => $texts[1], session => 't63-s');
ok(pump([$c], time + 90, sub { $c->done('t63-2') }), 'second turn: answered');
check($c, 't63-2', 'second turn: the model was given both turns',
      session => $KEY, content => reply_for($texts[1], @texts));

###########################################################################
# session.get and session.list: the zone's record and the gateway's row

my $row = eval { gateway_row($KEY) };
ok($row, 'the gateway lists the session') or diag $@;
my $sid = $row && $row->{sessionId};
ok($sid, 'with a sessionId') and note "sessionId $sid";

my $g = ctl($c, { type => 'session.get', key => 't63-s', id => 'get-1' });
is($g && $g->{data}{key}, $KEY, 'session.get: the key') or diag encode_json($g);
is($g && $g->{data}{sessionId}, $sid, 'session.get: the gateway\'s sessionId');
is($g && $g->{data}{messagesIn}, 2, 'session.get: messagesIn 2');
is($g && $g->{data}{messagesOut}, 2, 'session.get: messagesOut 2');
ok($g && $g->{data}{updatedAt}, 'session.get: updatedAt');

my $l = ctl($c, { type => 'session.list', id => 'list-1' });
my ($lr) = grep { $_->{key} eq $KEY } @{ $l && $l->{data}{sessions} // [] };
ok($lr, 'session.list: the session') or diag encode_json($l);
is($lr && $lr->{sessionId}, $sid, 'session.list: the gateway\'s sessionId');

###########################################################################
# session.reset: the agent forgets

my $r = ctl($c, { type => 'session.reset', key => $KEY, id => 'reset-1' });
ok($r && $r->{data}{success}, 'session.reset: success') or diag encode_json($r);
is($r && $r->{data}{key}, $KEY, 'session.reset: the key');
my $after = eval { gateway_row($KEY) };
ok($after && $after->{sessionId}, 'the gateway still lists the session after the reset')
    or diag(($@ || encode_json($after)) . "\ngateway sessions: " . gateway_keys());
note 'sessionId after the reset: ' . ($after && $after->{sessionId} // '-')
     . (($after && $after->{sessionId} // '') eq ($sid // '') ? ' (unchanged)' : ' (new)');
$g = ctl($c, { type => 'session.get', key => $KEY, id => 'get-2' });
ok($g && defined $g->{data}{sessionId} && $after
   && $g->{data}{sessionId} eq ($after->{sessionId} // ''),
   'session.get shows the gateway\'s sessionId') or diag encode_json($g);
is($g && $g->{data}{messagesIn}, 2, 'session.get: the zone\'s counters stay');

my $third = 't63 third fact gamma #history';
my $nreq = () = $gw->model_requests;
$c->send_msg(id => 't63-3', content => $third, session => 't63-s');
ok(pump([$c], time + 90, sub { $c->done('t63-3') }), 'turn after the reset: answered');
check($c, 't63-3', 'turn after the reset: the model was given only this turn',
      session => $KEY, content => reply_for($third, $third));
my @new = ($gw->model_requests)[$nreq .. $nreq + 20];
my $seen = join "\n", map { encode_json($_) } grep { defined } @new;
unlike($seen, qr/first fact alpha|second fact beta/,
       'no request to the model after the reset carries the earlier turns');

###########################################################################
# session.delete: gone from the gateway

my $d = ctl($c, { type => 'session.delete', key => $KEY, id => 'del-1' });
ok($d && $d->{data}{success}, 'session.delete: success') or diag encode_json($d);
is($d && $d->{data}{key}, $KEY, 'session.delete: the key');
my $gone = eval { gateway_row($KEY) };
ok(!$@ && !$gone, 'the gateway no longer lists the session')
    or diag(($@ || encode_json($gone)) . "\ngateway sessions: " . gateway_keys());
$l = ctl($c, { type => 'session.list', id => 'list-2' });
ok($l && ref $l->{data}{sessions} eq 'ARRAY', 'session.list answered');
ok(!grep({ $_->{key} eq $KEY } @{ $l && $l->{data}{sessions} // [] }),
   'session.list no longer shows it');
$g = ctl($c, { type => 'session.get', key => $KEY, id => 'get-3' });
is($g && $g->{error}, 'Session not found', 'session.get: Session not found');

$c->close;
$ngx->stop;
$gw->stop_all;
note sprintf 'total %.1f s', time - $T0;

done_testing;
