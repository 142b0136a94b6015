"""
Tests for L{easymesh.tls.registry.TLSContexts}: one context per distinct
files, expected identities and SNI name, shared by whoever asks; started,
stopped and reloaded together.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Tuple

import pytest
from twisted.internet.task import Clock

from easymesh.config.model import TLSFiles, UpstreamTLS
from easymesh.tls.certs import Issued, makeCA, makeWorkload
from easymesh.tls.contexts import ClientTLS, ServerTLS
from easymesh.tls.credentials import CredentialError
from easymesh.tls.identity import identitiesOf
from easymesh.tls.registry import TLSContexts
from tests.test_tls_contexts import realTimeClock

ORDERS = "spiffe://example.org/ns/default/sa/orders"
WEB = "spiffe://example.org/ns/default/sa/web"


class PKI:
    """
    A CA and two workloads' files in one directory.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = makeCA(directory)
        self.orders = makeWorkload(self.ca, ORDERS, directory, "orders")
        self.web = makeWorkload(self.ca, WEB, directory, "web")

    def files(self, issued: Issued) -> TLSFiles:
        return TLSFiles(issued.certPath, issued.keyPath, self.ca.certPath)

    def rotate(self, issued: Issued) -> int:
        """
        Replace C{issued}'s files with a new certificate for the same
        identity, made aside and renamed into place; the new serial.
        """
        [identity] = identitiesOf(issued.cert)
        staging = self.dir / "staging"
        staging.mkdir(exist_ok=True)
        new = makeWorkload(self.ca, identity, staging, "next")
        os.replace(new.keyPath, issued.keyPath)
        os.replace(new.certPath, issued.certPath)
        return new.cert.serial_number


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return PKI(tmp_path)


@pytest.fixture
def registry() -> Iterator[Tuple[TLSContexts, Clock]]:
    clock = realTimeClock()
    contexts = TLSContexts(clock)
    try:
        yield contexts, clock
    finally:
        contexts.stop()


def serial(creator: object) -> int:
    return creator.credentials.leaf.serial_number  # type: ignore[attr-defined]


# One context per distinct set


def test_client_shared(pki: PKI, registry: Tuple[TLSContexts, Clock]) -> None:
    """
    Equal settings and host give the same creator, even from distinct but
    equal L{UpstreamTLS} values (one per cluster).
    """
    contexts, _ = registry
    first = contexts.client(UpstreamTLS(pki.files(pki.web), (ORDERS,)), "orders.internal")
    again = contexts.client(UpstreamTLS(pki.files(pki.web), (ORDERS,)), "orders.internal")
    assert isinstance(first, ClientTLS)
    assert again is first
    assert first.serverName == "orders.internal"
    assert [p.text for p in first.expected] == [ORDERS]
    assert first.paths == (pki.web.certPath, pki.web.keyPath, pki.ca.certPath)


def test_client_per_server_name(pki: PKI, registry: Tuple[TLSContexts, Clock]) -> None:
    """
    Each host name gets its own creator (its own SNI); IP addresses send
    no SNI, so they all share one.
    """
    contexts, _ = registry
    tls = UpstreamTLS(pki.files(pki.web), (ORDERS,))
    a = contexts.client(tls, "a.internal")
    b = contexts.client(tls, "b.internal")
    v4 = contexts.client(tls, "10.0.0.7")
    v4b = contexts.client(tls, "127.0.0.1")
    v6 = contexts.client(tls, "::1")
    assert len({id(a), id(b), id(v4)}) == 3
    assert (a.serverName, b.serverName) == ("a.internal", "b.internal")
    assert v4b is v4 and v6 is v4
    assert v4.serverName is None


def test_client_per_identities(pki: PKI, registry: Tuple[TLSContexts, Clock]) -> None:
    """
    Different expected identities, or their order, are different creators.
    """
    contexts, _ = registry
    files = pki.files(pki.web)
    any_ = contexts.client(UpstreamTLS(files), "10.0.0.7")
    orders = contexts.client(UpstreamTLS(files, (ORDERS,)), "10.0.0.7")
    both = contexts.client(UpstreamTLS(files, (ORDERS, WEB)), "10.0.0.7")
    reversed_ = contexts.client(UpstreamTLS(files, (WEB, ORDERS)), "10.0.0.7")
    assert len({id(any_), id(orders), id(both), id(reversed_)}) == 4
    assert [p.text for p in any_.expected] == ["*"]
    assert [p.text for p in reversed_.expected] == [WEB, ORDERS]


def test_client_per_files(pki: PKI, registry: Tuple[TLSContexts, Clock]) -> None:
    contexts, _ = registry
    web = contexts.client(UpstreamTLS(pki.files(pki.web)), "10.0.0.7")
    orders = contexts.client(UpstreamTLS(pki.files(pki.orders)), "10.0.0.7")
    assert web is not orders
    assert serial(web) == pki.web.cert.serial_number
    assert serial(orders) == pki.orders.cert.serial_number


def test_server_shared(pki: PKI, registry: Tuple[TLSContexts, Clock]) -> None:
    """
    One server context per set of files; it requires client certificates.
    """
    contexts, _ = registry
    server = contexts.server(pki.files(pki.orders))
    assert isinstance(server, ServerTLS)
    assert contexts.server(pki.files(pki.orders)) is server
    assert server.requireClientCert is True
    other = contexts.server(pki.files(pki.web))
    assert other is not server
    assert serial(other) == pki.web.cert.serial_number


def test_server_and_client_apart(pki: PKI, registry: Tuple[TLSContexts, Clock]) -> None:
    """
    The same files used by a listener and towards a peer are two contexts.
    """
    contexts, _ = registry
    files = pki.files(pki.orders)
    assert contexts.server(files) is not contexts.client(UpstreamTLS(files), "10.0.0.7")


def test_bad_files(pki: PKI, registry: Tuple[TLSContexts, Clock], tmp_path: Path) -> None:
    """
    Files that cannot be used are an error naming the file, and nothing is
    kept for them: fixed, the next request for them succeeds.
    """
    contexts, _ = registry
    missing = str(tmp_path / "later.pem")
    files = TLSFiles(missing, pki.web.keyPath, pki.ca.certPath)
    with pytest.raises(CredentialError) as info:
        contexts.server(files)
    assert info.value.path == missing
    with pytest.raises(CredentialError):
        contexts.client(UpstreamTLS(files), "10.0.0.7")
    os.link(pki.web.certPath, missing)
    assert serial(contexts.server(files)) == pki.web.cert.serial_number


# Start, stop, reload


def test_start_watches_every_context(pki: PKI, registry: Tuple[TLSContexts, Clock]) -> None:
    """
    Once started, every context checks its files every C{checkEvery}
    seconds: contexts made before start and after it alike.
    """
    contexts, clock = registry
    server = contexts.server(pki.files(pki.orders))
    assert contexts.running is False
    contexts.start()
    assert contexts.running is True
    client = contexts.client(UpstreamTLS(pki.files(pki.web)), "10.0.0.7")
    before = (serial(server), serial(client))
    newOrders = pki.rotate(pki.orders)
    newWeb = pki.rotate(pki.web)
    clock.advance(0.5)
    assert (serial(server), serial(client)) == before
    clock.advance(0.5)
    assert (serial(server), serial(client)) == (newOrders, newWeb)


def test_not_watched_before_start(pki: PKI, registry: Tuple[TLSContexts, Clock]) -> None:
    contexts, clock = registry
    server = contexts.server(pki.files(pki.orders))
    before = serial(server)
    pki.rotate(pki.orders)
    clock.advance(5)
    assert serial(server) == before
    assert clock.getDelayedCalls() == []


def test_stop(pki: PKI, registry: Tuple[TLSContexts, Clock]) -> None:
    """
    Stopped, no context checks its files, and contexts made afterwards are
    not started; started again, they all are.
    """
    contexts, clock = registry
    server = contexts.server(pki.files(pki.orders))
    contexts.start()
    contexts.stop()
    assert contexts.running is False
    assert clock.getDelayedCalls() == []
    client = contexts.client(UpstreamTLS(pki.files(pki.web)), "10.0.0.7")
    before = (serial(server), serial(client))
    pki.rotate(pki.orders)
    pki.rotate(pki.web)
    clock.advance(5)
    assert (serial(server), serial(client)) == before
    contexts.start()
    contexts.start()  # twice is harmless
    assert len(clock.getDelayedCalls()) == 2
    clock.advance(1)
    assert serial(server) != before[0]
    assert serial(client) != before[1]


def test_reload(pki: PKI, registry: Tuple[TLSContexts, Clock]) -> None:
    """
    L{TLSContexts.reload} (SIGHUP) re-reads every context's files at once,
    running or not.
    """
    contexts, _ = registry
    server = contexts.server(pki.files(pki.orders))
    client = contexts.client(UpstreamTLS(pki.files(pki.web), (ORDERS,)), "orders.internal")
    newOrders = pki.rotate(pki.orders)
    newWeb = pki.rotate(pki.web)
    contexts.reload()
    assert (serial(server), serial(client)) == (newOrders, newWeb)


def test_reload_keeps_good_on_bad_files(pki: PKI, registry: Tuple[TLSContexts, Clock]) -> None:
    """
    A context whose files went bad keeps its credentials on reload; the
    others still reload.
    """
    contexts, _ = registry
    server = contexts.server(pki.files(pki.orders))
    client = contexts.client(UpstreamTLS(pki.files(pki.web)), "10.0.0.7")
    before = serial(server)
    Path(pki.orders.certPath).write_text("not a certificate\n")
    newWeb = pki.rotate(pki.web)
    contexts.reload()
    assert serial(server) == before
    assert serial(client) == newWeb


def test_check_interval(pki: PKI) -> None:
    clock = realTimeClock()
    contexts = TLSContexts(clock, checkEvery=0.25)
    server = contexts.server(pki.files(pki.orders))
    client = contexts.client(UpstreamTLS(pki.files(pki.web)), "10.0.0.7")
    assert server.checkEvery == client.checkEvery == 0.25
    contexts.start()
    try:
        new = pki.rotate(pki.orders)
        clock.advance(0.25)
        assert serial(server) == new
    finally:
        contexts.stop()
