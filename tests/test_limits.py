"""Per-client limits end to end: real openai / ollama / anthropic clients -> gateway -> fake backends.

The limiter's wall clock is replaced by a ``Clock`` the test sets, so "37 s into a minute" is exact
and no test waits for a window to pass; the one test of the SDK's own retry uses real time with a
2-second window.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import ollama
import openai
import pytest
import yaml

from gateway.limits import WindowLengths

from .conftest import BackendFactory, GatewayFactory, RunningGateway, backend_entry
from .fakes import PROMPT_TOKENS, FakeBackend
from .test_limits_unit import UndecidedStore
from .test_serve import running

ALICE_KEY = "sk-alice-0123456789abcdef0123456789"
BOB_KEY = "sk-bob-0123456789abcdef0123456789abc"
ADMIN_KEY = "sk-admin-0123456789abcdef0123456789"
MINUTE0 = 1_800_000_000.0  # a minute boundary (and 37 s past it is 23 s before the next one)
NOW = MINUTE0 + 37
DAY_END = (int(NOW // 86400) + 1) * 86400  # the next UTC midnight
TOKENS_PER_REPLY = PROMPT_TOKENS + 3  # the fake backend: 7 prompt + 3 chunks


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sha(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def keys(alice: dict[str, Any], bob: dict[str, Any] | None = None) -> dict[str, Any]:
    entries = [{"name": "alice", "hash": sha(ALICE_KEY), "limits": alice}]
    entries.append({"name": "bob", "hash": sha(BOB_KEY), **({"limits": bob} if bob else {})})
    entries.append({"name": "root", "hash": sha(ADMIN_KEY), "admin": True})
    return {"api_keys": entries}


async def limited(
    backend_factory: BackendFactory,
    gateway_factory: GatewayFactory,
    alice: dict[str, Any],
    *,
    kind: str = "ollama",
    bob: dict[str, Any] | None = None,
    now: float = NOW,
    **extra: Any,
) -> tuple[FakeBackend, RunningGateway, Clock]:
    backend = await backend_factory(
        "desktop", kind=kind, models=["llama3.2" if kind == "openai" else "llama3.2:latest"]
    )
    gw = await gateway_factory({"backends": [backend_entry(backend)], "auth": keys(alice, bob), **extra})
    clock = Clock(now)
    assert gw.state.limiter is not None
    gw.state.limiter.clock = clock
    return backend, gw, clock


def oai(gw: RunningGateway, key: str = ALICE_KEY, retries: int = 0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=retries)


def chat(stream: bool = False) -> dict[str, Any]:
    return {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": stream}


# --------------------------------------------------------------------------- requests_per_minute


async def test_requests_per_minute_openai_client(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    backend, gw, _ = await limited(backend_factory, gateway_factory, {"requests_per_minute": 2})
    async with oai(gw) as client:
        first = await client.chat.completions.with_raw_response.create(**chat())
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert first.headers["x-ratelimit-reset-requests"] == "23s"
        assert "x-ratelimit-limit-tokens" not in first.headers  # alice has no token limit
        second = await client.chat.completions.with_raw_response.create(**chat())
        assert second.headers["x-ratelimit-remaining-requests"] == "0"
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(**chat())
    err = caught.value
    assert err.status_code == 429
    assert err.response.headers["Retry-After"] == "23"
    assert err.response.headers["retry-after-ms"] == "23000"
    assert err.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert err.body == {
        "message": "rate limit exceeded for 'alice': requests_per_minute=2; resets in 23s",
        "type": "rate_limit_error",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert len(backend.requests) == 2  # the refused request never reached the backend
    assert gw.sample("gateway_rate_limited_total", client="alice", limit="requests_per_minute") == 1
    async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/metrics") as resp:
        text = await resp.text()
    assert 'gateway_rate_limited_total{client="alice",limit="requests_per_minute"} 1.0' in text


async def test_requests_per_minute_ollama_client_and_next_window(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    backend, gw, clock = await limited(backend_factory, gateway_factory, {"requests_per_minute": 1})
    client = ollama.AsyncClient(host=gw.url, headers={"Authorization": f"Bearer {ALICE_KEY}"})
    reply = await client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    assert reply.message.content == "Hello!"
    with pytest.raises(ollama.ResponseError) as caught:
        await client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 429
    assert caught.value.error == "rate limit exceeded for 'alice': requests_per_minute=1; resets in 23s"
    # Raw: the Ollama dialect's body and the headers.
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ALICE_KEY}"}) as http:
        async with http.post(f"{gw.url}/api/generate", json={"model": "llama3.2", "prompt": "x"}) as resp:
            assert resp.status == 429
            message = "rate limit exceeded for 'alice': requests_per_minute=1; resets in 23s"
            assert await resp.json() == {"error": message}
            assert resp.headers["Retry-After"] == "23"
        clock.now = MINUTE0 + 60  # the next window: admitted again
        async with http.post(f"{gw.url}/api/generate", json={"model": "llama3.2", "prompt": "x"}) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("application/x-ndjson")
            assert resp.headers["x-ratelimit-remaining-requests"] == "0"
            assert resp.headers["x-ratelimit-reset-requests"] == "1m0s"
            await resp.read()
    assert len(backend.requests) == 2


async def test_anthropic_dialect_429(backend_factory: BackendFactory, gateway_factory: GatewayFactory) -> None:
    _, gw, _ = await limited(backend_factory, gateway_factory, {"requests_per_minute": 1})
    async with anthropic.AsyncAnthropic(base_url=gw.url, api_key=ALICE_KEY, max_retries=0) as client:
        await client.messages.with_raw_response.create(
            model="llama3.2", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
        with pytest.raises(anthropic.RateLimitError) as caught:
            await client.messages.create(model="llama3.2", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 429
    assert caught.value.body == {
        "type": "error",
        "error": {
            "type": "rate_limit_error",
            "message": "rate limit exceeded for 'alice': requests_per_minute=1; resets in 23s",
        },
    }
    assert caught.value.response.headers["Retry-After"] == "23"


async def test_clients_are_counted_apart_and_unlimited_clients_get_no_headers(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    _, gw, _ = await limited(backend_factory, gateway_factory, {"requests_per_minute": 1})
    async with oai(gw) as alice, oai(gw, BOB_KEY) as bob:
        await alice.chat.completions.create(**chat())
        with pytest.raises(openai.RateLimitError):
            await alice.chat.completions.create(**chat())
        for _ in range(3):  # bob has no limits (the default is all 0)
            reply = await bob.chat.completions.with_raw_response.create(**chat())
            assert not [h for h in reply.headers if h.lower().startswith("x-ratelimit")]


async def test_streams_carry_the_headers(backend_factory: BackendFactory, gateway_factory: GatewayFactory) -> None:
    _, gw, _ = await limited(
        backend_factory, gateway_factory, {"requests_per_minute": 5, "tokens_per_minute": 1000}, kind="openai"
    )
    async with oai(gw) as client:
        raw = await client.chat.completions.with_raw_response.create(**chat(stream=True))
        assert raw.headers["Content-Type"].startswith("text/event-stream")
        assert raw.headers["x-ratelimit-limit-requests"] == "5"
        assert raw.headers["x-ratelimit-remaining-requests"] == "4"
        assert raw.headers["x-ratelimit-limit-tokens"] == "1000"
        assert raw.headers["x-ratelimit-remaining-tokens"] == "1000"
        assert raw.headers["x-ratelimit-reset-tokens"] == "23s"
        pieces = [c.choices[0].delta.content async for c in raw.parse() if c.choices]
    assert "".join(p or "" for p in pieces) == "Hello!"


async def test_errors_after_admission_carry_the_headers(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    _, gw, _ = await limited(backend_factory, gateway_factory, {"requests_per_minute": 5})
    async with oai(gw) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "4"  # it was counted


async def test_listings_and_admin_endpoints_are_not_limited(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    backend, gw, _ = await limited(backend_factory, gateway_factory, {"requests_per_minute": 1})
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ALICE_KEY}"}) as http:
        for path in ("/v1/models", "/api/tags", "/api/ps", "/api/version", "/v1/models", "/api/tags"):
            async with http.get(f"{gw.url}{path}") as resp:
                assert resp.status == 200, path
                assert "x-ratelimit-limit-requests" not in resp.headers
        async with http.post(f"{gw.url}/api/chat", json={**chat(), "stream": False}) as resp:
            assert resp.status == 200  # the listings did not use alice's one request
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
        for _ in range(3):
            async with http.post(f"{gw.url}/api/pull", json={"model": "llama3.2"}) as resp:
                assert resp.status == 200
                assert "x-ratelimit-limit-requests" not in resp.headers


# --------------------------------------------------------------------------- token budgets


async def test_tokens_per_minute_charged_from_a_streamed_openai_reply(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    backend, gw, clock = await limited(
        backend_factory, gateway_factory, {"tokens_per_minute": TOKENS_PER_REPLY + 5}, kind="openai"
    )
    async with oai(gw) as client:
        stream = await client.chat.completions.create(**chat(stream=True), stream_options={"include_usage": True})
        usage = [c.usage async for c in stream if c.usage is not None]
        assert usage[0].total_tokens == TOKENS_PER_REPLY
        raw = await client.chat.completions.with_raw_response.create(**chat())  # 10 used < 15: admitted
        assert raw.headers["x-ratelimit-remaining-tokens"] == "5"
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(**chat())
    assert caught.value.body["message"] == (
        f"rate limit exceeded for 'alice': tokens_per_minute={TOKENS_PER_REPLY + 5} "
        f"({2 * TOKENS_PER_REPLY} used this minute); resets in 23s"
    )
    assert caught.value.response.headers["Retry-After"] == "23"
    assert caught.value.response.headers["x-ratelimit-remaining-tokens"] == "0"
    assert gw.sample("gateway_rate_limited_total", client="alice", limit="tokens_per_minute") == 1
    assert len(backend.requests) == 2
    clock.now += 23
    async with oai(gw) as client:
        await client.chat.completions.create(**chat())


async def test_tokens_per_day_charged_from_a_streamed_ollama_reply(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    _, gw, clock = await limited(backend_factory, gateway_factory, {"tokens_per_day": TOKENS_PER_REPLY})
    client = ollama.AsyncClient(host=gw.url, headers={"Authorization": f"Bearer {ALICE_KEY}"})
    stream = await client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}], stream=True)
    parts = [p async for p in stream]
    assert parts[-1].done and parts[-1].eval_count == 3
    with pytest.raises(ollama.ResponseError) as caught:
        await client.generate(model="llama3.2", prompt="again")
    wait = DAY_END - NOW
    assert caught.value.status_code == 429
    assert caught.value.error == (
        f"rate limit exceeded for 'alice': tokens_per_day={TOKENS_PER_REPLY} ({TOKENS_PER_REPLY} used today); "
        f"resets in {int(wait // 3600)}h{int(wait % 3600 // 60)}m{int(wait % 60)}s"
    )
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ALICE_KEY}"}) as http:
        async with http.post(f"{gw.url}/api/embed", json={"model": "llama3.2", "input": "x"}) as resp:
            assert resp.status == 429
            assert resp.headers["Retry-After"] == str(int(wait))
        clock.now = DAY_END + 1  # a new UTC day
        async with http.post(f"{gw.url}/api/embed", json={"model": "llama3.2", "input": "x"}) as resp:
            assert resp.status == 200
            assert resp.headers["x-ratelimit-remaining-tokens"] == str(TOKENS_PER_REPLY)
    assert gw.sample("gateway_rate_limited_total", client="alice", limit="tokens_per_day") == 2


async def test_tokens_are_counted_with_metrics_off(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    _, gw, _ = await limited(
        backend_factory, gateway_factory, {"tokens_per_minute": 1}, metrics={"enabled": False}, kind="openai"
    )
    async with oai(gw) as client:
        await client.chat.completions.create(**chat())  # usage in the JSON body: 10 tokens
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(**chat())


async def test_a_token_budget_makes_plain_streams_count_without_inject_usage(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    """A client with a token budget: its OpenAI-style streams are asked for usage (hidden from it) and charged;
    a client without one gets its request forwarded untouched (metrics.inject_usage is off)."""
    backend, gw, _ = await limited(
        backend_factory, gateway_factory, {"tokens_per_minute": 1}, bob={"requests_per_minute": 100}, kind="openai"
    )
    async with oai(gw) as client:
        stream = await client.chat.completions.create(**chat(stream=True))  # no include_usage asked
        chunks = [c async for c in stream]
        assert chunks and all(c.usage is None for c in chunks)  # hidden from the client ...
        assert backend.requests[-1].json["stream_options"] == {"include_usage": True}
        with pytest.raises(openai.RateLimitError):  # ... but charged
            await client.chat.completions.create(**chat())
    async with oai(gw, BOB_KEY) as bob:
        stream = await bob.chat.completions.create(**chat(stream=True))
        assert [c async for c in stream]
        assert "stream_options" not in backend.requests[-1].json


async def test_inject_usage_makes_plain_streams_count(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    _, gw, _ = await limited(
        backend_factory, gateway_factory, {"tokens_per_minute": 1}, metrics={"inject_usage": True}, kind="openai"
    )
    async with oai(gw) as client:
        stream = await client.chat.completions.create(**chat(stream=True))  # no include_usage asked
        chunks = [c async for c in stream]
        assert chunks and all(c.usage is None for c in chunks)  # hidden from the client ...
        with pytest.raises(openai.RateLimitError):  # ... but charged
            await client.chat.completions.create(**chat())


# --------------------------------------------------------------------------- max_concurrent


async def test_max_concurrent(backend_factory: BackendFactory, gateway_factory: GatewayFactory) -> None:
    gate: asyncio.Queue[None] = asyncio.Queue()
    backend = await backend_factory("desktop", kind="openai", models=["llama3.2"], gate=gate)
    gw = await gateway_factory({"backends": [backend_entry(backend)], "auth": keys({"max_concurrent": 1})})
    async with oai(gw) as client, oai(gw, BOB_KEY) as bob:
        stream = await client.chat.completions.create(**chat(stream=True))
        iterator = stream.__aiter__()
        first = await iterator.__anext__()  # the stream is open and held by the gate
        assert first.choices[0].delta.content == "Hel"
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(**chat())
        assert caught.value.response.headers["Retry-After"] == "1"
        assert caught.value.body["message"] == (
            "rate limit exceeded for 'alice': max_concurrent=1 (1 in progress); retry when one finishes"
        )
        bob_stream = await bob.chat.completions.create(**chat(stream=True))  # bob is not limited
        for _ in range(8):
            gate.put_nowait(None)
        rest = [c async for c in iterator]
        assert rest
        await bob_stream.close()
        reply = await client.chat.completions.create(**chat())  # the slot is free again
    assert reply.choices[0].message.content == "Hello!"
    assert gw.sample("gateway_rate_limited_total", client="alice", limit="max_concurrent") == 1
    assert gw.state.limiter is not None
    assert all(c.in_flight == 0 for c in gw.state.limiter._clients.values())


async def test_max_concurrent_slot_freed_when_the_client_leaves(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    backend = await backend_factory("desktop", kind="openai", models=["llama3.2"], hang=True)
    gw = await gateway_factory({"backends": [backend_entry(backend)], "auth": keys({"max_concurrent": 1})})
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ALICE_KEY}"}) as http:
        task = asyncio.create_task(http.post(f"{gw.url}/v1/chat/completions", json=chat()))
        await backend.started.wait()
        async with http.post(f"{gw.url}/v1/chat/completions", json=chat()) as resp:
            assert resp.status == 429
        task.cancel()
        await backend.closed.wait()  # the gateway noticed and closed upstream: the handler is done
        assert gw.state.limiter is not None
        for _ in range(100):
            if gw.state.limiter._clients["alice"].in_flight == 0:
                break
            await asyncio.sleep(0.01)
        assert gw.state.limiter._clients["alice"].in_flight == 0


# --------------------------------------------------------------------------- anonymous callers


async def test_anonymous_callers_are_limited_per_address(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    backend = await backend_factory("desktop", models=["llama3.2:latest"])
    gw = await gateway_factory(
        {
            "backends": [backend_entry(backend)],
            "limits": {"default": {"requests_per_minute": 1}},
            "server": {"trusted_proxies": ["127.0.0.1/32"]},
        }
    )
    assert gw.state.limiter is not None
    gw.state.limiter.clock = Clock(NOW)

    async def status(forwarded_for: str | None = None, local: str | None = None) -> tuple[int, str]:
        connector = aiohttp.TCPConnector(local_addr=(local, 0) if local else None)
        headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
        async with aiohttp.ClientSession(connector=connector) as http:
            async with http.post(f"{gw.url}/api/chat", json={**chat(), "stream": False}, headers=headers) as resp:
                return resp.status, (await resp.json()).get("error", "")

    assert (await status())[0] == 200
    message = "rate limit exceeded for 'anonymous' (127.0.0.1): requests_per_minute=1; resets in 23s"
    assert await status() == (429, message)
    assert (await status(local="127.0.0.2"))[0] == 200  # another address, its own budget
    assert (await status("2001:db8::1"))[0] == 200
    code, message = await status("2001:db8::ffff")  # the same /64
    assert code == 429 and "'anonymous' (2001:db8::/64)" in message
    assert (await status("2001:db8:0:1::1"))[0] == 200  # another /64
    assert gw.sample("gateway_rate_limited_total", client="anonymous", limit="requests_per_minute") == 2


# --------------------------------------------------------------------------- the SDK's own retry


async def test_openai_sdk_retries_after_retry_after(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    """Real time, a 2 s window: the SDK's third call is refused, waits Retry-After, and gets through."""
    backend, gw, _ = await limited(backend_factory, gateway_factory, {"requests_per_minute": 2})
    assert gw.state.limiter is not None
    start = time.time()
    gw.state.limiter.clock = lambda: time.time() - start  # window 0 starts now: no boundary mid-test
    gw.state.limiter.lengths = WindowLengths(minute=2.0)
    async with oai(gw, retries=2) as client:
        for _ in range(3):
            reply = await client.chat.completions.create(**chat())
            assert reply.choices[0].message.content == "Hello!"
    elapsed = time.time() - start
    assert gw.sample("gateway_rate_limited_total", client="alice", limit="requests_per_minute") == 1
    assert len(backend.requests) == 3
    assert 1.5 < elapsed < 6  # it waited for the window (not the SDK's sub-second default backoff)


# --------------------------------------------------------------------------- visibility


async def test_dashboard_data_shows_each_client(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    _, gw, _ = await limited(
        backend_factory,
        gateway_factory,
        {"requests_per_minute": 10, "tokens_per_day": 100},
        limits={"default": {"tokens_per_day": 1000}},
    )
    client = ollama.AsyncClient(host=gw.url, headers={"Authorization": f"Bearer {ALICE_KEY}"})
    await client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
        async with http.get(f"{gw.url}/dashboard/data") as resp:
            data = await resp.json()
        async with http.get(f"{gw.url}/readyz") as resp:
            ready = await resp.json()
    limits = data["limits"]
    assert limits["store"] == "sqlite"  # without redis_url: the file at limits.state_path
    rows = {row["client"]: row for row in limits["clients"]}
    assert rows["alice"]["requests_today"] == 1
    assert rows["alice"]["tokens_today"] == TOKENS_PER_REPLY
    assert rows["alice"]["remaining"] == {"requests_per_minute": 9, "tokens_per_day": 100 - TOKENS_PER_REPLY}
    assert rows["bob"]["requests_today"] == 0 and rows["bob"]["remaining"] == {"tokens_per_day": 1000}
    assert rows["root"]["limits"]["tokens_per_day"] == 1000
    assert ready["limits"]["store"] == "sqlite" and ready["limits"]["ok"] is True


async def test_no_limits_no_limiter(single: tuple[FakeBackend, RunningGateway]) -> None:
    _, gw = single
    assert gw.state.limiter is None
    async with aiohttp.ClientSession() as http, http.post(f"{gw.url}/api/chat", json=chat()) as resp:
        assert resp.status == 200
        assert "x-ratelimit-limit-requests" not in resp.headers
        assert json.loads((await resp.read()).splitlines()[-1])["done"] is True


async def test_workers_count_refusals_in_one_view(tmp_path: Path, backend_factory: BackendFactory) -> None:
    """``--workers 2``: every worker enforces the limit and the scrape of any one counts all refusals."""
    backend = await backend_factory("desktop", models=["m:latest"])
    config = tmp_path / "g.yaml"
    config.write_text(
        yaml.safe_dump(
            {"backends": [{"name": "desktop", "url": backend.url}], "limits": {"default": {"requests_per_minute": 1}}}
        )
    )
    async with running("serve", "-c", str(config), "--workers", "2", cwd=tmp_path, env={}) as (url, _):
        refused = 0
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            for _ in range(6):  # new connections: the kernel spreads them over both workers
                async with http.post(f"{url}/api/generate", json={"model": "m", "stream": False}) as resp:
                    assert resp.status in (200, 429)
                    refused += resp.status == 429
                    if resp.status == 429:
                        assert (await resp.json())["error"].startswith(
                            "rate limit exceeded for 'anonymous' (127.0.0.1)"
                        )
            assert refused >= 2  # at most one admitted per worker and minute (two if a minute ends mid-test)
            for _ in range(4):  # whichever worker answers the scrape reports the whole gateway
                async with http.get(f"{url}/metrics") as resp:
                    text = await resp.text()
                line = 'gateway_rate_limited_total{client="anonymous",limit="requests_per_minute"}'
                assert f"{line} {float(refused)}" in text


async def test_a_store_that_needs_a_round_trip_is_awaited(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    _, gw, _ = await limited(backend_factory, gateway_factory, {"requests_per_minute": 2})
    assert gw.state.limiter is not None
    store = gw.state.limiter.store = UndecidedStore()
    async with oai(gw) as client:
        raw = await client.chat.completions.with_raw_response.create(**chat())
        assert raw.headers["x-ratelimit-remaining-requests"] == "1"
        await client.chat.completions.create(**chat())
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(**chat())
    assert caught.value.response.headers["Retry-After"] == "23"
    assert store.slow_takes == 3
