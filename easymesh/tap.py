# -*- test-case-name: tests.test_tap -*-
"""
C{twistd easymesh}: command-line options and the service tree.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Mapping, Optional

from twisted.python import usage

from easymesh.config.files import ConfigValues, readConfigFile
from easymesh.config.model import INBOUND, ConfigError, SidecarConfig
from easymesh.config.settings import BY_NAME, SETTINGS, buildConfig


def _optParameters() -> List[List[Any]]:
    params = []
    for setting in SETTINGS:
        if setting.repeatable:
            continue
        default = f" [default: {setting.default}]" if setting.default is not None else ""
        params.append([setting.name, setting.short, None, setting.help + default])
    params.append(
        ["config", "c", None, "A YAML file whose keys are these options' names."]
    )
    return params


class Options(usage.Options):
    """
    The options of C{twistd easymesh}.  After parsing, C{self.config} holds
    the checked L{SidecarConfig} and C{self.chains} the filter chains as
    checked.
    """

    synopsis = "[options]"
    longdesc = (
        "Run an easymesh sidecar: an outbound proxy that forwards the local "
        "app's calls to a peer sidecar, and an inbound proxy that forwards a "
        "peer's calls to the local app.  With no options the whole path runs "
        "on this machine: outbound :8082 -> inbound :8083 -> demo app :6060.  "
        "Endpoints are Twisted endpoint strings (tcp:8082:interface=127.0.0.1, "
        "systemd:domain=INET:name=outbound); a bare port is accepted.  "
        "Filter options take NAME[:ARGS] and may be repeated."
    )
    optParameters = _optParameters()

    def __init__(self) -> None:
        super().__init__()
        self.flags: Dict[str, Any] = {}
        self.config: Optional[SidecarConfig] = None
        self.chains: Dict[str, Any] = {}

    def opt_version(self) -> None:
        """Show easymesh's version and exit."""
        from easymesh import installedVersion

        print(f"easymesh {installedVersion()}")
        sys.exit(0)

    def opt_filter(self, spec: str) -> None:
        """Add a filter plugin, NAME[:ARGS], to both listeners (repeatable)."""
        self._flag("filter", spec)

    def opt_outbound_filter(self, spec: str) -> None:
        """Add a filter plugin, NAME[:ARGS], to the outbound listener (repeatable)."""
        self._flag("outbound-filter", spec)

    def opt_inbound_filter(self, spec: str) -> None:
        """Add a filter plugin, NAME[:ARGS], to the inbound listener (repeatable)."""
        self._flag("inbound-filter", spec)

    def opt_inbound_allow(self, pattern: str) -> None:
        """Accept callers with this identity on the inbound listener (repeatable)."""
        self._flag("inbound-allow", pattern)

    def opt_peer_identity(self, pattern: str) -> None:
        """Require this identity of an https:// peer (repeatable)."""
        self._flag("peer-identity", pattern)

    def _flag(self, name: str, text: str) -> None:
        setting = BY_NAME[name]
        try:
            value = setting.kind.fromText(text)
        except ValueError as e:
            raise usage.UsageError(f"--{name}: {e}") from None
        if setting.repeatable:
            value = self.flags.get(name, ()) + value
        self.flags[name] = value

    def postOptions(self) -> None:
        for setting in SETTINGS:
            if not setting.repeatable and self[setting.name] is not None:
                self._flag(setting.name, self[setting.name])
        try:
            self.config = loadConfig(self["config"], self.flags)
            self.chains = checkRunnable(self.config)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def loadConfig(path: Optional[str], flags: Mapping[str, Any]) -> SidecarConfig:
    """
    The config from a file (if any) and flags; flags override the file, and
    a repeatable flag replaces the file's list.

    @raise ConfigError: The file or a flag is refused.
    """
    values = ConfigValues()
    if path is not None:
        values = readConfigFile(path)
        values.lines = {k: n for k, n in values.lines.items() if k not in flags}
    values.update(flags)
    return buildConfig(values, path or "", values.lines)


def checkRunnable(config: SidecarConfig) -> Dict[str, Any]:
    """
    Check what a config needs beyond its own values, before anything is
    bound: its filters accept their arguments (they are built here, and
    again by makeService with its own reactor), its certificate files can
    be read and fit together, and an OTLP exporter can be made.

    @return: The filter chains built.
    @raise ConfigError: Something is missing or refused.
    """
    chains = buildChains(config)
    checkCredentials(config)
    if config.otlp_endpoint is not None:
        from easymesh.ops.otel import available

        if not available():
            raise ConfigError(
                "otlp-endpoint",
                "needs the opentelemetry extra: from the checkout, pip install '.[opentelemetry]'",
            )
    return chains


def checkCredentials(config: SidecarConfig, now: Optional[float] = None) -> None:
    """
    Read the workload's certificate, key and CA bundle, if configured.

    @param now: POSIX time at which the certificate must be valid (default:
        the time now; nothing runs yet to tell it).
    @raise ConfigError: One cannot be read, they do not fit together, or
        the certificate has expired or is not valid yet.
    """
    files = config.tlsFiles
    if files is None:
        return
    import time

    from easymesh.tls.credentials import CredentialError, loadCredentials

    try:
        loadCredentials(files.cert, files.key, files.ca, now=time.time() if now is None else now)
    except CredentialError as e:
        raise ConfigError(f"tls {e.path}", e.reason) from None


def buildChains(config: SidecarConfig, reactor: Any = None) -> Dict[str, Any]:
    """
    Build each listener's filter chain.

    @raise ConfigError: A filter is unknown or refuses its arguments.
    """
    from easymesh.filters.chain import FilterContext, buildChain
    from easymesh.filters.plugin import availableFilters

    if reactor is None:
        from twisted.internet import reactor
    from easymesh.config.model import FilterSpec

    available = availableFilters()
    chains = {
        listener.name: buildChain(
            listener.filters, FilterContext(listener.name, reactor), available
        )
        for listener in config.listeners()
    }
    for spec in config.mesh().listeners:
        if spec.protocol == "http":
            filters = tuple(FilterSpec.parse(f) for f in spec.filters)
            chains[spec.name] = buildChain(filters, FilterContext(spec.name, reactor), available)
    return chains


def makeService(options: Options, reactor: Any = None) -> Any:
    """
    Build the sidecar's service tree from parsed L{Options}.

    @return: A L{SidecarService} whose children are the outbound and inbound
        listeners and, as backends that outlive the drain, the admin
        listener and (without C{--upstream}) the demo app.
    """
    from functools import partial

    from easymesh.accesslog import AccessLog
    from easymesh.demo import demoSite
    from easymesh.errorlog import ErrorLog
    from easymesh.inflight import InFlight
    from easymesh.listener import MutualTLSFactory
    from easymesh.ops.sdnotify import Notifier
    from easymesh.ports import listeningService
    from easymesh.reload import ConfigReloader
    from easymesh.runtime import MeshRuntime
    from easymesh.service import SidecarService
    from easymesh.tls.identity import parsePatterns
    from easymesh.tls.registry import TLSContexts
    from easymesh.upstream import upstreamFor

    if reactor is None:
        from twisted.internet import reactor
    config = options.config
    assert config is not None, "parseOptions() first"
    chains = buildChains(config, reactor)
    inflight = InFlight()
    telemetry = buildTelemetry(config, reactor)
    contexts = TLSContexts(reactor, expiryWarning=config.tls_expiry_warning)
    runtime = MeshRuntime(
        reactor, makeUpstream=partial(upstreamFor, tls=contexts), telemetry=telemetry
    )
    runtime.apply(config.mesh())
    sidecar = SidecarService(reactor, inflight, config.drain, runtime)
    sidecar.tls = contexts
    sidecar.telemetry = telemetry
    if telemetry.metrics is not None:
        telemetry.metrics.setPoolSource(lambda: poolFigures(runtime))
        telemetry.metrics.setCertificateSource(contexts.expiries)
    sidecar.notifier = Notifier(clock=reactor)
    if options["config"] is not None:
        path, flags = options["config"], dict(options.flags)
        sidecar.reloader = ConfigReloader(
            path, lambda: loadConfig(path, flags), runtime, config, reactor
        )
        sidecar.reloader.observers.append(telemetry.configReloaded)
    accessLog = AccessLog(config.access_log) if config.access_log != "off" else None
    errorLog = ErrorLog(reactor)
    if config.runsDemo:
        sidecar.addBackend(listeningService(config.demo, demoSite(), reactor))
    if config.admin != "none":
        from easymesh.ops.admin import AdminResource, adminSite

        admin = AdminResource(sidecar, config, telemetry, reactor, reactor.stop)
        adminService = listeningService(config.admin, adminSite(admin, reactor), reactor)
        adminService.setName("admin")
        sidecar.addBackend(adminService)
    for listener in config.listeners():
        limits = config.edgeLimits
        if listener.name == INBOUND:
            limits = limits.withSidecarHeadroom()
        site = proxySite(listener.name, config, runtime, chains, limits, sidecar, accessLog, telemetry, errorLog, reactor)
        factory: Any = site
        if listener.name == INBOUND and config.inbound_tls == "mtls":
            files = config.tlsFiles
            assert files is not None
            site.allowedIdentities = parsePatterns(config.inbound_allow or ("*",))
            factory = MutualTLSFactory(contexts.server(files), False, site)
        service = listeningService(listener.endpoint, factory, reactor)
        service.setName(listener.name)
        sidecar.addListener(service, site)
    for spec in config.mesh().listeners:
        addFileListener(sidecar, spec, config, runtime, chains, contexts, accessLog, telemetry, errorLog, reactor)
    return sidecar


def proxySite(
    name: str,
    config: SidecarConfig,
    runtime: Any,
    chains: Dict[str, Any],
    limits: Any,
    sidecar: Any,
    accessLog: Any,
    telemetry: Any,
    errorLog: Any,
    reactor: Any,
) -> Any:
    """
    The L{easymesh.listener.ProxySite} of the HTTP listener C{name}: its
    forwarder (header policy, filter chain, routes by its name) and the
    sidecar's logs, telemetry and in-flight count.
    """
    from easymesh.forwarder import Forwarder
    from easymesh.headers import HeaderPolicy
    from easymesh.listener import ProxyResource, ProxySite

    forwarder = Forwarder(
        HeaderPolicy(config.nodeId, name, config.headers_with_underscores_action), chains[name], runtime, name
    )
    forwarder.sampleNewTraces = telemetry.traces is not None
    resource = ProxyResource(name, forwarder, reactor, sidecar.inflight, accessLog, telemetry, errorLog)
    return ProxySite(resource, limits, reactor=reactor)


def addFileListener(
    sidecar: Any,
    spec: Any,
    config: SidecarConfig,
    runtime: Any,
    chains: Dict[str, Any],
    contexts: Any,
    accessLog: Any,
    telemetry: Any,
    errorLog: Any,
    reactor: Any,
) -> None:
    """
    Add a listener of the config file (an L{easymesh.config.mesh.ListenerSpec})
    to C{sidecar}: an HTTP one like the flags' (routed by its name), or a
    C{tcp} one (L{easymesh.tcpproxy.TCPListener}); behind mTLS if it says
    C{tls: mtls}.

    @raise ConfigError: It asks for mTLS and the sidecar has no workload
        certificate.
    """
    import attrs

    from easymesh.listener import MutualTLSFactory
    from easymesh.ports import listeningService
    from easymesh.tcpproxy import TCP_IDLE_TIMEOUT, TCPListener
    from easymesh.tls.identity import parsePatterns

    files = config.tlsFiles
    if spec.tls == "mtls" and files is None:
        raise ConfigError(
            f"listeners.{spec.name}.tls", "mtls needs the workload certificate (--tls-cert, --tls-key, --tls-ca)"
        )
    allowed = parsePatterns(spec.allow or ("*",)) if spec.tls == "mtls" else None
    factory: Any
    if spec.protocol == "tcp":
        site: Any = TCPListener(
            spec.name,
            runtime,
            spec.cluster,
            reactor,
            sidecar.inflight,
            spec.idleTimeout if spec.idleTimeout is not None else TCP_IDLE_TIMEOUT,
            accessLog,
            telemetry,
            allowed,
        )
        factory = site
    else:
        limits = config.edgeLimits
        if spec.idleTimeout is not None:
            limits = attrs.evolve(limits, idleTimeout=spec.idleTimeout)
        site = factory = proxySite(
            spec.name, config, runtime, chains, limits, sidecar, accessLog, telemetry, errorLog, reactor
        )
        site.allowedIdentities = allowed
    if allowed is not None:
        assert files is not None
        factory = MutualTLSFactory(contexts.server(files), False, factory)
    service = listeningService(spec.address, factory, reactor)
    service.setName(spec.name)
    sidecar.addListener(service, site)


def buildTelemetry(config: SidecarConfig, reactor: Any) -> Any:
    """
    What the data path reports to: Prometheus metrics and the dashboard's
    live figures when the admin listener runs (C{prometheus_client} is
    imported only then), nothing otherwise.
    """
    from easymesh.ops.telemetry import Telemetry

    traces = None
    if config.otlp_endpoint is not None:
        from easymesh.ops.otel import OTLPTraces

        traces = OTLPTraces(config.otlp_endpoint, config.nodeId)
    if config.admin == "none":
        return Telemetry(traces=traces, clock=reactor)
    from easymesh.ops.live import LiveStats
    from easymesh.ops.metrics import Metrics

    return Telemetry(Metrics(), LiveStats(reactor), traces, reactor)


def poolFigures(runtime: Any) -> Any:
    """
    Each cluster's upstream connections: C{(cluster, idle, active)}.
    """
    for name, cluster in runtime.clusters.items():
        idle = sum(e.upstream.idleConnections() for e in cluster.endpoints)
        yield name, idle, max(0, cluster.breakers.connections - idle)
