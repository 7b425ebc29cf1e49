"""The status page in headless Chromium shows who is queued on each backend, client and count."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from gateway.dashboard import DASHBOARD_PATH

from .browser import browser_page
from .conftest import GatewayFactory
from .test_dashboard_browser import WAIT_MS, wait_until
from .test_fairqueue_http import ADMIN, BATCH, INTERACTIVE, ask, config, openai_client, timed, until

__all__ = ["timed"]  # the fixture, shared with the socket tests


async def test_the_queued_column_lists_waiting_clients(
    timed: Callable[..., Any], gateway_factory: GatewayFactory
) -> None:
    gate = asyncio.Event()
    backend = await timed(gate=gate)
    gw = await gateway_factory(config(backend))
    gpu = gw.state.backends[0]
    problems: list[str] = []
    async with openai_client(gw, BATCH) as batch, openai_client(gw, INTERACTIVE) as interactive:
        held = [asyncio.create_task(ask(batch, f"a{i}")) for i in range(6)]  # one served, five waiting
        await until(lambda: gpu.waiting == 5)
        held.append(asyncio.create_task(ask(interactive, "b")))
        await until(lambda: gpu.waiting == 6)
        try:
            async with browser_page() as page:
                page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
                page.on("pageerror", lambda exc: problems.append(str(exc)))
                await page.goto(gw.url + DASHBOARD_PATH)
                await page.wait_for_selector("#auth.shown", timeout=WAIT_MS)
                await page.fill("#auth-key", ADMIN)
                await page.click("#auth button[type=submit]")
                await wait_until(page, "() => !!document.querySelector('#backends tr[data-backend=\"gpu\"]')")
                queued = await page.eval_on_selector('#backends tr[data-backend="gpu"]', "r => r.cells[5].innerText")
        finally:
            gate.set()
            await asyncio.gather(*held, return_exceptions=True)
    assert queued.split("\n") == ["6 / 1", "batch 5 \u00b7 interactive 1"]
    assert [p for p in problems if "status of 401" not in p] == []  # the first, keyless poll is a 401
