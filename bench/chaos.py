#!/usr/bin/env python3
"""Chaos run: clients stream and call through a real gateway while its backends fail on a schedule.

    python bench/chaos.py                     # 60 s, 12 clients, report on stdout
    python bench/chaos.py --duration 20 --json chaos.json

Three fake backends (in this process, each on its own loopback port) serve one model in both
dialects. Every few seconds one of them is killed (its server stops, cutting its streams) and
restarted later on the same port, slowed, made to hang before answering, made to stall mid-stream,
or made to answer 503. A real ``gateway serve`` subprocess sits in front of them with short
timeouts, a circuit breaker and health probes; it gets a SIGHUP every few seconds and a SIGTERM
(drain) at the end, while requests are still in flight.

Clients send ``/v1/chat/completions`` and ``/api/chat``, streamed and not. Every answer's content
is derived from a nonce in the request, so each response is checked against what the backend sent.
Outcomes:

- succeeded: 200 and exactly the expected content, with the stream's proper end ([DONE] / done);
- failed (by reason): an error status with a body in the endpoint's dialect (``503 service_unavailable``),
  or a stream that visibly ended abnormally (no terminating chunk, or an in-band error event);
- lost: accepted but never answered (disconnect or no answer within ``--request-timeout``), a
  stream or body that looked complete but whose content was wrong, or an error body not in the
  endpoint's dialect. The goal is 0.
- not accepted: the connection was refused (after the SIGTERM: the listener is closed).

Only 127.0.0.1 is used; everything is bounded by ``--duration`` plus a drain allowance and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "chaos"
MODES = ("kill", "slow", "hang", "stall", "503")


# ------------------------------------------------------------------ fake backends


def pieces_for(nonce: str, count: int) -> list[str]:
    return [f"{nonce}.{i};" for i in range(count)]


@dataclass(eq=False)
class ChaosBackend:
    """One fake backend on a fixed port whose behaviour the schedule changes while it runs."""

    name: str
    port: int
    mode: str = "ok"  # ok | slow | hang | stall | 503 (kill stops the server instead)
    runner: web.AppRunner | None = None
    served: int = 0
    seen: set[str] = field(default_factory=set)  # nonces of the requests that reached it (shared by all boxes)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/version", self.version)
        app.router.add_get("/api/tags", self.tags)
        app.router.add_get("/api/ps", self.ps)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/api/chat", self.chat)
        return app

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.0, handler_cancellation=True)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def kill(self) -> None:
        runner, self.runner = self.runner, None
        if runner is not None:
            await runner.cleanup()  # listener closed, open connections (streams included) cut

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.12.3"})

    async def tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": f"{MODEL}:latest", "model": f"{MODEL}:latest"}]})

    async def ps(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": f"{MODEL}:latest", "model": f"{MODEL}:latest"}]})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        self.served += 1
        _, nonce, count = payload["messages"][-1]["content"].split()
        self.seen.add(nonce)
        pieces = pieces_for(nonce, int(count))
        openai = request.path.startswith("/v1/")
        mode = self.mode
        if mode == "hang":
            await asyncio.Event().wait()  # until the gateway gives up and closes the connection
        if mode == "503":
            return web.json_response({"error": "chaos: overloaded"}, status=503)
        stream = payload.get("stream", not openai)
        if not stream:
            if mode == "slow":
                await asyncio.sleep(0.05 * len(pieces))
            text = "".join(pieces)
            if openai:
                message = {"role": "assistant", "content": text}
                return web.json_response(
                    {
                        "id": nonce,
                        "object": "chat.completion",
                        "model": MODEL,
                        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    }
                )
            return web.json_response({"model": MODEL, "done": True, "message": {"role": "assistant", "content": text}})
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream" if openai else "application/x-ndjson"}
        )
        await response.prepare(request)
        for i, piece in enumerate(pieces):
            if self.mode == "stall" and i >= 2:
                await asyncio.Event().wait()  # goes quiet mid-stream: the gateway's idle timeout ends it
            if self.mode == "slow":
                await asyncio.sleep(0.05)
            if openai:
                chunk = {
                    "id": nonce,
                    "object": "chat.completion.chunk",
                    "model": MODEL,
                    "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
                }
                await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            else:
                chunk = {"model": MODEL, "done": False, "message": {"role": "assistant", "content": piece}}
                await response.write(json.dumps(chunk).encode() + b"\n")
            await asyncio.sleep(0.01)  # a token every 10 ms: streams overlap the chaos
        if openai:
            await response.write(b'data: {"id":"x","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
            await response.write(b"data: [DONE]\n\n")
        else:
            await response.write(
                json.dumps(
                    {
                        "model": MODEL,
                        "done": True,
                        "done_reason": "stop",
                        "message": {"role": "assistant", "content": ""},
                    }
                ).encode()
                + b"\n"
            )
        await response.write_eof()
        return response


# ------------------------------------------------------------------ clients


@dataclass
class Tally:
    sent: int = 0
    succeeded: int = 0
    not_accepted: int = 0
    failed: collections.Counter[str] = field(default_factory=collections.Counter)
    lost: collections.Counter[str] = field(default_factory=collections.Counter)
    lost_examples: list[str] = field(default_factory=list)
    draining: bool = False  # set at the SIGTERM: later outcomes are reported under "[drain]"
    forwarded: set[str] = field(default_factory=set)  # nonces any backend received

    def fail(self, reason: str) -> None:
        self.failed[("[drain] " if self.draining else "") + reason] += 1

    def lose(self, reason: str, detail: str) -> None:
        self.lost[("[drain] " if self.draining else "") + reason] += 1
        if len(self.lost_examples) < 10:
            self.lost_examples.append(f"{reason}: {detail}")


def dialect_error(openai: bool, status: int, body: bytes) -> str | None:
    """'STATUS type' when ``body`` is an error in the endpoint's dialect, else None."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if openai:
        err = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(err, dict) and isinstance(err.get("message"), str) and isinstance(err.get("type"), str):
            return f"{status} {err['type']}"
        return None
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return f"{status} ollama error"
    return None


def stream_content(openai: bool, raw: bytes) -> tuple[str, bool, bool]:
    """(content, ended properly, had an in-band error event) of a whole SSE or NDJSON body."""
    text, done, in_band = [], False, False
    if openai:
        for line in raw.split(b"\n"):
            if not line.startswith(b"data: "):
                continue
            data = line[6:]
            if data == b"[DONE]":
                done = True
                continue
            doc = json.loads(data)
            if "error" in doc:
                in_band = True
                continue
            for choice in doc.get("choices", []):
                text.append(choice.get("delta", {}).get("content") or "")
    else:
        for line in raw.split(b"\n"):
            if not line.strip():
                continue
            doc = json.loads(line)
            if "error" in doc:
                in_band = True
                continue
            text.append(doc.get("message", {}).get("content") or "")
            done = done or doc.get("done") is True
    return "".join(text), done, in_band


async def one_request(
    http: aiohttp.ClientSession, url: str, rng: random.Random, n: int, tally: Tally, timeout: float
) -> None:
    openai, stream = rng.random() < 0.5, rng.random() < 0.6
    count = rng.randint(3, 30)
    nonce = f"r{n}"
    expected = "".join(pieces_for(nonce, count))
    kind = ("openai" if openai else "ollama") + ("-stream" if stream else "")
    path = "/v1/chat/completions" if openai else "/api/chat"
    body = {"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": f"chaos {nonce} {count}"}]}
    tally.sent += 1
    try:
        async with asyncio.timeout(timeout):
            async with http.post(url + path, json=body) as resp:
                try:
                    raw = await resp.read()
                except aiohttp.ClientPayloadError:
                    tally.fail(f"{kind}: stream ended abnormally (no final chunk)")
                    return
                if resp.status != 200:
                    reason = dialect_error(openai, resp.status, raw)
                    if reason is None:
                        tally.lose("error not in the dialect", f"{kind} {resp.status} {raw[:120]!r}")
                    else:
                        tally.fail(reason)
                    return
                if stream:
                    try:
                        content, done, in_band = stream_content(openai, raw)
                    except ValueError:
                        tally.lose("unparseable stream", f"{kind} {raw[:120]!r}")
                        return
                    if in_band or not done:
                        tally.fail(f"{kind}: stream ended abnormally (in-band error)")
                        return
                else:
                    doc = json.loads(raw)
                    message = doc["choices"][0]["message"] if openai else doc["message"]
                    content = message["content"]
                if content != expected:
                    tally.lose("complete-looking but wrong content", f"{kind} {nonce}: {content[:80]!r}")
                    return
                tally.succeeded += 1
    except aiohttp.ClientConnectorError:
        tally.sent -= 1
        tally.not_accepted += 1
    except aiohttp.ClientOSError as exc:
        if "Can not write request body" not in str(exc):
            tally.lose("disconnected without an answer", f"{kind} {nonce}: {exc!r}")
        else:  # a keep-alive connection the gateway closed as the request went out: it never read it
            tally.sent -= 1
            tally.not_accepted += 1
    except TimeoutError:
        tally.lose(f"no answer within {timeout:g}s", f"{kind} {nonce}")
    except aiohttp.ServerDisconnectedError as exc:
        if tally.draining and nonce not in tally.forwarded:
            # An idle keep-alive connection the draining gateway closed as this request went out: it never
            # read it (had it read it, the drain would have let it finish or answered it in its dialect).
            tally.sent -= 1
            tally.not_accepted += 1
            return
        tally.lose("disconnected without an answer", f"{kind} {nonce}: {exc!r}")


async def client_loop(
    url: str, seed: int, stop: asyncio.Event, tally: Tally, counter: collections.abc.Iterator[int], timeout: float
) -> None:
    rng = random.Random(seed)
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            await one_request(http, url, rng, next(counter), tally, timeout)


# ------------------------------------------------------------------ schedule and gateway


async def chaos_schedule(
    backends: list[ChaosBackend], rng: random.Random, every: float, stop: asyncio.Event, events: list[str], start: float
) -> None:
    """Every ``every`` s: one backend misbehaves for a while (kill / slow / hang / stall / 503), then recovers."""
    pending: set[asyncio.Task[None]] = set()

    async def episode(backend: ChaosBackend, mode: str, length: float) -> None:
        events.append(f"{time.monotonic() - start:6.1f}s {backend.name}: {mode} for {length:.1f}s")
        if mode == "kill":
            await backend.kill()
        else:
            backend.mode = mode
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), length)
        if mode == "kill":
            await backend.start()
        backend.mode = "ok"

    while not stop.is_set():
        busy = {t.get_name() for t in pending if not t.done()}
        free = [b for b in backends if b.name not in busy]
        if free:
            backend = rng.choice(free)
            task = asyncio.create_task(episode(backend, rng.choice(MODES), rng.uniform(2.0, 5.0)), name=backend.name)
            pending.add(task)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
    await asyncio.gather(*pending)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: str, port: int, backends: list[ChaosBackend]) -> None:
    entries = "".join(
        f"""  - name: {b.name}
    url: http://127.0.0.1:{b.port}
    type: ollama
    timeouts: {{connect: 1s, first_byte: 2s, idle: 2s}}
    health_check: {{interval: 1s, timeout: 1s, rise: 1, fall: 2}}
    circuit: {{failures: 3, cooldown: 2s}}
"""
        for b in backends
    )
    with open(path, "w") as f:
        f.write(f"""server:
  host: 127.0.0.1
  port: {port}
  shutdown_timeout: 10s
backends:
{entries}routing:
  retries: 2
  discovery_interval: 5s
logging:
  level: warning
""")


async def wait_ready(url: str, proc: asyncio.subprocess.Process, limit: float) -> None:
    deadline = time.monotonic() + limit
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise SystemExit(f"the gateway exited at start (code {proc.returncode})")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url + "/readyz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise SystemExit("the gateway did not become ready")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    forwarded: set[str] = set()
    backends = [ChaosBackend(f"box{i}", free_port(), seen=forwarded) for i in range(3)]
    for b in backends:
        await b.start()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    workdir = tempfile.mkdtemp(prefix="gateway-chaos-")
    config = os.path.join(workdir, "gateway.yaml")
    write_config(config, port, backends)
    env = {**os.environ, "PYTHONPATH": REPO}
    log_path = os.path.join(workdir, "gateway.log")
    with open(log_path, "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "-c", config, stdout=log, stderr=log, env=env,
            start_new_session=True,
        )  # fmt: skip
    tally, events, sighups = Tally(forwarded=forwarded), [], 0
    try:
        await wait_ready(url, proc, 30.0)
        start = time.monotonic()
        stop_clients, stop_chaos = asyncio.Event(), asyncio.Event()
        counter = iter(range(10**9))
        clients = [
            asyncio.create_task(client_loop(url, args.seed * 1000 + i, stop_clients, tally, counter,
                                            args.request_timeout))
            for i in range(args.clients)
        ]  # fmt: skip
        chaos = asyncio.create_task(chaos_schedule(backends, rng, args.chaos_every, stop_chaos, events, start))
        while time.monotonic() - start < args.duration:
            await asyncio.sleep(min(args.sighup_every, max(args.duration - (time.monotonic() - start), 0.01)))
            if time.monotonic() - start < args.duration and proc.returncode is None:
                proc.send_signal(signal.SIGHUP)
                sighups += 1
        stop_chaos.set()
        await chaos  # every backend is back to normal: the drain below is about the gateway alone
        events.append(f"{time.monotonic() - start:6.1f}s SIGTERM (drain) with requests in flight")
        tally.draining = True
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)  # clients keep trying during the drain: new connections are refused
        stop_clients.set()
        await asyncio.wait_for(asyncio.gather(*clients), args.request_timeout + 15)
        code = await asyncio.wait_for(proc.wait(), 30)
        elapsed = time.monotonic() - start
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for b in backends:
            await b.kill()
    with open(log_path, errors="replace") as f:
        log_tail = f.read().splitlines()[-15:]
    return {
        "duration_s": round(elapsed, 1),
        "clients": args.clients,
        "sent": tally.sent,
        "succeeded": tally.succeeded,
        "failed": dict(tally.failed.most_common()),
        "failed_total": sum(tally.failed.values()),
        "lost": dict(tally.lost.most_common()),
        "lost_total": sum(tally.lost.values()),
        "lost_examples": tally.lost_examples,
        "not_accepted": tally.not_accepted,
        "sighups": sighups,
        "gateway_exit_code": code,
        "served_per_backend": {b.name: b.served for b in backends},
        "events": events,
        "gateway_log_tail": log_tail,
    }


def report(result: dict[str, Any]) -> str:
    lines = [
        f"chaos run: {result['duration_s']} s, {result['clients']} clients, {result['sighups']} SIGHUPs, "
        f"gateway exit code {result['gateway_exit_code']}",
        f"  sent       {result['sent']}",
        f"  succeeded  {result['succeeded']}",
        f"  failed     {result['failed_total']}",
        *(f"    {n:6d}  {reason}" for reason, n in result["failed"].items()),
        f"  lost       {result['lost_total']}",
        *(f"    {n:6d}  {reason}" for reason, n in result["lost"].items()),
        *(f"      e.g. {e}" for e in result["lost_examples"]),
        f"  not accepted (connection refused, or an idle keep-alive connection closed as the request went out):"
        f" {result['not_accepted']}",
        f"  served per backend: {result['served_per_backend']}",
        "  schedule:",
        *(f"    {e}" for e in result["events"]),
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of chaos (default 60)")
    parser.add_argument("--clients", type=int, default=12, help="concurrent client loops (default 12)")
    parser.add_argument("--chaos-every", type=float, default=3.0, help="seconds between chaos episodes")
    parser.add_argument("--sighup-every", type=float, default=4.0, help="seconds between SIGHUPs")
    parser.add_argument("--request-timeout", type=float, default=20.0, help="a request unanswered this long is lost")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    if args.duration <= 0 or args.clients <= 0:
        parser.error("--duration and --clients must be positive")
    result = asyncio.run(run(args))
    print(report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0 if result["lost_total"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
