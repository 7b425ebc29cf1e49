"""Every bad input gets a defined status and an error body in the endpoint's dialect."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import aiohttp
import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import BadGateway, Dialect, GatewayError, NotFound, ServiceUnavailable, TooManyRequests, error_body

from .conftest import BackendFactory, GatewayFactory, RunningGateway, backend_entry
from .fakes import FakeBackend


async def post(
    gw: RunningGateway, path: str, data: bytes, **headers: str
) -> tuple[int, object, aiohttp.typedefs.LooseHeaders]:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw.url}{path}", data=data, headers=headers) as resp:
            return resp.status, json.loads(await resp.read()), resp.headers


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"model": "llama3.2", ', "request body is not valid JSON"),
        (b"", "request body is empty"),
        (b"[1, 2]", "request body must be a JSON object"),
        (b"model=llama3.2", "request body is not valid JSON"),
        (b'{"messages": []}', "model is required"),
        (b'{"model": 42}', "'model' must be a non-empty string"),
        (b'{"model": ""}', "'model' must be a non-empty string"),
        (b"\xff\xfe{", "request body is not valid JSON"),
    ],
)
async def test_bad_bodies_are_400_in_both_dialects(
    single: tuple[FakeBackend, RunningGateway], body: bytes, message: str
) -> None:
    backend, gw = single
    status, doc, _ = await post(gw, "/v1/chat/completions", body, **{"Content-Type": "application/json"})
    assert status == 400
    assert isinstance(doc, dict) and message in doc["error"]["message"]
    assert doc["error"]["type"] == "invalid_request_error" and set(doc["error"]) == {"message", "type", "param", "code"}
    status, doc, _ = await post(gw, "/api/chat", body)
    assert status == 400 and isinstance(doc, dict) and message in doc["error"]
    assert not backend.requests


async def test_anthropic_messages_errors_use_anthropic_shape(single: tuple[FakeBackend, RunningGateway]) -> None:
    _, gw = single
    status, doc, _ = await post(gw, "/v1/messages", b'{"model": "nope", "max_tokens": 5, "messages": []}')
    assert status == 404
    assert doc == {"type": "error", "error": {"type": "not_found_error", "message": "model 'nope' not found"}}


async def test_openai_client_sees_bad_request(single: tuple[FakeBackend, RunningGateway]) -> None:
    _, gw = single
    async with openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="", messages=[])
    assert "'model' must be a non-empty string" in caught.value.message


async def test_body_over_max_body_size_is_413(backend_factory: BackendFactory, gateway_factory: GatewayFactory) -> None:
    backend = await backend_factory("desktop", models=["m:latest"])
    gw = await gateway_factory({"server": {"max_body_size": "64KiB"}, "backends": [backend_entry(backend)]})
    big = json.dumps({"model": "m", "prompt": "x" * 70_000}).encode()
    status, doc, _ = await post(gw, "/api/generate", big)  # refused on its Content-Length, before reading
    assert status == 413 and isinstance(doc, dict)
    assert doc["error"] == f"request body is {len(big)} bytes; the limit (server.max_body_size) is 65536"
    status, doc, _ = await post(gw, "/v1/completions", big)
    assert status == 413 and isinstance(doc, dict) and "max_body_size" in doc["error"]["message"]

    async def chunked():  # no Content-Length: the limit applies while reading
        yield big

    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw.url}/api/generate", data=chunked()) as resp:
            assert resp.status == 413
            assert (await resp.json())[
                "error"
            ] == "request body exceeds the limit (server.max_body_size) of 65536 bytes"
    ok = json.dumps({"model": "m", "prompt": "x" * 60_000, "stream": False}).encode()
    status, _, _ = await post(gw, "/api/generate", ok)
    assert status == 200
    assert len(backend.requests) == 1


async def test_big_body_under_the_default_limit_is_forwarded(single: tuple[FakeBackend, RunningGateway]) -> None:
    backend, gw = single
    image = "A" * (5 * 1024 * 1024)  # a 5 MB base64 image, over aiohttp's 1 MiB default
    body = json.dumps({"model": "llama3.2", "stream": False, "prompt": "what is this", "images": [image]}).encode()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw.url}/api/generate", data=io.BytesIO(body)) as resp:
            assert resp.status == 200
    assert backend.requests[-1].body == body


async def test_unreachable_backend_is_502(backend_factory: BackendFactory, gateway_factory: GatewayFactory) -> None:
    backend = await backend_factory("desktop", models=["m:latest"])
    gw = await gateway_factory({"backends": [backend_entry(backend, models=["m"])]})
    await backend.stop()
    status, doc, _ = await post(gw, "/api/generate", b'{"model": "m"}')
    assert status == 502 and isinstance(doc, dict) and "backend 'desktop' is unreachable" in doc["error"]
    async with openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0) as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(model="m", messages=[])
    assert caught.value.status_code == 502


async def test_upstream_401_becomes_502(backend_factory: BackendFactory, gateway_factory: GatewayFactory) -> None:
    backend = await backend_factory(
        "gpu", kind="openai", models=["m"], status=401, status_body={"error": "Unauthorized"}
    )
    gw = await gateway_factory({"backends": [backend_entry(backend, type="vllm", api_key="wrong")]})
    status, doc, headers = await post(gw, "/v1/chat/completions", b'{"model": "m", "messages": []}')
    assert status == 502 and "WWW-Authenticate" not in headers
    assert isinstance(doc, dict) and "rejected the gateway's credentials" in doc["error"]["message"]
    assert "backends[0].api_key" in doc["error"]["message"]


async def test_upstream_errors_are_relayed_with_their_status(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    backend = await backend_factory(
        "desktop", models=["m:latest"], status=500, status_body={"error": "llama runner crashed"}
    )
    gw = await gateway_factory({"backends": [backend_entry(backend)]})
    status, doc, _ = await post(gw, "/api/generate", b'{"model": "m"}')
    assert status == 500 and doc == {"error": "llama runner crashed"}


async def test_no_healthy_backend_is_503(backend_factory: BackendFactory, gateway_factory: GatewayFactory) -> None:
    backend = await backend_factory("desktop", models=["m:latest"])
    gw = await gateway_factory({"backends": [backend_entry(backend, models=["m"])]})
    gw.state.backends[0].up = False  # as the health probes would after `fall` failures
    status, doc, headers = await post(gw, "/api/generate", b'{"model": "m"}')
    assert status == 503 and headers["Retry-After"] == "10"
    assert isinstance(doc, dict) and "no healthy backend for model 'm'" in doc["error"]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gw.url}/readyz") as resp:
            assert resp.status == 503
        async with http.get(f"{gw.url}/healthz") as resp:
            assert resp.status == 200


async def test_health_probes_mark_a_backend_down_and_up(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    backend = await backend_factory("desktop", models=["m:latest"])
    gw = await gateway_factory({"backends": [backend_entry(backend, health_check={"fall": 2, "rise": 1})]})
    state = gw.state
    assert state.discovery is not None
    b = state.backends[0]
    assert b.up and gw.sample("gateway_backend_up", backend="desktop") == 1
    await backend.stop()
    await state.discovery.probe(b)
    assert b.up  # one failure is not enough (fall: 2)
    await state.discovery.probe(b)
    assert not b.up and gw.sample("gateway_backend_up", backend="desktop") == 0
    await backend.start()
    b.base = backend.url  # the restarted backend has a new port
    await state.discovery.probe(b)
    assert b.up and gw.sample("gateway_backend_up", backend="desktop") == 1


async def test_concurrency_limit_queue_full_is_429(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    backend = await backend_factory("desktop", models=["m:latest"], hang=True)
    gw = await gateway_factory(
        {"backends": [backend_entry(backend, max_concurrency=1)], "routing": {"queue_size": 0, "queue_timeout": "1s"}}
    )
    async with aiohttp.ClientSession() as http:
        task = asyncio.ensure_future(http.post(f"{gw.url}/api/generate", json={"model": "m"}))
        await asyncio.wait_for(backend.started.wait(), 5)
        async with http.post(f"{gw.url}/api/generate", json={"model": "m"}) as resp:
            assert resp.status == 429 and resp.headers["Retry-After"] == "1"
            assert "queue is full" in (await resp.json())["error"]
        task.cancel()


@given(
    st.sampled_from([NotFound, BadGateway, ServiceUnavailable, TooManyRequests, GatewayError]),
    st.text(),
    st.one_of(st.none(), st.text()),
)
def test_error_bodies_are_valid_json_of_the_dialect_shape(
    kind: type[GatewayError], message: str, code: str | None
) -> None:
    err = kind(message, code=code)
    openai_doc = json.loads(error_body(Dialect.OPENAI, err))
    assert openai_doc["error"]["message"] == message and openai_doc["error"]["code"] == code
    assert json.loads(error_body(Dialect.OLLAMA, err)) == {"error": message}
    anthropic_doc = json.loads(error_body(Dialect.ANTHROPIC, err))
    assert anthropic_doc["type"] == "error" and anthropic_doc["error"]["message"] == message


async def test_an_unexpected_exception_is_a_logged_500_in_dialect_with_the_request_id(
    backend_factory: BackendFactory,
    gateway_factory: GatewayFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import gateway.proxy

    async def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(gateway.proxy, "choose_backends", broken)
    backend = await backend_factory("desktop", models=["m"])
    gw = await gateway_factory({"backends": [backend_entry(backend)]})
    caplog.set_level(logging.ERROR, logger="gateway")
    async with aiohttp.ClientSession() as http:
        headers = {"X-Request-Id": "trace-500"}
        async with http.post(f"{gw.url}/v1/chat/completions", json={"model": "m"}, headers=headers) as resp:
            assert resp.status == 500 and resp.headers["X-Request-Id"] == "trace-500"
            error = (await resp.json())["error"]
            assert error["message"] == "internal gateway error (request id trace-500)"
        async with http.post(f"{gw.url}/api/chat", json={"model": "m"}) as resp:
            assert resp.status == 500
            assert (await resp.json())["error"].startswith("internal gateway error (request id ")
    logged = [r for r in caplog.records if r.name == "gateway" and r.exc_info]
    assert len(logged) == 2 and "trace-500" in logged[0].getMessage()
    assert not backend.requests


async def test_a_small_body_cut_short_or_stalled_is_502_or_504_not_a_truncated_200(
    gateway_factory: GatewayFactory,
) -> None:
    """Small complete-length bodies are read whole before anything is sent, so a backend that fails
    half-way still gets a proper error in the endpoint's dialect."""
    stall = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"POST"):  # probes and discovery
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n" + b'{"data": []}')
            await writer.drain()
            writer.close()
            return
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"id":')
        await writer.drain()
        if b"stall" in head:
            await stall.wait()  # never finishes the body
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        entry = {"name": "flaky", "url": f"http://127.0.0.1:{port}", "type": "openai", "models": ["m"],
                 "timeouts": {"first_byte": "0.5s"}}  # fmt: skip
        gw = await gateway_factory({"backends": [entry]})
        async with aiohttp.ClientSession() as http:
            body = {"model": "m", "messages": []}
            async with http.post(f"{gw.url}/v1/chat/completions", json=body) as resp:
                assert resp.status == 502
                message = (await resp.json())["error"]["message"]
                assert message == "the backend closed the connection in the middle of the response"
            async with http.post(f"{gw.url}/v1/chat/completions?stall", json=body) as resp:
                assert resp.status == 504
                message = (await resp.json())["error"]["message"]
                assert message == "the backend stopped sending in the middle of the response"
        assert gw.sample("gateway_upstream_errors_total", backend="flaky", reason="reset") == 1
        assert gw.sample("gateway_upstream_errors_total", backend="flaky", reason="timeout") == 1
    finally:
        stall.set()
        server.close()
