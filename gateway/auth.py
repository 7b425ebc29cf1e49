"""Who is calling: turns request headers into a Principal, or raises Unauthorized / TooManyRequests.

Policy only: the middleware that calls ``authenticate`` and renders the error is elsewhere. One
Authenticator per loaded config; it never changes after construction (a reload builds a new one
and swaps the reference, which also drops every cached verification).

Cost model, because bcrypt is deliberately slow (~250 ms at cost 12) and this sits in front of
every request:

* ``sha256:`` keys: one sha256 and a dict lookup, every time. No cache needed.
* bcrypt hashes: checked in a small thread pool, never on the event loop. A success is cached for
  ``cache_ttl`` under an HMAC of the presented secret (random per-process key, so the cache holds
  nothing an attacker could use); a hit costs one HMAC and a dict lookup.
* Wrong credentials cannot buy unbounded CPU: each source (IPv4 address, IPv6 /64) has a token
  bucket of failures (``failure_burst``, one back every ``failure_refill`` s; empty -> 429); at most
  ``max_pending`` bcrypt checks are queued or running in total (beyond -> 429, Retry-After 1);
  a repeated wrong secret hits a short negative cache; concurrent requests with the same secret
  share one check. Cached and sha256 successes still pass from a throttled source, so a flood from
  a shared NAT cannot lock out a key that works.
* Unknown Basic users get a dummy check at the highest configured cost, so timing does not tell
  which user names exist; it is budgeted and queued like any other check.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import math
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Generic, Literal, NoReturn, TypeVar

from multidict import CIMultiDictProxy

from .config import AuthConfig, RateLimits
from .credentials import Credential, extract_credential, model_allowed
from .errors import TooManyRequests, Unauthorized
from .secrets import bcrypt_cost, verify_bcrypt

__all__ = ["ANONYMOUS", "DEFAULT_TUNING", "AuthTuning", "Authenticator", "FailureReason", "Principal"]

REALM = "gateway"
FailureReason = Literal["missing", "malformed", "invalid", "throttled"]
# A syntactically valid bcrypt salt+digest that no password produces; the cost is filled in.
_DUMMY_TAIL = "5nmsIIOz51bFubcKLN2Mp.Y8kWwYj6aNE5mduHf0FRLsv0B8e13ju"
_MISSING_HINT = "send 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
_MALFORMED = (
    "Malformed credentials: expected one of 'Authorization: Bearer <key>', "
    "'Authorization: Basic <base64(user:password)>', 'x-api-key: <key>', 'api-key: <key>'"
)
V = TypeVar("V")
Candidates = tuple[tuple[str, "Principal | None"], ...]  # (bcrypt hash, who it proves; None = dummy)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. ``name`` is a configured name, safe for logs and metric labels."""

    name: str
    admin: bool
    models: tuple[str, ...]
    limits: RateLimits | None = None
    share: float = 1.0  # fair-queue weight

    def may_use(self, model: str) -> bool:
        return model_allowed(self.models, model)


ANONYMOUS = Principal("anonymous", admin=True, models=("*",))  # auth off: loopback-only is enforced elsewhere


@dataclass(frozen=True, slots=True)
class AuthTuning:
    """Bounds on verification work and memory; the defaults suit one gateway process."""

    workers: int = 2  # bcrypt threads (bcrypt releases the GIL)
    max_pending: int = 4  # bcrypt checks queued or running, all clients together
    cache_size: int = 10_000
    cache_ttl: float = 300.0
    negative_cache_size: int = 10_000
    negative_cache_ttl: float = 30.0
    failure_burst: int = 10  # failures a source may make at once ...
    failure_refill: float = 6.0  # ... then one more every this many seconds
    max_sources: int = 10_000  # failure buckets kept; least recently failed evicted first

    def __post_init__(self) -> None:
        sizes = (self.workers, self.max_pending, self.cache_size, self.negative_cache_size)
        if min(*sizes, self.failure_burst, self.max_sources) < 1:
            raise ValueError("AuthTuning sizes must be at least 1")
        if self.failure_refill <= 0:
            raise ValueError("AuthTuning.failure_refill must be positive")


DEFAULT_TUNING = AuthTuning()


class _TtlCache(Generic[V]):
    """Bounded LRU with a fixed lifetime per entry; loop thread only."""

    __slots__ = ("_clock", "_data", "_size", "_ttl")

    def __init__(self, size: int, ttl: float, clock: Callable[[], float]) -> None:
        self._data: OrderedDict[bytes, tuple[float, V]] = OrderedDict()
        self._size, self._ttl, self._clock = size, ttl, clock

    def get(self, key: bytes) -> V | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[0] <= self._clock():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return item[1]

    def peek(self, key: bytes) -> V | None:
        """Like ``get`` without refreshing the entry's place: for hot paths that can afford a FIFO."""
        item = self._data.get(key)
        if item is None or item[0] <= self._clock():
            return None
        return item[1]

    def put(self, key: bytes, value: V) -> None:
        self._data[key] = (self._clock() + self._ttl, value)
        self._data.move_to_end(key)
        if len(self._data) > self._size:
            self._data.popitem(last=False)


class _FailureBudget:
    """Per-source token buckets of allowed failures; a full bucket is not stored at all."""

    __slots__ = ("_buckets", "_burst", "_clock", "_refill", "_size")

    def __init__(self, burst: int, refill: float, size: int, clock: Callable[[], float]) -> None:
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # source -> (tokens, when)
        self._burst, self._refill, self._size, self._clock = burst, refill, size, clock

    def _tokens(self, source: str, now: float) -> float:
        item = self._buckets.get(source)
        if item is None:
            return float(self._burst)
        return min(float(self._burst), item[0] + (now - item[1]) / self._refill)

    def retry_after(self, source: str) -> int | None:
        """None when ``source`` may attempt a check now, else whole seconds to wait."""
        tokens = self._tokens(source, self._clock())
        return None if tokens >= 1 else max(1, math.ceil((1 - tokens) * self._refill))

    def take(self, source: str) -> None:
        now = self._clock()
        self._buckets[source] = (max(0.0, self._tokens(source, now) - 1), now)
        self._buckets.move_to_end(source)
        if len(self._buckets) > self._size:
            self._buckets.popitem(last=False)

    def refund(self, source: str) -> None:
        if source not in self._buckets:
            return
        now = self._clock()
        tokens = self._tokens(source, now) + 1
        if tokens >= self._burst:
            del self._buckets[source]
        else:
            self._buckets[source] = (tokens, now)


def source_key(remote: str) -> str:
    """What the failure budget counts by: the IPv4 address, or the IPv6 /64 (one host's share)."""
    try:
        ip = ipaddress.ip_address(remote)
    except ValueError:
        return remote[:128]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return f"{ipaddress.IPv6Address(int(ip) >> 64 << 64)}/64"
    return str(ip)


def _yield_to_the_loop() -> None:
    """Run bcrypt threads at a lower priority than the event loop (Linux: per-thread nice).

    bcrypt releases the GIL, so its threads compete with the loop for CPU; at nice 10 a flood of
    wrong credentials takes what the loop leaves idle instead of stalling the clients it serves.
    """
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + 10)


def _check(verify: Callable[[str, str], bool], secret: str, candidates: Candidates) -> Principal | None:
    """Runs in the pool. Every candidate's check runs in full, even the dummy one."""
    for hashed, principal in candidates:
        if verify(secret, hashed) and principal is not None:
            return principal
    return None


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # total: any str encodes


class Authenticator:
    """Credential checking for one config. Use from the event loop thread only; ``close()`` when replaced."""

    def __init__(
        self,
        config: AuthConfig | None,
        *,
        on_failure: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        tuning: AuthTuning = DEFAULT_TUNING,
        verify: Callable[[str, str], bool] = verify_bcrypt,
    ) -> None:
        config_ = config if config is not None else AuthConfig()
        self._enabled = config is not None
        self._on_failure = on_failure
        self._verify = verify
        self._max_pending = tuning.max_pending
        self._tag_key = secrets.token_bytes(32)
        self._sha256: dict[bytes, tuple[bytes, Principal]] = {}
        bcrypt_keys: list[tuple[str, Principal | None]] = []
        for key in config_.api_keys:
            principal = Principal(key.name, key.admin, key.models, key.limits, key.share)
            if key.hash.startswith("sha256:"):
                digest = bytes.fromhex(key.hash.removeprefix("sha256:"))
                self._sha256.setdefault(digest, (digest, principal))  # duplicates: the first entry wins
            else:
                bcrypt_keys.append((key.hash, principal))
        self._bcrypt_keys: Candidates = tuple(bcrypt_keys)
        self._users: dict[str, tuple[str, Principal]] = {}
        for user in config_.basic_users:
            principal = Principal(user.name, user.admin, user.models, user.limits, user.share)
            self._users.setdefault(user.name, (user.password_hash, principal))
        cost = max((bcrypt_cost(h) or 0 for h, _ in self._users.values()), default=0) or 12
        self._dummy: Candidates = ((f"$2b${cost:02d}${_DUMMY_TAIL}", None),)
        self._challenge = f'Basic realm="{REALM}", charset="UTF-8"' if self._users else f'Bearer realm="{REALM}"'
        self._cache: _TtlCache[Principal] = _TtlCache(tuning.cache_size, tuning.cache_ttl, clock)
        self._by_header: _TtlCache[Principal] = _TtlCache(tuning.cache_size, tuning.cache_ttl, clock)
        self._negative: _TtlCache[bool] = _TtlCache(tuning.negative_cache_size, tuning.negative_cache_ttl, clock)
        self._budget = _FailureBudget(tuning.failure_burst, tuning.failure_refill, tuning.max_sources, clock)
        self._inflight: dict[bytes, asyncio.Future[Principal | None]] = {}
        self._pending = 0
        needs_pool = bool(self._bcrypt_keys or self._users)
        self._pool = (
            ThreadPoolExecutor(tuning.workers, "gateway-bcrypt", initializer=_yield_to_the_loop) if needs_pool else None
        )
        self._closed = False

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def basic_enabled(self) -> bool:
        return bool(self._users)

    @property
    def challenge(self) -> str:
        """The ``WWW-Authenticate`` value sent with every 401."""
        return self._challenge

    def cached(self, headers: Mapping[str, str]) -> Principal | None:
        """The Principal of an Authorization header accepted before, or None: the fast path.

        A client that keeps sending the same accepted header costs one keyed digest of its value
        and one cache lookup, no parsing. Only for one Authorization header on aiohttp's headers.
        """
        return self._known(headers, self._header_tag(headers))

    async def authenticate(self, headers: Mapping[str, str], remote: str) -> Principal:
        """The caller's Principal; raises Unauthorized (401) or TooManyRequests (429)."""
        if not self._enabled:
            return ANONYMOUS
        tag = self._header_tag(headers)
        known = self._known(headers, tag)
        if known is not None:
            return known
        principal, cred = await self._authenticate(headers, remote)
        if tag is not None and cred.source == "Authorization":
            self._by_header.put(tag, principal)
        return principal

    def _header_tag(self, headers: Mapping[str, str]) -> bytes | None:
        """A keyed digest of the Authorization header's value (aiohttp's headers only), or None."""
        if type(headers) is not CIMultiDictProxy or (header := headers.get("Authorization")) is None:
            return None
        return hashlib.blake2b(_utf8(header), key=self._tag_key, digest_size=32, person=b"header").digest()

    def _known(self, headers: Mapping[str, str], tag: bytes | None) -> Principal | None:
        if tag is None:
            return None
        known = self._by_header.peek(tag)
        if known is not None and len(headers.getall("Authorization")) == 1:  # type: ignore[attr-defined]
            return known
        return None

    async def _authenticate(self, headers: Mapping[str, str], remote: str) -> tuple[Principal, Credential]:
        cred = extract_credential(headers)
        if cred is None:
            basic = " or HTTP Basic credentials" if self._users else ""
            self._unauthorized("missing", f"Missing credentials: {_MISSING_HINT}{basic}")
        if isinstance(cred, str):  # "malformed"
            self._unauthorized("malformed", _MALFORMED)
        secret = _utf8(cred.secret)
        if cred.kind == "key" and self._sha256:
            digest = hashlib.sha256(secret).digest()
            found = self._sha256.get(digest)
            if found is not None and hmac.compare_digest(found[0], digest):
                return found[1], cred
        tag = self._tag(cred, secret)
        principal = self._cache.get(tag)
        if principal is not None:
            return principal, cred
        source = source_key(remote)
        wait = self._budget.retry_after(source)
        if wait is not None:
            self._throttled(wait, f"Too many failed authentication attempts; retry in {wait} s")
        candidates = self._candidates(cred)
        if not candidates or self._negative.get(tag) is not None:
            self._budget.take(source)
            self._invalid(cred)
        return await self._verify_slow(cred, tag, source, candidates), cred

    def close(self) -> None:
        """Stop the pool's threads once queued checks finish; later bcrypt checks get a 429."""
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    # ------------------------------------------------------------------ internals

    def _tag(self, cred: Credential, secret: bytes) -> bytes:
        user = _utf8(cred.username)
        message = b"%s\0%d\0%s\0%s" % (cred.kind.encode(), len(user), user, secret)
        return hashlib.blake2b(message, key=self._tag_key, digest_size=32).digest()  # a keyed MAC, one C call

    def _candidates(self, cred: Credential) -> Candidates:
        if cred.kind == "key":
            return self._bcrypt_keys
        if not self._users:
            return ()  # no user can match: nothing to hide, nothing to check
        user = self._users.get(cred.username)
        return ((user[0], user[1]),) if user is not None else self._dummy

    async def _verify_slow(self, cred: Credential, tag: bytes, source: str, candidates: Candidates) -> Principal:
        future = self._inflight.get(tag)
        leader = future is None
        if future is None:  # concurrent requests with the same secret share one check
            if self._pending >= self._max_pending or self._closed or self._pool is None:
                self._throttled(1, "Too many authentication checks in progress; retry shortly")
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(self._pool, _check, self._verify, cred.secret, candidates)
            self._pending += 1
            self._inflight[tag] = future
            future.add_done_callback(partial(self._finished, tag))
            # One check costs one token, reserved now so a burst cannot overdraw, given back on
            # success; requests that share the check spend nothing (a valid key's first burst passes).
            self._budget.take(source)
        principal = await asyncio.shield(future)  # a client that leaves does not free the slot early
        if principal is None:
            self._invalid(cred)
        if leader:
            self._budget.refund(source)
        return principal

    def _finished(self, tag: bytes, future: asyncio.Future[Principal | None]) -> None:
        """On the loop when the thread is really done: free the slot, remember the answer."""
        self._pending -= 1
        self._inflight.pop(tag, None)
        if future.cancelled() or future.exception() is not None:
            return  # awaiters see the error; nothing is cached
        principal = future.result()
        if principal is None:
            self._negative.put(tag, True)
        else:
            self._cache.put(tag, principal)

    def _report(self, reason: FailureReason) -> None:
        if self._on_failure is not None:
            self._on_failure(reason)

    def _unauthorized(self, reason: FailureReason, message: str) -> NoReturn:
        self._report(reason)
        raise Unauthorized(message, code="invalid_api_key", headers={"WWW-Authenticate": self._challenge})

    def _invalid(self, cred: Credential) -> NoReturn:
        if cred.kind == "basic":
            self._unauthorized("invalid", "Invalid username or password")
        where = f" (from the {cred.source} header)" if cred.source else ""
        self._unauthorized("invalid", f"Invalid API key{where}")

    def _throttled(self, retry_after: int, message: str) -> NoReturn:
        self._report("throttled")
        raise TooManyRequests(message, code="rate_limit_exceeded", headers={"Retry-After": str(retry_after)})
