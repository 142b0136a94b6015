"""
Tests for L{easymesh.tap}: the C{twistd easymesh} options, the service tree
made from them, and the twistd plugin drop-ins.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Dict, List

import attrs
import pytest
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python.usage import UsageError
from twisted.web.http_headers import Headers
from twisted.web.server import Site

from easymesh.config.model import EdgeLimits
from easymesh.config.addresses import UpstreamURL
from easymesh.config.model import SidecarConfig
from easymesh.demo import HelloWorld
from easymesh.listener import ProxySite
from easymesh.message import ProxyRequest
from easymesh.ops.admin import AdminResource
from easymesh.service import SidecarService
from easymesh.tap import Options, makeService

def _settings(config: SidecarConfig) -> Dict[str, Any]:
    """
    The values of a config's settings (not the file's mesh sections).
    """
    values = attrs.asdict(config)
    del values["meshFile"]
    return values


DEFAULTS: Dict[str, Any] = _settings(SidecarConfig())


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def configOf(*args: str) -> Dict[str, Any]:
    """
    The parsed configuration as a dict of attribute values.
    """
    options = parse(*args)
    assert isinstance(options.config, SidecarConfig)
    return _settings(options.config)


def expected(**changes: Any) -> Dict[str, Any]:
    result = dict(DEFAULTS)
    for key, value in changes.items():
        assert key in result, key
        result[key] = value
    return result


def writeConfig(tmp_path: Any, text: str) -> str:
    path = tmp_path / "sidecar.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def usageError(*args: str) -> str:
    with pytest.raises(UsageError) as info:
        parse(*args)
    return str(info.value)


# Options


def test_defaults() -> None:
    options = parse()
    assert _settings(options.config) == {
        "outbound": "tcp:8082:interface=127.0.0.1",
        "inbound": "tcp:8083",
        "peer": None,
        "upstream": None,
        "demo": "tcp:6060:interface=127.0.0.1",
        "timeout": 15.0,
        "connect_timeout": 5.0,
        "pool_size": 128,
        "pool_idle": 4.0,
        "stream_idle_timeout": 300.0,
        "tunnel_idle_timeout": 3600.0,
        "rate": None,
        "burst": None,
        "max_wait": 0.0,
        "max_queue": 1024,
        "filter": (),
        "outbound_filter": (),
        "inbound_filter": (),
        "access_log": "off",
        "drain": 5.0,
        "node_id": None,
        "max_request_line": 8192,
        "max_head_size": 65536,
        "max_headers": 100,
        "max_body": None,
        "head_timeout": 10.0,
        "body_timeout": 30.0,
        "idle_timeout": 60.0,
        "max_connections": 8192,
        "admin": "tcp:9901:interface=127.0.0.1",
        "otlp_endpoint": None,
        "tls_cert": None,
        "tls_key": None,
        "tls_ca": None,
        "inbound_tls": "off",
        "inbound_allow": (),
        "peer_identity": (),
        "peer_protocol": "http1",
        "max_concurrent_streams": 100,
        "tls_expiry_warning": 604800.0,
        "headers_with_underscores_action": "drop_header",
    }
    assert options["config"] is None
    assert sorted(options.chains) == ["inbound", "outbound"]
    assert options.chains["outbound"].filters == ()
    assert options.chains["inbound"].filters == ()


def test_everyFlag() -> None:
    config = configOf(
        "--outbound", "9000",
        "--inbound", "tcp:9001:interface=0.0.0.0",
        "--peer", "http://peer.example:9001/",
        "--upstream", "https://app.example",
        "--demo", "7000",
        "--timeout", "2.5",
        "--connect-timeout", "1",
        "--pool-size", "4",
        "--pool-idle", "3",
        "--stream-idle-timeout", "6",
        "--tunnel-idle-timeout", "90",
        "--rate", "10",
        "--burst", "20",
        "--max-wait", "0.5",
        "--max-queue", "7",
        "--filter", "ratelimit:rate=100",
        "--outbound-filter", "ratelimit:rate=200",
        "--inbound-filter", "ratelimit:rate=300",
        "--access-log", "json",
        "--drain", "0",
        "--node-id", "web-1",
        "--max-request-line", "1000",
        "--max-head-size", "4096",
        "--max-headers", "20",
        "--max-body", "5",
        "--head-timeout", "2",
        "--body-timeout", "3",
        "--idle-timeout", "4",
        "--max-connections", "50",
        "--headers-with-underscores-action", "reject_request",
    )  # fmt: skip
    assert config == {
        "outbound": "tcp:9000:interface=127.0.0.1",
        "inbound": "tcp:9001:interface=0.0.0.0",
        "peer": "http://peer.example:9001",
        "upstream": "https://app.example",
        "demo": "tcp:7000:interface=127.0.0.1",
        "timeout": 2.5,
        "connect_timeout": 1.0,
        "pool_size": 4,
        "pool_idle": 3.0,
        "stream_idle_timeout": 6.0,
        "tunnel_idle_timeout": 90.0,
        "rate": 10.0,
        "burst": 20,
        "max_wait": 0.5,
        "max_queue": 7,
        "filter": ("ratelimit:rate=100",),
        "outbound_filter": ("ratelimit:rate=200",),
        "inbound_filter": ("ratelimit:rate=300",),
        "access_log": "json",
        "drain": 0.0,
        "node_id": "web-1",
        "max_request_line": 1000,
        "max_head_size": 4096,
        "max_headers": 20,
        "max_body": 5,
        "head_timeout": 2.0,
        "body_timeout": 3.0,
        "idle_timeout": 4.0,
        "max_connections": 50,
        "admin": "tcp:9901:interface=127.0.0.1",
        "otlp_endpoint": None,
        # The TLS flags need certificate files: see tests/test_mtls_config.py.
        "tls_cert": None,
        "tls_key": None,
        "tls_ca": None,
        "inbound_tls": "off",
        "inbound_allow": (),
        "peer_identity": (),
        "peer_protocol": "http1",
        "max_concurrent_streams": 100,
        "tls_expiry_warning": 604800.0,
        "headers_with_underscores_action": "reject_request",
    }


def test_bareInboundPort() -> None:
    assert configOf("--inbound", "9001") == expected(inbound="tcp:9001")


def test_repeatableFilters() -> None:
    """
    Filter flags may be repeated; each keeps its order, and the chains are
    built from them: shared filters first, then the listener's own, with
    the rate limit ahead of everything on the inbound listener.
    """
    options = parse(
        "--filter", "ratelimit:rate=1",
        "--inbound-filter", "ratelimit:rate=2",
        "--filter", "ratelimit:rate=3",
        "--outbound-filter", "ratelimit:rate=4",
        "--inbound-filter", "ratelimit:rate=5",
        "--outbound-filter", "ratelimit:rate=6",
        "--rate", "7",
    )  # fmt: skip
    assert _settings(options.config) == expected(
        filter=("ratelimit:rate=1", "ratelimit:rate=3"),
        inbound_filter=("ratelimit:rate=2", "ratelimit:rate=5"),
        outbound_filter=("ratelimit:rate=4", "ratelimit:rate=6"),
        rate=7.0,
    )
    rates = {
        name: [f.bucket.rate for f in chain.filters]
        for name, chain in options.chains.items()
    }
    assert rates == {"outbound": [1, 3, 4, 6], "inbound": [7, 1, 3, 2, 5]}


def test_configFile(tmp_path: Any) -> None:
    path = writeConfig(tmp_path, "timeout: 3\npool-size: 4\naccess-log: text\n")
    for flag in ("--config", "-c"):
        options = parse(flag, path)
        assert options["config"] == path
        assert _settings(options.config) == expected(
            timeout=3.0, pool_size=4, access_log="text"
        )


def test_flagsOverrideConfigFile(tmp_path: Any) -> None:
    """
    A flag beats the same key in the file; a repeatable flag replaces the
    file's list; keys not given as flags keep the file's values.
    """
    path = writeConfig(
        tmp_path,
        "timeout: 3\npool-size: 4\nfilter: [ratelimit:rate=1, ratelimit:rate=2]\n"
        "inbound-filter: [ratelimit:rate=8]\n",
    )
    options = parse("--timeout", "7", "-c", path, "--filter", "ratelimit:rate=9")
    assert _settings(options.config) == expected(
        timeout=7.0,
        pool_size=4,
        filter=("ratelimit:rate=9",),
        inbound_filter=("ratelimit:rate=8",),
    )


def test_flagRateWithFileBurst(tmp_path: Any) -> None:
    """
    Settings from the file and from flags are checked together.
    """
    path = writeConfig(tmp_path, "burst: 9\n")
    assert configOf("-c", path, "--rate", "3") == expected(rate=3.0, burst=9)
    message = usageError("-c", path)
    assert path in message and "burst" in message and "needs rate" in message


@pytest.mark.parametrize(
    "flag, value, reason",
    [
        ("--timeout", "abc", "must be a number > 0, not 'abc'"),
        ("--timeout", "0", "must be a number > 0"),
        ("--connect-timeout", "-1", "must be a number > 0"),
        ("--pool-size", "1.5", "must be an integer >= 1"),
        ("--pool-size", "0", "must be an integer >= 1"),
        ("--pool-idle", "x", "must be a number > 0"),
        ("--rate", "0", "must be a number > 0"),
        ("--burst", "0", "must be an integer >= 1"),
        ("--max-wait", "-1", "must be a number >= 0"),
        ("--max-queue", "many", "must be an integer >= 0"),
        ("--access-log", "xml", "must be one of off, text, json"),
        ("--drain", "-1", "must be a number >= 0"),
        ("--node-id", "web 1", "must be a name of ASCII letters"),
        ("--outbound", "nosuch:1", "invalid endpoint 'nosuch:1'"),
        ("--inbound", "tcp:notaport", "invalid endpoint 'tcp:notaport'"),
        ("--demo", "99999", "port 99999 is out of range"),
        ("--peer", "ftp://peer", "the scheme must be one of http, https"),
        ("--upstream", "http://app/api", "give only scheme, host and port"),
        ("--filter", "bad name", "invalid filter 'bad name'"),
        ("--outbound-filter", "", "must be NAME[:ARGS]"),
        ("--inbound-filter", ":x", "invalid filter ':x'"),
        ("--pool-size", "1" + "0" * 29, "must be at most 10,000, not " + "1" + "0" * 29),
        ("--max-head-size", "1" + "0" * 29, "must be at most 1,048,576"),
        ("--max-request-line", "2097152", "must be at most 1,048,576"),
        ("--max-headers", "100000", "must be at most 1,000"),
        ("--max-connections", "10000000", "must be at most 1,000,000"),
        ("--idle-timeout", "1e12", "must be at most 86,400"),
        ("--drain", "86401", "must be at most 86,400"),
    ],
)
def test_badFlag(flag: str, value: str, reason: str) -> None:
    message = usageError(flag, value)
    assert message.startswith(f"{flag}: ")
    assert reason in message


def test_systemdFlag() -> None:
    message = usageError("--inbound", "systemd:domain=INET:name=inbound")
    assert message.startswith("--inbound: ")
    assert "LISTEN_FDS" in message


def test_unknownFlag() -> None:
    assert "speed" in usageError("--speed", "3")


def test_unknownFilter() -> None:
    message = usageError("--inbound-filter", "nosuch:x=1")
    assert "'nosuch'" in message
    assert "installed: " in message and "ratelimit" in message


def test_badFilterArgs() -> None:
    message = usageError("--filter", "ratelimit:speed=3")
    assert "'ratelimit'" in message and "unknown argument 'speed'" in message


def test_burstWithoutRate() -> None:
    message = usageError("--burst", "3")
    assert "burst" in message and "needs rate" in message


def test_brokenConfigFile(tmp_path: Any) -> None:
    path = writeConfig(tmp_path, "timeout: 3\n\npool-size: true\n")
    message = usageError("--config", path)
    assert message.startswith(f"{path}:3: ")
    assert "key 'pool-size'" in message


def test_configFileSyntaxError(tmp_path: Any) -> None:
    path = writeConfig(tmp_path, "timeout: 3\ndrain: 1\n  oops: 2\n")
    message = usageError("--config", path)
    assert message.startswith(f"{path}:3: not valid YAML")


def test_configFileUnknownKey(tmp_path: Any) -> None:
    path = writeConfig(tmp_path, "timeuot: 3\n")
    message = usageError("-c", path)
    assert message.startswith(f"{path}:1: unknown key 'timeuot'")


def test_missingConfigFile(tmp_path: Any) -> None:
    path = str(tmp_path / "absent.yaml")
    message = usageError("-c", path)
    assert message.startswith(f"{path}: cannot read the file")


def test_nonASCIINodeId() -> None:
    """
    A node id either is refused up front or works.
    """
    options = Options()
    try:
        options.parseOptions(["--node-id", "n\u00f6de"])
    except UsageError as e:
        assert str(e).startswith("--node-id: ")
        return
    makeService(options, reactor=MemoryReactorClock())


# makeService


def serviceFor(*args: str) -> tuple:
    reactor = MemoryReactorClock()
    options = parse(*args)
    return makeService(options, reactor=reactor), reactor, options


def test_serviceTree() -> None:
    """
    Without C{--upstream}, the service is a L{SidecarService} over the demo
    app, the admin listener and the two proxy listeners, named after them.
    """
    service, reactor, options = serviceFor()
    assert isinstance(service, SidecarService)
    children = list(service)
    assert len(children) == 4
    for child in children:
        assert isinstance(child, StreamServerEndpointService)
    demo, admin, outbound, inbound = children
    assert demo.name is None
    assert isinstance(demo.factory, Site)
    assert isinstance(demo.factory.resource, HelloWorld)
    assert service.getServiceNamed("admin") is admin
    assert isinstance(admin.factory.resource, AdminResource)
    assert service.getServiceNamed("outbound") is outbound
    assert service.getServiceNamed("inbound") is inbound
    assert service.listeners == [outbound, inbound]
    assert service.backends == [demo, admin]
    for listener in (outbound, inbound):
        assert isinstance(listener.factory, ProxySite)
    clusters = service.runtime.clusters
    assert sorted(clusters) == ["local", "peer"]
    assert [e.url for e in clusters["peer"].endpoints] == [UpstreamURL("http", "127.0.0.1", 8083)]
    assert [e.url for e in clusters["local"].endpoints] == [UpstreamURL("http", "127.0.0.1", 6060)]
    assert service.reloader is None
    assert service.drain == 5.0
    assert service.clock is reactor


def test_serviceTreeWithUpstream() -> None:
    service, _, _ = serviceFor("--upstream", "http://127.0.0.1:5000", "--drain", "2")
    assert [child.name for child in service] == ["admin", "outbound", "inbound"]
    assert [b.name for b in service.backends] == ["admin"]
    local = service.runtime.clusters["local"]
    assert [e.url for e in local.endpoints] == [UpstreamURL("http", "127.0.0.1", 5000)]
    assert service.drain == 2.0


def test_listenersUseOptionsChains() -> None:
    """
    Each listener runs the filters its options name (built anew by
    makeService, on its own reactor).
    """
    service, reactor, options = serviceFor("--rate", "5")
    for name in ("outbound", "inbound"):
        resource = service.getServiceNamed(name).factory.resource
        assert resource.name == name
        built = [type(f) for f in resource.forwarder.chain.filters]
        assert built == [type(f) for f in options.chains[name].filters]
    [limit] = service.getServiceNamed("inbound").factory.resource.forwarder.chain.filters
    assert limit.bucket._clock is reactor


def test_listens() -> None:
    from easymesh.ops.admin import AdminSite

    """
    Started on a L{MemoryReactorClock}, the sidecar listens on the default
    ports: outbound, demo and admin on loopback only, inbound on every
    interface.
    """
    service, reactor, _ = serviceFor()
    assert reactor.tcpServers == []
    service.startService()
    listening = [(port, type(f), interface) for port, f, _, interface in reactor.tcpServers]
    assert listening == [
        (6060, Site, "127.0.0.1"),
        (9901, AdminSite, "127.0.0.1"),
        (8082, ProxySite, "127.0.0.1"),
        (8083, ProxySite, ""),
    ]
    assert service.running


def test_listensOnGivenPorts() -> None:
    service, reactor, _ = serviceFor(
        "--outbound", "9000", "--inbound", "tcp:9001:interface=10.0.0.5", "--demo", "9002",
        "--admin", "9003",
    )  # fmt: skip
    service.startService()
    assert sorted((p, i) for p, _, _, i in reactor.tcpServers) == [
        (9000, "127.0.0.1"),
        (9001, "10.0.0.5"),
        (9002, "127.0.0.1"),
        (9003, "127.0.0.1"),
    ]


def test_noDemoWithUpstream() -> None:
    service, reactor, _ = serviceFor("--upstream", "http://127.0.0.1:5000", "--admin", "none")
    service.startService()
    assert sorted(p for p, _, _, _ in reactor.tcpServers) == [8082, 8083]


def test_stop() -> None:
    """
    Stopping an idle sidecar completes at once.
    """
    service, _, _ = serviceFor()
    service.startService()
    results: List[Any] = []
    service.stopService().addBoth(results.append)
    assert results == [None]
    assert service.inflight.draining


def test_filtersUseServiceReactor() -> None:
    service, reactor, _ = serviceFor("--rate", "1", "--burst", "1", "--max-wait", "5")
    chain = service.getServiceNamed("inbound").factory.resource.forwarder.chain
    request = ProxyRequest(b"GET", b"/", Headers())
    chain.requestReceived(request)
    queued = chain.requestReceived(request)
    assert not queued.called
    reactor.advance(1)
    assert queued.called


# The twistd plugin


def test_serviceMakerPlugin() -> None:
    makers = {m.tapname: m for m in getPlugins(IServiceMaker)}
    assert "easymesh" in makers
    maker = makers["easymesh"]
    assert maker.options is Options
    assert maker.makeService is makeService
    assert maker.description


_CHECK_IMPORTS = """
import json, sys
import twisted.plugins.easymesh_plugin
import twisted.plugins.easymesh_filters
import easymesh.tap
print(json.dumps({
    "reactor": "twisted.internet.reactor" in sys.modules,
    "ratelimit": "easymesh.filters.ratelimit" in sys.modules,
}))
"""


def test_pluginsDoNotImportReactor() -> None:
    """
    Importing the plugin drop-ins (as twistd does when it lists plugins,
    before it installs the reactor chosen by C{--reactor}) imports neither
    the reactor nor the filters' implementations.
    """
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    result = subprocess.run(
        [sys.executable, "-c", _CHECK_IMPORTS],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"reactor": False, "ratelimit": False}


def test_edgeLimitFlags() -> None:
    """
    The HTTP/1.1 edge's limits are flags, and reach every listener's site.
    """
    flags = (
        "--max-request-line", "1000", "--max-head-size", "4096", "--max-headers", "20",
        "--max-body", "1048576", "--head-timeout", "2", "--body-timeout", "3",
        "--idle-timeout", "4", "--max-connections", "50",
    )
    service, _, options = serviceFor(*flags)
    expected = EdgeLimits(
        maxRequestLine=1000, maxHeadSize=4096, maxHeaders=20, maxBody=1048576,
        headTimeout=2.0, bodyTimeout=3.0, idleTimeout=4.0, maxConnections=50,
    )
    assert options.config.edgeLimits == expected
    assert service.getServiceNamed("outbound").factory.limits == expected
    # The inbound allows for what the caller's outbound sidecar added.
    assert service.getServiceNamed("inbound").factory.limits == expected.withSidecarHeadroom()
    assert expected.withSidecarHeadroom().maxHeaders > expected.maxHeaders
    assert expected.withSidecarHeadroom().maxHeadSize > expected.maxHeadSize
