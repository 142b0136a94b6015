"""
Tests for L{easymesh.h2wire}: what the HTTP/2 edge and upstream share.
"""

from __future__ import annotations

from typing import List

import pytest
from hpack import Decoder, NeverIndexedHeaderTuple
from hyperframe.frame import DataFrame, GoAwayFrame, PingFrame, SettingsFrame
from twisted.web.http_headers import Headers

from easymesh.h2wire import (
    DataHead,
    DeclaredLengths,
    FrameFilter,
    PlainEncoder,
    Segment,
    declaredLength,
    field,
    fieldsOf,
)


def frames() -> List[bytes]:
    data = DataFrame(1)
    data.data = b"x" * 100
    padded = DataFrame(3, flags=["END_STREAM", "PADDED"])
    padded.data = b"y" * 10
    padded.pad_length = 4
    ping = PingFrame(0)
    ping.opaque_data = b"12345678"
    return [
        SettingsFrame(0).serialize(),
        GoAwayFrame(0, last_stream_id=7, error_code=0).serialize(),
        ping.serialize(),
        data.serialize(),
        GoAwayFrame(0, last_stream_id=3, error_code=11).serialize(),
        padded.serialize(),
    ]


def split(segments: List[Segment]) -> "tuple[bytes, List[tuple[int, int, bool]]]":
    """
    The bytes passed on, and the DATA heads announced, checking that
    each head comes just before the bytes of its frame.
    """
    passed = b""
    heads = []
    for i, segment in enumerate(segments):
        if isinstance(segment, DataHead):
            heads.append((segment.streamId, segment.length, segment.endStream))
            following = segments[i + 1]
            assert isinstance(following, bytes) and following[3] == 0x0
        else:
            passed += segment
    return passed, heads


@pytest.mark.parametrize("step", [1, 3, 9, 17, 1000])
def test_goAwaysTakenOutHoweverSplit(step: int) -> None:
    """
    Every GOAWAY is taken out, in order, with its last stream and code;
    every other byte is passed on, in order, in whole frames; each DATA
    frame is announced just before it, with its data's length (padding
    left out) and whether it ends the stream.
    """
    whole = b"".join(frames())
    expected = b"".join(f for f in frames() if f[3] != 0x7)
    goAways = []
    passed = b""
    heads = []
    splitter = FrameFilter()
    for i in range(0, len(whole), step):
        segments, found = splitter.feed(whole[i : i + step])
        data, announced = split(segments)
        passed += data
        heads += announced
        goAways += found
    assert passed == expected
    assert [(g.lastStreamId, g.errorCode) for g in goAways] == [(7, 0), (3, 11)]
    assert heads == [(1, 100, False), (3, 10, True)]


def test_prefaceSkipped() -> None:
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    splitter = FrameFilter(skip=len(preface))
    stream = preface + b"".join(frames())
    passed, goAways = split(splitter.feed(stream[:10])[0]), []
    assert passed[0] == stream[:10]
    segments, goAways = splitter.feed(stream[10:])
    rest, _ = split(segments)
    assert passed[0] + rest == preface + b"".join(f for f in frames() if f[3] != 0x7)
    assert len(goAways) == 2


def test_oversizedFramePassedOn() -> None:
    """
    A frame longer than this side accepts is not held: it goes on as it
    comes, for the h2 library to refuse, and nothing is buffered.
    """
    header = (20000).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01"
    splitter = FrameFilter()
    passed, _ = splitter.feed(header + b"y" * 10)
    assert passed == [header + b"y" * 10]
    more, _ = splitter.feed(b"z" * 5)
    assert more == [b"z" * 5]


def test_fieldsOf() -> None:
    headers = Headers({b"Content-Type": [b"a"], b"Connection": [b"close"], b"X-Multi": [b"1", b"2"]})
    assert sorted(fieldsOf(headers)) == [(b"content-type", b"a"), (b"x-multi", b"1"), (b"x-multi", b"2")]


def test_fieldsNotIndexed() -> None:
    """
    Secrets and values new with every message are never indexed; other
    fields may be.
    """
    assert isinstance(field(b"authorization", b"Bearer x"), NeverIndexedHeaderTuple)
    assert isinstance(field(b"x-request-id", b"1"), NeverIndexedHeaderTuple)
    assert isinstance(field(b"x-long", b"v" * 600), NeverIndexedHeaderTuple)
    assert not isinstance(field(b"user-agent", b"curl"), NeverIndexedHeaderTuple)
    assert isinstance(fieldsOf(Headers({b"Cookie": [b"a=b"]}))[0], NeverIndexedHeaderTuple)


def test_plainEncoderRoundTrip() -> None:
    """
    L{PlainEncoder} writes literals without Huffman coding, and what it
    writes decodes to the same fields; never-indexed fields stay out of
    the table.
    """
    encoder, decoder = PlainEncoder(), Decoder()
    fields = [(b":method", b"GET"), (b"user-agent", b"curl/8"), field(b"x-request-id", b"abc-123")]
    block = encoder.encode(fields)
    assert b"curl/8" in block and b"abc-123" in block
    assert [tuple(f) for f in decoder.decode(block, raw=True)] == [tuple(f) for f in fields]
    assert [n for n, v in encoder.header_table.dynamic_entries] == [b"user-agent"]


def test_declaredLength() -> None:
    assert declaredLength([(b":method", b"POST"), (b"content-length", b"5")]) == 5
    assert declaredLength([(b":method", b"HEAD"), (b"content-length", b"5")]) == 0
    assert declaredLength([(b":status", b"200"), (b"content-length", b"7")], b"HEAD") == 0
    assert declaredLength([(b":status", b"200"), (b"content-length", b"7")], b"GET") == 7
    assert declaredLength([(b":method", b"GET")]) is None


def test_declaredLengths() -> None:
    """
    DATA is counted per stream against the declared length: too much is
    found at once, too little at the end (by DATA or by trailers); a
    stream without a declared length is never checked, and a stream is
    forgotten once it is decided.
    """
    lengths = DeclaredLengths()
    lengths.declare(1, 5)
    lengths.declare(3, 5)
    lengths.declare(5, 5)
    lengths.declare(7, None)
    assert lengths.check(DataHead(1, 3, False)) is None
    assert lengths.check(DataHead(1, 2, True)) is None
    assert lengths.check(DataHead(3, 6, False)) == "more DATA than content-length"
    assert lengths.check(DataHead(3, 6, False)) is None
    assert lengths.check(DataHead(5, 4, False)) is None
    assert lengths.ended(5) == "less DATA than content-length"
    assert lengths.check(DataHead(7, 100, True)) is None
    assert lengths.check(DataHead(1, 100, False)) is None
    assert lengths.ended(5) is None
