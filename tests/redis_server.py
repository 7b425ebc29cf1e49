"""A real ``redis-server`` on a free 127.0.0.1 port, for the shared-limits tests.

``RedisServer`` starts Debian's ``redis-server`` with no persistence (``--save '' --appendonly
no``), can stop it (SIGTERM, waited for) and start it again on the same port, which is how the
tests take Redis away mid-run and bring it back. ``redis_server_or_skip()`` skips the test with the
reason when the binary is missing, or fails it when ``GATEWAY_REQUIRE_REDIS=1`` (CI sets it where
the package is installed), so a broken install cannot pass silently.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from typing import NoReturn

import pytest

__all__ = ["RedisServer", "find_redis_server", "redis_server_or_skip"]

START_TIMEOUT = 10.0


def find_redis_server() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("GATEWAY_REQUIRE_REDIS", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"redis-server required (GATEWAY_REQUIRE_REDIS is set) but {reason}", pytrace=False)
    pytest.skip(f"redis-server not available: {reason} (Debian: apt-get install redis-server)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process on 127.0.0.1; ``stop``/``start`` keep the port."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = _free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--protected-mode", "yes", "--loglevel", "warning",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        while True:  # ready when it answers PING
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.write(b"PING\r\n")
                await writer.drain()
                line = await asyncio.wait_for(reader.readline(), 2)
                writer.close()
                if line.startswith(b"+PONG"):
                    return
            except OSError:
                pass
            if self.proc.returncode is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError("redis-server did not answer PING")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 10)


async def redis_server_or_skip() -> RedisServer:
    binary = find_redis_server()
    if binary is None:
        _unavailable("no redis-server binary on PATH")
    server = RedisServer(binary)
    try:
        await server.start()
    except (OSError, RuntimeError) as exc:
        await server.stop()
        _unavailable(f"it would not start: {exc}")
    return server
