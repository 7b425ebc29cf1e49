"""Local leases of a shared allowance: what one process may admit without asking the shared store.

A shared counter (SQLite for ``--workers`` on one machine, Redis across replicas) counts every unit
it has *leased out*, used or not. A process asks for a batch of a window's allowance at once and
spends it locally, with no I/O, until the lease runs low; then it asks again, ahead of need. As the
shared count includes every lease, all processes together never admit more than the limit in a
window; they can admit less (units leased to a process that then gets no more traffic are lost when
the window ends: at most ``batch_size(limit)`` per process and window).

Token charges go the other way: counted locally after a response, flushed in batches, and the
flush answers the new shared total, so each process sees the others' usage within one sync.

Pure bookkeeping: no I/O, no clock (callers pass ``now``), so the rules are unit-testable.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_BATCH", "Entry", "LeaseBook", "batch_size"]

# At most this many units leased at once: bounds what an idle process can strand (below a limit of
# 20,000 the 1/20 rule is smaller); large limits get large leases, so busy clients refill rarely.
MAX_BATCH = 1000


def batch_size(limit: int) -> int:
    """Units asked for per refill: 1/20 of the limit, between 1 and MAX_BATCH (600/min -> 30)."""
    return max(1, min(limit // 20, MAX_BATCH))


@dataclass(slots=True, eq=False)
class Entry:
    """One window's counter as this process knows it."""

    limit: int
    expires_at: float
    batch: int
    left: int = 0  # leased here, not yet spent
    total: int = 0  # the shared count at the last contact (every lease granted + every charge flushed)
    pending: int = 0  # charged here since the last flush
    exhausted: bool = False  # the shared window had less left than we asked for: no more leases
    refilling: bool = False  # a refill is on its way
    watched: bool = True  # read since the last sync: refresh it from the shared store

    @property
    def used(self) -> int:
        """The window's usage as best known here: every lease but our unspent one, plus unflushed charges."""
        return self.total - self.left + self.pending

    @property
    def low(self) -> bool:
        """The lease is at or below half a batch: time to ask for more, before it runs out."""
        return self.left * 2 <= self.batch and not self.exhausted and not self.refilling


class LeaseBook:
    """Every window this process holds a lease or a charge for, keyed by ``Window.key``."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def entry(self, key: str, limit: int, expires_at: float) -> Entry:
        e = self.entries.get(key)
        if e is None:
            e = self.entries[key] = Entry(limit, expires_at, batch_size(limit))
        return e

    @staticmethod
    def spend(e: Entry, amount: int) -> bool | None:
        """Spend ``amount`` from the lease: True done, False the window is spent, None ask the shared store."""
        if e.left >= amount:
            e.left -= amount
            return True
        if e.exhausted:
            return False
        return None

    @staticmethod
    def want(e: Entry, amount: int) -> int:
        """How much to ask for in a refill: a batch, or more when one request needs more."""
        return max(e.batch, amount - e.left)

    @staticmethod
    def granted(e: Entry, want: int, granted: int, total: int) -> None:
        """Record a refill's answer: ``granted`` units (maybe fewer than ``want``) and the new shared total."""
        e.left += granted
        e.total = max(e.total, total)
        if granted < want:
            e.exhausted = True

    @staticmethod
    def grant_locally(e: Entry, want: int) -> int:
        """A refill with the shared store unreachable: lease from this process's own view of the window."""
        granted = max(0, min(want, e.limit - e.total - e.pending))
        e.total += granted
        LeaseBook.granted(e, want, granted, e.total)
        return granted

    def take_pending(self) -> list[tuple[str, int, float]]:
        """Charges to flush (key, amount, expires_at); they move to ``total`` optimistically until confirmed."""
        out = []
        for key, e in self.entries.items():
            if e.pending:
                out.append((key, e.pending, e.expires_at))
                e.total += e.pending
                e.pending = 0
        return out

    def restore_pending(self, items: list[tuple[str, int, float]]) -> None:
        """A flush failed: put its charges back so the next one carries them."""
        for key, amount, _ in items:
            e = self.entries.get(key)
            if e is not None:
                e.total -= amount
                e.pending += amount

    def watched_keys(self) -> list[str]:
        """Windows read since the last sync (their shared total may have moved); clears the marks."""
        out = []
        for key, e in self.entries.items():
            if e.watched:
                out.append(key)
                e.watched = False
        return out

    def apply_totals(self, totals: dict[str, int]) -> None:
        """Shared totals read back from the store: other processes' leases and charges show up here."""
        for key, total in totals.items():
            e = self.entries.get(key)
            if e is not None:
                # Counts only grow within a window; a smaller answer is older than a grant applied since.
                e.total = max(e.total, total)
                e.exhausted = e.total >= e.limit

    def prune(self, now: float) -> int:
        """Forget windows that have ended; returns how many."""
        ended = [key for key, e in self.entries.items() if e.expires_at <= now]
        for key in ended:
            del self.entries[key]
        return len(ended)
