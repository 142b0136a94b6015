"""
WebSocket load: CONNECTIONS connections each sending a 64-byte message and
waiting for its echo, over and over, for DURATION seconds; prints the
round trips done as JSON (count, per second, mean and maximum).

    python ws_load.py PORT CONNECTIONS DURATION
"""

import asyncio
import json
import sys
import time

from websockets.asyncio.client import connect


async def main(port: int, connections: int, duration: float) -> None:
    message = b"x" * 64
    latencies = []

    async def worker() -> None:
        async with connect(f"ws://127.0.0.1:{port}/echo", compression=None) as websocket:
            deadline = time.monotonic() + duration
            while time.monotonic() < deadline:
                started = time.monotonic()
                await websocket.send(message)
                assert await websocket.recv() == message
                latencies.append(time.monotonic() - started)

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.monotonic() - started
    print(
        json.dumps(
            {
                "count": len(latencies),
                "rps": len(latencies) / elapsed,
                "mean": sum(latencies) / len(latencies),
                "max": max(latencies),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
