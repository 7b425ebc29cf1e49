"""A real Chromium page for the tests that only a browser can judge (CORS, streamed fetch).

``browser_page()`` is an async context manager yielding a Playwright ``Page`` from a fresh,
headless Chromium, or skipping the test with the reason when Playwright or a Chromium binary is
missing or will not start. Set ``GATEWAY_REQUIRE_BROWSER=1`` (CI does) to turn that skip into a
failure, so a broken browser install cannot pass silently.

Why the async API: the tests already run inside pytest-asyncio's loop, and Playwright's sync API
refuses to start there. Why a system Chromium: ``playwright install`` downloads its own build,
which this environment (and CI) cannot; Debian's ``chromium`` package is used instead, found via
``$CHROMIUM_PATH`` or ``PATH``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, NoReturn

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Page

__all__ = ["CHROMIUM_ARGS", "browser_page", "find_chromium"]

CHROMIUM_ARGS: tuple[str, ...] = (
    "--headless",
    "--no-sandbox",  # we run as root in containers, where the setuid/namespace sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # no update checks, safe-browsing or metrics calls to the internet
    "--disable-component-update",
    "--disable-sync",
)
_CANDIDATES = ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome")
LAUNCH_TIMEOUT_MS = 30_000
ACTION_TIMEOUT_MS = 15_000


def find_chromium() -> str | None:
    """``$CHROMIUM_PATH``, else the first Chromium-like binary on ``PATH``."""
    explicit = os.environ.get("CHROMIUM_PATH")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("GATEWAY_REQUIRE_BROWSER", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"browser required (GATEWAY_REQUIRE_BROWSER is set) but {reason}", pytrace=False)
    pytest.skip(reason)


@asynccontextmanager
async def browser_page() -> AsyncIterator[Page]:
    """A blank page in a fresh headless Chromium; closed (with the browser) on exit."""
    try:
        from playwright.async_api import Error as PlaywrightError
        from playwright.async_api import async_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install playwright; no `playwright install` needed)")
    executable = find_chromium()
    if executable is None:
        _unavailable("no Chromium binary found (apt-get install chromium, or set CHROMIUM_PATH)")
    async with async_playwright() as playwright:
        try:
            browser = await playwright.chromium.launch(
                executable_path=executable,
                args=list(CHROMIUM_ARGS),
                headless=True,
                timeout=LAUNCH_TIMEOUT_MS,
            )
        except PlaywrightError as exc:
            first_line = (
                (exc.message or str(exc)).strip().splitlines()[0] if (exc.message or str(exc)).strip() else repr(exc)
            )
            _unavailable(f"Chromium at {executable} did not start: {first_line}")
        try:
            context = await browser.new_context()
            context.set_default_timeout(ACTION_TIMEOUT_MS)
            page = await context.new_page()
            yield page
        finally:
            await browser.close()
