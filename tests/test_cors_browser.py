"""CORS judged by a real browser: what Chromium lets a page on another origin read from the gateway.

A page is served from one loopback origin and ``fetch``es a target on another port with an
``Authorization`` header. Chromium — not our reading of the Fetch standard — decides whether the
preflight passed, whether the body is readable, and whether a streamed body arrives chunk by chunk.

Every test runs against two targets:

* ``standalone``: a tiny app with only ``gateway.cors`` (middleware + prepare hook) and a fake
  bearer check in front of a handler that adds its own ``Access-Control-Allow-Origin: *``. It
  isolates the CORS module from the rest of the gateway.
* ``gateway``: the real gateway (``gateway_factory`` in conftest) with an API key and a CORS
  config, in front of a fake OpenAI-style backend that also sends its own CORS headers.

Skipped (see ``tests/browser.py``) when no Chromium is available.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.typedefs import Handler

from gateway.config import CorsConfig
from gateway.cors import CorsPolicy, make_cors_middleware, make_cors_prepare_hook
from gateway.errors import GatewayError, Unauthorized, error_response

from .browser import browser_page
from .conftest import BackendFactory, GatewayFactory, backend_entry

TOKEN = "sk-browser-test"
MODEL = "llama3.2"
CHUNKS = ["chunk-0", "chunk-1", "chunk-2"]
PAGE = "<!doctype html><meta charset=utf-8><title>cors test page</title><p>cors test page</p>"
CHAT = "/v1/chat/completions"


@dataclass
class Target:
    """What the page calls, and what reached the model server behind it."""

    url: str
    gate: asyncio.Queue[None]  # stream piece n > 0 is sent only after one put
    hits: Callable[[], int]  # generation requests that reached the model server
    simple_path: str  # where a cross-site "simple" POST (no preflight) is aimed


# --------------------------------------------------------------------------- the standalone target


def make_standalone_app(allow_origin: str, gate: asyncio.Queue[None], hits: list[str]) -> web.Application:
    policy = CorsPolicy(CorsConfig(allow_origins=(allow_origin,)))

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except GatewayError as err:
            response = error_response(request.path, err)
            response.headers["X-Request-Id"] = "req-browser-1"
            return response

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        # /api/simple is open, so only the CORS 403 can keep a cross-site "simple" POST from running it.
        if request.path != "/api/simple" and request.headers.get("Authorization") != f"Bearer {TOKEN}":
            raise Unauthorized("Incorrect API key provided")
        return await handler(request)

    async def chat(request: web.Request) -> web.StreamResponse:
        hits.append(request.path)
        body = await request.json()
        backend_cors = {"Access-Control-Allow-Origin": "*", "Vary": "Origin"}  # must not survive
        if not body.get("stream"):
            doc = {"model": body["model"], "choices": [{"index": 0, "message": {"content": "".join(CHUNKS)}}]}
            return web.json_response(doc, headers=backend_cors)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **backend_cors})
        await response.prepare(request)
        pieces = [json.dumps({"choices": [{"delta": {"content": c}}]}) for c in CHUNKS] + ["[DONE]"]
        for i, piece in enumerate(pieces):
            if i:
                await gate.get()
            await response.write(f"data: {piece}\n\n".encode())
        await response.write_eof()
        return response

    async def simple(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="ran")

    app = web.Application(middlewares=[errors, make_cors_middleware(policy), auth])
    app.on_response_prepare.append(make_cors_prepare_hook(policy))
    app.router.add_post(CHAT, chat)
    app.router.add_post("/api/simple", simple)
    return app


async def start_standalone(allow_origin: str, servers: list[TestServer]) -> Target:
    gate: asyncio.Queue[None] = asyncio.Queue()
    hits: list[str] = []
    server = TestServer(make_standalone_app(allow_origin, gate, hits), host="127.0.0.1")
    await server.start_server()
    servers.append(server)
    return Target(str(server.make_url("")).rstrip("/"), gate, lambda: len(hits), "/api/simple")


# --------------------------------------------------------------------------- the real gateway


async def start_gateway(allow_origin: str, backend_factory: BackendFactory, gateway_factory: GatewayFactory) -> Target:
    gate: asyncio.Queue[None] = asyncio.Queue()
    backend = await backend_factory("desktop", kind="openai", models=[MODEL], chunks=CHUNKS, gate=gate, cors=True)
    gw = await gateway_factory(
        {
            "backends": [backend_entry(backend)],
            "auth": {"api_keys": [{"name": "web", "hash": "sha256:" + hashlib.sha256(TOKEN.encode()).hexdigest()}]},
            "cors": {"allow_origins": [allow_origin], "max_age": "10m"},
        }
    )
    # No key can ride on a simple request here, so auth would refuse it too; the standalone
    # target's open /api/simple shows that the CORS 403 alone stops it.
    return Target(gw.url, gate, lambda: len(backend.requests), "/api/chat")


# --------------------------------------------------------------------------- fixture


def make_page_app() -> web.Application:
    async def index(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    return app


@dataclass
class Setup:
    page: Any  # playwright.async_api.Page
    allowed_page: str  # the page on the allowlisted origin
    other_page: str  # the same page on an origin that is not allowlisted
    target: Target

    @property
    def allowed_origin(self) -> str:
        return self.allowed_page.rstrip("/")


@pytest.fixture(params=["standalone", "gateway"])
async def setup(
    request: pytest.FixtureRequest, backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> AsyncIterator[Setup]:
    servers: list[TestServer] = []
    try:
        async with browser_page() as page:
            for _ in range(2):
                server = TestServer(make_page_app(), host="127.0.0.1")
                await server.start_server()
                servers.append(server)
            allowed, other = (str(s.make_url("/")) for s in servers)
            allow_origin = allowed.rstrip("/")
            if request.param == "standalone":
                target = await start_standalone(allow_origin, servers)
            else:
                target = await start_gateway(allow_origin, backend_factory, gateway_factory)
            yield Setup(page, allowed, other, target)
            for _ in range(8):  # never leave a gated stream hanging at teardown
                target.gate.put_nowait(None)
    finally:
        for server in reversed(servers):
            await server.close()


# --------------------------------------------------------------------------- page scripts

FETCH_JSON = """async ([url, token, model]) => {
    const r = await fetch(url, {
        method: "POST",
        headers: {"Authorization": "Bearer " + token, "Content-Type": "application/json", "x-stainless-os": "Linux"},
        body: JSON.stringify({model: model, messages: [{role: "user", content: "hi"}]}),
    });
    return {status: r.status, body: await r.json()};
}"""

FETCH_STREAM = """async ([url, token, model]) => {
    window.received = "";
    window.reads = 0;
    const r = await fetch(url, {
        method: "POST",
        headers: {"Authorization": "Bearer " + token, "Content-Type": "application/json"},
        body: JSON.stringify({model: model, stream: true, messages: [{role: "user", content: "hi"}]}),
    });
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        window.reads += 1;
        window.received += decoder.decode(value, {stream: true});
    }
    return {status: r.status, type: r.headers.get("content-type"), text: window.received, reads: window.reads};
}"""

FETCH_ERROR = """async ([url, model]) => {
    const r = await fetch(url, {
        method: "POST",
        headers: {"Authorization": "Bearer wrong-key", "Content-Type": "application/json"},
        body: JSON.stringify({model: model, messages: []}),
    });
    return {status: r.status, body: await r.json(), requestId: r.headers.get("x-request-id")};
}"""

FETCH_BLOCKED = """async ([url, init]) => {
    try {
        const r = await fetch(url, init);
        return {resolved: true, status: r.status};
    } catch (e) {
        return {resolved: false, name: e.name, isTypeError: e instanceof TypeError};
    }
}"""

BLOCKED = {"resolved": False, "name": "TypeError", "isTypeError": True}


# --------------------------------------------------------------------------- tests


async def test_json_call_from_allowed_origin(setup: Setup) -> None:
    page, url = setup.page, setup.target.url + CHAT
    await page.goto(setup.allowed_page)
    async with page.expect_response(lambda r: r.url == url and r.request.method == "POST") as seen:
        result = await page.evaluate(FETCH_JSON, [url, TOKEN, MODEL])
    assert result["status"] == 200
    assert result["body"]["choices"][0]["message"]["content"] == "".join(CHUNKS)
    # What Chromium received (JS cannot read it): one value, the page's exact origin — not the backend's '*'.
    response = await seen.value
    assert await response.header_values("access-control-allow-origin") == [setup.allowed_origin]
    assert setup.target.hits() == 1


async def test_stream_is_read_chunk_by_chunk(setup: Setup) -> None:
    page, target = setup.page, setup.target
    await page.goto(setup.allowed_page)
    reading = asyncio.create_task(page.evaluate(FETCH_STREAM, [target.url + CHAT, TOKEN, MODEL]))
    try:
        for i in range(len(CHUNKS)):
            # The page holds chunk i while chunk i+1 has not even been sent: nothing buffers on the way.
            marker = f'"{CHUNKS[i]}"'
            await page.wait_for_function("m => (window.received || '').includes(m)", arg=marker, polling=20)
            received = await page.evaluate("window.received")
            assert i + 1 == len(CHUNKS) or f'"{CHUNKS[i + 1]}"' not in received
            target.gate.put_nowait(None)
        for _ in range(4):  # whatever the server sends after the last chunk ([DONE], finish, usage)
            target.gate.put_nowait(None)
        result = await asyncio.wait_for(reading, timeout=15)
    finally:
        if not reading.done():
            reading.cancel()
    assert result["status"] == 200
    assert result["type"].startswith("text/event-stream")
    assert result["reads"] >= len(CHUNKS)
    assert result["text"].rstrip().endswith("data: [DONE]")


async def test_error_json_is_readable(setup: Setup) -> None:
    await setup.page.goto(setup.allowed_page)
    result = await setup.page.evaluate(FETCH_ERROR, [setup.target.url + CHAT, MODEL])
    assert result["status"] == 401
    assert isinstance(result["body"]["error"]["message"], str) and result["body"]["error"]["message"]
    assert result["requestId"]  # readable thanks to Access-Control-Expose-Headers
    assert setup.target.hits() == 0


async def test_disallowed_origin_is_blocked(setup: Setup) -> None:
    page, url = setup.page, setup.target.url
    await page.goto(setup.other_page)
    # A valid key, so only CORS stands in the way: the preflight is refused and the POST never sent.
    init = {"method": "POST", "headers": {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}}
    preflighted = await page.evaluate(FETCH_BLOCKED, [url + CHAT, {**init, "body": json.dumps({"model": MODEL})}])
    assert preflighted == BLOCKED
    # A "simple" POST skips the preflight and is sent; the gateway's 403 keeps it from running.
    body = json.dumps({"model": MODEL})
    simple = await page.evaluate(FETCH_BLOCKED, [url + setup.target.simple_path, {"method": "POST", "body": body}])
    assert simple == BLOCKED
    assert setup.target.hits() == 0
