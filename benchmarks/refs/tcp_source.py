"""
The TCP benchmark's server: to each connection, sends SIZE bytes, then
closes.

    python tcp_source.py PORT SIZE
"""

import asyncio
import sys


async def main(port: int, size: int) -> None:
    block = b"x" * (1 << 20)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        left = size
        while left > 0:
            chunk = block if left >= len(block) else block[:left]
            writer.write(chunk)
            await writer.drain()
            left -= len(chunk)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
