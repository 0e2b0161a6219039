package HttpClient;

# A client of an openclaw_bridge_http location, for the tests: one request
# per connection over a raw socket, so that a test sees the status, the
# headers and the body as they came, reads an event stream event by event
# (with the time each arrived), and can leave in the middle.
#
#   my $r = HttpClient::post($port, '/http', {id => 'm1', content => 'hi'});
#   $r->{status}, $r->{headers}{'content-type'}, $r->{json}
#
#   my $s = HttpClient->open($port, '/http', $body, accept => 'text/event-stream');
#   $s->head;                        # status and headers, or undef
#   my $e = $s->next_event(5);       # {event, data, json, t} or undef
#   $s->vanish;                      # drops the connection

use strict;
use warnings;

use IO::Select;
use IO::Socket::INET;
use Socket qw(SOL_SOCKET SO_RCVBUF pack_sockaddr_in inet_aton);
use Mojo::JSON qw(decode_json encode_json);
use Time::HiRes qw(time);

# open($port, $path, $body (a hash is sent as JSON, a string as it is),
#      method => 'POST', type => 'application/json' (undef: none),
#      accept => ..., headers => {...}, chunked => 1, rcvbuf => bytes)
sub open {
    my ($class, $port, $path, $body, %o) = @_;
    my $sock = IO::Socket::INET->new(Proto => 'tcp')
        or die "socket: $!";
    # a small receive window, set before the connect: a slow reader
    setsockopt($sock, SOL_SOCKET, SO_RCVBUF, $o{rcvbuf}) if $o{rcvbuf};
    $sock->connect(pack_sockaddr_in($port, inet_aton('127.0.0.1')))
        or die "connect: $!";
    $sock->autoflush(1);
    $body = encode_json($body) if ref $body;
    $body //= '';
    my $method = $o{method} // 'POST';
    my $type = exists $o{type} ? $o{type} : 'application/json';
    my $req = "$method $path HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n";
    $req .= "Content-Type: $type\r\n" if defined $type;
    $req .= "Accept: $o{accept}\r\n" if $o{accept};
    $req .= "$_: $o{headers}{$_}\r\n" for sort keys %{ $o{headers} // {} };
    if ($o{chunked}) {
        $req .= "Transfer-Encoding: chunked\r\n\r\n";
        $req .= sprintf("%x\r\n%s\r\n", length $body, $body) if length $body;
        $req .= "0\r\n\r\n";
    } elsif ($method eq 'POST' || length $body) {
        $req .= 'Content-Length: ' . length($body) . "\r\n\r\n$body";
    } else {
        $req .= "\r\n";
    }
    print $sock $req;
    return bless { sock => $sock, buf => '', body => '', t0 => time }, $class;
}

sub sock { $_[0]{sock} }

# reads more into the buffer; false at EOF or timeout
sub _fill {
    my ($self, $timeout) = @_;
    return 0 if $self->{eof};
    my $sel = IO::Select->new($self->{sock});
    return 0 unless $sel->can_read($timeout);
    my $n = sysread($self->{sock}, my $chunk, 65536);
    if (!$n) {
        $self->{eof} = 1;
        return 0;
    }
    $self->{buf} .= $chunk;
    return 1;
}

# the status line and headers: {status, headers => {lc name => value}}
sub head {
    my ($self, $timeout) = @_;
    return $self->{head} if $self->{head};
    my $deadline = time + ($timeout // 10);
    while ($self->{buf} !~ /\r\n\r\n/) {
        my $left = $deadline - time;
        return undef if $left <= 0 || !$self->_fill($left);
    }
    $self->{buf} =~ s/^(.*?)\r\n\r\n//s;
    my ($line, @lines) = split /\r\n/, $1;
    my ($status) = $line =~ m{^HTTP/1\.[01] (\d+)};
    my %h;
    for (@lines) {
        my ($k, $v) = /^([^:]+):\s*(.*)$/ or next;
        $h{ lc $k } = defined $h{ lc $k } ? "$h{lc $k}, $v" : $v;
    }
    $self->{chunked} = ($h{'transfer-encoding'} // '') =~ /chunked/i;
    $self->{length} = $h{'content-length'};
    return $self->{head} = { status => $status, headers => \%h,
                             line => $line };
}

# moves whole body bytes from the buffer to {body}; true at the body's end
sub _body_step {
    my ($self) = @_;
    if (!$self->{chunked}) {
        $self->{body} .= $self->{buf};
        $self->{buf} = '';
        return defined $self->{length}
               ? length($self->{body}) >= $self->{length} : $self->{eof};
    }
    while ($self->{buf} =~ /^([0-9a-fA-F]+)[^\r\n]*\r\n/) {
        my ($hex, $hl) = ($1, length $&);
        my $n = hex $hex;
        if ($n == 0) {
            return 0 unless $self->{buf} =~ /^[^\r\n]*\r\n\r\n/;
            $self->{done} = 1;
            $self->{buf} = '';
            return 1;
        }
        return 0 if length($self->{buf}) < $hl + $n + 2;
        $self->{body} .= substr($self->{buf}, $hl, $n);
        substr($self->{buf}, 0, $hl + $n + 2) = '';
    }
    return $self->{done} // 0;
}

# the whole body (decoded from chunks); undef on timeout
sub body {
    my ($self, $timeout) = @_;
    my $deadline = time + ($timeout // 10);
    $self->head($timeout) or return undef;
    until ($self->_body_step) {
        my $left = $deadline - time;
        if ($left <= 0 || !$self->_fill($left)) {
            return $self->{eof} && !$self->{chunked} && !defined $self->{length}
                   ? $self->{body} : undef;
        }
    }
    return $self->{body};
}

# the stream ended properly: the last chunk came
sub ended { $_[0]{done} ? 1 : 0 }

# the next event of a stream, {event, data, json, t (seconds from the
# request)}, or undef on timeout or at the end of the stream
sub next_event {
    my ($self, $timeout) = @_;
    my $deadline = time + ($timeout // 10);
    $self->head($timeout) or return undef;
    while (1) {
        $self->_body_step;
        if ($self->{body} =~ s/^(.*?)\n\n//s) {
            my %e = (t => time - $self->{t0}, raw => $1);
            for my $line (split /\n/, $1) {
                my ($k, $v) = $line =~ /^([^:]*):\s?(.*)$/ or next;
                $e{$k} = exists $e{$k} && $k eq 'data' ? "$e{$k}\n$v" : $v;
            }
            $e{json} = eval { decode_json($e{data}) } if defined $e{data};
            return \%e;
        }
        return undef if $self->{done};
        my $left = $deadline - time;
        return undef if $left <= 0 || !$self->_fill($left);
    }
}

sub vanish { CORE::close($_[0]{sock}) }

# one request, the whole answer: {status, headers, body, json, line}
sub post {
    my ($port, $path, $body, %o) = @_;
    my $c = HttpClient->open($port, $path, $body, %o);
    my $h = $c->head($o{timeout} // 10) or return { status => 0 };
    my $b = $c->body($o{timeout} // 10);
    $c->vanish;
    my $j = defined $b ? eval { decode_json($b) } : undef;
    return { %$h, body => $b, json => $j };
}

1;
