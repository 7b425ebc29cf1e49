"""Weighted fair queueing of the requests waiting for a backend's concurrency slots.

A backend with ``max_concurrency`` has that many slots. A request that finds one free takes it at
once (``try_take``: two comparisons and a count of the client's slots, no object allocated). When
every slot is busy the request waits in its client's own FIFO line, and each freed slot goes to the
line whose turn it is: start-time fair queueing with a cost of one per request, so over any busy
period each client with waiting requests gets turns in proportion to its ``share`` (3 and 1: three
turns to one), whatever the order the requests arrived in. A client that starts waiting joins at
the current virtual time plus one turn per slot it already holds and, on a tie, before a client
that just had its turn: one request behind a flood of another client's is served next, not last.
Virtual time advances with every turn by one over the sum of the waiting clients' shares (as under
ideal sharing), so a line idle past its turn can be forgotten and memory stays bounded.

Only the head of each line carries a tag (one heap entry per waiting client), so a cancelled
waiter just leaves its line; a slot handed to a waiter that is cancelled at the same moment is
passed on to the next (``release``), never lost. Pure asyncio: the refusals are this module's own
exceptions, mapped to HTTP answers by the caller (``backends.py``).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import deque
from collections.abc import Callable
from heapq import heappop, heappush, heapreplace

__all__ = [
    "ClientQueueFull",
    "FairQueue",
    "QueueFull",
    "QueueRefused",
    "QueueTimeout",
    "anonymous_client",
]

# Idle lines are swept away once they outnumber the waiting clients by more than this (twice over).
SWEEP_SLACK = 64


class QueueRefused(Exception):
    """The request may not wait: a bound of the waiting room is reached."""


class QueueFull(QueueRefused):
    """The whole waiting room (``routing.queue_size``) is full."""


class ClientQueueFull(QueueRefused):
    """This client already has ``max_queued`` requests waiting."""


class QueueTimeout(Exception):
    """No slot came free within ``routing.queue_timeout``."""


def anonymous_client(address: str) -> str:
    """The queue identity of an unauthenticated caller: its address, IPv6 grouped by /64.

    IPv4 addresses are returned as they are (no work per request). A configured name can never be
    mistaken for one: with auth on there are no anonymous callers, with auth off no names.
    """
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address.strip("[]"))
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))


class _Line:
    """One client's waiting requests, oldest first, and where its next turn falls in virtual time."""

    __slots__ = ("client", "finish", "scheduled", "share", "waiters")

    def __init__(self, client: str, share: float) -> None:
        self.client = client
        self.share = share
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.finish = 0.0  # virtual time at which its last served request's turn ended
        self.scheduled = False  # has its entry in the heap


class FairQueue:
    """``capacity`` slots; waiting requests get freed slots round-robin by client, weighted by share."""

    __slots__ = ("_heap", "_held", "_lines", "_seq", "_vtime", "capacity", "in_use", "on_wait", "waiting")

    def __init__(self, capacity: int, on_wait: Callable[[float], None] | None = None) -> None:
        if capacity < 1:
            raise ValueError("FairQueue capacity must be at least 1")
        self.capacity = capacity
        self.in_use = 0
        self.waiting = 0  # requests in some line (a cancelled one until it is dropped)
        self.on_wait = on_wait  # called with the seconds waited by every request that got a slot by waiting
        self._lines: dict[str, _Line] = {}
        self._held: dict[str, int] = {}  # slots in use per client
        # (virtual start of its head, 0 if it just joined else 1, arrival order, line): one per line
        self._heap: list[tuple[float, int, int, _Line]] = []
        self._vtime = 0.0  # where a client that starts waiting joins
        self._seq = 0

    def try_take(self, client: str) -> bool:
        """Take a free slot for ``client`` if there is one and nobody is waiting for it (the fast path)."""
        if self.in_use < self.capacity and not self.waiting:
            self.in_use += 1
            held = self._held
            held[client] = held.get(client, 0) + 1
            return True
        return False

    async def wait(
        self,
        client: str,
        share: float,
        max_queued: int,
        queue_size: int,
        queue_timeout: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """Wait in ``client``'s line for a slot (call after ``try_take`` failed).

        Raises ``QueueFull`` / ``ClientQueueFull`` at once when the room (``queue_size``) or the
        client's part of it (``max_queued``, 0 = no cap) is full, ``QueueTimeout`` after
        ``queue_timeout`` seconds. On success the caller holds a slot and must ``release`` it.
        """
        if self.try_take(client):  # a slot came free between the caller's check and now
            return
        if self.waiting >= queue_size:
            raise QueueFull(client)
        line = self._lines.get(client)
        if line is None:
            line = self._lines[client] = _Line(client, share)
        elif max_queued and len(line.waiters) >= max_queued:
            raise ClientQueueFull(client)
        line.share = share
        future: asyncio.Future[None] = loop.create_future()
        line.waiters.append(future)
        self.waiting += 1
        if not line.scheduled:  # it joins now, counting the slots it holds as turns it is having
            start = max(self._vtime + self._held.get(client, 0) / share, line.finish)
            self._seq += 1
            heappush(self._heap, (start, 0, self._seq, line))
            line.scheduled = True
        since = loop.time()
        try:
            async with asyncio.timeout(queue_timeout):
                await future
        except TimeoutError:
            if not future.done() or future.cancelled():
                self._leave(line, future)
                raise QueueTimeout(client) from None
            # The slot was handed over in the same instant the time ran out: keep it.
        except BaseException:
            if future.done() and not future.cancelled():
                self.release(client)  # handed a slot just as the client went away: pass it on
            else:
                self._leave(line, future)
            raise
        if self.on_wait is not None:
            self.on_wait(loop.time() - since)

    def release(self, client: str) -> None:
        """``client`` gives a slot back: to the line whose turn it is, or to the pool when nobody waits."""
        held = self._held
        count = held[client] - 1
        if count:
            held[client] = count
        else:
            del held[client]
        if self.in_use > self.capacity or not self._hand_over():  # over capacity after a resize: retire it
            self.in_use -= 1
            if not self.waiting and self._lines:
                self._forget()

    def resize(self, capacity: int) -> None:
        """Change the number of slots (a config reload): added slots go to waiters at once, removed
        ones disappear as their holders release them."""
        if capacity < 1:
            raise ValueError("FairQueue capacity must be at least 1")
        self.capacity = capacity
        while self.in_use < capacity and self._hand_over():
            self.in_use += 1

    def _hand_over(self) -> bool:
        """Give a slot to the line whose turn it is; False when nobody waits (the caller keeps the slot)."""
        heap = self._heap
        while heap:
            start, _, _, line = heap[0]
            waiters = line.waiters
            while waiters and waiters[0].done():  # cancelled, its task has not run its cleanup yet
                waiters.popleft()
                self.waiting -= 1
            if not waiters:
                heappop(heap)
                line.scheduled = False
                continue
            future = waiters.popleft()
            self.waiting -= 1
            shares = sum(entry[3].share for entry in heap)  # of the clients waiting (bounded by queue_size)
            self._vtime = max(self._vtime, start + 1.0 / shares)
            line.finish = start + 1.0 / line.share
            if waiters:
                self._seq += 1
                heapreplace(heap, (line.finish, 1, self._seq, line))
            else:
                heappop(heap)
                line.scheduled = False
            held = self._held
            held[line.client] = held.get(line.client, 0) + 1
            future.set_result(None)  # the slot moves to this waiter
            if not self.waiting:
                self._forget()
            elif len(self._lines) > 2 * (len(heap) + SWEEP_SLACK):
                self._sweep()
            return True
        return False

    def queued(self) -> dict[str, int]:
        """Waiting requests per client (for the status page)."""
        return {line.client: len(line.waiters) for line in self._lines.values() if line.waiters}

    def _leave(self, line: _Line, future: asyncio.Future[None]) -> None:
        try:
            line.waiters.remove(future)
        except ValueError:  # already dropped by ``release``
            return
        self.waiting -= 1
        if not self.waiting:
            self._forget()

    def _forget(self) -> None:
        """Nobody waits: the next busy period starts from a clean slate (and memory stays bounded)."""
        self._lines.clear()
        self._heap.clear()
        self._vtime = 0.0

    def _sweep(self) -> None:
        """Drop idle lines whose last turn is over (they would join at the current virtual time anyway)."""
        vtime = self._vtime
        # A dropped line's stale heap entry, if any, is skipped when it surfaces (it has no waiters).
        for client in [c for c, line in self._lines.items() if not line.waiters and line.finish <= vtime]:
            del self._lines[client]
