"""The dialect bridge end to end: the real ``ollama`` client, a real gateway, an OpenAI-only backend.

Every test checks both sides: what the client got (through the real client library, or raw
bytes where the wire format matters) and the translated request the backend received.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import ollama
import pytest

from .conftest import BackendFactory, GatewayFactory, RunningGateway, backend_entry
from .fake_openai import USAGE, OpenAIFake, chunk, text_chunks

OpenAIFactory = Callable[..., Awaitable[OpenAIFake]]
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\x00" * 16).decode()


@pytest.fixture
async def openai_factory() -> AsyncIterator[OpenAIFactory]:
    started: list[OpenAIFake] = []

    async def make(name: str = "vllm", **behaviour: Any) -> OpenAIFake:
        fake = await OpenAIFake(name, **behaviour).start()
        started.append(fake)
        return fake

    yield make
    for fake in started:
        await fake.stop()


def entry(fake: OpenAIFake, type_: str = "vllm", **extra: Any) -> dict[str, Any]:
    return {
        "name": fake.name,
        "url": fake.url,
        "type": type_,
        "health_check": {"interval": "60s", "timeout": "2s"},
        **extra,
    }


async def bridged(
    openai_factory: OpenAIFactory, gateway_factory: GatewayFactory, **behaviour: Any
) -> tuple[OpenAIFake, RunningGateway, ollama.AsyncClient]:
    fake = await openai_factory(**behaviour)
    gw = await gateway_factory({"backends": [entry(fake)]})
    return fake, gw, ollama.AsyncClient(host=gw.url)


USER = [{"role": "user", "content": "hi"}]


def completion(message: dict[str, Any], finish_reason: str) -> dict[str, Any]:
    """A non-streamed chat completion from the OpenAI fake, with one choice holding message."""
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "m",
        "usage": USAGE,
        "choices": [{"index": 0, "finish_reason": finish_reason, "message": message}],
    }


# --------------------------------------------------------------------------- chat


async def test_chat_not_streamed(openai_factory: OpenAIFactory, gateway_factory: GatewayFactory) -> None:
    fake, gw, client = await bridged(openai_factory, gateway_factory)
    answer = await client.chat(model="m", messages=USER, stream=False)
    assert answer.message.role == "assistant" and answer.message.content == "Hello!"
    assert answer.done is True and answer.done_reason == "stop"
    assert answer.prompt_eval_count == 11 and answer.eval_count == 5
    assert answer.total_duration and answer.total_duration > 0 and answer.eval_duration is not None
    assert fake.requests[-1].path == "/v1/chat/completions"
    assert fake.last == {"model": "m", "messages": USER, "stream": False}


async def test_chat_streamed(
    openai_factory: OpenAIFactory, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    fake, gw, client = await bridged(openai_factory, gateway_factory)
    parts = [p async for p in await client.chat(model="m", messages=USER, stream=True)]
    assert [p.message.content for p in parts] == ["Hel", "lo", "!", ""]
    assert [p.done for p in parts] == [False, False, False, True]
    final = parts[-1]
    assert final.done_reason == "stop" and final.prompt_eval_count == 11 and final.eval_count == 5
    for name in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(getattr(final, name), int), name
    assert final.total_duration >= final.prompt_eval_duration + final.eval_duration  # type: ignore[operator]
    assert fake.last == {"model": "m", "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    # On the wire: NDJSON, one Ollama object per line, and the usage chunk the gateway asked for is hidden.
    async with http.post(gw.url + "/api/chat", json={"model": "m", "messages": USER}) as resp:
        assert resp.status == 200 and resp.content_type == "application/x-ndjson"
        body = await resp.read()
    lines = body.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 5
    docs = [json.loads(line) for line in lines[:-1]]
    assert all("usage" not in d and "choices" not in d and d["model"] == "m" for d in docs)
    assert docs[0]["created_at"] == "2023-11-14T22:13:20Z"  # the backend's "created", in Ollama's format


async def test_chat_tokens_are_counted(openai_factory: OpenAIFactory, gateway_factory: GatewayFactory) -> None:
    fake, gw, client = await bridged(openai_factory, gateway_factory)
    [p async for p in await client.chat(model="m", messages=USER, stream=True)]
    await client.chat(model="m", messages=USER, stream=False)
    labels = {"backend": "vllm", "model": "m", "client": "anonymous"}
    assert gw.sample("gateway_tokens_total", kind="prompt", **labels) == 2 * USAGE["prompt_tokens"]
    assert gw.sample("gateway_tokens_total", kind="completion", **labels) == 2 * USAGE["completion_tokens"]
    assert (
        gw.sample(
            "gateway_requests_total", backend="vllm", model="m", endpoint="/api/chat", code="200", client="anonymous"
        )
        == 2
    )


async def test_access_log_sees_translated_requests(
    openai_factory: OpenAIFactory,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    fake, gw, client = await bridged(openai_factory, gateway_factory)
    sizes = []
    for stream in (True, False):
        async with http.post(gw.url + "/api/chat", json={"model": "m", "messages": USER, "stream": stream}) as resp:
            sizes.append(len(await resp.read()))
    logged = [r.getMessage() for r in caplog.records if r.name == "gateway.access" and "/api/chat" in r.getMessage()]
    assert len(logged) == 2
    for line, size in zip(logged, sizes, strict=True):
        assert " model=m backend=vllm status=200 " in line and f" bytes={size} " in line
        assert " tokens_in=11 tokens_out=5" in line


async def test_chat_options_format_and_think(openai_factory: OpenAIFactory, gateway_factory: GatewayFactory) -> None:
    fake, gw, client = await bridged(openai_factory, gateway_factory)
    options = {
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "num_predict": 64,
        "stop": ["\n\n"],
        "seed": 7,
        "frequency_penalty": 0.5,
        "presence_penalty": 0.25,
        "repeat_penalty": 1.1,
        "num_ctx": 8192,
    }
    await client.chat(model="m", messages=USER, stream=False, options=options, format="json", think=True)
    sent = fake.last
    assert {k: sent[k] for k in ("temperature", "top_p", "top_k", "max_tokens", "stop", "seed")} == {
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "max_tokens": 64,
        "stop": ["\n\n"],
        "seed": 7,
    }
    assert sent["frequency_penalty"] == 0.5 and sent["presence_penalty"] == 0.25 and sent["repeat_penalty"] == 1.1
    assert "num_ctx" not in sent and "options" not in sent and "think" not in sent and "format" not in sent
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["chat_template_kwargs"] == {"enable_thinking": True}
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    await client.chat(model="m", messages=USER, stream=False, format=schema, options={"num_predict": -1})
    assert fake.last["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema},
    }
    assert "max_tokens" not in fake.last  # -1: no limit, the backend's default


async def test_reasoning_becomes_thinking(openai_factory: OpenAIFactory, gateway_factory: GatewayFactory) -> None:
    events = [
        chunk({"reasoning_content": "Let me "}),
        chunk({"reasoning_content": "see."}),
        chunk({"content": "42"}),
        chunk({}, "stop"),
    ]
    answer = completion({"role": "assistant", "content": "42", "reasoning_content": "Hmm."}, "stop")
    fake, gw, client = await bridged(openai_factory, gateway_factory, events=events, answer=answer)
    parts = [p async for p in await client.chat(model="m", messages=USER, think="high", stream=True)]
    assert fake.last["reasoning_effort"] == "high"
    assert [(p.message.thinking, p.message.content) for p in parts[:-1]] == [
        ("Let me ", ""),
        ("see.", ""),
        (None, "42"),
    ]
    whole = await client.chat(model="m", messages=USER, stream=False)
    assert whole.message.thinking == "Hmm." and whole.message.content == "42"


# --------------------------------------------------------------------------- tools and images

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


async def test_tools_not_streamed(openai_factory: OpenAIFactory, gateway_factory: GatewayFactory) -> None:
    calls = [
        {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    ]
    answer = completion({"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls")
    fake, gw, client = await bridged(openai_factory, gateway_factory, answer=answer)
    reply = await client.chat(model="m", messages=USER, tools=[WEATHER], stream=False)
    assert fake.last["tools"] == [WEATHER]
    assert reply.done_reason == "stop" and reply.message.content == ""
    assert reply.message.tool_calls is not None
    assert [(c.function.name, dict(c.function.arguments)) for c in reply.message.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    # The conversation goes on: the call (arguments an object) and its result, in OpenAI's shape with ids.
    history = [*USER, reply.message, {"role": "tool", "content": "18 degrees", "tool_name": "get_weather"}]
    await client.chat(model="m", messages=history, tools=[WEATHER], stream=False)
    sent = fake.last["messages"]
    assert sent[1]["role"] == "assistant"
    [call] = sent[1]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert sent[2] == {"role": "tool", "content": "18 degrees", "tool_call_id": call["id"]}


async def test_tools_streamed(openai_factory: OpenAIFactory, gateway_factory: GatewayFactory) -> None:
    def call_delta(index: int, **function: str) -> dict[str, Any]:
        return chunk({"tool_calls": [{"index": index, "function": function}]})

    events = [
        chunk({"role": "assistant", "content": ""}),
        call_delta(0, name="get_weather", arguments=""),
        call_delta(0, arguments='{"ci'),
        call_delta(0, arguments='ty": "Paris"}'),
        call_delta(1, name="get_weather", arguments='{"city": "Oslo"}'),
        chunk({}, "tool_calls"),
    ]
    fake, gw, client = await bridged(openai_factory, gateway_factory, events=events)
    parts = [p async for p in await client.chat(model="m", messages=USER, tools=[WEATHER], stream=True)]
    with_calls = [p for p in parts if p.message.tool_calls]
    assert len(with_calls) == 1  # accumulated, sent whole once
    calls = with_calls[0].message.tool_calls or []
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Oslo"}),
    ]
    assert parts[-1].done and parts[-1].done_reason == "stop" and parts[-1].eval_count == 5
    assert fake.last["tools"] == [WEATHER] and fake.last["stream"] is True


async def test_images(openai_factory: OpenAIFactory, gateway_factory: GatewayFactory) -> None:
    fake, gw, client = await bridged(openai_factory, gateway_factory)
    await client.chat(model="m", messages=[{"role": "user", "content": "what is it?", "images": [PNG]}], stream=False)
    assert fake.last["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is it?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            ],
        }
    ]
    await client.generate(model="m", prompt="describe", images=[JPEG], stream=False)
    [message] = fake.last["messages"]
    assert message["content"][1] == {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{JPEG}"}}


# --------------------------------------------------------------------------- generate


async def test_generate_not_streamed(openai_factory: OpenAIFactory, gateway_factory: GatewayFactory) -> None:
    fake, gw, client = await bridged(openai_factory, gateway_factory)
    answer = await client.generate(
        model="m", prompt="Why?", system="Be brief.", stream=False, options={"temperature": 0}
    )
    assert answer.response == "Hello!" and answer.done and answer.done_reason == "stop"
    assert answer.prompt_eval_count == 11 and answer.eval_count == 5
    assert fake.requests[-1].path == "/v1/chat/completions"  # the backend applies the chat template
    assert fake.last == {
        "model": "m",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}],
        "temperature": 0,
        "stream": False,
    }


async def test_generate_streamed_and_raw(openai_factory: OpenAIFactory, gateway_factory: GatewayFactory) -> None:
    fake, gw, client = await bridged(openai_factory, gateway_factory)
    parts = [p async for p in await client.generate(model="m", prompt="Why?", stream=True)]
    assert [p.response for p in parts] == ["Hel", "lo", "!", ""] and parts[-1].eval_count == 5
    # raw: the prompt is already templated, so it goes to the plain completions endpoint
    fake.events = [
        {
            "id": "c",
            "object": "text_completion",
            "created": 1700000000,
            "model": "m",
            "choices": [{"index": 0, "text": t, "finish_reason": f}],
        }
        for t, f in (("<b>", None), ("ok", None), ("", "length"))
    ]
    parts = [p async for p in await client.generate(model="m", prompt="<s>[INST] hi [/INST]", raw=True, stream=True)]
    assert fake.requests[-1].path == "/v1/completions"
    assert fake.last == {
        "model": "m",
        "prompt": "<s>[INST] hi [/INST]",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert [p.response for p in parts] == ["<b>", "ok", ""] and parts[-1].done_reason == "length"
    whole = await client.generate(model="m", prompt="x", raw=True, stream=False)
    assert whole.response == "Hello!" and whole.done_reason == "length"


async def test_empty_prompt_loads_without_a_backend_call(
    openai_factory: OpenAIFactory, gateway_factory: GatewayFactory
) -> None:
    fake, gw, client = await bridged(openai_factory, gateway_factory)
    loaded = await client.generate(model="m", prompt="", stream=False)
    assert loaded.done and loaded.done_reason == "load" and loaded.response == ""
    unloaded = await client.chat(model="m", messages=[], keep_alive=0, stream=False)
    assert unloaded.done and unloaded.done_reason == "unload"
    assert fake.requests == []


# --------------------------------------------------------------------------- embeddings and show


async def test_embed_and_embeddings(openai_factory: OpenAIFactory, gateway_factory: GatewayFactory) -> None:
    fake, gw, client = await bridged(openai_factory, gateway_factory)
    result = await client.embed(model="m", input=["a", "b"], dimensions=3)
    assert result.embeddings == [[0.0, 0.5, -1.0], [1.0, 0.5, -1.0]]  # in input order
    assert result.prompt_eval_count == 6 and result.total_duration
    assert fake.requests[-1].path == "/v1/embeddings"
    assert fake.last == {"model": "m", "input": ["a", "b"], "dimensions": 3, "encoding_format": "float"}
    legacy = await client.embeddings(model="m", prompt="a")
    assert legacy.embedding == [0.0, 0.5, -1.0]
    assert fake.last == {"model": "m", "input": "a", "encoding_format": "float"}
    assert gw.sample("gateway_tokens_total", backend="vllm", model="m", client="anonymous", kind="prompt") == 3 * 2


async def test_show_from_the_listing(openai_factory: OpenAIFactory, gateway_factory: GatewayFactory) -> None:
    fake, gw, client = await bridged(openai_factory, gateway_factory)
    shown = await client.show("m")
    assert shown.modelinfo == {"general.basename": "m", "general.context_length": 4096}
    assert shown.details is not None and shown.details.family == "vllm"
    assert shown.capabilities == ["completion"] and shown.modified_at is not None
    assert fake.requests == []  # answered from discovery, no backend call
    with pytest.raises(ollama.ResponseError) as err:
        await client.show("nope")
    assert err.value.status_code == 404


# --------------------------------------------------------------------------- errors


async def test_backend_error_in_ollama_shape(
    openai_factory: OpenAIFactory, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    body = {
        "error": {
            "message": "This model's maximum context length is 4096 tokens",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        }
    }
    fake, gw, client = await bridged(openai_factory, gateway_factory, status=400, status_body=body)
    with pytest.raises(ollama.ResponseError) as err:
        await client.chat(model="m", messages=USER, stream=False)
    assert err.value.status_code == 400 and err.value.error == "This model's maximum context length is 4096 tokens"
    with pytest.raises(ollama.ResponseError) as err:
        [p async for p in await client.chat(model="m", messages=USER, stream=True)]
    assert err.value.status_code == 400
    fake.status, fake.status_body = 422, {"detail": [{"loc": ["body", "messages"], "msg": "Field required"}]}
    async with http.post(gw.url + "/api/generate", json={"model": "m", "prompt": "x"}) as resp:
        assert resp.status == 422 and resp.content_type == "application/json"
        assert await resp.json() == {"error": "Field required"}


async def test_error_event_mid_stream(openai_factory: OpenAIFactory, gateway_factory: GatewayFactory) -> None:
    events: list[dict[str, Any] | bytes] = [
        chunk({"content": "Hi"}),
        {"error": {"message": "out of KV cache", "code": 500}},
    ]
    fake, gw, client = await bridged(openai_factory, gateway_factory, events=events)
    stream = await client.chat(model="m", messages=USER, stream=True)
    first = await stream.__anext__()
    assert first.message.content == "Hi"
    with pytest.raises(ollama.ResponseError, match="out of KV cache"):
        await stream.__anext__()


async def test_backend_dies_mid_stream(
    openai_factory: OpenAIFactory, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    fake, gw, client = await bridged(openai_factory, gateway_factory, drop_after=2)
    async with http.post(gw.url + "/api/chat", json={"model": "m", "messages": USER}) as resp:
        assert resp.status == 200
        lines = []
        with pytest.raises(aiohttp.ClientPayloadError):
            async for line in resp.content:
                lines.append(json.loads(line))
    # the two content lines, then an in-band Ollama error line; never a "done" line
    assert [d.get("message", {}).get("content") for d in lines[:2]] == ["Hel", "lo"]
    assert lines[2:] == [{"error": "the backend closed the connection in the middle of the response"}]


async def test_bad_client_body_is_a_400_in_ollama_shape(
    openai_factory: OpenAIFactory, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    fake, gw, client = await bridged(openai_factory, gateway_factory)
    cases = [
        ({"model": "m", "messages": "hi"}, "'messages' must be a list"),
        ({"model": "m", "messages": [{"content": "x"}]}, "'messages[0].role' is required"),
        ({"model": "m", "messages": USER, "format": 3}, "'format' must be \"json\" or a JSON schema object"),
        ({"model": "m", "messages": USER, "options": []}, "'options' must be an object"),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x", "images": [7]}]},
            "'messages[0].images[0]' must be a base64-encoded image",
        ),
    ]
    for payload, message in cases:
        async with http.post(gw.url + "/api/chat", json=payload) as resp:
            assert resp.status == 400, payload
            assert await resp.json() == {"error": message}
    assert fake.requests == []


# --------------------------------------------------------------------------- streaming and routing


async def test_translated_stream_is_not_buffered(
    openai_factory: OpenAIFactory, gateway_factory: GatewayFactory
) -> None:
    gate: asyncio.Queue[None] = asyncio.Queue()
    fake, gw, client = await bridged(openai_factory, gateway_factory, events=text_chunks("one", "two"), gate=gate)
    stream = (await client.chat(model="m", messages=USER, stream=True)).__aiter__()
    first = await asyncio.wait_for(stream.__anext__(), 10)
    assert first.message.content == "one"
    assert gate.empty() and len(fake.requests) == 1  # piece 2 is still held by the backend
    gate.put_nowait(None)
    second = await asyncio.wait_for(stream.__anext__(), 10)
    assert second.message.content == "two"
    for _ in range(3):  # finish, usage, [DONE]
        gate.put_nowait(None)
    rest = [p async for p in stream]
    assert rest[-1].done and rest[-1].eval_count == 5


async def test_translated_stream_through_aiohttp_client(
    openai_factory: OpenAIFactory, gateway_factory: GatewayFactory
) -> None:
    """HTTPS backends go through aiohttp's client and the relay's read loop instead of the pipe."""
    gate: asyncio.Queue[None] = asyncio.Queue()
    fake, gw, client = await bridged(openai_factory, gateway_factory, gate=gate)
    gw.state.backends[0].pool = None  # what an https:// backend has
    stream = (await client.chat(model="m", messages=USER, stream=True)).__aiter__()
    assert (await asyncio.wait_for(stream.__anext__(), 10)).message.content == "Hel"
    assert gate.empty()
    for _ in range(5):
        gate.put_nowait(None)
    rest = [p async for p in stream]
    assert [p.message.content for p in rest] == ["lo", "!", ""] and rest[-1].eval_count == 5


async def test_client_leaving_closes_the_backend_stream(
    openai_factory: OpenAIFactory, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gate: asyncio.Queue[None] = asyncio.Queue()
    fake, gw, client = await bridged(openai_factory, gateway_factory, gate=gate)
    resp = await http.post(gw.url + "/api/chat", json={"model": "m", "messages": USER})
    assert json.loads(await resp.content.readline())["message"]["content"] == "Hel"
    resp.close()
    gate.put_nowait(None)  # the backend's next write finds the gateway gone
    await asyncio.wait_for(fake.closed.wait(), 10)


async def test_passthrough_to_ollama_is_byte_for_byte(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    backend = await backend_factory("desktop", models=["m:latest"])
    gw = await gateway_factory({"backends": [backend_entry(backend)]})
    body = b'{ "model" : "m:latest",\n "messages": [{"role":"user","content":"h\\u00e9"}], "options": {"num_ctx": 8} }'
    async with http.post(gw.url + "/api/chat", data=body, headers={"Content-Type": "application/json"}) as resp:
        answer = await resp.read()
    assert backend.requests[-1].path == "/api/chat" and backend.requests[-1].body == body
    assert resp.content_type == "application/x-ndjson"
    assert [json.loads(line)["message"]["content"] for line in answer.splitlines()] == ["Hel", "lo", "!", ""]


async def test_failover_translates_only_the_attempt_that_needs_it(
    backend_factory: BackendFactory,
    openai_factory: OpenAIFactory,
    gateway_factory: GatewayFactory,
) -> None:
    ollama_box = await backend_factory("desktop", models=["m:latest"], status=503, status_body={"error": "busy"})
    vllm_box = await openai_factory(models=[{"id": "m:latest"}])
    gw = await gateway_factory({"backends": [backend_entry(ollama_box), entry(vllm_box)], "routing": {"retries": 1}})
    client = ollama.AsyncClient(host=gw.url)
    for _ in range(2):  # the router alternates: one request meets the Ollama box first, one the vLLM box
        reply = await client.chat(model="m:latest", messages=USER, stream=False)
        assert reply.message.content == "Hello!" and reply.eval_count == 5
    assert [r.path for r in ollama_box.requests] == ["/api/chat"]
    assert json.loads(ollama_box.requests[0].body)["messages"] == USER  # untranslated
    assert [r.path for r in vllm_box.requests] == ["/v1/chat/completions"] * 2


async def test_speaks_override_passes_through(openai_factory: OpenAIFactory, gateway_factory: GatewayFactory) -> None:
    """A backend declared to speak Ollama's dialect gets /api/* as is (here: its 404)."""
    fake = await openai_factory()
    gw = await gateway_factory({"backends": [entry(fake, speaks=["openai", "ollama"])]})
    with pytest.raises(ollama.ResponseError) as err:
        await ollama.AsyncClient(host=gw.url).chat(model="m", messages=USER, stream=False)
    assert err.value.status_code == 404 and fake.requests == []
