"""
Tests for L{easymesh.filters}: the filter chain, building chains from
plugins, argument parsing, the C{ratelimit} filter and discovery of a
third-party filter plugin.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from typing import Any, Iterator, List, Optional

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from zope.interface import implementer
from zope.interface.verify import verifyObject

from easymesh.config.model import ConfigError, FilterSpec
from easymesh.errors import TooManyRequests, replyFor
from easymesh.filters import ratelimit
from easymesh.filters.chain import FilterChain, FilterContext, buildChain
from easymesh.filters.plugin import FilterPlugin, availableFilters, parseArgs
from easymesh.interfaces import IFilter, IFilterFactory
from easymesh.message import LocalReply, ProxyRequest

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "thirdparty")


def makeRequest() -> ProxyRequest:
    return ProxyRequest(b"GET", b"/path?q=1", Headers(), listener="inbound")


@implementer(IFilter)
class Recorder:
    """
    A filter that logs its calls to a shared list and answers as told.
    """

    def __init__(
        self,
        name: str,
        log: List[str],
        onRequest: Any = None,
        onResponse: Any = None,
    ) -> None:
        self.name = name
        self.log = log
        self.onRequest = onRequest
        self.onResponse = onResponse

    def requestReceived(self, request: ProxyRequest) -> Any:
        self.log.append(f"request {self.name}")
        return self.onRequest() if callable(self.onRequest) else self.onRequest

    def responseReceived(self, request: ProxyRequest, response: Any) -> Any:
        self.log.append(f"response {self.name}")
        return self.onResponse() if callable(self.onResponse) else self.onResponse


def boom() -> None:
    raise ZeroDivisionError("filter bug")


class FilterChainTests(SynchronousTestCase):
    def test_empty(self) -> None:
        chain = FilterChain()
        self.assertFalse(chain)
        request = makeRequest()
        self.assertIsNone(self.successResultOf(chain.requestReceived(request)))
        response = LocalReply(200)
        self.assertIs(self.successResultOf(chain.responseReceived(request, response)), response)

    def test_order(self) -> None:
        """
        Request hooks run in chain order, response hooks in reverse.
        """
        log: List[str] = []
        chain = FilterChain([Recorder(n, log) for n in "abc"])
        self.assertTrue(chain)
        request = makeRequest()
        self.assertIsNone(self.successResultOf(chain.requestReceived(request)))
        response = LocalReply(200)
        self.assertIs(self.successResultOf(chain.responseReceived(request, response)), response)
        self.assertEqual(
            log,
            ["request a", "request b", "request c", "response c", "response b", "response a"],
        )

    def test_earlyReply(self) -> None:
        """
        A filter that answers stops the request hooks after it.
        """
        log: List[str] = []
        reply = LocalReply(403, b"no\n")
        chain = FilterChain(
            [Recorder("a", log), Recorder("b", log, reply), Recorder("c", log)]
        )
        self.assertIs(self.successResultOf(chain.requestReceived(makeRequest())), reply)
        self.assertEqual(log, ["request a", "request b"])

    def test_deferredPauses(self) -> None:
        """
        A filter returning an unfired L{Deferred} pauses the chain until it
        fires.
        """
        log: List[str] = []
        gate: Deferred[Optional[LocalReply]] = Deferred()
        chain = FilterChain(
            [Recorder("a", log, gate), Recorder("b", log), Recorder("c", log)]
        )
        d = chain.requestReceived(makeRequest())
        self.assertNoResult(d)
        self.assertEqual(log, ["request a"])
        gate.callback(None)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(log, ["request a", "request b", "request c"])

    def test_deferredReplyStops(self) -> None:
        log: List[str] = []
        reply = LocalReply(401)
        chain = FilterChain(
            [Recorder("a", log, lambda: succeed(reply)), Recorder("b", log)]
        )
        self.assertIs(self.successResultOf(chain.requestReceived(makeRequest())), reply)
        self.assertEqual(log, ["request a"])

    def test_secondDeferredPauses(self) -> None:
        log: List[str] = []
        gates = [Deferred(), Deferred()]
        chain = FilterChain(
            [Recorder("a", log, gates[0]), Recorder("b", log, gates[1]), Recorder("c", log)]
        )
        d = chain.requestReceived(makeRequest())
        gates[0].callback(None)
        self.assertNoResult(d)
        self.assertEqual(log, ["request a", "request b"])
        gates[1].callback(None)
        self.successResultOf(d)
        self.assertEqual(log, ["request a", "request b", "request c"])

    def test_raisingFilter(self) -> None:
        """
        A filter that raises gives a failed L{Deferred}, not an exception,
        and the filters after it do not run.
        """
        log: List[str] = []
        chain = FilterChain([Recorder("a", log, boom), Recorder("b", log)])
        failure = self.failureResultOf(chain.requestReceived(makeRequest()), ZeroDivisionError)
        self.assertEqual(str(failure.value), "filter bug")
        self.assertEqual(log, ["request a"])

    def test_failingDeferred(self) -> None:
        log: List[str] = []
        gate: Deferred[None] = Deferred()
        chain = FilterChain([Recorder("a", log, gate), Recorder("b", log)])
        d = chain.requestReceived(makeRequest())
        gate.errback(TooManyRequests(1.0))
        self.failureResultOf(d, TooManyRequests)
        self.assertEqual(log, ["request a"])

    def test_responseDeferredPauses(self) -> None:
        log: List[str] = []
        gate: Deferred[None] = Deferred()
        chain = FilterChain(
            [Recorder("a", log), Recorder("b", log, onResponse=gate), Recorder("c", log)]
        )
        response = LocalReply(200)
        d = chain.responseReceived(makeRequest(), response)
        self.assertNoResult(d)
        self.assertEqual(log, ["response c", "response b"])
        gate.callback(None)
        self.assertIs(self.successResultOf(d), response)
        self.assertEqual(log, ["response c", "response b", "response a"])

    def test_raisingResponseHook(self) -> None:
        log: List[str] = []
        chain = FilterChain([Recorder("a", log), Recorder("b", log, onResponse=boom)])
        d = chain.responseReceived(makeRequest(), LocalReply(200))
        self.failureResultOf(d, ZeroDivisionError)
        self.assertEqual(log, ["response b"])


class ParseArgsTests(SynchronousTestCase):
    known = {"rate": float, "name": str}

    def test_empty(self) -> None:
        self.assertEqual(parseArgs("", self.known), {})

    def test_values(self) -> None:
        self.assertEqual(
            parseArgs(" rate = 2.5 ,name=a=b", self.known), {"rate": 2.5, "name": "a=b"}
        )

    def test_missingEquals(self) -> None:
        with self.assertRaises(ValueError) as info:
            parseArgs("rate", self.known)
        self.assertEqual(str(info.exception), "expected key=value, got 'rate'")

    def test_trailingComma(self) -> None:
        with self.assertRaises(ValueError) as info:
            parseArgs("rate=1,", self.known)
        self.assertIn("expected key=value", str(info.exception))

    def test_unknownKey(self) -> None:
        with self.assertRaises(ValueError) as info:
            parseArgs("speed=3", self.known)
        self.assertEqual(str(info.exception), "unknown argument 'speed' (known: name, rate)")

    def test_badValue(self) -> None:
        with self.assertRaises(ValueError) as info:
            parseArgs("rate=fast", self.known)
        self.assertTrue(str(info.exception).startswith("argument 'rate': "))


class BuildChainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.context = FilterContext("inbound", Clock())

    def test_installed(self) -> None:
        """
        The shipped C{ratelimit} filter is found as a plugin.
        """
        available = availableFilters()
        self.assertIn("ratelimit", available)
        factory = available["ratelimit"]
        self.assertTrue(verifyObject(IFilterFactory, factory))
        self.assertEqual(factory.name, "ratelimit")
        self.assertIsInstance(factory, FilterPlugin)
        self.assertIn("easymesh.filters.ratelimit", repr(factory))

    def test_build(self) -> None:
        chain = buildChain(
            [FilterSpec("ratelimit", "rate=1"), FilterSpec("ratelimit", "rate=2")],
            self.context,
            availableFilters(),
        )
        self.assertEqual(len(chain.filters), 2)
        self.assertEqual([f.bucket.rate for f in chain.filters], [1.0, 2.0])
        for f in chain.filters:
            self.assertTrue(verifyObject(IFilter, f))

    def test_unknown(self) -> None:
        """
        An unknown filter is refused with the names of the installed ones.
        """
        available = {
            "zeta": FilterPlugin("zeta", "nowhere", ""),
            "alpha": FilterPlugin("alpha", "nowhere", ""),
        }
        with self.assertRaises(ConfigError) as info:
            buildChain([FilterSpec("nosuch")], self.context, available)
        self.assertEqual(info.exception.where, "inbound filter 'nosuch'")
        self.assertEqual(info.exception.reason, "no such filter plugin (installed: alpha, zeta)")

    def test_unknownNoneInstalled(self) -> None:
        with self.assertRaises(ConfigError) as info:
            buildChain([FilterSpec("nosuch")], self.context, {})
        self.assertIn("(installed: none)", info.exception.reason)

    def test_unknownListsRatelimit(self) -> None:
        with self.assertRaises(ConfigError) as info:
            buildChain([FilterSpec("nosuch")], self.context, availableFilters())
        self.assertIn("ratelimit", info.exception.reason)

    def test_badArgs(self) -> None:
        for args, reason in [
            ("", "needs rate=N"),
            ("burst=3", "needs rate=N"),
            ("rate=0", "argument 'rate': must be a number > 0"),
            ("rate=fast", "argument 'rate': must be a number > 0, not 'fast'"),
            ("rate=1,burst=0", "argument 'burst': must be an integer >= 1"),
            ("rate=1,speed=2", "unknown argument 'speed'"),
            ("rate", "expected key=value"),
        ]:
            with self.assertRaises(ConfigError) as info:
                buildChain([FilterSpec("ratelimit", args)], self.context, availableFilters())
            self.assertEqual(info.exception.where, "inbound filter 'ratelimit'")
            self.assertIn(reason, info.exception.reason)


class RateLimitFilterTests(SynchronousTestCase):
    def build(self, args: str) -> Any:
        self.clock = Clock()
        return ratelimit.build(args, FilterContext("inbound", self.clock))

    def test_args(self) -> None:
        bucket = self.build("rate=2.5,burst=4,max_wait=1.5,max_queue=3").bucket
        self.assertEqual(
            (bucket.rate, bucket.burst, bucket.maxWait, bucket.maxQueue), (2.5, 4, 1.5, 3)
        )
        self.assertIs(bucket._clock, self.clock)

    def test_defaults(self) -> None:
        for args, burst in [("rate=2.5", 3), ("rate=0.1", 1), ("rate=3", 3)]:
            bucket = self.build(args).bucket
            self.assertEqual((bucket.burst, bucket.maxWait, bucket.maxQueue), (burst, 0.0, 1024))

    def test_tooManyRequests(self) -> None:
        """
        Once the burst is spent, requests fail with L{TooManyRequests}
        carrying the wait; a token later, one more is admitted.
        """
        limit = self.build("rate=2,burst=2")
        request = makeRequest()
        self.assertIsNone(self.successResultOf(limit.requestReceived(request)))
        self.assertIsNone(self.successResultOf(limit.requestReceived(request)))
        failure = self.failureResultOf(limit.requestReceived(request), TooManyRequests)
        self.assertAlmostEqual(failure.value.retryAfter, 0.5)
        reply = replyFor(failure)
        self.assertEqual(reply.code, 429)
        self.assertEqual(reply.headers.getRawHeaders(b"retry-after"), [b"1"])
        self.clock.advance(0.5)
        self.successResultOf(limit.requestReceived(request))
        self.failureResultOf(limit.requestReceived(request), TooManyRequests)
        self.assertIsNone(limit.responseReceived(request, LocalReply(200)))

    def test_queued(self) -> None:
        """
        With C{max_wait}, a request waits for its token in the chain; one
        that would wait longer is refused at once.
        """
        limit = self.build("rate=1,burst=1,max_wait=1")
        chain = FilterChain([limit])
        self.successResultOf(chain.requestReceived(makeRequest()))
        waiting = chain.requestReceived(makeRequest())
        self.assertNoResult(waiting)
        failure = self.failureResultOf(chain.requestReceived(makeRequest()), TooManyRequests)
        self.assertAlmostEqual(failure.value.retryAfter, 2.0)
        self.clock.advance(1)
        self.assertIsNone(self.successResultOf(waiting))

    def test_cancelQueued(self) -> None:
        """
        Cancelling a queued request (the client went away) fails it with
        L{CancelledError}, not a 429, and frees its place.
        """
        limit = self.build("rate=1,burst=1,max_wait=1")
        self.successResultOf(limit.requestReceived(makeRequest()))
        waiting = limit.requestReceived(makeRequest())
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        self.assertEqual(limit.bucket.waiting, 0)
        self.assertNoResult(limit.requestReceived(makeRequest()))


@contextlib.contextmanager
def thirdPartyOnPath() -> Iterator[None]:
    """
    Put the third-party fixture package on C{sys.path} and its plugin
    directory on C{twisted.plugins.__path__} (computed once, at import,
    from C{sys.path}), and undo both afterwards.
    """
    from twisted import plugins

    savedSysPath = list(sys.path)
    savedPluginPath = list(plugins.__path__)
    sys.path.insert(0, FIXTURE)
    plugins.__path__.append(os.path.join(FIXTURE, "twisted", "plugins"))
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path[:] = savedSysPath
        plugins.__path__[:] = savedPluginPath
        for name in ("twisted.plugins.acme_filters", "acme_filter"):
            sys.modules.pop(name, None)
        importlib.invalidate_caches()


class ThirdPartyPluginTests(SynchronousTestCase):
    def test_fixtureLayout(self) -> None:
        """
        The fixture is laid out as a separately installed package would be:
        a C{twisted/plugins} directory without C{__init__.py}.
        """
        self.assertTrue(os.path.isfile(os.path.join(FIXTURE, "acme_filter.py")))
        pluginFile = os.path.join(FIXTURE, "twisted", "plugins", "acme_filters.py")
        self.assertTrue(os.path.isfile(pluginFile))
        for directory in ("twisted", os.path.join("twisted", "plugins")):
            self.assertFalse(os.path.exists(os.path.join(FIXTURE, directory, "__init__.py")))

    def test_discovered(self) -> None:
        """
        With the package on the path, its filter is listed beside the
        shipped ones; without, the list is as before.
        """
        before = sorted(availableFilters())
        with thirdPartyOnPath():
            available = availableFilters()
            self.assertIn("addheader", available)
            self.assertIn("ratelimit", available)
            factory = available["addheader"]
            self.assertEqual(factory.module, "acme_filter")
            self.assertTrue(verifyObject(IFilterFactory, factory))
        self.assertEqual(sorted(availableFilters()), before)
        if FIXTURE not in os.environ.get("PYTHONPATH", ""):
            self.assertNotIn("addheader", before)

    def test_runs(self) -> None:
        """
        The discovered filter sets the request header its arguments name and
        marks the response.
        """
        with thirdPartyOnPath():
            chain = buildChain(
                [FilterSpec("addheader", "x-tenant=blue")],
                FilterContext("outbound", Clock()),
                availableFilters(),
            )
            request = makeRequest()
            self.assertIsNone(self.successResultOf(chain.requestReceived(request)))
            self.assertEqual(request.headers.getRawHeaders(b"x-tenant"), [b"blue"])
            response = LocalReply(200)
            self.assertIs(self.successResultOf(chain.responseReceived(request, response)), response)
            self.assertEqual(response.headers.getRawHeaders(b"x-acme"), [b"seen"])

    def test_refusesBadArgs(self) -> None:
        with thirdPartyOnPath():
            with self.assertRaises(ConfigError) as info:
                buildChain(
                    [FilterSpec("addheader", "no-equals")],
                    FilterContext("outbound", Clock()),
                    availableFilters(),
                )
            self.assertEqual(info.exception.where, "outbound filter 'addheader'")

    def test_fromOptions(self) -> None:
        """
        C{twistd easymesh --filter addheader:...} puts it on both listeners,
        after the rate limit on the inbound one.
        """
        from easymesh.tap import Options

        with thirdPartyOnPath():
            options = Options()
            options.parseOptions(["--filter", "addheader:x-tenant=blue", "--rate", "5"])
            outbound = options.chains["outbound"].filters
            inbound = options.chains["inbound"].filters
            self.assertEqual([type(f).__name__ for f in outbound], ["AddHeader"])
            self.assertEqual(
                [type(f).__name__ for f in inbound], ["RateLimitFilter", "AddHeader"]
            )

