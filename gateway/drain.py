"""Graceful drain on SIGTERM/SIGINT: stop taking work, let what is running finish, then end the rest.

Order (``shut_down``): ``/readyz`` answers 503 and every response not yet started carries
``Connection: close`` (``Drain.active``); after ``server.shutdown_delay`` the listener closes and
idle keep-alive connections with it (aiohttp's ``AppRunner.cleanup``: ``site.stop``,
``pre_shutdown``); in-flight requests and streams get ``server.shutdown_timeout`` to finish. Then
``Drain.expire`` ends what is left abnormally: a stream gets an in-band error where its dialect
has one and never its final chunk (``streaming.relay`` does that when its task is cancelled with
``expired`` set); a proxied request with no answer started yet (queued, or waiting for its
backend's head) is answered 503 in its dialect by the entry middleware; any other connection still
busy is closed.

aiohttp alone would wait the timeout twice (once for the handler, once more after cancelling
the request payload) and end a stream with a bare cancellation, hence the own deadline here.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from dataclasses import dataclass, field

from aiohttp import web

__all__ = ["STREAM_END_GRACE", "Drain", "shut_down"]

log = logging.getLogger("gateway")
STREAM_END_GRACE = 1.0  # seconds a cancelled stream gets to write its in-band error before connections close


@dataclass(eq=False, slots=True)
class Drain:
    """The drain state of one app: read per response (one attribute), written only at shutdown."""

    active: bool = False  # SIGTERM seen: readiness fails, new responses close their connection
    expired: bool = False  # the shutdown timeout passed: streams still running end abnormally
    in_flight: set[asyncio.Task[None]] = field(default_factory=set)  # proxied requests (their handler tasks; proxy.py)

    def expire(self) -> list[asyncio.Task[None]]:
        """Cancel every proxied request still running (a stream writes its in-band error, a request with no
        answer yet is answered 503 by the entry middleware); returns their tasks."""
        self.expired = True
        tasks = [task for task in self.in_flight if not task.done()]
        for task in tasks:
            task.cancel()
        return tasks


async def _end_leftovers(server: web.Server, drain: Drain, timeout: float) -> None:
    await asyncio.sleep(timeout)
    left = len(server.connections)
    if left:
        log.warning("shutdown timeout (%gs) passed: ending %d connection(s) still busy", timeout, left)
    ended = drain.expire()
    if ended:
        await asyncio.wait(ended, timeout=STREAM_END_GRACE)
    for connection in server.connections:  # requests without a streamed body yet: their connection goes
        connection.force_close()


async def shut_down(runner: web.AppRunner, drain: Drain, delay: float, timeout: float) -> None:
    """Drain ``runner``'s app: readiness off, listener closed after ``delay``, work done or ended after ``timeout``."""
    drain.active = True
    if delay > 0:
        log.info("draining: /readyz answers 503; closing the listener in %gs", delay)
        await asyncio.sleep(delay)
    # aiohttp's own wait must outlast ours (the timeout may have changed by reload since the start).
    runner._shutdown_timeout = timeout + STREAM_END_GRACE + 1.0  # noqa: SLF001 - no public setter
    server = runner.server
    busy = len(server.connections) if server is not None else 0
    log.info("draining: listener closed, waiting up to %gs for %d open connection(s)", timeout, busy)
    ender = asyncio.create_task(_end_leftovers(server, drain, timeout)) if server is not None else None
    try:
        await runner.cleanup()  # stops the site, closes idle keep-alives, waits for handlers
    finally:
        if ender is not None:
            ender.cancel()
            with suppress(asyncio.CancelledError):
                await ender
