# -*- test-case-name: tests.test_discovery -*-
"""
Where a cluster's endpoints come from: a fixed list, or a DNS name
resolved again every few seconds through the reactor's name resolver
(which never blocks the reactor).
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import DNSLookupError
from twisted.python.failure import Failure
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IResolutionReceiver
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from easymesh.config.addresses import UpstreamURL
from easymesh.config.mesh import DnsDiscovery

#: Endpoint URLs with their weights.
Hosts = Sequence[Tuple[UpstreamURL, int]]


@implementer(IResolutionReceiver)
class _Addresses:
    """
    Collect the addresses one name resolution finds.
    """

    def __init__(self) -> None:
        self.addresses: List[Tuple[str, int]] = []
        self.done: Deferred[List[Tuple[str, int]]] = Deferred()

    def resolutionBegan(self, resolutionInProgress: Any) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        if isinstance(address, (IPv4Address, IPv6Address)):
            entry = (address.host, address.port)
            if entry not in self.addresses:
                self.addresses.append(entry)

    def resolutionComplete(self) -> None:
        self.done.callback(self.addresses)


def resolveAll(resolver: Any, name: str, port: int) -> Deferred[List[Tuple[str, int]]]:
    """
    Every TCP address of C{name}, through an
    L{twisted.internet.interfaces.IHostnameResolver}.
    """
    receiver = _Addresses()
    resolver.resolveHostName(receiver, name, port, transportSemantics="TCP")
    return receiver.done


#: Seconds a resolution may take (at least; the refresh period if longer)
#: before it counts as failed and the next refresh is due.
RESOLVE_TIMEOUT = 5.0


def _within(d: Deferred[Any], seconds: float, clock: Any, name: str) -> Deferred[Any]:
    """
    The result of C{d}, or a L{DNSLookupError} if it takes longer than
    C{seconds}; a late answer is dropped.
    """
    result: Deferred[Any] = Deferred()

    def expire() -> None:
        if not result.called:
            result.errback(DNSLookupError(f"no answer for {name} within {seconds:g}s"))

    timer = clock.callLater(seconds, expire)

    def done(outcome: Any) -> None:
        if timer.active():
            timer.cancel()
        if result.called:
            return
        if isinstance(outcome, Failure):
            result.errback(outcome)
        else:
            result.callback(outcome)

    d.addBoth(done)
    return result


class DnsHosts:
    """
    Resolve a name every C{refresh} seconds and report the endpoints found;
    a failed or empty resolution keeps the last good set.  Once stopped,
    nothing more is reported, not even a resolution already under way.

    @param update: Called with the new L{Hosts} whenever they change.
    """

    log = Logger()

    def __init__(
        self,
        config: DnsDiscovery,
        resolver: Any,
        clock: Any,
        update: Callable[[Hosts], None],
        cluster: str = "",
    ) -> None:
        self.config = config
        self._resolver = resolver
        self._update = update
        self._cluster = cluster
        self._clock = clock
        self._loop = LoopingCall(self.refresh)
        self._loop.clock = clock
        self._current: Optional[List[Tuple[str, int]]] = None
        self._failing = False
        self._running = False

    def start(self) -> None:
        self._running = True
        self._loop.start(self.config.refresh, now=True)

    def stop(self) -> None:
        self._running = False
        if self._loop.running:
            self._loop.stop()

    def refresh(self) -> Deferred[None]:
        """
        Resolve now; the loop waits for this before the next refresh.  It
        never fails, so that refreshing goes on whatever happens.
        """
        d = maybeDeferred(resolveAll, self._resolver, self.config.name, self.config.port)
        d = _within(d, max(RESOLVE_TIMEOUT, self.config.refresh), self._clock, self.config.name)
        done: Deferred[None] = d.addCallbacks(self._resolved, self._failed)
        return done.addErrback(self._updateFailed)

    def _resolved(self, addresses: List[Tuple[str, int]]) -> None:
        if not self._running:
            return
        if not addresses:
            self._failed(None)
            return
        if self._failing:
            self._failing = False
            self.log.info(
                "Cluster {cluster}: {name} resolves again", cluster=self._cluster, name=self.config.name
            )
        addresses = sorted(addresses)
        if addresses == self._current:
            return
        scheme = self.config.scheme
        self._update([(UpstreamURL(scheme, host, port), 1) for host, port in addresses])
        self._current = addresses

    def _updateFailed(self, failure: Any) -> None:
        self.log.failure(
            "Cluster {cluster}: could not use the addresses of {name}",
            failure,
            cluster=self._cluster,
            name=self.config.name,
        )

    def _failed(self, failure: Any) -> None:
        if not self._running:
            return
        if not self._failing:
            self._failing = True
            self.log.warn(
                "Cluster {cluster}: resolving {name} failed ({reason}); keeping the "
                "last {count} endpoint(s)",
                cluster=self._cluster,
                name=self.config.name,
                reason="no addresses" if failure is None else failure.getErrorMessage(),
                count=len(self._current or ()),
            )
