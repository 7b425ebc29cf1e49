"""Anthropic Messages through the real gateway to an OpenAI-only backend, with the real ``anthropic`` SDK.

The backend is a scripted OpenAI-dialect server on a loopback socket that records what it received,
so each test checks the translated request as well as the answer the SDK builds from the translated
response: text streamed and not, system, images, tools and the tool_use/tool_result round trip,
tool_choice, stop_sequences, backend errors, a backend dying mid-stream, the not-buffered proof,
token accounting, and byte-for-byte passthrough to a backend that speaks ``anthropic`` itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import anthropic
import pytest
from aiohttp import web

from .conftest import GatewayFactory, RunningGateway
from .fakes import serve_local, write_pieces

STEP = 5.0  # bound for each event-sequenced step; tests never sleep
MODEL = "qwen3:8b"


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, **extra}]
    return {"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1, "model": MODEL, "choices": choices}


def usage_chunk(prompt: int, completion: int) -> dict[str, Any]:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return {**chunk(), "usage": usage}


def sse(doc: dict[str, Any] | str) -> bytes:
    return b"data: " + (doc if isinstance(doc, str) else json.dumps(doc)).encode() + b"\n\n"


def completion(message: dict[str, Any], finish: str = "stop", prompt: int = 11, out: int = 4, **extra: Any) -> Any:
    return {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish, **extra}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out},
    }


@dataclass(eq=False)
class OpenAIBackend:
    """An OpenAI-compatible server: answers ``reply`` (a JSON doc, or SSE pieces when the request
    streams), records every request. ``gate``: piece n > 0 waits for an item; ``drop_after``:
    abort the connection before that piece; ``status``: answer every request with it."""

    reply: Any = None
    pieces: list[bytes] = field(default_factory=list)
    gate: asyncio.Queue[None] | None = None
    drop_after: int | None = None
    status: int | None = None
    status_body: bytes = b""
    messages_status: int | None = None  # /v1/messages (passthrough) answers with this status
    requests: list[tuple[str, bytes]] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # the gateway hung up mid-stream
    url: str = ""
    runner: web.AppRunner | None = None

    @property
    def last(self) -> dict[str, Any]:
        path, body = self.requests[-1]
        assert path == "/v1/chat/completions"
        doc: dict[str, Any] = json.loads(body)
        return doc

    async def start(self) -> OpenAIBackend:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/messages", self.messages)
        self.runner, self.url = await serve_local(app)
        return self

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append((request.path, body))
        if self.status is not None:
            return web.Response(status=self.status, body=self.status_body, content_type="application/json")
        if not json.loads(body).get("stream"):
            return web.json_response(self.reply)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            await write_pieces(request, response, self.pieces, self.drop_after, self.gate)
        except (ConnectionResetError, asyncio.CancelledError):
            self.closed.set()
            raise
        return response

    async def messages(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, await request.read()))
        if self.messages_status is not None:
            return web.json_response({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}},
                                     status=self.messages_status)  # fmt: skip
        return web.Response(body=ANTHROPIC_ANSWER, content_type="application/json")


ANTHROPIC_ANSWER = (
    b'{"id":"msg_native","type":"message","role":"assistant","model":"qwen3:8b",'
    b'"content":[{"type":"text","text":"native"}],"stop_reason":"end_turn","stop_sequence":null,'
    b'"usage":{"input_tokens":3,"output_tokens":1}}'
)

Setup = Callable[..., Awaitable[tuple[OpenAIBackend, RunningGateway, anthropic.AsyncAnthropic]]]


@pytest.fixture
async def setup(gateway_factory: GatewayFactory) -> AsyncIterator[Setup]:
    made: list[tuple[OpenAIBackend, anthropic.AsyncAnthropic]] = []

    async def make(
        top: dict[str, Any] | None = None, **entry: Any
    ) -> tuple[OpenAIBackend, RunningGateway, anthropic.AsyncAnthropic]:
        backend = await OpenAIBackend().start()
        config = {"name": "gpu", "url": backend.url, "type": "vllm", "models": [MODEL],
                  "health_check": {"interval": "60s", "timeout": "2s"}, **entry}  # fmt: skip
        gw = await gateway_factory({"backends": [config], **(top or {})})
        client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=KEY, max_retries=0, timeout=STEP)
        made.append((backend, client))
        return backend, gw, client

    yield make
    for backend, client in made:
        await client.close()
        if backend.runner is not None:
            await backend.runner.cleanup()


def tokens(gw: RunningGateway, kind: str) -> float:
    return gw.sample("gateway_tokens_total", backend="gpu", model=MODEL, client="anonymous", kind=kind)


PATHS = pytest.mark.parametrize("lean_pool", [True, False], ids=["pool", "aiohttp-client"])


def use_path(gw: RunningGateway, lean_pool: bool) -> None:
    """Plain-HTTP backends use the lean pool (and the relay's callback pipe); HTTPS ones aiohttp's client."""
    if not lean_pool:
        gw.state.backends[0].pool = None  # what an https:// backend has


USER = [{"role": "user", "content": "Hello"}]
KEY = "sk-test-key"


# --------------------------------------------------------------------------- text


async def test_text_answer_with_system_prompt(setup: Setup) -> None:
    backend, gw, client = await setup()
    backend.reply = completion({"content": "Hi there!"}, prompt=11, out=4)
    message = await client.messages.create(
        model=MODEL, max_tokens=64, system="You are terse.", messages=USER, metadata={"user_id": "u1"},
        extra_body={"temperature": 0.2, "top_k": 20},  # this SDK version has no arguments for them
    )  # fmt: skip
    assert backend.last == {
        "model": MODEL,
        "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello"}],
        "max_tokens": 64,
        "temperature": 0.2,
        "top_k": 20,
    }
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == MODEL
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [("text", "Hi there!")]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert (message.usage.input_tokens, message.usage.output_tokens) == (11, 4)
    # accounting and metrics see the translated request like any other
    assert (tokens(gw, "prompt"), tokens(gw, "completion")) == (11, 4)
    requests = gw.sample("gateway_requests_total", backend="gpu", model=MODEL, endpoint="/v1/messages", code="200",
                         client="anonymous")  # fmt: skip
    assert requests == 1


async def test_text_streamed_with_messages_stream(setup: Setup) -> None:
    backend, gw, client = await setup()
    backend.pieces = [
        sse(chunk({"role": "assistant", "content": ""})),
        sse(chunk({"content": "Hel"})),
        sse(chunk({"content": "lo!"})),
        sse(chunk({}, "stop")),
        sse(usage_chunk(13, 2)),
        sse("[DONE]"),
    ]
    async with client.messages.stream(model=MODEL, max_tokens=32, messages=USER) as stream:
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert texts == ["Hel", "lo!"]
    assert backend.last["stream"] is True and backend.last["stream_options"] == {"include_usage": True}
    assert [(b.type, getattr(b, "text", None)) for b in final.content] == [("text", "Hello!")]
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (13, 2)
    assert (tokens(gw, "prompt"), tokens(gw, "completion")) == (13, 2)


async def test_create_stream_true_yields_the_messages_events(setup: Setup, http: aiohttp.ClientSession) -> None:
    backend, _, client = await setup()
    backend.pieces = [sse(chunk({"content": "ok"})), sse(chunk({}, "length")), sse(usage_chunk(5, 1)), sse("[DONE]")]
    stream = await client.messages.create(model=MODEL, max_tokens=1, messages=USER, stream=True)
    events = [event async for event in stream]
    assert [e.type for e in events] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta",
        "message_stop",
    ]  # fmt: skip
    assert events[2].delta.text == "ok"  # type: ignore[union-attr]
    assert events[4].delta.stop_reason == "max_tokens"  # type: ignore[union-attr]
    assert events[4].usage.output_tokens == 1  # type: ignore[union-attr]
    # the wire format: named events, streamed headers, usage injection never reaches the client
    async with http.post(f"{_url(client)}/v1/messages", json={"model": MODEL, "max_tokens": 1, "messages": USER,
                                                             "stream": True}) as resp:  # fmt: skip
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        assert resp.headers["Cache-Control"] == "no-cache" and resp.headers["X-Accel-Buffering"] == "no"
        raw = await resp.read()
    assert raw.startswith(b"event: message_start\ndata: {") and raw.endswith(
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    assert b"include_usage" not in raw and b"chat.completion" not in raw and b"[DONE]" not in raw


def _url(client: anthropic.AsyncAnthropic) -> str:
    return str(client.base_url).rstrip("/")


# --------------------------------------------------------------------------- content


async def test_images_base64_and_url(setup: Setup) -> None:
    backend, _, client = await setup()
    backend.reply = completion({"content": "a cat"})
    data = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    message = await client.messages.create(
        model=MODEL,
        max_tokens=16,
        messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            {"type": "text", "text": "What are these?"},
        ]}],
    )  # fmt: skip
    assert backend.last["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                {"type": "text", "text": "What are these?"},
            ],
        }
    ]
    assert message.content[0].type == "text" and message.content[0].text == "a cat"


TOOLS: list[Any] = [
    {
        "name": "get_weather",
        "description": "Current weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]
OPENAI_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            "description": "Current weather for a city",
        },
    }
]


@PATHS
async def test_tools_round_trip_not_streamed(setup: Setup, lean_pool: bool) -> None:
    backend, gw, client = await setup()
    use_path(gw, lean_pool)
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    backend.reply = completion({"content": None, "tool_calls": [call]}, "tool_calls", prompt=40, out=9)
    first = await client.messages.create(
        model=MODEL, max_tokens=64, tools=TOOLS, tool_choice={"type": "any"}, messages=[
            {"role": "user", "content": "Weather in Paris?"}],
    )  # fmt: skip
    assert backend.last["tools"] == OPENAI_TOOLS and backend.last["tool_choice"] == "required"
    assert first.stop_reason == "tool_use"
    tool_use = first.content[0]
    assert tool_use.type == "tool_use"
    assert (tool_use.id, tool_use.name, tool_use.input) == ("call_1", "get_weather", {"city": "Paris"})

    backend.reply = completion({"content": "It is 18°C in Paris."}, prompt=60, out=8)
    second = await client.messages.create(
        model=MODEL,
        max_tokens=64,
        tools=TOOLS,
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": first.content},  # type: ignore[typeddict-item]
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "18°C"}]},
        ],
    )
    assert backend.last["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert backend.last["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18°C"},
    ]  # fmt: skip
    assert second.content[0].type == "text" and second.content[0].text == "It is 18°C in Paris."
    assert (tokens(gw, "prompt"), tokens(gw, "completion")) == (100, 17)


@PATHS
async def test_tools_streamed(setup: Setup, lean_pool: bool) -> None:
    backend, gw, client = await setup()
    use_path(gw, lean_pool)

    def call(index: int, args: str, id: str | None = None, name: str | None = None) -> bytes:
        function: dict[str, Any] = {"arguments": args}
        if name:
            function["name"] = name
        entry: dict[str, Any] = {"index": index, "function": function}
        if id:
            entry.update(id=id, type="function")
        return sse(chunk({"tool_calls": [entry]}))

    backend.pieces = [
        sse(chunk({"role": "assistant", "content": "Checking both."})),
        call(0, "", "call_a", "get_weather"),
        call(0, '{"city":'),
        call(0, '"Paris"}'),
        call(1, '{"city":"Rome"}', "call_b", "get_weather"),
        sse(chunk({}, "tool_calls")),
        sse(usage_chunk(50, 20)),
        sse("[DONE]"),
    ]
    async with client.messages.stream(
        model=MODEL, max_tokens=64, tools=TOOLS, tool_choice={"type": "auto", "disable_parallel_tool_use": False},
        messages=[{"role": "user", "content": "Paris and Rome?"}],
    ) as stream:  # fmt: skip
        partial = [event.partial_json async for event in stream if event.type == "input_json"]
        final = await stream.get_final_message()
    assert backend.last["tool_choice"] == "auto" and "parallel_tool_calls" not in backend.last
    assert partial == ['{"city":', '"Paris"}', '{"city":"Rome"}']
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    assert final.content[0].text == "Checking both."  # type: ignore[union-attr]
    calls = [(b.id, b.name, b.input) for b in final.content if b.type == "tool_use"]
    assert calls == [("call_a", "get_weather", {"city": "Paris"}), ("call_b", "get_weather", {"city": "Rome"})]
    assert final.stop_reason == "tool_use" and final.usage.output_tokens == 20


async def test_stop_sequences(setup: Setup) -> None:
    backend, _, client = await setup()
    backend.reply = completion({"content": "1, 2, 3"}, stop_reason="END")  # vLLM names the matched stop string
    message = await client.messages.create(model=MODEL, max_tokens=16, stop_sequences=["END", "STOP"], messages=USER)
    assert backend.last["stop"] == ["END", "STOP"]
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "END")
    backend.pieces = [sse(chunk({"content": "1"})), sse(chunk({}, "stop", stop_reason="STOP")), sse("[DONE]")]
    async with client.messages.stream(model=MODEL, max_tokens=16, stop_sequences=["END", "STOP"],
                                      messages=USER) as stream:  # fmt: skip
        final = await stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "STOP")


async def test_thinking_streamed_when_asked(setup: Setup) -> None:
    backend, _, client = await setup()
    backend.pieces = [
        sse(chunk({"reasoning_content": "2+2 is"})),
        sse(chunk({"reasoning_content": " 4"})),
        sse(chunk({"content": "4"}, "stop")),
        sse("[DONE]"),
    ]
    async with client.messages.stream(model=MODEL, max_tokens=1024, messages=USER,
                                      thinking={"type": "enabled", "budget_tokens": 512}) as stream:  # fmt: skip
        final = await stream.get_final_message()
    assert "thinking" not in backend.last  # nothing an OpenAI server would understand is sent
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "2+2 is 4"  # type: ignore[union-attr]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "body", "exception", "kind"),
    [
        (400, b'{"error":{"message":"max_tokens is too large","type":"BadRequestError"}}', anthropic.BadRequestError,
         "invalid_request_error"),
        (404, b'{"error":{"message":"The model does not exist.","type":"NotFoundError"}}', anthropic.NotFoundError,
         "not_found_error"),
        (500, b'{"error":{"message":"CUDA out of memory","type":"InternalServerError"}}',
         anthropic.InternalServerError, "api_error"),
        (503, b'{"detail":"model is loading"}', anthropic.InternalServerError, "overloaded_error"),
    ],
)  # fmt: skip
async def test_backend_errors_in_anthropic_shape(
    setup: Setup, status: int, body: bytes, exception: type[anthropic.APIStatusError], kind: str
) -> None:
    backend, _, client = await setup()
    backend.status, backend.status_body = status, body
    for stream in (False, True):
        with pytest.raises(exception) as info:
            await client.messages.create(model=MODEL, max_tokens=8, messages=USER, stream=stream)
        assert info.value.status_code == status
        message = json.loads(body).get("error", {}).get("message") or json.loads(body)["detail"]
        assert info.value.body == {"type": "error", "error": {"type": kind, "message": message}}


async def test_untranslatable_request_is_a_400_in_anthropic_shape(setup: Setup) -> None:
    backend, _, client = await setup()
    with pytest.raises(anthropic.BadRequestError) as info:
        await client.messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": [
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}]}],
        )  # fmt: skip
    assert info.value.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "messages[0].content[0]: a 'document' block cannot be translated for this backend "
            "(it does not speak /v1/messages)",
        },
    }
    assert backend.requests == []


@PATHS
async def test_backend_dying_mid_stream_ends_the_stream_abnormally(
    setup: Setup, http: aiohttp.ClientSession, lean_pool: bool
) -> None:
    backend, gw, client = await setup()
    use_path(gw, lean_pool)
    backend.pieces = [sse(chunk({"content": "par"})), sse(chunk({"content": "tial"})), sse(chunk({}, "stop"))]
    backend.drop_after = 1
    # the SDK raises on the in-band error event
    stream = await client.messages.create(model=MODEL, max_tokens=8, messages=USER, stream=True)
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        async for event in stream:
            seen.append(event.type)
    assert seen == ["message_start", "content_block_start", "content_block_delta"]
    assert info.value.body == {"type": "error", "error": {"type": "api_error", "message":
                               "the backend closed the connection in the middle of the response"}}  # fmt: skip
    # on the wire: the error event, then no message_stop and no clean end of the body
    async with http.post(f"{gw.url}/v1/messages", json={"model": MODEL, "max_tokens": 8, "messages": USER,
                                                        "stream": True}) as resp:  # fmt: skip
        received = b""
        with pytest.raises(aiohttp.ClientPayloadError):
            async for piece in resp.content.iter_any():
                received += piece
    assert received.endswith(b"event: error\ndata: " + json.dumps(info.value.body).encode() + b"\n\n")
    assert b"message_stop" not in received and b"message_delta" not in received


# --------------------------------------------------------------------------- streaming is not buffered


@PATHS
async def test_translated_stream_is_not_buffered(setup: Setup, lean_pool: bool) -> None:
    backend, gw, client = await setup()
    use_path(gw, lean_pool)
    gate: asyncio.Queue[None] = asyncio.Queue()
    backend.gate = gate
    backend.pieces = [sse(chunk({"content": "one"})), sse(chunk({"content": "two"})), sse(chunk({}, "stop")),
                      sse("[DONE]")]  # fmt: skip
    stream = await client.messages.create(model=MODEL, max_tokens=8, messages=USER, stream=True)
    events = stream.__aiter__()
    # piece 1 reaches the client as a text delta while the backend is still forbidden to send piece 2
    first: list[Any] = []
    while not first or first[-1].type != "content_block_delta":
        first.append(await asyncio.wait_for(events.__anext__(), STEP))
    assert first[-1].delta.text == "one"
    assert gate.empty() and len(backend.requests) == 1
    gate.put_nowait(None)
    second = await asyncio.wait_for(events.__anext__(), STEP)
    assert second.type == "content_block_delta" and second.delta.text == "two"  # type: ignore[union-attr]
    for _ in range(2):
        gate.put_nowait(None)
    rest = [event.type async for event in events]
    assert rest == ["content_block_stop", "message_delta", "message_stop"]


# --------------------------------------------------------------------------- passthrough


async def test_backend_speaking_anthropic_gets_the_request_byte_for_byte(
    setup: Setup, http: aiohttp.ClientSession
) -> None:
    backend, gw, client = await setup(speaks=["openai", "anthropic"])
    sent = b'{"model": "qwen3:8b",  "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "x": 1}'
    async with http.post(f"{gw.url}/v1/messages", data=sent, headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 200
        assert await resp.read() == ANTHROPIC_ANSWER
    assert backend.requests == [("/v1/messages", sent)]
    message = await client.messages.create(model=MODEL, max_tokens=5, messages=USER)
    assert message.id == "msg_native" and message.content[0].text == "native"  # type: ignore[union-attr]
    assert [path for path, _ in backend.requests] == ["/v1/messages", "/v1/messages"]


# --------------------------------------------------------------------------- like any other request


async def test_authenticated_client_is_accounted_and_logged(setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "gateway.access")
    auth = {"api_keys": [{"name": "laptop", "hash": "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()}]}
    backend, gw, client = await setup(top={"auth": auth, "logging": {"format": "json"}})
    backend.pieces = [sse(chunk({"content": "hi"})), sse(chunk({}, "stop")), sse(usage_chunk(21, 1)), sse("[DONE]")]
    async with client.messages.stream(model=MODEL, max_tokens=8, messages=USER) as stream:  # x-api-key: KEY
        assert (await stream.get_final_message()).usage.input_tokens == 21
    assert "sk-test" not in json.dumps([r.getMessage() for r in caplog.records])
    kinds = {kind: gw.sample("gateway_tokens_total", backend="gpu", model=MODEL, client="laptop", kind=kind)
             for kind in ("prompt", "completion")}  # fmt: skip
    assert kinds == {"prompt": 21, "completion": 1}
    for handler in logging.getLogger("gateway.access").handlers:
        handler.flush()
    (line,) = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
    assert line["path"] == "/v1/messages" and line["status"] == 200 and line["client"] == "laptop"
    assert (line["tokens_in"], line["tokens_out"], line["backend"]) == (21, 1, "gpu")
    wrong = anthropic.AsyncAnthropic(base_url=gw.url, api_key="sk-wrong", max_retries=0, timeout=STEP)
    with pytest.raises(anthropic.AuthenticationError) as info:
        await wrong.messages.create(model=MODEL, max_tokens=8, messages=USER)
    await wrong.close()
    assert info.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert len(backend.requests) == 1


async def test_failover_translates_for_the_next_backend(setup: Setup, gateway_factory: GatewayFactory) -> None:
    native, _, _ = await setup()
    native.messages_status = 503
    plain, _, _ = await setup()
    plain.reply = completion({"content": "translated"})
    gw = await gateway_factory({"backends": [
        {"name": "native", "url": native.url, "type": "vllm", "models": [MODEL], "weight": 10,
         "speaks": ["openai", "anthropic"], "health_check": {"interval": "60s", "timeout": "2s"}},
        {"name": "plain", "url": plain.url, "type": "vllm", "models": [MODEL],
         "health_check": {"interval": "60s", "timeout": "2s"}},
    ]})  # fmt: skip
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=KEY, max_retries=0, timeout=STEP)
    message = await client.messages.create(model=MODEL, max_tokens=8, messages=USER)
    await client.close()
    assert message.content[0].text == "translated"  # type: ignore[union-attr]
    assert [path for path, _ in native.requests] == ["/v1/messages"]  # its own dialect, as is
    assert plain.last["messages"] == [{"role": "user", "content": "Hello"}]  # then translated for the other


async def test_client_leaving_a_translated_stream_closes_the_backend_request(setup: Setup) -> None:
    backend, gw, client = await setup()
    gate: asyncio.Queue[None] = asyncio.Queue()
    backend.gate = gate
    backend.pieces = [sse(chunk({"content": "one"})), sse(chunk({"content": "two"})), sse("[DONE]")]
    stream = await client.messages.create(model=MODEL, max_tokens=8, messages=USER, stream=True)
    events = stream.__aiter__()
    while (await asyncio.wait_for(events.__anext__(), STEP)).type != "content_block_delta":
        pass
    await stream.close()
    await asyncio.wait_for(backend.closed.wait(), STEP)
    assert gate.empty()
