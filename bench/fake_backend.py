#!/usr/bin/env python3
"""A fast fake LLM server for the gateway benchmark (raw asyncio Protocol, uvloop when installed).

It has to be much cheaper than any proxy put in front of it, so it is written against the
transport directly: an incremental HTTP/1.1 parser (keep-alive, pipelining, Content-Length and
chunked request bodies of any size, `Expect: 100-continue`) and streams driven by `loop.call_at`
timers instead of one task per stream, so 10,000 open streams cost little.

Endpoints:
  POST /v1/chat/completions   JSON with `usage`, or SSE when `"stream": true`: N content chunks
                              on an absolute schedule (chunk k at t0 + k*delay, no drift), a
                              finish chunk, a usage chunk when `stream_options.include_usage`,
                              then `data: [DONE]`
  POST /api/chat              Ollama NDJSON (default) or one JSON object when `"stream": false`;
                              the final object has done=true, prompt_eval_count, eval_count,
                              eval_duration, total_duration
  POST /api/generate          same, with `response` instead of `message`
  GET  /v1/models, /api/tags, /api/ps, /api/version, /, /health
  GET  /fake/stats            requests served, streams started and open now (for leak checks)

Stream shape per request, first match wins: query `?chunks=&delay_ms=`, headers
`X-Fake-Chunks`/`X-Fake-Delay-Ms`, body fields `fake_chunks`/`fake_delay_ms`, a model name
ending in `-c<chunks>-d<delay_ms>` (e.g. `fake-c50-d20`), then --chunks/--delay-ms.
`fake_latency_ms` delays the response head (time to first byte), streamed or not.

Large requests: the answer carries `fake_check: {content_chars, content_crc32}` for the last
message's content when it is longer than 4 KiB, so the bench can prove a 5 MB body arrived intact.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import signal
import time
import zlib
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024 * 1024
MAX_CHUNKS = 100_000
CHECK_ABOVE = 4096
SHAPE_IN_NAME = re.compile(r"-c(\d+)-d(\d+(?:\.\d+)?)$")
REASON = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
          413: "Payload Too Large", 431: "Request Header Fields Too Large"}


class Settings:
    chunks = 50
    delay_ms = 20.0
    models: list[str] = ["fake", "llama3.2:3b"]


class Stats:
    requests = 0
    streams = 0
    open_streams = 0
    body_bytes = 0
    biggest_body = 0


_seq = 0


def next_id() -> str:
    global _seq
    _seq += 1
    return f"{int(time.time()):x}{_seq:06x}"


def tokens(n: int) -> str:
    return "".join(f"t{i} " for i in range(n))


def iso_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def last_content(body: dict[str, Any]) -> str:
    msgs = body.get("messages")
    if isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict):
        c = msgs[-1].get("content")
        if isinstance(c, str):
            return c
    p = body.get("prompt")
    return p if isinstance(p, str) else ""


def prompt_tokens(body: dict[str, Any]) -> int:
    n = 0
    msgs = body.get("messages")
    if isinstance(msgs, list):
        for m in msgs:
            c = m.get("content") if isinstance(m, dict) else None
            if isinstance(c, str):
                n += len(c)
    else:
        n = len(last_content(body))
    return max(1, n // 4)


def content_check(body: dict[str, Any]) -> dict[str, int] | None:
    c = last_content(body)
    if len(c) <= CHECK_ABOVE:
        return None
    return {"content_chars": len(c), "content_crc32": zlib.crc32(c.encode())}


def latency(body: dict[str, Any]) -> float:
    try:
        return max(0.0, float(body.get("fake_latency_ms") or 0)) / 1000.0
    except (TypeError, ValueError):
        return 0.0


def stream_shape(query: dict[str, str], headers: dict[str, str], body: dict[str, Any]) -> tuple[int, float]:
    chunks: Any = query.get("chunks") or headers.get("x-fake-chunks") or body.get("fake_chunks")
    delay: Any = query.get("delay_ms") or headers.get("x-fake-delay-ms")
    if delay is None:
        delay = body.get("fake_delay_ms")
    m = SHAPE_IN_NAME.search(str(body.get("model") or ""))
    if m:
        chunks = chunks if chunks is not None else m.group(1)
        delay = delay if delay is not None else m.group(2)
    n = Settings.chunks if chunks is None else int(chunks)
    d = Settings.delay_ms if delay is None else float(delay)
    return max(1, min(MAX_CHUNKS, n)), max(0.0, d) / 1000.0


class Stream:
    """A response in progress: `lead` (the head), then frame(0..n-1) at start + k*delay, then the tail.

    Driven by loop timers, not a task: 10,000 idle streams are 10,000 TimerHandles.
    """

    __slots__ = ("conn", "lead", "frame", "tail", "n", "delay", "start", "k", "handle", "chunked")

    def __init__(self, conn: Conn, lead: bytes, frame: Callable[[int], bytes], tail: Callable[[], bytes],
                 n: int, delay: float, chunked: bool) -> None:
        self.conn, self.lead, self.frame, self.tail, self.n, self.delay = conn, lead, frame, tail, n, delay
        self.chunked = chunked
        self.k = 0
        self.start = 0.0
        self.handle: asyncio.TimerHandle | None = None

    def run(self, wait: float) -> None:
        self.start = self.conn.loop.time() + wait
        if wait > 0:
            self.handle = self.conn.loop.call_at(self.start, self.tick)
        else:
            self.tick()

    def wrap(self, data: bytes) -> bytes:
        if not self.chunked or not data:
            return data
        return b"%x\r\n%s\r\n" % (len(data), data)

    def tick(self) -> None:
        self.handle = None
        conn = self.conn
        if conn.closed:
            return
        lead, self.lead = self.lead, b""
        if self.delay == 0.0:  # everything at once
            out = lead + b"".join(self.wrap(self.frame(k)) for k in range(self.k, self.n))
            self.k = self.n
        else:
            out = lead + self.wrap(self.frame(self.k))
            self.k += 1
        if self.k < self.n:
            conn.transport.write(out)
            self.handle = conn.loop.call_at(self.start + self.k * self.delay, self.tick)
            return
        conn.transport.write(out + self.wrap(self.tail()) + (b"0\r\n\r\n" if self.chunked else b""))
        conn.stream_done()

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


class Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.loop = asyncio.get_event_loop()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.buf = bytearray()
        self.closed = False
        self.stream: Stream | None = None  # a response in progress: later requests wait
        self.pending: tuple[str, str, str, dict[str, str]] | None = None  # head parsed, body not yet
        self.need = 0  # Content-Length body still missing
        self.chunk_left: int | None = None  # chunked request body: bytes left in the current chunk
        self.chunked_body: bytearray | None = None
        self.keep = True

    # transport callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.stream is not None:
            self.stream.cancel()
            self.stream = None
            Stats.open_streams -= 1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.stream is None:
            self.process()

    # request parsing
    def process(self) -> None:
        while self.stream is None and not self.closed:
            if self.pending is None and not self.read_head():
                return
            body = self.read_body()
            if body is None:
                return
            head, self.pending = self.pending, None
            assert head is not None
            self.dispatch(*head, body)

    def read_head(self) -> bool:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEAD:
                self.fail(431, "request head too large")
            return False
        lines = self.buf[:end].decode("latin-1").split("\r\n")
        del self.buf[:end + 4]
        parts = lines[0].split(" ")
        if len(parts) != 3:
            self.fail(400, "bad request line")
            return False
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                self.fail(400, "bad header line")
                return False
            headers[name.strip().lower()] = value.strip()
        conn = headers.get("connection", "").lower()
        self.keep = ("keep-alive" in conn) if version == "HTTP/1.0" else ("close" not in conn)
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self.chunked_body, self.chunk_left = bytearray(), None
        else:
            self.chunked_body = None
            try:
                self.need = int(headers.get("content-length") or 0)
            except ValueError:
                self.fail(400, "bad content-length")
                return False
            if self.need > MAX_BODY:
                self.fail(413, "body too large")
                return False
        self.pending = (method, target, version, headers)
        if headers.get("expect", "").lower() == "100-continue":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return True

    def read_body(self) -> bytes | None:
        buf = self.buf
        if self.chunked_body is None:
            if len(buf) < self.need:
                return None
            body = bytes(buf[:self.need])
            del buf[:self.need]
            self.need = 0
            return body
        out = self.chunked_body
        while True:
            if self.chunk_left is None:
                le = buf.find(b"\r\n")
                if le < 0:
                    return None
                try:
                    size = int(bytes(buf[:le]).split(b";")[0], 16)
                except ValueError:
                    self.fail(400, "bad chunk size")
                    return None
                if size == 0:  # last chunk, then optional trailers and an empty line
                    end = buf.find(b"\r\n\r\n") if not buf.startswith(b"0\r\n\r\n") else le
                    if end < 0:
                        return None
                    del buf[:end + 4]
                    self.chunked_body = None
                    return bytes(out)
                del buf[:le + 2]
                self.chunk_left = size
            if len(buf) < self.chunk_left + 2:
                return None
            out += buf[:self.chunk_left]
            del buf[:self.chunk_left + 2]
            self.chunk_left = None
            if len(out) > MAX_BODY:
                self.fail(413, "body too large")
                return None

    # responses
    def fail(self, status: int, message: str) -> None:
        self.keep = False
        self.send(status, dumps({"error": {"message": message}}))

    def send(self, status: int, body: bytes, ctype: bytes = b"application/json") -> None:
        head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n" % (
            status, REASON.get(status, "OK").encode(), ctype, len(body),
            b"" if self.keep else b"Connection: close\r\n")
        self.transport.write(head + body)
        if not self.keep:
            self.closed = True
            self.transport.close()

    def start_stream(self, version: str, ctype: bytes, frame: Callable[[int], bytes],
                     tail: Callable[[], bytes], n: int, delay: float, wait: float) -> None:
        chunked = version != "HTTP/1.0"
        if not chunked:
            self.keep = False
        head = b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nCache-Control: no-cache\r\n%s%s\r\n" % (
            ctype, b"Transfer-Encoding: chunked\r\n" if chunked else b"",
            b"" if self.keep else b"Connection: close\r\n")
        Stats.streams += 1
        self.begin(head, frame, tail, n, delay, chunked, wait)

    def begin(self, lead: bytes, frame: Callable[[int], bytes], tail: Callable[[], bytes],
              n: int, delay: float, chunked: bool, wait: float) -> None:
        Stats.open_streams += 1
        self.stream = Stream(self, lead, frame, tail, n, delay, chunked)
        self.stream.run(wait)  # may finish at once (and clear self.stream)

    def stream_done(self) -> None:
        self.stream = None
        Stats.open_streams -= 1
        if not self.keep:
            self.closed = True
            self.transport.close()
        elif self.buf:
            self.loop.call_soon(self.process)

    def dispatch(self, method: str, target: str, version: str, headers: dict[str, str], raw: bytes) -> None:
        Stats.requests += 1
        Stats.body_bytes += len(raw)
        Stats.biggest_body = max(Stats.biggest_body, len(raw))
        path, _, qs = target.partition("?")
        if method == "GET" or method == "HEAD":
            return self.get(path, method == "HEAD")
        if method != "POST":
            return self.send(405, dumps({"error": {"message": "method not allowed"}}))
        if path not in ("/v1/chat/completions", "/chat/completions", "/api/chat", "/api/generate"):
            return self.send(404, dumps({"error": {"message": "not found: " + path}}))
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError as e:
            return self.send(400, dumps({"error": {"message": f"bad JSON: {e}"}}))
        n, delay = stream_shape(dict(parse_qsl(qs)) if qs else {}, headers, body)
        if path.endswith("/chat/completions"):
            if body.get("stream"):
                return self.openai_stream(version, body, n, delay)
            return self.later(body, self.openai_json(body, n))
        if body.get("stream", True):
            return self.ollama_stream(version, body, n, delay, path == "/api/generate")
        return self.later(body, self.ollama_final(body, n, tokens(n), 0,
                                                  path == "/api/generate"))

    def later(self, body: dict[str, Any], payload: bytes) -> None:
        wait = latency(body)
        if wait <= 0:
            return self.send(200, payload)
        response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
            len(payload), b"" if self.keep else b"Connection: close\r\n", payload)
        self.begin(b"", lambda k: response, lambda: b"", 1, 0.0, False, wait)

    def get(self, path: str, head_only: bool) -> None:
        models = Settings.models
        if path in ("/v1/models", "/models"):
            obj: Any = {"object": "list", "data": [
                {"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"} for m in models]}
        elif path in ("/api/tags", "/api/ps"):
            obj = {"models": [{"name": m if ":" in m else m + ":latest", "model": m if ":" in m else m + ":latest",
                               "modified_at": "2024-01-01T00:00:00Z", "size": 1, "digest": "0" * 64,
                               "details": {"format": "gguf", "family": "fake", "parameter_size": "1B",
                                           "quantization_level": "Q4_0"}} for m in models]}
        elif path == "/api/version":
            obj = {"version": "0.0.0-fake"}
        elif path in ("/", "/health"):
            return self.send(200, b"" if head_only else b"Ollama is running", b"text/plain; charset=utf-8")
        elif path == "/fake/stats":
            obj = {k: getattr(Stats, k) for k in ("requests", "streams", "open_streams", "body_bytes",
                                                  "biggest_body")}
        else:
            return self.send(404, dumps({"error": {"message": "not found: " + path}}))
        self.send(200, dumps(obj))

    # the two dialects
    def openai_json(self, body: dict[str, Any], n: int) -> bytes:
        pt = prompt_tokens(body)
        out: dict[str, Any] = {
            "id": "chatcmpl-" + next_id(), "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model") or "fake",
            "choices": [{"index": 0, "message": {"role": "assistant",
                                                 "content": tokens(n)},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": pt, "completion_tokens": n, "total_tokens": pt + n}}
        check = content_check(body)
        if check:
            out["fake_check"] = check
        return dumps(out)

    def openai_stream(self, version: str, body: dict[str, Any], n: int, delay: float) -> None:
        so = body.get("stream_options")
        usage = isinstance(so, dict) and bool(so.get("include_usage"))
        model = json.dumps(body.get("model") or "fake")
        prefix = (f'data: {{"id":"chatcmpl-{next_id()}","object":"chat.completion.chunk",'
                  f'"created":{int(time.time())},"model":{model},').encode()

        def frame(k: int) -> bytes:
            role = b'"role":"assistant",' if k == 0 else b""
            return prefix + b'"choices":[{"index":0,"delta":{%s"content":"t%d "},"finish_reason":null}]}\n\n' % (
                role, k)

        def tail() -> bytes:
            out = prefix + b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
            if usage:
                pt = prompt_tokens(body)
                out += prefix + b'"choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":%d,' \
                                b'"total_tokens":%d}}\n\n' % (pt, n, pt + n)
            return out + b"data: [DONE]\n\n"

        self.start_stream(version, b"text/event-stream", frame, tail, n, delay, latency(body))

    def ollama_final(self, body: dict[str, Any], n: int, text: str, dur_ns: int, generate: bool) -> bytes:
        out: dict[str, Any] = {"model": body.get("model") or "fake", "created_at": iso_now()}
        if generate:
            out["response"] = text
        else:
            out["message"] = {"role": "assistant", "content": text}
        out.update({"done": True, "done_reason": "stop", "total_duration": dur_ns, "load_duration": 0,
                    "prompt_eval_count": prompt_tokens(body), "prompt_eval_duration": 0,
                    "eval_count": n, "eval_duration": dur_ns})
        check = content_check(body)
        if check:
            out["fake_check"] = check
        return dumps(out)

    def ollama_stream(self, version: str, body: dict[str, Any], n: int, delay: float, generate: bool) -> None:
        prefix = f'{{"model":{json.dumps(body.get("model") or "fake")},"created_at":"{iso_now()}",'.encode()
        t0 = time.monotonic_ns()

        def frame(k: int) -> bytes:
            if generate:
                return prefix + b'"response":"t%d ","done":false}\n' % k
            return prefix + b'"message":{"role":"assistant","content":"t%d "},"done":false}\n' % k

        def tail() -> bytes:
            return self.ollama_final(body, n, "", time.monotonic_ns() - t0, generate) + b"\n"

        self.start_stream(version, b"application/x-ndjson", frame, tail, n, delay, latency(body))


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Conn, host, port, backlog=8192, reuse_address=True)
    stop: asyncio.Future[None] = loop.create_future()

    def on_signal() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    uv = type(loop).__module__.startswith("uvloop")
    print(f"fake_backend ready on http://{host}:{port} (uvloop={uv})", flush=True)
    await stop
    server.close()


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description="fast fake OpenAI/Ollama backend for benchmarks")
    ap.add_argument("--host", default=os.environ.get("FAKE_HOST", "127.0.0.1"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("FAKE_PORT", "28100")))
    ap.add_argument("--chunks", type=int, default=int(os.environ.get("FAKE_CHUNKS", "50")))
    ap.add_argument("--delay-ms", type=float, default=float(os.environ.get("FAKE_DELAY_MS", "20")))
    ap.add_argument("--models", default=os.environ.get("FAKE_MODELS", "fake,llama3.2:3b"),
                    help="comma-separated names listed by /v1/models and /api/tags")
    ap.add_argument("--no-uvloop", action="store_true")
    a = ap.parse_args()
    Settings.chunks, Settings.delay_ms = a.chunks, a.delay_ms
    Settings.models = [m for m in a.models.split(",") if m]
    raise_fd_limit()
    if not a.no_uvloop:
        try:
            import uvloop
            uvloop.run(serve(a.host, a.port))
            return
        except ImportError:
            pass
    asyncio.run(serve(a.host, a.port))


if __name__ == "__main__":
    main()
