"""The limits engine: admits or refuses a client's request, then charges what it used.

Per client (a key or Basic user by its configured name; anonymous callers per source address,
IPv6 by /64) and per request to a proxied endpoint:

1. ``admit`` (sync, no I/O): refuse if a token budget (per minute, per day) is already spent or
   the client is at ``max_concurrent``; then count the request against ``requests_per_minute``.
   Refusals raise ``TooManyRequests`` with ``Retry-After`` (when the request would be admitted),
   OpenAI's ``x-ratelimit-*`` headers and a message naming the limit and when it resets. An
   admitted request gets those headers for its response (``RequestRecord.response_headers``,
   which the relay sends). Only when a shared store's local lease cannot decide is the admission
   a ``Pending``: ``settle`` then awaits the store once.
2. ``finish``: when the response is over, charge its tokens (prompt + completion, exactly as the
   metrics count them) and free its concurrency slot.

The checks run in that order so a refused request never counts against anything. Counters live
in a ``CounterStore``; what this object keeps per client is only its current windows (built once
per window, not per request) and its in-flight count, which is per process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import NoReturn

from ..auth import ANONYMOUS, Principal, source_key
from ..config import ApiKeyConfig, BasicUserConfig, GatewayConfig, RateLimits
from ..errors import TooManyRequests
from ..record import RequestRecord
from .store import CounterStore, Window
from .windows import DEFAULT_LENGTHS, WindowLengths, format_reset, retry_after_seconds, window_bounds

__all__ = ["LIMIT_NAMES", "ClientUsage", "Limiter", "Pending", "has_limits"]

REQUESTS_PER_MINUTE = "requests_per_minute"
TOKENS_PER_MINUTE = "tokens_per_minute"
TOKENS_PER_DAY = "tokens_per_day"
MAX_CONCURRENT = "max_concurrent"
LIMIT_NAMES = (REQUESTS_PER_MINUTE, TOKENS_PER_MINUTE, TOKENS_PER_DAY, MAX_CONCURRENT)  # metric label values
MAX_CLIENTS = 10_000  # per-client entries kept; beyond, idle anonymous addresses are dropped
ANONYMOUS_PREFIX = "@"  # anonymous client keys are "@<address>" (IPv6: "@<prefix>/64"); names cannot clash


def has_limits(limits: RateLimits) -> bool:
    """Whether the engine enforces anything for ``limits`` (``max_queued`` is the fair queue's)."""
    return bool(
        limits.requests_per_minute or limits.tokens_per_minute or limits.tokens_per_day or limits.max_concurrent
    )


class ClientUsage:
    """One client's current windows and in-flight count in this process. Must not be copied."""

    __slots__ = ("day_end", "day_reset", "in_flight", "key", "label", "limits", "minute_end", "minute_reset", "rpd",
                 "rpm", "second", "shown", "texts", "tpd", "tpm")  # fmt: skip

    def __init__(self, key: str, label: str, shown: str, limits: RateLimits) -> None:
        self.key = key  # store key part: the configured name, or "@<address>"
        self.label = label  # metric label: the configured name or "anonymous"
        self.shown = shown  # in messages: 'alice' or 'anonymous' (127.0.0.1)
        self.limits = limits
        self.texts = (str(limits.requests_per_minute), str(limits.tokens_per_minute), str(limits.tokens_per_day))
        self.in_flight = 0
        self.minute_end = 0.0  # the windows below are rebuilt when the clock passes these
        self.day_end = 0.0
        self.rpm = self.tpm = self.tpd = self.rpd = _NO_WINDOW
        # The reset texts of the second ``second``: windows end on whole seconds, so they hold for all of it.
        self.second = -1
        self.minute_reset = self.day_reset = ""

    def set_limits(self, limits: RateLimits) -> None:
        """New limits (a reload): fresh windows on the next request, the same counters."""
        self.limits = limits
        self.texts = (str(limits.requests_per_minute), str(limits.tokens_per_minute), str(limits.tokens_per_day))
        self.minute_end = self.day_end = 0.0

    def resets(self, now: float) -> None:
        """Write ``minute_reset``/``day_reset`` for ``now`` (the engine calls it once a second, and
        on every request of a window's last second, which is written in milliseconds)."""
        self.second = int(now)
        self.minute_reset = format_reset(self.minute_end - now)
        self.day_reset = format_reset(self.day_end - now)

    def roll(self, now: float, lengths: WindowLengths) -> None:
        """Point the windows at the ones holding ``now`` (once per window, not per request)."""
        limits, key = self.limits, self.key
        self.second = -1  # the reset texts count down to the new ends
        if now >= self.minute_end:
            index, end = window_bounds(now, lengths.minute)
            self.minute_end = end
            self.rpm = Window(f"rpm:{key}:{index}", limits.requests_per_minute, end)
            self.tpm = Window(f"tpm:{key}:{index}", limits.tokens_per_minute, end)
        if now >= self.day_end:
            index, end = window_bounds(now, lengths.day)
            self.day_end = end
            # Always kept, limited or not: they are the status page's "today" (a 0 limit is never taken).
            self.tpd = Window(f"tpd:{key}:{index}", limits.tokens_per_day, end)
            self.rpd = Window(f"rpd:{key}:{index}", 0, end)


_NO_WINDOW = Window("", 0, 0.0)


class Pending:
    """An admission a shared store could not decide locally: ``Limiter.settle`` asks the store."""

    __slots__ = ("client", "window")

    def __init__(self, client: ClientUsage, window: Window) -> None:
        self.client = client
        self.window = window


class Limiter:
    """Per-client limits of one gateway; one per app, counters in ``store``."""

    def __init__(
        self,
        config: GatewayConfig,
        store: CounterStore,
        *,
        on_refused: Callable[[str, str], None] | None = None,
        lengths: WindowLengths = DEFAULT_LENGTHS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.lengths = lengths  # tests shorten the windows
        self.clock = clock  # wall clock: windows are aligned to it so processes agree
        self._on_refused = on_refused
        self._clients: dict[str, ClientUsage] = {}
        self._anonymous: dict[str, str] = {}  # remote address -> "@<address or /64>"
        self.configure(config)

    def configure(self, config: GatewayConfig) -> None:
        """Take the limits of a (re)loaded config; counters are kept (they live in the store)."""
        self.config = config
        self.default = config.limits.default

    # ----------------------------------------------------------------------- per request

    def admit(self, principal: Principal, rec: RequestRecord) -> ClientUsage | Pending:
        """Admit a request (its client) or raise ``TooManyRequests``; pair every admission with ``finish``.

        Sets ``rec.response_headers`` to the ``x-ratelimit-*`` headers of the client's limits.
        """
        limits = principal.limits or self.default
        if principal is ANONYMOUS:
            key = self._anonymous.get(rec.remote)
            if key is None:
                key = self._anonymous_key(rec.remote)
        else:
            key = principal.name
        client = self._clients.get(key)
        if client is None or client.limits is not limits:
            client = self._client(key, principal, limits)
        now = self.clock()
        if now >= client.minute_end or now >= client.day_end:
            client.roll(now, self.lengths)
        store = self.store
        tpd = limits.tokens_per_day
        tpm = limits.tokens_per_minute
        day_used = store.used(client.tpd) if tpd else 0
        minute_used = store.used(client.tpm) if tpm else 0
        if (tpd and day_used >= tpd) or (tpm and minute_used >= tpm):
            self._refuse_tokens(client, now, day_used, minute_used)
        if limits.max_concurrent and client.in_flight >= limits.max_concurrent:
            self._refuse(client, MAX_CONCURRENT, 1.0, f"max_concurrent={limits.max_concurrent} "
                         f"({client.in_flight} in progress); retry when one finishes", now)  # fmt: skip
        rpm = limits.requests_per_minute
        if rpm:
            taken = store.try_take(client.rpm)
            if taken is None:  # a shared store's lease cannot decide: ``settle`` asks the store
                client.in_flight += 1
                return Pending(client, client.rpm)
            if not taken:
                self._refuse(client, REQUESTS_PER_MINUTE, client.minute_end - now, f"requests_per_minute={rpm}", now)
        client.in_flight += 1
        store.charge(client.rpd, 1)
        if rpm or tpm or tpd:
            rec.response_headers = self._headers(client, now, day_used, minute_used)
        return client

    async def settle(self, pending: Pending, rec: RequestRecord) -> ClientUsage:
        """Decide a pending admission against the shared store; raises ``TooManyRequests`` if refused."""
        client, window = pending.client, pending.window
        try:
            taken = await self.store.take(window)
        except BaseException:
            client.in_flight -= 1
            raise
        now = self.clock()
        if not taken:
            client.in_flight -= 1
            self._refuse(client, REQUESTS_PER_MINUTE, window.expires_at - now,
                         f"requests_per_minute={window.limit}", now)  # fmt: skip
        self.store.charge(client.rpd, 1)
        rec.response_headers = self._headers(client, now, *self._tokens_used(client))
        return client

    def finish(self, client: ClientUsage, rec: RequestRecord) -> None:
        """The request is over: free its slot, charge its tokens (as the metrics count them) to the
        client's current windows (a response that outlives its window counts in the next one)."""
        client.in_flight -= 1
        tokens = (rec.prompt_tokens or 0) + (rec.completion_tokens or 0)
        if tokens:
            if client.limits.tokens_per_minute:
                self.store.charge(client.tpm, tokens)
            self.store.charge(client.tpd, tokens)

    # ----------------------------------------------------------------------- answers

    def _tokens_used(self, client: ClientUsage) -> tuple[int, int]:
        """(today's, this minute's) tokens, 0 for a budget the client does not have."""
        limits, store = client.limits, self.store
        day = store.used(client.tpd) if limits.tokens_per_day else 0
        return day, store.used(client.tpm) if limits.tokens_per_minute else 0

    def _headers(self, client: ClientUsage, now: float, day_used: int, minute_used: int) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` for the limits the client has (after counting this request).

        The ``-tokens`` trio describes whichever token budget has less left (per minute or per day).
        """
        limits = client.limits
        if int(now) != client.second or client.minute_end - now < 1:
            client.resets(now)
        texts = client.texts
        rpm, tpm, tpd = limits.requests_per_minute, limits.tokens_per_minute, limits.tokens_per_day
        if rpm:
            left = rpm - self.store.used(client.rpm)
            if not (tpm or tpd):
                return {
                    "x-ratelimit-limit-requests": texts[0],
                    "x-ratelimit-remaining-requests": str(left) if left > 0 else "0",
                    "x-ratelimit-reset-requests": client.minute_reset,
                }
        minute_left, day_left = tpm - minute_used, tpd - day_used
        if tpd and (not tpm or day_left < minute_left):
            limit, tokens_left, reset = texts[2], day_left, client.day_reset
        else:
            limit, tokens_left, reset = texts[1], minute_left, client.minute_reset
        if not rpm:
            return {
                "x-ratelimit-limit-tokens": limit,
                "x-ratelimit-remaining-tokens": str(tokens_left) if tokens_left > 0 else "0",
                "x-ratelimit-reset-tokens": reset,
            }
        return {
            "x-ratelimit-limit-requests": texts[0],
            "x-ratelimit-remaining-requests": str(left) if left > 0 else "0",
            "x-ratelimit-reset-requests": client.minute_reset,
            "x-ratelimit-limit-tokens": limit,
            "x-ratelimit-remaining-tokens": str(tokens_left) if tokens_left > 0 else "0",
            "x-ratelimit-reset-tokens": reset,
        }

    def _refuse_tokens(self, client: ClientUsage, now: float, day_used: int, minute_used: int) -> NoReturn:
        """A spent token budget: wait for the later of the spent windows to end."""
        limits = client.limits
        if limits.tokens_per_day and day_used >= limits.tokens_per_day:
            detail = f"tokens_per_day={limits.tokens_per_day} ({day_used} used today)"
            self._refuse(client, TOKENS_PER_DAY, client.day_end - now, detail, now)
        detail = f"tokens_per_minute={limits.tokens_per_minute} ({minute_used} used this minute)"
        self._refuse(client, TOKENS_PER_MINUTE, client.minute_end - now, detail, now)

    def _refuse(self, client: ClientUsage, limit: str, wait: float, detail: str, now: float) -> NoReturn:
        if self._on_refused is not None:
            self._on_refused(client.label, limit)
        headers = self._headers(client, now, *self._tokens_used(client))
        seconds = retry_after_seconds(wait)
        headers["Retry-After"] = str(seconds)
        headers["retry-after-ms"] = str(max(math.ceil(wait * 1000), 1))  # OpenAI's and Anthropic's SDKs wait this
        resets = "" if limit == MAX_CONCURRENT else f"; resets in {format_reset(wait)}"
        raise TooManyRequests(
            f"rate limit exceeded for {client.shown}: {detail}{resets}", code="rate_limit_exceeded", headers=headers
        )

    # ----------------------------------------------------------------------- clients

    def _anonymous_key(self, remote: str) -> str:
        if len(self._anonymous) >= MAX_CLIENTS:
            self._anonymous.clear()
        key = self._anonymous[remote] = ANONYMOUS_PREFIX + source_key(remote)
        return key

    def _client(self, key: str, principal: Principal, limits: RateLimits) -> ClientUsage:
        """A new client entry, or a known one whose limits changed (reload): fresh windows, same counters."""
        known = self._clients.get(key)
        if known is not None:
            known.set_limits(limits)
            return known
        if len(self._clients) >= MAX_CLIENTS:
            self._forget_idle()
        if key.startswith(ANONYMOUS_PREFIX):
            shown = f"'{principal.name}' ({key[len(ANONYMOUS_PREFIX) :]})"
        else:
            shown = f"'{principal.name}'"
        client = self._clients[key] = ClientUsage(key, principal.name, shown, limits)
        return client

    def _forget_idle(self) -> None:
        """Drop anonymous entries with nothing in flight (their counters stay in the store)."""
        for key in [k for k, c in self._clients.items() if c.in_flight == 0 and k.startswith(ANONYMOUS_PREFIX)]:
            del self._clients[key]

    def effective(self, principal: Principal) -> RateLimits:
        return principal.limits or self.default

    def counts_tokens(self, principal: Principal) -> bool:
        """Whether the client has a token budget: then its OpenAI-style streams must be asked for
        their usage (the extra chunk hidden), as ``metrics.inject_usage`` does for everyone."""
        limits = principal.limits or self.default
        return bool(limits.tokens_per_minute or limits.tokens_per_day)

    def usage(self) -> Iterator[dict[str, object]]:
        """Per client, for the status page: limits, requests and tokens today, what is left, in flight.

        Configured clients always (seen or not), anonymous addresses once seen by this process.
        """
        now = self.clock()
        auth = self.config.auth
        configured: list[tuple[str, RateLimits]] = []
        if auth is not None:
            entries: tuple[ApiKeyConfig | BasicUserConfig, ...] = (*auth.api_keys, *auth.basic_users)
            for entry in entries:
                configured.append((entry.name, entry.limits or self.default))
        seen = set()
        for name, limits in configured:
            if name in seen:
                continue
            seen.add(name)
            client = self._clients.get(name)
            if client is None or client.limits is not limits:
                client = ClientUsage(name, name, f"'{name}'", limits)
            yield self._row(client, now)
        for key, client in list(self._clients.items()):
            if key.startswith(ANONYMOUS_PREFIX):
                yield self._row(client, now)

    def _row(self, client: ClientUsage, now: float) -> dict[str, object]:
        if now >= client.minute_end or now >= client.day_end:
            client.roll(now, self.lengths)
        limits, store = client.limits, self.store
        remaining: dict[str, int] = {}
        if limits.requests_per_minute:
            remaining[REQUESTS_PER_MINUTE] = max(limits.requests_per_minute - store.used(client.rpm), 0)
        if limits.tokens_per_minute:
            remaining[TOKENS_PER_MINUTE] = max(limits.tokens_per_minute - store.used(client.tpm), 0)
        if limits.tokens_per_day:
            remaining[TOKENS_PER_DAY] = max(limits.tokens_per_day - store.used(client.tpd), 0)
        return {
            "client": client.label,
            "address": client.key[len(ANONYMOUS_PREFIX) :] if client.key.startswith(ANONYMOUS_PREFIX) else None,
            "limits": {
                REQUESTS_PER_MINUTE: limits.requests_per_minute,
                TOKENS_PER_MINUTE: limits.tokens_per_minute,
                TOKENS_PER_DAY: limits.tokens_per_day,
                MAX_CONCURRENT: limits.max_concurrent,
            },
            "requests_today": store.used(client.rpd),
            "tokens_today": store.used(client.tpd),
            "remaining": remaining,
            "in_flight": client.in_flight,
        }
