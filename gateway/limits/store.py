"""Where limit counters live: the ``CounterStore`` protocol and its in-memory implementation.

The limits engine (``engine.py``) never touches a counter directly; it asks a store. One counter
is a ``Window``: its key names the kind, the client and the window index ("rpm:alice:29012345"),
so a window that has ended is simply never asked about again and the store may drop it after
``expires_at``. Every window is aligned to the wall clock (``time.time()``), so separate processes
and machines agree on which window "now" is without talking to each other.

The per-request path is synchronous and I/O-free by contract: ``try_take``, ``used`` and
``charge`` answer from what the store holds locally. A shared store (SQLite for ``--workers``,
Redis for replicas) keeps a local lease of each hot counter and refills or flushes it in batches;
when its lease cannot decide, ``try_take`` returns None and the engine awaits ``take`` (the slow
path, one round trip). ``MemoryStore`` always decides, so it never needs the slow path.

A store may raise ``errors.ServiceUnavailable`` from ``try_take`` or ``take`` when it must refuse
for want of its shared state (``limits.on_redis_error: deny``); the engine lets it through.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["SWEEP_INTERVAL", "CounterStore", "MemoryStore", "Window"]

SWEEP_INTERVAL = 30.0  # seconds between drops of ended windows (memory only; a window is >= 1 s long)


@dataclass(frozen=True, slots=True)
class Window:
    """One counter: a kind of limit, for one client, during one window of time."""

    key: str  # "<kind>:<client>:<window index>", e.g. "rpm:alice:29012345"; opaque to stores
    limit: int  # the allowance in this window (> 0); 0 only for tally windows that are charged, never taken
    expires_at: float  # wall-clock time (time.time()) at which the window ends and its count may be dropped


@runtime_checkable
class CounterStore(Protocol):
    """Counters for the limits engine. Methods without ``async`` do no I/O and never block."""

    name: str  # "memory" | "sqlite" | "redis": shown on the status page, in logs and /readyz

    async def start(self) -> None:
        """Open connections, load state, start background refills/flushes (the app's startup)."""
        ...

    async def close(self) -> None:
        """Flush what is batched and release everything (the app's cleanup)."""
        ...

    def try_take(self, w: Window, amount: int = 1) -> bool | None:
        """Count ``amount`` if the window stays within its limit: True (counted), False (at the limit,
        nothing counted), or None when a local lease cannot decide (then ``take`` is awaited)."""
        ...

    async def take(self, w: Window, amount: int = 1) -> bool:
        """``try_take`` against the shared state itself (the slow path: may await I/O)."""
        ...

    def used(self, w: Window) -> int:
        """The best known count of the window (this process's view; a lease adds what it took)."""
        ...

    def charge(self, w: Window, amount: int) -> None:
        """Add ``amount`` unconditionally (tokens after a response). No I/O: shared stores batch it."""
        ...

    def status(self) -> tuple[bool, str]:
        """(ok, detail) for ``/readyz`` and the status page, e.g. (False, "redis unreachable: ...")."""
        ...


class MemoryStore:
    """Counters in a dict of this process: exact, no I/O, gone on restart, not shared by workers."""

    name = "memory"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._counts: dict[str, int] = {}
        self._expires: dict[str, float] = {}  # key -> when it may be dropped, set when the key appears
        self._clock = clock
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_every(SWEEP_INTERVAL))

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    def try_take(self, w: Window, amount: int = 1) -> bool:
        counts = self._counts
        key = w.key
        count = counts.get(key)
        if count is None:
            if amount > w.limit:
                return False
            counts[key] = amount
            self._expires[key] = w.expires_at
            return True
        if count + amount > w.limit:
            return False
        counts[key] = count + amount
        return True

    async def take(self, w: Window, amount: int = 1) -> bool:
        return self.try_take(w, amount)

    def used(self, w: Window) -> int:
        return self._counts.get(w.key, 0)

    def charge(self, w: Window, amount: int) -> None:
        counts = self._counts
        key = w.key
        count = counts.get(key)
        if count is None:
            counts[key] = amount
            self._expires[key] = w.expires_at
        else:
            counts[key] = count + amount

    def status(self) -> tuple[bool, str]:
        return True, f"memory: {len(self._counts)} counter(s) in this process"

    def sweep(self) -> int:
        """Drop the counters of windows that have ended; returns how many."""
        now = self._clock()
        ended = [key for key, at in self._expires.items() if at <= now]
        for key in ended:
            del self._expires[key]
            self._counts.pop(key, None)
        return len(ended)

    async def _sweep_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            self.sweep()
