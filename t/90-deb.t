#!/usr/bin/perl

# The Debian package (`make deb`) on the stock Debian nginx: installed with
# apt, its files are where Debian's module packages put theirs, it depends
# on the nginx ABI it was built against (which the installed nginx
# provides) and on the libraries it links, the stock configuration loads it
# (`nginx -t`), and the system nginx, started on a free port with a
# configuration of its own that includes /etc/nginx/modules-enabled/ and
# the packaged example, relays a message to a fake gateway, answers a
# scrape and logs the connection with the example's log_format.  Then the
# package is removed (its module is disabled) and purged (nothing is left).
#
# It changes the machine (a package, a link in /etc/nginx/modules-enabled/)
# and undoes it however it ends; it holds a lock meanwhile, so that two
# runs on one machine take turns.  Skipped without root, dpkg or apt, or
# when the package is installed already (not ours to remove).  OCB_DEB
# names the .deb; by default, the one `make deb` writes for the version
# of debian/changelog.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Fcntl qw(:flock);
use File::Path qw(make_path remove_tree);
use HTTP::Tiny;
use POSIX qw(:sys_wait_h);
use Test::More;
use Time::HiRes qw(sleep time);

use OCB;
use FakeGateway;
use RelayClient;

my $PKG = 'libnginx-mod-http-openclaw-bridge';
my $SO = '/usr/lib/nginx/modules/ngx_http_openclaw_bridge_module.so';
my $AVAILABLE = "/usr/share/nginx/modules-available/mod-http-openclaw-bridge.conf";
my $ENABLED = "/etc/nginx/modules-enabled/50-mod-http-openclaw-bridge.conf";
my $DOC = "/usr/share/doc/$PKG";
my $ABI_FILE = '/usr/share/nginx/src/debian/libnginx-mod.abisubstvars';
my $TOP = OCB::top();

# what the cleanup undoes, in this process only (not in the fake gateway)
my $main_pid = $$;
my ($installed, $ngx_pid, $gw);

plan skip_all => 'needs root: it installs a package' if $> != 0;
plan skip_all => 'the package is tested once, without ASan'
    if ($ENV{OCB_ASAN} // '') eq '1';
for my $tool (qw(dpkg dpkg-query apt-get)) {
    plan skip_all => "no $tool: not a Debian system"
        unless grep { -x "$_/$tool" } split /:/, $ENV{PATH};
}
plan skip_all => "no Debian nginx (the nginx package) installed"
    unless `dpkg-query -W -f='\${Status}' nginx 2>/dev/null` =~ /install ok installed/;

# the version has one place: the first entry of debian/changelog
my ($version) = (do { local (@ARGV, $/) = "$TOP/debian/changelog"; <> } // '')
    =~ /^\S+ \(([^)]+)\)/;
chomp(my $arch = `dpkg --print-architecture`);
my $deb = $ENV{OCB_DEB} // "$TOP/build/${PKG}_${version}_$arch.deb";
plan skip_all => "no $deb: make deb" unless -f $deb;

# two runs on one machine (two work trees) would install and purge under
# each other: one at a time
my $lock_file = (-d '/run/lock' ? '/run/lock' : '/tmp') . '/openclaw-bridge-deb-test.lock';
open my $lock, '>', $lock_file or die "$lock_file: $!";
my $lock_deadline = time + 600;
until (flock $lock, LOCK_EX | LOCK_NB) {
    die "another run of this test holds the lock for 10 minutes\n"
        if time > $lock_deadline;
    sleep 0.5;
}

plan skip_all => "$PKG is installed on this machine: not ours to remove "
    . "(dpkg --purge $PKG, if a run of this test was killed)"
    if `dpkg-query -W -f='\${Status}' $PKG 2>/dev/null` =~ /install ok installed/;

sub run_cmd {
    my (@cmd) = @_;
    my $out = `@cmd 2>&1`;
    return ($? >> 8, $out);
}

sub purge {
    my ($status, $out) = run_cmd("dpkg --purge $PKG");
    return ($status, $out);
}

# whatever happens, nginx and the gateway stop and the package goes
sub cleanup {
    return unless $$ == $main_pid;
    if ($ngx_pid) {
        kill 'KILL', $ngx_pid;
        waitpid($ngx_pid, 0);
        undef $ngx_pid;
    }
    $gw->stop if $gw;
    undef $gw;
    if ($installed) {
        my ($status, $out) = purge();
        diag "cleanup: dpkg --purge $PKG failed:\n$out" if $status;
        undef $installed;
    }
}
END { local $?; cleanup() }
$SIG{$_} = sub { die "killed by SIG$_[0]\n" } for qw(INT TERM HUP);

my %apt_env = (DEBIAN_FRONTEND => 'noninteractive');
local @ENV{keys %apt_env} = values %apt_env;

# what is enabled before, to compare with what is left after the purge
sub enabled_modules { return join ' ', sort glob '/etc/nginx/modules-enabled/*' }
my $enabled_before = enabled_modules();

# --- install, with apt: it resolves the Depends against this system

my ($status, $out) = run_cmd('apt-get install -y -q --no-install-recommends '
    . "-o DPkg::Lock::Timeout=300 '$deb'");
$installed = 1;
is($status, 0, 'apt-get installs the package') or diag $out;

like(`dpkg-query -W -f='\${Status} \${Version}' $PKG`,
     qr/^install ok installed \Q$version\E$/,
     "installed, at the version of debian/changelog ($version)");

ok(-f $SO, "the module is in /usr/lib/nginx/modules/");
my $snippet = do { local (@ARGV, $/) = $AVAILABLE; <> } // '';
is($snippet, "load_module modules/ngx_http_openclaw_bridge_module.so;\n",
   'its load_module snippet is in /usr/share/nginx/modules-available/');
is(readlink($ENABLED), $AVAILABLE,
   'and linked from /etc/nginx/modules-enabled/ (enabled on install)');
ok(-f "$DOC/README.md.gz" || -f "$DOC/README.md", "the README is in $DOC");
ok(-f "$DOC/examples/openclaw-bridge.conf", 'with the example conf.d file');
ok(-f "$DOC/copyright", 'and the copyright file');

# the Depends: the nginx ABI of the nginx-dev it was built with, which the
# installed nginx provides, and the libraries of its NEEDED entries
my $depends = `dpkg-query -W -f='\${Depends}' $PKG`;
my ($abi) = (do { local (@ARGV, $/) = $ABI_FILE; <> } // '')
    =~ /^nginx:abi=(\S+)/m;
ok($abi && $depends =~ /(^|, )\Q$abi\E(,|$)/,
   "Depends on the nginx ABI it was built for ($abi)") or diag $depends;
like(`dpkg-query -W -f='\${Provides}' nginx`, qr/(^|, )\Q$abi\E(,|$)/,
     'which the installed nginx provides');
my @needed = scalar(`readelf -d $SO`) =~ /Shared library: \[([^\]]+)\]/g;
ok(scalar(grep { /^libcjson\.so/ } @needed), 'the module links libcjson')
    or diag "NEEDED: @needed";
for my $lib (grep { !/^(libc\.so|ld-linux)/ } @needed) {
    my ($owner) = `dpkg -S '*/$lib' 2>/dev/null` =~ /^([^:,\s]+)/;
    ok($owner && $depends =~ /(^|, )\Q$owner\E[ ,(]|(^|, )\Q$owner\E$/,
       "Depends on $owner, for $lib") or diag $depends;
}
like($depends, qr/(^|, )libcjson1\b/, 'libcjson1 among them');

# --- the stock configuration loads it

($status, $out) = run_cmd('/usr/sbin/nginx -t');
is($status, 0, 'nginx -t: the stock configuration, with the module') or diag $out;
($status, $out) = run_cmd('/usr/sbin/nginx -T');
like($out, qr/^# configuration file \Q$ENABLED\E:\nload_module modules\/ngx_http_openclaw_bridge_module\.so;$/m,
     'nginx -T: the stock nginx.conf includes the enabled snippet');

# --- the system nginx relays, with a configuration of its own: the
# default prefix, so that the snippet's relative path is the system one

my $TOKEN = 'tok-90-deb-3c1f';
my $dir = "$TOP/build/t/90-deb-$$";
remove_tree($dir);
make_path("$dir/tmp");
my $port = OCB::free_port();

$gw = FakeGateway->new(token => $TOKEN, deltas => 2, delta_ms => 5);

# the packaged example, with this test's port, gateway, token and log
my $example = do { local (@ARGV, $/) = "$DOC/examples/openclaw-bridge.conf"; <> } // '';
my %edits = (
    'listen  127.0.0.1:8080;' => "listen  127.0.0.1:$port;",
    'ws://127.0.0.1:18789' => $gw->url,
    '"CHANGE-ME"' => "\"$TOKEN\"",
    '/var/log/nginx/openclaw-bridge.log' => "$dir/access.log",
);
for my $from (sort keys %edits) {
    my $n = () = $example =~ /\Q$from\E/g;
    is($n, 1, "the example has $from once");
    $example =~ s/\Q$from\E/$edits{$from}/;
}
open my $f, '>', "$dir/openclaw-bridge.conf" or die $!;
print $f $example;
close $f;

open $f, '>', "$dir/nginx.conf" or die $!;
print $f <<"EOF";
include /etc/nginx/modules-enabled/*.conf;

worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log info;

events {
    worker_connections 256;
}

http {
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;

    include $dir/openclaw-bridge.conf;
}
EOF
close $f;

my @nginx = ('/usr/sbin/nginx', '-c', "$dir/nginx.conf", '-e', "$dir/error.log");
($status, $out) = run_cmd(join ' ', @nginx, '-t');
is($status, 0, 'nginx -t -c: the example, through modules-enabled') or diag $out;

$ngx_pid = fork // die "fork: $!";
if ($ngx_pid == 0) {
    open STDOUT, '>>', "$dir/stdout.log";
    open STDERR, '>>', "$dir/stdout.log";
    { no warnings 'exec'; exec @nginx, '-g', 'daemon off; master_process on;' }
    POSIX::_exit(127);
}

sub error_log { local (@ARGV, $/) = "$dir/error.log"; return -f $ARGV[0] ? <> : '' }

ok($gw->wait_until(sub { error_log() =~ /gateway link up/ }, 20),
   'the system nginx links to the gateway') or diag error_log();

my $ngx = bless { port => $port }, 'SystemNginx';
my $c = RelayClient->new($ngx, path => '/ws?uid=deb');
$c->send_json({ id => 'deb-1', content => 'hello from the package' });
my @frames = $c->until_terminal(['deb-1'], 20);
my ($end) = grep { $_->{json} && ($_->{json}{type} // '') =~ /^(complete|error)$/ }
            @frames;
is($end && $end->{json}{type}, 'complete', 'the message gets its complete');
is($end && $end->{json}{content}, 'echo: hello from the package',
   'with the reply') or diag explain [map { $_->{json} // $_->{payload} } @frames];
$c->close;

my $r = HTTP::Tiny->new(timeout => 10)->get("http://127.0.0.1:$port/metrics");
is($r->{status}, 200, 'the example answers a scrape at /metrics');
like($r->{content}, qr/^openclaw_bridge_completed_total\{pid="\d+"\} 1$/m,
     'which counts the message');

sub access_log { local (@ARGV, $/) = "$dir/access.log"; return -f $ARGV[0] ? <> : '' }
ok($gw->wait_until(sub { access_log() =~ /GET \/ws/ }, 10),
   'the connection is logged when it ends');
like(access_log(), qr/"GET \/ws\?uid=deb HTTP\/1\.1" 101 .* agent=main uid=deb .* in=1 out=1 errors=0 close=1000 /,
     "with the example's log_format") or diag access_log();

kill 'QUIT', $ngx_pid;
my $deadline = time + 30;
sleep 0.05 until waitpid($ngx_pid, WNOHANG) == $ngx_pid || time > $deadline;
ok(!kill(0, $ngx_pid), 'nginx stops');
undef $ngx_pid unless kill 0, $ngx_pid;
my @bad = grep { /\[(alert|emerg)\]/ } split /\n/, error_log();
ok(!@bad, 'error.log has no [alert] or [emerg]') or diag join "\n", @bad;
$gw->stop;
undef $gw;

# --- removal disables the module; purge leaves nothing

($status, $out) = run_cmd("dpkg --remove $PKG");
is($status, 0, 'dpkg --remove') or diag $out;
ok(!-e $SO && !-e $AVAILABLE, 'the module and its snippet are gone');
ok(!-e $ENABLED && !-l $ENABLED, 'and not enabled any more');
($status, $out) = run_cmd('/usr/sbin/nginx -t');
is($status, 0, 'nginx -t: the stock configuration without it') or diag $out;

($status, $out) = purge();
undef $installed;
is($status, 0, 'dpkg --purge') or diag $out;
is(`dpkg-query -W -f='\${Status}' $PKG 2>/dev/null`, '',
   'dpkg knows nothing of the package any more');
my @left = grep { -e $_ || -l $_ } $SO, $AVAILABLE, $DOC,
    glob('/etc/nginx/modules-enabled/*openclaw*');
ok(!@left, 'no file of it is left') or diag "@left";
is(enabled_modules(), $enabled_before,
   '/etc/nginx/modules-enabled/ is as it was before');

remove_tree($dir);
done_testing;

package SystemNginx;

sub ws { my ($self, %o) = @_; return OCB::Raw->connect($self->{port}, %o) }
