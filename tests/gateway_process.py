"""The real `gateway` command in a subprocess, for drain and reload tests: config file, signals, log lines.

Tests synchronise on the gateway's own log lines (``Gateway.wait_log``), not on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_until_up(
    url: str,
    *,
    path: str = "/healthz",
    tries: int = 200,
    proc: asyncio.subprocess.Process | None = None,
    failure: Callable[[], str] = lambda: "gateway did not start",
) -> None:
    """Poll url+path every 0.1 s until it answers 200; fail with failure() after `tries` polls.

    proc: when given, fail at once with the tail of its stderr if it exits meanwhile (only pass a
    process whose stderr is a pipe nobody else reads).
    """
    async with aiohttp.ClientSession() as http:
        for _ in range(tries):
            try:
                async with http.get(f"{url}{path}") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            if proc is not None and proc.returncode is not None:
                assert proc.stderr is not None
                raise AssertionError(f"gateway exited: {(await proc.stderr.read()).decode()[-2000:]}")
            await asyncio.sleep(0.1)
    raise AssertionError(failure())


@dataclass
class Gateway:
    url: str
    port: int
    proc: asyncio.subprocess.Process
    config_path: Path
    lines: list[str] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.lines.append(line.decode(errors="replace"))
            self._changed.set()
        self._changed.set()

    async def wait_log(self, text: str, *, count: int = 1, timeout: float = 20.0) -> str:
        """The ``count``-th log line containing ``text`` (waits for it)."""
        async with asyncio.timeout(timeout):
            while True:
                found = [line for line in self.lines if text in line]
                if len(found) >= count:
                    return found[count - 1]
                if self.proc.stderr is not None and self.proc.stderr.at_eof() and self.proc.returncode is not None:
                    raise AssertionError(f"the gateway exited without logging {text!r}:\n{self.log}")
                self._changed.clear()
                await self._changed.wait()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def write_config(self, doc: dict[str, Any] | str) -> None:
        self.config_path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))

    async def reload(self, doc: dict[str, Any] | str) -> str:
        """Write the file, SIGHUP, and return the log line saying how it went."""
        done = sum("reloaded " in line or "reload failed" in line for line in self.lines)
        self.write_config(doc)
        self.proc.send_signal(signal.SIGHUP)
        async with asyncio.timeout(20):
            while True:
                outcomes = [line for line in self.lines if "reloaded " in line or "reload failed" in line]
                if len(outcomes) > done:
                    return outcomes[done]
                self._changed.clear()
                await self._changed.wait()

    async def exit_code(self, timeout: float = 30.0) -> int:
        return await asyncio.wait_for(self.proc.wait(), timeout)


@asynccontextmanager
async def gateway_process(tmp_path: Path, doc: dict[str, Any], *args: str) -> AsyncIterator[Gateway]:
    """`gateway serve -c FILE` with ``doc`` as the file; yields once /healthz answers; SIGTERM at the end."""
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(doc))
    port = free_port()
    env = {
        k: v for k, v in os.environ.items() if k not in ("GATEWAY_CONFIG", "OLLAMA_HOST", "PROMETHEUS_MULTIPROC_DIR")
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "-c", str(config), "--port", str(port), *args,
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    gw = Gateway(f"http://127.0.0.1:{port}", port, proc, config)
    reader = asyncio.create_task(gw._read())
    try:
        # up to ~20 s for the interpreter to start
        await wait_until_up(gw.url, failure=lambda: f"gateway did not start:\n{gw.log}")
        yield gw
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await asyncio.wait_for(reader, 10)
