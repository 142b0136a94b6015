"""
Reference: an aiohttp reverse proxy with one pooled ClientSession, streaming
both bodies, one hop.

    python aiohttp_proxy.py LISTEN_PORT UPSTREAM_PORT
"""

import sys

import aiohttp
from aiohttp import web

HOP = {
    "connection", "keep-alive", "proxy-connection", "te", "trailer",
    "transfer-encoding", "upgrade", "content-length", "host",
}


async def proxy(request: web.Request) -> web.StreamResponse:
    session = request.app["session"]
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
    data = request.content if request.body_exists else None
    async with session.request(
        request.method,
        request.app["base"] + request.raw_path,
        headers=headers,
        data=data,
        allow_redirects=False,
        auto_decompress=False,
    ) as upstream:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for k, v in upstream.headers.items():
            if k.lower() not in HOP:
                response.headers.add(k, v)
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


async def start(app: web.Application) -> None:
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=4)
    app["session"] = aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
    )


async def stop(app: web.Application) -> None:
    await app["session"].close()


def main() -> None:
    listen, upstream = int(sys.argv[1]), int(sys.argv[2])
    app = web.Application(client_max_size=0)
    app["base"] = f"http://127.0.0.1:{upstream}"
    app.router.add_route("*", "/{tail:.*}", proxy)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    web.run_app(app, host="127.0.0.1", port=listen, access_log=None, print=None)


if __name__ == "__main__":
    main()
