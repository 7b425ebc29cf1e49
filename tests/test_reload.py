"""SIGHUP hot reload through the real `gateway` process, and what a reload keeps, in process."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml

from gateway.config import GatewayConfig
from gateway.configfile import parse_config
from gateway.reload import reload_state
from gateway.state import STATE

from .conftest import BackendFactory, GatewayFactory, backend_entry
from .gateway_process import gateway_process

OLD_KEY = "sk-gw-reload-old-0123456789abcdef0123456789"
NEW_KEY = "sk-gw-reload-new-0123456789abcdef0123456789"
ORIGIN = "https://app.example.com"


def key_entry(name: str, key: str) -> dict[str, Any]:
    return {"name": name, "hash": "sha256:" + hashlib.sha256(key.encode()).hexdigest()}


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


async def test_sighup_adds_a_backend_and_changes_aliases_cors_and_keys(
    tmp_path: Path, backend_factory: BackendFactory
) -> None:
    first = await backend_factory("first", kind="openai", models=["m1"])
    second = await backend_factory("second", kind="openai", models=["m2"])
    doc: dict[str, Any] = {
        "backends": [backend_entry(first)],
        "aliases": {"fast": "m1"},
        "auth": {"api_keys": [key_entry("old", OLD_KEY)]},
    }
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    async with gateway_process(tmp_path, doc) as gw, aiohttp.ClientSession() as http:
        old = {"Authorization": f"Bearer {OLD_KEY}"}
        new = {"Authorization": f"Bearer {NEW_KEY}"}
        async with http.post(f"{gw.url}/v1/chat/completions", json=chat("m2"), headers=old) as resp:
            assert resp.status == 404
        async with http.post(f"{gw.url}/v1/chat/completions", json=chat("fast"), headers=old) as resp:
            assert resp.status == 200 and resp.headers["X-Fake-Backend"] == "first"
        async with http.options(f"{gw.url}/v1/chat/completions", headers=preflight) as resp:
            assert resp.status == 403  # no CORS yet

        doc["backends"].append(backend_entry(second))
        doc["aliases"] = {"fast": "m2"}
        doc["cors"] = {"allow_origins": [ORIGIN]}
        doc["auth"] = {"api_keys": [key_entry("new", NEW_KEY)]}
        line = await gw.reload(doc)
        assert "backends added: second; unchanged: first; 1 alias(es); auth: 1 api key(s)" in line

        async with http.post(f"{gw.url}/v1/chat/completions", json=chat("m2"), headers=new) as resp:
            assert resp.status == 200 and resp.headers["X-Fake-Backend"] == "second"  # the new box's model routes
        reply = await openai.AsyncOpenAI(
            base_url=f"{gw.url}/v1", api_key=NEW_KEY, max_retries=0
        ).chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content == "Hello!" and second.requests[-1].json["model"] == "m2"
        async with http.options(f"{gw.url}/v1/chat/completions", headers=preflight) as resp:
            assert resp.status == 204 and resp.headers["Access-Control-Allow-Origin"] == ORIGIN
        async with http.get(f"{gw.url}/v1/models", headers={**new, "Origin": ORIGIN}) as resp:
            assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == ORIGIN
        async with http.get(f"{gw.url}/v1/models", headers=old) as resp:
            assert resp.status == 401  # the old key is gone at once
        async with http.get(f"{gw.url}/metrics") as resp:
            assert 'gateway_backend_up{backend="second"} 1.0' in await resp.text()
    assert OLD_KEY not in gw.log and NEW_KEY not in gw.log


async def test_sighup_removing_the_backend_of_a_stream_in_flight(
    tmp_path: Path, backend_factory: BackendFactory
) -> None:
    gate: asyncio.Queue[None] = asyncio.Queue()
    first = await backend_factory("first", kind="openai", models=["m1", "m2"])
    second = await backend_factory("second", kind="openai", models=["m2"], gate=gate)
    doc: dict[str, Any] = {"backends": [backend_entry(first, models=["m1"]), backend_entry(second)]}
    async with gateway_process(tmp_path, doc) as gw, aiohttp.ClientSession() as http:
        api = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
        stream = await api.chat.completions.create(
            model="m2", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = [(await stream.__anext__()).choices[0].delta.content or ""]
        assert second.requests and not first.requests

        line = await gw.reload({"backends": [backend_entry(first)]})  # second goes; first now serves every model
        assert "backends removed: second; changed: first" in line
        async with http.post(f"{gw.url}/v1/chat/completions", json=chat("m2")) as resp:
            assert resp.status == 200 and resp.headers["X-Fake-Backend"] == "first"  # new requests: not there
        async with http.get(f"{gw.url}/metrics") as resp:
            assert 'gateway_in_flight_requests{backend="second"}' in await resp.text()  # still busy

        for _ in range(len(second.chunks) + 3):
            gate.put_nowait(None)
        async for chunk in stream:  # the stream finishes on the removed backend, cleanly
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
        assert "".join(text) == "Hello!"
        assert len(second.requests) == 1
        for _ in range(100):  # its series go once its last request is counted (checked every 0.5 s)
            async with http.get(f"{gw.url}/metrics") as resp:
                exported = await resp.text()
            if 'backend="second"' not in exported:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("metrics of the removed backend are still exported")
        assert 'gateway_backend_up{backend="first"} 1.0' in exported


async def test_a_broken_file_changes_nothing_and_names_the_key(tmp_path: Path, backend_factory: BackendFactory) -> None:
    first = await backend_factory("first", kind="openai", models=["m1"])
    doc: dict[str, Any] = {"backends": [backend_entry(first)], "aliases": {"fast": "m1"}}
    async with gateway_process(tmp_path, doc) as gw, aiohttp.ClientSession() as http:
        broken = {"backends": [{**backend_entry(first), "url": "ftp://nowhere"}], "aliases": {}}
        line = await gw.reload(broken)
        assert "reload failed, keeping the previous configuration: backends[0].url:" in line
        line = await gw.reload("backends: [unclosed")
        assert "reload failed, keeping the previous configuration:" in line
        async with http.post(f"{gw.url}/v1/chat/completions", json=chat("fast")) as resp:
            assert resp.status == 200 and resp.headers["X-Fake-Backend"] == "first"  # old config still serves

        dead = {"name": "dead", "url": "http://127.0.0.1:9", "type": "openai"}  # nothing listens there
        moved = {
            "backends": [*doc["backends"], dead],
            "server": {"port": gw.port + 1, "timeouts": {"headers": "5s"}},
            "logging": {"level": "debug", "format": "json"},
        }
        line = await gw.reload(moved)
        assert "reloaded " in line and "backends added: dead; unchanged: first" in line
        assert f"server.host/server.port changed to 127.0.0.1:{gw.port + 1}: needs a restart" in gw.log
        assert "server.timeouts changed: needs a restart to take effect" in gw.log
        await gw.wait_log("DEBUG gateway.discovery: health probe on backend dead failed")  # the new level applies
        async with http.get(f"{gw.url}/healthz") as resp:
            assert resp.status == 200  # still on the old port
        async with http.post(f"{gw.url}/v1/chat/completions", json=chat("fast")) as resp:
            assert resp.status == 404  # the new file has no aliases: that part did apply
        line = await gw.wait_log('"path": "/v1/chat/completions"')  # the access log is JSON now
        assert json.loads(line)["status"] == 404 and json.loads(line)["model"] is None


async def test_reload_keeps_unchanged_backends_and_applies_entry_settings(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    box = await backend_factory("box", kind="openai", models=["m1"])
    other = await backend_factory("other", kind="openai", models=["m2"])
    gw = await gateway_factory({"backends": [backend_entry(box), backend_entry(other)]})
    async with http.post(f"{gw.url}/v1/chat/completions", json=chat("m1")) as resp:
        assert resp.status == 200
    kept, edited = gw.state.backends
    pool = kept.pool
    assert pool is not None and edited.models
    new = parse_config(
        {
            "backends": [backend_entry(box), backend_entry(other, weight=2)],
            "server": {"allowed_hosts": ["gateway.lan"]},
        }
    )
    report = reload_state(gw.state, new)
    assert report.kept == ("box",) and report.changed == ("other",)
    assert gw.state.backends[0] is kept and kept.pool is pool  # runtime state and pool carry on
    assert gw.state.backends[1] is not edited and gw.state.backends[1].models.keys() == edited.models.keys()
    assert (edited.config.weight, gw.state.backends[1].config.weight) == (1.0, 2)  # the edited entry's new setting
    async with http.post(f"{gw.url}/v1/chat/completions", json=chat("m2")) as resp:
        assert resp.status == 403  # the entry middleware follows: Host 127.0.0.1 is no longer allowed
    async with http.post(f"{gw.url}/v1/chat/completions", json=chat("m2"), headers={"Host": "gateway.lan"}) as resp:
        assert resp.status == 200 and resp.headers["X-Fake-Backend"] == "other"
    for _ in range(100):
        if edited.pool is not None and edited.pool._closed:  # noqa: SLF001
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the replaced backend's pool was not closed once idle")


async def test_workers_2_sighup_to_the_parent_reloads_every_worker(
    tmp_path: Path, backend_factory: BackendFactory
) -> None:
    box = await backend_factory("box", kind="openai", models=["m1"])
    doc: dict[str, Any] = {"backends": [backend_entry(box)]}
    async with gateway_process(tmp_path, doc, "--workers", "2") as gw:
        await gw.wait_log("listening on", count=2)
        await gw.reload({**doc, "aliases": {"fast": "m1"}})
        await gw.wait_log("reloaded ", count=2)  # one line per worker
        pids = {line.split("pid ")[1].split(")")[0] for line in gw.lines if "listening on" in line}
        assert len(pids) == 2
        for _ in range(8):  # new connections land on either worker: each one knows the alias
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{gw.url}/v1/chat/completions", json=chat("fast")) as resp:
                    assert resp.status == 200 and resp.headers["X-Fake-Backend"] == "box"


def test_turning_auth_off_by_reload_is_refused_on_a_non_loopback_address(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from gateway.app import create_app
    from gateway.server import _reload
    from gateway.state import STATE

    backends = [{"name": "a", "url": "http://127.0.0.1:9"}]
    secured = {"backends": backends, "server": {"host": "0.0.0.0"}, "auth": {"api_keys": [key_entry("k", OLD_KEY)]}}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(secured))
    app = create_app(parse_config(secured))  # never listens: only the reload's checks are exercised
    path.write_text(yaml.safe_dump({"backends": backends, "server": {"host": "0.0.0.0"}}))
    with caplog.at_level(logging.INFO, logger="gateway"):
        _reload(app, path, "0.0.0.0", 8080, ("0.0.0.0", 8080))
    assert app[STATE].authenticator is not None and app[STATE].config.auth is not None
    assert "reload failed, keeping the previous configuration: refusing to listen on 0.0.0.0" in caplog.text
    path.write_text(yaml.safe_dump({**secured, "aliases": {"fast": "m1"}}))
    with caplog.at_level(logging.INFO, logger="gateway"):
        _reload(app, path, "0.0.0.0", 8080, ("0.0.0.0", 8080))
    assert app[STATE].router.aliases["fast"] == "m1"  # a safe file applies


async def test_reload_keeps_limit_counters_and_turns_limits_on_and_off(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    """limits follow SIGHUP's reload: counts carry over a changed limit; limits come on and go off live."""
    backend = await backend_factory("b")
    state_path = str(tmp_path / "state.sqlite3")

    def config(rpm: int | None) -> GatewayConfig:
        limits: dict[str, Any] = {"state_path": state_path}
        if rpm is not None:
            limits["default"] = {"requests_per_minute": rpm}
        return parse_config({"backends": [backend_entry(backend)], "limits": limits}, "<test>")

    gw = await gateway_factory(config(None))
    state = gw.app[STATE]
    chat = {"model": "llama3.2", "stream": False, "messages": [{"role": "user", "content": "hi"}]}

    async def status() -> int:
        async with aiohttp.ClientSession() as http, http.post(f"{gw.url}/api/chat", json=chat) as resp:
            return resp.status

    assert state.limiter is None and await status() == 200
    reload_state(state, config(1))  # on: in use once its store has started
    while state.limiter is None:
        await asyncio.sleep(0.01)
    assert [await status(), await status()] == [200, 429]
    limiter = state.limiter
    reload_state(state, config(2))  # the same limiter, the same minute's count, now against 2
    assert state.limiter is limiter
    assert [await status(), await status()] == [200, 429]
    reload_state(state, config(None))  # off at once
    assert state.limiter is None and await status() == 200
