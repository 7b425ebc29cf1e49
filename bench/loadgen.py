#!/usr/bin/env python3
"""Load generator for the gateway benchmark: a raw asyncio HTTP/1.1 client (uvloop when installed).

Raw `asyncio.Protocol` connections instead of an HTTP client library, so the load side stays cheap:
it shares a core with the fake backend, and it must hold 10,000 sockets in one process.

Modes (each prints one JSON object on stdout, a one-line summary on stderr, and stops by itself):

  ns      closed-loop non-streaming POSTs on C keep-alive connections for D seconds
          (the fallback when `wrk` is not installed): RPS and latency percentiles
  stream  C concurrent streams (SSE /v1/chat/completions or NDJSON /api/chat), each worker
          streaming back to back on its keep-alive connection until D seconds have passed; first
          streams staggered over one stream length so the load is a steady C open streams.
          Per stream: TTFB (response head), time to first content chunk, every content chunk's
          arrival, completeness (all chunks, usage, [DONE] / done=true)
  idle    opens N slow streams (1 chunk per --delay-ms), paced, then for --hold-s seconds counts
          how many are alive (a chunk within 2.5 gaps), then closes them all
  body    sequential POSTs of a large JSON body (a base64-looking string in a chat message);
          latency of each, and a check that the backend saw the whole content
  flood   N POSTs, each with its own random wrong API key, on C keep-alive connections: a credential
          flood. Counts the answers by status (and the gateway's 429 reasons), and their latency
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import resource
import secrets
import sys
import time
from collections.abc import Callable
from typing import Any

HOST = "127.0.0.1"
now = time.perf_counter


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000.0, 3)


def dist(values: list[float]) -> dict[str, float | None]:
    return {"p50": ms(pct(values, 50)), "p90": ms(pct(values, 90)), "p99": ms(pct(values, 99)),
            "max": ms(max(values) if values else None), "n": len(values)}


def count(d: dict[str, int], key: str) -> None:
    key = key[:160]
    d[key] = d.get(key, 0) + 1


# ---------------------------------------------------------------- wire
class Exchange:
    """One request/response. Subclasses override the callbacks they care about."""

    __slots__ = ("t0", "t_head", "t_end", "status", "error", "nbytes")

    def __init__(self) -> None:
        self.t0 = now()
        self.t_head = 0.0
        self.t_end = 0.0
        self.status = 0
        self.error: str | None = None
        self.nbytes = 0

    def on_head(self, t: float, status: int, headers: dict[bytes, bytes]) -> None:
        self.t_head, self.status = t, status

    def on_data(self, t: float, data: bytes) -> None:
        self.nbytes += len(data)

    def on_end(self, t: float) -> None:
        self.t_end = t

    def on_error(self, t: float, msg: str) -> None:
        self.t_end, self.error = t, msg


class Conn(asyncio.Protocol):
    """A client connection that parses responses incrementally (Content-Length, chunked, or close)."""

    HEAD, LENGTH, CHUNKED, CLOSE = range(4)

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.ex: Exchange | None = None
        self.state = Conn.HEAD
        self.left = 0  # LENGTH: body bytes left; CHUNKED: bytes left in the chunk (-1: size line next)
        self.crlf = False  # CHUNKED: a chunk's data is done, its CRLF is next
        self.keep = True
        self.lost = False
        self.after: Callable[[Conn, Exchange], None] | None = None  # called when a response ends

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, data: bytes, ex: Exchange) -> None:
        self.ex, self.state = ex, Conn.HEAD
        ex.t0 = now()
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        ex, self.ex = self.ex, None
        if ex is None:
            return
        t = now()
        if self.state == Conn.CLOSE:
            ex.on_end(t)
        else:
            ex.on_error(t, "connection closed" + (" before the response" if self.state == Conn.HEAD
                                                 else " mid-body") + (f": {exc}" if exc else ""))
        if self.after:
            self.after(self, ex)

    def finish(self, t: float) -> None:
        ex, self.ex = self.ex, None
        self.state = Conn.HEAD
        assert ex is not None
        ex.on_end(t)
        if not self.keep:
            self.close()
        if self.after:
            self.after(self, ex)

    def data_received(self, data: bytes) -> None:
        t = now()
        ex = self.ex
        if ex is None:
            return  # unsolicited bytes: ignore
        if self.state == Conn.LENGTH and not self.buf:  # fast path: body bytes only
            n = len(data)
            if n < self.left:
                self.left -= n
                ex.on_data(t, data)
                return
        self.buf += data
        while self.ex is not None and self.buf:
            if self.state == Conn.HEAD:
                if not self.parse_head(t):
                    return
            elif self.state == Conn.LENGTH:
                piece = bytes(self.buf[:self.left])
                del self.buf[:len(piece)]
                self.left -= len(piece)
                if piece:
                    self.ex.on_data(t, piece)
                if self.left == 0:
                    self.finish(t)
            elif self.state == Conn.CHUNKED:
                if not self.parse_chunk(t):
                    return
            else:  # CLOSE: body until the connection ends
                piece = bytes(self.buf)
                self.buf.clear()
                self.ex.on_data(t, piece)

    def parse_head(self, t: float) -> bool:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        lines = bytes(self.buf[:end]).split(b"\r\n")
        del self.buf[:end + 4]
        try:
            status = int(lines[0].split(b" ", 2)[1])
        except (IndexError, ValueError):
            assert self.ex is not None
            self.ex.on_error(t, f"bad status line {lines[0][:60]!r}")
            self.keep = False
            self.close()
            return False
        if 100 <= status < 200:
            return True  # 100 Continue: the real head follows
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers[k.strip().lower()] = v.strip()
        self.keep = b"close" not in headers.get(b"connection", b"").lower()
        assert self.ex is not None
        self.ex.on_head(t, status, headers)
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            self.state, self.left, self.crlf = Conn.CHUNKED, -1, False
        elif b"content-length" in headers:
            self.state, self.left = Conn.LENGTH, int(headers[b"content-length"])
            if self.left == 0:
                self.finish(t)
        elif status in (204, 304):
            self.finish(t)
        else:
            self.state, self.keep = Conn.CLOSE, False
        return True

    def parse_chunk(self, t: float) -> bool:
        buf = self.buf
        assert self.ex is not None
        if self.crlf:  # the CRLF after a chunk's data
            if len(buf) < 2:
                return False
            del buf[:2]
            self.crlf, self.left = False, -1
            return True
        if self.left < 0:  # a size line
            le = buf.find(b"\r\n")
            if le < 0:
                return False
            size = int(bytes(buf[:le]).split(b";")[0], 16)
            if size > 0:
                del buf[:le + 2]
                self.left = size
                return True
            if buf[le + 2:le + 4] == b"\r\n":  # last chunk, no trailers
                del buf[:le + 4]
            else:
                end = buf.find(b"\r\n\r\n", le)
                if end < 0:
                    return False
                del buf[:end + 4]
            self.finish(t)
            return True
        n = min(self.left, len(buf))  # chunk data: deliver what has arrived
        piece = bytes(buf[:n])
        del buf[:n]
        self.left -= n
        if self.left == 0:
            self.crlf = True
        self.ex.on_data(t, piece)
        return True


async def connect(port: int) -> Conn:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(Conn, HOST, port)
    return proto


def request_bytes(port: int, path: str, body: bytes, auth: str) -> bytes:
    auth_line = f"Authorization: Bearer {auth}\r\n" if auth else ""
    head = (f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\nAccept: */*\r\n"
            f"{auth_line}Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


def chat_body(model: str, stream: bool, chunks: int, delay_ms: float, ollama: bool, content: str = "",
              usage: bool = True) -> bytes:
    msgs = [{"role": "user", "content": content or "Say hello in one short sentence."}]
    body: dict[str, Any] = {"model": model, "messages": msgs, "stream": stream,
                            "fake_chunks": chunks, "fake_delay_ms": delay_ms}
    if not ollama:
        body["max_tokens"] = chunks
        if stream and usage:
            body["stream_options"] = {"include_usage": True}
    return json.dumps(body, separators=(",", ":")).encode()


# ---------------------------------------------------------------- ns
async def mode_ns(a: argparse.Namespace) -> dict[str, Any]:
    req = request_bytes(a.port, "/v1/chat/completions", chat_body(a.model, False, a.chunks, 0, False), a.auth)
    lat: list[float] = []
    errors: dict[str, int] = {}
    state = {"reconnects": 0, "outstanding": 0}
    loop = asyncio.get_running_loop()
    all_done = loop.create_future()
    t_start = now()
    deadline = t_start + a.duration

    def after(conn: Conn, ex: Exchange) -> None:
        t = ex.t_end
        if ex.error is None and ex.status == 200:
            if t <= deadline:
                lat.append(t - ex.t0)
        else:
            count(errors, ex.error or f"HTTP {ex.status}")
        if t < deadline and not conn.lost and conn.keep:
            conn.send(req, Exchange())
            return
        if t < deadline:
            state["reconnects"] += 1
            loop.create_task(fresh())
            return
        state["outstanding"] -= 1
        if state["outstanding"] == 0 and not all_done.done():
            all_done.set_result(None)

    async def fresh() -> None:
        try:
            c = await connect(a.port)
        except OSError as e:
            count(errors, f"connect: {e}")
            await asyncio.sleep(0.05)
            if now() < deadline:
                loop.create_task(fresh())
                return
            state["outstanding"] -= 1
            if state["outstanding"] == 0 and not all_done.done():
                all_done.set_result(None)
            return
        c.after = after
        c.send(req, Exchange())

    state["outstanding"] = a.concurrency
    for _ in range(a.concurrency):
        loop.create_task(fresh())
    try:
        await asyncio.wait_for(all_done, a.duration + 15)
    except TimeoutError:
        count(errors, "requests still open 15 s after the end")
    wall = min(now(), deadline) - t_start
    return {"mode": "ns", "concurrency": a.concurrency, "requests": len(lat), "duration_s": round(wall, 3),
            "rps": len(lat) / wall if wall > 0 else 0.0, "latency_ms": dist(lat), "errors": errors,
            "error_count": sum(errors.values()), "reconnects": state["reconnects"]}


# ---------------------------------------------------------------- streams
class StreamEx(Exchange):
    __slots__ = ("ollama", "pending", "chunks", "coalesced", "done", "usage", "on_chunk")

    def __init__(self, ollama: bool, on_chunk: Callable[[StreamEx, float], None] | None = None) -> None:
        super().__init__()
        self.ollama = ollama
        self.pending = b""
        self.chunks: list[float] = []  # arrival time of each content chunk
        self.coalesced = 0  # content chunks that arrived in the same read as the previous one
        self.done = False
        self.usage = False
        self.on_chunk = on_chunk

    def on_data(self, t: float, data: bytes) -> None:
        self.nbytes += len(data)
        if self.status != 200:
            return
        data = self.pending + data
        lines = data.split(b"\n")
        self.pending = lines.pop()
        first_in_read = True
        for line in lines:
            line = line.strip()
            if not line:
                continue
            try:
                if self.ollama:
                    obj = json.loads(line)
                    if obj.get("done"):
                        self.done = True
                        self.usage = "eval_count" in obj and "prompt_eval_count" in obj
                        continue
                    msg = obj.get("message") or {}
                    content = msg.get("content") if isinstance(msg, dict) else obj.get("response")
                else:
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        self.done = True
                        continue
                    obj = json.loads(payload)
                    if obj.get("usage"):
                        self.usage = True
                    ch = obj.get("choices") or ()
                    content = (ch[0].get("delta") or {}).get("content") if ch else None
            except (ValueError, AttributeError, TypeError) as e:
                self.error = self.error or f"unparsable line: {e}"
                continue
            if content:
                if not first_in_read:
                    self.coalesced += 1
                first_in_read = False
                self.chunks.append(t)
                if self.on_chunk is not None:
                    self.on_chunk(self, t)

    def on_end(self, t: float) -> None:
        self.t_end = t


def summarize_streams(streams: list[StreamEx], chunks: int, delay_s: float, want_usage: bool) -> dict[str, Any]:
    ok: list[StreamEx] = []
    errors: dict[str, int] = {}
    for s in streams:
        if s.error is None and s.status == 200 and len(s.chunks) == chunks and s.done and (s.usage or not want_usage):
            ok.append(s)
        elif s.status not in (0, 200):
            count(errors, f"HTTP {s.status}")
        else:
            count(errors, s.error or f"incomplete ({len(s.chunks)}/{chunks} chunks, done={s.done}, usage={s.usage})")
    gaps: list[float] = []
    spreads: list[float] = []
    coalesced = 0
    for s in ok:
        c = s.chunks
        gaps.extend(c[i] - c[i - 1] for i in range(1, len(c)))
        if len(c) > 1 and delay_s > 0:
            spreads.append((c[-1] - c[0]) / ((len(c) - 1) * delay_s))
        coalesced += s.coalesced
    n_chunks = sum(len(s.chunks) for s in ok)
    spread = pct(spreads, 50)
    co_pct = 100.0 * coalesced / n_chunks if n_chunks else None
    if spread is None:
        delivery = None
    elif spread < 0.5:
        delivery = "buffered"  # held back and released together
    elif co_pct is not None and co_pct > 20.0:
        delivery = "bursty"  # spread over the stream but often glued together: the proxy falls behind
    else:
        delivery = "live"
    return {"streams": len(streams), "ok": len(ok), "errors": errors, "content_chunks": n_chunks,
            "ttfb_ms": dist([s.t_head - s.t0 for s in ok]),
            "ttfc_ms": dist([s.chunks[0] - s.t0 for s in ok]),
            "gap_ms": dist(gaps), "spread_p50": None if spread is None else round(spread, 3),
            "coalesced_pct": None if co_pct is None else round(co_pct, 2), "delivery": delivery}


async def mode_stream(a: argparse.Namespace) -> dict[str, Any]:
    ollama = a.protocol == "ndjson"
    path = "/api/chat" if ollama else "/v1/chat/completions"
    req = request_bytes(a.port, path, chat_body(a.model, True, a.chunks, a.delay_ms, ollama), a.auth)
    delay_s = a.delay_ms / 1000.0
    streams: list[StreamEx] = []
    t_start = now()
    deadline = t_start + a.duration
    span = (a.chunks - 1) * delay_s
    loop = asyncio.get_running_loop()

    async def worker(i: int) -> None:
        await asyncio.sleep(i * span / a.concurrency)
        conn: Conn | None = None
        while now() < deadline:
            if conn is None or conn.lost or not conn.keep:
                if conn is not None:
                    conn.close()
                try:
                    conn = await connect(a.port)
                except OSError as e:
                    ex = StreamEx(ollama)
                    ex.error = f"connect: {e}"
                    streams.append(ex)
                    await asyncio.sleep(0.05)
                    continue
            fut = loop.create_future()
            conn.after = lambda c, ex, f=fut: f.done() or f.set_result(None)
            ex = StreamEx(ollama)
            streams.append(ex)
            conn.send(req, ex)
            try:
                await asyncio.wait_for(fut, a.stream_timeout)
            except TimeoutError:
                ex.error = f"stream timeout ({a.stream_timeout:g}s)"
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    await asyncio.gather(*(worker(i) for i in range(a.concurrency)))
    out = summarize_streams(streams, a.chunks, delay_s, not ollama)
    out.update({"mode": "stream", "protocol": a.protocol, "concurrency": a.concurrency, "chunks": a.chunks,
                "delay_ms": a.delay_ms, "wall_s": round(now() - t_start, 3)})
    return out


# ---------------------------------------------------------------- idle streams
async def mode_idle(a: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    delay_s = a.delay_ms / 1000.0
    chunks = int((a.ramp_max_s + a.hold_s + 30) / delay_s) + 1
    req = request_bytes(a.port, "/v1/chat/completions", chat_body(a.model, True, chunks, a.delay_ms, False), a.auth)
    last: dict[int, float] = {}
    gaps: list[float] = []
    measuring = [False]
    waiting = [0]  # opened, no first chunk yet
    slot = asyncio.Event()
    conns: list[Conn] = []
    exes: list[StreamEx] = []
    errors: dict[str, int] = {}

    def on_chunk(ex: StreamEx, t: float) -> None:
        k = id(ex)
        prev = last.get(k)
        if prev is None:
            waiting[0] -= 1
            slot.set()
        elif measuring[0]:
            gaps.append(t - prev)
        last[k] = t

    def after(conn: Conn, ex: Exchange) -> None:
        if id(ex) not in last:
            waiting[0] -= 1
            slot.set()

    async def open_one() -> None:
        ex = StreamEx(False, on_chunk)
        exes.append(ex)
        try:
            conn = await asyncio.wait_for(connect(a.port), 10)
        except (TimeoutError, OSError) as e:
            ex.error = "connect: %s" % (e or type(e).__name__)
            waiting[0] -= 1
            slot.set()
            return
        conn.after = after
        conns.append(conn)
        conn.send(req, ex)

    t0 = now()
    open_deadline = t0 + a.ramp_max_s
    step = 1.0 / a.rate
    tasks = []
    for i in range(a.streams):
        wait = t0 + i * step - now()
        if wait > 0:
            await asyncio.sleep(wait)
        while waiting[0] >= a.inflight and now() < open_deadline:
            slot.clear()
            try:
                await asyncio.wait_for(slot.wait(), max(0.01, open_deadline - now()))
            except TimeoutError:
                pass
        if now() >= open_deadline:
            break
        waiting[0] += 1
        tasks.append(loop.create_task(open_one()))
    opened = len(tasks)
    ramp_s = now() - t0
    settle_end = now() + max(3.0, 2.5 * delay_s)
    while waiting[0] > 0 and now() < settle_end:
        await asyncio.sleep(0.1)
    measuring[0] = True
    window = 2.5 * delay_s
    samples = []
    hold_end = now() + a.hold_s
    while True:
        t = now()
        alive = sum(1 for ex in exes if ex.error is None and ex.t_end == 0.0 and t - last.get(id(ex), -1e9) <= window)
        samples.append(alive)
        if t >= hold_end:
            break
        await asyncio.sleep(min(0.5, hold_end - t))
    measuring[0] = False
    for ex in exes:
        if ex.error is not None:
            count(errors, ex.error)
        elif ex.status not in (0, 200):
            count(errors, f"HTTP {ex.status}")
        elif ex.t_end:
            count(errors, "stream ended early")
    for c in conns:
        c.close()
    await asyncio.sleep(0.2)
    started = sum(1 for ex in exes if ex.chunks)
    return {"mode": "idle", "target": a.streams, "opened": opened, "connected": len(conns), "started": started,
            "ramp_s": round(ramp_s, 3), "hold_s": a.hold_s, "held_min": min(samples) if samples else 0,
            "held_max": max(samples) if samples else 0, "errors": errors,
            "ttfb_ms": dist([ex.t_head - ex.t0 for ex in exes if ex.t_head]),
            "ttfc_ms": dist([ex.chunks[0] - ex.t0 for ex in exes if ex.chunks]),
            "hold_gap_ms": dist(gaps)}


# ---------------------------------------------------------------- large body
class BodyEx(Exchange):
    __slots__ = ("body",)

    def __init__(self) -> None:
        super().__init__()
        self.body = bytearray()

    def on_data(self, t: float, data: bytes) -> None:
        self.body += data


def big_content(nbytes: int) -> str:
    rnd = random.Random(20261125)
    return base64.b64encode(rnd.randbytes(nbytes * 3 // 4)).decode()


async def mode_body(a: argparse.Namespace) -> dict[str, Any]:
    import zlib
    content = big_content(int(a.body_mb * 1024 * 1024))
    body = chat_body(a.model, False, 16, 0, False, content=content)
    req = request_bytes(a.port, "/v1/chat/completions", body, a.auth)
    want = {"content_chars": len(content), "content_crc32": zlib.crc32(content.encode())}
    lat: list[float] = []
    errors: dict[str, int] = {}
    conn: Conn | None = None
    loop = asyncio.get_running_loop()
    for i in range(a.requests + 1):  # the first one warms up, not counted
        if conn is None or conn.lost or not conn.keep:
            conn = await connect(a.port)
        fut = loop.create_future()
        conn.after = lambda c, ex, f=fut: f.done() or f.set_result(None)
        ex = BodyEx()
        conn.send(req, ex)
        try:
            await asyncio.wait_for(fut, 60)
        except TimeoutError:
            ex.error = "timeout (60 s)"
            conn.close()
            conn = None
        if ex.error is None and ex.status == 200:
            try:
                got = json.loads(bytes(ex.body)).get("fake_check")
            except ValueError:
                got = None
            if got != want:
                ex.error = f"backend saw different content: {got}"
        if i == 0:
            continue
        if ex.error is None and ex.status == 200:
            lat.append(ex.t_end - ex.t0)
        else:
            count(errors, ex.error or f"HTTP {ex.status}: {bytes(ex.body[:120]).decode('utf-8', 'replace')}")
    if conn is not None:
        conn.close()
    return {"mode": "body", "request_bytes": len(req), "requests": a.requests, "ok": len(lat),
            "latency_ms": dist(lat), "min_ms": ms(min(lat) if lat else None), "errors": errors}


# ---------------------------------------------------------------- credential flood
class FloodEx(Exchange):
    __slots__ = ("body",)

    def __init__(self) -> None:
        super().__init__()
        self.body = b""

    def on_data(self, t: float, data: bytes) -> None:
        if len(self.body) < 512:
            self.body += data[:512]


def reject_reason(status: int, body: bytes) -> str:
    """The gateway's reason for a 429, from its message (anything else: the status alone)."""
    if status != 429:
        return str(status)
    text = body.decode("utf-8", "replace").lower()
    if "in progress" in text:
        return "429 checks busy"  # auth.max_pending bcrypt checks already queued or running
    if "failed authentication" in text:
        return "429 failure budget"  # this source's failures are used up
    return "429 other"


async def mode_flood(a: argparse.Namespace) -> dict[str, Any]:
    """a.requests POSTs with as many distinct random wrong keys, a.concurrency at a time."""
    body = chat_body(a.model, False, 16, 0, False)
    # Shaped like the bench's real key (sk-bench-<32 hex>): the gateway takes the same path for both.
    keys = [f"sk-bench-{secrets.token_hex(16)}" for _ in range(a.requests)]
    status: dict[str, int] = {}
    reasons: dict[str, int] = {}
    errors: dict[str, int] = {}
    lat: list[float] = []
    loop = asyncio.get_running_loop()
    nxt = [0]
    t_start = now()

    async def worker() -> None:
        conn: Conn | None = None
        while nxt[0] < len(keys):
            key = keys[nxt[0]]
            nxt[0] += 1
            if conn is None or conn.lost or not conn.keep:
                if conn is not None:
                    conn.close()
                try:
                    conn = await asyncio.wait_for(connect(a.port), 10)
                except (TimeoutError, OSError) as e:
                    count(errors, "connect: %s" % (e or type(e).__name__))
                    conn = None
                    continue
            fut = loop.create_future()
            conn.after = lambda c, ex, f=fut: f.done() or f.set_result(None)
            ex = FloodEx()
            conn.send(request_bytes(a.port, "/v1/chat/completions", body, key), ex)
            try:
                await asyncio.wait_for(fut, a.stream_timeout)
            except TimeoutError:
                ex.error = f"timeout ({a.stream_timeout:g}s)"
                conn.close()
                conn = None
            if ex.error is not None:
                count(errors, ex.error)
                continue
            count(status, str(ex.status))
            count(reasons, reject_reason(ex.status, ex.body))
            lat.append(ex.t_end - ex.t0)
        if conn is not None:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(min(a.concurrency, len(keys)))))
    return {"mode": "flood", "requests": len(keys), "concurrency": a.concurrency, "answered": len(lat),
            "status": status, "reasons": reasons, "errors": errors, "error_count": sum(errors.values()),
            "latency_ms": dist(lat), "wall_s": round(now() - t_start, 3)}


# ---------------------------------------------------------------- main
MODES = {"ns": mode_ns, "stream": mode_stream, "idle": mode_idle, "body": mode_body, "flood": mode_flood}


def human(out: dict[str, Any]) -> str:
    m, o = out["mode"], out
    if m == "ns":
        lat = o["latency_ms"]
        return (f"ns c={o['concurrency']}: {o['rps']:.0f} rps p50 {lat['p50']} ms p99 {lat['p99']} ms, "
                f"errors {o['errors']}")
    if m == "stream":
        return (f"{o['protocol']} c={o['concurrency']}: {o['ok']}/{o['streams']} ok, "
                f"ttfb p50 {o['ttfb_ms']['p50']} ms, gap p99 {o['gap_ms']['p99']} ms, {o['delivery']}, "
                f"errors {o['errors']}")
    if m == "idle":
        return (f"idle {o['target']}: opened {o['opened']} in {o['ramp_s']:.1f}s, started {o['started']}, "
                f"held {o['held_min']}-{o['held_max']}, gap p99 {o['hold_gap_ms']['p99']} ms, "
                f"errors {o['errors']}")
    if m == "flood":
        return (f"flood {o['requests']} wrong keys c={o['concurrency']}: {o['status']} in {o['wall_s']:.2f}s, "
                f"p50 {o['latency_ms']['p50']} ms p99 {o['latency_ms']['p99']} ms, reasons {o['reasons']}, "
                f"errors {o['errors']}")
    return (f"body {o['request_bytes']} B: {o['ok']}/{o['requests']} ok, p50 {o['latency_ms']['p50']} ms, "
            f"errors {o['errors']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="raw asyncio load generator for the gateway benchmark")
    p.add_argument("mode", choices=sorted(MODES))
    p.add_argument("--port", type=int, required=True, help="target port on 127.0.0.1")
    p.add_argument("--auth", default="", help="API key, sent as Authorization: Bearer")
    p.add_argument("--model", default="fake")
    p.add_argument("-c", "--concurrency", type=int, default=64)
    p.add_argument("--duration", type=float, default=5.0, help="ns/stream: seconds (no new request after)")
    p.add_argument("--chunks", type=int, default=50, help="ns: completion tokens; stream: content chunks")
    p.add_argument("--delay-ms", type=float, default=20.0, help="stream/idle: gap between chunks")
    p.add_argument("--protocol", choices=("sse", "ndjson"), default="sse")
    p.add_argument("--stream-timeout", type=float, default=30.0, help="stream: per stream; flood: per request")
    p.add_argument("--streams", type=int, default=10000, help="idle: streams to open")
    p.add_argument("--rate", type=float, default=1000.0, help="idle: opens per second at most")
    p.add_argument("--inflight", type=int, default=500, help="idle: at most this many waiting for a first chunk")
    p.add_argument("--ramp-max-s", type=float, default=30.0, help="idle: stop opening after this")
    p.add_argument("--hold-s", type=float, default=8.0, help="idle: measuring window")
    p.add_argument("--body-mb", type=float, default=5.0, help="body: size of the message content")
    p.add_argument("--requests", type=int, default=8,
                   help="body: measured requests (plus one warm-up); flood: requests (one wrong key each)")
    p.add_argument("--max-s", type=float, default=180.0, help="hard stop for the whole run")
    return p.parse_args(argv)


async def run(a: argparse.Namespace) -> dict[str, Any]:
    return await asyncio.wait_for(MODES[a.mode](a), a.max_s)


def main() -> None:
    a = parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop
        out = uvloop.run(run(a))
    except ImportError:
        out = asyncio.run(run(a))
    out["fd_limit"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    print(json.dumps(out), flush=True)
    print(human(out), file=sys.stderr)


if __name__ == "__main__":
    main()
