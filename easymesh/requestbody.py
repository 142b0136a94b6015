# -*- test-case-name: tests.test_requestbody -*-
"""
A request body streamed from the client to the upstream as it arrives, with
back-pressure: when the upstream cannot take more, the client is paused.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Union

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

#: Bytes held for a paused or not yet connected upstream before the client
#: is paused too.
HIGH_WATER = 64 * 1024


@implementer(IBodyProducer)
class BufferedBody:
    """
    A request body held in memory: it can be produced any number of times
    (so a request can be sent again).
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        if self.data:
            consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class EmptyBody(BufferedBody):
    """
    A body of no bytes, sent with C{Content-Length: 0}.
    """

    def __init__(self) -> None:
        super().__init__(b"")


@implementer(IBodyProducer)
class RequestBodyStream:
    """
    The producer of a request body for the upstream, fed by the listener.

    The listener calls L{write} for each piece of body received, then
    L{finish} (or L{fail}); the upstream calls L{startProducing} once it has
    a connection, and L{pauseProducing} and L{resumeProducing} as its
    transport fills and drains.

    @param pauseSource: Stop reading from the client.
    @param resumeSource: Read from the client again.
    @ivar onData: Called with no argument for each piece of body received,
        if set: the listener times the body's silences with it.
    """

    onData: Optional[Callable[[], None]] = None
    #: The request's trailer fields, once the body has ended with some.
    trailers: Optional[Headers] = None

    def __init__(
        self,
        length: Union[int, object],
        pauseSource: Callable[[], None],
        resumeSource: Callable[[], None],
    ) -> None:
        self.length = length if length is not None else UNKNOWN_LENGTH
        self._pauseSource = pauseSource
        self._resumeSource = resumeSource
        self._buffer: List[bytes] = []
        self._buffered = 0
        self._consumer: Optional[IConsumer] = None
        self._consumerPaused = False
        self._sourcePaused = False
        self._done: Optional[Deferred[None]] = None
        self._failure: Optional[Failure] = None
        self.received = 0
        self.complete = False
        self.stopped = False

    # The listener's side.

    def write(self, data: bytes) -> None:
        """
        More body from the client.
        """
        if self.stopped:
            return
        self.received += len(data)
        if self.onData is not None:
            self.onData()
        if self._consumer is not None and not self._consumerPaused and not self._buffer:
            self._consumer.write(data)
            return
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and not self._sourcePaused:
            self._sourcePaused = True
            self._pauseSource()

    def finish(self, trailers: Optional[Headers] = None) -> None:
        """
        The client has sent the whole body, and these trailers.
        """
        self.trailers = trailers
        self.complete = True
        self._flush()

    def fail(self, reason: Failure) -> None:
        """
        The body will not be completed (the client went away).
        """
        if self.complete:
            return
        self._failure = reason
        self._buffer = []
        self._buffered = 0
        done, self._done = self._done, None
        if done is not None:
            done.errback(reason)

    # The upstream's side.

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        if self._failure is not None:
            d: Deferred[None] = Deferred()
            d.errback(self._failure)
            return d
        self._consumer = consumer
        self._done = Deferred()
        done = self._done
        self._flush()
        return done

    def pauseProducing(self) -> None:
        self._consumerPaused = True
        if not self._sourcePaused and not self.complete:
            self._sourcePaused = True
            self._pauseSource()

    def resumeProducing(self) -> None:
        self._consumerPaused = False
        self._flush()

    def stopProducing(self) -> None:
        """
        The upstream no longer wants the body; what else arrives is dropped.
        """
        self.stopped = True
        self._buffer = []
        self._buffered = 0
        self._done = None
        self._consumer = None
        self._resume()

    def _flush(self) -> None:
        consumer = self._consumer
        if consumer is None or self._consumerPaused or self.stopped:
            return
        while self._buffer and not self._consumerPaused:
            data = self._buffer.pop(0)
            self._buffered -= len(data)
            consumer.write(data)
        if self._consumerPaused:
            return
        self._resume()
        if self.complete and not self._buffer:
            # Produced whole: let go of the consumer, which may hold this
            # body (an HTTP/2 stream does), so that the two are not left a
            # reference cycle.
            self._consumer = None
            done, self._done = self._done, None
            if done is not None:
                done.callback(None)

    def _resume(self) -> None:
        if self._sourcePaused:
            self._sourcePaused = False
            self._resumeSource()

