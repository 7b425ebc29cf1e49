"""The dialect bridge against a real OpenAI-compatible server: llama.cpp (llama-cpp-python[server]).

Runs where that server and its tiny generated model are installed (../shared/real-backend/setup.sh
makes both; README "One URL for every client"), and is skipped elsewhere, CI included:

    GATEWAY_REAL_BACKEND_PYTHON=/tmp/rb-venv/bin/python \\
    GATEWAY_REAL_BACKEND_MODEL=/tmp/rb-models/tiny-test-llama.gguf pytest -q tests/test_real_backend.py

(those two paths are the defaults). The server is started on a free loopback port for the module
and stopped after it; the real ``ollama`` client talks to the gateway, which translates.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import ollama
import pytest

from .conftest import GatewayFactory

PYTHON = Path(os.environ.get("GATEWAY_REAL_BACKEND_PYTHON", "/tmp/rb-venv/bin/python"))
MODEL = Path(os.environ.get("GATEWAY_REAL_BACKEND_MODEL", "/tmp/rb-models/tiny-test-llama.gguf"))
ALIAS = "tiny-test-llama"
START_TIMEOUT = 120.0


def _installed() -> str | None:
    """Why the real backend cannot run here, or None when it can."""
    if not PYTHON.exists():
        return f"no llama-cpp-python server: {PYTHON} does not exist (set GATEWAY_REAL_BACKEND_PYTHON)"
    if not MODEL.exists():
        return f"no model: {MODEL} does not exist (set GATEWAY_REAL_BACKEND_MODEL)"
    probe = subprocess.run([str(PYTHON), "-c", "import llama_cpp.server"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        return f"{PYTHON} cannot import llama_cpp.server"
    return None


pytestmark = pytest.mark.skipif((reason := _installed()) is not None, reason=reason or "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def llama_server(tmp_path: Path) -> AsyncIterator[str]:
    port = _free_port()
    log = (tmp_path / "llama-server.log").open("wb")
    argv = [str(PYTHON), "-m", "llama_cpp.server", "--model", str(MODEL), "--model_alias", ALIAS,
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "2",
            "--embedding", "true", "--interrupt_requests", "false", "--verbose", "false"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        async with aiohttp.ClientSession() as session:
            while True:
                assert proc.poll() is None, (tmp_path / "llama-server.log").read_text()[-2000:]
                try:
                    async with session.get(url + "/v1/models") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, f"llama.cpp server not ready after {START_TIMEOUT:g}s"
                await asyncio.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


async def test_ollama_client_chats_with_llama_cpp(llama_server: str, gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(
        {"backends": [{"name": "llamacpp", "url": llama_server, "type": "openai",
                       "timeouts": {"first_byte": "60s"}, "health_check": {"interval": "60s", "timeout": "5s"}}]}
    )  # fmt: skip
    client = ollama.AsyncClient(host=gw.url)
    messages = [{"role": "user", "content": "Say hi"}]
    parts = [p async for p in await client.chat(model=ALIAS, messages=messages, stream=True)]
    text = "".join(p.message.content or "" for p in parts)
    assert text.strip(), parts
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    assert parts[-1].done_reason in ("stop", "length")
    assert parts[-1].total_duration and parts[-1].eval_duration is not None
    # Not streamed: llama.cpp reports usage, which becomes Ollama's counts.
    whole = await client.chat(model=ALIAS, messages=messages, stream=False, options={"num_predict": 5})
    assert whole.message.content and whole.done_reason == "length"
    assert whole.eval_count == 5 and whole.prompt_eval_count and whole.prompt_eval_count > 0
    shown = await client.show(ALIAS)
    assert shown.details is not None
    embedded = await client.embed(model=ALIAS, input="hi")
    assert len(embedded.embeddings) == 1 and len(embedded.embeddings[0]) > 0
