"""The status page in headless Chromium, under a realistic synthetic load.

A gateway with auth, two live fake backends (an Ollama box and a vLLM box, with real latencies and
token-by-token streams, the vLLM one failing one request in fifteen) and a third configured box
that is down, three models plus an alias, and two client keys sending streamed and non-streamed
requests in both dialects, with a few bad keys and unknown models mixed in. The page must ask for
an admin key (the data is admin-only, the page is not), refuse a non-admin one, then show every
backend and a non-zero request rate, with no CSP violation.

``DASHBOARD_SCREENSHOT=docs/dashboard.png pytest tests/test_dashboard_browser.py`` runs the load
longer and saves a 1280x800 screenshot for the README (``DASHBOARD_SCREENSHOT_SCHEME=light`` for the
light theme; dark by default).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web

from gateway.dashboard import DASHBOARD_PATH

from .browser import browser_page
from .conftest import GatewayFactory, RunningGateway
from .fakes import FakeBackend
from .test_dashboard import ADMIN_KEY, USER_KEY, fresh_snapshots, sha256_entry

if TYPE_CHECKING:
    from playwright.async_api import Page

WEBUI_KEY = "sk-dash-webui"
BAD_KEY = "sk-dash-wrong"
SCREENSHOT = os.environ.get("DASHBOARD_SCREENSHOT", "")
SCHEME = os.environ.get("DASHBOARD_SCREENSHOT_SCHEME", "dark")
WAIT_MS = 30_000
ALICE_LIMITS = {"requests_per_minute": 60, "tokens_per_day": 200_000, "max_concurrent": 8}


@dataclass(eq=False)
class SlowBackend(FakeBackend):
    """A fake backend with a model's pace: a delay before the first byte, then one token at a time."""

    first_byte: tuple[float, float] = (0.0, 0.0)  # uniform range, seconds
    per_token: float = 0.0
    fail_every: int = 0  # every n-th generation request answers 500
    seed: int = 0
    served: int = 0

    async def _special(self) -> web.Response | None:
        self.served += 1
        rng = random.Random(self.seed * 1_000_003 + self.served)
        await asyncio.sleep(rng.uniform(*self.first_byte))
        if self.fail_every and self.served % self.fail_every == 0:
            return web.json_response({"error": "CUDA out of memory"}, status=500, headers=self._headers())
        return await super()._special()

    async def _stream(self, request: web.Request, content_type: str, pieces: list[bytes]) -> web.StreamResponse:
        response = web.StreamResponse(headers={**self._headers(), "Content-Type": content_type})
        await response.prepare(request)
        for piece in pieces:
            await response.write(piece)
            await asyncio.sleep(self.per_token)
        await response.write_eof()
        return response


async def wait_until(page: Page, predicate: str, arg: Any = None, seconds: float = WAIT_MS / 1000) -> None:
    """Poll a JS function of the page until it returns true (bounded).

    Not ``page.wait_for_function``: it evaluates string predicates with ``eval`` inside the page,
    which the dashboard's CSP forbids (no 'unsafe-eval'); ``page.evaluate`` goes through the
    DevTools protocol, which CSP does not govern.
    """
    async with asyncio.timeout(seconds):
        while not await page.evaluate(predicate, arg):
            await asyncio.sleep(0.1)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
async def lab(gateway_factory: GatewayFactory, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RunningGateway]:
    """The home lab: desktop (Ollama), gpu-box (vLLM), laptop (Ollama, switched off)."""
    fresh_snapshots(monkeypatch)
    words = [f"tok{i} " for i in range(24)]
    desktop = SlowBackend("desktop", models=["llama3.2:latest", "qwen2.5:7b"], chunks=words,
                          first_byte=(0.08, 0.45), per_token=0.012, seed=1)  # fmt: skip
    gpu = SlowBackend("gpu-box", kind="openai", models=["meta-llama/Llama-3.1-8B-Instruct", "qwen2.5:7b"],
                      chunks=words, first_byte=(0.02, 0.12), per_token=0.004, fail_every=15, seed=2)  # fmt: skip
    started = [await desktop.start(), await gpu.start()]
    fast_checks = {"interval": "60s", "timeout": "1s", "fall": 1}
    try:
        yield await gateway_factory(
            {
                "backends": [
                    {"name": "desktop", "url": desktop.url, "type": "ollama", "health_check": fast_checks},
                    {"name": "gpu-box", "url": gpu.url, "type": "vllm", "health_check": fast_checks},
                    {"name": "laptop", "url": f"http://127.0.0.1:{closed_port()}", "type": "ollama",
                     "models": ["llama3.2:latest"], "health_check": fast_checks},
                ],
                "aliases": {"gpt-4o-mini": "qwen2.5:7b"},
                "auth": {"api_keys": [sha256_entry("ops", ADMIN_KEY, admin=True),
                                      {**sha256_entry("alice", USER_KEY), "limits": ALICE_LIMITS},
                                      sha256_entry("open-webui", WEBUI_KEY)]},
                "metrics": {"inject_usage": True},
            }
        )  # fmt: skip
    finally:
        for backend in started:
            await backend.stop()


# (weight, key, path, model, streamed): what two clients of a home lab send
MIX: list[tuple[int, str, str, str, bool]] = [
    (6, WEBUI_KEY, "/api/chat", "llama3.2", True),
    (4, WEBUI_KEY, "/v1/chat/completions", "qwen2.5:7b", True),
    (5, USER_KEY, "/v1/chat/completions", "meta-llama/Llama-3.1-8B-Instruct", True),
    (3, USER_KEY, "/v1/chat/completions", "gpt-4o-mini", False),
    (2, USER_KEY, "/api/generate", "qwen2.5:7b", False),
    (1, USER_KEY, "/v1/chat/completions", "mistral-nemo", False),  # not served anywhere: 404
    (1, BAD_KEY, "/v1/chat/completions", "qwen2.5:7b", False),  # 401
]


async def run_load(url: str, total: int, seconds: float, seed: int = 7) -> list[int]:
    """``total`` requests spread over ``seconds``, each on its own task; returns the statuses."""
    rng = random.Random(seed)
    weights = [m[0] for m in MIX]
    statuses: list[int] = []

    async def one(key: str, path: str, model: str, stream: bool) -> None:
        if path == "/api/generate":
            body: dict[str, Any] = {"model": model, "prompt": "Why is the sky blue?", "stream": stream}
        else:
            body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": "Hi"}]}
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        async with session.post(url + path, data=json.dumps(body), headers=headers) as response:
            await response.read()
            statuses.append(response.status)

    async with aiohttp.ClientSession() as session, asyncio.timeout(seconds + 30), asyncio.TaskGroup() as tasks:
        for i in range(total):
            _, key, path, model, stream = rng.choices(MIX, weights)[0]
            tasks.create_task(one(key, path, model, stream))
            # a little bursty, like people and agents are
            await asyncio.sleep(rng.expovariate(total / seconds) if i < total - 1 else 0)
    return statuses


async def test_dashboard_under_load(lab: RunningGateway) -> None:
    total, seconds = (1500, 40.0) if SCREENSHOT else (200, 5.0)
    problems: list[str] = []
    async with browser_page() as page:
        page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        await page.set_viewport_size({"width": 1280, "height": 800})
        await page.emulate_media(color_scheme="light" if SCHEME == "light" else "dark")
        await page.goto(lab.url + DASHBOARD_PATH)

        # Auth is on: the page loads, the data does not; a non-admin key is refused.
        await page.wait_for_selector("#auth.shown", timeout=WAIT_MS)
        await page.fill("#auth-key", USER_KEY)
        await page.click("#auth button[type=submit]")
        await wait_until(page, "() => document.querySelector('#auth-message').textContent.includes('not admin')")
        await page.fill("#auth-key", ADMIN_KEY)
        await page.click("#auth button[type=submit]")
        await page.wait_for_selector("#auth:not(.shown)", state="attached", timeout=WAIT_MS)

        load = asyncio.create_task(run_load(lab.url, total, seconds))
        try:
            await wait_until(
                page,
                """names => names.every(n => document.querySelector(`#backends tr[data-backend="${n}"]`))
                   && parseFloat(document.querySelector('#total-rps').textContent) > 0""",
                ["desktop", "gpu-box", "laptop"],
            )
            cells = await page.eval_on_selector_all(
                "#backends tbody tr", "rows => rows.map(r => [r.dataset.backend, r.cells[0].textContent])"
            )
            assert dict(cells) == {"desktop": "up", "gpu-box": "up", "laptop": "down"}
            rps = float(await page.text_content("#total-rps") or "0")
            assert rps > 0
            assert await page.get_attribute("#forget", "class") != "hidden"  # a key is stored for this tab
            if SCREENSHOT:
                await asyncio.sleep(seconds * 0.75)  # fill the sparklines with the load's shape
                os.makedirs(os.path.dirname(SCREENSHOT) or ".", exist_ok=True)
                await page.screenshot(path=SCREENSHOT)
            statuses = await load
        finally:
            load.cancel()
        await page.wait_for_selector('#clients tr[data-client="alice"]', state="attached", timeout=WAIT_MS)
        await wait_until(
            page,
            """() => {
            const row = document.querySelector('#limits tr[data-client="alice"]');
            return row && row.cells[1].textContent !== "0" && row.cells[3].textContent.endsWith(" / 60");
        }""",
        )
        limits_row = await page.eval_on_selector(
            '#limits tr[data-client="alice"]', "row => Array.from(row.cells).map(c => c.textContent)"
        )
        assert limits_row[4] == "unlimited" and limits_row[5].endswith(" / 200,000")
        webui = await page.eval_on_selector('#limits tr[data-client="open-webui"]', "row => row.cells[3].textContent")
        assert webui == "unlimited"
    assert {200, 401, 404, 500} <= set(statuses)  # the load had each kind of answer the page counts
    assert not [p for p in problems if "401" not in p and "403" not in p], problems  # no CSP violation, no JS error


async def test_dashboard_without_auth_needs_no_key(
    gateway_factory: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh_snapshots(monkeypatch)
    backend = await FakeBackend("desktop").start()
    try:
        gw = await gateway_factory({"backends": [{"name": "desktop", "url": backend.url}]})
        async with browser_page() as page:
            await page.goto(gw.url + DASHBOARD_PATH)
            await page.wait_for_selector('#backends tr[data-backend="desktop"]', timeout=WAIT_MS)
            await page.wait_for_selector("#routes tbody tr", timeout=WAIT_MS)
            assert "llama3.2:latest" in (await page.text_content("#routes") or "")
            assert not await page.is_visible("#auth")
            assert await page.is_visible("#limits-empty")  # no client has a limit
    finally:
        await backend.stop()
