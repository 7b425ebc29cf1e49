"""Circuit breaking: a backend whose real requests keep failing is taken out at once, not at the next probe.

One ``Circuit`` per backend with ``circuit.failures`` > 0 (``Backend.circuit``). The proxy reports
each attempt's outcome: a response relayed whole is a success; no head (connect error, reset,
first-byte timeout, invalid response), a 502/503/504, or a body the backend cut (reset, idle timeout)
is a failure; a client that left gives no verdict. A half-open trial is decided by its head, so a
long stream does not keep the backend waiting for its verdict.
``failures`` consecutive failures open the circuit: routing skips the backend without paying its
timeout. After ``cooldown`` the circuit is half-open: exactly one trial request is let through and
its outcome decides (success closes it, failure re-opens it for another cooldown); a successful
health probe after the cooldown closes it too. A success always resets the count.

The closed state is one attribute test (``open_until == 0.0``): that is all the hot path pays.
Times are ``time.monotonic()`` seconds, read only when the circuit is open or a failure is counted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .config import CircuitConfig
from .errors import ServiceUnavailable

if TYPE_CHECKING:
    from .backends import Backend

__all__ = ["FAILURE_REASONS", "Circuit", "out_reason", "unavailable"]

# rec.error values (proxy.no_response, streaming.relay) that mean "the backend failed", as the
# status page words them; "status" is a 502/503/504 answer. client_closed is the client's doing.
FAILURE_REASONS = {
    "connect": "connect error",
    "timeout": "first-byte timeout",
    "reset": "connection reset",
    "protocol": "invalid response",
    "status": "HTTP 502/503/504",
}


class Circuit:
    """Consecutive-failure counter with open / half-open / closed states for one backend."""

    __slots__ = ("config", "streak", "open_until", "trial", "reason", "opened_streak", "on_change")

    def __init__(self, config: CircuitConfig, on_change: Callable[[], None] | None = None) -> None:
        self.config = config
        self.streak = 0  # consecutive failures of real requests
        self.open_until = 0.0  # 0.0: closed; else the monotonic time the cooldown ends
        self.trial = False  # the half-open trial request is in flight
        self.reason = ""  # the last failure's reason (a FAILURE_REASONS value)
        self.opened_streak = 0  # the streak that opened it, for the status page
        self.on_change = on_change  # called when it opens or closes (the backend-up gauge)

    @property
    def is_open(self) -> bool:
        """Out of rotation: open, or half-open with its trial request in flight."""
        return self.open_until != 0.0

    def usable(self) -> bool:
        """Whether routing may consider the backend: closed, or cooled down with no trial under way."""
        return self.open_until == 0.0 or (not self.trial and time.monotonic() >= self.open_until)

    def enter(self) -> bool:
        """Claim the right to send one request now; a half-open circuit lets exactly one through."""
        if self.open_until == 0.0:
            return True
        if self.trial or time.monotonic() < self.open_until:
            return False
        self.trial = True
        return True

    def succeeded(self) -> None:
        """A response relayed whole (or a trial's good head): the backend works."""
        self.streak = 0
        if self.open_until != 0.0:
            self._close()

    def failed(self, error: str) -> None:
        """A failed attempt (``error`` is the record's reason); opens the circuit at the threshold."""
        self.streak += 1
        self.reason = FAILURE_REASONS.get(error, error)
        if self.trial:  # the trial failed: another full cooldown
            self.trial = False
            self.open_until = time.monotonic() + self.config.cooldown
        elif self.open_until == 0.0 and self.streak >= self.config.failures:
            self.opened_streak = self.streak
            self.open_until = time.monotonic() + self.config.cooldown
            if self.on_change is not None:
                self.on_change()

    def abandoned(self) -> None:
        """The trial ended without a verdict (the client left first): let the next request try."""
        self.trial = False

    def probe_ok(self) -> None:
        """A successful health probe closes a circuit whose cooldown has passed."""
        if self.open_until != 0.0 and not self.trial and time.monotonic() >= self.open_until:
            self.streak = 0
            self._close()

    def retry_in(self) -> float:
        """Seconds until the next trial may go (0 when closed or already due)."""
        if self.open_until == 0.0:
            return 0.0
        return max(self.open_until - time.monotonic(), 0.0)

    def describe(self) -> str:
        """Why the backend is out, for the status page ("" when closed)."""
        if self.open_until == 0.0:
            return ""
        if self.trial:
            return f"circuit half-open: trial request in flight (after {self.reason})"
        wait = math.ceil(self.retry_in())
        retry = f"retry in {wait}s" if wait > 0 else "next request is the trial"
        return f"circuit open: {self.opened_streak} consecutive failures ({self.reason}), {retry}"

    def _close(self) -> None:
        self.open_until = 0.0
        self.trial = False
        if self.on_change is not None:
            self.on_change()


def out_reason(backend: Backend) -> str | None:
    """Why a backend gets no requests: its health probes, or its circuit (with when it is retried)."""
    if not backend.up:
        return "health probe failing"
    if backend.circuit is not None and backend.circuit.is_open:
        return backend.circuit.describe()
    return None


def unavailable(requested: str, backends: Iterable[Backend]) -> ServiceUnavailable:
    """The 503 when every backend of a model is out: why each one is, and when to retry."""
    reasons, retry = [], 10.0
    for b in backends:
        reasons.append(f"{b.name}: {out_reason(b) or 'busy'}")
        circuit = b.circuit
        if b.up and circuit is not None and circuit.is_open:
            retry = min(retry, circuit.retry_in())
    return ServiceUnavailable(
        f"no healthy backend for model '{requested}' ({'; '.join(reasons)})",
        headers={"Retry-After": str(max(1, math.ceil(retry)))},
    )
