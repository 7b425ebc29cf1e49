"""The real command: `gateway serve` in a subprocess, as users run it (defaults, SIGHUP reload, SIGTERM)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import ollama
import yaml

from .conftest import BackendFactory
from .gateway_process import free_port, wait_until_up

KEY = "sk-gw-serve-test-0123456789abcdef0123456789"


@asynccontextmanager
async def running(*args: str, cwd: Path, env: dict[str, str]) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, "--port", str(port), cwd=cwd, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_until_up(url)  # up to ~20 s for the interpreter to start
        yield url, proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 15)


async def test_plain_gateway_fronts_ollama_host_with_defaults(tmp_path: Path, backend_factory: BackendFactory) -> None:
    backend = await backend_factory("local", models=["llama3.2:latest"])
    async with running(cwd=tmp_path, env={"OLLAMA_HOST": backend.url.removeprefix("http://")}) as (url, proc):
        reply = await ollama.AsyncClient(host=url).generate(model="llama3.2", prompt="hi", stream=False)
        assert reply.response == "Hello!"
    assert proc.returncode == 0
    assert proc.stderr is not None
    log = (await proc.stderr.read()).decode()
    assert "local-llm-gateway listening on http://127.0.0.1:" in log
    assert "method=POST path=/api/generate" in log and "Traceback" not in log  # the access log line


async def test_sighup_reloads_credentials(tmp_path: Path, backend_factory: BackendFactory) -> None:
    backend = await backend_factory("local", models=["llama3.2:latest"])
    config = tmp_path / "gateway.yaml"
    doc = {
        "backends": [{"name": "local", "url": backend.url}],
        "auth": {
            "api_keys": [
                {"name": "laptop", "hash": "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()},
                {"name": "spare", "hash": "sha256:" + "0" * 64},
                {"name": "spare", "hash": "sha256:" + "1" * 64},  # a weak setup: warned about at startup
            ]
        },  # fmt: skip
    }
    config.write_text(yaml.safe_dump(doc))
    headers = {"Authorization": f"Bearer {KEY}"}
    async with running("serve", "-c", str(config), cwd=tmp_path, env={}) as (url, proc):
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/api/tags", headers=headers) as resp:
                assert resp.status == 200
            config.write_text("auth: [broken")  # a bad file keeps the old credentials
            proc.send_signal(signal.SIGHUP)
            assert proc.stderr is not None
            seen = b""
            while b"reload failed" not in seen:  # wait until the reload was really tried
                seen += await asyncio.wait_for(proc.stderr.readline(), 10)
            async with http.get(f"{url}/api/tags", headers=headers) as resp:
                assert resp.status == 200
            doc["auth"]["api_keys"] = doc["auth"]["api_keys"][1:]  # revoke "laptop"
            config.write_text(yaml.safe_dump(doc))
            proc.send_signal(signal.SIGHUP)
            for _ in range(100):
                async with http.get(f"{url}/api/tags", headers=headers) as resp:
                    if resp.status == 401:
                        break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the revoked key still works after SIGHUP")
    assert proc.returncode == 0
    assert proc.stderr is not None
    log = (seen + await proc.stderr.read()).decode()
    assert "reload failed, keeping the previous configuration" in log
    assert "reloaded " in log and "auth: 2 api key(s), 0 basic user(s)" in log and KEY not in log
    assert "auth.api_keys[2].name: 'spare' is also the name of auth.api_keys[1]" in log  # startup warning
