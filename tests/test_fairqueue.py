"""The fair queue on its own (no server): order, weights, bounds, cancellation, timeouts."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.fairqueue import ClientQueueFull, FairQueue, QueueFull, QueueTimeout, anonymous_client

HOLDER = "holder"  # the client holding every slot when a test starts (the tests release on everyone's behalf)
ROOM = 1000  # a queue_size that never binds unless a test says so
LONG = 60.0  # a queue_timeout that never fires unless a test says so


class Clients:
    """Waiting requests on one queue, each recording when it was served (its label, in order).

    ``holders`` lists who holds the slots, oldest first; ``serve`` ends the oldest one's request.
    """

    def __init__(self, queue: FairQueue, holders: list[str] | None = None) -> None:
        self.queue = queue
        self.holders = holders if holders is not None else []
        self.served: list[str] = []
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def send(self, label: str, client: str, share: float = 1.0, max_queued: int = 0) -> asyncio.Task[None]:
        async def one() -> None:
            if not self.queue.try_take(client):
                await self.queue.wait(client, share, max_queued, ROOM, LONG, asyncio.get_running_loop())
            self.served.append(label)
            self.holders.append(client)

        task = asyncio.create_task(one())
        self.tasks[label] = task
        return task

    async def settle(self) -> None:
        """Let every task run up to its wait (they are queued in the order they were sent)."""
        for _ in range(3):
            await asyncio.sleep(0)

    async def serve(self, count: int) -> list[str]:
        """Release ``count`` slots one after another, each to whoever's turn it is; the labels served."""
        start = len(self.served)
        for _ in range(count):
            self.queue.release(self.holders.pop(0))
            await self.settle()
        return self.served[start:]


async def saturated(capacity: int = 1) -> Clients:
    """A queue whose slots are all held (by the test), so everything sent now waits."""
    queue = FairQueue(capacity)
    for _ in range(capacity):
        assert queue.try_take(HOLDER)
    return Clients(queue, [HOLDER] * capacity)


async def test_a_free_slot_is_taken_at_once_and_nobody_jumps_a_line() -> None:
    queue = FairQueue(2)
    assert queue.try_take(HOLDER) and queue.try_take(HOLDER)
    assert not queue.try_take("a")
    clients = Clients(queue, [HOLDER] * queue.in_use)
    clients.send("a1", "a")
    await clients.settle()
    queue.release(HOLDER)  # goes to the waiter, not to the pool
    await clients.settle()
    assert clients.served == ["a1"] and queue.in_use == 2 and queue.waiting == 0
    queue.release(HOLDER)
    queue.release("a")
    assert queue.in_use == 0 and queue.try_take("a")


async def test_clients_take_turns_and_each_clients_own_requests_stay_in_order() -> None:
    clients = await saturated()
    for i in range(1, 6):
        clients.send(f"a{i}", "a")
    for i in range(1, 3):
        clients.send(f"b{i}", "b")
    await clients.settle()
    assert clients.queue.waiting == 7
    assert clients.queue.queued() == {"a": 5, "b": 2}
    assert await clients.serve(7) == ["a1", "b1", "a2", "b2", "a3", "a4", "a5"]
    assert clients.queue.waiting == 0 and clients.queue.in_use == 1


async def test_a_client_holding_a_slot_already_waits_behind_one_holding_none() -> None:
    clients = await saturated(2)
    clients.send("a1", "a")
    clients.send("b1", "b")
    await clients.settle()
    assert await clients.serve(2) == ["a1", "b1"]  # each now holds one of the two slots
    clients.send("a2", "a")
    clients.send("a3", "a")
    await clients.settle()
    clients.send("c1", "c")  # holds none: goes first although it came last
    await clients.settle()
    assert await clients.serve(3) == ["c1", "a2", "a3"]


async def test_a_client_arriving_behind_a_flood_is_served_next() -> None:
    clients = await saturated()
    for i in range(20):
        clients.send(f"a{i}", "a")
    await clients.settle()
    assert await clients.serve(3) == ["a0", "a1", "a2"]
    clients.send("b0", "b")
    await clients.settle()
    assert await clients.serve(2) == ["b0", "a3"]  # FIFO would serve b0 after a19


@pytest.mark.parametrize(("share_a", "share_b"), [(3, 1), (1, 3), (2, 1), (0.5, 1.5), (1, 1)])
async def test_turns_follow_the_shares(share_a: float, share_b: float) -> None:
    clients = await saturated()
    for i in range(60):
        clients.send(f"a{i}", "a", share=share_a)
        clients.send(f"b{i}", "b", share=share_b)
    await clients.settle()
    served = await clients.serve(40)
    a = sum(1 for label in served if label.startswith("a"))
    assert a / (40 - a) == pytest.approx(share_a / share_b, rel=0.1)
    assert [label for label in served if label.startswith("a")] == [f"a{i}" for i in range(a)]


async def test_three_clients_with_different_shares() -> None:
    clients = await saturated()
    for i in range(40):
        for client, share in (("x", 1), ("y", 2), ("z", 3)):
            clients.send(f"{client}{i}", client, share=share)
    await clients.settle()
    served = await clients.serve(60)
    counts = {c: sum(1 for label in served if label[0] == c) for c in "xyz"}
    assert counts == {"x": 10, "y": 20, "z": 30}


async def test_max_queued_caps_one_client_not_the_others() -> None:
    clients = await saturated()
    loop = asyncio.get_running_loop()
    clients.send("a1", "a", max_queued=2)
    clients.send("a2", "a", max_queued=2)
    await clients.settle()
    with pytest.raises(ClientQueueFull):
        await clients.queue.wait("a", 1.0, 2, ROOM, LONG, loop)
    clients.send("b1", "b", max_queued=2)
    await clients.settle()
    assert clients.queue.waiting == 3
    assert await clients.serve(1) == ["a1"]
    clients.send("a3", "a", max_queued=2)  # a has room again
    await clients.settle()
    assert await clients.serve(3) == ["b1", "a2", "a3"]


async def test_queue_size_bounds_the_whole_room() -> None:
    queue = FairQueue(1)
    assert queue.try_take(HOLDER)
    loop = asyncio.get_running_loop()
    waiter = asyncio.create_task(queue.wait("a", 1.0, 0, 1, LONG, loop))
    await asyncio.sleep(0)
    with pytest.raises(QueueFull):
        await queue.wait("b", 1.0, 0, 1, LONG, loop)
    with pytest.raises(QueueFull):  # queue_size 0: nobody may wait at all
        await _full_room_of_zero(loop)
    queue.release(HOLDER)
    await waiter
    assert queue.in_use == 1 and queue.waiting == 0


async def _full_room_of_zero(loop: asyncio.AbstractEventLoop) -> None:
    queue = FairQueue(1)
    assert queue.try_take(HOLDER)
    await queue.wait("b", 1.0, 0, 0, LONG, loop)


async def test_a_timed_out_waiter_leaves_and_the_queue_keeps_working() -> None:
    queue = FairQueue(1)
    assert queue.try_take(HOLDER)
    loop = asyncio.get_running_loop()
    clients = Clients(queue, [HOLDER] * queue.in_use)
    clients.send("a1", "a")
    with pytest.raises(QueueTimeout):
        await queue.wait("b", 1.0, 0, ROOM, 0.05, loop)
    assert queue.waiting == 1 and queue.queued() == {"a": 1}
    assert await clients.serve(1) == ["a1"]
    assert await clients.serve(1) == []
    assert queue.in_use == 0 and queue.waiting == 0


async def test_a_cancelled_waiter_leaves_at_once() -> None:
    clients = await saturated()
    clients.send("a1", "a")
    clients.send("a2", "a")
    clients.send("b1", "b")
    await clients.settle()
    clients.tasks["a1"].cancel()
    await clients.settle()
    assert clients.queue.waiting == 2 and clients.queue.queued() == {"a": 1, "b": 1}
    assert await clients.serve(2) == ["a2", "b1"]
    assert clients.tasks["a1"].cancelled()


async def test_a_waiter_cancelled_before_its_cleanup_ran_is_skipped() -> None:
    clients = await saturated()
    clients.send("a1", "a")
    clients.send("b1", "b")
    await clients.settle()
    clients.tasks["a1"].cancel()  # its future is cancelled now; its task has not run yet
    clients.queue.release(HOLDER)  # must skip a1 and hand the slot to b1
    await clients.settle()
    assert clients.served == ["b1"] and clients.queue.waiting == 0 and clients.queue.in_use == 1


async def test_a_slot_handed_to_a_waiter_cancelled_at_the_same_moment_passes_on() -> None:
    clients = await saturated()
    clients.send("a1", "a")
    clients.send("b1", "b")
    await clients.settle()
    clients.queue.release(HOLDER)  # a1's future gets the slot ...
    clients.tasks["a1"].cancel()  # ... and the client goes away before a1 runs
    await clients.settle()
    assert clients.tasks["a1"].cancelled()
    assert clients.served == ["b1"]  # no lost slot: b1 has it
    assert clients.queue.in_use == 1 and clients.queue.waiting == 0
    clients.queue.release("b")
    assert clients.queue.in_use == 0 and clients.queue.try_take(HOLDER)


async def test_a_slot_handed_over_as_the_timeout_fires_is_kept() -> None:
    queue = FairQueue(1)
    assert queue.try_take(HOLDER)
    loop = asyncio.get_running_loop()
    waiter = asyncio.create_task(queue.wait("a", 1.0, 0, ROOM, 0.05, loop))
    await asyncio.sleep(0)
    handle = loop.call_later(0.05, queue.release, HOLDER)  # the same instant, near enough; either way no slot is lost
    try:
        await waiter
    except QueueTimeout:
        await asyncio.sleep(0.1)
        assert queue.in_use == 0  # timed out first: the later release freed the slot
    else:
        assert queue.in_use == 1  # got it: it holds the slot
        queue.release("a")
    handle.cancel()
    assert queue.waiting == 0 and queue.in_use == 0


async def test_many_cancellations_and_releases_lose_no_slot() -> None:
    clients = await saturated(3)
    queue = clients.queue
    for i in range(60):
        clients.send(f"r{i}", f"c{i % 7}", share=1 + i % 3)
    await clients.settle()
    for i in range(0, 60, 3):
        clients.tasks[f"r{i}"].cancel()
        queue.release(clients.holders.pop(0))  # in the same instant: some releases meet a just-cancelled head
        await clients.settle()
    while queue.waiting:
        await clients.serve(1)
    served = len(clients.served)
    assert served == 40  # every request not cancelled got a slot
    assert queue.in_use == 3  # every release was handed over: the slots are with the last three served
    await clients.serve(3)
    assert queue.in_use == 0 and queue.waiting == 0 and queue.queued() == {} and queue._held == {}


async def test_the_wait_is_reported_only_for_requests_that_waited() -> None:
    waits: list[float] = []
    queue = FairQueue(1, on_wait=waits.append)
    assert queue.try_take(HOLDER)
    clients = Clients(queue, [HOLDER] * queue.in_use)
    clients.send("a1", "a")
    await clients.settle()
    await asyncio.sleep(0.02)
    await clients.serve(2)
    assert queue.try_take(HOLDER)  # taken at once: not reported
    assert len(waits) == 1 and waits[0] >= 0.015


async def test_ever_new_clients_neither_starve_a_waiting_one_nor_grow_memory() -> None:
    """A batch client keeps waiting while a new client arrives with every other freed slot (say,
    anonymous callers from ever new addresses): the batch client still gets its half, and the lines
    of clients that have had their turn are forgotten."""
    clients = await saturated()
    heavy = 0
    for i in range(400):
        clients.send(f"x{i}", f"one-shot-{i}")
        for _ in range(3 - clients.queue.queued().get("heavy", 0)):
            clients.send(f"a{heavy}", "heavy")
            heavy += 1
        await clients.settle()
        await clients.serve(2)
        assert len(clients.queue._lines) <= 2 * (len(clients.queue._heap) + 64)
    served = clients.served
    assert sum(1 for label in served if label.startswith("a")) >= len(served) * 0.45
    await clients.serve(clients.queue.waiting)
    assert clients.queue._lines == {} and clients.queue._heap == []


def test_taking_a_free_slot_allocates_nothing() -> None:
    queue = FairQueue(4)
    for _ in range(10):  # warm up
        queue.try_take(HOLDER)
        queue.release(HOLDER)
    before = sys.getallocatedblocks()
    for _ in range(10_000):
        queue.try_take(HOLDER)
        queue.release(HOLDER)
    assert sys.getallocatedblocks() - before < 10


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:10.0.0.7", "10.0.0.7"),
        ("[::1]", "::/64"),
        ("unknown", "unknown"),
    ],
)
def test_anonymous_callers_are_told_apart_by_address_and_ipv6_by_64(address: str, key: str) -> None:
    assert anonymous_client(address) == key


def test_a_queue_needs_a_slot() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        FairQueue(0)


# Any interleaving of arrivals, cancellations and releases: no slot is lost or doubled, no slot idles
# while someone waits, and every client's requests are served in the order it sent them.
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.sampled_from("abc"), st.sampled_from([0.5, 1.0, 3.0])),
        st.tuples(st.just("cancel"), st.integers(0, 50), st.just(0.0)),
        st.tuples(st.just("release"), st.integers(0, 50), st.just(0.0)),
        st.tuples(st.just("release-now"), st.integers(0, 50), st.just(0.0)),  # no settling before the next op
        st.tuples(st.just("release-cancel"), st.integers(0, 50), st.just(0.0)),  # the client leaves as it is served
        st.tuples(st.just("resize"), st.integers(1, 3), st.just(0.0)),  # a config reload
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(capacity=st.integers(1, 3), ops=OPS)
def test_no_interleaving_loses_a_slot_or_breaks_a_clients_order(
    capacity: int, ops: list[tuple[str, Any, float]]
) -> None:
    async def run() -> None:
        queue = FairQueue(capacity)
        clients = Clients(queue)
        sent: dict[str, list[str]] = {}
        for n, (op, arg, share) in enumerate(ops):
            if op == "send":
                label = f"{arg}{n}"
                sent.setdefault(arg, []).append(label)
                clients.send(label, arg, share=share)
            elif op == "cancel":
                pending = [t for t in clients.tasks.values() if not t.done()]
                if pending:
                    pending[arg % len(pending)].cancel()
            elif op == "resize":
                queue.resize(arg)
            elif clients.holders:
                queue.release(clients.holders.pop(arg % len(clients.holders)))
                if op == "release-cancel":  # every waiter goes away in the same instant, the one served too
                    for task in clients.tasks.values():
                        task.cancel()
            if op != "release-now":
                await clients.settle()
                pending = sum(1 for t in clients.tasks.values() if not t.done())
                assert queue.in_use == len(clients.holders) <= 3  # more than capacity only just after a shrink
                assert queue.waiting == pending
                assert not pending or queue.in_use >= queue.capacity  # no idle slot while someone waits
        await clients.settle()
        while clients.holders:
            queue.release(clients.holders.pop(0))
            await clients.settle()
        assert queue.in_use == 0 and queue.waiting == 0 and queue._held == {} and queue._lines == {}
        assert all(t.done() for t in clients.tasks.values())
        for client, labels in sent.items():
            served = [label for label in clients.served if label[0] == client]
            assert served == [label for label in labels if not clients.tasks[label].cancelled()]

    asyncio.run(run())


async def test_resizing_hands_new_slots_to_waiters_and_retires_removed_ones_as_they_free() -> None:
    clients = await saturated(1)
    for i in range(4):
        clients.send(f"a{i}", "a")
    await clients.settle()
    clients.queue.resize(3)  # two more slots: two waiters get them now
    await clients.settle()
    assert clients.served == ["a0", "a1"] and clients.queue.in_use == 3 and clients.queue.waiting == 2
    clients.queue.resize(1)  # fewer: the three holders keep theirs until they release
    assert await clients.serve(2) == []  # two releases retire two slots, nobody new is served
    assert clients.queue.in_use == 1 and clients.queue.waiting == 2
    assert await clients.serve(1) == ["a2"]
    assert await clients.serve(1) == ["a3"]
    await clients.serve(1)
    assert clients.queue.in_use == 0 and clients.queue.try_take("b")
    with pytest.raises(ValueError, match="at least 1"):
        clients.queue.resize(0)
