# -*- test-case-name: tests.test_listener -*-
"""
Access log lines through C{twisted.logger}: one per request, as text or as
JSON.  Header values (and so credentials) are never logged.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

from twisted.logger import Logger

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
    ) -> None:
        """
        Log one request.

        @param proxied: Its L{easymesh.message.ProxyRequest} (for the route,
            cluster, upstream host and attempts), or L{None} if it was
            refused before one was made.
        """
        entry: Dict[str, Any] = {
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
            "request_id": requestId.decode("latin-1") if requestId else None,
            "error": cause,
        }
        if self.style == "json":
            _log.info("{line}", line=json.dumps(entry, separators=(",", ":")), **entry)
        else:
            _log.info(
                "{listener} {method} {path} {status} {bytes_out}B "
                "{duration_ms}ms route={route} upstream={upstream} "
                "attempts={attempts} error={error} "
                "request_id={request_id}",
                **entry,
            )
