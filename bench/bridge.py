#!/usr/bin/env python3
"""What the dialect bridge costs: gateway CPU per 1,000 streamed chunks, translated vs passed through.

Starts bench/fake_backend.py once and two `gateway serve` processes in front of it, the same
config except the backend's type: `ollama` (an Ollama client's `/api/chat` stream passes through
byte for byte: NDJSON in, NDJSON out) and `openai` (the same request is translated to
`/v1/chat/completions` and the backend's SSE back to NDJSON, event by event). Both serve the same
client requests, in alternating rounds so that a busy machine hurts both alike; the figure is the
gateway process's user+system CPU time (from /proc) per 1,000 chunks relayed to the client.
Everything runs on 127.0.0.1; every loop is bounded by --rounds x --streams.

    python bench/bridge.py [--rounds 6] [--streams 200] [--chunks 100] [--conc 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import aiohttp

HERE = os.path.dirname(os.path.abspath(__file__))
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


async def wait_ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url + "/api/tags") as resp:
                    if resp.status == 200 and (await resp.json())["models"]:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} not ready after {timeout:g}s")
            await asyncio.sleep(0.1)


async def one_round(url: str, streams: int, chunks: int, conc: int, delay_ms: float) -> int:
    """Run ``streams`` /api/chat streams, ``conc`` at a time; returns the NDJSON lines received."""
    body = json.dumps({"model": "fake", "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = {"Content-Type": "application/json", "X-Fake-Chunks": str(chunks), "X-Fake-Delay-Ms": str(delay_ms)}
    left = streams
    lines = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal left, lines
        while left > 0:
            left -= 1
            async with session.post(url + "/api/chat", data=body, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                data = await resp.read()
            got = data.count(b"\n")
            assert b'"done":true' in data.replace(b" ", b""), data[-300:]
            lines += got

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as session:
        await asyncio.gather(*(worker(session) for _ in range(conc)))
    return lines


def start_gateway(
    cmd: list[str], work: str, name: str, backend_type: str, upstream: int
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = os.path.join(work, f"{name}.yaml")
    with open(config, "w") as f:
        f.write(
            f"server: {{host: 127.0.0.1, port: {port}}}\n"
            f"backends:\n  - name: {name}\n    url: http://127.0.0.1:{upstream}\n    type: {backend_type}\n"
            "logging: {level: warning}\n"
        )
    log = open(os.path.join(work, f"{name}.log"), "wb")
    proc = subprocess.Popen([*cmd, "serve", "-c", config], stdout=log, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6, help="alternating rounds per gateway")
    ap.add_argument("--streams", type=int, default=200, help="streams per round")
    ap.add_argument("--chunks", type=int, default=100, help="content chunks per stream")
    ap.add_argument("--conc", type=int, default=32, help="concurrent streams")
    ap.add_argument("--delay-ms", type=float, default=2.0, help="the backend's gap between chunks")
    ap.add_argument("--gateway-cmd", default=shutil.which("gateway") or f"{sys.executable} -m gateway")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-bridge-")
    upstream = free_port()
    backend = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "fake_backend.py"), "--port", str(upstream), "--models", "fake"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    procs = [backend]
    try:
        cmd = a.gateway_cmd.split()
        gateways = {}
        for name, kind in (("passthrough", "ollama"), ("translated", "openai")):
            proc, url = start_gateway(cmd, work, name, kind, upstream)
            procs.append(proc)
            gateways[name] = (proc, url)
        for _, url in gateways.values():
            await wait_ready(url)
            await one_round(url, 20, a.chunks, 4, a.delay_ms)  # warm-up: connections, caches
        totals = {name: [0.0, 0] for name in gateways}
        for _ in range(a.rounds):
            for name, (proc, url) in gateways.items():
                before = cpu_seconds(proc.pid)
                lines = await one_round(url, a.streams, a.chunks, a.conc, a.delay_ms)
                totals[name][0] += cpu_seconds(proc.pid) - before
                totals[name][1] += lines
        per = {name: cpu / (lines / 1000) * 1000 for name, (cpu, lines) in totals.items()}
        for name, (cpu, lines) in totals.items():
            print(f"{name:12s} {lines:8d} chunks  {cpu:7.2f} s CPU  {per[name]:6.2f} ms CPU per 1,000 chunks")
        print(f"translated / passthrough: {per['translated'] / per['passthrough']:.2f}x")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
