"""
The WebSocket benchmark's app: echoes every message (the websockets
library's asyncio server).

    python ws_echo.py PORT
"""

import asyncio
import sys

from websockets.asyncio.server import serve


async def echo(websocket) -> None:  # type: ignore[no-untyped-def]
    async for message in websocket:
        await websocket.send(message)


async def main(port: int) -> None:
    async with serve(echo, "127.0.0.1", port, compression=None):
        await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
