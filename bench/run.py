#!/usr/bin/env python3
"""Benchmark the gateway against the fake backend alone, a bare aiohttp relay and nginx, in one run.

    python bench/run.py                      # everything, about 8-10 minutes on 2 cores
    python bench/run.py --quick              # smoke run, about 2 minutes
    python bench/run.py --targets direct,bare,gateway --phases ns,sse
    python bench/run.py --gateway-cmd "python -m gateway" --workers 1,2
    python bench/run.py --targets all        # plus the feature variants (noauth, nometrics, min) and the
                                             # interleaved rounds that compare them with the full gateway

For every target: a fresh fake backend, then the proxy, then the phases in order (ns, sse, ndjson,
body, idle, flood); CPU and RSS of the proxy's process tree from /proc; markdown tables with ratios
against direct (and the bare relay) on stdout and in bench/results/latest.md (JSON beside it).
Only 127.0.0.1 is used; every process started is stopped by PID; every load is bounded in time.
See bench/README.md for what each column means.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import report
import sysmon
import targets
from sysmon import Proc, Sampler

HERE = os.path.dirname(os.path.abspath(__file__))
ALL_PHASES = ["ns", "sse", "ndjson", "body", "idle", "flood"]
VARIANTS = list(targets.VARIANTS)  # gateway-noauth, -nometrics, -nocors, -nolog, -min, -limits
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- arguments
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short smoke run (about 2 min): fewer, shorter loads")
    ap.add_argument("--targets", default="direct,bare,nginx,gateway",
                    help="comma list of direct, bare, nginx, gateway (= one per --workers), gateway-wN, "
                         + ", ".join(VARIANTS) + ", variants (= all of those), all (= everything)")
    ap.add_argument("--workers", default="1,2", help="gateway worker counts to run when 'gateway' is a target; "
                                                     "the variants run with the smallest")
    ap.add_argument("--phases", default=",".join(ALL_PHASES), help="comma list of " + ", ".join(ALL_PHASES))
    ap.add_argument("--variant-phases", default="ns",
                    help="the phases (of --phases) the variant targets run, or 'all' (default ns: the feature "
                         "cost is read from the non-streaming load)")
    ap.add_argument("--feature-rounds", type=int, default=None,
                    help="interleaved rounds for the feature-cost table (5; quick 2; 0: off): the full gateway, "
                         "the variants and bare run side by side and take turns under the same c=64 load")
    ap.add_argument("--flood-requests", type=int, default=1000, help="flood: requests, one random wrong key each")
    ap.add_argument("--flood-conc", type=int, default=50, help="flood: concurrent wrong-key requests")
    ap.add_argument("--flood-good-conc", type=int, default=4,
                    help="flood: concurrency of the good client (valid key) that runs alone, then during the flood")
    ap.add_argument("--gateway-cmd", default=None,
                    help="command that starts the gateway CLI (default: `gateway` on PATH, next to this "
                         "python, or `python -m gateway` from the checkout); run as CMD serve -c FILE")
    ap.add_argument("--duration", type=float, default=None, help="seconds per non-stream and stream load")
    ap.add_argument("--conc", default=None, help="non-stream concurrencies (default 1,16,64; quick 1,64)")
    ap.add_argument("--streams", type=int, default=64, help="concurrent streams in the sse/ndjson phases")
    ap.add_argument("--chunks", type=int, default=50, help="content chunks per stream (sse/ndjson)")
    ap.add_argument("--delay-ms", type=float, default=20.0, help="gap between chunks (sse/ndjson)")
    ap.add_argument("--idle-streams", type=int, default=None, help="idle phase streams (10000; quick 1000)")
    ap.add_argument("--idle-rate", type=float, default=None, help="idle streams opened per second at most")
    ap.add_argument("--idle-hold", type=float, default=None, help="idle phase measuring window, s")
    ap.add_argument("--body-mb", type=float, default=5.0, help="size of the large request body")
    ap.add_argument("--body-requests", type=int, default=None, help="large-body requests measured (8; quick 2)")
    ap.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto",
                    help="non-stream load: wrk when installed (auto), or the bundled python generator")
    ap.add_argument("--install", action="store_true",
                    help="apt-get install wrk and nginx when missing (Debian/Ubuntu, needs root)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    ap.add_argument("--load-cpus", default="0", help="cores for the load generator and the fake backend")
    ap.add_argument("--proxy-cpus", default=None, help="cores for the proxy under test (default: the others)")
    ap.add_argument("--port-base", type=int, default=28300,
                    help="127.0.0.1 ports used: BASE (backend alone), BASE+10.. (backends), BASE+40.. (proxies)")
    ap.add_argument("--start-timeout", type=float, default=30.0, help="seconds a proxy gets to answer its first chat")
    ap.add_argument("--no-capacity", action="store_true", help="skip measuring the fake backend alone")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="before each target, wait up to S seconds for other processes to use < 15%% of the CPUs")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="directory for latest.md / latest.json")
    ap.add_argument("--keep", action="store_true", help="keep the run directory (configs, logs)")
    ap.add_argument("--report", metavar="JSON", help="only print the tables of a saved latest.json")
    a = ap.parse_args(argv)
    q = a.quick
    a.duration = a.duration or (2.0 if q else 5.0)
    a.conc = [int(c) for c in (a.conc or ("1,64" if q else "1,16,64")).split(",")]
    a.idle_streams = a.idle_streams or (1000 if q else 10000)
    a.idle_rate = a.idle_rate or (500.0 if q else 1000.0)
    a.idle_hold = a.idle_hold or (3.0 if q else 8.0)
    a.body_requests = a.body_requests or (2 if q else 8)
    a.flood_s = max(3.0, a.duration)  # the good client's run, alone and during the flood
    a.feature_rounds = (2 if q else 5) if a.feature_rounds is None else a.feature_rounds
    a.feature_s = min(3.0, a.duration)  # one load of a round
    a.phases = [p for p in a.phases.split(",") if p]
    a.variant_phases = ALL_PHASES if a.variant_phases == "all" else [p for p in a.variant_phases.split(",") if p]
    bad = [p for p in a.phases + a.variant_phases if p not in ALL_PHASES]
    if bad:
        ap.error(f"unknown phase(s) {bad}; choose from {ALL_PHASES}")
    wn = [f"gateway-w{int(w)}" for w in a.workers.split(",") if w]
    a.variant_workers = min((int(w) for w in a.workers.split(",") if w), default=1)
    names: list[str] = []
    for t in (x.strip() for x in a.targets.split(",") if x.strip()):
        if t == "gateway":
            names += wn
        elif t == "variants":
            names += VARIANTS
        elif t == "all":
            names += ["direct", "bare", "nginx"] + wn + VARIANTS
        elif t in ("direct", "bare", "nginx") or t in VARIANTS or (t.startswith("gateway-w") and t[9:].isdigit()):
            names.append(t)
        else:
            ap.error(f"unknown target {t!r}")
    if "direct" not in names:
        names.insert(0, "direct")  # every ratio needs it
    a.target_names = list(dict.fromkeys(names))
    return a


# ---------------------------------------------------------------- environment
def setup_tools(a: argparse.Namespace, meta: dict[str, Any]) -> None:
    missing = [pkg for pkg, ok in (("wrk", shutil.which("wrk")), ("nginx", targets.find_nginx())) if not ok]
    if missing and a.install:
        log("installing {} with apt-get".format(" ".join(missing)))
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL, timeout=300)
        r = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends"] + missing, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
        if r.returncode:
            meta["notes"].append("apt-get install {} failed: {}".format(" ".join(missing), r.stderr[-300:]))
    a.wrk = shutil.which("wrk") if a.loadgen in ("auto", "wrk") else None
    if a.loadgen == "wrk" and not a.wrk:
        sys.exit("--loadgen wrk: wrk is not installed (apt-get install wrk, or --install)")
    a.nginx = targets.find_nginx()
    if a.wrk:
        meta["loadgen"] = f"wrk ({a.wrk})"
    else:
        meta["loadgen"] = "loadgen.py (%s)" % ("--loadgen python" if a.loadgen == "python" else "wrk not installed")
    if not a.wrk and a.loadgen == "auto":
        meta["notes"].append("wrk not found: non-stream load comes from bench/loadgen.py, a Python client "
                             "that saturates sooner; install wrk (or pass --install) for the real figures")
    taskset = shutil.which("taskset")
    ncpu = sysmon.NCPU
    if a.no_pin or not taskset or ncpu < 2:
        a.load_cpus = a.proxy_cpus = None
        meta["pinning"] = "none" + ("" if a.no_pin else " (taskset missing or a single core)")
    else:
        a.proxy_cpus = a.proxy_cpus or ("1" if ncpu == 2 else f"1-{ncpu - 1}")
        meta["pinning"] = f"load generator + fake backend on cpu {a.load_cpus}, proxy on cpu {a.proxy_cpus}"
        try:
            os.sched_setaffinity(0, parse_cpus(a.load_cpus))  # the orchestrator stays off the proxy core
        except (OSError, ValueError):
            pass


def parse_cpus(spec: str) -> set[int]:
    out: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def versions(a: argparse.Namespace) -> dict[str, str]:
    v = {"python": platform.python_version(), "kernel": platform.release(), "cpus": str(sysmon.NCPU)}
    try:
        import aiohttp
        v["aiohttp"] = aiohttp.__version__
        import uvloop
        v["uvloop"] = getattr(uvloop, "__version__", "?")
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            v["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if a.wrk:
        r = subprocess.run([a.wrk, "-v"], capture_output=True, text=True)
        v["wrk"] = (r.stdout + r.stderr).split("\n")[0].strip()[:60]
    if a.nginx:
        r = subprocess.run([a.nginx, "-v"], capture_output=True, text=True)
        v["nginx"] = (r.stderr or r.stdout).strip().replace("nginx version: ", "")
    return v


# ---------------------------------------------------------------- loads
def run_json(argv: list[str], cpus: str | None, timeout: float, env: dict[str, str] | None = None,
             marker: str = "") -> dict[str, Any]:
    return collect_json(spawn_json(argv, cpus, env), timeout, marker)


def spawn_json(argv: list[str], cpus: str | None, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start a load generator in its own session; collect_json() waits for it and reads its JSON line."""
    if cpus:
        argv = ["taskset", "-c", cpus] + argv
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, env=dict(os.environ, **(env or {})), start_new_session=True)


def collect_json(p: subprocess.Popen[str], timeout: float, marker: str = "") -> dict[str, Any]:
    try:
        stdout, stderr = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()  # by PID: the one process started above
        p.communicate()
        return {"error": f"load generator killed after {timeout:.0f} s"}
    for line in reversed(stdout.splitlines()):
        if line.startswith(marker + "{") or (marker and line.startswith(marker)):
            out: dict[str, Any] = json.loads(line[len(marker):].strip())
            return out
    return {"error": f"load generator failed (exit {p.returncode}): {(stderr or stdout)[-400:]}"}


def loadgen(a: argparse.Namespace, mode: str, t: targets.Target, extra: list[str], timeout: float) -> dict[str, Any]:
    argv = [sys.executable, os.path.join(HERE, "loadgen.py"), mode, "--port", str(t.port), "--auth", t.key,
            "--max-s", str(timeout - 5)] + extra
    return run_json(argv, a.load_cpus, timeout)


def ns_load(a: argparse.Namespace, t: targets.Target, conc: int, duration: float, cpus: str | None) -> dict[str, Any]:
    """Non-streaming POSTs: normalised to {rps, requests, latency_ms{p50,p99,...}, error_count, errors}."""
    if a.wrk:
        d = run_json([a.wrk, "-t1", f"-c{conc}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
                      "-s", os.path.join(HERE, "post.lua"), f"http://127.0.0.1:{t.port}/v1/chat/completions"],
                     cpus, duration + 30, env={"BENCH_KEY": t.key, "BENCH_TOKENS": "16"}, marker="BENCHJSON ")
        if "error" in d:
            return d
        secs = d["duration_us"] / 1e6
        errs = {k: v for k, v in d["errors"].items() if v}
        return {"rps": d["requests"] / secs if secs else 0.0, "requests": d["requests"],
                "latency_ms": {k: v / 1000.0 for k, v in d["latency_us"].items()},
                "error_count": sum(errs.values()), "errors": errs, "tool": "wrk"}
    argv = [sys.executable, os.path.join(HERE, "loadgen.py"), "ns", "--port", str(t.port), "--auth", t.key,
            "-c", str(conc), "--duration", str(duration), "--chunks", "16"]
    d = run_json(argv, cpus, duration + 40)
    d["tool"] = "loadgen.py"
    return d


# ---------------------------------------------------------------- one target
def port_for(a: argparse.Namespace, name: str, idx: int) -> tuple[int, int]:
    return a.port_base + 10 + idx, a.port_base + 40 + idx  # backend, proxy


def start_proxy(a: argparse.Namespace, name: str, bport: int, pport: int, run_dir: str,
                gw: targets.GatewayFactory, tag: str = "") -> targets.Target | str:
    if name == "direct":
        return targets.Target("direct", bport, key=gw.key)
    if not targets.port_free(pport):
        return f"port {pport} is in use (pass --port-base)"
    if name == "bare":
        return targets.Target("bare", pport, targets.start_bare(pport, bport, run_dir, a.proxy_cpus, tag or "bare"),
                              key=gw.key)
    if name == "nginx":
        if not a.nginx:
            return "nginx is not installed (apt-get install nginx, or pass --install)"
        return targets.Target("nginx", pport, targets.start_nginx(a.nginx, pport, bport, run_dir, a.proxy_cpus),
                              key=gw.key)
    if name in targets.VARIANTS:
        return gw.start(name, a.variant_workers, pport, bport, a.proxy_cpus, targets.VARIANTS[name], tag=tag)
    workers = int(name[len("gateway-w"):])
    return gw.start(name, workers, pport, bport, a.proxy_cpus, tag=tag)


def wait_quiet(limit: float) -> float:
    """Wait up to `limit` s until the machine is nearly idle; returns the last busy share (%)."""
    deadline = time.monotonic() + limit
    while True:
        b0, c0 = sysmon.machine_busy_s(), sysmon.own_cpu_s()
        time.sleep(1.0)
        busy = max(0.0, sysmon.machine_busy_s() - b0 - (sysmon.own_cpu_s() - c0)) * 100.0 / sysmon.NCPU
        if busy < 15.0 or time.monotonic() >= deadline:
            return round(busy, 1)
        log(f"  machine busy (others use {busy:.0f}% of the CPUs), waiting")


def measure(a: argparse.Namespace, name: str, idx: int, run_dir: str, gw: targets.GatewayFactory) -> dict[str, Any]:
    res: dict[str, Any] = {"target": name, "phases": {}}
    if a.wait_quiet > 0:
        res["busy_before_pct"] = wait_quiet(a.wait_quiet)
    bport, pport = port_for(a, name, idx)
    backend = targets.start_backend(bport, run_dir, a.load_cpus, name)
    if isinstance(backend, str):
        res["skipped"] = "fake backend: " + backend
        return res
    t: targets.Target | str | None = None
    sampler: Sampler | None = None
    try:
        t0 = time.monotonic()
        t = start_proxy(a, name, bport, pport, run_dir, gw)
        if isinstance(t, str):
            res["skipped"] = t
            return res
        res["checks"] = t.checks
        why = targets.wait_ready(t, a.start_timeout)
        if why:
            res["skipped"] = f"{name} did not come up: {why}"
            return res
        res["startup_s"] = round(time.monotonic() - t0, 2) if t.proc else None
        res["notes"] = t.notes
        if name.startswith("gateway"):
            t.checks.update(targets.gateway_checks(t))
        if t.proc and (name.startswith("gateway") or not a.quick):
            for streaming, label in ((True, "mid-stream"), (False, "before the first byte")):
                t.checks[f"client gone {label} -> upstream"] = targets.disconnect_check(t, bport, streaming)
        if t.checks:
            log("  checks: " + "; ".join("{}: {}".format(*kv) for kv in t.checks.items()))
        roots = {"backend": backend.pid}
        if t.proc:
            roots["proxy"] = t.proc.pid
            res["fd_limit"] = sysmon.fd_limit(t.proc.pid)
            res["processes"] = len(sysmon.tree(t.proc.pid))
        sampler = Sampler(roots)
        sampler.start()
        time.sleep(0.3)
        res["rss_idle_mb"] = round(sysmon.rss_mb(sysmon.tree(t.proc.pid)), 1) if t.proc else None
        ns_load(a, t, 16, 1.0, a.load_cpus)  # warm-up (also fills the gateway's key cache), not reported
        if t.features:
            res["features"] = t.features
        for phase in target_phases(a, name, t):
            for sub in (a.conc if phase == "ns" else [None]):
                key = f"ns_{sub}" if sub is not None else phase
                d = run_phase(a, phase, sub, t, backend, sampler)
                res["phases"][key] = d
                log(f"  {name:<11} {key:<7} {report.brief(key, d)}")
                if t.proc is not None and not t.proc.alive():
                    res["died"] = f"{name} exited during {key} (code {t.proc.p.returncode}):\n{t.proc.tail()}"
                    log("  " + res["died"])
                    return res
        if t.log_path and os.path.exists(t.log_path):
            res["log_bytes"] = os.path.getsize(t.log_path)
            lines = tracebacks = 0
            with open(t.log_path, "rb") as f:
                for line in f:
                    lines += 1
                    tracebacks += line.startswith(b"Traceback")
            res["log_lines"], res["log_tracebacks"] = lines, tracebacks
        return res
    finally:
        if sampler:
            sampler.stop()
        if not isinstance(t, (str, type(None))) and t.proc:
            t.proc.stop()
        backend.stop()


def target_phases(a: argparse.Namespace, name: str, t: targets.Target) -> list[str]:
    """The variants run only --variant-phases; the flood only hits gateways with auth on."""
    return [p for p in a.phases if (name not in targets.VARIANTS or p in a.variant_phases)
            and (p != "flood" or t.features.get("auth"))]


def run_phase(a: argparse.Namespace, phase: str, conc: int | None, t: targets.Target, backend: Proc,
              sampler: Sampler) -> dict[str, Any]:
    proxy_pids = t.proc.pids() if t.proc else []
    sampler.reset(count_fds=(phase == "idle"))
    rss_before = sysmon.rss_mb(proxy_pids) if t.proc else None
    c_proxy, c_backend = sysmon.cpu_s(proxy_pids), sysmon.cpu_s([backend.pid])
    c_own, busy0, wall0 = sysmon.own_cpu_s(), sysmon.machine_busy_s(), time.monotonic()
    if phase == "ns":
        assert conc is not None
        d = ns_load(a, t, conc, a.duration, a.load_cpus)
    elif phase in ("sse", "ndjson"):
        model = targets.OLLAMA_MODEL if phase == "ndjson" else "fake"
        d = loadgen(a, "stream", t, ["--protocol", phase, "-c", str(a.streams), "--chunks", str(a.chunks),
                                     "--delay-ms", str(a.delay_ms), "--duration", str(a.duration),
                                     "--model", model], timeout=a.duration + 60)
    elif phase == "body":
        d = loadgen(a, "body", t, ["--body-mb", str(a.body_mb), "--requests", str(a.body_requests)],
                    timeout=60 + 10 * a.body_requests)
    elif phase == "flood":
        d = flood(a, t, backend)
    else:
        ramp_max = max(10.0, 3.0 * a.idle_streams / a.idle_rate)
        d = loadgen(a, "idle", t, ["--streams", str(a.idle_streams), "--rate", str(a.idle_rate),
                                   "--delay-ms", "1000", "--hold-s", str(a.idle_hold),
                                   "--ramp-max-s", str(ramp_max)], timeout=ramp_max + a.idle_hold + 60)
    wall = time.monotonic() - wall0
    proxy_pids = t.proc.pids() if t.proc else []
    d["proxy_cpu_s"] = round(sysmon.cpu_s(proxy_pids) - c_proxy, 3) if t.proc else None
    d["backend_cpu_s"] = round(sysmon.cpu_s([backend.pid]) - c_backend, 3)
    ours = (d["proxy_cpu_s"] or 0.0) + d["backend_cpu_s"] + (sysmon.own_cpu_s() - c_own)
    d["other_load_pct"] = round(max(0.0, sysmon.machine_busy_s() - busy0 - ours) * 100.0 / (wall * sysmon.NCPU), 1)
    d["wall_s"] = round(wall, 2)
    peaks, fds = sampler.take()
    d["proxy_rss_peak_mb"] = round(peaks.get("proxy", 0.0), 1) if t.proc else None
    d["proxy_rss_before_mb"] = None if rss_before is None else round(rss_before, 1)
    d["backend_rss_peak_mb"] = round(peaks.get("backend", 0.0), 1)
    if phase == "idle":
        d["proxy_fds_peak"] = fds.get("proxy")
        # Did the proxy close its upstream streams when the clients left? (It should, at once: the GPU
        # keeps generating otherwise.) Poll the backend's count of open streams for up to 15 s.
        t_gone = time.monotonic()
        while True:
            status, _, body = targets.http("GET", backend_port(backend), "/fake/stats")
            left = json.loads(body)["open_streams"] if status == 200 else None
            waited = time.monotonic() - t_gone
            if waited >= 2.0 and "upstream_open_after_2s" not in d:
                d["upstream_open_after_2s"] = left
            if left == 0 or left is None or waited >= 15.0:
                break
            time.sleep(0.25)
        d["upstream_open_final"] = left
        d["upstream_drain_s"] = round(waited, 1)
        if t.proc:
            d["proxy_rss_after_mb"] = round(sysmon.rss_mb(t.proc.pids()), 1)
    return d


class Window:
    """CPU of the proxy tree, and the rest of the machine's load, over part of a phase."""

    def __init__(self, t: targets.Target, backend: Proc) -> None:
        self.t, self.backend = t, backend
        self.c_proxy, self.c_backend = sysmon.cpu_s(t.proc.pids() if t.proc else []), sysmon.cpu_s([backend.pid])
        self.c_own, self.busy0, self.wall0 = sysmon.own_cpu_s(), sysmon.machine_busy_s(), time.monotonic()

    def proxy_cpu(self) -> float:
        return sysmon.cpu_s(self.t.proc.pids() if self.t.proc else []) - self.c_proxy

    def close(self) -> dict[str, Any]:
        wall = time.monotonic() - self.wall0
        proxy = self.proxy_cpu()
        ours = proxy + sysmon.cpu_s([self.backend.pid]) - self.c_backend + sysmon.own_cpu_s() - self.c_own
        return {"proxy_cpu_s": round(proxy, 3), "wall_s": round(wall, 2),
                "other_load_pct": round(max(0.0, sysmon.machine_busy_s() - self.busy0 - ours) * 100.0
                                        / (wall * sysmon.NCPU), 1)}


def flood(a: argparse.Namespace, t: targets.Target, backend: Proc) -> dict[str, Any]:
    """A good client alone, then the same good client while a flood of wrong keys hits the gateway.

    The good client is loadgen.py ns with the valid key at --flood-good-conc for a.flood_s seconds.
    The flood (loadgen.py flood: --flood-requests distinct random keys, --flood-conc at a time) starts
    0.3 s into the second run. The second window ends when both clients are done and the gateway's
    CPU has settled (the bcrypt checks the flood queued finish after its last answer), at most 15 s
    later. The flood's share of the gateway's CPU is that window's CPU minus what the good requests
    in it cost at the rate measured alone.
    """
    good = [sys.executable, os.path.join(HERE, "loadgen.py"), "ns", "--port", str(t.port), "--auth", t.key,
            "-c", str(a.flood_good_conc), "--duration", str(a.flood_s), "--chunks", "16",
            "--max-s", str(a.flood_s + 30)]
    bad = [sys.executable, os.path.join(HERE, "loadgen.py"), "flood", "--port", str(t.port),
           "--requests", str(a.flood_requests), "-c", str(a.flood_conc), "--stream-timeout", "20", "--max-s", "90"]
    w = Window(t, backend)
    alone = run_json(good, a.load_cpus, a.flood_s + 40)
    alone.update(w.close())
    w = Window(t, backend)
    p_good = spawn_json(good, a.load_cpus)
    time.sleep(0.3)  # the good client is in its stride when the flood starts
    t_flood = time.monotonic()
    fl = run_json(bad, a.load_cpus, 100)
    fl["flood_s"] = round(time.monotonic() - t_flood, 2)
    during = collect_json(p_good, a.flood_s + 40)
    # Settled: the gateway used less than 5% of a core over 0.3 s.
    last, deadline = w.proxy_cpu(), time.monotonic() + 15.0
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now_cpu = w.proxy_cpu()
        if now_cpu - last < 0.015:
            break
        last = now_cpu
    fl["busy_s"] = round(time.monotonic() - t_flood, 2)  # flood start to the gateway going quiet
    during.update(w.close())
    good_share = None
    if alone.get("requests") and during.get("requests") is not None and alone.get("proxy_cpu_s") is not None:
        good_share = alone["proxy_cpu_s"] / alone["requests"] * during["requests"]
    fl["proxy_cpu_s"] = None if good_share is None else round(max(0.0, during["proxy_cpu_s"] - good_share), 3)
    return {"good_alone": alone, "good_during": during, "flood": fl, "good_conc": a.flood_good_conc,
            "good_s": a.flood_s}


def feature_rounds(a: argparse.Namespace, run_dir: str, gw: targets.GatewayFactory,
                   done: dict[str, Any]) -> dict[str, Any] | None:
    """The feature-cost comparison, interleaved: the full gateway, the variants and bare all started
    (each with its own fake backend), then --feature-rounds rounds in which each takes its turn under
    the same c=64 load, in an order rotated every round. Loads a few seconds apart see nearly the same
    machine, so a ratio taken within a round (and its median over the rounds) is far steadier than
    one between targets measured a minute apart."""
    full = f"gateway-w{a.variant_workers}"
    names = [n for n in [full] + VARIANTS + ["bare"]
             if n in a.target_names and n in done and "skipped" not in done[n]]
    if a.feature_rounds <= 0 or "ns" not in a.phases or full not in names or len(names) < 2:
        return None
    conc = 64 if 64 in a.conc else max(a.conc)
    log(f"feature rounds: {a.feature_rounds} x {', '.join(names)} at c={conc}, {a.feature_s:g} s each")
    running: dict[str, tuple[targets.Target, Proc]] = {}
    out: dict[str, Any] = {"conc": conc, "duration": a.feature_s, "targets": names, "rounds": []}
    try:
        for name in names:
            bport, pport = port_for(a, name, a.target_names.index(name))
            backend = targets.start_backend(bport, run_dir, a.load_cpus, name + "-rounds")
            if isinstance(backend, str):
                out["error"] = f"{name}: fake backend: {backend}"
                return out
            t = start_proxy(a, name, bport, pport, run_dir, gw, tag=name + "-rounds")
            if isinstance(t, str):
                backend.stop()
                out["error"] = f"{name}: {t}"
                return out
            running[name] = (t, backend)
            why = targets.wait_ready(t, a.start_timeout)
            if why:
                out["error"] = f"{name} did not come up: {why}"
                return out
            ns_load(a, t, 16, 1.0, a.load_cpus)  # warm-up, fills the key cache
        for r in range(a.feature_rounds):
            k = r % len(names)
            one: dict[str, Any] = {}
            for name in names[k:] + names[:k]:
                t, backend = running[name]
                w = Window(t, backend)
                d = ns_load(a, t, conc, a.feature_s, a.load_cpus)
                d.update(w.close())
                one[name] = d if "error" in d else {
                    "rps": round(d["rps"], 1), "requests": d["requests"], "proxy_cpu_s": d["proxy_cpu_s"],
                    "p99_ms": d["latency_ms"]["p99"], "error_count": d["error_count"],
                    "other_load_pct": d["other_load_pct"]}
            out["rounds"].append(one)
            log("  round {}: {}".format(r + 1, ", ".join(
                f"{n} {v['rps']:.0f}" if "rps" in v else f"{n} ERROR" for n, v in one.items())))
        return out
    finally:
        for t, backend in running.values():
            if t.proc:
                t.proc.stop()
            backend.stop()


def backend_port(backend: Proc) -> int:
    return int(backend.argv[backend.argv.index("--port") + 1])


def backend_capacity(a: argparse.Namespace, run_dir: str) -> dict[str, Any]:
    """The fake backend alone on its core, the load on the other: how much headroom it leaves."""
    port = a.port_base
    be = targets.start_backend(port, run_dir, a.load_cpus, "capacity")
    if isinstance(be, str):
        return {"error": be}
    try:
        t = targets.Target("capacity", port)
        out: dict[str, Any] = {}
        for c in (64,) if a.quick else (1, 64):
            c0 = sysmon.cpu_s([be.pid])
            d = ns_load(a, t, c, min(3.0, a.duration), a.proxy_cpus)
            d["backend_cpu_s"] = round(sysmon.cpu_s([be.pid]) - c0, 3)
            out[f"ns_{c}"] = d
            log(f"  fake backend alone c={c}: {report.brief(f'ns_{c}', d)}")
        return out
    finally:
        be.stop()


# ---------------------------------------------------------------- main
def main() -> None:
    a = parse_args()
    if a.report:
        with open(a.report) as f:
            print(report.render(json.load(f)))
        return
    soft, hard = sysmon.raise_fd_limit()
    meta: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": a.quick, "notes": [],
                            "fd_limit": soft, "fd_hard": hard}
    setup_tools(a, meta)
    meta["versions"] = versions(a)
    with open("/proc/loadavg") as f:
        meta["loadavg"] = " ".join(f.read().split()[:3])
    run_dir = tempfile.mkdtemp(prefix="gateway-bench-")
    gw = targets.GatewayFactory(a.gateway_cmd, run_dir)
    if any(n.startswith("gateway") for n in a.target_names):
        meta["gateway"] = f"{' '.join(gw.argv)} ({gw.version()}, found via {gw.how})" if gw.argv else (
            "not found: " + gw.how)
        if gw.argv:
            gw.hashes()  # bcrypt at cost 12, once per run
    log("targets {}, phases {}, {}, {}; run dir {}".format(",".join(a.target_names), ",".join(a.phases),
                                                       meta["loadgen"], meta["pinning"], run_dir))
    settings = {k: getattr(a, k) for k in ("duration", "conc", "streams", "chunks", "delay_ms", "idle_streams",
                                           "idle_rate", "idle_hold", "body_mb", "body_requests", "phases",
                                           "target_names", "workers", "variant_workers", "variant_phases",
                                           "flood_requests", "flood_conc", "flood_good_conc", "flood_s",
                                           "feature_rounds", "feature_s")}
    results: dict[str, Any] = {"meta": meta, "settings": settings, "capacity": {}, "targets": {}}
    try:
        if not a.no_capacity and "ns" in a.phases:
            results["capacity"] = backend_capacity(a, run_dir)
        for idx, name in enumerate(a.target_names):
            log(f"target {name}")
            r = measure(a, name, idx, run_dir, gw)
            if "skipped" in r:
                log("  SKIPPED {}: {}".format(name, r["skipped"]))
            results["targets"][name] = r
        fr = feature_rounds(a, run_dir, gw, results["targets"])
        if fr is not None:
            results["feature_rounds"] = fr
    finally:
        meta["elapsed_s"] = round(time.monotonic() - T0, 1)
        md = report.render(results)
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "latest.json"), "w") as f:
            json.dump(results, f, indent=1)
        with open(os.path.join(a.out, "latest.md"), "w") as f:
            f.write(md + "\n")
        print(md)
        log("wrote {} and latest.json".format(os.path.join(a.out, "latest.md")))
        if a.keep:
            log(f"kept {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
