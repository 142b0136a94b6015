"""
gRPC load: unary calls of /bench.Echo/Say (a 64-byte message), CONCURRENCY
in flight on one channel (one HTTP/2 connection) for DURATION seconds;
prints what was done as JSON (calls, calls per second, mean and maximum
latency).  Every call must succeed.

    python grpc_load.py PORT CONCURRENCY DURATION
"""

import asyncio
import json
import sys
import time

import grpc


async def main(port: int, concurrency: int, duration: float) -> None:
    message = b"x" * 64
    latencies = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        say = channel.unary_unary("/bench.Echo/Say")
        await say(message, timeout=10)
        deadline = time.monotonic() + duration

        async def worker() -> None:
            while time.monotonic() < deadline:
                started = time.monotonic()
                reply = await say(message, timeout=10)
                latencies.append(time.monotonic() - started)
                assert reply == message

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    print(
        json.dumps(
            {
                "calls": len(latencies),
                "rps": len(latencies) / elapsed,
                "mean": sum(latencies) / len(latencies),
                "max": max(latencies),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
