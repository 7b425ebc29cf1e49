"""One try of a request at one backend, and what the backend's circuit breaker and the placement
view learn from it (``circuit.py``, ``placement.py``).

``proxy.forward`` tells an ``Attempt`` what happened, in order: ``enter`` (may the request go to
this backend now?), then ``no_response`` or ``head``, then ``relayed`` when the answer has been
copied (or cut), and ``close`` always. The verdicts: a failure to get a head (connect error,
reset, first-byte timeout) or a 502/503/504 head counts against the circuit at once; a good head
decides a half-open circuit's trial at once; any other request's success is judged once its whole
answer is relayed. An attempt that ends with no verdict (the client left) gives its trial back.
"""

from __future__ import annotations

from typing import Any

from .backends import Backend
from .circuit import FAILURE_REASONS
from .placement import LOADING_ENDPOINTS

__all__ = ["RETRY_STATUSES", "Attempt"]

RETRY_STATUSES = frozenset({502, 503, 504})  # answers that fail a circuit and may be retried elsewhere


class Attempt:
    __slots__ = ("answered", "circuit", "loaded", "placed", "trial")

    def __init__(self, backend: Backend) -> None:
        self.circuit = backend.circuit
        self.loaded = backend.loaded
        self.trial = False  # a half-open circuit's trial awaiting its verdict
        self.placed = ""  # the model key the placement view counts as in use on this backend
        self.answered: bool | None = None  # the head's verdict; None: there was none (the client left)

    def enter(self, backend: Backend, model: str, endpoint: str, keep_alive: Any) -> bool:
        """Whether the request may go to ``backend`` now (False: its circuit opened, or its one trial
        was taken, since routing chose it); a model sent to an Ollama box is in use there from now."""
        circuit = self.circuit
        if circuit is not None:
            if not circuit.enter():
                return False
            self.trial = circuit.trial
        if self.loaded is not None and model and endpoint in LOADING_ENDPOINTS:
            self.placed = backend.lookup_key(model)
            self.loaded.begin(self.placed, model, keep_alive)
        return True

    def no_response(self, reason: str) -> None:
        """No head came back (``reason``: the request record's error: connect, reset, timeout, ...)."""
        self.answered = False
        if self.circuit is not None:
            self.circuit.failed(reason)
            self.trial = False

    def head(self, status: int) -> bool:
        """A response head came back; returns whether it is an answer (not a 502/503/504)."""
        answered = self.answered = status not in RETRY_STATUSES
        circuit = self.circuit
        if circuit is not None:
            if not answered:
                circuit.failed("status")
            elif self.trial:
                circuit.succeeded()
            self.trial = False
        return answered

    def relayed(self, error: str) -> None:
        """The answer was copied to the client (``error`` empty) or cut (the record's error)."""
        circuit = self.circuit
        if circuit is not None and self.answered:
            if not error:
                circuit.succeeded()
            elif error in FAILURE_REASONS:
                circuit.failed(error)

    def close(self, error: str) -> None:
        """Always, last: a trial without a verdict is given back; the model is no longer in use here."""
        if self.trial and self.circuit is not None:
            self.circuit.abandoned()
        if self.placed and self.loaded is not None:
            self.loaded.end(self.placed, failed=self.answered is False or error in FAILURE_REASONS)
