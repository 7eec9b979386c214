"""Where a request ends in the bytes read so far: the worker serves a request only once all of it is here."""
from __future__ import annotations

import pytest

from omni_mev.http_framing import BodyTooLarge, ChunkedBody, MalformedBody, head_length

HEAD = b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_head_ends_at_the_blank_line():
    assert head_length(HEAD[:-1]) is None
    assert head_length(HEAD + b"5\r\n") == len(HEAD)


def test_a_chunked_body_ends_after_its_last_chunk_and_trailers():
    body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"
    scan = ChunkedBody(len(HEAD), 1024)
    assert scan.end(HEAD + body) == len(HEAD) + len(body)
    assert scan.content(HEAD + body) == b"hello world"
    with_trailer = b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\nGET / HTTP/1.1\r\n"
    assert ChunkedBody(len(HEAD), 1024).end(HEAD + with_trailer) == len(HEAD) + with_trailer.index(b"GET")


def test_the_scan_resumes_as_pieces_arrive():
    body = b"".join(b"1\r\n%c\r\n" % (97 + i % 26) for i in range(500)) + b"0\r\n\r\n"
    scan, buffer = ChunkedBody(len(HEAD), 1024), bytearray(HEAD)
    ends = []
    for index in range(len(body)):
        buffer += body[index:index + 1]
        ends.append(scan.end(buffer))
    assert ends[:-1] == [None] * (len(body) - 1) and ends[-1] == len(buffer)
    assert scan.data == 500  # each chunk counted once
    assert scan.content(buffer) == bytes(97 + i % 26 for i in range(500))


def test_a_control_character_in_a_chunk_extension_is_malformed():
    with pytest.raises(MalformedBody, match="control character"):
        ChunkedBody(len(HEAD), 1024).end(HEAD + b"5;a=\x01\r\nhello\r\n0\r\n\r\n")


def test_a_chunked_body_over_the_limit_is_refused_before_it_ends():
    scan = ChunkedBody(len(HEAD), 8)
    assert scan.end(HEAD + b"5\r\nhello\r\n") is None
    with pytest.raises(BodyTooLarge):
        scan.end(HEAD + b"5\r\nhello\r\n5\r\n")


@pytest.mark.parametrize(("body", "says"), [
    (b"zz\r\nhello", "not hexadecimal"),
    (b"-5\r\nhello\r\n", "not hexadecimal"),
    (b"\r\n", "not hexadecimal"),
    (b"5\r\nhelloXX0\r\n\r\n", "not followed by CRLF"),
    (b"5" * 5000, "over 4096 bytes"),
])
def test_broken_framing_is_refused_since_where_the_body_ends_cannot_be_known(body, says):
    with pytest.raises(MalformedBody, match=says):
        ChunkedBody(len(HEAD), 1 << 20).end(HEAD + body)
