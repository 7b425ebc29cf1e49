"""Placement that avoids cold loads, through the real gateway against fake Ollama boxes with limited memory."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import ollama
import pytest
from aiohttp import web

from gateway.metrics import Metrics
from gateway.placement import DEFAULT_KEEP_ALIVE, FOREVER, LoadedModels, keep_alive_seconds

from .conftest import GatewayFactory, RunningGateway
from .fakes import serve_local


@dataclass(eq=False)
class OllamaBox:
    """A fake Ollama server that holds at most ``max_loaded`` models: loading one takes ``load_time``
    and evicts the least recently used; ``keep_alive`` expiries unload; ``/api/ps`` tells the truth."""

    name: str
    models: tuple[str, ...] = ("a:latest", "b:latest")
    max_loaded: int = 1
    load_time: float = 0.02
    loaded: dict[str, float] = field(default_factory=dict)  # model -> expiry (time.time()); LRU first
    loads: dict[str, int] = field(default_factory=dict)  # cold loads this box really did, per model
    served: list[str] = field(default_factory=list)  # model of every generation request, in order
    url: str = ""
    runner: web.AppRunner | None = None
    arrivals: asyncio.Queue[str] | None = None  # when set: each request is announced here on arrival...
    release: asyncio.Event | None = None  # ...and answered only once this is set
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def start(self) -> OllamaBox:
        app = web.Application()
        app.router.add_get("/api/version", self.version)
        app.router.add_get("/api/tags", self.tags)
        app.router.add_get("/api/ps", self.ps)
        app.router.add_post("/api/chat", self.chat)
        app.router.add_post("/v1/chat/completions", self.chat)
        self.runner, self.url = await serve_local(app, handler_cancellation=False)
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def preload(self, model: str, keep_alive: float = DEFAULT_KEEP_ALIVE) -> None:
        self.loaded[model] = time.time() + keep_alive

    def _expire(self) -> None:
        now = time.time()
        for model in [m for m, t in self.loaded.items() if t <= now]:
            del self.loaded[model]

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.12.3"})

    async def tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": m, "model": m, "size": 1} for m in self.models]})

    async def ps(self, request: web.Request) -> web.Response:
        self._expire()
        models = [
            {"name": m, "model": m, "size_vram": 1, "expires_at": datetime.fromtimestamp(t, UTC).isoformat()}
            for m, t in self.loaded.items()
        ]
        return web.json_response({"models": models})

    async def chat(self, request: web.Request) -> web.Response:
        payload = await request.json()
        model = payload["model"]
        if ":" not in model:
            model += ":latest"
        self.served.append(model)
        if self.arrivals is not None and self.release is not None:
            self.arrivals.put_nowait(model)
            await self.release.wait()
        async with self._lock:  # one load at a time, as a GPU does
            self._expire()
            if model not in self.loaded:
                await asyncio.sleep(self.load_time)
                self.loads[model] = self.loads.get(model, 0) + 1
                while len(self.loaded) >= self.max_loaded:
                    del self.loaded[next(iter(self.loaded))]
            self.loaded.pop(model, None)
            keep = keep_alive_seconds(payload.get("keep_alive"))
            self.loaded[model] = time.time() + (1e9 if keep == FOREVER else keep)
        if request.path.startswith("/v1/"):
            message = {"role": "assistant", "content": f"{self.name}:{model}"}
            doc: dict[str, Any] = {"id": "c1", "object": "chat.completion", "created": 1, "model": model,
                                   "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}  # fmt: skip
            return web.json_response(doc)
        return web.json_response(
            {
                "model": model,
                "created_at": "2025-01-01T00:00:00Z",
                "done": True,
                "done_reason": "stop",
                "message": {"role": "assistant", "content": f"{self.name}:{model}"},
            }  # fmt: skip
        )

    @property
    def total_loads(self) -> int:
        return sum(self.loads.values())


BoxFactory = Callable[..., Awaitable[OllamaBox]]


@pytest.fixture
async def box_factory() -> AsyncIterator[BoxFactory]:
    boxes: list[OllamaBox] = []

    async def make(name: str, **options: Any) -> OllamaBox:
        box = await OllamaBox(name, **options).start()
        boxes.append(box)
        return box

    yield make
    for box in boxes:
        await box.stop()


def box_entry(box: OllamaBox, kind: str = "ollama") -> dict[str, Any]:
    return {"name": box.name, "url": box.url, "type": kind, "models": list(box.models),
            "health_check": {"interval": "60s", "timeout": "2s"}}  # fmt: skip


def cold_loads(gw: RunningGateway) -> float:
    """The sum of every gateway_cold_loads_total series (labels: backend, model as routed)."""
    assert gw.state.metrics is not None
    samples = [s for f in gw.state.metrics.registry.collect() for s in f.samples]
    return sum(s.value for s in samples if s.name == "gateway_cold_loads_total")


async def alternating_clients(url: str, rounds: int, boxes: list[OllamaBox]) -> None:
    """Two clients in lockstep, each alternating the two models (one starts with a, the other with b).

    In each round both requests are in flight together, and the first reaches its box before the
    second is sent: the same interleaving every run, so the counts below are exact.
    """
    arrivals: asyncio.Queue[str] = asyncio.Queue()
    release = asyncio.Event()
    for box in boxes:
        box.arrivals, box.release = arrivals, release
    client = ollama.AsyncClient(host=url)
    order = ("a:latest", "b:latest")
    for r in range(rounds):
        first, second = order[r % 2], order[(r + 1) % 2]
        release.clear()
        tasks = []
        for model in (first, second):
            tasks.append(asyncio.create_task(client.chat(model=model, messages=[{"role": "user", "content": "hi"}])))
            await arrivals.get()
        release.set()
        answers = await asyncio.gather(*tasks)
        assert [a.message.content.split(":", 1)[1] for a in answers] == [first, second]


async def test_alternating_models_cause_no_cold_loads_after_warm_up(
    box_factory: BoxFactory, gateway_factory: GatewayFactory
) -> None:
    rounds = 10
    # Placement: Ollama backends. Two boxes, each holding one model; two models alternating.
    one, two = await box_factory("one"), await box_factory("two")
    gw = await gateway_factory({"backends": [box_entry(one), box_entry(two)]})
    await alternating_clients(gw.url, rounds, [one, two])
    assert one.total_loads + two.total_loads == 2  # warm-up only: each model loaded once, on its own box
    assert {tuple(set(one.served)), tuple(set(two.served))} == {("a:latest",), ("b:latest",)}
    assert cold_loads(gw) == 2  # the gateway's count agrees with what the boxes did

    # The same boxes behind plain least-in-flight routing (typed openai: no placement): a load per request.
    three, four = await box_factory("three"), await box_factory("four")
    plain = await gateway_factory({"backends": [box_entry(three, "openai"), box_entry(four, "openai")]})
    await alternating_clients(plain.url, rounds, [three, four])
    assert three.total_loads + four.total_loads == 2 * rounds


async def test_the_probe_learns_loaded_models_and_capacity_from_api_ps(
    box_factory: BoxFactory, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    empty = await box_factory("empty", models=("a:latest", "b:latest", "c:latest"), max_loaded=2)
    warm = await box_factory("warm", models=("a:latest", "b:latest", "c:latest"), max_loaded=2)
    warm.preload("b:latest")
    warm.preload("c:latest")  # warm is full (2 of 2): its /api/ps says so
    gw = await gateway_factory({"backends": [box_entry(warm), box_entry(empty)]})
    assert gw.state.backends[0].loaded is not None
    assert gw.state.backends[0].loaded.capacity == 2
    for _ in range(3):  # b is loaded on warm: it goes there, as the OpenAI dialect too, without a load
        async with http.post(f"{gw.url}/v1/chat/completions", json={"model": "b", "messages": []}) as resp:
            assert (await resp.json())["choices"][0]["message"]["content"] == "warm:b:latest"
    assert warm.total_loads == 0 and cold_loads(gw) == 0
    for _ in range(3):  # a is loaded nowhere: the box with room takes it, not the full one (rotation or not)
        async with http.post(f"{gw.url}/api/chat", json={"model": "a", "stream": False, "messages": []}) as resp:
            assert (await resp.json())["message"]["content"] == "empty:a:latest"
    assert empty.total_loads == 1 and cold_loads(gw) == 1
    async with http.get(f"{gw.url}/dashboard/data") as resp:  # the status page shows what each box holds
        rows = {row["name"]: row["loaded"] for row in (await resp.json())["backends"]}
    assert rows == {"warm": ["c:latest", "b:latest"], "empty": ["a:latest"]}


async def test_keep_alive_expiry_is_followed(
    box_factory: BoxFactory, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    box = await box_factory("box")
    gw = await gateway_factory({"backends": [box_entry(box)]})

    async def send(keep_alive: Any) -> None:
        body = {"model": "a", "stream": False, "messages": [], "keep_alive": keep_alive}
        async with http.post(f"{gw.url}/api/chat", data=json.dumps(body)) as resp:
            assert resp.status == 200

    await send(0)  # unloaded as soon as it answered
    await send("0s")
    assert box.loads == {"a:latest": 2} and cold_loads(gw) == 2
    await send("10m")
    await send(600)
    await send(None)  # the default (5m)
    assert box.loads == {"a:latest": 3} and cold_loads(gw) == 3


async def test_a_failed_box_is_not_believed_to_hold_the_model(
    box_factory: BoxFactory, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    good = await box_factory("good")
    gone = await box_factory("gone")
    gw = await gateway_factory({"backends": [box_entry(gone), box_entry(good)]})
    await gone.stop()
    for _ in range(4):
        async with http.post(f"{gw.url}/api/chat", json={"model": "a", "stream": False, "messages": []}) as resp:
            assert (await resp.json())["message"]["content"] == "good:a:latest"
    gone_view = gw.state.backends[0].loaded
    assert gone_view is not None and gone_view.describe() == []


def test_rank_prefers_loaded_then_room_then_idle_then_busy() -> None:
    now = time.monotonic()
    box = LoadedModels("box")
    assert box.rank("a", now) == 1  # empty: room
    box.begin("a", "a", None)
    assert box.rank("a", now) == 0
    assert box.rank("b", now) == 3  # its one slot is busy
    box.end("a")
    assert box.rank("b", now) == 2  # idle: evicting a costs nobody a stream
    box.sync({"models": [{"name": "a"}, {"name": "b"}]}, str)
    assert box.capacity == 2 and box.rank("b", now) == 0 and box.rank("c", now) == 2


def test_cold_loads_metric_single_process() -> None:
    metrics = Metrics(["one"])
    metrics.cold_load("one", "a:latest")
    metrics.cold_load("one", "a:latest")
    assert metrics.registry.get_sample_value("gateway_cold_loads_total", {"backend": "one", "model": "a:latest"}) == 2
    assert 'gateway_cold_loads_total{backend="one",model="a:latest"} 2.0' in metrics.render()[0].decode()


def test_keep_alive_parsing() -> None:
    assert keep_alive_seconds(None) == DEFAULT_KEEP_ALIVE
    assert keep_alive_seconds("1h30m") == 5400
    assert keep_alive_seconds("500ms") == 0.5
    assert keep_alive_seconds(-1) == FOREVER and keep_alive_seconds("-1m") == FOREVER
    assert keep_alive_seconds("3600") == 3600
    assert keep_alive_seconds("soon") == DEFAULT_KEEP_ALIVE
