"""Metrics after real requests through the gateway: exact counts, tokens, bounded labels, usage injection."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import string
import subprocess
from pathlib import Path

import aiohttp
import ollama
import openai
import pytest
import yaml

from .conftest import BackendFactory, GatewayFactory, RunningGateway, backend_entry
from .fakes import FakeBackend
from .test_serve import running


def series(gw: RunningGateway, name: str) -> set[tuple[tuple[str, str], ...]]:
    """Every label set of a metric family in the gateway's registry."""
    assert gw.state.metrics is not None
    found = set()
    for family in gw.state.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name:
                found.add(tuple(sorted(sample.labels.items())))
    return found


async def test_counts_and_tokens_for_both_dialects_streamed_and_not(single: tuple[FakeBackend, RunningGateway]) -> None:
    _, gw = single
    async with openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0) as client:
        await client.chat.completions.create(model="llama3.2", messages=[])
        stream = await client.chat.completions.create(
            model="llama3.2", messages=[], stream=True, stream_options={"include_usage": True}
        )
        _ = [c async for c in stream]
    ol = ollama.AsyncClient(host=gw.url)
    await ol.chat(model="qwen2.5:7b", messages=[])  # NDJSON stream by default
    await ol.generate(model="qwen2.5:7b", prompt="x", stream=False)
    common = {"backend": "desktop", "client": "anonymous", "code": "200"}
    assert gw.sample("gateway_requests_total", model="llama3.2", endpoint="/v1/chat/completions", **common) == 2
    assert gw.sample("gateway_requests_total", model="qwen2.5:7b", endpoint="/api/chat", **common) == 1
    assert gw.sample("gateway_requests_total", model="qwen2.5:7b", endpoint="/api/generate", **common) == 1
    for model, prompt, completion in (("llama3.2", 14, 6), ("qwen2.5:7b", 14, 6)):
        base = {"backend": "desktop", "model": model, "client": "anonymous"}
        assert gw.sample("gateway_tokens_total", kind="prompt", **base) == prompt
        assert gw.sample("gateway_tokens_total", kind="completion", **base) == completion
    route = {"backend": "desktop", "model": "llama3.2", "endpoint": "/v1/chat/completions"}
    assert gw.sample("gateway_time_to_first_byte_seconds_count", **route) == 2
    assert gw.sample("gateway_request_duration_seconds_count", **route) == 2
    assert gw.sample("gateway_generation_tokens_per_second_count", backend="desktop", model="qwen2.5:7b") == 2
    assert gw.sample("gateway_generation_tokens_per_second_sum", backend="desktop", model="qwen2.5:7b") == 12  # 3/0.5s
    assert gw.sample("gateway_in_flight_requests", backend="desktop") == 0


async def test_errors_are_counted_with_bounded_labels(
    single: tuple[FakeBackend, RunningGateway], http: aiohttp.ClientSession
) -> None:
    _, gw = single
    async with http.post(f"{gw.url}/api/chat", json={"model": "nope"}) as resp:
        assert resp.status == 404
    async with http.post(f"{gw.url}/v1/chat/completions", data=b"{") as resp:
        assert resp.status == 400
    async with http.get(f"{gw.url}/some/random/path") as resp:
        assert resp.status == 404
    unknown = {"backend": "none", "model": "unknown", "client": "anonymous"}
    assert gw.sample("gateway_requests_total", endpoint="/api/chat", code="404", **unknown) == 1
    assert gw.sample("gateway_requests_total", endpoint="/v1/chat/completions", code="400", **unknown) == 1
    assert gw.sample("gateway_requests_total", endpoint="other", code="404", **unknown) == 1


async def test_random_unknown_model_names_create_no_label_values(
    single: tuple[FakeBackend, RunningGateway], http: aiohttp.ClientSession
) -> None:
    _, gw = single
    async with http.post(f"{gw.url}/api/generate", json={"model": "nope-0"}) as resp:
        assert resp.status == 404
    async with http.post(f"{gw.url}/api/generate", json={"model": " "}) as resp:
        assert resp.status == 400  # blank names are a 400: seed that code too
    names = ("gateway_requests_total", "gateway_request_duration_seconds_count", "gateway_tokens_total",
             "gateway_upstream_errors_total")  # fmt: skip
    before = {name: series(gw, name) for name in names}
    rng = random.Random(7)
    for _ in range(1000):
        junk = "".join(rng.choices(string.printable, k=rng.randint(1, 40)))
        async with http.post(f"{gw.url}/api/generate", json={"model": junk}) as resp:
            assert resp.status in (400, 404)
    for name, labels in before.items():
        assert series(gw, name) == labels, name
    assert gw.sample("gateway_requests_total", backend="none", model="unknown", endpoint="/api/generate",
                     code="404", client="anonymous") >= 900  # fmt: skip


async def test_usage_injection_round_trip(backend_factory: BackendFactory, gateway_factory: GatewayFactory) -> None:
    backend = await backend_factory("vllm", kind="openai", models=["m"], chunks=["a", "bc", "def"])
    gw = await gateway_factory({"backends": [backend_entry(backend, type="vllm")], "metrics": {"inject_usage": True}})
    request = {"model": "m", "messages": [], "stream": True}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{backend.url}/v1/chat/completions", json=request) as resp:
            direct = await resp.read()  # what the client would have seen without the gateway
        async with http.post(f"{gw.url}/v1/chat/completions", json=request) as resp:
            through = await resp.read()
    assert backend.requests[-1].json["stream_options"] == {"include_usage": True}  # injected upstream
    assert b'"usage"' not in through

    def without_ids(raw: bytes) -> list[object]:  # the fake stamps "created" per request
        events = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]
        return [e if e == b"[DONE]" else {**json.loads(e), "created": 0} for e in events]

    assert without_ids(through) == without_ids(direct)
    labels = {"backend": "vllm", "model": "m", "client": "anonymous"}
    assert gw.sample("gateway_tokens_total", kind="prompt", **labels) == 7
    assert gw.sample("gateway_tokens_total", kind="completion", **labels) == 3
    # A client that asked for usage gets its usage chunk, untouched.
    async with openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="m", messages=[], stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package 'prometheus')")
async def test_scrape_passes_promtool(single: tuple[FakeBackend, RunningGateway], http: aiohttp.ClientSession) -> None:
    _, gw = single
    await ollama.AsyncClient(host=gw.url).generate(model="llama3.2", prompt="x")
    async with http.get(f"{gw.url}/metrics") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.read()
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert b"gateway_time_to_first_byte_seconds_bucket" in text


async def test_metrics_can_be_admin_only(backend_factory: BackendFactory, gateway_factory: GatewayFactory) -> None:
    import hashlib

    backend = await backend_factory("desktop")
    digest = "sha256:" + hashlib.sha256(b"admin-key").hexdigest()
    user = "sha256:" + hashlib.sha256(b"user-key").hexdigest()
    gw = await gateway_factory({
        "backends": [backend_entry(backend)], "metrics": {"require_auth": True},
        "auth": {"api_keys": [{"name": "ops", "hash": digest, "admin": True}, {"name": "u", "hash": user}]},
    })  # fmt: skip
    async with aiohttp.ClientSession() as http:
        for headers, status in (({}, 401), ({"x-api-key": "user-key"}, 403), ({"x-api-key": "admin-key"}, 200)):
            async with http.get(f"{gw.url}/metrics", headers=headers) as resp:
                assert resp.status == status


async def test_workers_share_one_view_of_the_metrics(tmp_path: Path, backend_factory: BackendFactory) -> None:
    backend = await backend_factory("desktop", models=["m:latest"])
    config = tmp_path / "g.yaml"
    config.write_text(yaml.safe_dump({"backends": [{"name": "desktop", "url": backend.url}]}))
    async with running("serve", "-c", str(config), "--workers", "2", cwd=tmp_path, env={}) as (url, _):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            for _ in range(40):  # new connections: the kernel spreads them over both workers
                async with http.post(f"{url}/api/generate", json={"model": "m", "stream": False}) as resp:
                    assert resp.status == 200
            for _ in range(6):  # whichever worker answers the scrape reports the whole gateway
                async with http.get(f"{url}/metrics") as resp:
                    text = await resp.text()
                line = next(
                    x for x in text.splitlines() if x.startswith("gateway_requests_total{") and "/api/generate" in x
                )
                assert line.endswith(" 40.0"), line
        await asyncio.sleep(0)
