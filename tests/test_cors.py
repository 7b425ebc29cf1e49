"""CORS through the real gateway: every kind of response carries exactly one set of CORS headers."""

from __future__ import annotations

import asyncio
import hashlib
import json

import aiohttp

from .conftest import BackendFactory, GatewayFactory, backend_entry

ORIGIN = "https://app.example.com"
KEY = "sk-gw-cors-0123456789abcdef0123456789abcdef"


async def test_every_response_kind_carries_cors(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    ok = await backend_factory("ok", models=["m:latest"], cors=True)  # the backend adds its own "*"
    broken = await backend_factory("broken", models=["bad:latest"], status=500)
    gw = await gateway_factory({
        "server": {"max_body_size": "2KiB"},
        "backends": [backend_entry(ok, max_concurrency=1), backend_entry(broken)],
        "routing": {"queue_size": 0},
        "auth": {"api_keys": [{"name": "web", "hash": "sha256:" + hashlib.sha256(KEY.encode()).hexdigest(),
                               "models": ["m*", "bad"]}]},
        "cors": {"allow_origins": ["https://*.example.com"]},
    })  # fmt: skip
    auth = {"Origin": ORIGIN, "Authorization": f"Bearer {KEY}"}
    gate: asyncio.Queue[None] = asyncio.Queue()
    ok.gate = gate
    async with aiohttp.ClientSession() as http:
        holder = await http.post(f"{gw.url}/api/chat", json={"model": "m", "messages": []}, headers=auth)  # streams
        assert holder.status == 200
        cases = [
            ("POST", "/api/chat", {"Origin": ORIGIN}, b'{"model": "m"}', 401),
            ("POST", "/api/chat", auth, b'{"model": "m-missing"}', 404),  # in scope, served by nobody
            ("POST", "/api/pull", auth, b'{"model": "m"}', 403),
            ("POST", "/api/chat", auth, b'{"model": "m", "pad": "' + b"x" * 4096 + b'"}', 413),
            ("POST", "/api/chat", auth, b'{"model": "m"}', 429),  # "ok" is busy with the stream, no queue
            ("POST", "/api/generate", auth, b'{"model": "bad"}', 500),
            ("GET", "/v1/models", auth, None, 200),
        ]
        for method, path, headers, body, status in cases:
            async with http.request(method, f"{gw.url}{path}", data=body, headers=headers) as resp:
                assert resp.status == status, (path, status, await resp.text())
                assert resp.headers.getall("Access-Control-Allow-Origin") == [ORIGIN], path
                assert "Origin" in resp.headers["Vary"]
                assert "X-Request-Id" in resp.headers["Access-Control-Expose-Headers"]
                json.loads(await resp.read())  # a readable JSON body, also on errors
        # The streamed response got them too, before its first byte.
        assert holder.headers.getall("Access-Control-Allow-Origin") == [ORIGIN]
        for _ in range(5):
            gate.put_nowait(None)
        lines = [json.loads(line) async for line in holder.content]
        assert lines[-1]["done"] is True
        holder.close()
        # A disallowed origin: 403, no CORS headers at all, nothing forwarded.
        before = len(ok.requests)
        async with http.post(
            f"{gw.url}/api/chat", json={"model": "m"}, headers={**auth, "Origin": "https://evil.test"}
        ) as resp:
            assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
        assert len(ok.requests) == before


async def test_the_request_side_through_the_gateway(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    """Preflights, same-origin pages, ``null`` and CORS switched off, as the real gateway answers them."""
    backend = await backend_factory("ok", models=["m:latest"])
    with_cors = await gateway_factory(
        {"backends": [backend_entry(backend)], "cors": {"allow_origins": ["https://*.example.com"]}}
    )
    without = await gateway_factory({"backends": [backend_entry(backend)]})
    chat = {"model": "m", "messages": []}
    async with aiohttp.ClientSession() as http:
        async with http.options(f"{with_cors.url}/v1/chat/completions") as resp:  # not a preflight
            assert resp.status == 204 and "POST" in resp.headers["Allow"]
            assert "Access-Control-Allow-Origin" not in resp.headers
        preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization, content-type"}  # fmt: skip
        async with http.options(f"{with_cors.url}/v1/chat/completions", headers=preflight) as resp:
            assert resp.status == 204 and resp.headers["Access-Control-Allow-Origin"] == ORIGIN
            assert resp.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
        async with http.options(f"{without.url}/v1/chat/completions", headers=preflight) as resp:
            assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
        same_site = {"Origin": without.url}  # the gateway's own origin: not cross-site, no CORS needed
        async with http.post(f"{without.url}/v1/chat/completions", json=chat, headers=same_site) as resp:
            assert resp.status == 200
        for gw in (with_cors, without):
            async with http.post(f"{gw.url}/v1/chat/completions", json=chat, headers={"Origin": "null"}) as resp:
                assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
                assert "cors.allow_origins" in (await resp.json())["error"]["message"]
    assert len(backend.requests) == 1  # only the same-origin request reached the backend
