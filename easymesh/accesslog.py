# -*- test-case-name: tests.test_listener -*-
"""
Access log lines through C{twisted.logger}: one per request, as text or as
JSON.  Header values (and so credentials) are never logged; the one
header logged, C{x-request-id}, only when it is a bounded run of visible
characters (L{easymesh.headers.validRequestId}), so that it cannot forge a
field or a line.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Dict, Optional

from twisted.logger import Logger

from easymesh.grpc import statusName
from easymesh.headers import validRequestId

_log = Logger(namespace="easymesh.access")


class AccessLog:
    """
    Emit access log events under the C{easymesh.access} namespace.

    @param style: C{"text"} or C{"json"}.
    """

    def __init__(self, style: str) -> None:
        self.style = style

    def record(
        self,
        listener: str,
        method: bytes,
        path: bytes,
        status: int,
        bytesIn: int,
        bytesOut: int,
        duration: float,
        proxied: Any,
        requestId: Optional[bytes],
        cause: Optional[str],
        started: Optional[float] = None,
        grpcStatus: Optional[int] = None,
        tunnel: Optional[str] = None,
    ) -> None:
        """
        Log one request.

        @param proxied: Its L{easymesh.message.ProxyRequest} (for the route,
            cluster, upstream host and attempts), or L{None} if it was
            refused before one was made.
        @param started: When the request arrived (POSIX seconds).
        @param grpcStatus: A gRPC call's C{grpc-status}, logged by name;
            L{None} for a request that is not a gRPC call or got none.
        @param requestId: The request's C{x-request-id}; logged as absent
            unless valid (one refused before its headers were prepared may
            still carry the client's).
        @param tunnel: For a request whose connection switched protocols
            (a WebSocket), how the tunnel ended (one of
            L{easymesh.tunnel.ENDS}); its bytes in and out are then the
            tunnel's, each way, and its duration the tunnel's life with the
            upgrade request.
        """
        entry: Dict[str, Any] = {
            "timestamp": _iso(started) if started is not None else None,
            "listener": listener,
            "method": method.decode("latin-1"),
            "path": path.decode("latin-1"),
            "status": status,
            "bytes_in": bytesIn,
            "bytes_out": bytesOut,
            "duration_ms": round(duration * 1000, 3),
            "route": getattr(proxied, "route", None),
            "cluster": getattr(proxied, "cluster", None),
            "upstream": getattr(proxied, "upstreamHost", None),
            "attempts": getattr(proxied, "attempts", 0),
            "request_id": (
                requestId.decode("ascii") if requestId and validRequestId(requestId) else None
            ),
            "error": cause,
            "protocol": _protocol(getattr(proxied, "version", None)),
            "upstream_protocol": getattr(proxied, "upstreamProtocol", None),
            "grpc_status": statusName(grpcStatus) if grpcStatus is not None else None,
            "tunnel": tunnel,
        }
        if self.style == "json":
            _log.info("{line}", line=json.dumps(entry, separators=(",", ":")), **entry)
        else:
            _log.info("{line}", line=textLine(entry), **entry)

    def recordConnection(
        self,
        listener: str,
        client: str,
        cluster: str,
        upstream: Optional[str],
        bytesIn: int,
        bytesOut: int,
        duration: float,
        ended: str,
        started: float,
    ) -> None:
        """
        Log one connection of a C{tcp} listener, once it is closed: bytes
        from the client (C{bytes_in}) and to it, and how it ended (see
        L{easymesh.tcpproxy}).
        """
        entry: Dict[str, Any] = {
            "timestamp": _iso(started),
            "listener": listener,
            "protocol": "TCP",
            "client": client,
            "bytes_in": bytesIn,
            "bytes_out": bytesOut,
            "duration_ms": round(duration * 1000, 3),
            "cluster": cluster,
            "upstream": upstream,
            "ended": ended,
        }
        if self.style == "json":
            _log.info("{line}", line=json.dumps(entry, separators=(",", ":")), **entry)
        else:
            _log.info("{line}", line=_connectionLine(entry), **entry)


#: The text access log line; an absent field shows as C{-}.  A gRPC
#: call's line ends with C{grpc_status=NAME}, a tunnel's with
#: C{tunnel=HOW} (how it ended).
TEXT_FORMAT = (
    "{listener} {method} {path} {protocol} {status} in={bytes_in}B out={bytes_out}B "
    "{duration_ms}ms route={route} cluster={cluster} upstream={upstream} "
    "attempts={attempts} error={error} request_id={request_id}"
)


def textLine(entry: Dict[str, Any]) -> str:
    """
    One access log entry as a line of text, C{-} for every absent field.
    """
    line = TEXT_FORMAT.format(**{k: "-" if v is None else v for k, v in entry.items()})
    if entry.get("grpc_status") is not None:
        line += f" grpc_status={entry['grpc_status']}"
    if entry.get("tunnel") is not None:
        line += f" tunnel={entry['tunnel']}"
    return line


def _connectionLine(entry: Dict[str, Any]) -> str:
    return CONNECTION_FORMAT.format(**{k: "-" if v is None else v for k, v in entry.items()})


#: The text access log line of a C{tcp} listener's connection.
CONNECTION_FORMAT = (
    "{listener} TCP {client} in={bytes_in}B out={bytes_out}B {duration_ms}ms "
    "cluster={cluster} upstream={upstream} ended={ended}"
)


def _protocol(version: Optional[bytes]) -> Optional[str]:
    """
    C{HTTP/1.1}, C{HTTP/1.0} or C{HTTP/2}: how a request arrived.
    """
    return "HTTP/" + version.decode("ascii") if version else None


def _iso(seconds: float) -> str:
    """
    C{2026-11-27T01:02:03.456Z}.
    """
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
