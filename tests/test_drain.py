"""Graceful drain through the real `gateway` process and real signals (SIGTERM, `--workers 2`)."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from .conftest import BackendFactory, backend_entry
from .fakes import FakeBackend
from .gateway_process import gateway_process


def config(backend: FakeBackend, **server: Any) -> dict[str, Any]:
    return {"backends": [backend_entry(backend)], "server": server}


def client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


async def test_stream_in_flight_completes_across_sigterm_while_readyz_fails_and_listener_closes(
    tmp_path: Path, backend_factory: BackendFactory
) -> None:
    gate: asyncio.Queue[None] = asyncio.Queue()
    backend = await backend_factory("box", kind="openai", models=["m1"], gate=gate)
    doc = config(backend, shutdown_timeout="20s", shutdown_delay="8s")  # a window wide enough on a busy machine
    async with gateway_process(tmp_path, doc) as gw:
        api = client(gw.url)
        stream = await api.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        # The first piece is out: the stream is in flight. (__anext__, not "async for ... break": a broken-off
        # async-for leaves a generator behind that the collector may close while the stream is read again.)
        parts = [(await stream.__anext__()).choices[0].delta.content]
        async with aiohttp.ClientSession() as http:  # an idle keep-alive connection, open before the signal
            async with http.get(f"{gw.url}/healthz") as resp:
                assert resp.status == 200
            gw.proc.send_signal(signal.SIGTERM)
            await gw.wait_log("/readyz answers 503")
            async with aiohttp.ClientSession() as fresh, fresh.get(f"{gw.url}/readyz") as resp:
                assert resp.status == 503 and (await resp.json())["status"] == "draining"
                assert resp.headers["Connection"] == "close"  # new work is told not to come back on it
            await gw.wait_log("listener closed")
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", gw.port)
            with pytest.raises(aiohttp.ClientConnectionError):  # the idle keep-alive connection was closed
                async with http.get(f"{gw.url}/healthz") as resp:
                    pass
        assert gw.proc.returncode is None  # still draining: the stream holds it
        for _ in range(len(backend.chunks) + 3):
            gate.put_nowait(None)
        async for chunk in stream:
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content)
        assert "".join(p or "" for p in parts) == "Hello!"  # every piece, then a clean end ([DONE])
        assert await gw.exit_code() == 0
    assert "Traceback" not in gw.log


async def test_stream_longer_than_the_timeout_ends_abnormally_and_the_process_exits_0(
    tmp_path: Path, backend_factory: BackendFactory
) -> None:
    gate: asyncio.Queue[None] = asyncio.Queue()  # never opened: the streams never finish by themselves
    openai_box = await backend_factory("box", kind="openai", models=["m1"], gate=gate)
    ollama_box = await backend_factory("ollama", kind="ollama", models=["llama3.2:latest"], gate=gate)
    doc = {"backends": [backend_entry(openai_box), backend_entry(ollama_box)], "server": {"shutdown_timeout": "1s"}}
    async with gateway_process(tmp_path, doc) as gw:
        api = client(gw.url)
        stream = await api.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        first = await stream.__anext__()
        assert first.choices[0].delta.content == "Hel"
        async with aiohttp.ClientSession() as http:
            body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
            async with http.post(f"{gw.url}/api/chat", json=body) as ndjson:
                lines = [await ndjson.content.readline()]
                assert json.loads(lines[0])["message"]["content"] == "Hel"
                started = asyncio.get_running_loop().time()
                gw.proc.send_signal(signal.SIGTERM)
                with pytest.raises(openai.APIError, match="the gateway shut down before the response was complete"):
                    async for _ in stream:
                        pass
                with pytest.raises(aiohttp.ClientPayloadError):  # no terminating chunk: not a clean end
                    while line := await ndjson.content.readline():
                        lines.append(line)
        error = json.loads(lines[-1])
        assert error == {"error": "the gateway shut down before the response was complete (server.shutdown_timeout)"}
        assert not any(json.loads(line).get("done") for line in lines)
        assert await gw.exit_code() == 0
        assert asyncio.get_running_loop().time() - started < 10  # the timeout (1 s) plus a little, not 2x
    assert "shutdown timeout (1s) passed: ending 2 connection(s) still busy" in gw.log


async def test_workers_2_the_parent_drains_every_worker(tmp_path: Path, backend_factory: BackendFactory) -> None:
    gate: asyncio.Queue[None] = asyncio.Queue()
    backend = await backend_factory("box", kind="openai", models=["m1"], gate=gate)
    async with gateway_process(tmp_path, config(backend, shutdown_timeout="20s"), "--workers", "2") as gw:
        await gw.wait_log("listening on", count=2)
        streams = []
        for _ in range(4):  # the kernel spreads connections over both workers (SO_REUSEPORT)
            stream = await client(gw.url).chat.completions.create(
                model="m1", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            await stream.__anext__()
            streams.append(stream)
        gw.proc.send_signal(signal.SIGTERM)
        await gw.wait_log("listener closed", count=2)  # both workers are draining
        assert gw.proc.returncode is None
        for _ in range(4 * (len(backend.chunks) + 3)):
            gate.put_nowait(None)
        for stream in streams:
            text = ["Hel"]
            async for chunk in stream:
                if chunk.choices:
                    text.append(chunk.choices[0].delta.content or "")
            assert "".join(text) == "Hello!"
        assert await gw.exit_code() == 0
    assert gw.log.count("INFO gateway: stopped") == 2


async def test_requests_still_waiting_for_their_backend_at_the_deadline_get_a_503_in_their_dialect(
    tmp_path: Path, backend_factory: BackendFactory
) -> None:
    """Past shutdown_timeout, a request with no answer started yet is answered, not dropped."""
    openai_box = await backend_factory("box", kind="openai", models=["m1"], hang=True)
    ollama_box = await backend_factory("ollama", kind="ollama", models=["llama3.2:latest"], hang=True)
    doc = {"backends": [backend_entry(openai_box), backend_entry(ollama_box)], "server": {"shutdown_timeout": "1s"}}
    async with gateway_process(tmp_path, doc) as gw, aiohttp.ClientSession() as http:
        chat = {"messages": [{"role": "user", "content": "hi"}], "stream": False}

        async def ask(path: str, model: str) -> tuple[int, Any, str]:
            async with http.post(f"{gw.url}{path}", json={**chat, "model": model}) as resp:
                return resp.status, await resp.json(), resp.headers.get("Retry-After", "")

        waiting = [
            asyncio.create_task(ask("/v1/chat/completions", "m1")),
            asyncio.create_task(ask("/api/chat", "llama3.2")),
        ]
        await openai_box.started.wait()
        await ollama_box.started.wait()
        gw.proc.send_signal(signal.SIGTERM)
        (openai_status, openai_body, retry), (ollama_status, ollama_body, _) = await asyncio.gather(*waiting)
        message = "the gateway shut down before the backend answered (server.shutdown_timeout); retry"
        assert (openai_status, openai_body["error"]["message"], retry) == (503, message, "1")
        assert (ollama_status, ollama_body) == (503, {"error": message})
        assert await gw.exit_code() == 0
        await asyncio.wait_for(openai_box.closed.wait(), 5)  # the backend's request was closed (the GPU stops)
