"""
A TCP echo server for the tcp listener tests: echoes what it reads, and
once the client has closed its sending half writes C{BYE} and closes.
A line C{SILENT} makes it stop reading (the client's data then waits in
the sockets and the sidecars' buffers).

    python tcp_echo.py PORT
"""

import asyncio
import sys


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(1 << 16)
            if not data:
                break
            if data == b"SILENT\n":
                await asyncio.sleep(3600)
            writer.write(data)
            await writer.drain()
        writer.write(b"BYE\n")
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    print("READY", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
