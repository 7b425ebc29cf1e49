#!/usr/bin/env python3
"""The front door under attack: a real `gateway serve` on 127.0.0.1, four attacks, a good client throughout.

    python bench/abuse.py              # about 2 minutes
    python bench/abuse.py --quick      # about 1 minute: smaller attacks, shorter phases

Phases, each bounded in count and time: an idle baseline (the good client alone), then
  slowloris   1,000 connections trickling a request head one header line a second (from 8
              loopback addresses, under the per-client cap: the head deadline must cut them)
  garbage     10,000 requests of random bytes, 50 connections at a time
  conn-flood  connections opened as fast as possible from one address and held (the per-client
              cap must refuse them at accept time)
  wrong-key   10,000 requests with random wrong API keys over keep-alive, 50 at a time
while a good client (valid key, non-streaming chat completions, 4 at a time, from 127.0.0.1) runs.
Per phase: the good client's success rate and p50/p99 latency, the gateway's CPU (% of one core)
and RSS (at the start, the peak, 3 s after), and what the gateway counted (connections refused,
slow clients cut) from its /metrics. Attacks run in a child process so they do not slow the good
client's event loop. Only loopback addresses are used (127.0.0.0/8); every process started is
stopped by PID. The fd limit is raised to the hard limit first (the gateway inherits it).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing as mp
import os
import random
import shutil
import socket
import sys
import tempfile
import time
from typing import Any

import aiohttp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import sysmon  # noqa: E402

GOOD_KEY = "sk-abuse-good-client-0123456789abcdef"
CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": False}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway_argv() -> list[str]:
    beside = os.path.join(os.path.dirname(sys.executable), "gateway")
    if os.path.exists(beside):
        return [beside]
    found = shutil.which("gateway")
    return [found] if found else [sys.executable, "-m", "gateway"]


def write_config(folder: str, port: int, upstream: int, headers_timeout: float) -> str:
    path = os.path.join(folder, "gateway.yaml")
    doc = {
        "server": {"host": "127.0.0.1", "port": port, "timeouts": {"headers": f"{headers_timeout}s"}},
        "backends": [{"name": "fake", "url": f"http://127.0.0.1:{upstream}", "type": "vllm", "models": ["fake"]}],
        "auth": {"api_keys": [{"name": "good", "hash": "sha256:" + hashlib.sha256(GOOD_KEY.encode()).hexdigest()}]},
        "metrics": {"enabled": True},
        "logging": {"level": "warning"},
    }
    with open(path, "w") as f:
        json.dump(doc, f)  # JSON is YAML
    return path


async def wait_ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(f"{url}/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit(f"{url} did not become ready")


async def scrape(url: str) -> dict[str, float]:
    """The gateway's own counts of what it refused and cut."""
    out: dict[str, float] = {}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/metrics") as r:
            text = await r.text()
    for line in text.splitlines():
        if line.startswith(("gateway_connections_refused_total", "gateway_client_timeouts_total",
                            "gateway_auth_failures_total", "gateway_open_connections")):  # fmt: skip
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


# ---------------------------------------------------------------- the good client


async def good_client(url: str, stop_at: float, conc: int = 4) -> dict[str, Any]:
    latencies: list[float] = []
    failures: dict[str, int] = {}
    headers = {"Authorization": f"Bearer {GOOD_KEY}"}
    connector = aiohttp.TCPConnector(limit=conc)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def worker() -> None:
            while time.monotonic() < stop_at:
                start = time.monotonic()
                try:
                    async with http.post(f"{url}/v1/chat/completions", json=CHAT, headers=headers) as r:
                        await r.read()
                        if r.status == 200:
                            latencies.append(time.monotonic() - start)
                            continue
                        reason = str(r.status)
                except (TimeoutError, aiohttp.ClientError) as exc:
                    reason = type(exc).__name__
                failures[reason] = failures.get(reason, 0) + 1
                await asyncio.sleep(0.05)

        await asyncio.gather(*(worker() for _ in range(conc)))
    latencies.sort()
    total = len(latencies) + sum(failures.values())

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else float("nan")

    return {"requests": total, "ok": len(latencies), "success": len(latencies) / total if total else 0.0,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "failures": failures}  # fmt: skip


# ---------------------------------------------------------------- the attacks (run in a child process)


async def slowloris(host: str, port: int, n: int, hold: float) -> dict[str, Any]:
    """``n`` connections from 8 loopback addresses, each sending one header line a second."""
    cut = answered_408 = failed_connect = 0
    cut_after: list[float] = []

    async def one(i: int) -> None:
        nonlocal cut, answered_408, failed_connect
        try:
            reader, writer = await asyncio.open_connection(host, port, local_addr=(f"127.0.1.{1 + i % 8}", 0))
        except OSError:
            failed_connect += 1
            return
        start = time.monotonic()
        try:
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n")
            while time.monotonic() - start < hold:
                try:
                    data = await asyncio.wait_for(reader.read(256), 1.0)
                except TimeoutError:
                    writer.write(b"X-Slow-%d: x\r\n" % random.randrange(10**6))
                    continue
                cut += 1
                cut_after.append(time.monotonic() - start)
                answered_408 += data.startswith(b"HTTP/1.1 408")
                return
        except OSError:
            cut += 1
            cut_after.append(time.monotonic() - start)
        finally:
            writer.close()

    async def paced() -> None:
        tasks = []
        for i in range(n):
            tasks.append(asyncio.create_task(one(i)))
            if i % 100 == 99:
                await asyncio.sleep(0.05)
        await asyncio.gather(*tasks)

    await paced()
    cut_after.sort()
    return {"connections": n, "cut": cut, "answered_408": answered_408, "connect_failed": failed_connect,
            "cut_after_s_median": round(cut_after[len(cut_after) // 2], 1) if cut_after else None}  # fmt: skip


async def garbage(host: str, port: int, n: int, conc: int) -> dict[str, Any]:
    """``n`` requests of random bytes, one connection each, ``conc`` at a time."""
    statuses: dict[str, int] = {}
    sem = asyncio.Semaphore(conc)
    rng = random.Random(1)

    async def one(i: int) -> None:
        async with sem:
            payload = rng.randbytes(rng.randint(1, 2048)) + b"\r\n\r\n"
            try:
                reader, writer = await asyncio.open_connection(host, port, local_addr=(f"127.0.2.{1 + i % 8}", 0))
            except OSError:
                statuses["connect_failed"] = statuses.get("connect_failed", 0) + 1
                return
            try:
                writer.write(payload)
                data = await asyncio.wait_for(reader.read(64), 15)
                key = data[9:12].decode("latin-1") if data.startswith(b"HTTP/") else "closed"
            except (TimeoutError, OSError) as exc:
                key = "reset" if isinstance(exc, OSError) else "timeout"
            finally:
                writer.close()
            statuses[key] = statuses.get(key, 0) + 1

    await asyncio.gather(*(one(i) for i in range(n)))
    return {"requests": n, "answers": dict(sorted(statuses.items()))}


async def conn_flood(host: str, port: int, n: int, hold: float) -> dict[str, Any]:
    """Open up to ``n`` connections from one address as fast as possible, hold them, close them."""
    held: list[asyncio.StreamWriter] = []
    refused = connect_failed = 0
    deadline = time.monotonic() + hold

    async def one() -> None:
        nonlocal refused, connect_failed
        try:
            reader, writer = await asyncio.open_connection(host, port, local_addr=("127.0.3.1", 0))
        except OSError:
            connect_failed += 1
            return
        held.append(writer)
        try:
            data = await asyncio.wait_for(reader.read(64), max(0.1, deadline - time.monotonic()))
            if data.startswith((b"HTTP/1.1 429", b"HTTP/1.1 503")):
                refused += 1
        except (TimeoutError, OSError):
            pass

    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(one()))
        if i % 200 == 199:
            await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    for writer in held:
        writer.close()
    return {"attempts": n, "refused_429_503": refused, "connect_failed": connect_failed}


async def wrong_keys(url: str, n: int, conc: int) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    sem = asyncio.Semaphore(conc)
    connector = aiohttp.TCPConnector(limit=conc, local_addr=("127.0.4.1", 0))
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:

        async def one() -> None:
            async with sem:
                key = "sk-" + os.urandom(16).hex()
                try:
                    async with http.post(f"{url}/v1/chat/completions", json=CHAT,
                                         headers={"Authorization": f"Bearer {key}"}) as r:  # fmt: skip
                        await r.read()
                        k = str(r.status)
                except (TimeoutError, aiohttp.ClientError) as exc:
                    k = type(exc).__name__
                statuses[k] = statuses.get(k, 0) + 1

        await asyncio.gather(*(one() for _ in range(n)))
    return {"requests": n, "answers": statuses}


ATTACKS = ("slowloris", "garbage", "conn-flood", "wrong-key")


def run_attack(name: str, url: str, args: argparse.Namespace, out: Any) -> None:
    host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
    if name == "slowloris":
        coro = slowloris(host, port, args.slowloris, args.headers_timeout + 4)
    elif name == "garbage":
        coro = garbage(host, port, args.garbage, 50)
    elif name == "conn-flood":
        coro = conn_flood(host, port, args.flood, min(8.0, args.headers_timeout - 1))
    else:
        coro = wrong_keys(url, args.wrong_keys, 50)
    out.put(asyncio.run(coro))


# ---------------------------------------------------------------- driver


async def phase(name: str, url: str, gw: sysmon.Proc, args: argparse.Namespace) -> dict[str, Any]:
    pids = gw.pids()
    rss_start = sysmon.rss_mb(pids)
    cpu0, t0 = sysmon.cpu_s(pids), time.monotonic()
    counts0 = await scrape(url)
    sampler = sysmon.Sampler({"gw": gw.pid})
    sampler.start()
    sampler.reset()
    child = None
    result: dict[str, Any] = {}
    if name == "baseline":
        good = await good_client(url, time.monotonic() + args.baseline)
    else:
        queue: Any = mp.get_context("fork").Queue()
        child = mp.get_context("fork").Process(target=run_attack, args=(name, url, args, queue), daemon=True)
        child.start()
        stop_at = time.monotonic() + args.phase_limit

        async def attack_done() -> None:
            while child.is_alive() and time.monotonic() < stop_at:
                await asyncio.sleep(0.2)

        good_task = asyncio.ensure_future(good_client(url, stop_at))
        await attack_done()
        if child.is_alive():  # bounded: never wait for an attack past the phase limit
            child.terminate()
            result = {"note": "attack stopped at the phase limit"}
        else:
            result = queue.get(timeout=5)
        child.join(5)
        good_task.cancel()  # the good client measured "during": stop it with the attack
        try:
            good = await good_task
        except asyncio.CancelledError:
            good = await good_client(url, time.monotonic() + 2)
    elapsed = time.monotonic() - t0
    cpu = (sysmon.cpu_s(pids) - cpu0) / elapsed * 100
    peak = sampler.take()[0].get("gw", 0.0)
    sampler.stop()
    await asyncio.sleep(3)
    rss_after = sysmon.rss_mb(gw.pids())
    counts1 = await scrape(url)
    delta = {k: v - counts0.get(k, 0.0) for k, v in counts1.items() if v - counts0.get(k, 0.0) and "open" not in k}
    return {"phase": name, "seconds": round(elapsed, 1), "good": good, "attack": result, "cpu_pct": round(cpu),
            "rss_start_mb": round(rss_start, 1), "rss_peak_mb": round(peak, 1), "rss_after_mb": round(rss_after, 1),
            "gateway_counted": delta, "open_after": counts1.get("gateway_open_connections")}  # fmt: skip


def fmt_table(rows: list[dict[str, Any]], baseline_rss: float) -> str:
    base = rows[0]["good"]
    lines = [
        "| phase | good ok | p50 ms | p99 ms (x idle) | gateway CPU | RSS start / peak / after (MB) "
        "| gateway counted |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        g = r["good"]
        ratio = g["p99_ms"] / base["p99_ms"] if base["p99_ms"] else float("nan")
        counted = ", ".join(f"{k.replace('gateway_', '')}={int(v)}" for k, v in sorted(r["gateway_counted"].items()))
        lines.append(
            f"| {r['phase']} | {g['ok']}/{g['requests']} ({g['success']:.1%}) | {g['p50_ms']:.1f} | "
            f"{g['p99_ms']:.1f} ({ratio:.1f}x) | {r['cpu_pct']}% | {r['rss_start_mb']} / {r['rss_peak_mb']} / "
            f"{r['rss_after_mb']} | {counted or '-'} |"
        )
    last = rows[-1]["rss_after_mb"]
    lines.append("")
    lines.append(f"RSS after all attacks: {last} MB vs {baseline_rss} MB idle ({(last / baseline_rss - 1):+.1%}).")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    soft = sysmon.raise_fd_limit()[0]
    print(f"fd limit (soft, inherited by the gateway): {soft}", file=sys.stderr)
    folder = tempfile.mkdtemp(prefix="gateway-abuse-")
    upstream, port = free_port(), free_port()
    fake = sysmon.Proc("fake", [sys.executable, os.path.join(HERE, "fake_backend.py"), "--port", str(upstream),
                                "--chunks", "2", "--delay-ms", "0"], os.path.join(folder, "fake.log"))  # fmt: skip
    config = write_config(folder, port, upstream, args.headers_timeout)
    gw = sysmon.Proc("gateway", gateway_argv() + ["serve", "-c", config], os.path.join(folder, "gateway.log"))
    url = f"http://127.0.0.1:{port}"
    rows: list[dict[str, Any]] = []
    try:
        await wait_ready(url)
        await good_client(url, time.monotonic() + 2)  # warm-up
        idle_rss = sysmon.rss_mb(gw.pids())
        for name in ["baseline", *args.attacks.split(",")]:  # an attack may be named twice (leak check)
            print(f"phase {name} ...", file=sys.stderr, flush=True)
            rows.append(await phase(name, url, gw, args))
            if not gw.alive():
                print("the gateway died:\n" + gw.tail(), file=sys.stderr)
                return 1
        table = fmt_table(rows, idle_rss)
        print(table)
        print()
        for r in rows[1:]:
            print(f"- {r['phase']}: {json.dumps(r['attack'])}; good-client failures {r['good']['failures'] or 'none'}")
        os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
        with open(os.path.join(HERE, "results", "abuse.json"), "w") as f:
            json.dump(rows, f, indent=1)
        return 0
    finally:
        gw.stop()
        fake.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    ap.add_argument("--quick", action="store_true", help="smaller attacks and shorter phases (about 1 minute)")
    ap.add_argument(
        "--attacks",
        default="slowloris,garbage,conn-flood,wrong-key",
        help="attacks in order, from slowloris, garbage, conn-flood, wrong-key (repeats allowed)",
    )
    ap.add_argument("--baseline", type=float, default=5.0, help="seconds of the idle baseline")
    ap.add_argument("--headers-timeout", type=float, default=5.0, help="the gateway's server.timeouts.headers, s")
    ap.add_argument("--slowloris", type=int, default=1000)
    ap.add_argument("--garbage", type=int, default=10_000)
    ap.add_argument("--flood", type=int, default=3000, help="connection attempts from one address")
    ap.add_argument("--wrong-keys", type=int, default=10_000)
    ap.add_argument("--phase-limit", type=float, default=60.0, help="hard limit per attack phase, s")
    args = ap.parse_args()
    unknown = set(args.attacks.split(",")) - set(ATTACKS)
    if unknown:
        ap.error(f"unknown attack(s): {', '.join(sorted(unknown))}")
    if args.quick:
        args.slowloris, args.garbage, args.flood, args.wrong_keys = 300, 2000, 1000, 2000
        args.baseline, args.headers_timeout = 3.0, 3.0
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
