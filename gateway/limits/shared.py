"""A counter store over a shared backend (SQLite file, Redis), with local leases and batched charges.

``SharedStore`` implements the counter-store protocol (``store.py``) for any ``SharedCounters``: the
request path only touches the in-process ``LeaseBook`` (``try_take``, ``used``, ``charge``: no
I/O). Refills start ahead of need, when a lease is half spent; they go out in rounds, one round
trip for every window that ran low meanwhile, and callers of ``take`` wait for their window's
round. Charges and read-backs go out together once per ``sync_interval`` from one background task.

When the shared backend fails, the store says so once in the log, in ``status()`` (``/readyz``, the
``gateway_limits_store_up`` gauge), and then either keeps counting locally (``on_error="allow"``)
or refuses requests with 503 (``"deny"``); a background task reconnects with backoff, never a
request, and unflushed charges reach the backend once it is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import suppress
from typing import Literal, Protocol

from ..errors import ServiceUnavailable
from .leases import Entry, LeaseBook, batch_size
from .store import Window

__all__ = ["SharedCounters", "SharedStore", "StoreUnavailable"]

log = logging.getLogger("gateway.limits")
SYNC_INTERVAL = 0.25  # seconds between flushes of token charges (and read-backs of watched windows)
PRUNE_INTERVAL = 10.0  # seconds between drops of ended windows (and SQLite's WAL checkpoints)
HEARTBEAT = 1.0  # with nothing to sync for this long, check the backend anyway (for /readyz and the gauge)
BACKOFF_FIRST, BACKOFF_MAX = 0.25, 5.0


class StoreUnavailable(ServiceUnavailable):
    """503: the shared counters are unreachable and ``limits.on_redis_error`` is ``deny``."""


class SharedCounters(Protocol):
    """The shared side: a few batched, atomic operations on window counters (every call may raise)."""

    name: str

    async def connect(self) -> None: ...
    async def close(self) -> None: ...
    async def load(self, now: float) -> dict[str, tuple[int, float]]:
        """Every live window: key -> (count, expires_at)."""
        ...

    async def grant(self, items: list[tuple[str, int, int, float]]) -> list[tuple[int, int]]:
        """For each (key, limit, want, expires_at), atomically lease up to ``want`` of what is left
        under ``limit``: (granted, new count) each, in one round trip."""
        ...

    async def add(self, items: list[tuple[str, int, float]]) -> dict[str, int]:
        """Add charges (key, amount, expires_at); the new counts."""
        ...

    async def read(self, keys: list[str]) -> dict[str, int]:
        """Current counts (absent keys: 0)."""
        ...

    async def prune(self, now: float) -> None: ...


class SharedStore:
    """The counter store: local leases of a shared allowance, charges flushed in batches."""

    def __init__(
        self,
        counters: SharedCounters,
        *,
        on_error: Literal["allow", "deny"] = "allow",
        sync_interval: float = SYNC_INTERVAL,
    ) -> None:
        self.counters = counters
        self.name = counters.name
        self.on_error = on_error
        self.sync_interval = sync_interval
        self.book = LeaseBook()
        self.entries = self.book.entries  # the same dict, one attribute lookup less per request
        self.up = False
        self.detail = f"{counters.name}: not started"
        # Refills are sent in rounds: every window that runs low while a round is on its way joins
        # the next one, so a busy gateway makes one round trip for many windows, not one each.
        self._queued: list[tuple[str, Entry, int]] = []
        self._next_round: asyncio.Future[None] | None = None  # resolved when the queued refills are in
        self._refills: dict[str, asyncio.Future[None]] = {}  # window key -> the round refilling it
        self._granter: asyncio.Task[None] | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._reconnect: asyncio.Task[None] | None = None
        self._retry_at = 0.0
        self._contact = 0.0  # monotonic time of the last successful sync
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        try:
            await self.counters.connect()
            live = await self.counters.load(time.time())
        except Exception as exc:  # noqa: BLE001 - any failure of the backend is "unreachable"
            self._went_down(exc)
        else:
            for key, (count, expires_at) in live.items():
                e = self.book.entry(key, 1 << 62, expires_at)  # the limit is learnt on first use
                e.total = count
                e.watched = False
            self._came_up()
        self._sync_task = asyncio.create_task(self._sync_forever())

    async def close(self) -> None:
        tasks = [t for t in (self._sync_task, self._reconnect, self._granter) if t]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with suppress(asyncio.CancelledError, Exception):
                await task
        if self.up:
            with suppress(Exception):
                await self._flush()  # a graceful stop keeps the last charges (the daily budget)
        with suppress(Exception):
            await self.counters.close()

    # ------------------------------------------------------------------ the request path (no I/O)

    def _entry(self, w: Window) -> Entry:
        """The window's entry, new or with its limit updated (the fast paths inline the common case)."""
        e = self.entries.get(w.key)
        if e is None:
            return self.book.entry(w.key, w.limit, w.expires_at)
        e.limit = w.limit  # loaded at start (limit unknown), or changed by a reload
        e.batch = batch_size(w.limit)
        e.exhausted = e.total >= w.limit
        return e

    def _refuse(self) -> None:
        if self.on_error == "deny":
            retry = max(1, round(self._retry_at - time.monotonic() + 0.5))
            raise StoreUnavailable(
                f"limits are unavailable: {self.detail} (limits.on_redis_error: deny)",
                headers={"Retry-After": str(retry)},
            )

    def try_take(self, w: Window, amount: int = 1) -> bool | None:
        if not self.up:
            self._refuse()
        e = self.entries.get(w.key)
        if e is None or e.limit != w.limit:
            e = self._entry(w)
        left = e.left
        if left >= amount:
            left = e.left = left - amount
            result: bool | None = True
        else:
            result = False if e.exhausted else None
        if left * 2 <= e.batch and not e.refilling and not e.exhausted:  # refill ahead of need
            self._refill(w.key, e, amount)
        return result

    async def take(self, w: Window, amount: int = 1) -> bool:
        while True:
            result = self.try_take(w, amount)
            if result is not None:
                return result
            # The lease is too small and the window not spent: wait for a refill (one per window,
            # shared by every waiter), then spend again; others may have spent it first.
            self._refill(w.key, self._entry(w), amount)
            round_ = self._refills.get(w.key)
            if round_ is not None:
                await asyncio.shield(round_)

    def used(self, w: Window) -> int:
        if not self.up:
            self._refuse()
        e = self.entries.get(w.key)
        if e is None or e.limit != w.limit:
            e = self._entry(w)
        e.watched = True
        return e.total - e.left + e.pending

    def charge(self, w: Window, amount: int) -> None:
        e = self.entries.get(w.key)
        if e is None:
            e = self._entry(w)
        e.pending += amount

    def status(self) -> tuple[bool, str]:
        return self.up, self.detail

    # ------------------------------------------------------------------ background work

    def _refill(self, key: str, e: Entry, amount: int) -> None:
        if e.refilling or e.exhausted:
            return
        e.refilling = True
        self._queued.append((key, e, LeaseBook.want(e, amount)))
        if self._next_round is None:
            self._next_round = asyncio.get_running_loop().create_future()
        self._refills[key] = self._next_round
        if self._granter is None:
            self._granter = asyncio.create_task(self._grant_rounds())

    async def _grant_rounds(self) -> None:
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                done, self._next_round = self._next_round, None
                try:
                    await self._grant(batch)
                finally:
                    for key, e, _ in batch:
                        e.refilling = False
                        if self._refills.get(key) is done:
                            del self._refills[key]
                    if done is not None and not done.done():
                        done.set_result(None)
        finally:
            self._granter = None

    async def _grant(self, batch: list[tuple[str, Entry, int]]) -> None:
        if self.up:
            try:
                answers = await self.counters.grant([(key, e.limit, want, e.expires_at) for key, e, want in batch])
            except Exception as exc:  # noqa: BLE001
                self._went_down(exc)
            else:
                for (_, e, want), (granted, total) in zip(batch, answers, strict=True):
                    LeaseBook.granted(e, want, granted, total)
                return
        if self.on_error == "allow":
            for _, e, want in batch:
                LeaseBook.grant_locally(e, want)

    async def _sync_forever(self) -> None:
        next_prune = time.monotonic() + PRUNE_INTERVAL
        while True:
            with suppress(TimeoutError):
                async with asyncio.timeout(self.sync_interval):
                    await self._wake.wait()
            self._wake.clear()
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_INTERVAL
                now = time.time()
                self.book.prune(now)
                if self.up:
                    try:
                        await self.counters.prune(now)
                    except Exception as exc:  # noqa: BLE001
                        self._went_down(exc)
            if self.up:
                await self._flush()

    async def _flush(self) -> None:
        """One sync: send the charges, read back what others did to the windows read here."""
        items = self.book.take_pending()
        watched = self.book.watched_keys()
        try:
            totals: dict[str, int] = {}
            if items:
                totals.update(await self.counters.add(items))
            rest = [k for k in watched if k not in totals]
            if rest:
                totals.update(await self.counters.read(rest))
            now = time.monotonic()
            if items or rest:
                self._contact = now
            elif now - self._contact > HEARTBEAT:
                self._contact = now
                await self.counters.connect()  # idle: still make sure it is there
        except Exception as exc:  # noqa: BLE001
            self.book.restore_pending(items)
            self._went_down(exc)
            return
        self.book.apply_totals(totals)

    def _went_down(self, exc: BaseException) -> None:
        if not self.up and self._reconnect is not None:
            return
        was_up = self.up
        self.up = False
        fallback = "serving on local counters" if self.on_error == "allow" else "refusing requests with 503"
        self.detail = f"{self.name} unreachable ({type(exc).__name__}: {exc}); {fallback} until it is back"
        log.error("limits store %s%s", self.detail, "" if was_up else " (at start)")
        self._retry_at = time.monotonic() + BACKOFF_FIRST
        if self._reconnect is None:
            self._reconnect = asyncio.create_task(self._reconnect_forever())

    def _came_up(self) -> None:
        self.up = True
        self.detail = f"{self.name}: ok"
        for e in self.book.entries.values():  # local verdicts from an outage: ask the shared store again
            e.exhausted = e.total >= e.limit
            e.watched = True

    async def _reconnect_forever(self) -> None:
        delay = BACKOFF_FIRST
        try:
            while True:
                self._retry_at = time.monotonic() + delay
                await asyncio.sleep(delay)
                try:
                    await self.counters.connect()
                except Exception:  # noqa: BLE001 - still down: try again later
                    delay = min(delay * 2, BACKOFF_MAX)
                    continue
                self._came_up()
                log.warning("limits store %s is reachable again: counters are shared again", self.name)
                self._wake.set()  # flush what was charged meanwhile
                return
        finally:
            self._reconnect = None
