"""Circuit breaking through the real gateway: failing backends are taken out at once and come back by trial."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.circuit import Circuit
from gateway.config import CircuitConfig

from .browser import browser_page
from .conftest import BackendFactory, GatewayFactory, RunningGateway, backend_entry
from .fakes import FakeBackend
from .test_dashboard_browser import wait_until

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@dataclass(eq=False)
class HeldBackend(FakeBackend):
    """A fake whose routed answers wait for ``hold`` (when set): keeps a trial request in flight."""

    hold: asyncio.Event | None = None

    async def _special(self) -> web.Response | None:
        if self.hold is not None:
            await self.hold.wait()
        return await super()._special()


async def chat(
    http: aiohttp.ClientSession, gw: RunningGateway, path: str = "/v1/chat/completions"
) -> tuple[int, Any, str]:
    """(status, JSON body, X-Fake-Backend) of one non-streamed chat request."""
    async with http.post(f"{gw.url}{path}", json={**CHAT, "stream": False}) as resp:
        return resp.status, await resp.json(), resp.headers.get("X-Fake-Backend", "")


async def dashboard_row(http: aiohttp.ClientSession, gw: RunningGateway, name: str) -> dict[str, Any]:
    async with http.get(f"{gw.url}/dashboard/data") as resp:
        assert resp.status == 200
        rows = (await resp.json())["backends"]
    return next(r for r in rows if r["name"] == name)


async def test_a_hanging_backend_is_skipped_without_paying_its_timeout(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    hanging = await backend_factory("hanging", kind="openai", hang=True)
    good = await backend_factory("good", kind="openai")
    first_byte = 1.0
    entries = [
        backend_entry(b, models=["m"], timeouts={"first_byte": first_byte}, circuit={"failures": 2, "cooldown": "60s"})
        for b in (hanging, good)
    ]
    gw = await gateway_factory({"backends": entries})
    statuses = []
    while len(hanging.requests) < 2:  # rotation sends some requests to it: each costs the first-byte timeout
        status, _, _ = await chat(http, gw)
        statuses.append(status)
        assert len(statuses) < 10
    assert statuses.count(504) == 2
    assert gw.sample("gateway_backend_up", backend="hanging") == 0
    assert gw.sample("gateway_backend_up", backend="good") == 1
    row = await dashboard_row(http, gw, "hanging")
    assert row["up"] is False
    assert row["out"].startswith("circuit open: 2 consecutive failures (first-byte timeout), retry in ")
    # From now on every request goes to the good backend and none waits for the hanging one.
    for _ in range(6):
        started = time.monotonic()
        status, _, served_by = await chat(http, gw)
        elapsed = time.monotonic() - started
        assert (status, served_by) == (200, "good")
        assert elapsed < first_byte / 2
    assert len(hanging.requests) == 2


async def test_after_the_cooldown_exactly_one_trial_decides(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    flaky = await HeldBackend("flaky", kind="openai", status=503).start()
    try:
        cooldown = 0.3
        entry = backend_entry(flaky, models=["m"], circuit={"failures": 3, "cooldown": cooldown})
        gw = await gateway_factory({"backends": [entry], "routing": {"retries": 0}})
        for _ in range(3):  # the backend's own 503s are relayed while they are counted
            status, body, served_by = await chat(http, gw)
            assert (status, body, served_by) == (503, {"error": "fake failure"}, "flaky")
        # Open: the gateway answers for it, in the endpoint's dialect, with Retry-After.
        async with http.post(f"{gw.url}/api/chat", json={**CHAT, "stream": False}) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "1"
            message = (await resp.json())["error"]
        assert "flaky: circuit open: 3 consecutive failures (HTTP 502/503/504)" in message
        async with http.post(f"{gw.url}/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 503
            assert (await resp.json())["error"]["type"] == "service_unavailable"
        assert len(flaky.requests) == 3
        assert gw.sample("gateway_backend_up", backend="flaky") == 0

        circuit = gw.state.backends[0].circuit
        assert circuit is not None
        await asyncio.sleep(circuit.retry_in())  # the cooldown is time itself: nothing to wait on but the clock
        flaky.status = None  # it recovered
        flaky.hold = asyncio.Event()
        flaky.started.clear()
        trial = asyncio.create_task(chat(http, gw))
        await flaky.started.wait()  # the trial reached the backend and is held there
        for _ in range(3):  # while it is in flight nothing else is let through
            status, body, served_by = await chat(http, gw)
            assert status == 503 and served_by == ""
            assert "circuit half-open: trial request in flight" in body["error"]["message"]
        assert len(flaky.requests) == 4
        flaky.hold.set()
        status, _, served_by = await trial
        assert (status, served_by) == (200, "flaky")
        assert gw.sample("gateway_backend_up", backend="flaky") == 1
        assert (await dashboard_row(http, gw, "flaky"))["out"] is None
        for _ in range(3):
            assert (await chat(http, gw))[0] == 200
    finally:
        await flaky.stop()


async def test_a_failed_trial_reopens_for_another_cooldown(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    broken = await backend_factory("broken", kind="openai", status=502)
    entry = backend_entry(broken, models=["m"], circuit={"failures": 1, "cooldown": 1.0})
    gw = await gateway_factory({"backends": [entry], "routing": {"retries": 0}})
    assert (await chat(http, gw))[2] == "broken"  # its 502, relayed; the circuit opens
    assert (await chat(http, gw))[2] == ""  # the gateway's 503
    circuit = gw.state.backends[0].circuit
    assert circuit is not None
    await asyncio.sleep(circuit.retry_in())
    assert (await chat(http, gw))[2] == "broken"  # the trial, still failing
    assert circuit.is_open and circuit.retry_in() > 0.5
    assert (await chat(http, gw))[2] == ""
    assert len(broken.requests) == 2


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_each_retryable_status_counts_and_success_resets_the_count(
    status: int, backend_factory: BackendFactory, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    backend = await backend_factory("b", kind="openai", status=status)
    entry = backend_entry(backend, models=["m"], circuit={"failures": 3, "cooldown": "60s"})
    gw = await gateway_factory({"backends": [entry], "routing": {"retries": 0}})
    for _ in range(2):
        assert (await chat(http, gw))[0] == status
    backend.status = None
    assert (await chat(http, gw))[0] == 200  # a success: the count starts again
    backend.status = status
    for _ in range(2):
        assert (await chat(http, gw))[0] == status
    assert gw.sample("gateway_backend_up", backend="b") == 1
    assert (await chat(http, gw))[0] == status  # the third in a row
    assert (await chat(http, gw))[2] == ""
    assert len(backend.requests) == 6


async def test_connect_failures_open_it_and_retries_go_elsewhere(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gone = await backend_factory("gone", kind="openai")
    good = await backend_factory("good", kind="openai")
    entries = [backend_entry(b, models=["m"], circuit={"failures": 2, "cooldown": "60s"}) for b in (gone, good)]
    gw = await gateway_factory({"backends": entries})
    await gone.stop()  # connection refused from now on; health probes have not noticed
    for _ in range(8):
        assert (await chat(http, gw))[:3:2] == (200, "good")  # retried on the good one
    assert gw.sample("gateway_upstream_errors_total", backend="gone", reason="connect") == 2
    assert gw.state.backends[0].up is True  # the probes still say up: the circuit took it out
    row = await dashboard_row(http, gw, "gone")
    assert row["out"].startswith("circuit open: 2 consecutive failures (connect error)")


async def test_a_successful_probe_after_the_cooldown_closes_it(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    backend = await backend_factory("b", kind="openai", status=503)
    entry = backend_entry(backend, models=["m"], circuit={"failures": 1, "cooldown": 1.0})
    gw = await gateway_factory({"backends": [entry], "routing": {"retries": 0}})
    await chat(http, gw)
    state = gw.state
    circuit = state.backends[0].circuit
    assert circuit is not None and circuit.is_open
    assert state.discovery is not None
    await state.discovery.probe(state.backends[0])  # before the cooldown: a probe does not close it
    assert circuit.is_open
    await asyncio.sleep(circuit.retry_in())
    await state.discovery.probe(state.backends[0])  # GET /v1/models answers 200
    assert not circuit.is_open
    assert gw.sample("gateway_backend_up", backend="b") == 1


async def test_failures_zero_turns_it_off(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    backend = await backend_factory("b", kind="openai", status=503)
    gw = await gateway_factory(
        {"backends": [backend_entry(backend, models=["m"], circuit={"failures": 0})], "routing": {"retries": 0}}
    )
    assert gw.state.backends[0].circuit is None
    for _ in range(5):
        assert (await chat(http, gw))[2] == "b"


def test_circuit_states() -> None:
    changes: list[bool] = []
    circuit = Circuit(CircuitConfig(failures=2, cooldown=0.0), on_change=lambda: changes.append(True))
    assert circuit.enter() and not circuit.is_open
    circuit.failed("reset")
    assert not circuit.is_open
    circuit.failed("reset")
    assert circuit.is_open and changes == [True]
    assert circuit.usable() and circuit.enter()  # cooldown 0: the trial goes at once
    assert circuit.trial and not circuit.usable() and not circuit.enter()  # exactly one
    circuit.abandoned()  # the client left: the next one is the trial
    assert circuit.enter()
    circuit.succeeded()
    assert not circuit.is_open and circuit.streak == 0 and changes == [True, True]
    assert circuit.describe() == ""


async def test_a_stream_cut_by_the_backend_counts_as_a_failure(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    backend = await backend_factory("cutter", kind="openai", drop_after=1)
    entry = backend_entry(backend, models=["m"], circuit={"failures": 2, "cooldown": "60s"})
    gw = await gateway_factory({"backends": [entry]})
    for _ in range(2):  # the head arrived (a success), then the backend reset the stream (a failure)
        async with http.post(f"{gw.url}/v1/chat/completions", json={**CHAT, "stream": True}) as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
    circuit = gw.state.backends[0].circuit
    assert circuit is not None and circuit.is_open and circuit.reason == "connection reset"


async def test_the_status_page_says_why_a_backend_is_out(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    broken = await backend_factory("broken", kind="openai", status=503)
    good = await backend_factory("good", kind="openai")
    entries = [backend_entry(b, models=["m"], circuit={"failures": 1, "cooldown": "60s"}) for b in (broken, good)]
    gw = await gateway_factory({"backends": entries})
    while not broken.requests:
        assert (await chat(http, gw))[0] == 200  # retried on the good one
    async with browser_page() as page:
        await page.goto(f"{gw.url}/dashboard")
        await wait_until(page, "() => document.querySelector('#backends tr[data-backend=\"broken\"]') !== null")
        pill = await page.get_attribute('#backends tr[data-backend="broken"] .pill', "title")
        state = await page.text_content('#backends tr[data-backend="broken"] .pill')
        summary = await page.text_content("#total-down")
    assert state == "down"
    assert pill is not None and pill.startswith("circuit open: 1 consecutive failures (HTTP 502/503/504), retry in ")
    assert summary is not None and summary.startswith("down: broken (circuit open: 1 consecutive failures")
