"""Shared fixtures: fake backends and gateways on real loopback sockets, one set per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.config import GatewayConfig
from gateway.configfile import parse_config
from gateway.server import make_runner
from gateway.state import STATE, GatewayState

from .fakes import FakeBackend


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OLLAMA_HOST", "GATEWAY_CONFIG", "PROMETHEUS_MULTIPROC_DIR"):
        monkeypatch.delenv(var, raising=False)


@dataclass
class RunningGateway:
    url: str
    app: web.Application
    config: GatewayConfig

    @property
    def state(self) -> GatewayState:
        return self.app[STATE]

    def sample(self, name: str, **labels: str) -> float:
        """A metric sample from this gateway's own registry (0.0 when absent)."""
        assert self.state.metrics is not None
        value = self.state.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


BackendFactory = Callable[..., Awaitable[FakeBackend]]
GatewayFactory = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
async def backend_factory() -> AsyncIterator[BackendFactory]:
    started: list[FakeBackend] = []

    async def make(name: str = "desktop", **behaviour: Any) -> FakeBackend:
        backend = await FakeBackend(name, **behaviour).start()
        started.append(backend)
        return backend

    yield make
    for backend in started:
        await backend.stop()


@pytest.fixture
async def gateway_factory(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[GatewayFactory]:
    runners: list[web.AppRunner] = []
    # Each test's limit counters in a file of its own (limits.state_path), not in the working folder.
    state_path = str(tmp_path_factory.mktemp("state") / "gateway-state.sqlite3")

    async def make(config: dict[str, Any] | GatewayConfig) -> RunningGateway:
        if isinstance(config, dict) and "state_path" not in (config.get("limits") or {}):
            config = {**config, "limits": {**(config.get("limits") or {}), "state_path": state_path}}
        parsed = config if isinstance(config, GatewayConfig) else parse_config(config, "<test>")
        app = create_app(parsed)
        runner = make_runner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        return RunningGateway(f"http://127.0.0.1:{port}", app, parsed)

    yield make
    for runner in reversed(runners):
        await runner.cleanup()


def backend_entry(backend: FakeBackend, **extra: Any) -> dict[str, Any]:
    """A ``backends:`` item pointing at a fake backend, with fast health checks."""
    entry: dict[str, Any] = {
        "name": backend.name,
        "url": backend.url,
        "type": "ollama" if backend.kind == "ollama" else "openai",
        "health_check": {"interval": "60s", "timeout": "2s"},
    }
    entry.update(extra)
    return entry


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def single(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> tuple[FakeBackend, RunningGateway]:
    """One Ollama-type fake backend behind a gateway with no auth."""
    backend = await backend_factory("desktop", models=["llama3.2:latest", "qwen2.5:7b", "hf.co/org/repo:Q4_K_M"])
    gw = await gateway_factory({"backends": [backend_entry(backend)]})
    return backend, gw
