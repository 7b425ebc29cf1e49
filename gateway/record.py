"""One request's facts, filled in by the proxy as they become known, read by metrics and the access log.

A plain mutable record (one per request, never shared) so the hot path sets attributes instead of
calling into observers; observers read it once, when the request is over.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RequestRecord"]


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    method: str
    path: str
    remote: str  # client address after trusted_proxies
    via_proxy: bool  # the direct peer is a trusted proxy (its X-Forwarded-For is extended, not replaced)
    start: float  # loop.time() when the request arrived
    endpoint: str = "other"  # route template (e.g. "/v1/chat/completions"), never the raw path
    client: str = "anonymous"  # configured key/user name, never a secret
    model: str = ""  # routed model name (config/alias/discovered), "" when unknown
    backend: str = ""  # configured backend name, "" when none was chosen
    status: int = 0  # status sent to the client; 499 when the client went away first
    streamed: bool = False
    bytes_out: int = 0  # body bytes relayed to the client
    first_byte: float | None = None  # loop.time() of the first body byte relayed
    end: float | None = None  # loop.time() of the last byte (or of the failure)
    prompt_tokens: int | None = None  # None: unknown (not reported), never guessed as 0
    completion_tokens: int | None = None
    eval_count: int | None = None  # Ollama generation speed inputs
    eval_duration_ns: int | None = None
    error: str = ""  # short reason when something failed: connect, timeout, reset, protocol, status, client_closed
    response_headers: dict[str, str] | None = None  # added to the response by the relay (x-ratelimit-*)

    @property
    def ttfb(self) -> float | None:
        return None if self.first_byte is None else self.first_byte - self.start

    @property
    def duration(self) -> float | None:
        return None if self.end is None else self.end - self.start
