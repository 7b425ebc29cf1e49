#!/usr/bin/env python3
"""Shared limits under load, in one run: what Redis-backed limits cost, and how far they overshoot.

    python bench/limits_shared.py                 # about 1-2 minutes
    python bench/limits_shared.py --rounds 5 --duration 5

1. Throughput: the same gateway config three ways (limits off; limits on, SQLite leases, the
   default without Redis; limits on through Redis), each in its own `gateway serve` process, taking
   turns under the same non-streaming load (wrk, else bench/loadgen.py) for --rounds rounds. The
   limits are high enough never to refuse (this measures their cost, not their effect). Reported:
   median requests/s of each and the ratios to limits off (goal: Redis / off >= 0.90).
2. Overshoot: two gateways sharing one Redis, `requests_per_minute: 600` for one key, then a burst
   of 2 x --burst requests sent at once (half to each). Reported: how many got 200 against the 600.
3. The limits engine per request in this process, no HTTP (admit, then finish with 26 tokens), for
   100 clients at 600 requests a minute, over each store: memory, SQLite, Redis. Machine noise
   hurts this least, so it prices the stores most exactly.

Only 127.0.0.1; redis-server runs on a free port without persistence; every process started here
is stopped by PID; every load has a duration and a timeout. Needs redis-server (Debian package).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import targets
from sysmon import Proc, cpu_s

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def config_text(port: int, upstream: int, key: str, limits: dict[str, Any] | None, name: str = "bench") -> str:
    doc: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port},
        "backends": [{"name": "vllm-box", "url": f"http://127.0.0.1:{upstream}", "type": "vllm", "models": ["fake"]}],
        "auth": {"api_keys": [{"name": name, "hash": "sha256:" + hashlib.sha256(key.encode()).hexdigest()}]},
        "logging": {"level": "warning"},
    }
    if limits is not None:
        doc["limits"] = limits
    return json.dumps(doc)  # JSON is YAML


def start_gateway(
    argv: list[str],
    env: dict[str, str],
    run_dir: str,
    tag: str,
    port: int,
    upstream: int,
    key: str,
    limits: dict[str, Any] | None,
    name: str = "bench",
) -> Proc:
    path = os.path.join(run_dir, f"{tag}.yaml")
    with open(path, "w") as f:
        f.write(config_text(port, upstream, key, limits, name))
    proc = Proc(tag, argv + ["serve", "-c", path], os.path.join(run_dir, f"{tag}.log"), env=env, cwd=run_dir)
    t = targets.Target(tag, port, proc=proc, key=key)
    why = targets.wait_ready(t, 30)
    if why:
        proc.stop()
        sys.exit(f"{tag} did not start: {why}")
    return proc


def ns_load(port: int, key: str, conc: int, duration: float) -> tuple[float, int]:
    """(requests/s, requests) of a non-streaming load (wrk when installed, else bench/loadgen.py)."""
    wrk = shutil.which("wrk")
    if wrk:
        argv = [
            wrk,
            "-t1",
            f"-c{conc}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "10s",
            "-s",
            os.path.join(HERE, "post.lua"),
            f"http://127.0.0.1:{port}/v1/chat/completions",
        ]
        env = dict(os.environ, BENCH_KEY=key, BENCH_TOKENS="16")
        out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=duration + 30).stdout
        line = next(x for x in out.splitlines() if x.startswith("BENCHJSON "))
        d = json.loads(line[len("BENCHJSON ") :])
        errors = sum(d["errors"].values())
        if errors:
            log(f"  warning: {errors} errors ({d['errors']})")
        return float(d["requests"]) / (d["duration_us"] / 1e6), int(d["requests"])
    argv = [
        sys.executable,
        os.path.join(HERE, "loadgen.py"),
        "ns",
        "--port",
        str(port),
        "--auth",
        key,
        "-c",
        str(conc),
        "--duration",
        str(duration),
        "--chunks",
        "16",
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 40).stdout
    d = json.loads(out.strip().splitlines()[-1])
    return float(d["rps"]), int(d["requests"])


async def burst(ports: list[int], key: str, per_gateway: int) -> dict[str, int]:
    """per_gateway requests to each port, all sent at once; counts of each status."""
    import aiohttp

    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": False, "fake_chunks": 2}
    headers = {"Authorization": f"Bearer {key}"}
    counts: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:

        async def one(port: int) -> None:
            try:
                async with http.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions", json=body, headers=headers
                ) as resp:
                    await resp.read()
                    status = str(resp.status)
            except (TimeoutError, aiohttp.ClientError) as exc:
                status = type(exc).__name__
            counts[status] = counts.get(status, 0) + 1

        await asyncio.gather(*(one(p) for p in ports for _ in range(per_gateway)))
    return counts


async def engine_cost(store_name: str, redis_url: str, run_dir: str, n: int) -> float:
    """Microseconds per request of Limiter.admit (+ settle) + finish over one store, minus an empty loop."""
    sys.path.insert(0, os.path.dirname(HERE))
    from gateway.auth import Principal
    from gateway.configfile import parse_config
    from gateway.limits import Limiter, MemoryStore, Pending, make_store
    from gateway.record import RequestRecord

    limits: dict[str, Any] = {"default": {"requests_per_minute": 600, "tokens_per_day": 10**9}}
    if store_name == "redis":
        limits["redis_url"] = redis_url
    limits["state_path"] = os.path.join(run_dir, f"micro-{secrets.token_hex(4)}.sqlite3")
    config = parse_config({"backends": [{"name": "a", "url": "http://127.0.0.1:9"}], "limits": limits}, "<bench>")
    store = MemoryStore() if store_name == "memory" else make_store(config.limits)
    limiter = Limiter(config, store)
    await store.start()
    run = secrets.token_hex(4)  # fresh names: a shared Redis keeps earlier runs' counts
    clients = [Principal(f"client{i}-{run}", admin=False, models=("*",)) for i in range(100)]
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    for _ in range(n):
        await asyncio.sleep(0)
    empty = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(n):
        rec = RequestRecord("r", "POST", "/v1/chat/completions", "127.0.0.1", False, loop.time())
        admitted = limiter.admit(clients[i % 100], rec)
        client = await limiter.settle(admitted, rec) if isinstance(admitted, Pending) else admitted
        rec.prompt_tokens, rec.completion_tokens = 10, 16
        limiter.finish(client, rec)
        await asyncio.sleep(0)  # one loop turn per request, as serving has: background refills run
    spent = time.perf_counter() - t0 - empty
    await store.close()
    return spent / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per load")
    ap.add_argument("--conc", type=int, default=64, help="concurrent connections of the load")
    ap.add_argument("--burst", type=int, default=1000, help="overshoot: requests sent to each of the two gateways")
    ap.add_argument("--gateway-cmd", default=None, help="command that starts the gateway CLI (default: found)")
    a = ap.parse_args()
    redis_bin = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )
    if redis_bin is None:
        sys.exit("redis-server is not installed (Debian: apt-get install redis-server)")
    argv, env, how = targets.resolve_gateway(a.gateway_cmd)
    if argv is None:
        sys.exit(how)
    run_dir = tempfile.mkdtemp(prefix="bench-limits-shared-")
    key = "sk-bench-" + secrets.token_hex(16)
    procs: list[Proc] = []
    try:
        redis_port, backend_port = free_port(), free_port()
        redis = Proc(
            "redis",
            [redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            os.path.join(run_dir, "redis.log"),
        )
        procs.append(redis)
        backend = targets.start_backend(backend_port, run_dir, None, "limits")
        if isinstance(backend, str):
            sys.exit(backend)
        procs.append(backend)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        high = {"requests_per_minute": 10_000_000, "tokens_per_minute": 1_000_000_000, "tokens_per_day": 10_000_000_000}
        variants: dict[str, dict[str, Any] | None] = {
            "limits off": None,
            "limits on, SQLite leases (no redis_url)": {"default": high, "state_path": "state.sqlite3"},
            "limits on, Redis": {"default": high, "redis_url": redis_url},
        }
        ports = {name: free_port() for name in variants}
        for i, (name, limits) in enumerate(variants.items()):
            procs.append(start_gateway(argv, env, run_dir, f"gw{i}", ports[name], backend_port, key, limits))
        log(f"throughput: {a.rounds} rounds x {len(variants)} gateways, {a.duration:g} s each at c={a.conc}")
        rps: dict[str, list[float]] = {name: [] for name in variants}
        cpu_us: dict[str, list[float]] = {name: [] for name in variants}  # gateway CPU per request
        gateways = dict(zip(variants, procs[2:], strict=True))
        for r in range(a.rounds):
            for name in variants:
                before = cpu_s(gateways[name].pids())
                rate, count = ns_load(ports[name], key, a.conc, a.duration)
                used = cpu_s(gateways[name].pids()) - before
                rps[name].append(rate)
                cpu_us[name].append(used / max(count, 1) * 1e6)
                log(f"  round {r + 1}: {name}: {rate:.0f} req/s, {cpu_us[name][-1]:.0f} us CPU per request")
        for p in procs[2:]:
            p.stop()
        del procs[2:]

        # Overshoot: two gateways, one Redis, 600 a minute, a burst at both at once.
        limit = 600
        one, two = free_port(), free_port()
        shared = {"default": {"requests_per_minute": limit}, "redis_url": redis_url}
        # Another client name: the throughput loads' counts of this minute are in the same Redis.
        procs.append(start_gateway(argv, env, run_dir, "burst1", one, backend_port, key, shared, "burst"))
        procs.append(start_gateway(argv, env, run_dir, "burst2", two, backend_port, key, shared, "burst"))
        # wait_ready sent one request to each: start the burst in a fresh minute so that all of it
        # lands in one window (a burst across a minute boundary may rightly get 2 x 600).
        wait = 60.0 - time.time() % 60.0
        log(f"overshoot: waiting {wait:.0f} s for the next minute, then 2 x {a.burst} requests at once")
        time.sleep(wait + 0.2)
        t0 = time.monotonic()
        counts = asyncio.run(burst([one, two], key, a.burst))
        took = time.monotonic() - t0
        ok = counts.get("200", 0)
        off = statistics.median(rps["limits off"])
        print("\n## Shared limits (bench/limits_shared.py)\n")
        print(
            f"load: {'wrk' if shutil.which('wrk') else 'bench/loadgen.py'}, c={a.conc}, {a.duration:g} s per load, "
            f"{a.rounds} interleaved rounds, median; {os.cpu_count()} CPUs, no pinning\n"
        )
        off_cpu = statistics.median(cpu_us["limits off"])
        print("| gateway | requests/s (median) | ÷ limits off | gateway CPU per request (median) | off ÷ this |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, values in rps.items():
            med, cpu = statistics.median(values), statistics.median(cpu_us[name])
            print(f"| {name} | {med:,.0f} | {med / off:.3f} | {cpu:.0f} µs | {off_cpu / cpu:.3f} |")
        print(
            "\nOn a shared machine requests/s swings with other load; CPU per request (utime + stime of the "
            "gateway process / requests served) is the steadier measure of what limits cost."
        )
        micro = {
            name: statistics.median([asyncio.run(engine_cost(name, redis_url, run_dir, 30_000)) for _ in range(3)])
            for name in ("memory", "sqlite", "redis")
        }
        print(
            "\nLimits engine + store per request, in-process (no HTTP), 100 clients at 600/min, median of 3 x 30,000: "
            + ", ".join(f"{name} {us:.1f} µs" for name, us in micro.items())
            + "."
        )
        print(
            f"\nOvershoot: two gateways sharing one Redis, requests_per_minute: {limit}, 2 x {a.burst} requests "
            f"at once: **{ok} admitted** (limit {limit}; {ok - limit:+d}), statuses {dict(sorted(counts.items()))}, "
            f"{took:.1f} s."
        )
        return 0
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
