"""What bench/bridge.py and bench/bridge_anthropic.py share: the processes, the CPU reading, the rounds.

Each script starts bench/fake_backend.py and `gateway serve` process(es) here, runs its streams
with ``run_streams`` and measures them with ``alternate``: every mode once per round, in turn, so
that a busy machine hurts all alike; the figure is the gateway's user+system CPU time (from /proc)
per 1,000 chunks relayed. Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager

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


def arguments(doc: str, rounds_help: str) -> argparse.Namespace:
    """The options both scripts take; ``doc`` is the script's docstring (its first line the description)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6, help=rounds_help)
    ap.add_argument("--streams", type=int, default=200, help="streams per round")
    ap.add_argument("--chunks", type=int, default=100, help="content chunks per stream")
    ap.add_argument("--conc", type=int, default=32, help="concurrent streams")
    ap.add_argument("--delay-ms", type=float, default=2.0, help="the backend's gap between chunks")
    ap.add_argument("--gateway-cmd", default=shutil.which("gateway") or f"{sys.executable} -m gateway")
    return ap.parse_args()


@contextmanager
def processes(prefix: str) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """A scratch folder and a list for the processes started in it: all ended, and the folder removed, on exit."""
    work = tempfile.mkdtemp(prefix=prefix)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield work, procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


def start_backend(port: int) -> subprocess.Popen[bytes]:
    """bench/fake_backend.py (OpenAI and Ollama endpoints) serving the model ``fake``."""
    return subprocess.Popen(
        [sys.executable, os.path.join(HERE, "fake_backend.py"), "--port", str(port), "--models", "fake"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def start_gateway(
    cmd: list[str], work: str, name: str, backend_type: str, upstream: int
) -> tuple[subprocess.Popen[bytes], str]:
    """`gateway serve` with one backend (``name``, of type ``backend_type``) at ``upstream``; its URL."""
    port = free_port()
    config = os.path.join(work, f"{name}.yaml")
    with open(config, "w") as f:
        f.write(
            f"server: {{host: 127.0.0.1, port: {port}}}\n"
            f"backends:\n  - name: {name}\n    url: http://127.0.0.1:{upstream}\n    type: {backend_type}\n"
            "logging: {level: warning}\n"
        )
    with open(os.path.join(work, f"{name}.log"), "wb") as log:
        proc = subprocess.Popen([*cmd, "serve", "-c", config], stdout=log, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


async def wait_ready(url: str, probe: str, listing: str, timeout: float = 30.0) -> None:
    """Until GET ``url + probe`` answers 200 with a non-empty ``listing`` (the backend's models are known)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url + probe) as resp:
                    if resp.status == 200 and (await resp.json())[listing]:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} not ready after {timeout:g}s")
            await asyncio.sleep(0.1)


async def run_streams(
    url: str, body: bytes, streams: int, chunks: int, conc: int, delay_ms: float, read: Callable[[bytes], int]
) -> int:
    """POST ``body`` to ``url`` ``streams`` times, ``conc`` at a time, each asking the fake backend for
    ``chunks`` chunks ``delay_ms`` apart; ``read`` checks each whole answer and counts its chunks.
    Returns the sum of the counts."""
    headers = {"Content-Type": "application/json", "X-Fake-Chunks": str(chunks), "X-Fake-Delay-Ms": str(delay_ms)}
    left = streams
    counted = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal left, counted
        while left > 0:
            left -= 1
            async with session.post(url, data=body, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                data = await resp.read()
            counted += read(data)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as session:
        await asyncio.gather(*(worker(session) for _ in range(conc)))
    return counted


async def alternate(rounds: int, modes: Mapping[str, tuple[int, Callable[[], Awaitable[int]]]]) -> dict[str, float]:
    """Run each mode's round (``modes``: name -> (gateway pid, a round returning its chunk count)) once
    per round, in turn; print each mode's chunks and CPU time, and the translated / passthrough ratio.
    Returns the ms of CPU per 1,000 chunks, by mode."""
    cpu = dict.fromkeys(modes, 0.0)
    chunks = dict.fromkeys(modes, 0)
    for _ in range(rounds):
        for name, (pid, one_round) in modes.items():
            before = cpu_seconds(pid)
            chunks[name] += await one_round()
            cpu[name] += cpu_seconds(pid) - before
    per = {name: cpu[name] / (chunks[name] / 1000) * 1000 for name in modes}
    for name in modes:
        print(f"{name:12s} {chunks[name]:8d} chunks  {cpu[name]:7.2f} s CPU  {per[name]:6.2f} ms CPU per 1,000 chunks")
    print(f"translated / passthrough: {per['translated'] / per['passthrough']:.2f}x")
    return per
