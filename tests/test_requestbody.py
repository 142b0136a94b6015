"""
Tests for L{easymesh.requestbody}: a request body streamed with
back-pressure both ways.
"""

from __future__ import annotations

from typing import List

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH

from easymesh.requestbody import HIGH_WATER, RequestBodyStream


class Source:
    """
    The client side: records pauses and resumes.
    """

    def __init__(self) -> None:
        self.paused = False
        self.calls: List[str] = []

    def pause(self) -> None:
        self.paused = True
        self.calls.append("pause")

    def resume(self) -> None:
        self.paused = False
        self.calls.append("resume")


class Consumer:
    def __init__(self) -> None:
        self.data: List[bytes] = []

    def write(self, data: bytes) -> None:
        self.data.append(data)


def make(length=UNKNOWN_LENGTH):
    source = Source()
    stream = RequestBodyStream(length, source.pause, source.resume)
    return source, stream


def fired(d: Deferred) -> list:
    box: list = []
    d.addBoth(box.append)
    return box


def test_lengthKept() -> None:
    _, stream = make(10)
    assert stream.length == 10
    _, chunked = make(None)
    assert chunked.length is UNKNOWN_LENGTH


def test_writesThroughOnceStarted() -> None:
    """
    Once the upstream consumes, body bytes go straight to it, and the
    producing Deferred fires when the body is complete.
    """
    source, stream = make()
    consumer = Consumer()
    done = fired(stream.startProducing(consumer))
    stream.write(b"abc")
    stream.write(b"def")
    assert consumer.data == [b"abc", b"def"]
    assert done == []
    stream.finish()
    assert done == [None]
    assert source.calls == []


def test_buffersBeforeStartThenPausesSource() -> None:
    """
    Before the upstream connection is ready, bytes are held, and the client
    is paused past the high-water mark; starting flushes and resumes.
    """
    source, stream = make()
    stream.write(b"x" * HIGH_WATER)
    assert not source.paused
    stream.write(b"y")
    assert source.paused
    consumer = Consumer()
    stream.startProducing(consumer)
    assert b"".join(consumer.data) == b"x" * HIGH_WATER + b"y"
    assert not source.paused


def test_upstreamBackPressure() -> None:
    """
    The upstream's pause pauses the client; its resume flushes what was
    held and resumes the client.
    """
    source, stream = make()
    consumer = Consumer()
    stream.startProducing(consumer)
    stream.pauseProducing()
    assert source.paused
    stream.write(b"late")
    assert consumer.data == []
    stream.resumeProducing()
    assert consumer.data == [b"late"]
    assert not source.paused


def test_completeWhilePausedResumesSource() -> None:
    """
    The body can end while the client is paused (its last bytes were
    already read); the client is still resumed once the upstream drains,
    or its connection would never be read again.
    """
    source, stream = make()
    consumer = Consumer()
    done = fired(stream.startProducing(consumer))
    stream.pauseProducing()
    stream.write(b"last")
    stream.finish()
    assert source.paused
    assert done == []
    stream.resumeProducing()
    assert consumer.data == [b"last"]
    assert done == [None]
    assert not source.paused


def test_stopProducingDropsAndResumes() -> None:
    """
    An upstream that gives up drops the rest and lets the client go on.
    """
    source, stream = make()
    stream.write(b"x" * (HIGH_WATER + 1))
    assert source.paused
    stream.stopProducing()
    assert not source.paused
    stream.write(b"more")
    assert stream.stopped


def test_failBeforeAndAfterStart() -> None:
    """
    A client that goes away fails the body for the upstream.
    """
    _, stream = make()
    consumer = Consumer()
    done = fired(stream.startProducing(consumer))
    stream.fail(Failure(ConnectionError("gone")))
    assert isinstance(done[0], Failure)

    _, early = make()
    early.fail(Failure(ConnectionError("gone")))
    late = fired(early.startProducing(Consumer()))
    assert isinstance(late[0], Failure)


def test_failAfterCompleteIgnored() -> None:
    _, stream = make()
    done = fired(stream.startProducing(Consumer()))
    stream.finish()
    stream.fail(Failure(ConnectionError("gone")))
    assert done == [None]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(min_size=1, max_size=HIGH_WATER // 2).map(lambda b: ("write", b)),
            st.just(("pause", b"")),
            st.just(("resume", b"")),
        ),
        max_size=40,
    ),
    st.integers(min_value=0, max_value=40),
)
def test_bytesInOrderWhateverTheBackPressure(steps, startAt) -> None:
    """
    Whatever the interleaving of writes, pauses and resumes, the upstream
    gets exactly the bytes written, in order, once it is resumed, and the
    client ends up reading again.
    """
    source, stream = make()
    consumer = Consumer()
    written = []
    started = False
    done: list = []
    for index, (kind, data) in enumerate(steps):
        if index == startAt:
            done = fired(stream.startProducing(consumer))
            started = True
        if kind == "write":
            stream.write(data)
            written.append(data)
        elif started and kind == "pause":
            stream.pauseProducing()
        elif started:
            stream.resumeProducing()
    if not started:
        done = fired(stream.startProducing(consumer))
    stream.finish()
    assert done == [] or b"".join(consumer.data) == b"".join(written)
    stream.resumeProducing()
    assert b"".join(consumer.data) == b"".join(written)
    assert not source.paused
    assert done == [None]
