"""A scripted OpenAI-dialect backend on a loopback socket, for the dialect bridge's end-to-end tests.

Unlike ``fakes.FakeBackend`` it answers with whatever the test scripts, so translated answers can
carry tool calls, reasoning, in-band errors or odd framing, and it records every request's JSON so
the test can check the translated request too:

- ``events``: the SSE events of a streamed answer, as JSON objects (sent as ``data: ...``) or raw
  bytes (sent as they are, e.g. to split an event across writes); ``[DONE]`` is appended unless
  ``done`` is False. The usage chunk is added (before ``[DONE]``) only when the request asked for it.
- ``answer``: the JSON object of a non-streamed answer (chat, completions or embeddings).
- ``status``/``status_body``: answer every generation request with this error instead.
- ``gate``: event *n* (n >= 1) is sent only after the test puts something on the queue.
- ``drop_after``: abort the connection after that many events.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .fakes import serve_local, write_pieces

USAGE = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    """One chat.completion.chunk with a single choice."""
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "m",
        "choices": [choice],
        **extra,
    }


def text_chunks(*pieces: str, finish: str = "stop") -> list[dict[str, Any]]:
    return [chunk({"content": p}) for p in pieces] + [chunk({}, finish)]


@dataclass(eq=False)
class Seen:
    path: str
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(eq=False)
class OpenAIFake:
    name: str = "vllm"
    models: list[dict[str, Any]] = field(default_factory=lambda: [{"id": "m", "max_model_len": 4096}])
    events: list[dict[str, Any] | bytes] = field(default_factory=lambda: list(text_chunks("Hel", "lo", "!")))
    done: bool = True
    answer: dict[str, Any] | None = None
    usage: dict[str, Any] = field(default_factory=lambda: dict(USAGE))
    status: int | None = None
    status_body: Any = None
    gate: asyncio.Queue[None] | None = None
    drop_after: int | None = None
    requests: list[Seen] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""
    runner: web.AppRunner | None = None

    async def start(self) -> OpenAIFake:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/health", self.list_models)
        app.router.add_post("/v1/chat/completions", self.generate)
        app.router.add_post("/v1/completions", self.generate)
        app.router.add_post("/v1/embeddings", self.embeddings)
        self.runner, self.url = await serve_local(app)
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def last(self) -> Any:
        return self.requests[-1].json

    async def list_models(self, request: web.Request) -> web.Response:
        data = [{"object": "model", "created": 1700000000, "owned_by": self.name, **m} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _record(self, request: web.Request) -> Any:
        body = await request.read()
        self.requests.append(Seen(request.path, body))
        return json.loads(body)

    async def generate(self, request: web.Request) -> web.StreamResponse:
        payload = await self._record(request)
        if self.status is not None:
            return web.json_response(self.status_body or {"error": {"message": "fake failure"}}, status=self.status)
        if not payload.get("stream"):
            return web.json_response(self.answer or self._default_answer(request.path))
        pieces = [e if isinstance(e, bytes) else b"data: " + json.dumps(e).encode() + b"\n\n" for e in self.events]
        if (payload.get("stream_options") or {}).get("include_usage"):
            usage_chunk = {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 1700000000,
                "model": "m",
                "choices": [],
                "usage": self.usage,
            }
            pieces.append(b"data: " + json.dumps(usage_chunk).encode() + b"\n\n")
        if self.done:
            pieces.append(b"data: [DONE]\n\n")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        try:
            await response.prepare(request)
            await write_pieces(request, response, pieces, self.drop_after, self.gate)
        except (ConnectionResetError, asyncio.CancelledError):
            self.closed.set()
            raise
        return response

    def _default_answer(self, path: str) -> dict[str, Any]:
        if path.endswith("/chat/completions"):
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello!"},
                "finish_reason": "stop",
            }
        else:
            choice = {"index": 0, "text": "Hello!", "finish_reason": "length"}
        return {
            "id": "x-1",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "m",
            "choices": [choice],
            "usage": self.usage,
        }

    async def embeddings(self, request: web.Request) -> web.Response:
        payload = await self._record(request)
        if self.status is not None:
            return web.json_response(self.status_body or {"error": {"message": "fake failure"}}, status=self.status)
        inputs = payload["input"] if isinstance(payload["input"], list) else [payload["input"]]
        # Listed in reverse order: the translation must sort by index.
        data = [{"object": "embedding", "index": i, "embedding": [float(i), 0.5, -1.0]} for i in range(len(inputs))]
        return web.json_response(
            {
                "object": "list",
                "data": data[::-1],
                "model": payload["model"],
                "usage": {"prompt_tokens": 3 * len(inputs), "total_tokens": 3 * len(inputs)},
            }
        )
