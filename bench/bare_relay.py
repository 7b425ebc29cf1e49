#!/usr/bin/env python3
"""The floor for an aiohttp gateway: a bare relay with nothing but the relaying.

Every request goes to --upstream with the same method, path, query, headers (less hop-by-hop)
and body, over one shared ClientSession; the answer is copied back as it arrives
(`iter_any()` into a StreamResponse), so SSE and NDJSON stay live. No auth, no routing,
no parsing, no logging. A gateway doing real work should cost a small multiple of this.
"""
from __future__ import annotations

import argparse
import asyncio
import resource

import aiohttp
from aiohttp import web

HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                 "transfer-encoding", "upgrade", "host", "content-length"})
SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def relay(request: web.Request) -> web.StreamResponse:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
    body = await request.read()
    url = request.app[UPSTREAM] + request.rel_url.raw_path_qs
    async with request.app[SESSION].request(request.method, url, headers=headers, data=body or None) as up:
        out = web.StreamResponse(status=up.status, reason=up.reason,
                                 headers={k: v for k, v in up.headers.items() if k.lower() not in HOP})
        if up.content_length is not None:
            out.content_length = up.content_length
        try:
            await out.prepare(request)
            async for chunk in up.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
        except ConnectionResetError:  # the client left; leaving the block closes the upstream
            pass
        return out


async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
    conn = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout, auto_decompress=False) as s:
        app[SESSION] = s
        yield


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=28101)
    ap.add_argument("--upstream", default="http://127.0.0.1:28100")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[UPSTREAM] = a.upstream.rstrip("/")
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", relay)
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop
        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=a.port, access_log=None, print=None, backlog=4096, loop=loop)


if __name__ == "__main__":
    main()
