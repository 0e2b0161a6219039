package RelayClient;

# A webhook client of an openclaw_bridge location, for the relay tests: a
# thin layer over OCB::Raw (blocking) that sends JSON messages and reads
# the JSON replies, answering pings on the way.
#
#   my $c = RelayClient->new($ngx, path => '/');   # rcvbuf => 1024: slow
#   $c->send_json({id => 'm1', content => 'hi'});
#   my $r = $c->next_json(5);            # {type => 'progress', ...} or undef
#   my @all = $c->until_terminal(['m1', 'm2'], 10);
#   $c->close;

use strict;
use warnings;

use Mojo::JSON qw(decode_json encode_json);
use Time::HiRes qw(time);

use OCB;

sub new {
    my ($class, $ngx, %o) = @_;
    my $raw = $ngx->ws(path => $o{path} // '/',
                       $o{rcvbuf} ? (rcvbuf => $o{rcvbuf}) : ());
    die "no 101 from nginx: " . ($raw->status_line // 'nothing') . "\n"
        unless ($raw->status // 0) == 101;
    return bless { raw => $raw, frames => [], closed => undef }, $class;
}

sub raw { $_[0]{raw} }

sub send_json {
    my ($self, $msg) = @_;
    return $self->{raw}->send_frame(1, ref $msg ? encode_json($msg) : $msg);
}

sub send_text { $_[0]{raw}->send_frame(1, $_[1]) }
sub send_binary { $_[0]{raw}->send_frame(2, $_[1]) }

# the next data frame as {op, payload, json (decoded or undef), t}; pings
# are answered; a close frame is kept in ->{closed} = [code, reason] and
# ends the reading
sub next_frame {
    my ($self, $timeout) = @_;
    return undef if $self->{closed};
    my $deadline = time + ($timeout // 5);
    for (;;) {
        my $left = $deadline - time;
        return undef if $left <= 0;
        my $f = $self->{raw}->read_frame($left) or return undef;
        if ($f->{op} == 9) {
            $self->{raw}->send_frame(10, $f->{payload});
            next;
        }
        next if $f->{op} == 10;
        if ($f->{op} == 8) {
            my $p = $f->{payload};
            $self->{closed} = length $p >= 2
                ? [unpack('n', $p), substr($p, 2)] : [undef, ''];
            return undef;
        }
        $f->{json} = eval { decode_json($f->{payload}) };
        $f->{t} = time;
        push @{ $self->{frames} }, $f;
        return $f;
    }
}

sub next_json {
    my ($self, $timeout) = @_;
    my $f = $self->next_frame($timeout) or return undef;
    return $f->{json} // { _raw => $f->{payload} };
}

# every frame received so far
sub frames { @{ $_[0]{frames} } }

# reads until every id in @$ids has had a complete or an error, or until
# the timeout; returns the frames read by this call
sub until_terminal {
    my ($self, $ids, $timeout) = @_;
    my %want = map { (ref $_ ? encode_json($_) : $_) => 1 } @$ids;
    my @got;
    my $deadline = time + ($timeout // 10);
    while (%want) {
        my $f = $self->next_frame($deadline - time) or last;
        push @got, $f;
        my $j = $f->{json} or next;
        next unless ($j->{type} // '') =~ /^(complete|error)$/;
        delete $want{ $j->{id} } if defined $j->{id};
    }
    return @got;
}

# reads whatever arrives during $secs
sub drain {
    my ($self, $secs) = @_;
    my @got;
    my $deadline = time + $secs;
    while (time < $deadline) {
        my $f = $self->next_frame($deadline - time) or last;
        push @got, $f;
    }
    return @got;
}

sub closed { $_[0]{closed} }

# what is wrong with the replies of one message (decoded, in order): each
# progress, and the complete, has content and delta, and the deltas,
# started over at each "replace", add up to every content
sub delta_problems {
    my (@replies) = @_;
    my ($acc, $n, @p) = ('', 0);
    for my $j (grep { ref $_ eq 'HASH' } @replies) {
        my $type = $j->{type} // '';
        next unless $type eq 'progress' || $type eq 'complete';
        $n++;
        if (!defined $j->{delta} || !defined $j->{content}) {
            push @p, "reply $n ($type) without delta or content";
            next;
        }
        $acc = '' if $j->{replace};
        $acc .= $j->{delta};
        push @p, "reply $n ($type): content " . encode_json($j->{content})
                 . ' is not the deltas so far ' . encode_json($acc)
            if $j->{content} ne $acc;
    }
    return @p;
}

# a clean close: our close frame, then the server's, then EOF
sub close {
    my ($self, $timeout) = @_;
    my $raw = $self->{raw};
    $raw->send_frame(8, pack('n', 1000));
    unless ($self->{closed}) {
        my $deadline = time + ($timeout // 2);
        while (!$self->{closed} && time < $deadline) {
            $self->next_frame($deadline - time) or last;
        }
    }
    $raw->wait_eof(1);
    $raw->close;
}

# drops the TCP connection without a close frame
sub vanish {
    my ($self) = @_;
    $self->{raw}->close;
}

1;
