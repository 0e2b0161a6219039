#!/usr/bin/perl

# Hub mode with several workers: exactly one live link per (hub URL, uid)
# across the workers, counted at the hub; a link whose worker is killed
# (SIGKILL) is taken over by another worker, still one link, and messages
# flow; "nginx -s reload" with runs in flight (a slow fake gateway): each
# message in flight ends in exactly one complete, and each message sent
# while the reload goes on is answered exactly once, never twice, though
# for a while the old worker's link and the new owner's both receive it;
# a message in flight in a killed worker ends in one error; the runs of
# one hub's messages never reach another hub of the same uid.

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
use RelayClient;
use TestHub;

my $TOKEN = 'tok-81-hubw-9c2b';

my $gw = FakeGateway->new(token => $TOKEN, deltas => 3, delta_ms => 10);
my $hub = TestHub->new(mode => 'rooms');
my $hub2 = TestHub->new(mode => 'rooms');

my %URL = (
    w1 => $hub->url('/ws') . '?uid=w1',
    w2 => $hub->url('/ws') . '?uid=w2',
    x1 => $hub2->url('/ws') . '?uid=w1',
    n1 => $hub->url('/ws') . '?uid=nz',
    n2 => $hub2->url('/ws') . '?uid=nz',
);

my $ngx = OCB->new(workers => 3, http => <<"EOF");
openclaw_gateway ws://127.0.0.1:@{[ $gw->port ]};
openclaw_gateway_token $TOKEN;
openclaw_bridge_zone hubw:1m;

server {
    listen 127.0.0.1:%%PORT%%;

    location = /status {
        openclaw_bridge_status;
    }

    location /bridge-w1 {
        openclaw_bridge_hub @{[ $hub->url('/ws') ]};
        openclaw_bridge_hub @{[ $hub2->url('/ws') ]};
        openclaw_bridge_uid w1;
        openclaw_bridge_session_zone hubw;
    }

    # two hubs of one uid and no sessions zone: the links may be held by
    # two workers, each seeing the other's runs on the gateway
    location /bridge-nz {
        openclaw_bridge_hub @{[ $hub->url('/ws') ]};
        openclaw_bridge_hub @{[ $hub2->url('/ws') ]};
        openclaw_bridge_uid nz;
    }

    location /bridge-w2 {
        openclaw_bridge_hub @{[ $hub->url('/ws') ]};
        openclaw_bridge_uid w2;
        openclaw_bridge_session_zone hubw;
    }
}
EOF

my $http = HTTP::Tiny->new(timeout => 5);

sub status {
    my $r = $http->get($ngx->http_url('/status'));
    return undef unless $r->{status} == 200;
    return eval { decode_json($r->{content}) };
}

# the entries of a URL (a reload may show an old one draining)
sub hub_entries {
    my ($st, $url) = @_;
    return grep { ($_->{url} // '') eq $url } @{ ($st // {})->{hubs} // [] };
}

sub ready_entry {
    my ($st, $url) = @_;
    my ($h) = grep { ($_->{state} // '') eq 'ready' } hub_entries($st, $url);
    return $h;
}

sub wait_for {
    my ($cond, $timeout) = @_;
    my $deadline = time + ($timeout // 10);
    for (;;) {
        my $v = $cond->();
        return $v if $v || time >= $deadline;
        sleep 0.02;
    }
}

sub show_status { diag encode_json(status() // {}) }

sub sends_of {
    my ($text) = @_;
    return grep { ($_->{params}{message} // '') eq $text } $gw->requests('chat.send');
}

# exactly one complete, the fake's echo of $text, no error
sub once {
    my ($name, $replies, $text) = @_;
    my @done = grep { $_->{type} eq 'complete' } @$replies;
    my @err = grep { $_->{type} eq 'error' } @$replies;
    return 1 if @done == 1 && !@err && $done[0]{content} eq "echo: $text";
    diag "$name: " . encode_json($replies);
    return 0;
}

###########################################################################
# one link per (URL, uid)

my %owner;
{
    for my $k (sort keys %URL) {
        my $h;
        ok(wait_for(sub { $h = ready_entry(status(), $URL{$k}) }, 20), "link $k ready")
            or show_status();
        $owner{$k} = $h && $h->{pid};
    }
    my %live = map { $_ => 1 } $ngx->worker_pids;
    ok($live{ $owner{$_} }, "link $_: owned by a live worker ($owner{$_})") for sort keys %URL;
    is(scalar(hub_entries(status(), $URL{$_})), 1, "link $_: one status entry")
        for sort keys %URL;

    is(scalar $hub->bridges('w1'), 1, 'hub: one socket of w1');
    is(scalar $hub->bridges('w2'), 1, 'hub: one socket of w2');
    is(scalar $hub2->bridges('w1'), 1, 'hub 2: one socket of w1');
    is(scalar $hub->upgrades(uid => 'w1', role => 'bridge'), 1,
       'hub: one upgrade of w1 ever (no worker tried a second link)');
    is(scalar $hub->upgrades(uid => 'w2', role => 'bridge'), 1, 'hub: one upgrade of w2 ever');
    is(scalar $hub2->upgrades(uid => 'w1', role => 'bridge'), 1, 'hub 2: one upgrade ever');

    my $u1 = $hub->client(uid => 'w1');
    my $u2 = $hub->client(uid => 'w2');
    my $v1 = $hub2->client(uid => 'w1');
    $u1->send_json({ id => 'a1', content => 'w1 first' });
    $u2->send_json({ id => 'a2', content => 'w2 first' });
    $v1->send_json({ id => 'a3', content => 'hub2 first' });
    my %r1 = $u1->collect(['a1'], 15);
    my %r2 = $u2->collect(['a2'], 15);
    my %r3 = $v1->collect(['a3'], 15);
    ok(once('w1', $r1{a1}, 'w1 first'), 'w1: one complete');
    ok(once('w2', $r2{a2}, 'w2 first'), 'w2: one complete');
    ok(once('hub 2', $r3{a3}, 'hub2 first'), 'hub 2 w1: one complete');
    is(scalar(sends_of($_)), 1, "\"$_\" reached the gateway once")
        for 'w1 first', 'w2 first', 'hub2 first';
    $_->close for $u1, $u2, $v1;
}

###########################################################################
# the runs of one hub's messages never reach the other hub's users,
# whichever workers hold the two links (no zone here)

{
    my $h1 = ready_entry(status(), $URL{n1});
    my $h2 = ready_entry(status(), $URL{n2});
    note sprintf 'nz links held by %s and %s', $h1 && $h1->{pid}, $h2 && $h2->{pid};
    my $on1 = $hub->client(uid => 'nz');
    my $on2 = $hub2->client(uid => 'nz');
    $on1->send_json({ id => 'n1', content => 'via the first hub' });
    my %r = $on1->collect(['n1'], 15);
    ok(once('nz n1', $r{n1}, 'via the first hub'), 'nz: answered through its hub');
    # a barrier through the second hub, after the first run has ended
    my @r = $on2->ask('n2', 'via the second hub', _timeout => 15);
    ok(once('nz n2', \@r, 'via the second hub'), 'nz: the second hub answers its own');
    my @foreign = grep { ($_->{id} // '') ne 'n2' } $hub2->bridge_sent(uid => 'nz');
    ok(!@foreign, "nz: nothing of the first hub's run was written to the second")
        or diag join "\n", map { $_->{payload} // $_->{head} } @foreign;
    @foreign = grep { ($_->{id} // '') ne 'n1' } $hub->bridge_sent(uid => 'nz');
    ok(!@foreign, "nz: nor the other way round")
        or diag join "\n", map { $_->{payload} // $_->{head} } @foreign;
    $_->close for $on1, $on2;
}

###########################################################################
# the owner of w1 is killed: another worker takes the link over

{
    my $victim = $owner{w1};
    my ($old) = $hub->bridges('w1');
    my $max = 0;

    # a message in flight in the worker that dies
    my $k0 = $hub->client(uid => 'w1', name => 'k0');
    my $slow = 'in flight at the kill {{slow 10 300}}';
    $k0->send_json({ id => 'k0', content => $slow });
    ok(wait_for(sub { sends_of($slow) }, 15), 'killed owner: a run in flight');

    kill 'KILL', $victim;
    my $took = wait_for(sub {
        my @b = $hub->bridges('w1');
        $max = @b if @b > $max;
        my $h = ready_entry(status(), $URL{w1});
        @b == 1 && $b[0]{conn} != $old->{conn} && $h && $h->{pid} != $victim
            && kill(0, $h->{pid});
    }, 40);
    ok($took, 'killed owner: w1 is taken over') or show_status();
    cmp_ok($max, '<=', 1, 'killed owner: never two links of w1 at the hub');
    my $h = ready_entry(status(), $URL{w1});
    isnt($h && $h->{pid}, $victim, 'killed owner: the status names the new owner');
    is(scalar(hub_entries(status(), $URL{w1})), 1, 'killed owner: one entry of w1');

    # every link is up once more, one each
    for my $k (sort keys %URL) {
        ok(wait_for(sub { ready_entry(status(), $URL{$k}) }, 40), "killed owner: link $k ready");
    }
    is(scalar $hub->bridges('w2'), 1, 'killed owner: one socket of w2');
    is(scalar $hub2->bridges('w1'), 1, 'killed owner: one socket of w1 at hub 2');

    my $u1 = $hub->client(uid => 'w1');
    my @r = $u1->ask('k1', 'after the kill', _timeout => 15);
    ok(once('after the kill', \@r, 'after the kill'), 'killed owner: messages flow');
    is(scalar(sends_of('after the kill')), 1, 'killed owner: sent to the gateway once');

    # the message in flight at the kill ends, in one error; its run, still
    # going on at the gateway, is not streamed to the users as the agent's
    my %k = $k0->collect(['k0'], 30);
    my @t = grep { $_->{type} =~ /^(complete|error)$/ } @{ $k{k0} };
    is(scalar @t, 1, 'killed owner: the message in flight ends once')
        or diag encode_json($k{k0});
    is($t[0] && $t[0]{type}, 'error', 'killed owner: in an error');
    ok(wait_for(sub { grep { $_->{state} eq 'final' && $_->{sessionKey} =~ /:hub:msg:k0$/ }
                      $gw->records(kind => 'chat') }, 15),
       'killed owner: its run ended at the gateway');
    @r = $u1->ask('k2', 'after the run ended', _timeout => 15);
    ok(once('k2', \@r, 'after the run ended'), 'killed owner: a barrier');
    my @agent = grep { ($_->{origin} // '') eq 'agent'
                       || (($_->{payload} // $_->{head} // '') =~ /in flight at the kill/
                           && ($_->{type} // '') ne 'error') }
                map { $_->{json} ? { %{ $_->{json} }, payload => $_->{payload} } : $_ }
                $hub->bridge_sent(uid => 'w1');
    ok(!@agent, "killed owner: the dead worker's run is not pushed as the agent's")
        or diag join "\n", map { $_->{payload} // '' } @agent;
    $_->close for $u1, $k0;
}

###########################################################################
# reload with runs in flight

{
    my $u = $hub->client(uid => 'w1', name => 'in-flight');
    my $s = $hub->client(uid => 'w1', name => 'during');
    my $slow = ' {{slow 10 300}}';
    my %text = map { ("f$_" => "in flight $_$slow") } 1 .. 5;
    $u->send_json({ id => $_, content => $text{$_} }) for sort keys %text;
    # and in a location without a zone, where the new generation cannot
    # know of the old one's runs from a zone's records
    my $nzu = $hub->client(uid => 'nz', name => 'nz-in-flight');
    my %nztext = map { ("g$_" => "no zone in flight $_$slow") } 1 .. 3;
    $nzu->send_json({ id => $_, content => $nztext{$_} }) for sort keys %nztext;
    ok(wait_for(sub { !grep { !sends_of($_) } values %text, values %nztext }, 15),
       'reload: eight runs in flight');

    my %old = map { $_ => 1 } $ngx->worker_pids;
    my ($old_link) = $hub->bridges('w1');
    kill 'HUP', $ngx->pid;

    # send a message about every 50 ms until the new generation owns the
    # link and the old link is gone (while the old worker finishes its
    # runs both links get every message), then three more
    my ($n, $after, $new_up, $old_gone, $overlap) = (0, 0, 0, 0, 0);
    my $dup = $hub->client(uid => 'w1', name => 'dup');
    my ($dup_done, $dup_overlap) = (0, 0);
    my $deadline = time + 40;
    while (time < $deadline && $after < 3) {
        my $id = 'd' . ++$n;
        $text{$id} = "during the reload $n";
        $s->send_json({ id => $id, content => $text{$id} });
        # paced: reading what comes for 50 ms (a flood would run into
        # openclaw_bridge_max_sessions_in_flight, which a hub link has
        # for all its users together)
        $s->drain(0.05);
        if (!$new_up) {
            my %new = map { $_ => 1 } grep { !$old{$_} } $ngx->worker_pids;
            $new_up = 1 if grep { ($_->{state} // '') eq 'ready' && $new{ $_->{pid} } }
                           hub_entries(status(), $URL{w1});
        } elsif (!$old_gone) {
            my @b = $hub->bridges('w1');
            $overlap++ if @b == 2;
            if (@b == 2 && !$dup_done++) {
                # while both links are open: the same bytes twice are two
                # messages (no id: two runs), and a retry of a message
                # (same id) gets the reply of the first run again
                my $same = encode_json({ content => 'same bytes twice' });
                $dup->send_text($same) for 1, 2;
                $dup->send_json({ id => 'rt', content => 'retried' });
                my %rt = $dup->collect(['rt'], 10);
                $dup->send_json({ id => 'rt', content => 'retried' });
                $dup_overlap = ($hub->bridges('w1') == 2);
            }
            $old_gone = 1 unless grep { $_->{conn} == $old_link->{conn} } @b;
        } else {
            $after++;
        }
    }
    ok($new_up, "reload: a new worker owns w1 ($n messages sent in all)") or show_status();
    ok($old_gone, 'reload: the old link closed once its runs ended');
    note "reload: $overlap messages sent while both links were open";

    ok($dup_done, 'reload: the same frames were sent twice while both links were open');
    note "reload: both links still open after the repeated frames: $dup_overlap";
    {
        my $deadline = time + 15;
        my $count = sub {
            my ($want) = @_;
            return scalar grep { ($_->{json}{type} // '') eq 'complete'
                                 && ($_->{json}{content} // '') eq $want } $dup->frames;
        };
        while (time < $deadline
               && ($count->('echo: same bytes twice') < 2 || $count->('echo: retried') < 2)) {
            $dup->next_frame($deadline - time) or last;
        }
        is($count->('echo: same bytes twice'), 2,
           'reload: the same bytes sent twice without an id are two messages, both answered');
        is($count->('echo: retried'), 2,
           'reload: a retry of a message (same id) gets its reply again');
    }

    my @ids = sort keys %text;
    my %r = (%{{ $u->collect([grep { /^f/ } @ids], 40) }},
             %{{ $s->collect([grep { /^d/ } @ids], 40) }});
    # a barrier through the new link: anything late about the others
    # would come before its complete
    my @bar = $s->ask('barrier', 'reload barrier', _timeout => 15);
    ok(once('barrier', \@bar, 'reload barrier'), 'reload: the barrier is answered');
    %r = map { ($_ => [ ($_ =~ /^f/ ? $u : $s)->replies($_) ]) } @ids;

    my @bad = grep { !once($_, $r{$_}, $text{$_}) } grep { /^f/ } @ids;
    ok(!@bad, 'reload: each run in flight ended in exactly one complete') or diag "@bad";
    @bad = grep { !once($_, $r{$_}, $text{$_}) } grep { /^d/ } @ids;
    ok(!@bad, "reload: each of the $n messages sent meanwhile answered exactly once")
        or diag "@bad";
    # which link wrote what, for those (the old link is conn $old_link->{conn})
    if (@bad) {
        my %bad = map { $_ => 1 } @bad;
        diag "old link: conn $old_link->{conn}";
        diag join "\n", map { "conn $_->{conn} $_->{type} $_->{id} t=" . sprintf('%.3f', $_->{t}) }
                        grep { $bad{ $_->{id} // '' } } $hub->bridge_sent;
    }
    @bad = grep { scalar(sends_of($text{$_})) != 1 } @ids;
    ok(!@bad, 'reload: each message reached the gateway once') or diag "@bad";

    my %nz = $nzu->collect([sort keys %nztext], 40);
    my @nzb = $nzu->ask('g-barrier', 'no zone barrier', _timeout => 15);
    ok(once('g-barrier', \@nzb, 'no zone barrier'), 'reload, no zone: the barrier is answered');
    @bad = grep { !once($_, [ $nzu->replies($_) ], $nztext{$_}) } sort keys %nztext;
    ok(!@bad, 'reload, no zone: each run in flight ended in exactly one complete')
        or diag "@bad";
    my @agent = grep { ($_->{json}{origin} // '') eq 'agent' } grep { $_->{json} }
                $hub->bridge_sent(uid => 'nz'), $hub2->bridge_sent(uid => 'nz'),
                $hub->bridge_sent(uid => 'w1'), $hub2->bridge_sent(uid => 'w1');
    ok(!@agent, "reload: no run of the old worker's was pushed as the agent's")
        or diag join "\n", map { $_->{payload} } @agent;

    # in the end: the old worker gone, one link
    ok(wait_for(sub { !grep { $old{$_} } $ngx->worker_pids }, 40),
       'reload: the old workers exit');
    ok(wait_for(sub { my @b = $hub->bridges('w1'); @b == 1 && $b[0]{conn} != $old_link->{conn} }, 20),
       'reload: one link of w1, a new one');
    is(scalar $hub->bridges('w2'), 1, 'reload: one link of w2');
    is(scalar $hub2->bridges('w1'), 1, 'reload: one link of w1 at hub 2');
    my $st = status();
    is(scalar(hub_entries($st, $URL{$_})), 1, "reload: one status entry of $_") for sort keys %URL;
    $_->close for $u, $s, $nzu, $dup;
}

# the kill is an [alert] of its own; anything else is not
$ngx->stop(no_check => 1);
my @bad = grep { /\[(alert|emerg)\]/ && !/exited on signal 9/ } split /\n/, $ngx->error_log;
ok(!@bad, 'no [alert] or [emerg] but the kill') or diag join "\n", @bad;
my $reports = '';
for my $f (glob $ngx->prefix . '/logs/asan* ' . $ngx->prefix . '/logs/ubsan*') {
    open my $h, '<', $f or next;
    local $/;
    $reports .= "== $f\n" . $_ for OCB::sanitizer_reports(<$h>);
}
ok($reports eq '', 'no sanitizer report') or diag $reports;

$gw->stop;
$_->stop for $hub, $hub2;

done_testing;
