# -*- test-case-name: tests.test_upstream_http -*-
"""
HTTP/1.1 upstreams (C{http://} and C{https://}): Twisted's L{Agent} over one
persistent L{HTTPConnectionPool} per upstream.

treq's C{HTTPClient} is not used on this path: it decodes gzip (adding
C{Accept-Encoding} and rewriting the body), keeps a cookie jar and re-encodes
the URL, each wrong for a proxy.  The pool is the same one treq composes.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IDelayedCall
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from easymesh.config.addresses import UpstreamURL
from easymesh.config.model import PoolSettings
from easymesh.errors import UpstreamTimeout
from easymesh.interfaces import IUpstream
from easymesh.message import ProxyRequest


@implementer(IBodyProducer)
class _BodyEndWatch:
    """
    A body producer that calls C{onEnd} once the wrapped producer has
    written the whole body: the response timeout runs from then.
    """

    def __init__(self, producer: IBodyProducer, onEnd: Any) -> None:
        self._producer = producer
        self._onEnd = onEnd
        self.length = producer.length

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        return self._producer.startProducing(consumer).addCallback(self._ended)

    def _ended(self, result: None) -> None:
        self._onEnd()
        return result

    def pauseProducing(self) -> None:
        self._producer.pauseProducing()

    def resumeProducing(self) -> None:
        self._producer.resumeProducing()

    def stopProducing(self) -> None:
        self._producer.stopProducing()


class _Attempt:
    """
    One request upstream, with its response-headers timer.
    """

    def __init__(self, clock: Any, timeout: float) -> None:
        self._clock = clock
        self._timeout = timeout
        self._timer: Optional[IDelayedCall] = None
        self.timedOut = False
        self.bodyEnded = False
        self.deferred: Optional[Deferred[IResponse]] = None

    def endBody(self) -> None:
        self.bodyEnded = True
        self.startTimer()

    def startTimer(self) -> None:
        if self._timer is None and self.deferred is not None and not self.deferred.called:
            self._timer = self._clock.callLater(self._timeout, self._expire)

    def _expire(self) -> None:
        self._timer = None
        self.timedOut = True
        assert self.deferred is not None
        self.deferred.cancel()

    def stopTimer(self, result: Any) -> Any:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return result

    def mapTimeout(self, failure: Failure) -> Failure:
        if self.timedOut:
            return Failure(
                UpstreamTimeout(f"no response headers within {self._timeout:g}s")
            )
        return failure


class _QuietClientFactory(_HTTP11ClientFactory):
    """
    The pool's connection factory, without a log line per connection.
    """

    noisy = False


@implementer(IUpstream)
class HTTPUpstream:
    """
    An HTTP/1.1 upstream.

    @param agent: The agent to send with; by default an L{Agent} over this
        upstream's own pool.  Tests pass an in-memory agent.
    """

    def __init__(
        self,
        url: UpstreamURL,
        settings: PoolSettings,
        reactor: Any,
        agent: Optional[IAgent] = None,
    ) -> None:
        self.url = url
        self._reactor = reactor
        self._timeout = settings.responseTimeout
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = settings.size
        self.pool.cachedConnectionTimeout = settings.idle
        self.pool.retryAutomatically = True
        self.pool._factory = _QuietClientFactory
        if agent is None:
            agent = Agent(reactor, connectTimeout=settings.connectTimeout, pool=self.pool)
        self._agent = agent
        self._base = str(url).encode("ascii")

    def request(self, request: ProxyRequest) -> Deferred[IResponse]:
        attempt = _Attempt(self._reactor, self._timeout)
        body = request.body
        if body is not None:
            body = _BodyEndWatch(body, attempt.endBody)
        d = self._agent.request(
            request.method, self._base + request.target, request.headers, body
        )
        attempt.deferred = d
        if body is None or attempt.bodyEnded:
            attempt.startTimer()
        d.addBoth(attempt.stopTimer)
        d.addErrback(attempt.mapTimeout)
        return d

    def close(self) -> Deferred[None]:
        return self.pool.closeCachedConnections()

