# -*- test-case-name: tests.test_config -*-
"""
Checks for the two kinds of address a sidecar is configured with: Twisted
server endpoint strings (where it listens) and upstream URLs (where it
forwards).
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple
from urllib.parse import urlsplit

import attrs

#: URL schemes with an upstream implementation; see L{easymesh.upstream}.
UPSTREAM_SCHEMES = ("http", "https", "h2c", "grpc", "tcp", "tls")
DEFAULT_PORTS = {"http": 80, "https": 443, "h2c": 80, "grpc": 80}
#: Schemes that mean HTTP/2 with prior knowledge (plaintext h2c).
HTTP2_SCHEMES = ("h2c", "grpc")
#: Schemes of a raw TCP endpoint, plain or with TLS originated by the
#: sidecar; only a C{tcp} listener's cluster has them.
TCP_SCHEMES = ("tcp", "tls")


def endpointNormaliser(bareInterface: Optional[str]) -> Callable[[str], str]:
    """
    Make a check for server endpoint strings that accepts a bare port number
    and turns it into a C{tcp:} endpoint (on C{bareInterface}, if given).
    """

    def normalise(text: str) -> str:
        if text.isdigit():
            port = int(text)
            if not 0 <= port <= 65535:
                raise ValueError(f"port {port} is out of range")
            text = f"tcp:{port}"
            if bareInterface:
                text += f":interface={bareInterface}"
        checkEndpoint(text)
        return text

    return normalise


def checkEndpoint(description: str) -> None:
    """
    Parse a server endpoint string without binding anything.

    @raise ValueError: It does not parse, names an unknown endpoint type, or
        (for C{systemd:}) the process was not given the sockets it names.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    try:
        serverFromString(reactor, description)
    except Exception as e:
        reason = str(e) or type(e).__name__
        if description.startswith("systemd:"):
            reason = (
                f"{reason} (a systemd: endpoint needs the sockets passed by "
                "systemd socket activation, LISTEN_FDS and LISTEN_FDNAMES)"
            )
        raise ValueError(f"invalid endpoint {description!r}: {reason}") from None


def tcpPortOf(description: str) -> Optional[Tuple[str, int]]:
    """
    The loopback-reachable host and port of a C{tcp:} server endpoint string,
    or L{None} for other kinds.
    """
    parts = _splitEndpoint(description)
    if parts[0] not in ("tcp", "tcp6") or len(parts) < 2:
        return None
    port = None
    interface = ""
    for index, part in enumerate(parts[1:]):
        key, sep, value = part.partition("=")
        if not sep and index == 0 and key.isdigit():
            port = int(key)
        elif key == "port":
            port = int(value)
        elif key == "interface":
            interface = value
    if port is None:
        return None
    if interface in ("", "0.0.0.0"):
        interface = "::1" if parts[0] == "tcp6" else "127.0.0.1"
    elif interface == "::":
        interface = "::1"
    return interface, port


def _splitEndpoint(description: str) -> List[str]:
    """
    Split an endpoint string on its unescaped colons, removing the
    backslash escapes (as C{tcp6:8083:interface=\\:\\:1} needs).
    """
    parts, current, escaped = [], [], False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


#: The listen backlog a proxy listener gets unless its endpoint names one:
#: Twisted's default of 50 overflows under a burst of new connections.
LISTEN_BACKLOG = 1024


def withBacklog(description: str, backlog: int = LISTEN_BACKLOG) -> str:
    """
    A C{tcp:} or C{tcp6:} server endpoint string with a listen backlog of
    C{backlog}, unless it names its own; other kinds unchanged.
    """
    parts = _splitEndpoint(description)
    if parts[0] not in ("tcp", "tcp6") or any(p.startswith("backlog=") for p in parts[1:]):
        return description
    return f"{description}:backlog={backlog}"


@attrs.frozen
class UpstreamURL:
    """
    A parsed upstream URL: scheme, host and port; no path.
    """

    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "UpstreamURL":
        """
        @raise ValueError: Not a URL easymesh can forward to.
        """
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as e:
            raise ValueError(f"invalid URL {text!r}: {e}") from None
        if parts.scheme not in UPSTREAM_SCHEMES:
            raise ValueError(
                f"invalid URL {text!r}: the scheme must be one of "
                + ", ".join(UPSTREAM_SCHEMES)
            )
        if not parts.hostname:
            raise ValueError(f"invalid URL {text!r}: no host")
        if port is None and parts.scheme not in DEFAULT_PORTS:
            raise ValueError(f"invalid URL {text!r}: a {parts.scheme}:// URL needs a port")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(
                f"invalid URL {text!r}: give only scheme, host and port "
                "(requests keep their own path)"
            )
        if parts.username is not None or parts.password is not None:
            raise ValueError(f"invalid URL {text!r}: credentials are not allowed")
        return cls(
            parts.scheme,
            parts.hostname,
            port if port is not None else DEFAULT_PORTS[parts.scheme],
        )

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == DEFAULT_PORTS.get(self.scheme):
            return host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.authority}"


def checkURL(text: str) -> str:
    """
    A L{Text} check that keeps a valid upstream URL in its normal form.
    """
    return str(UpstreamURL.parse(text))


def checkFilterSpec(text: str) -> str:
    """
    A L{Text} check for C{NAME[:ARGS]}.
    """
    name = text.partition(":")[0]
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError(f"invalid filter {text!r}: expected NAME[:ARGS]")
    return text
