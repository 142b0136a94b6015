"""
The benchmark's Python backend, used where nginx is missing and for
uploads (nginx cannot hash a body): asyncio on raw sockets.

    python backend.py PORT

GET /big?n=BYTES streams BYTES of a fixed pseudo-random pattern (the same
bytes as benchmarks/run.py's upload file); POST/PUT answer with the body's
length and sha256; anything else answers "hello world".
"""

import asyncio
import hashlib
import sys

HELLO = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nhello world\n"


def pattern(size: int = 1 << 20) -> bytes:
    out, block = [], hashlib.sha256(b"easymesh").digest()
    while len(out) * 32 < size:
        block = hashlib.sha256(block).digest()
        out.append(block)
    return b"".join(out)[:size]


PATTERN = pattern()


async def readBody(reader: asyncio.StreamReader, headers: dict) -> "tuple[int, str]":
    digest, total = hashlib.sha256(), 0
    if "content-length" in headers:
        left = int(headers["content-length"])
        while left:
            data = await reader.read(min(left, 1 << 20))
            if not data:
                raise ConnectionError("body cut short")
            left -= len(data)
            total += len(data)
            digest.update(data)
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            data = await reader.readexactly(size)
            await reader.readexactly(2)
            total += size
            digest.update(data)
    return total, digest.hexdigest()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            if method in ("POST", "PUT"):
                total, digest = await readBody(reader, headers)
                body = f"{total} {digest}\n".encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            elif target.startswith("/big?n="):
                size = int(target.split("=", 1)[1])
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                sent = 0
                while sent < size:
                    chunk = PATTERN[: min(len(PATTERN), size - sent)]
                    writer.write(chunk)
                    sent += len(chunk)
                    await writer.drain()
            else:
                writer.write(HELLO)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main() -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
