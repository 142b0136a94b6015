"""
Tests for the validity period of the workload's own certificate: refused at
start (L{easymesh.tap.checkCredentials}) and at rotation, warned about ahead
of expiry, and exported as a gauge; and for the warnings about a rotation
that changes the workload's identity or a CA bundle that does not vouch for
its certificate.  Time comes from a L{Clock}.
"""

from __future__ import annotations

import datetime
import os
import re
from typing import Any, Dict, Generator, List, Optional

import pytest
from twisted.internet.defer import inlineCallbacks
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from easymesh.config.model import TLS_EXPIRY_WARNING, ConfigError, TLSFiles, UpstreamTLS
from easymesh.ops.metrics import Metrics
from easymesh.tap import Options, checkCredentials, loadConfig, makeService
from easymesh.tls.certs import Issued, makeCA, makeWorkload
from easymesh.tls.credentials import (
    CredentialError,
    NotYetValid,
    chainProblem,
    checkValidity,
    loadCredentials,
)
from easymesh.tls.registry import TLSContexts
from tests.test_tls_contexts import ORDERS, TLSTestCase, realTimeClock, tempDir

ORDERS_V2 = "spiffe://example.org/ns/default/sa/orders-v2"
DAY = datetime.timedelta(days=1)


def utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


def staged(case: Any, ca: Issued, identity: str, **validity: Any) -> Issued:
    """
    A certificate made in a directory of its own, to be copied over the
    one in use.
    """
    directory = tempDir(case)
    return makeWorkload(ca, identity, directory, "next", **validity)


def replace(new: Issued, old: Issued) -> None:
    """
    Put C{new}'s key and certificate in place of C{old}'s, each renamed
    into place.
    """
    os.replace(new.keyPath, old.keyPath)
    os.replace(new.certPath, old.certPath)


class LogCapture:
    def __init__(self, case: Any) -> None:
        self.events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self, text: str = "", level: Optional[str] = None) -> List[str]:
        return [
            formatEvent(e)
            for e in self.events
            if "log_format" in e
            and text in formatEvent(e)
            and (level is None or e["log_level"].name == level)
        ]


# -- the files --------------------------------------------------------------


class ValidityTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempDir(self)
        self.ca = makeCA(self.dir)
        self.start = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
        self.end = self.start + 10 * DAY
        self.cert = makeWorkload(
            self.ca, ORDERS, self.dir, "orders", notBefore=self.start, notAfter=self.end
        )

    def load(self, at: datetime.datetime) -> Any:
        c = self.cert
        return loadCredentials(c.certPath, c.keyPath, self.ca.certPath, now=at.timestamp())

    def test_withinPeriod(self) -> None:
        """
        A certificate is valid from its notBefore to its notAfter, both
        included.
        """
        for at in (self.start, self.start + DAY, self.end):
            self.assertEqual(self.load(at).leaf, self.cert.cert)

    def test_expired(self) -> None:
        """
        After its notAfter it is refused, naming the file, notBefore,
        notAfter and the time it was checked at.
        """
        e = self.assertRaises(
            CredentialError, self.load, self.end + datetime.timedelta(seconds=1)
        )
        self.assertNotIsInstance(e, NotYetValid)
        self.assertEqual(e.path, self.cert.certPath)
        self.assertEqual(
            e.reason,
            "the certificate has expired (notBefore 2030-01-01 00:00:00 UTC, "
            "notAfter 2030-01-11 00:00:00 UTC, now 2030-01-11 00:00:01 UTC)",
        )

    def test_notYetValid(self) -> None:
        """
        Before its notBefore it is refused too, saying when it will be
        valid.
        """
        e = self.assertRaises(NotYetValid, self.load, self.start - DAY)
        self.assertEqual(e.path, self.cert.certPath)
        self.assertIn("is not valid yet (notBefore 2030-01-01 00:00:00 UTC", e.reason)
        self.assertEqual(e.validFrom, self.start.timestamp())

    def test_notCheckedWithoutTime(self) -> None:
        """
        Without a time (the C{certs} command reading its CA) the validity
        period is not checked.
        """
        c = self.cert
        self.assertEqual(loadCredentials(c.certPath, c.keyPath, self.ca.certPath).leaf, c.cert)

    def test_expiredIntermediate(self) -> None:
        """
        Every certificate of the file is checked: an expired one after the
        workload's is named by its place and subject.
        """
        old = makeWorkload(
            self.ca, ORDERS, tempDir(self), "old",
            notBefore=self.start - 30 * DAY, notAfter=self.start - DAY,
        )  # fmt: skip
        with open(self.cert.certPath, "ab") as f, open(old.certPath, "rb") as g:
            f.write(g.read())
        e = self.assertRaises(CredentialError, self.load, self.start + DAY)
        self.assertTrue(e.reason.startswith("certificate 2 of the file (CN=old) has expired"), e)

    def test_chainProblem(self) -> None:
        """
        A bundle with the issuer vouches for the certificate, whatever the
        time; one without says why not.
        """
        c = self.cert
        creds = loadCredentials(c.certPath, c.keyPath, self.ca.certPath)
        self.assertIsNone(chainProblem(creds))
        other = makeCA(tempDir(self), name="another CA")
        creds = loadCredentials(c.certPath, c.keyPath, other.certPath)
        self.assertEqual(chainProblem(creds), "unable to get local issuer certificate")

    def test_checkValidityDirectly(self) -> None:
        """
        L{checkValidity} takes the chain and the file name it came from.
        """
        checkValidity([self.cert.cert], "x.pem", self.start.timestamp())
        e = self.assertRaises(CredentialError, checkValidity, [self.cert.cert], "x.pem", 0.0)
        self.assertEqual(e.path, "x.pem")


# -- at start -----------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Any) -> Dict[str, Any]:
    ca = makeCA(tmp_path)
    now = datetime.datetime.now(datetime.timezone.utc)
    expired = makeWorkload(
        ca, ORDERS, tmp_path, "expired", notBefore=now - 30 * DAY, notAfter=now - DAY
    )
    future = makeWorkload(ca, ORDERS, tmp_path, "future", notBefore=now + DAY)
    good = makeWorkload(ca, ORDERS, tmp_path, "orders")
    return {"ca": ca, "expired": expired, "future": future, "good": good, "dir": tmp_path}


def flags(pki: Dict[str, Any], name: str) -> List[str]:
    issued = pki[name]
    return [
        "--tls-cert", issued.certPath,
        "--tls-key", issued.keyPath,
        "--tls-ca", pki["ca"].certPath,
    ]  # fmt: skip


def test_start_refuses_expired(pki: Dict[str, Any]) -> None:
    """
    The command line refuses an expired certificate before anything is
    bound, naming the file and its validity period.
    """
    with pytest.raises(UsageError) as info:
        Options().parseOptions([*flags(pki, "expired"), "--inbound-tls", "mtls"])
    message = str(info.value)
    expected = f"tls {pki['expired'].certPath}: the certificate has expired"
    assert message.startswith(expected), message
    assert re.search(r"notBefore \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC, notAfter ", message), message


def test_start_refuses_not_yet_valid(pki: Dict[str, Any]) -> None:
    with pytest.raises(UsageError) as info:
        Options().parseOptions(flags(pki, "future"))
    assert f"tls {pki['future'].certPath}: the certificate is not valid yet" in str(info.value)


def test_checkCredentials_takes_a_time(pki: Dict[str, Any], tmp_path: Any) -> None:
    """
    The config file's certificate is checked at the time given (now by
    default), as C{check-config} does.
    """
    good = pki["good"]
    files = {"tls-cert": good.certPath, "tls-key": good.keyPath, "tls-ca": pki["ca"].certPath}
    config = loadConfig(None, files)
    checkCredentials(config)
    later = good.cert.not_valid_after_utc.timestamp() + 1
    with pytest.raises(ConfigError) as info:
        checkCredentials(config, now=later)
    assert "the certificate has expired" in str(info.value)


def test_expiry_warning_setting(pki: Dict[str, Any]) -> None:
    """
    C{--tls-expiry-warning} (a week by default) reaches every context; a
    negative value is refused.
    """
    options = Options()
    options.parseOptions(flags(pki, "good"))
    assert options.config.tls_expiry_warning == TLS_EXPIRY_WARNING == 7 * 86400
    options = Options()
    options.parseOptions(
        [*flags(pki, "good"), "--inbound-tls", "mtls", "--tls-expiry-warning", "3600"]
    )
    assert options.config.tls_expiry_warning == 3600.0
    service = makeService(options, MemoryReactorClock())
    files = options.config.tlsFiles
    assert service.tls.server(files).expiryWarning == 3600.0
    assert service.tls.client(UpstreamTLS(files), "10.0.0.7").expiryWarning == 3600.0
    with pytest.raises(UsageError):
        Options().parseOptions([*flags(pki, "good"), "--tls-expiry-warning", "-1"])


def test_service_exports_expiry(pki: Dict[str, Any]) -> None:
    """
    The sidecar's metrics give the seconds left on its certificate, by
    file, from its reactor's clock.
    """
    reactor = MemoryReactorClock()
    good = pki["good"]
    notAfter = good.cert.not_valid_after_utc.timestamp()
    reactor.advance(notAfter - 3600)
    options = Options()
    options.parseOptions(
        [*flags(pki, "good"), "--inbound-tls", "mtls", "--upstream", "http://127.0.0.1:5000"]
    )
    service = makeService(options, reactor)
    text = service.telemetry.metrics.exposition()[0].decode("utf-8")
    line = f'easymesh_tls_certificate_expiry_seconds{{cert="{good.certPath}"}} 3600.0'
    assert line in text.splitlines(), text


# -- at rotation --------------------------------------------------------------


class RotationValidityTests(TLSTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.log = LogCapture(self)
        self.server = self.serverTLS()
        self.server.start()
        self.addCleanup(self.server.stop)
        self.now = utc(self.clock.seconds())

    @inlineCallbacks
    def servedIdentity(self, port: int) -> Generator[Any, Any, Any]:
        client = yield self.connect(port, self.clientTLS(expected=["spiffe://example.org/*"]))
        self.assertTrue((yield client.handshake))
        return client.identity, client.transport.getPeerCertificate().get_serial_number()

    @inlineCallbacks
    def test_expiredKept(self) -> Generator[Any, Any, None]:
        """
        An expired pair put in place is refused, and why is logged (once);
        new connections still get the current certificate.
        """
        port = yield self.listen(self.server)
        credentials = self.server.credentials
        expired = staged(
            self, self.ca, ORDERS_V2, notBefore=self.now - 30 * DAY, notAfter=self.now - DAY
        )
        replace(expired, self.serverCert)
        for _ in range(3):
            self.clock.advance(self.server.checkEvery)
        self.assertIs(self.server.credentials, credentials)
        [message] = self.log.lines("not reloaded", "error")
        self.assertIn(
            f"{self.serverCert.certPath}: the certificate has expired (notBefore ", message
        )
        self.assertNotIn("tried again", message)
        self.assertEqual(
            (yield self.servedIdentity(port)), (ORDERS, self.serverCert.cert.serial_number)
        )
        self.assertEqual(self.log.lines("TLS credentials reloaded"), [])

    def test_notYetValidTakenWhenValid(self) -> None:
        """
        A pair not valid yet is refused, and taken once its notBefore has
        come by the clock, though the files have not changed since.
        """
        credentials = self.server.credentials
        soon = self.now + datetime.timedelta(minutes=10)
        future = staged(self, self.ca, ORDERS_V2, notBefore=soon)
        replace(future, self.serverCert)
        self.clock.advance(self.server.checkEvery)
        self.assertIs(self.server.credentials, credentials)
        [message] = self.log.lines("not reloaded")
        self.assertIn("is not valid yet", message)
        self.assertIn(f"tried again at {soon:%Y-%m-%d %H:%M:%S} UTC", message)
        self.clock.advance(soon.timestamp() - self.clock.seconds() - 1)
        self.assertIs(self.server.credentials, credentials)
        self.assertEqual(len(self.log.lines("not reloaded")), 1)
        self.clock.advance(self.server.checkEvery)
        self.assertEqual(self.server.credentials.leaf, future.cert)
        [message] = self.log.lines("TLS credentials reloaded")
        self.assertIn(ORDERS_V2, message)

    def test_sighupAlsoRefuses(self) -> None:
        """
        L{reload} (on SIGHUP) refuses an expired pair as well.
        """
        credentials = self.server.credentials
        expired = staged(
            self, self.ca, ORDERS, notBefore=self.now - 9 * DAY, notAfter=self.now - DAY
        )
        replace(expired, self.serverCert)
        self.assertFalse(self.server.reload())
        self.assertIs(self.server.credentials, credentials)

    def test_identityChangeWarned(self) -> None:
        """
        A new certificate for another identity is taken, with a warning
        naming both; one for the same identity is not warned about.
        """
        replace(staged(self, self.ca, ORDERS), self.serverCert)
        self.clock.advance(self.server.checkEvery)
        self.assertEqual(len(self.log.lines("TLS credentials reloaded")), 1)
        self.assertEqual(self.log.lines("identity from"), [])
        replace(staged(self, self.ca, ORDERS_V2), self.serverCert)
        self.clock.advance(self.server.checkEvery)
        [message] = self.log.lines("identity from", "warn")
        self.assertIn(f"change this workload's identity from {ORDERS} to {ORDERS_V2}", message)
        self.assertIn(self.serverCert.certPath, message)

    def test_bundleWithoutIssuerWarned(self) -> None:
        """
        A CA bundle that no longer holds the issuer of the workload's
        certificate is taken (peers may trust that issuer), with a warning.
        """
        other = makeCA(tempDir(self), name="another CA")
        os.replace(other.certPath, self.ca.certPath)
        self.clock.advance(self.server.checkEvery)
        self.assertEqual(self.server.credentials.authorities, (other.cert,))
        [message] = self.log.lines("does not vouch", "warn")
        self.assertIn(
            f"TLS CA bundle {self.ca.certPath} does not vouch for this workload's certificate "
            f"{self.serverCert.certPath} (unable to get local issuer certificate)",
            message,
        )

    def test_bundleWithoutIssuerWarnedAtStart(self) -> None:
        other = makeCA(tempDir(self), name="another CA")
        c = self.serverCert
        from easymesh.tls.contexts import ServerTLS

        ServerTLS(c.certPath, c.keyPath, other.certPath, self.clock)
        self.assertEqual(len(self.log.lines("does not vouch", "warn")), 1)

    def test_bothCAsNotWarned(self) -> None:
        """
        A bundle with the old and the new CA (the first step of a CA
        change) is not warned about.
        """
        other = makeCA(tempDir(self), name="another CA")
        with open(self.ca.certPath, "ab") as f, open(other.certPath, "rb") as g:
            f.write(g.read())
        self.clock.advance(self.server.checkEvery)
        self.assertEqual(len(self.server.credentials.authorities), 2)
        self.assertEqual(self.log.lines("does not vouch"), [])


# -- ahead of expiry ----------------------------------------------------------


class ExpiryWatchTests(TLSTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.log = LogCapture(self)
        self.now = utc(self.clock.seconds())

    def serving(self, days: float, **kw: Any) -> Any:
        cert = makeWorkload(
            self.ca, ORDERS, self.dir, "orders",
            notBefore=self.now - DAY, notAfter=self.now + datetime.timedelta(days=days),
        )  # fmt: skip
        server = self.serverTLS(cert, **kw)
        server.start()
        self.addCleanup(server.stop)
        return server

    def test_warnedAtStart(self) -> None:
        """
        A certificate that expires within the week is warned about when
        read, once; then an error once it has expired.
        """
        server = self.serving(3)
        [message] = self.log.lines("expires in", "warn")
        self.assertIn(f"TLS certificate {self.serverCert.certPath} ({ORDERS}, serial ", message)
        self.assertIn("expires in 3 days, at ", message)
        self.assertIn(": replace it", message)
        self.assertEqual(server.expiresIn(), 3 * 86400)
        self.clock.advance(86400)
        self.assertEqual(len(self.log.lines("expires in")), 1)
        self.clock.advance(2 * 86400 + 1)
        self.assertEqual(server.expiresIn(), -1)
        [message] = self.log.lines("expired at", "error")
        self.assertIn("peers refuse it until it is replaced", message)
        self.clock.advance(60)
        self.assertEqual(len(self.log.lines("expired at")), 1)

    def test_warnedWhenDue(self) -> None:
        """
        A certificate with longer to go is warned about by the check that
        finds it within the warning, not before.
        """
        self.serving(30)
        self.assertEqual(self.log.lines("expires in"), [])
        self.clock.pump([86400.0] * 22)
        self.assertEqual(self.log.lines("expires in"), [])
        self.clock.pump([86400.0])
        [message] = self.log.lines("expires in", "warn")
        self.assertIn("expires in 7 days, at ", message)

    def test_setting(self) -> None:
        """
        The warning starts C{expiryWarning} seconds ahead; 0 is none.
        """
        self.serving(3, expiryWarning=3600.0)
        self.assertEqual(self.log.lines("expires in"), [])
        self.clock.advance(3 * 86400 - 3600)
        [message] = self.log.lines("expires in")
        self.assertIn("expires in 1 hour, at", message)

    def test_noWarning(self) -> None:
        self.serving(1, expiryWarning=0.0)
        self.clock.advance(86399)
        self.assertEqual(self.log.lines("expires in"), [])
        self.clock.advance(2)
        self.assertEqual(len(self.log.lines("expired at")), 1)

    def test_rotationStartsAfresh(self) -> None:
        """
        A new certificate is watched afresh: warned about in its turn.
        """
        server = self.serving(3)
        replace(staged(self, self.ca, ORDERS, notAfter=self.now + 2 * DAY), self.serverCert)
        self.clock.advance(server.checkEvery)
        self.assertEqual(len(self.log.lines("expires in")), 2)
        replace(staged(self, self.ca, ORDERS), self.serverCert)
        self.clock.advance(server.checkEvery)
        self.assertEqual(len(self.log.lines("expires in")), 2)
        self.assertGreater(server.expiresIn(), 300 * 86400)


# -- the gauge ----------------------------------------------------------------


class ExpiriesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempDir(self)
        self.ca = makeCA(self.dir)
        self.clock = realTimeClock()
        now = utc(self.clock.seconds())
        self.orders = makeWorkload(self.ca, ORDERS, self.dir, "orders", notAfter=now + DAY)
        self.web = makeWorkload(self.ca, ORDERS_V2, self.dir, "web", notAfter=now + 2 * DAY)

    def files(self, issued: Issued) -> TLSFiles:
        return TLSFiles(issued.certPath, issued.keyPath, self.ca.certPath)

    def test_expiries(self) -> None:
        """
        Seconds left by certificate file, once per file, from the clock.
        """
        contexts = TLSContexts(self.clock)
        self.assertEqual(contexts.expiries(), [])
        contexts.server(self.files(self.orders))
        contexts.client(UpstreamTLS(self.files(self.orders)), "10.0.0.7")
        contexts.client(UpstreamTLS(self.files(self.web)), "10.0.0.8")
        self.assertEqual(
            contexts.expiries(),
            [(self.orders.certPath, 86400.0), (self.web.certPath, 2 * 86400.0)],
        )
        self.clock.advance(86400 + 5)
        self.assertEqual(contexts.expiries()[0], (self.orders.certPath, -5.0))

    def test_soonestOfOneFile(self) -> None:
        """
        Contexts made from one file that hold different certificates (one
        has not reloaded yet) report the sooner.
        """
        contexts = TLSContexts(self.clock)
        server = contexts.server(self.files(self.orders))
        server.start()
        self.addCleanup(server.stop)
        sooner = utc(self.clock.seconds()) + 3 * DAY
        replace(staged(self, self.ca, ORDERS, notAfter=sooner), self.orders)
        self.clock.advance(server.checkEvery)
        contexts.client(UpstreamTLS(self.files(self.orders)), "10.0.0.7")
        contexts.server(self.files(self.orders))
        self.assertEqual(contexts.expiries(), [(self.orders.certPath, 3 * 86400.0 - 1)])

    def test_metric(self) -> None:
        """
        The gauge reads its source at each scrape, a row per file.
        """
        metrics = Metrics(processMetrics=False)
        name = "easymesh_tls_certificate_expiry_seconds"
        self.assertNotIn(f"{name}{{", metrics.exposition()[0].decode())
        rows = [("/etc/a.pem", 12.5)]
        metrics.setCertificateSource(lambda: rows)
        self.assertIn(f'{name}{{cert="/etc/a.pem"}} 12.5', metrics.exposition()[0].decode())
        rows.append(("/etc/b.pem", -3.0))
        self.assertIn(f'{name}{{cert="/etc/b.pem"}} -3.0', metrics.exposition()[0].decode())

    def test_metricSourceFails(self) -> None:
        metrics = Metrics(processMetrics=False)

        def broken() -> List[Any]:
            raise RuntimeError("boom")

        metrics.setCertificateSource(broken)
        text = metrics.exposition()[0].decode()
        self.assertIn("# TYPE easymesh_tls_certificate_expiry_seconds gauge", text)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
