"""The lease bookkeeping alone (gateway/limits/leases.py): pure rules, no I/O, no clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.limits.leases import MAX_BATCH, LeaseBook, batch_size


class SharedWindow:
    """A stand-in for the shared counter's atomic grant, as the SQLite and Redis scripts do it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def grant(self, want: int) -> tuple[int, int]:
        granted = max(0, min(want, self.limit - self.count))
        self.count += granted
        return granted, self.count


def test_batch_size_is_a_twentieth_of_the_limit_within_bounds() -> None:
    assert batch_size(1) == 1
    assert batch_size(19) == 1
    assert batch_size(600) == 30
    assert batch_size(10**9) == MAX_BATCH


def test_spend_from_a_lease_then_refuse_once_the_window_is_spent() -> None:
    book, shared = LeaseBook(), SharedWindow(limit=45)
    e = book.entry("rpm:alice:1", 45, 60.0)
    assert e.batch == 2 and e.low  # nothing leased yet: ask
    assert LeaseBook.spend(e, 1) is None  # no lease: the caller must ask the shared store
    admitted = 0
    for _ in range(100):
        result = LeaseBook.spend(e, 1)
        if result is None:
            want = LeaseBook.want(e, 1)
            LeaseBook.granted(e, want, *shared.grant(want))
            continue
        if result is False:
            break
        admitted += 1
    assert admitted == 45 and shared.count == 45
    assert e.exhausted and LeaseBook.spend(e, 1) is False
    assert e.used == 45


def test_a_refill_is_wanted_at_half_a_batch_not_at_empty() -> None:
    book = LeaseBook()
    e = book.entry("rpm:bob:1", 600, 60.0)  # batch 30
    LeaseBook.granted(e, 30, 30, 30)
    spent = 0
    while not e.low:
        assert LeaseBook.spend(e, 1) is True
        spent += 1
    assert spent == 15 and e.left == 15  # asked for more while 15 are still in hand
    e.refilling = True
    assert not e.low  # one refill at a time


def test_a_request_bigger_than_a_batch_asks_for_what_it_needs() -> None:
    book = LeaseBook()
    e = book.entry("tpm:carol:1", 1000, 60.0)  # batch 50
    LeaseBook.granted(e, 50, 10, 1000)  # fewer than asked: the window is spent
    assert e.exhausted and LeaseBook.spend(e, 11) is False and LeaseBook.spend(e, 10) is True
    f = book.entry("tpm:dave:1", 1000, 60.0)
    assert LeaseBook.want(f, 120) == 120


def test_two_processes_never_admit_more_than_the_limit_together() -> None:
    shared = SharedWindow(limit=600)
    books = [LeaseBook(), LeaseBook()]
    entries = [b.entry("rpm:x:1", 600, 60.0) for b in books]
    admitted = [0, 0]
    for i in range(3000):  # interleaved traffic, 2.5x the limit
        p = i % 2 if i < 1000 else 0  # then only the first process gets traffic
        e = entries[p]
        result = LeaseBook.spend(e, 1)
        if result is None:
            want = LeaseBook.want(e, 1)
            LeaseBook.granted(e, want, *shared.grant(want))
            result = LeaseBook.spend(e, 1)
        if result:
            admitted[p] += 1
    assert sum(admitted) <= 600
    stranded = entries[1].left  # leased to the second process, which got no more traffic
    assert sum(admitted) == 600 - stranded and stranded < batch_size(600)


def test_local_grants_while_the_shared_store_is_unreachable_stop_at_the_limit() -> None:
    book = LeaseBook()
    e = book.entry("rpm:eve:1", 10, 60.0)
    e.total = 4  # what the shared store said before it went away
    granted = LeaseBook.grant_locally(e, 5)
    assert granted == 5 and e.left == 5 and not e.exhausted
    assert LeaseBook.grant_locally(e, 5) == 1 and e.exhausted  # 4 + 5 + 1 = the limit


def test_charges_flush_once_and_come_back_when_the_flush_fails() -> None:
    book = LeaseBook()
    e = book.entry("tpd:fay:1", 1000, 86400.0)
    e.pending = 40
    items = book.take_pending()
    assert items == [("tpd:fay:1", 40, 86400.0)] and e.pending == 0 and e.used == 40
    assert book.take_pending() == []
    book.restore_pending(items)
    assert e.pending == 40 and e.total == 0 and e.used == 40
    book.apply_totals({"tpd:fay:1": 1200})  # another process charged too: the window is spent
    assert e.used == 1240 and e.exhausted


def test_watched_windows_are_reported_once_and_ended_windows_pruned() -> None:
    book = LeaseBook()
    book.entry("a", 5, 10.0)
    book.entry("b", 5, 20.0).watched = False
    assert book.watched_keys() == ["a"] and book.watched_keys() == []
    assert book.prune(15.0) == 1 and list(book.entries) == ["b"]


@given(
    limit=st.integers(1, 5000),
    traffic=st.lists(st.tuples(st.integers(0, 2), st.integers(1, 40)), min_size=1, max_size=400),
)
def test_any_interleaving_of_three_processes_stays_within_the_limit(limit: int, traffic: list[tuple[int, int]]) -> None:
    shared = SharedWindow(limit)
    entries = [LeaseBook().entry("w", limit, 60.0) for _ in range(3)]
    admitted = 0
    for p, amount in traffic:
        e = entries[p]
        result = LeaseBook.spend(e, amount)
        if result is None:
            want = LeaseBook.want(e, amount)
            LeaseBook.granted(e, want, *shared.grant(want))
            result = LeaseBook.spend(e, amount)
        if result:
            admitted += amount
    assert admitted <= limit
    assert admitted + sum(e.left for e in entries) == shared.count
