#!/usr/bin/env perl
# An exec-runner handler in Perl with the line protocol done by hand
# (docs/RUNNER-PROTOCOL.md): one JSON object per line in, one out. Core
# modules only (JSON::PP, MIME::Base64; Debian: package "perl").
#
# Replies with the request's first frame in capitals; an empty request
# fails; publishes the length on stream "lengths".
#
#     worker
#         runners
#             shout
#                 command = "perl example.pl"
#                 dir = "runners/perl"
use strict;
use warnings;
use JSON::PP;
use MIME::Base64;

my $json = JSON::PP->new->utf8->canonical;    # UTF-8 bytes on both pipes
$| = 1;    # each answer leaves at once
while (my $line = <STDIN>) {
    my $req = eval { $json->decode($line) };
    if (!$req) {
        print $json->encode({ outcome => 'error', reason => "bad request line: $@" }), "\n";
        next;
    }
    # Frames are text, or all base64 when one of them is binary.
    my $binary = $req->{base64};
    my @frames = @{ $req->{frames} };
    @frames = map { decode_base64($_) } @frames if $binary;
    my $body = $frames[0] // '';
    if ($body eq '') {
        print $json->encode({ outcome => 'fail', reason => 'empty request' }), "\n";
        next;
    }
    print STDERR "shouting for $req->{sender} (attempt $req->{attempt})\n";
    print $json->encode({
        outcome => 'done',
        reply   => $binary ? { base64 => encode_base64(uc($body), '') } : uc($body),
        sends   => [ { stream => 'lengths', subject => $req->{subject}, frames => [ length($body) . '' ] } ],
    }), "\n";
}
