"""Fair queueing through real sockets: a real gateway, a fake backend with a fixed service time at
``max_concurrency: 1``, and real clients (openai, ollama, anthropic, aiohttp) with their own keys."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import anthropic
import ollama
import openai
import pytest
from aiohttp import web

from .conftest import GatewayFactory, RunningGateway
from .fakes import serve_local

BATCH, INTERACTIVE, ADMIN = "sk-batch-0123456789", "sk-interactive-0123456789", "sk-admin-0123456789"
MODEL = "m"


def sha(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class TimedBackend:
    """A fake Ollama-type server that serves each request in a fixed time, or when ``gate`` opens.

    ``started`` lists each request's tag (its last message's content) in the order service began.
    """

    def __init__(self, service: float = 0.0, gate: asyncio.Event | None = None) -> None:
        self.service = service
        self.gate = gate
        self.started: list[str] = []
        self.url = ""
        self.runner: web.AppRunner | None = None

    async def start(self) -> TimedBackend:
        app = web.Application()
        app.router.add_get("/api/version", self.json({"version": "0.6.0"}))
        app.router.add_get(
            "/api/tags", self.json({"models": [{"name": f"{MODEL}:latest", "model": f"{MODEL}:latest"}]})
        )
        for path in ("/v1/chat/completions", "/api/chat", "/v1/messages"):
            app.router.add_post(path, self.chat)
        self.runner, self.url = await serve_local(app)
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @staticmethod
    def json(doc: Any) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            return web.json_response(doc)

        return handler

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.started.append(body["messages"][-1]["content"])
        if self.gate is not None:
            await self.gate.wait()
        else:
            await asyncio.sleep(self.service)
        if request.path == "/api/chat":
            return web.json_response(
                {"model": MODEL, "created_at": "2026-01-01T00:00:00Z",
                 "message": {"role": "assistant", "content": "ok"},
                 "done": True, "done_reason": "stop", "prompt_eval_count": 1, "eval_count": 1}
            )  # fmt: skip
        if request.path == "/v1/messages":
            return web.json_response(
                {"id": "msg_1", "type": "message", "role": "assistant", "model": MODEL, "stop_reason": "end_turn",
                 "content": [{"type": "text", "text": "ok"}], "usage": {"input_tokens": 1, "output_tokens": 1}}
            )  # fmt: skip
        return web.json_response(
            {"id": "c1", "object": "chat.completion", "created": 0, "model": MODEL,
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        )  # fmt: skip


@pytest.fixture
async def timed() -> AsyncIterator[Callable[..., Any]]:
    backends: list[TimedBackend] = []

    async def make(service: float = 0.0, gate: asyncio.Event | None = None) -> TimedBackend:
        backend = await TimedBackend(service, gate).start()
        backends.append(backend)
        return backend

    yield make
    for backend in backends:
        await backend.stop()


def config(
    backend: TimedBackend,
    *,
    batch: dict[str, Any] | None = None,
    interactive: dict[str, Any] | None = None,
    routing: dict[str, Any] | None = None,
    auth: bool = True,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "backends": [
            {"name": "gpu", "url": backend.url, "type": "ollama", "max_concurrency": 1,
             "health_check": {"interval": "60s", "timeout": "2s"}}
        ],
        "routing": {"queue_size": 100, "queue_timeout": "30s", **(routing or {})},
    }  # fmt: skip
    if auth:
        doc["auth"] = {
            "api_keys": [
                {"name": "batch", "hash": sha(BATCH), **(batch or {})},
                {"name": "interactive", "hash": sha(INTERACTIVE), **(interactive or {})},
                {"name": "admin", "hash": sha(ADMIN), "admin": True},
            ]
        }
    return doc


def openai_client(gw: RunningGateway, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=60)


async def ask(client: openai.AsyncOpenAI, tag: str) -> None:
    await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": tag}])


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for the gateway's own state to reach ``condition`` (bounded)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.002)


async def test_one_request_behind_a_flood_of_twenty_is_served_next(
    timed: Callable[..., Any], gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    service = 0.25
    backend = await timed(service)
    gw = await gateway_factory(config(backend))
    gpu = gw.state.backends[0]
    async with openai_client(gw, BATCH) as batch, openai_client(gw, INTERACTIVE) as interactive:
        flood = [asyncio.create_task(ask(batch, f"a{i}")) for i in range(20)]
        await until(lambda: gpu.waiting == 19)
        async with http.get(f"{gw.url}/dashboard/data", headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
            queued = (await resp.json())["backends"][0]["queued"]
        assert queued == [{"client": "batch", "count": 19}]

        begun = len(backend.started)  # one of a's is being served
        arrived = time.monotonic()
        await ask(interactive, "b")
        took = time.monotonic() - arrived
        await asyncio.gather(*flood)

    # FIFO would have served b after all twenty (~5 s); fair queueing serves it next.
    assert backend.started.index("b") == begun
    assert took <= 2 * service + 0.1, f"b took {took:.3f}s, service time {service}s"
    assert backend.started[-1] != "b"
    assert gw.sample("gateway_queue_wait_seconds_count", backend="gpu") == 20  # 19 of a's and b waited
    assert gw.sample("gateway_queue_wait_seconds_sum", backend="gpu") > 19 * service
    assert gpu.in_flight == 0 and gpu.waiting == 0 and gpu.queue is not None and gpu.queue.in_use == 0
    async with http.get(f"{gw.url}/metrics") as resp:
        assert 'gateway_queue_wait_seconds_count{backend="gpu"} 20.0' in await resp.text()


async def test_shares_three_to_one_are_served_three_to_one(
    timed: Callable[..., Any], gateway_factory: GatewayFactory
) -> None:
    backend = await timed(0.01)
    gw = await gateway_factory(config(backend, batch={"share": 3}, interactive={"share": 1}))
    target = 160
    stop = asyncio.Event()

    async def keep_busy(client: openai.AsyncOpenAI, tag: str) -> None:
        for i in range(target):  # bounded: never more than the whole window
            if stop.is_set():
                return
            await ask(client, f"{tag}{i}")
            if len(backend.started) >= target:
                stop.set()

    async with openai_client(gw, BATCH) as three, openai_client(gw, INTERACTIVE) as one:
        async with asyncio.timeout(60):
            # Eight requests in flight per client keep both lines full the whole time.
            await asyncio.gather(*(keep_busy(c, t) for c, t in ((three, "x"), (one, "y")) for _ in range(8)))
    window = backend.started[20:target]  # after both lines filled up
    x = sum(1 for tag in window if tag.startswith("x"))
    y = len(window) - x
    assert 2.7 <= x / y <= 3.3, f"served {x}:{y}"


async def test_max_queued_is_a_429_in_every_dialect_and_caps_only_that_client(
    timed: Callable[..., Any], gateway_factory: GatewayFactory
) -> None:
    gate = asyncio.Event()
    backend = await timed(gate=gate)
    gw = await gateway_factory(config(backend, batch={"limits": {"max_queued": 2}}))
    gpu = gw.state.backends[0]
    async with openai_client(gw, BATCH) as batch, openai_client(gw, INTERACTIVE) as interactive:
        held = [asyncio.create_task(ask(batch, f"a{i}")) for i in range(3)]  # one served, two waiting
        await until(lambda: gpu.waiting == 2)

        with pytest.raises(openai.RateLimitError) as over:
            await ask(batch, "a-over")
        assert over.value.status_code == 429
        assert over.value.response.headers["Retry-After"] == "1"
        error = over.value.response.json()["error"]
        assert "max_queued" in error["message"] and "'batch'" in error["message"]
        assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"

        ollama_client = ollama.AsyncClient(host=gw.url, headers={"Authorization": f"Bearer {BATCH}"})
        with pytest.raises(ollama.ResponseError) as native:
            await ollama_client.chat(model=MODEL, messages=[{"role": "user", "content": "a-over-ollama"}])
        assert native.value.status_code == 429 and "max_queued" in native.value.error

        async with anthropic.AsyncAnthropic(base_url=gw.url, api_key=BATCH, max_retries=0) as claude:
            with pytest.raises(anthropic.RateLimitError) as messages:
                await claude.messages.create(
                    model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "a-over-anthropic"}]
                )
        body = messages.value.response.json()
        assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
        assert "max_queued" in body["error"]["message"] and messages.value.response.headers["Retry-After"] == "1"

        other = asyncio.create_task(ask(interactive, "b"))  # another client may still wait
        await until(lambda: gpu.waiting == 3)
        gate.set()
        await asyncio.gather(*held, other)
    assert sorted(backend.started) == ["a0", "a1", "a2", "b"]


async def test_queue_size_and_queue_timeout_still_bound_the_whole_room(
    timed: Callable[..., Any], gateway_factory: GatewayFactory
) -> None:
    gate = asyncio.Event()
    backend = await timed(gate=gate)
    gw = await gateway_factory(config(backend, routing={"queue_size": 2, "queue_timeout": "0.3s"}))
    gpu = gw.state.backends[0]
    async with openai_client(gw, BATCH) as batch, openai_client(gw, INTERACTIVE) as interactive:
        first = asyncio.create_task(ask(batch, "a0"))
        await until(lambda: backend.started == ["a0"])
        waiting = [asyncio.create_task(ask(batch, "a1")), asyncio.create_task(ask(interactive, "b1"))]
        await until(lambda: gpu.waiting == 2)
        with pytest.raises(openai.RateLimitError) as full:
            await ask(interactive, "b2")
        assert "queue is full" in full.value.response.json()["error"]["message"]
        assert full.value.response.headers["Retry-After"] == "1"

        for task in waiting:  # nobody serves them within queue_timeout: 503 with Retry-After
            with pytest.raises(openai.InternalServerError) as busy:
                await task
            assert busy.value.status_code == 503 and busy.value.response.headers["Retry-After"] == "5"
            assert busy.value.response.json()["error"]["code"] == "backend_busy"
        assert gpu.waiting == 0
        gate.set()
        await first
        await ask(interactive, "b3")  # the slot came back
    assert backend.started == ["a0", "b3"]
    assert gpu.in_flight == 0 and gpu.queue is not None and gpu.queue.in_use == 0


async def test_a_client_gone_while_waiting_leaves_the_queue_and_no_slot_is_lost(
    timed: Callable[..., Any], gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gate = asyncio.Event()
    backend = await timed(gate=gate)
    gw = await gateway_factory(config(backend))
    gpu = gw.state.backends[0]
    headers = {"Authorization": f"Bearer {BATCH}"}

    def post(tag: str) -> Any:
        doc = {"model": MODEL, "messages": [{"role": "user", "content": tag}]}
        return http.post(f"{gw.url}/v1/chat/completions", data=json.dumps(doc), headers=headers)

    async def send(tag: str) -> int:
        async with post(tag) as resp:
            await resp.read()
            return resp.status

    first = asyncio.create_task(send("a0"))
    await until(lambda: backend.started == ["a0"])
    leaving = [asyncio.create_task(send(f"gone{i}")) for i in range(5)]
    staying = asyncio.create_task(send("a1"))
    await until(lambda: gpu.waiting == 6)
    for task in leaving:
        task.cancel()  # closes those connections: the gateway's handlers are cancelled
    await until(lambda: gpu.waiting == 1)  # they left at once, before any slot came free
    gate.set()
    assert await first == 200 and await staying == 200
    assert backend.started == ["a0", "a1"]
    await until(lambda: gpu.in_flight == 0)
    assert gpu.queue is not None and gpu.queue.in_use == 0 and gpu.queue.queued() == {}


async def test_anonymous_callers_are_queued_by_source_address(
    timed: Callable[..., Any], gateway_factory: GatewayFactory
) -> None:
    gate = asyncio.Event()
    backend = await timed(gate=gate)
    gw = await gateway_factory(config(backend, auth=False))
    gpu = gw.state.backends[0]

    async def send(session: aiohttp.ClientSession, tag: str) -> int:
        doc = {"model": MODEL, "messages": [{"role": "user", "content": tag}]}
        async with session.post(f"{gw.url}/api/chat", json={**doc, "stream": False}) as resp:
            await resp.read()
            return resp.status

    here = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.1", 0)))
    there = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0)))
    async with here, there:
        flood = [asyncio.create_task(send(here, f"a{i}")) for i in range(10)]
        await until(lambda: gpu.waiting == 9)
        single = asyncio.create_task(send(there, "b"))
        await until(lambda: gpu.waiting == 10)
        assert gpu.queue is not None
        assert gpu.queue.queued() == {"127.0.0.1": 9, "127.0.0.2": 1}
        gate.set()
        assert set(await asyncio.gather(*flood, single)) == {200}
    assert backend.started.index("b") == 1
