#!/usr/bin/env python3
"""Fairness under load: a light client's latency while a heavy client floods a saturated backend.

One run measures two gateways against the same fake backend, one after the other:

- ``fifo``: the gateway as it was before fair queueing (``--baseline``, default ``fcb8c06``),
  extracted with ``git archive`` into a temporary folder and run from there (``python -m gateway``
  with PYTHONPATH), so its FIFO semaphore is the real one, not a simulation;
- ``fair``: this checkout's gateway.

The fake backend serves at most ``--capacity`` requests at a time, each in ``--service-ms``, and
queues the rest FIFO, like Ollama with ``OLLAMA_NUM_PARALLEL`` or vLLM with ``max_num_seqs``; the
gateway's ``max_concurrency`` equals that capacity. The heavy client keeps ``--heavy`` requests in
flight; the light client sends one request at a time (an interactive user) and its latencies are
reported (p50, p99), with both clients' throughput. Everything runs on 127.0.0.1, every load loop
stops at its deadline, and every process started here is stopped by its PID.

    python bench/fairness.py                       # about 45 s
    python bench/fairness.py --duration 5 --warmup 1   # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
HEAVY_KEY, LIGHT_KEY = "sk-bench-heavy-0123456789", "sk-bench-light-0123456789"
MODEL = "fake"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FixedCapacityBackend:
    """An OpenAI-style server with ``capacity`` parallel slots of ``service`` seconds, FIFO beyond."""

    def __init__(self, capacity: int, service: float) -> None:
        self.capacity = capacity
        self.service = service
        self.slots = asyncio.Semaphore(capacity)
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        self.runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def chat(self, request: web.Request) -> web.Response:
        await request.read()
        async with self.slots:
            await asyncio.sleep(self.service)
        return web.json_response(
            {"id": "x", "object": "chat.completion", "created": 0, "model": MODEL,
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        )  # fmt: skip


def gateway_config(backend_url: str, capacity: int, port: int) -> dict[str, Any]:
    def sha(key: str) -> str:
        return "sha256:" + hashlib.sha256(key.encode()).hexdigest()

    return {
        "server": {"host": "127.0.0.1", "port": port},
        "backends": [
            {"name": "gpu", "url": backend_url, "type": "openai", "max_concurrency": capacity,
             "health_check": {"interval": "60s", "timeout": "2s"}}
        ],
        "routing": {"queue_size": 10000, "queue_timeout": "120s", "retries": 0},
        "auth": {"api_keys": [{"name": "heavy", "hash": sha(HEAVY_KEY)}, {"name": "light", "hash": sha(LIGHT_KEY)}]},
        "logging": {"level": "warning"},
    }  # fmt: skip


@dataclass
class Gateway:
    label: str
    pythonpath: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    async def start(self, config: dict[str, Any], workdir: Path) -> None:
        path = workdir / f"{self.label}.json"  # YAML is a superset of JSON
        path.write_text(json.dumps(config))
        self.log = workdir / f"{self.label}.log"
        env = {**os.environ, "PYTHONPATH": str(self.pythonpath)}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "-c", str(path)],
                cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.port = config["server"]["port"]
        deadline = time.monotonic() + 20
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.label} gateway exited: {self.log.read_text()[-2000:]}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{self.port}/readyz") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.label} gateway not ready within 20 s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


@dataclass
class Result:
    label: str
    light: list[float] = field(default_factory=list)  # seconds per light request sent in the window
    heavy_done: int = 0  # heavy requests completed in the window
    errors: int = 0
    window: float = 0.0

    def summary(self) -> dict[str, Any]:
        light = sorted(self.light)

        def pct(q: float) -> float | None:
            return light[min(len(light) - 1, int(q * len(light)))] if light else None

        return {
            "gateway": self.label,
            "light_requests": len(light),
            "light_p50_s": pct(0.50),
            "light_p99_s": pct(0.99),
            "light_mean_s": statistics.fmean(light) if light else None,
            "heavy_per_s": self.heavy_done / self.window if self.window else 0.0,
            "light_per_s": len(light) / self.window if self.window else 0.0,  # sent in the window
            "errors": self.errors,
        }


async def load(gw: Gateway, heavy: int, warmup: float, duration: float) -> Result:
    url = f"http://127.0.0.1:{gw.port}/v1/chat/completions"
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
    result = Result(gw.label, window=duration)
    start = time.monotonic()
    window_start, end = start + warmup, start + warmup + duration

    async def one(session: aiohttp.ClientSession, key: str) -> float:
        sent = time.monotonic()
        async with session.post(
            url, data=body, headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        ) as resp:
            await resp.read()
            if resp.status != 200:
                result.errors += 1
        return sent

    async def heavy_worker(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < end:
            await one(session, HEAVY_KEY)
            if window_start <= time.monotonic() <= end:  # completions inside the window
                result.heavy_done += 1

    async def light_worker(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < end:
            sent = await one(session, LIGHT_KEY)
            if window_start <= sent:  # every request sent in the window, however long it took
                result.light.append(time.monotonic() - sent)

    connector = aiohttp.TCPConnector(limit=heavy + 8)
    timeout = aiohttp.ClientTimeout(total=warmup + duration + 60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async with asyncio.timeout(warmup + duration + 90):  # a hard stop, whatever happens
            await asyncio.gather(light_worker(session), *(heavy_worker(session) for _ in range(heavy)))
    return result


def baseline_tree(rev: str, into: Path) -> Path:
    """This repository's ``gateway/`` package at ``rev``, extracted into ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "gateway"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capacity", type=int, default=2, help="backend parallelism = gateway max_concurrency")
    parser.add_argument("--service-ms", type=float, default=100.0, help="service time per request")
    parser.add_argument("--heavy", type=int, default=32, help="requests the heavy client keeps in flight")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per gateway")
    parser.add_argument("--baseline", default="fcb8c06", help="git revision of the FIFO gateway")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    backend = FixedCapacityBackend(args.capacity, args.service_ms / 1000)
    await backend.start()
    workdir = Path(tempfile.mkdtemp(prefix="fairness-"))
    results = []
    try:
        (workdir / "baseline").mkdir()
        gateways = [
            Gateway(f"fifo ({args.baseline})", baseline_tree(args.baseline, workdir / "baseline")),
            Gateway("fair (this checkout)", ROOT),
        ]
        for gw in gateways:
            port = free_port()
            await gw.start(gateway_config(backend.url, args.capacity, port), workdir)
            try:
                results.append((await load(gw, args.heavy, args.warmup, args.duration)).summary())
            finally:
                gw.stop()
    finally:
        await backend.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    capacity_per_s = args.capacity / (args.service_ms / 1000)
    print(
        f"backend: {args.capacity} parallel x {args.service_ms:g} ms = {capacity_per_s:g} req/s; "
        f"heavy client keeps {args.heavy} in flight; light client sends one at a time; "
        f"{args.duration:g} s measured after {args.warmup:g} s warm-up, per gateway"
    )
    print()
    print("| gateway | light p50 | light p99 | light req/s | heavy req/s | errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        p50, p99 = r["light_p50_s"], r["light_p99_s"]
        print(
            f"| {r['gateway']} | {p50 * 1000 if p50 is not None else float('nan'):.0f} ms "
            f"| {p99 * 1000 if p99 is not None else float('nan'):.0f} ms "
            f"| {r['light_per_s']:.2f} | {r['heavy_per_s']:.2f} | {r['errors']} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
