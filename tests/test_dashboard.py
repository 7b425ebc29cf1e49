"""The status page through a real gateway: ``/dashboard/data`` after real requests, auth rules, the HTML."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

import aiohttp
import bcrypt
import pytest
from aiohttp import web

import gateway.dashboard as dashboard
from gateway.app import create_app, public_paths
from gateway.configfile import parse_config
from gateway.dashboard import DASHBOARD_PATH, DATA_PATH, content_security_policy

from .conftest import BackendFactory, GatewayFactory, RunningGateway, backend_entry

ADMIN_KEY = "sk-dash-admin"
USER_KEY = "sk-dash-user"


def sha256_entry(name: str, key: str, admin: bool = False) -> dict[str, Any]:
    return {"name": name, "hash": "sha256:" + hashlib.sha256(key.encode()).hexdigest(), "admin": admin}


def has_dashboard(app: web.Application) -> bool:
    return any(r.resource is not None and r.resource.canonical == DATA_PATH for r in app.router.routes())


def fresh_snapshots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every poll sees the latest counters (the page's 1 s snapshot cache off)."""
    monkeypatch.setattr(dashboard, "SNAPSHOT_MAX_AGE", 0.0)


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    fresh_snapshots(monkeypatch)


async def get_data(http: aiohttp.ClientSession, gw: RunningGateway, **headers: str) -> dict[str, Any]:
    async with http.get(gw.url + DATA_PATH, headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Cache-Control"] == "no-store"
        data: dict[str, Any] = await response.json()
        return data


async def chat(
    http: aiohttp.ClientSession, gw: RunningGateway, path: str, model: str, stream: bool, **headers: str
) -> int:
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(gw.url + path, json=body, headers=headers) as response:
        await response.read()
        return response.status


# --------------------------------------------------------------------------- the data endpoint


async def test_data_shape_and_counts_rise(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    desktop = await backend_factory("desktop", models=["llama3.2:latest", "qwen2.5:7b"])
    vllm = await backend_factory("gpu-box", kind="openai", models=["meta-llama/Llama-3.1-8B-Instruct"])
    gw = await gateway_factory(
        {
            "backends": [
                backend_entry(desktop),
                backend_entry(vllm, url=vllm.url.replace("127.0.0.1", "u:pw@127.0.0.1")),
            ],
            "aliases": {"fast": "qwen2.5:7b"},
        }
    )
    data = await get_data(http, gw)
    assert data["auth"] is False
    by_name = {b["name"]: b for b in data["backends"]}
    assert list(by_name) == ["desktop", "gpu-box"]
    assert by_name["desktop"]["type"] == "ollama" and by_name["gpu-box"]["type"] == "openai"
    assert by_name["desktop"]["url"] == desktop.url and by_name["desktop"]["up"] is True
    assert "pw" not in by_name["gpu-box"]["url"] and by_name["gpu-box"]["url"].startswith("http://127.0.0.1:")
    assert by_name["desktop"]["in_flight"] == 0 and by_name["desktop"]["models"] == ["llama3.2:latest", "qwen2.5:7b"]
    routes = {m["name"]: m["backends"] for m in data["models"]}
    assert routes == {
        "llama3.2:latest": ["desktop"], "qwen2.5:7b": ["desktop"], "meta-llama/Llama-3.1-8B-Instruct": ["gpu-box"],
    }  # fmt: skip
    assert data["aliases"] == [{"alias": "fast", "target": "qwen2.5:7b", "backends": ["desktop"]}]

    statuses = [
        await chat(http, gw, "/api/chat", "qwen2.5:7b", stream=True),
        await chat(http, gw, "/v1/chat/completions", "fast", stream=False),
        await chat(http, gw, "/v1/chat/completions", "meta-llama/Llama-3.1-8B-Instruct", stream=True),
    ]
    assert statuses == [200, 200, 200]
    metrics = (await get_data(http, gw))["metrics"]
    assert set(metrics) >= {"time", "totals", "backends", "models", "clients", "upstream_errors", "auth_failures"}
    qwen = metrics["models"]["qwen2.5:7b"]  # the alias counts under its target
    assert qwen["requests"] == 2 and qwen["errors"] == 0
    assert qwen["completion_tokens"] == 6 and qwen["prompt_tokens"] == 14  # fake: 3 chunks, 7 prompt tokens each
    assert qwen["ttfb_p50"] is not None and qwen["ttfb_p95"] >= qwen["ttfb_p50"]
    assert metrics["backends"]["desktop"]["requests"] == 2 and metrics["backends"]["gpu-box"]["requests"] == 1
    assert metrics["clients"]["anonymous"]["requests"] >= 3
    first_total = metrics["totals"]["requests"]

    await chat(http, gw, "/api/chat", "qwen2.5:7b", stream=False)
    metrics = (await get_data(http, gw))["metrics"]
    assert metrics["models"]["qwen2.5:7b"]["requests"] == 3
    assert metrics["totals"]["requests"] > first_total  # the counters only ever grow between polls


async def test_data_counts_server_and_upstream_errors(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    broken = await backend_factory("broken", kind="openai", models=["m"], status=500)
    gw = await gateway_factory({"backends": [backend_entry(broken)]})
    assert await chat(http, gw, "/v1/chat/completions", "m", stream=False) == 500
    metrics = (await get_data(http, gw))["metrics"]
    assert metrics["models"]["m"]["errors"] == 1 and metrics["backends"]["broken"]["errors"] == 1
    assert metrics["totals"]["errors"] == 1


async def test_data_without_metrics(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    backend = await backend_factory("desktop")
    gw = await gateway_factory({"backends": [backend_entry(backend)], "metrics": {"enabled": False}})
    await chat(http, gw, "/api/chat", "llama3.2", stream=False)
    data = await get_data(http, gw)
    assert data["metrics"] == {}
    assert [b["name"] for b in data["backends"]] == ["desktop"]
    assert data["models"] == [{"name": "llama3.2:latest", "backends": ["desktop"]}]


# --------------------------------------------------------------------------- auth


@pytest.fixture
async def authed(backend_factory: BackendFactory, gateway_factory: GatewayFactory) -> RunningGateway:
    backend = await backend_factory("desktop")
    password_hash = bcrypt.hashpw(b"root-pw", bcrypt.gensalt(rounds=4)).decode()
    return await gateway_factory(
        {
            "backends": [backend_entry(backend)],
            "auth": {
                "api_keys": [sha256_entry("ops", ADMIN_KEY, admin=True), sha256_entry("alice", USER_KEY)],
                "basic_users": [{"name": "root", "password_hash": password_hash, "admin": True}],
            },
        }
    )


async def test_data_is_admin_only(authed: RunningGateway, http: aiohttp.ClientSession) -> None:
    async with http.get(authed.url + DATA_PATH) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic ")
        assert "backends" not in await response.text()
    async with http.get(authed.url + DATA_PATH, headers={"Authorization": f"Bearer {USER_KEY}"}) as response:
        assert response.status == 403
        assert "admin" in (await response.json())["error"]["message"]
    data = await get_data(http, authed, Authorization=f"Bearer {ADMIN_KEY}")
    assert data["auth"] is True and data["backends"][0]["name"] == "desktop"
    basic = base64.b64encode(b"root:root-pw").decode()
    data = await get_data(http, authed, Authorization=f"Basic {basic}")
    assert data["backends"][0]["name"] == "desktop"
    assert "ops" not in data["metrics"].get("clients", {})  # the dashboard's own polling is not traffic


async def test_data_fails_closed_when_made_public(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory, http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import gateway.app

    monkeypatch.setattr(gateway.app, "public_paths", lambda config: public_paths(config) | {DATA_PATH})
    backend = await backend_factory("desktop")
    gw = await gateway_factory(
        {"backends": [backend_entry(backend)], "auth": {"api_keys": [sha256_entry("ops", ADMIN_KEY, True)]}}
    )
    async with http.get(gw.url + DATA_PATH) as response:
        assert response.status == 403  # not the anonymous admin of an auth-less gateway


# --------------------------------------------------------------------------- the page


async def test_page_is_public_static_and_locked_down(authed: RunningGateway, http: aiohttp.ClientSession) -> None:
    async with http.get(authed.url + DASHBOARD_PATH) as response:
        assert response.status == 200  # no credentials: the page holds no data
        body = await response.read()
        headers = response.headers
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-store"
    assert headers["X-Content-Type-Options"] == "nosniff"
    csp = headers["Content-Security-Policy"]
    assert csp == content_security_policy(body)
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'self'" and directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    for tag in ("script", "style"):  # exactly the page's own inline blocks, by hash; nothing else
        (inline,) = re.findall(rb"<%s>(.*?)</%s>" % (tag.encode(), tag.encode()), body, re.DOTALL)
        digest = base64.b64encode(hashlib.sha256(inline).digest()).decode()
        assert directives[f"{tag}-src"] == f"'sha256-{digest}'"
    assert b"://" not in re.sub(rb"http://www\.w3\.org/2000/svg", b"", body)  # no external resources
    assert b"<script src" not in body and b'<link rel="stylesheet"' not in body


def test_create_app_wires_the_dashboard() -> None:
    """The page is served and public; its data is served and never public."""
    config = parse_config({"backends": [{"name": "a", "url": "http://127.0.0.1:9"}]}, "<test>")
    assert has_dashboard(create_app(config))
    assert DASHBOARD_PATH in public_paths(config)
    assert DATA_PATH not in public_paths(config)
