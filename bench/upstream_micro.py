#!/usr/bin/env python3
"""Micro-benchmark: CPU per upstream request, aiohttp ClientSession vs gateway.upstream.UpstreamPool.

Both clients send the same POST (a realistic forwarded header set, a ~200-byte JSON body) to a raw
asyncio server that answers a fixed ~500-byte JSON with Content-Length over keep-alive, and
read the whole body. The aiohttp session is configured as the gateway's (limit=0,
auto_decompress=False, DummyCookieJar, per-request ClientTimeout with sock_connect).

Two placements of the server, both reported by default:

* ``inproc``: the server runs on the same event loop (as the brief asks); process CPU then
  includes the server's share, identical for both clients, so the ratio understates the gap.
* ``subproc``: the server runs in a forked child process; the parent's process CPU is the
  client's alone.

Usage: python bench/upstream_micro.py [-n 20000] [--conc 1,64] [--repeat 3] [--mode inproc,subproc]
       [--no-uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gateway.upstream import UpstreamPool  # noqa: E402

_payload = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "llama3.2:3b",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Paris is the capital of France. " * 6},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52},
}
BODY_OUT = json.dumps(_payload).encode()[:500].ljust(500)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(BODY_OUT), BODY_OUT)
)
BODY_IN = json.dumps(
    {
        "model": "llama3.2:3b",
        "stream": False,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    }
).encode()
HEADERS = CIMultiDict(
    [
        ("User-Agent", "OpenAI/Python 1.40.0"),
        ("Accept", "application/json"),
        ("Content-Type", "application/json"),
        ("X-Stainless-Lang", "python"),
        ("X-Forwarded-For", "127.0.0.1"),
        ("X-Forwarded-Proto", "http"),
        ("Via", "1.1 local-llm-gateway"),
        ("X-Request-Id", "0123456789abcdef"),
        ("Accept-Encoding", "identity"),
    ]
)
PATH = "/v1/chat/completions"
_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)


class Server(asyncio.Protocol):
    """Answers every request (head + Content-Length body) with RESPONSE; keep-alive, pipelining-safe."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            match = _LENGTH.search(buf, 0, end + 2)
            total = end + 4 + (int(match.group(1)) if match else 0)
            if len(buf) < total:
                break
            buf = buf[total:]
            self.transport.write(RESPONSE)
        self.buf = buf


def new_loop(use_uvloop: bool) -> asyncio.AbstractEventLoop:
    if use_uvloop:
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def serve_forever(port_out: Any, use_uvloop: bool) -> None:
    loop = new_loop(use_uvloop)
    server = loop.run_until_complete(loop.create_server(Server, "127.0.0.1", 0, backlog=1024))
    port_out.put(server.sockets[0].getsockname()[1])
    loop.run_forever()


Request = Callable[[], Awaitable[bytes]]


async def drive(request: Request, n: int, conc: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) for n requests, conc at a time."""
    per_worker = [n // conc + (1 if i < n % conc else 0) for i in range(conc)]

    async def worker(count: int) -> None:
        for _ in range(count):
            body = await request()
            if len(body) != len(BODY_OUT):
                raise AssertionError(f"short body: {len(body)}")

    wall0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(c) for c in per_worker))
    return time.process_time() - cpu0, time.perf_counter() - wall0


async def bench(port: int, n: int, concs: list[int], repeat: int) -> dict[tuple[str, int], tuple[float, float]]:
    url = f"http://127.0.0.1:{port}{PATH}"
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=60, ttl_dns_cache=300)
    session = aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None),
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    per_request_timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
    pool = UpstreamPool("127.0.0.1", port)

    async def with_aiohttp() -> bytes:
        resp = await session.request(
            "POST", url, data=BODY_IN, headers=HEADERS, timeout=per_request_timeout, allow_redirects=False
        )
        try:
            return await resp.read()
        finally:
            resp.close()

    async def with_pool() -> bytes:
        resp = await pool.request("POST", PATH, HEADERS, BODY_IN, 5.0)
        try:
            return await resp.read()
        finally:
            resp.close()

    clients: dict[str, Request] = {"aiohttp": with_aiohttp, "upstream": with_pool}
    results: dict[tuple[str, int], tuple[float, float]] = {}
    try:
        for conc in concs:
            for request in clients.values():
                await drive(request, max(500, conc * 10), conc)  # warm up: connections, caches
            for _ in range(repeat):  # interleaved, best of `repeat`
                for name, request in clients.items():
                    cpu, wall = await drive(request, n, conc)
                    best = results.get((name, conc))
                    if best is None or cpu < best[0]:
                        results[(name, conc)] = (cpu, wall)
    finally:
        await session.close()
        pool.close()
    return results


async def inproc(n: int, concs: list[int], repeat: int) -> dict[tuple[str, int], tuple[float, float]]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Server, "127.0.0.1", 0, backlog=1024)
    try:
        return await bench(server.sockets[0].getsockname()[1], n, concs, repeat)
    finally:
        server.close()


def report(mode: str, n: int, results: dict[tuple[str, int], tuple[float, float]], concs: list[int]) -> None:
    print(f"\n{mode}: {n} requests per run, best of the runs, µs of process CPU per request")
    cols = (
        ("concurrency", 12),
        ("aiohttp", 10),
        ("upstream", 10),
        ("ratio", 8),
        ("aiohttp req/s", 14),
        ("upstream req/s", 15),
    )
    print(" ".join(f"{name:>{width}}" for name, width in cols))
    for conc in concs:
        a_cpu, a_wall = results[("aiohttp", conc)]
        u_cpu, u_wall = results[("upstream", conc)]
        print(
            f"{conc:>12} {a_cpu / n * 1e6:>10.1f} {u_cpu / n * 1e6:>10.1f} {u_cpu / a_cpu:>8.2f}"
            f" {n / a_wall:>14.0f} {n / u_wall:>15.0f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20_000)
    ap.add_argument("--conc", default="1,64")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--mode", default="inproc,subproc")
    ap.add_argument("--no-uvloop", action="store_true")
    a = ap.parse_args()
    concs = [int(c) for c in a.conc.split(",")]
    use_uvloop = not a.no_uvloop
    print(
        f"python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}, "
        f"loop: {'uvloop' if use_uvloop else 'asyncio'}, pid {os.getpid()}"
    )
    print(f"request body {len(BODY_IN)} B, {len(HEADERS)} headers; response body {len(BODY_OUT)} B")
    for mode in a.mode.split(","):
        if mode == "inproc":
            loop = new_loop(use_uvloop)
            try:
                results = loop.run_until_complete(inproc(a.n, concs, a.repeat))
            finally:
                loop.close()
        elif mode == "subproc":
            ctx = multiprocessing.get_context("fork")
            port_out = ctx.Queue()
            child = ctx.Process(target=serve_forever, args=(port_out, use_uvloop), daemon=True)
            child.start()
            try:
                port = port_out.get(timeout=10)
                loop = new_loop(use_uvloop)
                try:
                    results = loop.run_until_complete(bench(port, a.n, concs, a.repeat))
                finally:
                    loop.close()
            finally:
                child.terminate()
                child.join(5)
        else:
            raise SystemExit(f"unknown mode {mode!r}")
        report(mode, a.n, results, concs)


if __name__ == "__main__":
    main()
