"""
A WebSocket app for the integration tests, on the C{websockets} library,
run as its own process (so that a test can kill it abruptly):

    python -m tests.integration.wsapp STATE_FILE

It listens on a free port of 127.0.0.1 and prints the port on a line of
its own once it accepts.  Paths:

  /echo       echoes every message (text as text, binary as binary); the
              text C{close:CODE:REASON} makes it close with that code and
              reason; C{extensions?} is answered with the extensions it
              negotiated, C{headers?} with the upgrade request's header
              fields (JSON pairs)
  /push       sends C{push-1}, C{push-2} and C{push-3} at once, unasked,
              then echoes
  /flood?mib=N  sends N MiB in 1 MiB binary messages, writing how many
              bytes it has sent so far to STATE_FILE after each, then
              closes with 1000
  /last-close answers its first message with the code and reason of the
              last close a client sent (JSON)
  /refuse     refuses the upgrade with a plain 403
"""

from __future__ import annotations

import asyncio
import json
import sys
from http import HTTPStatus
from pathlib import Path
from typing import Any, Dict, Optional
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve

MIB = 1024 * 1024

_lastClose: Dict[str, Any] = {"code": None, "reason": None}


async def _echo(ws: ServerConnection) -> None:
    async for message in ws:
        if isinstance(message, str) and message.startswith("close:"):
            _, code, reason = message.split(":", 2)
            await ws.close(int(code), reason)
            return
        if message == "extensions?":
            names = [e.name for e in ws.protocol.extensions]
            await ws.send(json.dumps(names))
        elif message == "headers?":
            await ws.send(json.dumps(list(ws.request.headers.raw_items())))
        else:
            await ws.send(message)


async def _handler(ws: ServerConnection, state: Path) -> None:
    parts = urlsplit(ws.request.path)
    path = parts.path
    try:
        if path == "/push":
            for n in (1, 2, 3):
                await ws.send(f"push-{n}")
            await _echo(ws)
        elif path == "/flood":
            mib = int(parse_qs(parts.query).get("mib", ["200"])[0])
            piece = bytes(range(256)) * (MIB // 256)
            sent = 0
            for _ in range(mib):
                await ws.send(piece)
                sent += len(piece)
                state.write_text(str(sent))
            await ws.close(1000, "flood done")
        elif path == "/last-close":
            await ws.recv()
            await ws.send(json.dumps(_lastClose))
        else:
            await _echo(ws)
    finally:
        received = ws.protocol.close_rcvd
        if received is not None and path != "/last-close":
            _lastClose["code"] = received.code
            _lastClose["reason"] = received.reason


def _process(connection: ServerConnection, request: Any) -> Optional[Any]:
    if urlsplit(request.path).path == "/refuse":
        return connection.respond(HTTPStatus.FORBIDDEN, "no upgrade here\n")
    return None


async def main(state: Path) -> None:
    async with serve(
        lambda ws: _handler(ws, state),
        "127.0.0.1",
        0,
        process_request=_process,
        max_size=None,
        ping_interval=None,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
