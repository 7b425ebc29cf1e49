"""A fake LLM backend on a real loopback socket, speaking both dialects, with named behaviours.

Each instance records every request it saw (method, path, headers, body) and stamps
``X-Fake-Backend: <name>`` on its answers, so tests can assert which backend served a request
and exactly what the gateway forwarded. Behaviours are set per test:

- ``chunks``: the streamed content pieces (default ["Hel", "lo", "!"]);
- ``gate``: when set, chunk *n* is sent only after the test puts something on the queue;
- ``drop_after``: close the connection abruptly after that many chunks;
- ``hang``: never answer (the handler waits until the gateway closes the connection);
- ``status``: answer every routed request with this status and ``status_body``;
- ``cors``: add the backend's own CORS headers (as vLLM does with ``*``).

``closed`` is set when the gateway closes a connection while a handler is still running.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from gateway.record import RequestRecord

PROMPT_TOKENS = 7


async def serve_local(app: web.Application, *, handler_cancellation: bool = True) -> tuple[web.AppRunner, str]:
    """Serve app on a free port of 127.0.0.1; returns its runner (for cleanup) and base URL."""
    runner = web.AppRunner(app, handler_cancellation=handler_cancellation, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def write_pieces(
    request: web.Request,
    response: web.StreamResponse,
    pieces: list[bytes],
    drop_after: int | None = None,
    gate: asyncio.Queue[None] | None = None,
) -> None:
    """Write a prepared stream piece by piece, then its end.

    drop_after: abort the connection instead of writing piece number drop_after (no end is written).
    gate: before every piece after the first, wait for one item from this queue.
    """
    for i, piece in enumerate(pieces):
        if drop_after is not None and i == drop_after:
            assert request.transport is not None
            request.transport.abort()
            return
        if gate is not None and i > 0:
            await gate.get()
        await response.write(piece)
    await response.write_eof()


@dataclass
class SeenRequest:
    method: str
    path: str
    headers: CIMultiDict[str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(eq=False)
class FakeBackend:
    name: str
    kind: str = "ollama"  # ollama | openai
    models: list[str] = field(default_factory=lambda: ["llama3.2:latest"])
    chunks: list[str] = field(default_factory=lambda: ["Hel", "lo", "!"])
    gate: asyncio.Queue[None] | None = None
    drop_after: int | None = None
    hang: bool = False
    version_calls: int = 0
    status: int | None = None
    status_body: Any = None
    cors: bool = False
    requests: list[SeenRequest] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""
    runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ plumbing

    def app(self) -> web.Application:
        app = web.Application(client_max_size=100 * 1024 * 1024)
        r = app.router
        r.add_get("/api/tags", self.tags)
        r.add_get("/api/ps", self.ps)
        r.add_get("/api/version", self.version)
        r.add_get("/v1/models", self.openai_models)
        r.add_get("/health", self.health)
        for path in ("/v1/chat/completions", "/v1/completions"):
            r.add_post(path, self.openai_generate)
        r.add_post("/v1/embeddings", self.openai_embeddings)
        r.add_post("/v1/responses", self.echo)
        r.add_post("/v1/messages", self.echo)
        r.add_post("/api/chat", self.ollama_generate)
        r.add_post("/api/generate", self.ollama_generate)
        r.add_post("/api/embed", self.ollama_embed)
        r.add_post("/api/embeddings", self.ollama_embed)
        r.add_post("/api/show", self.echo)
        r.add_post("/api/pull", self.echo)
        r.add_post("/api/copy", self.echo)
        r.add_delete("/api/delete", self.echo)
        r.add_route("*", "/api/blobs/{digest}", self.echo)
        r.add_post("/tokenize", self.echo)
        r.add_post("/detokenize", self.echo)
        return app

    async def start(self) -> FakeBackend:
        self.runner, self.url = await serve_local(self.app())
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _record(self, request: web.Request) -> bytes:
        body = await request.read()
        self.requests.append(SeenRequest(request.method, request.path_qs, CIMultiDict(request.headers), body))
        self.started.set()
        return body

    def _headers(self) -> dict[str, str]:
        headers = {"X-Fake-Backend": self.name}
        if self.cors:
            headers.update({"Access-Control-Allow-Origin": "*", "Vary": "Origin"})
        return headers

    async def _special(self) -> web.Response | None:
        """Behaviours shared by every routed endpoint; None means answer normally."""
        if self.hang:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.closed.set()
                raise
        if self.status is not None:
            return web.json_response(
                self.status_body or {"error": "fake failure"}, status=self.status, headers=self._headers()
            )
        return None

    async def _stream(self, request: web.Request, content_type: str, pieces: list[bytes]) -> web.StreamResponse:
        response = web.StreamResponse(headers={**self._headers(), "Content-Type": content_type})
        try:
            await response.prepare(request)
            await write_pieces(request, response, pieces, self.drop_after, self.gate)
        except ConnectionResetError:
            self.closed.set()  # the gateway closed the connection: what the cancellation tests wait for
            return response
        except asyncio.CancelledError:
            self.closed.set()
            raise
        return response

    # ------------------------------------------------------------------ listing

    async def tags(self, request: web.Request) -> web.Response:
        models = [
            {"name": m, "model": m, "modified_at": "2025-05-04T17:37:44Z", "size": 1000, "digest": "abc",
             "details": {"family": "llama", "parameter_size": "3B"}}
            for m in self.models
        ]  # fmt: skip
        return web.json_response({"models": models}, headers=self._headers())

    async def ps(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": m, "model": m, "size_vram": 1} for m in self.models[:1]]})

    async def version(self, request: web.Request) -> web.Response:
        self.version_calls += 1  # health probes of Ollama backends (not in ``requests``)
        return web.json_response({"version": "0.12.3"})

    async def health(self, request: web.Request) -> web.Response:
        return web.Response()

    async def openai_models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 1730000000, "owned_by": "vllm"} for m in self.models]
        return web.json_response({"object": "list", "data": data}, headers=self._headers())

    # ------------------------------------------------------------------ generation

    async def echo(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        if (special := await self._special()) is not None:
            return special
        return web.json_response(
            {"path": request.path, "bytes": len(body), "backend": self.name}, headers=self._headers()
        )

    async def openai_generate(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        if (special := await self._special()) is not None:
            return special
        payload = json.loads(body)
        model = payload.get("model")
        chat = request.path.endswith("chat/completions")
        usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": len(self.chunks),
                 "total_tokens": PROMPT_TOKENS + len(self.chunks)}  # fmt: skip
        base = {"id": "cmpl-1", "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": model}  # fmt: skip
        if not payload.get("stream"):
            text = "".join(self.chunks)
            choice = (
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                if chat
                else {"index": 0, "text": text, "finish_reason": "stop"}
            )
            doc = {
                **base,
                "object": "chat.completion" if chat else "text_completion",
                "choices": [choice],
                "usage": usage,
            }
            return web.json_response(doc, headers=self._headers())
        pieces = []
        for text in self.chunks:
            choice = (
                {"index": 0, "delta": {"content": text}, "finish_reason": None} if chat else {"index": 0, "text": text}
            )
            pieces.append(b"data: " + json.dumps({**base, "choices": [choice]}).encode() + b"\n\n")
        finish = (
            {"index": 0, "delta": {}, "finish_reason": "stop"}
            if chat
            else {"index": 0, "text": "", "finish_reason": "stop"}
        )
        pieces.append(b"data: " + json.dumps({**base, "choices": [finish]}).encode() + b"\n\n")
        if (payload.get("stream_options") or {}).get("include_usage"):
            pieces.append(b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n")
        pieces.append(b"data: [DONE]\n\n")
        return await self._stream(request, "text/event-stream", pieces)

    async def openai_embeddings(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        if (special := await self._special()) is not None:
            return special
        payload = json.loads(body)
        inputs = payload["input"] if isinstance(payload["input"], list) else [payload["input"]]
        data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(inputs))]
        doc = {"object": "list", "data": data, "model": payload["model"],
               "usage": {"prompt_tokens": PROMPT_TOKENS, "total_tokens": PROMPT_TOKENS}}  # fmt: skip
        return web.json_response(doc, headers=self._headers())

    async def ollama_generate(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        if (special := await self._special()) is not None:
            return special
        payload = json.loads(body)
        chat = request.path == "/api/chat"
        model = payload.get("model")

        def part(text: str, done: bool) -> dict[str, Any]:
            doc: dict[str, Any] = {"model": model, "created_at": "2025-01-01T00:00:00Z", "done": done}
            if chat:
                doc["message"] = {"role": "assistant", "content": text}
            else:
                doc["response"] = text
            if done:
                doc.update(done_reason="stop", total_duration=10**9, prompt_eval_count=PROMPT_TOKENS,
                           eval_count=len(self.chunks), eval_duration=5 * 10**8)  # fmt: skip
            return doc

        if payload.get("stream") is False:
            return web.json_response(part("".join(self.chunks), True), headers=self._headers())
        pieces = [json.dumps(part(t, False)).encode() + b"\n" for t in self.chunks]
        pieces.append(json.dumps(part("", True)).encode() + b"\n")
        return await self._stream(request, "application/x-ndjson", pieces)

    async def ollama_embed(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        if (special := await self._special()) is not None:
            return special
        payload = json.loads(body)
        if request.path == "/api/embeddings":
            return web.json_response({"embedding": [0.1, 0.2]}, headers=self._headers())
        inputs = payload["input"] if isinstance(payload["input"], list) else [payload["input"]]
        doc = {"model": payload["model"], "embeddings": [[0.1, 0.2]] * len(inputs), "prompt_eval_count": PROMPT_TOKENS}
        return web.json_response(doc, headers=self._headers())


def make_record(**values: Any) -> RequestRecord:
    """A RequestRecord for tests that need no server: required fields defaulted, any field by keyword."""
    rec = RequestRecord("r1", "POST", "/v1/chat/completions", "127.0.0.1", False, 0.0)
    for key, value in values.items():
        setattr(rec, key, value)  # slots: a misspelt field name raises
    return rec
