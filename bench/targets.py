"""The things being measured: the fake backend, and the proxies put in front of it.

direct      the fake backend itself (the zero-overhead limit)
bare        bare_relay.py, the floor for an aiohttp proxy
nginx       nginx with proxy_buffering and proxy_request_buffering off, HTTP/1.1 upstream keep-alive
gateway-wN  the project's gateway (`gateway serve -c FILE [--workers N]`) with a realistic config:
            bcrypt API keys, CORS, metrics, access log at info, two backends, aliases
gateway-noauth, gateway-nometrics, gateway-nocors, gateway-nolog, gateway-min
            the same config with one change each (VARIANTS), to price each feature in the same run
"""
from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from sysmon import Proc

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CORS_ORIGINS = ["http://localhost:3000", "https://*.example.com"]
ALIASES = {"gpt-4o-mini": "fake", "llama3": "llama3.2:3b"}
OLLAMA_MODEL = "llama3.2:3b"  # routed to the gateway's second backend (type ollama)
# The gateway's features as the bench's config sets them. gateway-wN runs FULL; each variant changes
# only the keys listed (same backends, aliases, body limit, keys of the load).
FULL: dict[str, Any] = {"auth": True, "cors": True, "metrics": True, "log_level": "info", "limits": False}
VARIANTS: dict[str, dict[str, Any]] = {
    "gateway-noauth": {"auth": False},  # the `auth:` section removed
    "gateway-nometrics": {"metrics": False},  # metrics: {enabled: false}
    "gateway-nocors": {"cors": False},  # the `cors:` section removed
    "gateway-nolog": {"log_level": "warning"},  # no access log (logging.level: warning)
    "gateway-min": {"auth": False, "cors": False, "metrics": False, "log_level": "warning"},  # the floor
    "gateway-limits": {"limits": True},  # generous limits on every key: every check paid, nothing refused
}
# Every limit set on every key, far above what a run can use (requests_per_minute 100 million).
GENEROUS_LIMITS = ("{requests_per_minute: 100000000, tokens_per_minute: 1000000000000, "
                   "tokens_per_day: 1000000000000000, max_concurrent: 100000}")


def features_text(f: dict[str, Any]) -> str:
    """What differs from FULL, e.g. "auth off, metrics off"; "full" when nothing does."""
    diffs = [f"{k} off" if v is False else f"{k} on" if v is True else f"logging.level {v}"
             for k, v in f.items() if FULL.get(k) != v]
    return ", ".join(diffs) or "full"


@dataclass
class Target:
    name: str
    port: int  # where the load goes
    proc: Proc | None = None
    key: str = ""  # API key the load sends (every target gets it; only the gateway checks it)
    notes: list[str] = field(default_factory=list)
    checks: dict[str, str] = field(default_factory=dict)
    log_path: str | None = None
    features: dict[str, Any] = field(default_factory=dict)  # gateway only: FULL, or a VARIANTS change


# ---------------------------------------------------------------- small HTTP helpers (stdlib only)
def http(method: str, port: int, path: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        return 0, {}, str(e).encode()


def chat(port: int, key: str, model: str = "fake", path: str = "/v1/chat/completions",
         timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False,
                            "fake_chunks": 4}
    return http("POST", port, path, body, {"Authorization": "Bearer " + key} if key else None, timeout)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_ready(t: Target, timeout: float) -> str | None:
    """None once a chat completion through the target answers 200, else why not."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if t.proc is not None and not t.proc.alive():
            return f"exited with code {t.proc.p.returncode} at start:\n{t.proc.tail()}"
        status, _, body = chat(t.port, t.key, timeout=2.0)
        if status == 200 and b"choices" in body:
            return None
        text = body[:200].decode("utf-8", "replace")
        last = f"HTTP {status}: {text}" if status else text
        time.sleep(0.2)
    return "not ready after {:.0f} s (last: {})\n{}".format(timeout, last, t.proc.tail() if t.proc else "")


# ---------------------------------------------------------------- backend, bare relay, nginx
def start_backend(port: int, run_dir: str, cpus: str | None, tag: str) -> Proc | str:
    if not port_free(port):
        return f"port {port} is in use"
    p = Proc("backend-" + tag, [sys.executable, os.path.join(HERE, "fake_backend.py"), "--port", str(port)],
             os.path.join(run_dir, f"backend-{tag}.log"), cpus=cpus)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not p.alive():
            return "fake backend exited: " + p.tail()
        if http("GET", port, "/health", timeout=1)[0] == 200:
            return p
        time.sleep(0.05)
    p.stop()
    return "fake backend did not answer in 10 s"


def start_bare(port: int, upstream: int, run_dir: str, cpus: str | None, tag: str = "bare") -> Proc:
    return Proc("bare", [sys.executable, os.path.join(HERE, "bare_relay.py"), "--port", str(port),
                         "--upstream", f"http://127.0.0.1:{upstream}"],
                os.path.join(run_dir, f"{tag}.log"), cpus=cpus)


NGINX_CONF = """# written by bench/run.py: one worker (the proxy gets one core), no buffering either way,
# HTTP/1.1 keep-alive to the upstream, access log off
worker_processes 1;
daemon off;
master_process on;
pid {run}/nginx.pid;
error_log {run}/nginx-error.log warn;
events {{ worker_connections 20480; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {run}/nginx-tmp/body;
    proxy_temp_path {run}/nginx-tmp/proxy;
    fastcgi_temp_path {run}/nginx-tmp/fastcgi;
    uwsgi_temp_path {run}/nginx-tmp/uwsgi;
    scgi_temp_path {run}/nginx-tmp/scgi;
    client_max_body_size 64m;
    keepalive_requests 100000;
    upstream fake {{ server 127.0.0.1:{upstream}; keepalive 256; keepalive_requests 100000; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def find_nginx() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
                                          if os.access(p, os.X_OK)), None)


def start_nginx(nginx: str, port: int, upstream: int, run_dir: str, cpus: str | None) -> Proc:
    os.makedirs(os.path.join(run_dir, "nginx-tmp"), exist_ok=True)
    conf = os.path.join(run_dir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(run=run_dir, port=port, upstream=upstream))
    return Proc("nginx", [nginx, "-p", run_dir, "-c", conf, "-e", os.path.join(run_dir, "nginx-error.log")],
                os.path.join(run_dir, "nginx.log"), cpus=cpus)


# ---------------------------------------------------------------- the gateway
def resolve_gateway(cmd: str | None) -> tuple[list[str] | None, dict[str, str], str]:
    """(argv prefix, extra env, how it was found); argv None when there is no gateway to run."""
    if cmd:
        argv = shlex.split(cmd)
        if not argv or not (shutil.which(argv[0]) or os.access(argv[0], os.X_OK)):
            return None, {}, "--gateway-cmd {!r}: {} not found".format(cmd, argv[0] if argv else "empty")
        return argv, {}, "--gateway-cmd"
    found = shutil.which("gateway")
    if found:
        return [found], {}, "PATH"
    beside = os.path.join(os.path.dirname(sys.executable), "gateway")
    if os.access(beside, os.X_OK):
        return [beside], {}, f"next to {sys.executable}"
    if os.path.exists(os.path.join(REPO, "gateway", "__main__.py")):
        return [sys.executable, "-m", "gateway"], {"PYTHONPATH": REPO}, "python -m gateway (from the checkout)"
    return None, {}, (f"no `gateway` on PATH or next to {sys.executable}, and no gateway/__main__.py in {REPO} "
                      "(pass --gateway-cmd)")


def bcrypt_hash(key: str) -> str:
    import bcrypt
    return bcrypt.hashpw(key.encode(), bcrypt.gensalt(rounds=12)).decode()


def q(s: str) -> str:
    """A YAML double-quoted scalar (JSON string syntax is valid YAML for these values)."""
    return json.dumps(s)


def gateway_config(port: int, upstream: int, key: str, key_hash: str, other_hashes: list[str],
                   features: dict[str, Any] | None = None) -> str:
    """A realistic config, keys exactly as in PRODUCT.md. The bench's key is the last of three.

    `features` (FULL by default) turns sections off for the variants: auth False drops `auth:`,
    cors False drops `cors:`, metrics False writes `metrics: {enabled: false}`, log_level sets
    `logging.level`, limits True gives every key (and the default) GENEROUS_LIMITS.
    """
    f = dict(FULL, **(features or {}))
    up = f"http://127.0.0.1:{upstream}"
    lines = [
        "# written by bench/run.py for one benchmark run",
        "server:",
        "  host: 127.0.0.1",
        f"  port: {port}",
        "  max_body_size: 50MiB",
        "  max_connections: 100000",  # the idle phase holds 10,000 streams from one address: caps checked, never hit
        "  max_connections_per_client: 100000",
        "backends:",
        "  - name: vllm-box",
        f"    url: {q(up)}",
        "    type: vllm",
        "    models: [{}]".format(", ".join(q(m) for m in ("fake", "fake-*"))),
        "  - name: ollama-box",
        f"    url: {q(up)}",
        "    type: ollama",
        "    models: [{}]".format(", ".join(q(m) for m in ("llama3.2:*", "qwen2.5:*"))),
        "aliases:",
    ] + [f"  {q(a)}: {q(m)}" for a, m in ALIASES.items()]
    if f["auth"]:
        lines += [
            "auth:",
            "  api_keys:",
            "    - name: laptop",
            f"      hash: {q(other_hashes[0])}",
            '      models: ["*"]',
            "    - name: phone",
            f"      hash: {q(other_hashes[1])}",
            '      models: ["llama3.2:*"]',
            "    - name: bench",
            f"      hash: {q(key_hash)}",
            '      models: ["*"]',
        ]
        if f.get("limits"):
            lines = [x for line in lines for x in ([line, f"      limits: {GENEROUS_LIMITS}"]
                                                   if line.startswith("      models:") else [line])]
    if f.get("limits"):
        lines += ["limits:", f"  default: {GENEROUS_LIMITS}"]
    if f["cors"]:
        lines += [
            "cors:",
            "  allow_origins: [{}]".format(", ".join(q(o) for o in CORS_ORIGINS)),
            "  max_age: 10m",
        ]
    lines += ["metrics:", "  enabled: true", "  path: /metrics"] if f["metrics"] else ["metrics:", "  enabled: false"]
    lines += [
        "logging:",
        f"  level: {f['log_level']}",
        "  format: text",
        "",
    ]
    return "\n".join(lines)


class GatewayFactory:
    """Writes the config once per run (bcrypt at cost 12 takes a moment) and starts gateway variants."""

    def __init__(self, cmd: str | None, run_dir: str) -> None:
        self.argv, self.env, self.how = resolve_gateway(cmd)
        self.run_dir = run_dir
        self.key = "sk-bench-" + secrets.token_hex(16)
        self._hashes: tuple[str, list[str]] | None = None

    def hashes(self) -> tuple[str, list[str]]:
        if self._hashes is None:
            import hashlib
            other = "sk-" + secrets.token_hex(16)
            self._hashes = (bcrypt_hash(self.key), [bcrypt_hash("sk-" + secrets.token_hex(16)),
                                                    "sha256:" + hashlib.sha256(other.encode()).hexdigest()])
        return self._hashes

    def write_config(self, port: int, upstream: int, tag: str, features: dict[str, Any] | None = None) -> str:
        key_hash, others = self.hashes()
        path = os.path.join(self.run_dir, f"{tag}.yaml")
        with open(path, "w") as f:
            f.write(gateway_config(port, upstream, self.key, key_hash, others, features))
        return path

    def version(self) -> str:
        assert self.argv is not None
        try:
            r = subprocess.run(self.argv + ["--version"], capture_output=True, text=True, timeout=30,
                               env=dict(os.environ, **self.env), cwd=self.run_dir)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"? ({e})"
        return (r.stdout or r.stderr).strip().splitlines()[-1][:80] if (r.stdout or r.stderr).strip() else "?"

    def check(self, config: str) -> tuple[int, str]:
        assert self.argv is not None
        try:
            r = subprocess.run(self.argv + ["check", "-c", config], capture_output=True, text=True, timeout=60,
                               env=dict(os.environ, **self.env), cwd=self.run_dir)
        except (OSError, subprocess.TimeoutExpired) as e:
            return -1, str(e)
        return r.returncode, (r.stdout + r.stderr).strip()

    def start(self, name: str, workers: int, port: int, upstream: int, cpus: str | None,
              features: dict[str, Any] | None = None, tag: str = "") -> Target | str:
        """Write the config and start `gateway serve`; `tag` names its files (default: the target's name)."""
        if self.argv is None:
            return "gateway not found: " + self.how
        tag = tag or name
        config = self.write_config(port, upstream, tag, features)
        rc, out = self.check(config)
        # The load sends the bench's key to every variant: with auth off the gateway ignores it, and
        # the requests stay byte for byte the same as for the full config.
        t = Target(name, port, key=self.key, features=dict(FULL, **(features or {})))
        if rc == 2:
            return "`gateway check` rejected the bench's config (exit 2):\n" + out[-1500:]
        last = out.splitlines()[-1][:200] if out else ""
        t.checks["gateway check -c"] = "ok" if rc == 0 else f"exit {rc} ({last})"
        argv = self.argv + ["serve", "-c", config] + (["--workers", str(workers)] if workers > 1 else [])
        t.log_path = os.path.join(self.run_dir, f"{tag}.log")
        t.proc = Proc(name, argv, t.log_path, cpus=cpus, env=self.env, cwd=self.run_dir)
        t.notes.append("command: {} (found via {}); config: {}".format(" ".join(argv), self.how, config))
        return t


def gateway_checks(t: Target) -> dict[str, str]:
    """Cheap functional checks that the config (the full one, or a variant) is really in force."""
    out: dict[str, str] = {}
    f = t.features or FULL
    status, _, _ = chat(t.port, "")
    if f["auth"]:
        out["no key -> 401"] = "ok" if status == 401 else f"got {status}"
        t0 = time.monotonic()
        status, _, _ = chat(t.port, "sk-wrong-" + secrets.token_hex(8), timeout=30)
        took = f"{(time.monotonic() - t0) * 1000:.0f} ms"
        out["wrong key -> 401"] = f"ok, {took}" if status == 401 else f"got {status}, {took}"
    else:
        out["auth off: no key -> 200"] = "ok" if status == 200 else f"got {status}"
    status, hdrs, _ = http("OPTIONS", t.port, "/v1/chat/completions", headers={
        "Origin": CORS_ORIGINS[0], "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    acao = hdrs.get("access-control-allow-origin")
    if f["cors"]:
        out["CORS preflight"] = "ok" if status in (200, 204) and acao in (CORS_ORIGINS[0], "*") else (
            f"got {status}, Access-Control-Allow-Origin={acao}")
    else:
        out["CORS off: preflight refused"] = "ok" if acao is None else (
            f"got {status}, Access-Control-Allow-Origin={acao}")
    status, hdrs, body = chat(t.port, t.key, model="gpt-4o-mini")
    if f.get("limits"):
        left = hdrs.get("x-ratelimit-remaining-requests")
        out["limits on: x-ratelimit headers"] = f"ok (remaining {left})" if status == 200 and left else (
            f"got {status}, x-ratelimit-remaining-requests={left}")
    try:
        seen = json.loads(body).get("model") if status == 200 else None
    except ValueError:
        seen = None
    out["alias gpt-4o-mini"] = f"ok (backend saw {seen})" if status == 200 else f"got {status}"
    status, _, _ = chat(t.port, t.key, model=OLLAMA_MODEL, path="/api/chat")
    out["/api/chat -> ollama backend"] = "ok" if status == 200 else f"got {status}"
    status, _, body = http("GET", t.port, "/metrics", headers=None if f["metrics"] else {
        "Authorization": "Bearer " + t.key})  # off: a 404 past auth, not a 401
    if f["metrics"]:
        out["/metrics"] = "ok" if status == 200 and b"gateway_requests_total" in body else f"got {status}"
    else:
        out["metrics off: /metrics -> 404"] = "ok" if status == 404 else f"got {status}"
    return out


def disconnect_check(t: Target, backend: int, streaming: bool, n: int = 4, limit: float = 3.0) -> str:
    """Clients that leave mid-stream (or before the first byte): how soon does the backend see it?

    Opens n requests that the fake backend keeps open for 30 s (a stream with 30 s between chunks,
    or an answer delayed 30 s), closes the clients once the backend has them all, and polls the
    backend's count of open responses.
    """
    body: dict[str, Any] = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": streaming,
                            "fake_chunks": 3, "fake_delay_ms": 30000}
    if not streaming:
        body["fake_latency_ms"] = 30000
    raw = json.dumps(body).encode()
    req = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{t.port}\r\nContent-Type: application/json\r\n"
           f"Authorization: Bearer {t.key}\r\nContent-Length: {len(raw)}\r\n\r\n").encode() + raw

    def open_now() -> int:
        status, _, b = http("GET", backend, "/fake/stats", timeout=2)
        return int(json.loads(b)["open_streams"]) if status == 200 else -1

    base = open_now()
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", t.port), timeout=5)
            s.sendall(req)
            socks.append(s)
        if streaming:
            for s in socks:
                s.recv(65536)  # the head and the first chunk
        deadline = time.monotonic() + 5
        while open_now() < base + n and time.monotonic() < deadline:
            time.sleep(0.05)
        if open_now() < base + n:
            return f"n/a (the backend never saw the {n} requests)"
    except OSError as e:
        return f"n/a ({e})"
    finally:
        for s in socks:
            s.close()
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if open_now() <= base:
            return "closed in %.0f ms" % ((time.monotonic() - t0) * 1000)
        time.sleep(0.02)
    return f"NOT closed: {open_now() - base} of {n} still open after {limit:.0f} s"
