"""Every path through authentication, end to end with real clients and real sockets."""

from __future__ import annotations

import base64
import hashlib
import logging
from typing import Any

import aiohttp
import bcrypt
import ollama
import openai
import pytest

from gateway.configfile import parse_config
from gateway.reload import reload_state

from .conftest import BackendFactory, GatewayFactory, RunningGateway, backend_entry
from .fakes import FakeBackend

SHA_KEY = "sk-gw-generated-high-entropy-key-0123456789"
HUMAN_KEY = "my memorable key"
SCOPED_KEY = "sk-gw-scoped-qwen-only-0123456789abcdef"
ALICE_PASSWORD = "wonder:land"  # a ':' in a password is legal in Basic


def sha(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def bc(secret: str) -> str:
    return bcrypt.hashpw(secret.encode(), bcrypt.gensalt(4)).decode()


def auth_section() -> dict[str, Any]:
    return {
        "api_keys": [
            {"name": "laptop", "hash": sha(SHA_KEY)},
            {"name": "webui", "hash": bc(HUMAN_KEY)},
            {"name": "scoped", "hash": sha(SCOPED_KEY), "models": ["qwen*"]},
        ],
        "basic_users": [
            {"name": "alice", "password_hash": bc(ALICE_PASSWORD), "models": ["llama3.2:*"], "admin": True}
        ],
    }


@pytest.fixture
async def secured(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> tuple[FakeBackend, RunningGateway]:
    backend = await backend_factory("desktop", models=["llama3.2:latest", "qwen2.5:7b"])
    gw = await gateway_factory(
        {
            "backends": [backend_entry(backend)],
            "auth": auth_section(),
            "cors": {"allow_origins": ["http://localhost:3000"]},
            "aliases": {"gpt-4o-mini": "qwen2.5:7b"},
        }
    )
    return backend, gw


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_openai_client_with_keys(secured: tuple[FakeBackend, RunningGateway]) -> None:
    backend, gw = secured
    for key in (SHA_KEY, HUMAN_KEY):
        async with openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0) as client:
            reply = await client.chat.completions.create(model="llama3.2", messages=[])
            assert reply.choices[0].message.content == "Hello!"
    async with openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="sk-wrong", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.chat.completions.create(model="llama3.2", messages=[])
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    assert "sk-wrong" not in str(caught.value.body)
    assert len(backend.requests) == 2
    assert gw.sample("gateway_requests_total", backend="desktop", model="llama3.2", endpoint="/v1/chat/completions",
                     code="200", client="webui") == 1  # fmt: skip


async def test_ollama_client_with_headers_and_basic_url(secured: tuple[FakeBackend, RunningGateway]) -> None:
    _, gw = secured
    by_header = ollama.AsyncClient(host=gw.url, headers={"Authorization": f"Bearer {SHA_KEY}"})
    assert (await by_header.generate(model="llama3.2", prompt="x", stream=False)).response == "Hello!"
    # ollama-python drops user:pass@ from its host (its _parse_host keeps only host and port), so Basic
    # goes through its httpx options here; URL credentials are tested with aiohttp below.
    by_basic = ollama.AsyncClient(host=gw.url, auth=("alice", ALICE_PASSWORD))
    parts = [p.message.content async for p in await by_basic.chat(model="llama3.2", messages=[], stream=True)]
    assert "".join(parts) == "Hello!"
    url_with_credentials = gw.url.replace("http://", "http://alice:wonder%3Aland@")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url_with_credentials}/api/tags") as resp:  # aiohttp turns userinfo into Basic
            assert resp.status == 200 and [m["name"] for m in (await resp.json())["models"]] == ["llama3.2:latest"]
    anonymous = ollama.AsyncClient(host=gw.url)
    with pytest.raises(ollama.ResponseError) as caught:
        await anonymous.list()
    assert caught.value.status_code == 401 and "Authorization: Bearer" in caught.value.error


async def test_raw_paths_none_bad_good(
    secured: tuple[FakeBackend, RunningGateway], http: aiohttp.ClientSession
) -> None:
    backend, gw = secured
    body = {"model": "llama3.2", "stream": False}
    async with http.post(f"{gw.url}/api/generate", json=body) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Basic realm="gateway", charset="UTF-8"'
        assert isinstance((await resp.json())["error"], str)
    async with http.post(f"{gw.url}/v1/completions", json=body, headers={"Authorization": "Bearer nope"}) as resp:
        assert resp.status == 401 and (await resp.json())["error"]["code"] == "invalid_api_key"
    async with http.post(f"{gw.url}/api/generate", json=body, headers={"Authorization": "Digest abc"}) as resp:
        assert resp.status == 401
    async with http.post(f"{gw.url}/api/generate", json=body, headers={"x-api-key": SHA_KEY}) as resp:
        assert resp.status == 200
    async with http.post(f"{gw.url}/api/generate", json=body, headers={"Authorization": basic("alice", "bad")}) as resp:
        assert resp.status == 401
    async with http.post(
        f"{gw.url}/api/generate", json=body, headers={"Authorization": basic("alice", ALICE_PASSWORD)}
    ) as resp:
        assert resp.status == 200
    assert len(backend.requests) == 2
    for reason in ("missing", "invalid", "malformed"):
        assert gw.sample("gateway_auth_failures_total", reason=reason) >= 1


async def test_public_endpoints_need_no_credentials(
    secured: tuple[FakeBackend, RunningGateway], http: aiohttp.ClientSession
) -> None:
    _, gw = secured
    for path in ("/", "/healthz", "/readyz", "/api/version", "/metrics"):
        async with http.get(f"{gw.url}{path}") as resp:
            assert resp.status == 200, path
    for path in ("/v1/models", "/api/tags", "/api/ps", "/nonexistent"):
        async with http.get(f"{gw.url}{path}") as resp:
            assert resp.status == 401, path  # no path probing without credentials


async def test_preflight_needs_no_credentials(
    secured: tuple[FakeBackend, RunningGateway], http: aiohttp.ClientSession
) -> None:
    backend, gw = secured
    headers = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os"}  # fmt: skip
    async with http.options(f"{gw.url}/v1/chat/completions", headers=headers) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
        assert "authorization" in resp.headers["Access-Control-Allow-Headers"].lower()
    assert not backend.requests


async def test_model_scope_is_enforced_and_listings_filtered(
    secured: tuple[FakeBackend, RunningGateway], http: aiohttp.ClientSession
) -> None:
    backend, gw = secured
    scoped = {"Authorization": f"Bearer {SCOPED_KEY}"}
    async with http.post(f"{gw.url}/api/generate", json={"model": "llama3.2", "stream": False}, headers=scoped) as resp:
        assert resp.status == 403 and (await resp.json())["error"] == "model 'llama3.2' is not allowed for 'scoped'"
    # A name outside the scope is 403 whether or not any backend has it: a key cannot probe what exists.
    for model in ("llama3.2", "no-such-model:7b"):
        async with http.post(f"{gw.url}/v1/chat/completions", json={"model": model}, headers=scoped) as resp:
            assert resp.status == 403 and (await resp.json())["error"]["code"] == "model_not_allowed", model
    async with openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=SCOPED_KEY, max_retries=0) as client:
        with pytest.raises(openai.PermissionDeniedError):
            await client.chat.completions.create(model="llama3.2:latest", messages=[])
        await client.chat.completions.create(model="qwen2.5:7b", messages=[])
        await client.chat.completions.create(model="gpt-4o-mini", messages=[])  # alias of an allowed model
        assert [m.id async for m in client.models.list()] == ["qwen2.5:7b", "gpt-4o-mini"]
    alice = ollama.AsyncClient(host=gw.url, headers={"Authorization": basic("alice", ALICE_PASSWORD)})
    assert [m.model for m in (await alice.list()).models] == ["llama3.2:latest"]
    assert [m.model for m in (await alice.ps()).models] == ["llama3.2:latest"]
    assert [r.json["model"] for r in backend.requests] == ["qwen2.5:7b", "qwen2.5:7b"]


async def test_admin_endpoints_are_admin_only(
    secured: tuple[FakeBackend, RunningGateway], http: aiohttp.ClientSession
) -> None:
    backend, gw = secured
    for path, method, body in [("/api/pull", "POST", {"model": "phi4"}),
                               ("/api/delete", "DELETE", {"model": "qwen2.5:7b"}),
                               ("/api/copy", "POST", {"source": "qwen2.5:7b", "destination": "q"}),
                               ("/api/create", "POST", {"model": "mine", "from": "qwen2.5:7b"}),
                               ("/api/push", "POST", {"model": "qwen2.5:7b"})]:  # fmt: skip
        async with http.request(
            method, f"{gw.url}{path}", json=body, headers={"Authorization": f"Bearer {SHA_KEY}"}
        ) as resp:
            assert resp.status == 403, path
            assert "admin endpoint" in (await resp.json())["error"]
    async with http.post(f"{gw.url}/api/blobs/sha256:abc", data=b"\x00\x01", headers={"x-api-key": SHA_KEY}) as resp:
        assert resp.status == 403 and "admin endpoint" in (await resp.json())["error"]
    assert not backend.requests
    admin = {"Authorization": basic("alice", ALICE_PASSWORD)}
    async with http.post(f"{gw.url}/api/pull", json={"model": "phi4", "stream": False}, headers=admin) as resp:
        assert resp.status == 403  # admin, but phi4 is outside alice's model scope
        assert (await resp.json())["error"] == "model 'phi4' is not allowed for 'alice'"
    async with http.post(f"{gw.url}/api/pull", json={"model": "llama3.2:1b", "stream": False}, headers=admin) as resp:
        assert resp.status == 200  # a model nobody has yet goes to an Ollama backend
    async with http.post(f"{gw.url}/api/blobs/sha256:abc", data=b"\x00\x01" * 1000, headers=admin) as resp:
        assert resp.status == 200 and (await resp.json())["bytes"] == 2000
    assert [r.path for r in backend.requests] == ["/api/pull", "/api/blobs/sha256:abc"]


async def test_revoked_after_reload(secured: tuple[FakeBackend, RunningGateway], http: aiohttp.ClientSession) -> None:
    _, gw = secured
    headers = {"Authorization": f"Bearer {HUMAN_KEY}"}
    async with http.get(f"{gw.url}/v1/models", headers=headers) as resp:
        assert resp.status == 200  # now cached as verified
    section = auth_section()
    section["api_keys"] = [k for k in section["api_keys"] if k["name"] != "webui"]
    config = parse_config({"backends": [{"name": "d", "url": "http://127.0.0.1:9"}], "auth": section})
    reload_state(gw.state, config)
    async with http.get(f"{gw.url}/v1/models", headers=headers) as resp:
        assert resp.status == 401
    async with http.get(f"{gw.url}/v1/models", headers={"Authorization": f"Bearer {SHA_KEY}"}) as resp:
        assert resp.status == 200


async def test_flood_of_wrong_keys_is_throttled_while_good_clients_are_served(
    secured: tuple[FakeBackend, RunningGateway], http: aiohttp.ClientSession
) -> None:
    _, gw = secured
    statuses = []
    for i in range(40):
        async with http.get(f"{gw.url}/v1/models", headers={"Authorization": f"Bearer wrong-{i}"}) as resp:
            statuses.append(resp.status)
            if resp.status == 429:
                assert int(resp.headers["Retry-After"]) >= 1
    assert statuses.count(429) >= 25 and set(statuses) == {401, 429}
    async with http.get(f"{gw.url}/v1/models", headers={"Authorization": f"Bearer {SHA_KEY}"}) as resp:
        assert resp.status == 200  # a working key from the same address still gets in


async def test_credentials_never_logged_nor_forwarded(
    secured: tuple[FakeBackend, RunningGateway], http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    backend, gw = secured
    caplog.set_level(logging.DEBUG)
    secrets = [SHA_KEY, HUMAN_KEY, ALICE_PASSWORD, base64.b64encode(f"alice:{ALICE_PASSWORD}".encode()).decode()]
    attempts = [{"Authorization": f"Bearer {SHA_KEY}"}, {"x-api-key": HUMAN_KEY},
                {"Authorization": basic("alice", ALICE_PASSWORD)},
                {"Authorization": basic("alice", "nope")}]  # fmt: skip
    for headers in attempts:
        async with http.post(f"{gw.url}/api/generate", json={"model": "llama3.2"}, headers=headers) as resp:
            await resp.read()
    logged = caplog.text
    access = [r.getMessage() for r in caplog.records if r.name == "gateway.access"]
    assert len(access) == len(attempts) and all(" path=/api/generate " in line for line in access)
    for secret in secrets:
        assert secret not in logged
        for seen in backend.requests:
            assert secret not in repr(dict(seen.headers))


async def test_a_burst_with_a_valid_uncached_bcrypt_key_all_passes(
    secured: tuple[FakeBackend, RunningGateway], http: aiohttp.ClientSession
) -> None:
    import asyncio

    _, gw = secured

    async def one() -> int:
        async with http.get(f"{gw.url}/v1/models", headers={"Authorization": f"Bearer {HUMAN_KEY}"}) as resp:
            return resp.status

    assert await asyncio.gather(*(one() for _ in range(50))) == [200] * 50  # one shared bcrypt check
