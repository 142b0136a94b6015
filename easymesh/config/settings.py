# -*- test-case-name: tests.test_config -*-
"""
The table of settings: each is a long flag of C{twistd easymesh} and a key
of the same name in the YAML config file.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

from easymesh.config.addresses import checkFilterSpec, checkURL, endpointNormaliser
from easymesh.config.kinds import Choice, Endpoint, Kind, ListOf, Number, Setting, Text
from easymesh.config.mesh import PROTOCOLS
from easymesh.config.model import UNDERSCORE_ACTIONS, ConfigError, SidecarConfig

_defaults = SidecarConfig()
_NODE_ID_EXPECTED = "a name of ASCII letters, digits and -._~"

def checkIdentityPattern(text: str) -> str:
    from easymesh.tls.identity import IdentityPattern

    IdentityPattern.parse(text)
    return text


#: Bounds past which a value is a typo rather than a choice.
DAY = 24 * 3600.0
MiB = 1024 * 1024

SETTINGS: Tuple[Setting, ...] = (
    Setting(
        "outbound",
        Endpoint(check=endpointNormaliser("127.0.0.1")),
        "Where the outbound proxy listens, as a Twisted endpoint string (a bare "
        "port means loopback only).",
        _defaults.outbound,
    ),
    Setting(
        "inbound",
        Endpoint(check=endpointNormaliser(None)),
        "Where the inbound proxy listens, as a Twisted endpoint string.",
        _defaults.inbound,
    ),
    Setting(
        "peer",
        Text("an http:// or https:// URL", checkURL),
        "Where the outbound proxy forwards: the peer's inbound proxy.",
        "this sidecar's own inbound listener",
    ),
    Setting(
        "upstream",
        Text("an http:// or https:// URL", checkURL),
        "The local app behind the inbound proxy; without it the built-in demo "
        "app runs and is the upstream.",
        "the demo app",
    ),
    Setting(
        "demo",
        Endpoint(check=endpointNormaliser("127.0.0.1")),
        "Where the built-in demo app listens when no --upstream is given (a "
        "bare port means loopback only).",
        _defaults.demo,
    ),
    Setting(
        "timeout",
        Number(0, exclusiveMinimum=True, maximum=DAY),
        "Seconds to wait for upstream response headers, from the end of the "
        "request body (then 504).",
        _defaults.timeout,
    ),
    Setting(
        "connect-timeout",
        Number(0, exclusiveMinimum=True, maximum=DAY),
        "Seconds to wait for an upstream connection (then 503).",
        _defaults.connect_timeout,
    ),
    Setting(
        "stream-idle-timeout",
        Number(0, exclusiveMinimum=True, maximum=DAY),
        "Seconds a request or response body may stream with no byte moving "
        "either way; then 504, or the client is dropped if the response has "
        "begun, and the upstream connection is closed.",
        _defaults.stream_idle_timeout,
    ),
    Setting(
        "tunnel-idle-timeout",
        Number(0, exclusiveMinimum=True, maximum=DAY),
        "Seconds a WebSocket (a connection switched by an HTTP/1.1 upgrade) "
        "may carry no byte either way before both its connections are "
        "closed, for routes that set no tunnel_idle_timeout.",
        _defaults.tunnel_idle_timeout,
    ),
    Setting(
        "pool-size",
        Number(1, integer=True, maximum=10_000),
        "Idle persistent connections kept per upstream host.",
        _defaults.pool_size,
    ),
    Setting(
        "pool-idle",
        Number(0, exclusiveMinimum=True, maximum=DAY),
        "Seconds an idle upstream connection is kept (keep it below the app's "
        "keep-alive timeout).",
        _defaults.pool_idle,
    ),
    Setting(
        "rate",
        Number(0, exclusiveMinimum=True, maximum=1e9),
        "Requests per second admitted by the inbound listener's token bucket "
        "(off unless given).",
    ),
    Setting(
        "burst",
        Number(1, integer=True, maximum=1_000_000_000),
        "Token bucket size: requests admitted at once after a quiet spell.",
        "the rate, rounded up",
    ),
    Setting(
        "max-wait",
        Number(0, maximum=DAY),
        "Seconds a request may queue for a token before 429 (0: reject at once).",
        _defaults.max_wait,
    ),
    Setting(
        "max-queue",
        Number(0, integer=True, maximum=1_000_000),
        "Requests that may queue for a token at once; beyond it, 429.",
        _defaults.max_queue,
    ),
    Setting(
        "filter",
        ListOf(Text("NAME[:ARGS]", checkFilterSpec)),
        "Add a filter plugin to both listeners (repeatable).",
    ),
    Setting(
        "outbound-filter",
        ListOf(Text("NAME[:ARGS]", checkFilterSpec)),
        "Add a filter plugin to the outbound listener (repeatable).",
    ),
    Setting(
        "inbound-filter",
        ListOf(Text("NAME[:ARGS]", checkFilterSpec)),
        "Add a filter plugin to the inbound listener (repeatable).",
    ),
    Setting(
        "access-log",
        Choice(("off", "text", "json")),
        "Log one line per request: off, text or json.",
        _defaults.access_log,
    ),
    Setting(
        "drain",
        Number(0, maximum=DAY),
        "Seconds to let in-flight requests finish on SIGTERM.",
        _defaults.drain,
    ),
    Setting(
        "max-request-line",
        Number(256, integer=True, maximum=MiB),
        "Longest request line a client may send (then 414).",
        _defaults.max_request_line,
    ),
    Setting(
        "max-head-size",
        Number(1024, integer=True, maximum=MiB),
        "Largest request head (request line and headers) a client may send "
        "(then 431).",
        _defaults.max_head_size,
    ),
    Setting(
        "max-headers",
        Number(1, integer=True, maximum=1000),
        "Most header fields in a request (then 431).",
        _defaults.max_headers,
    ),
    Setting(
        "max-concurrent-streams",
        Number(1, integer=True, maximum=10_000),
        "Most streams open at once on one HTTP/2 client connection "
        "(SETTINGS_MAX_CONCURRENT_STREAMS).",
        _defaults.max_concurrent_streams,
    ),
    Setting(
        "max-body",
        Number(0, integer=True, maximum=2**53),
        "Largest request body in bytes (then 413; checked before reading when "
        "the length is declared).",
        "no limit: bodies stream and the app decides",
    ),
    Setting(
        "head-timeout",
        Number(0, exclusiveMinimum=True, maximum=DAY),
        "Seconds from a request's first byte to its complete head (then 408 "
        "and close).",
        _defaults.head_timeout,
    ),
    Setting(
        "body-timeout",
        Number(0, exclusiveMinimum=True, maximum=DAY),
        "Seconds a request body may go without a byte (then 408 and close).",
        _defaults.body_timeout,
    ),
    Setting(
        "idle-timeout",
        Number(0, exclusiveMinimum=True, maximum=DAY),
        "Seconds a client connection may wait for its next request.",
        _defaults.idle_timeout,
    ),
    Setting(
        "max-connections",
        Number(1, integer=True, maximum=1_000_000),
        "Client connections open at once per listener; beyond it, new ones "
        "are closed at once.",
        _defaults.max_connections,
    ),
    Setting(
        "node-id",
        Text(_NODE_ID_EXPECTED, lambda s: _checkToken(s)),
        "This sidecar's name in Via headers.",
        "the host name",
    ),
)

def _checkCollectorURL(text: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL, not {text!r}")
    return text


def _adminEndpoint(text: str) -> str:
    if text == "none":
        return text
    return endpointNormaliser("127.0.0.1")(text)


SETTINGS += (
    Setting(
        "admin",
        Endpoint(expected="a Twisted endpoint string, or none", check=_adminEndpoint),
        "Where the admin listener (dashboard, metrics, readiness) listens, or "
        "none (a bare port means loopback only); keep it off public "
        "interfaces.  Each sidecar on a host needs its own.",
        _defaults.admin,
    ),
    Setting(
        "otlp-endpoint",
        Text("an http:// or https:// URL", _checkCollectorURL),
        "Export a span per request over OTLP/HTTP to this collector URL "
        "(e.g. http://127.0.0.1:4318/v1/traces); needs the opentelemetry extra.",
        "off",
    ),
    Setting(
        "tls-cert",
        Text("a file name"),
        "This workload's certificate (PEM, leaf first): presented by the "
        "inbound listener with --inbound-tls mtls, and to https:// peers.",
    ),
    Setting("tls-key", Text("a file name"), "The private key of --tls-cert (PEM)."),
    Setting(
        "tls-ca",
        Text("a file name"),
        "The CA bundle (PEM) that peers' certificates are verified against.",
    ),
    Setting(
        "inbound-tls",
        Choice(("off", "mtls")),
        "mtls: the inbound listener speaks TLS only and requires a client "
        "certificate from --tls-ca.",
        _defaults.inbound_tls,
    ),
    Setting(
        "inbound-allow",
        ListOf(Text("an identity pattern", checkIdentityPattern)),
        "A caller identity the inbound listener accepts (SPIFFE URI, "
        "spiffe://domain/prefix/*, DNS name, or * for any; repeatable; "
        "default any from --tls-ca).",
    ),
    Setting(
        "peer-protocol",
        Choice(PROTOCOLS),
        "What the outbound listener speaks to --peer: http1; http2 "
        "(prior-knowledge h2c over http://, ALPN h2 over https://), every "
        "request, HTTP/1.1 ones included, then riding on a few multiplexed "
        "connections; or auto (over https://, what the peer picks by ALPN).",
        _defaults.peer_protocol,
    ),
    Setting(
        "peer-identity",
        ListOf(Text("an identity pattern", checkIdentityPattern)),
        "An identity the https:// peer must present (repeatable; default any "
        "from --tls-ca).",
    ),
    Setting(
        "tls-expiry-warning",
        Number(0, maximum=365 * DAY),
        "Seconds before --tls-cert expires from which a warning is logged "
        "(0: none).",
        _defaults.tls_expiry_warning,
    ),
    Setting(
        "headers-with-underscores-action",
        Choice(UNDERSCORE_ACTIONS),
        "What both listeners do with a request header whose name holds an "
        "underscore (many apps read X_Foo as X-Foo): allow, drop_header (as "
        "nginx does), or reject_request (400).",
        _defaults.headers_with_underscores_action,
    ),
)

BY_NAME: Mapping[str, Setting] = {s.name: s for s in SETTINGS}


def _typeCell(kind: Kind) -> str:
    if isinstance(kind, ListOf):
        return f"a list, each {kind.item.expected}"
    text = kind.expected
    if isinstance(kind, Number) and kind.maximum is not None:
        limit = kind.maximum
        text += f", at most {int(limit):,}" if float(limit).is_integer() else f", at most {limit:g}"
    return text


def _defaultCell(setting: Setting) -> str:
    if setting.default is None:
        return "none"
    if isinstance(setting.default, float) and setting.default.is_integer():
        return f"`{int(setting.default)}`"
    if isinstance(setting.default, str) and not isinstance(setting.kind, (Choice, Endpoint)):
        return setting.default  # words, such as "the host name"
    return f"`{setting.default}`"


def settingsMarkdown() -> str:
    """
    L{SETTINGS} as a Markdown table, for the configuration reference: each
    key, its flag, what it takes, its default and its meaning.
    """
    lines = ["| key | flag | type | default | meaning |", "|---|---|---|---|---|"]
    for s in SETTINGS:
        flag = f"`--{s.name}`" + (f", `-{s.short}`" if s.short else "")
        meaning = s.help.replace("|", "\\|")
        lines.append(f"| `{s.name}` | {flag} | {_typeCell(s.kind)} | {_defaultCell(s)} | {meaning} |")
    return "\n".join(lines) + "\n"


_NODE_ID_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~"
)


def _checkToken(text: str) -> str:
    if not _NODE_ID_CHARS.issuperset(text):
        raise ValueError(f"must be {_NODE_ID_EXPECTED}, not {text!r}")
    return text


def buildConfig(
    values: Mapping[str, Any], where: str = "", lines: Optional[Mapping[str, int]] = None
) -> SidecarConfig:
    """
    Make a L{SidecarConfig} from already-checked values keyed by setting
    name; settings not given keep their defaults.

    @param where: The config file the values came from, if any.
    @param lines: The line of each setting read from that file.
    @raise ConfigError: The values do not fit together.
    """
    if lines is None:
        lines = getattr(values, "lines", None)
    kwargs: Dict[str, Any] = {BY_NAME[k].attribute: v for k, v in values.items()}
    kwargs["meshFile"] = getattr(values, "mesh", {})
    try:
        return SidecarConfig(**kwargs)
    except ConfigError as e:
        key = e.where.replace("_", "-")
        line = (lines or {}).get(key)
        if where and line is not None:
            raise ConfigError(f"{where}:{line}", f"key {key!r}: {e.reason}") from None
        prefix = f"{where}: " if where else ""
        raise ConfigError(f"{prefix}{e.where}", e.reason) from None
