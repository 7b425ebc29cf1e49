"""End to end through real sockets: real openai and ollama clients -> gateway -> fake backends."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import ollama
import openai
import pytest

from gateway.configfile import parse_config
from gateway.state import STATE

from .conftest import BackendFactory, GatewayFactory, RunningGateway, backend_entry
from .fakes import FakeBackend


def oai(gw: RunningGateway, key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0)


# --------------------------------------------------------------------------- OpenAI client


async def test_openai_chat_non_streamed(single: tuple[FakeBackend, RunningGateway]) -> None:
    backend, gw = single
    async with oai(gw) as client:
        reply = await client.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "Hello!"
    assert reply.usage is not None and reply.usage.prompt_tokens == 7
    assert backend.requests[-1].path == "/v1/chat/completions"
    assert backend.requests[-1].json["model"] == "llama3.2"  # forwarded untouched: no alias


async def test_openai_chat_streamed(single: tuple[FakeBackend, RunningGateway]) -> None:
    backend, gw = single
    async with oai(gw) as client:
        stream = await client.chat.completions.create(
            model="llama3.2", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        pieces = [chunk.choices[0].delta.content async for chunk in stream if chunk.choices]
    assert "".join(p or "" for p in pieces) == "Hello!"


async def test_openai_completions_both_ways(single: tuple[FakeBackend, RunningGateway]) -> None:
    _, gw = single
    async with oai(gw) as client:
        reply = await client.completions.create(model="qwen2.5:7b", prompt="say hi")
        assert reply.choices[0].text == "Hello!"
        stream = await client.completions.create(model="qwen2.5:7b", prompt="say hi", stream=True)
        text = "".join([c.choices[0].text async for c in stream if c.choices])
    assert text == "Hello!"


async def test_openai_embeddings(single: tuple[FakeBackend, RunningGateway]) -> None:
    _, gw = single
    async with oai(gw) as client:
        result = await client.embeddings.create(model="llama3.2", input=["a", "b"])
    assert len(result.data) == 2 and result.data[0].embedding == [0.1, 0.2, 0.3]


async def test_openai_model_listing(single: tuple[FakeBackend, RunningGateway]) -> None:
    _, gw = single
    async with oai(gw) as client:
        ids = [m.id async for m in client.models.list()]
        one = await client.models.retrieve("hf.co/org/repo:Q4_K_M")  # a name with '/' and ':'
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("nope")
    assert ids == ["llama3.2:latest", "qwen2.5:7b", "hf.co/org/repo:Q4_K_M"]
    assert one.id == "hf.co/org/repo:Q4_K_M" and one.owned_by == "desktop"


async def test_openai_unknown_model_is_404_in_openai_dialect(single: tuple[FakeBackend, RunningGateway]) -> None:
    backend, gw = single
    async with oai(gw) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "model_not_found" and "gpt-5" in body["message"]
    assert not backend.requests  # decided before touching any backend


# --------------------------------------------------------------------------- ollama client


async def test_ollama_chat_and_generate(single: tuple[FakeBackend, RunningGateway]) -> None:
    backend, gw = single
    client = ollama.AsyncClient(host=gw.url)
    reply = await client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    assert reply.message.content == "Hello!" and reply.eval_count == 3
    parts = [p.message.content async for p in await client.chat(model="llama3.2", messages=[], stream=True)]
    assert "".join(parts) == "Hello!"
    gen = [p.response async for p in await client.generate(model="qwen2.5:7b", prompt="x", stream=True)]
    assert "".join(gen) == "Hello!"
    assert [r.path for r in backend.requests] == ["/api/chat", "/api/chat", "/api/generate"]


async def test_ollama_embed_show_list_ps_version(single: tuple[FakeBackend, RunningGateway]) -> None:
    backend, gw = single
    client = ollama.AsyncClient(host=gw.url)
    embedded = await client.embed(model="llama3.2", input=["a", "b"])
    assert len(embedded.embeddings) == 2
    legacy = await client.embeddings(model="llama3.2", prompt="a")
    assert list(legacy.embedding) == [0.1, 0.2]
    listed = await client.list()
    assert [m.model for m in listed.models] == ["llama3.2:latest", "qwen2.5:7b", "hf.co/org/repo:Q4_K_M"]
    running = await client.ps()
    assert [m.model for m in running.models] == ["llama3.2:latest"]
    async with aiohttp.ClientSession() as http:
        probes = backend.version_calls
        for _ in range(3):  # a heartbeat: answered from the last probe, no backend request each time
            async with http.get(f"{gw.url}/api/version") as resp:
                assert await resp.json() == {"version": "0.12.3"}
        assert backend.version_calls == probes
        async with http.head(f"{gw.url}/") as resp:
            assert resp.status == 200
        async with http.post(f"{gw.url}/api/show", json={"name": "llama3.2"}) as resp:  # deprecated 'name'
            assert resp.status == 200 and (await resp.json())["backend"] == "desktop"


async def test_ollama_unknown_model_is_404_in_ollama_dialect(single: tuple[FakeBackend, RunningGateway]) -> None:
    _, gw = single
    client = ollama.AsyncClient(host=gw.url)
    with pytest.raises(ollama.ResponseError) as caught:
        await client.chat(model="mistral", messages=[])
    assert caught.value.status_code == 404 and caught.value.error == "model 'mistral' not found"


# --------------------------------------------------------------------------- routing


async def test_two_backends_route_by_model_and_merge_listings(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    desktop = await backend_factory("desktop", models=["llama3.2:latest"])
    vllm = await backend_factory("gpu", kind="openai", models=["meta-llama/Llama-3.1-8B-Instruct"])
    gw = await gateway_factory(
        {
            "backends": [backend_entry(desktop), backend_entry(vllm, type="vllm", api_key="upstream-secret")],
            "aliases": {"gpt-4o-mini": "llama3.2:latest", "big": "meta-llama/Llama-3.1-8B-Instruct"},
        }
    )
    async with oai(gw) as client:
        await client.chat.completions.create(model="llama3.2:latest", messages=[])
        await client.chat.completions.create(model="meta-llama/Llama-3.1-8B-Instruct", messages=[])
        await client.chat.completions.create(model="gpt-4o-mini", messages=[])
        await client.chat.completions.create(model="big", messages=[])
        ids = [m.id async for m in client.models.list()]
    assert [r.json["model"] for r in desktop.requests] == ["llama3.2:latest", "llama3.2:latest"]
    assert [r.json["model"] for r in vllm.requests] == ["meta-llama/Llama-3.1-8B-Instruct"] * 2
    assert ids == ["llama3.2:latest", "meta-llama/Llama-3.1-8B-Instruct", "gpt-4o-mini", "big"]
    tags = await ollama.AsyncClient(host=gw.url).list()
    assert [m.model for m in tags.models] == ids  # same merge in Ollama's shape, aliases included


async def test_ollama_latest_is_the_same_model(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    backend = await backend_factory("desktop", models=["llama3.2:latest"])
    gw = await gateway_factory({"backends": [backend_entry(backend)], "aliases": {"fast": "llama3.2"}})
    client = ollama.AsyncClient(host=gw.url)
    for name in ("llama3.2", "llama3.2:latest", "fast", "fast:latest"):
        await client.generate(model=name, prompt="x", stream=False)
    assert [r.json["model"] for r in backend.requests] == ["llama3.2", "llama3.2:latest", "llama3.2", "llama3.2"]


async def test_globs_route_without_discovery(backend_factory: BackendFactory, gateway_factory: GatewayFactory) -> None:
    a = await backend_factory("a", models=[])
    b = await backend_factory("b", models=[])
    gw = await gateway_factory(
        {"backends": [backend_entry(a, models=["llama3.2:*"]), backend_entry(b, models=["qwen*"])]}
    )
    client = ollama.AsyncClient(host=gw.url)
    await client.generate(model="llama3.2", prompt="x", stream=False)  # glob llama3.2:* matches :latest
    await client.generate(model="qwen2.5:7b", prompt="x", stream=False)
    assert len(a.requests) == 1 and len(b.requests) == 1


async def test_failover_to_second_backend_when_first_is_down(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    first = await backend_factory("first")
    second = await backend_factory("second")
    gw = await gateway_factory(
        {
            "backends": [backend_entry(first, models=["m"]), backend_entry(second, models=["m"])],
            "routing": {"retries": 1},
        }
    )
    await first.stop()  # connection refused from now on
    async with aiohttp.ClientSession() as http:
        for _ in range(4):
            async with http.post(f"{gw.url}/api/generate", json={"model": "m", "stream": False}) as resp:
                assert resp.status == 200
                assert resp.headers["X-Fake-Backend"] == "second"
    assert gw.sample("gateway_upstream_errors_total", backend="first", reason="connect") >= 1


async def test_load_is_spread_over_backends(backend_factory: BackendFactory, gateway_factory: GatewayFactory) -> None:
    # openai-type: on Ollama backends placement keeps a model on the box that has it loaded (test_placement.py)
    a = await backend_factory("a", kind="openai")
    b = await backend_factory("b", kind="openai")
    gw = await gateway_factory({"backends": [backend_entry(a, models=["m"]), backend_entry(b, models=["m"])]})
    async with aiohttp.ClientSession() as http:
        for _ in range(6):
            chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            async with http.post(f"{gw.url}/v1/chat/completions", json=chat) as resp:
                assert resp.status == 200
    assert len(a.requests) == 3 and len(b.requests) == 3


async def test_newly_pulled_model_is_found_without_waiting_for_discovery(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    backend = await backend_factory("desktop", models=["llama3.2:latest"])
    gw = await gateway_factory({"backends": [backend_entry(backend)]})
    backend.models.append("phi4:latest")  # pulled after the gateway started
    reply = await ollama.AsyncClient(host=gw.url).generate(model="phi4", prompt="x", stream=False)
    assert reply.response == "Hello!"


async def test_other_paths_are_404_not_an_open_proxy(single: tuple[FakeBackend, RunningGateway]) -> None:
    backend, gw = single
    async with aiohttp.ClientSession() as http:
        for method, path in [("GET", "/invocations"), ("POST", "/invocations"), ("POST", "/sleep"),
                             ("GET", "/api/experimental/web_search"), ("POST", "/v1/audio/transcriptions"),
                             ("GET", "/v1/../api/tags/../../etc/passwd")]:  # fmt: skip
            async with http.request(method, f"{gw.url}{path}") as resp:
                assert resp.status == 404, path
                body = await resp.json()
                if path.startswith("/api/"):
                    assert isinstance(body["error"], str)
                else:
                    assert body["error"]["type"] == "invalid_request_error"
        async with http.get(f"{gw.url}/v1/chat/completions") as resp:
            assert resp.status == 405 and resp.headers["Allow"] == "POST"
            assert (await resp.json())["error"]["message"] == "method not allowed"
    assert not backend.requests


async def test_vllm_tokenize_without_model_uses_the_vllm_backend(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    vllm = await backend_factory("gpu", kind="openai", models=["Qwen/Qwen3-8B"])
    gw = await gateway_factory({"backends": [backend_entry(vllm, type="vllm")]})
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw.url}/tokenize", json={"prompt": "hello"}) as resp:
            assert resp.status == 200
        async with http.post(f"{gw.url}/detokenize", json={"model": "Qwen/Qwen3-8B", "tokens": [1]}) as resp:
            assert resp.status == 200
    assert [r.path for r in vllm.requests] == ["/tokenize", "/detokenize"]


async def test_request_body_forwarded_byte_for_byte(single: tuple[FakeBackend, RunningGateway]) -> None:
    backend, gw = single
    raw = b'{"model":"llama3.2","stream":false,  "prompt":"caf\\u00e9 \xe2\x98\x95", "options":{"num_ctx":4096}}'
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw.url}/api/generate", data=raw, headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 200
    assert backend.requests[-1].body == raw


async def test_alias_rewrites_only_the_model(backend_factory: BackendFactory, gateway_factory: GatewayFactory) -> None:
    backend = await backend_factory("desktop", models=["llama3.2:3b"])
    gw = await gateway_factory({"backends": [backend_entry(backend)], "aliases": {"gpt-4o": "llama3.2:3b"}})
    payload = {"model": "gpt-4o", "messages": [{"role": "user", "content": "é ☕"}], "temperature": 0.5}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw.url}/v1/chat/completions", json=payload) as resp:
            assert resp.status == 200
    assert backend.requests[-1].json == {**payload, "model": "llama3.2:3b"}


async def test_request_id_generated_or_passed_through(single: tuple[FakeBackend, RunningGateway]) -> None:
    backend, gw = single
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw.url}/api/generate", json={"model": "llama3.2", "stream": False}) as resp:
            generated = resp.headers["X-Request-Id"]
        async with http.post(
            f"{gw.url}/api/generate", json={"model": "llama3.2"}, headers={"X-Request-Id": "trace-42"}
        ) as resp:
            assert resp.headers["X-Request-Id"] == "trace-42"
            assert resp.headers["Cache-Control"] == "no-cache" and resp.headers["X-Accel-Buffering"] == "no"
            assert resp.headers["Content-Type"] == "application/x-ndjson"
            lines = [json.loads(line) async for line in resp.content]
            assert lines[-1]["done"] is True
        async with http.get(f"{gw.url}/nope") as resp:
            assert len(resp.headers["X-Request-Id"]) == 32
    assert len(generated) == 32
    assert backend.requests[0].headers["X-Request-Id"] == generated
    assert backend.requests[1].headers["X-Request-Id"] == "trace-42"


async def test_responses_and_anthropic_messages_are_routed(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    # A backend declared to speak anthropic gets /v1/messages as is (else it is translated: test_bridge_anthropic)
    backend = await backend_factory("desktop", models=["llama3.2:latest", "qwen2.5:7b"])
    gw = await gateway_factory({"backends": [backend_entry(backend, speaks=["ollama", "openai", "anthropic"])]})
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw.url}/v1/responses", json={"model": "llama3.2", "input": "hi"}) as resp:
            assert resp.status == 200 and (await resp.json())["path"] == "/v1/responses"
        headers = {"x-api-key": "ignored-without-auth", "anthropic-version": "2023-06-01"}
        body = {"model": "qwen2.5:7b", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
        async with http.post(f"{gw.url}/v1/messages", json=body, headers=headers) as resp:
            assert resp.status == 200 and (await resp.json())["path"] == "/v1/messages"
    assert [r.path for r in backend.requests] == ["/v1/responses", "/v1/messages"]
    assert "x-api-key" not in backend.requests[-1].headers  # never forwarded, even with auth off
    assert backend.requests[-1].headers["anthropic-version"] == "2023-06-01"


async def test_a_retryable_status_moves_on_to_the_next_backend_and_the_last_one_is_relayed(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    broken = await backend_factory("broken", status=503, status_body={"error": "loading model"})
    good = await backend_factory("good")
    entries = [backend_entry(broken, models=["m"]), backend_entry(good, models=["m"])]
    gw = await gateway_factory({"backends": entries, "routing": {"retries": 1}})
    async with aiohttp.ClientSession() as http:
        for _ in range(2):  # the rotation puts each backend first once
            async with http.post(f"{gw.url}/api/generate", json={"model": "m", "stream": False}) as resp:
                assert resp.status == 200 and resp.headers["X-Fake-Backend"] == "good"
    assert len(broken.requests) == 1 and len(good.requests) == 2
    assert gw.sample("gateway_upstream_errors_total", backend="broken", reason="status") == 1
    # Without retries the backend's own answer is relayed, status and body.
    solo = await gateway_factory({"backends": entries, "routing": {"retries": 0}})
    seen = []
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.post(f"{solo.url}/api/generate", json={"model": "m", "stream": False}) as resp:
                seen.append((resp.status, await resp.json()))
    assert sorted(s for s, _ in seen) == [200, 503]
    assert {"error": "loading model"} in [body for _, body in seen]


async def test_a_first_byte_timeout_is_504_and_not_retried_on_another_backend(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    slow = await backend_factory("slow", hang=True)
    good = await backend_factory("good")
    fast = {"connect": "1s", "first_byte": "0.3s", "idle": "5s"}
    entries = [backend_entry(slow, models=["m"], timeouts=fast), backend_entry(good, models=["m"], timeouts=fast)]
    gw = await gateway_factory({"backends": entries, "routing": {"retries": 1}})
    statuses = []
    async with aiohttp.ClientSession() as http:
        for _ in range(2):  # the rotation puts each backend first once
            async with http.post(f"{gw.url}/v1/chat/completions", json={"model": "m", "messages": []}) as resp:
                statuses.append(resp.status)
                if resp.status == 504:
                    assert "timeouts.first_byte" in (await resp.json())["error"]["message"]
    assert sorted(statuses) == [200, 504]
    assert len(good.requests) == 1  # the timed-out request was not sent again with its budget spent
    assert gw.sample("gateway_upstream_errors_total", backend="slow", reason="timeout") == 1
    assert gw.sample("gateway_upstream_errors_total", backend="good", reason="timeout") == 0


async def test_an_invalid_response_head_is_502_with_reason_protocol(gateway_factory: GatewayFactory) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            if head.startswith(b"POST"):
                writer.write(b"HTTP/1.1 2xx nonsense\r\n\r\n")
            else:  # health probes and discovery get a valid, empty answer
                writer.write(
                    b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{"data": []}'
                )
            await writer.drain()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        entry = {"name": "odd", "url": f"http://127.0.0.1:{port}", "type": "openai", "models": ["m"]}
        gw = await gateway_factory({"backends": [entry]})
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{gw.url}/v1/chat/completions", json={"model": "m", "messages": []}) as resp:
                assert resp.status == 502
                assert "sent an invalid response" in (await resp.json())["error"]["message"]
        assert gw.sample("gateway_upstream_errors_total", backend="odd", reason="protocol") == 1
    finally:
        server.close()


async def test_x_gateway_backend_picks_the_ollama_that_receives_a_pull(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    first = await backend_factory("first", models=["llama3.2:latest"])
    second = await backend_factory("second", models=["qwen2.5:7b"])
    gw = await gateway_factory({"backends": [backend_entry(first), backend_entry(second)]})
    async with aiohttp.ClientSession() as http:
        body = {"model": "phi4", "stream": False}
        async with http.post(f"{gw.url}/api/pull", json=body, headers={"X-Gateway-Backend": "second"}) as resp:
            assert resp.status == 200 and resp.headers["X-Fake-Backend"] == "second"
        async with http.post(f"{gw.url}/api/pull", json=body, headers={"X-Gateway-Backend": "third"}) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"] == "no backend named 'third' (X-Gateway-Backend)"
    assert [r.path for r in second.requests] == ["/api/pull"] and not first.requests


async def test_turning_auth_on_by_reload_keeps_the_listen_address_check() -> None:
    from gateway.app import create_app
    from gateway.reload import reload_state
    from gateway.server import unsafe_listen_reason

    plain = parse_config({"backends": [{"name": "a", "url": "http://127.0.0.1:9"}]}, env={})
    secured = parse_config(
        {
            "backends": [{"name": "a", "url": "http://127.0.0.1:9"}],
            "auth": {"api_keys": [{"name": "k", "hash": "sha256:" + "0" * 64}]},
        },
        env={},
    )
    app = create_app(plain)
    reload_state(app[STATE], secured)  # on: always safe
    assert app[STATE].authenticator is not None
    # off again: refused on a non-loopback address (server.py checks before reloading), fine on loopback
    assert unsafe_listen_reason(plain, "0.0.0.0") is not None and unsafe_listen_reason(plain, "127.0.0.1") is None
    reload_state(app[STATE], plain)
    assert app[STATE].authenticator is None
