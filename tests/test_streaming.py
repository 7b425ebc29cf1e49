"""Streaming is relayed token by token, cancellation reaches the backend, failures end streams abnormally."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import ollama
import openai
import pytest

from .conftest import BackendFactory, GatewayFactory, backend_entry

STEP = 5.0  # generous bound for each event-sequenced step; tests never sleep


async def test_stream_is_not_buffered_sse(backend_factory: BackendFactory, gateway_factory: GatewayFactory) -> None:
    gate: asyncio.Queue[None] = asyncio.Queue()
    backend = await backend_factory("desktop", models=["m:latest"], chunks=["one", "two", "three"], gate=gate)
    gw = await gateway_factory({"backends": [backend_entry(backend)]})
    client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0)
    stream = await client.chat.completions.create(model="m", messages=[], stream=True)
    chunks = stream.__aiter__()
    # Chunk 1 reaches the client while the backend is still forbidden to send chunk 2.
    first = await asyncio.wait_for(chunks.__anext__(), STEP)
    assert first.choices[0].delta.content == "one"
    assert gate.empty() and len(backend.requests) == 1
    gate.put_nowait(None)
    second = await asyncio.wait_for(chunks.__anext__(), STEP)
    assert second.choices[0].delta.content == "two"
    for _ in range(3):
        gate.put_nowait(None)
    rest = [c async for c in chunks]
    assert rest[0].choices[0].delta.content == "three"
    await client.close()


async def test_stream_is_not_buffered_ndjson(backend_factory: BackendFactory, gateway_factory: GatewayFactory) -> None:
    gate: asyncio.Queue[None] = asyncio.Queue()
    backend = await backend_factory("desktop", models=["m:latest"], chunks=["a", "b"], gate=gate)
    gw = await gateway_factory({"backends": [backend_entry(backend)]})
    parts = (await ollama.AsyncClient(host=gw.url).generate(model="m", prompt="x", stream=True)).__aiter__()
    first = await asyncio.wait_for(parts.__anext__(), STEP)
    assert first.response == "a" and not first.done
    for _ in range(2):
        gate.put_nowait(None)
    rest = [p async for p in parts]
    assert [p.response for p in rest] == ["b", ""] and rest[-1].done


async def test_client_dropping_a_stream_closes_the_backend_connection(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    gate: asyncio.Queue[None] = asyncio.Queue()
    backend = await backend_factory("desktop", models=["m:latest"], chunks=["a", "b", "c"], gate=gate)
    gw = await gateway_factory({"backends": [backend_entry(backend)]})
    async with aiohttp.ClientSession() as http:
        resp = await http.post(f"{gw.url}/api/chat", json={"model": "m", "messages": []})
        first = await asyncio.wait_for(resp.content.readline(), STEP)
        assert json.loads(first)["message"]["content"] == "a"
        resp.close()  # the client goes away mid-stream
    await asyncio.wait_for(backend.closed.wait(), STEP)  # the backend saw its connection closed
    await _until(lambda: gw.sample("gateway_requests_total", backend="desktop", model="m", endpoint="/api/chat",
                                   code="499", client="anonymous") == 1)  # fmt: skip
    assert gw.state.backends[0].in_flight == 0


async def test_client_dropping_before_first_byte_closes_the_backend_connection(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    backend = await backend_factory("desktop", models=["m:latest"], hang=True)
    gw = await gateway_factory({"backends": [backend_entry(backend)]})
    async with aiohttp.ClientSession() as http:
        task = asyncio.ensure_future(http.post(f"{gw.url}/api/generate", json={"model": "m", "prompt": "x"}))
        await asyncio.wait_for(backend.started.wait(), STEP)  # the backend is "loading the model"
        task.cancel()  # the client gives up while nothing has been sent yet
        with pytest.raises(asyncio.CancelledError):
            await task
    await asyncio.wait_for(backend.closed.wait(), STEP)


async def test_client_dropping_a_non_streamed_request_closes_the_backend_connection(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    backend = await backend_factory("desktop", kind="openai", models=["m"], hang=True)
    gw = await gateway_factory({"backends": [backend_entry(backend)]})
    async with aiohttp.ClientSession() as http:
        task = asyncio.ensure_future(
            http.post(f"{gw.url}/v1/chat/completions", json={"model": "m", "messages": [], "stream": False})
        )
        await asyncio.wait_for(backend.started.wait(), STEP)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await asyncio.wait_for(backend.closed.wait(), STEP)


async def test_backend_dying_mid_stream_ends_the_client_stream_abnormally(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    backend = await backend_factory("desktop", models=["m:latest"], chunks=["a", "b", "c", "d"], drop_after=2)
    gw = await gateway_factory({"backends": [backend_entry(backend)]})
    # The openai client sees an error, never a clean, truncated stream.
    client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0)
    received = []
    with pytest.raises(openai.APIError) as caught:
        stream = await client.chat.completions.create(model="m", messages=[], stream=True)
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert received == ["a", "b"]
    assert "closed the connection in the middle of the response" in caught.value.message
    await client.close()
    # Raw view of the same: an in-band error event, then the body ends without its terminating chunk.
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw.url}/api/chat", json={"model": "m", "messages": []}) as resp:
            assert resp.status == 200
            lines = []
            with pytest.raises(aiohttp.ClientPayloadError):
                async for line in resp.content:
                    lines.append(json.loads(line))
    assert [x.get("message", {}).get("content") for x in lines[:2]] == ["a", "b"]
    assert lines[-1] == {"error": "the backend closed the connection in the middle of the response"}
    assert (
        gw.sample("gateway_upstream_errors_total", backend="desktop", reason="protocol")
        + gw.sample("gateway_upstream_errors_total", backend="desktop", reason="reset")
        == 2
    )


async def test_first_byte_timeout_is_504(backend_factory: BackendFactory, gateway_factory: GatewayFactory) -> None:
    backend = await backend_factory("desktop", models=["m:latest"], hang=True)
    gw = await gateway_factory({"backends": [backend_entry(backend, timeouts={"first_byte": "300ms"})]})
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw.url}/api/generate", json={"model": "m"}) as resp:
            assert resp.status == 504
            assert "no response within 0.3s" in (await resp.json())["error"]
    await asyncio.wait_for(backend.closed.wait(), STEP)


async def test_idle_timeout_mid_stream_ends_the_stream(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    gate: asyncio.Queue[None] = asyncio.Queue()  # never released after chunk 1: the backend goes quiet
    backend = await backend_factory("desktop", models=["m:latest"], chunks=["a", "b"], gate=gate)
    gw = await gateway_factory({"backends": [backend_entry(backend, timeouts={"idle": "300ms"})]})
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw.url}/api/generate", json={"model": "m"}) as resp:
            lines = []
            with pytest.raises(aiohttp.ClientPayloadError):
                async for line in resp.content:
                    lines.append(json.loads(line))
    assert lines[0]["response"] == "a"
    assert "idle timeout" in lines[-1]["error"]
    await asyncio.wait_for(backend.closed.wait(), STEP)


async def _until(predicate: object, attempts: int = 200) -> None:
    """Wait for a condition set by the gateway after the client saw the end (bounded, event-loop ticks)."""
    for _ in range(attempts):
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")
