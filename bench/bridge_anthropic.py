#!/usr/bin/env python3
"""What the Anthropic bridge costs: gateway CPU per 1,000 streamed chunks, translated vs passed through.

Starts bench/fake_backend.py (an OpenAI-only server) and one `gateway serve` in front of it, then
runs the same streamed generation two ways in alternating rounds, so that a busy machine hurts both
alike: `/v1/chat/completions` (the backend's SSE relayed byte for byte) and `/v1/messages` (the
request translated to `/v1/chat/completions`, each backend chunk rewritten as a Messages event).
The figure is the gateway process's user+system CPU time (from /proc) per 1,000 backend content
chunks. Every answer is checked complete. Everything runs on 127.0.0.1; every loop is bounded by
--rounds x --streams.

    python bench/bridge_anthropic.py [--rounds 6] [--streams 200] [--chunks 100] [--conc 32]
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
MESSAGES = [{"role": "user", "content": "hi"}]
MODES = {
    "passthrough": ("/v1/chat/completions", {"model": "fake", "stream": True, "messages": MESSAGES}),
    "translated": ("/v1/messages", {"model": "fake", "stream": True, "max_tokens": 4096, "messages": MESSAGES}),
}


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
                async with session.get(url + "/v1/models") as resp:
                    if resp.status == 200 and (await resp.json())["data"]:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} not ready after {timeout:g}s")
            await asyncio.sleep(0.1)


def check(mode: str, data: bytes, chunks: int) -> None:
    if mode == "passthrough":
        assert data.endswith(b"data: [DONE]\n\n"), data[-300:]
    else:
        assert data.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n'), data[-300:]
        assert data.count(b'"text_delta"') == chunks, data[:300]


async def one_round(url: str, mode: str, streams: int, chunks: int, conc: int, delay_ms: float) -> None:
    """Run ``streams`` streams of ``chunks`` content chunks, ``conc`` at a time, each checked complete."""
    path, payload = MODES[mode]
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "X-Fake-Chunks": str(chunks), "X-Fake-Delay-Ms": str(delay_ms)}
    left = streams

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            async with session.post(url + path, data=body, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                check(mode, await resp.read(), chunks)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as session:
        await asyncio.gather(*(worker(session) for _ in range(conc)))


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6, help="alternating rounds per mode")
    ap.add_argument("--streams", type=int, default=200, help="streams per round")
    ap.add_argument("--chunks", type=int, default=100, help="content chunks per stream")
    ap.add_argument("--conc", type=int, default=32, help="concurrent streams")
    ap.add_argument("--delay-ms", type=float, default=2.0, help="the backend's gap between chunks")
    ap.add_argument("--gateway-cmd", default=shutil.which("gateway") or f"{sys.executable} -m gateway")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-bridge-anthropic-")
    upstream, port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(HERE, "fake_backend.py"), "--port", str(upstream), "--models", "fake"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
        config = os.path.join(work, "gateway.yaml")
        with open(config, "w") as f:
            f.write(
                f"server: {{host: 127.0.0.1, port: {port}}}\n"
                f"backends:\n  - {{name: gpu, url: 'http://127.0.0.1:{upstream}', type: openai}}\n"
                "logging: {level: warning}\n"
            )
        with open(os.path.join(work, "gateway.log"), "wb") as log:
            gateway = subprocess.Popen([*a.gateway_cmd.split(), "serve", "-c", config], stdout=log, stderr=log)
        procs.append(gateway)
        url = f"http://127.0.0.1:{port}"
        await wait_ready(url)
        for mode in MODES:  # warm-up: connections, caches
            await one_round(url, mode, 20, a.chunks, 4, a.delay_ms)
        cpu = dict.fromkeys(MODES, 0.0)
        for _ in range(a.rounds):
            for mode in MODES:
                before = cpu_seconds(gateway.pid)
                await one_round(url, mode, a.streams, a.chunks, a.conc, a.delay_ms)
                cpu[mode] += cpu_seconds(gateway.pid) - before
        chunks = a.rounds * a.streams * a.chunks
        per = {mode: seconds / (chunks / 1000) * 1000 for mode, seconds in cpu.items()}
        for mode, seconds in cpu.items():
            print(f"{mode:12s} {chunks:8d} chunks  {seconds:7.2f} s CPU  {per[mode]:6.2f} ms CPU per 1,000 chunks")
        print(f"translated / passthrough: {per['translated'] / per['passthrough']:.2f}x")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
