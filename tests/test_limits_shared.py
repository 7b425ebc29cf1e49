"""Shared limit counters end to end: real gateways (the `gateway` command in subprocesses where it
matters), real clients (openai, ollama, aiohttp), a real redis-server and real SQLite files.

- two gateway processes share one budget through Redis (requests per minute, tokens per day);
- Redis stopped mid-run under ``on_redis_error: allow`` (keeps serving; /readyz and the metric say
  so) and ``deny`` (503 in the endpoint's dialect), then restarted: shared again, no gateway restart;
- a daily token budget survives a gateway restart (SQLite at limits.state_path);
- ``--workers 2`` share one budget without Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import openai
import pytest
import redis.asyncio as aioredis
import yaml

from gateway.config import ConfigError
from gateway.configfile import parse_config
from gateway.limits.redis_store import KEY_PREFIX

from .conftest import BackendFactory, GatewayFactory, backend_entry
from .fakes import FakeBackend
from .gateway_process import free_port, wait_until_up
from .redis_server import RedisServer, redis_server_or_skip

KEYS = {name: f"sk-gw-{name}-" + hashlib.sha256(name.encode()).hexdigest()[:32] for name in ("alice", "bob", "carol")}
TOKENS_PER_REQUEST = 10  # the fake backend's usage: 7 prompt + 3 completion tokens
MESSAGES: Any = [{"role": "user", "content": "hi"}]


def auth_section(limits: dict[str, dict[str, int]] | None = None) -> dict[str, Any]:
    keys = []
    for name, key in KEYS.items():
        entry: dict[str, Any] = {"name": name, "hash": "sha256:" + hashlib.sha256(key.encode()).hexdigest()}
        if limits and name in limits:
            entry["limits"] = limits[name]
        keys.append(entry)
    return {"api_keys": keys}


async def same_minute(seconds_needed: float = 20.0) -> None:
    """Start a per-minute test early in a wall-clock minute, so its window cannot roll over midway."""
    left = 60.0 - time.time() % 60.0
    if left < seconds_needed:
        await asyncio.sleep(left + 0.05)


async def eventually(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


@pytest.fixture
async def redis() -> AsyncIterator[RedisServer]:
    server = await redis_server_or_skip()
    yield server
    await server.stop()


@asynccontextmanager
async def gateway_process(
    config: Path, *args: str, port: int | None = None, cwd: Path | None = None
) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """`gateway serve -c CONFIG` in a subprocess (the venv's own command), stopped with SIGTERM."""
    port = port or free_port()
    gateway = Path(sys.executable).with_name("gateway")
    argv = [str(gateway)] if gateway.exists() else [sys.executable, "-m", "gateway"]
    proc = await asyncio.create_subprocess_exec(
        *argv, "serve", "-c", str(config), "--port", str(port), *args, cwd=cwd or config.parent,
        env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        # up to ~30 s for the interpreter(s) to start on a busy machine
        await wait_until_up(url, path="/readyz", tries=300, proc=proc)
        yield url, proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 20)


def write_config(path: Path, doc: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


def openai_client(url: str, who: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEYS[who], max_retries=0)


def ollama_client(url: str, who: str) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=url, headers={"Authorization": f"Bearer {KEYS[who]}"})


async def openai_chat(url: str, who: str) -> int:
    """One chat through the openai SDK: 200, or the status it raised."""
    try:
        async with openai_client(url, who) as client:
            await client.chat.completions.create(model="llama3.2", messages=MESSAGES)
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


async def ollama_chat(url: str, who: str) -> int:
    try:
        await ollama_client(url, who).chat(model="llama3.2", messages=MESSAGES, stream=False)
    except ollama.ResponseError as exc:
        return exc.status_code
    return 200


async def readyz(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as resp:
        return resp.status, await resp.json()


async def store_trouble_noticed(url: str) -> None:
    """Wait until the gateway's /readyz reports its limits store as not ok."""

    async def noticed() -> bool:
        return (await readyz(url))[1]["limits"]["ok"] is False

    await eventually(noticed)


async def store_up_metric(url: str) -> float | None:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith("gateway_limits_store_up{"):
                return float(line.rsplit(" ", 1)[1])
    return None


def backend_doc(backend: FakeBackend) -> list[dict[str, Any]]:
    return [backend_entry(backend)]


# --------------------------------------------------------------------------- Redis, two processes


async def test_two_gateway_processes_share_one_budget_through_redis(
    tmp_path: Path, backend_factory: BackendFactory, redis: RedisServer
) -> None:
    backend = await backend_factory("desktop")
    doc = {
        "backends": backend_doc(backend),
        "auth": auth_section({"bob": {"requests_per_minute": 0, "tokens_per_day": 25}}),
        "limits": {"default": {"requests_per_minute": 20}, "redis_url": redis.url},
    }
    config = write_config(tmp_path / "gateway.yaml", doc)
    async with gateway_process(config) as (one, _), gateway_process(config) as (two, _):
        await same_minute()
        # alice: 20 requests a minute between both gateways, one through the openai SDK, one
        # through the ollama client, alternating. A gateway each would admit 30 of the 30.
        codes = [await (openai_chat(one, "alice") if i % 2 else ollama_chat(two, "alice")) for i in range(30)]
        assert codes.count(200) == 20 and codes.count(429) == 10, codes
        assert codes[:20] == [200] * 20  # leases never refuse early while the window has room
        # bob: 25 tokens a day. Spent through one gateway, refused by the other (charges reach
        # Redis within a sync, so at most one more request gets through there).
        assert [await ollama_chat(one, "bob") for _ in range(3)] == [200, 200, 200]

        async def refused_on_two() -> bool:
            return await openai_chat(two, "bob") == 429

        await eventually(refused_on_two, timeout=5)
        try:
            async with openai_client(two, "bob") as client:
                await client.chat.completions.create(model="llama3.2", messages=MESSAGES)
        except openai.RateLimitError as exc:
            assert "tokens_per_day=25" in exc.message
            assert int(exc.response.headers["Retry-After"]) > 0
        else:
            raise AssertionError("bob's spent daily budget was not refused")
        for url in (one, two):
            status, body = await readyz(url)
            assert status == 200 and body["limits"] == {"store": "redis", "ok": True, "detail": "redis: ok"}
            assert await store_up_metric(url) == 1.0
    client = aioredis.Redis.from_url(redis.url)
    try:
        keys = sorted(k.decode() for k in await client.keys(KEY_PREFIX + "*"))
        assert any(k.startswith(KEY_PREFIX + "rpm:alice:") for k in keys)
        day_key = next(k for k in keys if k.startswith(KEY_PREFIX + "tpd:bob:"))
        assert int(await client.get(day_key)) >= 30
    finally:
        await client.aclose()


# --------------------------------------------------------------------------- Redis outages


async def test_redis_stopped_under_allow_keeps_serving_on_local_counters_then_shares_again(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory, redis: RedisServer
) -> None:
    backend = await backend_factory("desktop")
    config = {
        "backends": backend_doc(backend),
        "auth": auth_section(),
        "limits": {"default": {"requests_per_minute": 1000}, "redis_url": redis.url, "on_redis_error": "allow"},
    }
    gw = await gateway_factory(config)
    other = await gateway_factory(config)  # a second replica, to see the counts shared again
    client = aioredis.Redis.from_url(redis.url)
    try:
        await same_minute()
        assert [await openai_chat(gw.url, "alice") for _ in range(3)] == [200] * 3
        assert await store_up_metric(gw.url) == 1.0
        await redis.stop()

        await store_trouble_noticed(gw.url)
        status, body = await readyz(gw.url)
        assert status == 200  # backends are up: the gateway still serves
        assert body["limits"]["store"] == "redis"
        assert body["limits"]["detail"].startswith("redis unreachable (")
        assert "serving on local counters" in body["limits"]["detail"]
        assert await store_up_metric(gw.url) == 0.0
        assert [await ollama_chat(gw.url, "alice") for _ in range(5)] == [200] * 5  # keeps serving
        assert [await openai_chat(gw.url, "alice") for _ in range(5)] == [200] * 5

        await redis.start()  # same port, empty (no persistence): no gateway restart

        async def rejoined() -> bool:
            return (await readyz(gw.url))[1]["limits"] == {"store": "redis", "ok": True, "detail": "redis: ok"}

        await eventually(rejoined)
        assert await store_up_metric(gw.url) == 1.0
        for _ in range(40):  # enough to need fresh leases from Redis on both replicas (batch: 50)
            assert await openai_chat(gw.url, "alice") == 200
            assert await openai_chat(other.url, "alice") == 200
        rpm_keys = [k async for k in client.scan_iter(match=KEY_PREFIX + "rpm:alice:*")]
        assert len(rpm_keys) == 1
        assert int(await client.get(rpm_keys[0])) >= 80  # both replicas count in Redis again
    finally:
        await client.aclose()


async def test_redis_stopped_under_deny_answers_503_in_each_dialect_then_recovers(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory, redis: RedisServer
) -> None:
    backend = await backend_factory("desktop")
    auth = auth_section()
    auth["api_keys"][2]["admin"] = True  # carol may read the status page
    gw = await gateway_factory(
        {
            "backends": backend_doc(backend),
            "auth": auth,
            "limits": {"default": {"tokens_per_minute": 100000}, "redis_url": redis.url, "on_redis_error": "deny"},
        }
    )
    assert await openai_chat(gw.url, "carol") == 200
    await redis.stop()

    await store_trouble_noticed(gw.url)
    assert "refusing requests with 503" in (await readyz(gw.url))[1]["limits"]["detail"]
    headers = {"Authorization": f"Bearer {KEYS['carol']}"}
    body = {"model": "llama3.2", "messages": MESSAGES, "stream": False}
    seen_before = len(backend.requests)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers) as resp:
            assert resp.status == 503 and int(resp.headers["Retry-After"]) >= 1
            error = (await resp.json())["error"]
            assert error["type"] == "service_unavailable"
            assert error["message"].startswith("limits are unavailable: redis unreachable (")
            assert error["message"].endswith("(limits.on_redis_error: deny)")
        async with http.post(f"{gw.url}/api/chat", json=body, headers=headers) as resp:
            assert resp.status == 503 and "Retry-After" in resp.headers
            assert (await resp.json())["error"].startswith("limits are unavailable: redis unreachable (")
        anthropic_body = {"model": "llama3.2", "max_tokens": 5, "messages": MESSAGES}
        async with http.post(f"{gw.url}/v1/messages", json=anthropic_body, headers=headers) as resp:
            assert resp.status == 503
            doc = await resp.json()
            assert doc["type"] == "error" and doc["error"]["type"] == "overloaded_error"
        async with http.get(f"{gw.url}/dashboard/data", headers=headers) as resp:  # the status page still answers
            assert resp.status == 200
            limits = (await resp.json())["limits"]
            assert limits["ok"] is False and limits["clients"] == []
    with pytest.raises(openai.InternalServerError) as refused:
        async with openai_client(gw.url, "carol") as client:
            await client.chat.completions.create(model="llama3.2", messages=MESSAGES)
    assert refused.value.status_code == 503
    assert len(backend.requests) == seen_before  # refused before reaching the backend
    await redis.start()

    async def served() -> bool:
        return await ollama_chat(gw.url, "carol") == 200

    await eventually(served)
    assert (await readyz(gw.url))[1]["limits"]["ok"] is True


# --------------------------------------------------------------------------- SQLite


async def test_daily_token_budget_survives_a_gateway_restart(tmp_path: Path, backend_factory: BackendFactory) -> None:
    backend = await backend_factory("desktop")
    doc = {
        "backends": backend_doc(backend),
        "auth": auth_section({"carol": {"tokens_per_day": 25}}),
        "limits": {"state_path": "state/usage.sqlite3"},  # relative to the config file's folder
    }
    config = write_config(tmp_path / "conf" / "gateway.yaml", doc)
    state = tmp_path / "conf" / "state" / "usage.sqlite3"
    port = free_port()
    async with gateway_process(config, port=port, cwd=tmp_path) as (url, _):
        assert not state.exists()  # nothing counted yet: no file
        codes = [await ollama_chat(url, "carol") for _ in range(5)]
        assert codes[:3] == [200] * 3 and codes[-1] == 429  # 10 tokens each: the 4th finds 30 >= 25
        assert await openai_chat(url, "alice") == 200  # no limit of her own, the default is none
    assert state.exists()
    async with gateway_process(config, port=port, cwd=tmp_path) as (url, _):
        try:
            await ollama_client(url, "carol").chat(model="llama3.2", messages=MESSAGES, stream=False)
        except ollama.ResponseError as exc:
            assert exc.status_code == 429
            assert "tokens_per_day=25" in str(exc.error)
        else:
            raise AssertionError("the spent daily budget was forgotten by the restart")
        assert await openai_chat(url, "alice") == 200
        status, body = await readyz(url)
        assert body["limits"] == {"store": "sqlite", "ok": True, "detail": "sqlite: ok"}


async def test_workers_share_one_budget_without_redis(tmp_path: Path, backend_factory: BackendFactory) -> None:
    backend = await backend_factory("desktop")
    doc = {
        "backends": backend_doc(backend),
        "auth": auth_section(),
        "limits": {"default": {"requests_per_minute": 30}},
    }
    config = write_config(tmp_path / "gateway.yaml", doc)
    async with gateway_process(config, "--workers", "2") as (url, _):
        headers = {"Authorization": f"Bearer {KEYS['alice']}"}
        body = {"model": "llama3.2", "messages": MESSAGES}
        # A new connection per request, so the kernel spreads them over both workers (SO_REUSEPORT).
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def both_workers_listen() -> bool:  # the second may still be starting on a busy machine
                seen = set()
                for _ in range(20):
                    async with http.get(f"{url}/healthz") as resp:
                        seen.add(resp.headers["X-Request-Id"][:16])
                return len(seen) == 2

            await eventually(both_workers_listen, timeout=30, interval=0.2)
            await same_minute()

            async def one() -> tuple[int, str]:
                async with http.post(f"{url}/v1/chat/completions", json=body, headers=headers) as resp:
                    await resp.read()
                    return resp.status, resp.headers["X-Request-Id"]

            results = await asyncio.gather(*(one() for _ in range(80)))
        statuses = [s for s, _ in results]
        workers = {rid[:16] for _, rid in results}  # request ids start with a per-process prefix
        assert len(workers) == 2, "the requests did not reach both workers"
        assert statuses.count(200) == 30 and statuses.count(429) == 50  # one budget of 30, not 2 x 30
    assert (tmp_path / "gateway-state.sqlite3").exists()


# --------------------------------------------------------------------------- config


def test_redis_url_must_be_a_redis_url_and_needs_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    base: dict[str, Any] = {"backends": [{"name": "a", "url": "http://127.0.0.1:1"}]}
    with pytest.raises(ConfigError) as bad:
        parse_config({**base, "limits": {"redis_url": "localhost:6379"}}, "<test>")
    assert bad.value.errors == ["limits.redis_url: expected a redis://, rediss:// or unix:// URL, got 'localhost:6379'"]
    assert parse_config({**base, "limits": {"redis_url": ""}}, "<test>").limits.redis_url is None
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "redis" else real(name, *a))
    with pytest.raises(ConfigError) as missing:
        parse_config({**base, "limits": {"redis_url": "redis://127.0.0.1:6379/0"}}, "<test>")
    assert missing.value.errors == [
        "limits.redis_url: needs the 'redis' package: pip install 'local-llm-gateway[redis]'"
    ]
