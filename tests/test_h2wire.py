"""
Tests for L{easymesh.h2wire}: what the HTTP/2 edge and upstream share.
"""

from __future__ import annotations

from typing import List

import pytest
from hyperframe.frame import DataFrame, GoAwayFrame, PingFrame, SettingsFrame
from twisted.web.http_headers import Headers

from easymesh.h2wire import GoAwayFilter, fieldsOf


def frames() -> List[bytes]:
    data = DataFrame(1)
    data.data = b"x" * 100
    ping = PingFrame(0)
    ping.opaque_data = b"12345678"
    return [
        SettingsFrame(0).serialize(),
        GoAwayFrame(0, last_stream_id=7, error_code=0).serialize(),
        ping.serialize(),
        data.serialize(),
        GoAwayFrame(0, last_stream_id=3, error_code=11).serialize(),
    ]


@pytest.mark.parametrize("step", [1, 3, 9, 17, 1000])
def test_goAwaysTakenOutHoweverSplit(step: int) -> None:
    """
    Every GOAWAY is taken out, in order, with its last stream and code;
    every other byte is passed on, in order, in whole frames.
    """
    whole = b"".join(frames())
    expected = b"".join(f for f in frames() if f[3] != 0x7)
    goAways = []
    passed = b""
    splitter = GoAwayFilter()
    for i in range(0, len(whole), step):
        data, found = splitter.feed(whole[i : i + step])
        passed += data
        goAways += found
    assert passed == expected
    assert [(g.lastStreamId, g.errorCode) for g in goAways] == [(7, 0), (3, 11)]


def test_prefaceSkipped() -> None:
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    splitter = GoAwayFilter(skip=len(preface))
    stream = preface + b"".join(frames())
    passed, goAways = splitter.feed(stream[:10])
    assert passed == stream[:10]
    rest, goAways = splitter.feed(stream[10:])
    assert passed + rest == preface + b"".join(f for f in frames() if f[3] != 0x7)
    assert len(goAways) == 2


def test_oversizedFramePassedOn() -> None:
    """
    A frame longer than this side accepts is not held: it goes on as it
    comes, for the h2 library to refuse, and nothing is buffered.
    """
    header = (20000).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01"
    splitter = GoAwayFilter()
    passed, _ = splitter.feed(header + b"y" * 10)
    assert passed == header + b"y" * 10
    more, _ = splitter.feed(b"z" * 5)
    assert more == b"z" * 5


def test_fieldsOf() -> None:
    headers = Headers({b"Content-Type": [b"a"], b"Connection": [b"close"], b"X-Multi": [b"1", b"2"]})
    assert sorted(fieldsOf(headers)) == [(b"content-type", b"a"), (b"x-multi", b"1"), (b"x-multi", b"2")]
