"""The limits engine's pure parts without a server: window arithmetic, reset wording, the memory
store, the engine's decisions under a hand-moved clock, and ``gateway check``'s lines."""

from __future__ import annotations

import asyncio
import math
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gateway.auth import ANONYMOUS, Principal
from gateway.cli import main
from gateway.config import RateLimits
from gateway.configfile import parse_config
from gateway.errors import TooManyRequests
from gateway.limits import (
    ClientUsage,
    CounterStore,
    Limiter,
    MemoryStore,
    Pending,
    Window,
    WindowLengths,
    make_limiter,
)
from gateway.limits.report import describe_limits, effective_limit_lines
from gateway.limits.windows import format_reset, retry_after_seconds, window_bounds

from .fakes import make_record

MINUTE0 = 1_800_000_000.0


# --------------------------------------------------------------------------- windows


def test_window_bounds_align_to_the_clock() -> None:
    assert window_bounds(MINUTE0, 60) == (30_000_000, MINUTE0 + 60)
    assert window_bounds(MINUTE0 + 59.999, 60) == (30_000_000, MINUTE0 + 60)
    assert window_bounds(MINUTE0 + 60, 60) == (30_000_001, MINUTE0 + 120)
    day, end = window_bounds(MINUTE0 + 37, 86400)
    assert end % 86400 == 0 and 0 < end - (MINUTE0 + 37) <= 86400  # the next UTC midnight


@pytest.mark.parametrize(
    ("wait", "text"),
    [
        (0, "0s"),
        (-3, "0s"),
        (0.0004, "1ms"),
        (0.25, "250ms"),
        (0.9985, "999ms"),
        (0.9994, "1s"),
        (1, "1s"),
        (6, "6s"),
        (6.01, "7s"),
        (59.5, "1m0s"),
        (90, "1m30s"),
        (3600, "1h0m0s"),
        (18182, "5h3m2s"),
    ],
)
def test_format_reset(wait: float, text: str) -> None:
    assert format_reset(wait) == text


_UNITS = {"h": 3600, "m": 60, "s": 1}


def _parse_reset(text: str) -> float:
    if text.endswith("ms"):
        return int(text[:-2]) / 1000
    return sum(int(n) * _UNITS[u] for n, u in re.findall(r"(\d+)([hms])", text))


@given(st.floats(min_value=0.0005, max_value=10 * 86400, allow_nan=False))
def test_reset_and_retry_after_never_promise_too_early(wait: float) -> None:
    assert _parse_reset(format_reset(wait)) >= wait - 1e-6  # rounded up: never earlier than the real reset
    assert _parse_reset(format_reset(wait)) < wait + 1.001
    assert retry_after_seconds(wait) >= max(wait - 1e-6, 1)
    assert retry_after_seconds(wait) == max(1, math.ceil(wait - 1e-9))


def test_window_lengths_must_be_positive() -> None:
    with pytest.raises(ValueError):
        WindowLengths(minute=0)
    with pytest.raises(ValueError):
        WindowLengths(minute=2.5)


# --------------------------------------------------------------------------- memory store


async def test_memory_store_counts_within_the_limit_and_drops_ended_windows() -> None:
    now = [100.0]
    store = MemoryStore(clock=lambda: now[0])
    assert isinstance(store, CounterStore)
    w = Window("rpm:alice:1", 2, 160.0)
    assert store.try_take(w) is True
    assert await store.take(w) is True
    assert store.try_take(w) is False  # at the limit: nothing counted
    assert store.used(w) == 2
    big = Window("tpm:alice:1", 5, 160.0)
    assert store.try_take(big, 6) is False and store.used(big) == 0
    store.charge(big, 9)  # charging ignores the limit (tokens are already spent)
    store.charge(Window("rpd:alice:0", 0, 86400.0), 1)
    assert store.used(big) == 9
    assert store.status() == (True, "memory: 3 counter(s) in this process")
    assert store.sweep() == 0
    now[0] = 160.0
    assert store.sweep() == 2  # both minute windows ended; the day window stays
    assert store.used(w) == 0 and store.used(Window("rpd:alice:0", 0, 86400.0)) == 1
    await store.start()
    await store.start()  # idempotent
    await store.close()
    await store.close()


# --------------------------------------------------------------------------- the engine


def _limiter(limits: RateLimits, now: list[float], auth: bool = True) -> tuple[Limiter, Principal, list[str]]:
    raw: dict[str, object] = {"backends": [{"name": "b", "url": "http://127.0.0.1:1"}]}
    if auth:
        raw["auth"] = {"api_keys": [{"name": "alice", "hash": "sha256:" + "0" * 64}]}
    config = parse_config(raw, "<test>")
    refused: list[str] = []
    limiter = Limiter(
        config, MemoryStore(lambda: now[0]), on_refused=lambda c, limit: refused.append(f"{c}:{limit}"),
        clock=lambda: now[0],
    )  # fmt: skip
    return limiter, Principal("alice", admin=False, models=("*",), limits=limits), refused


def admit(limiter: Limiter, principal: Principal, remote: str = "x") -> tuple[ClientUsage, dict[str, str] | None]:
    """One admission: the client it was counted for, and the headers it set for the response."""
    rec = make_record(remote=remote)
    client = limiter.admit(principal, rec)
    assert isinstance(client, ClientUsage)
    return client, rec.response_headers


def test_requests_per_minute_then_the_next_window() -> None:
    now = [MINUTE0 + 50.5]
    limiter, alice, refused = _limiter(RateLimits(requests_per_minute=2), now)
    first, headers = admit(limiter, alice, "127.0.0.1")
    assert headers == {
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "10s",
    }
    limiter.finish(first, make_record())
    limiter.finish(admit(limiter, alice, "127.0.0.1")[0], make_record())
    with pytest.raises(TooManyRequests) as caught:
        admit(limiter, alice, "127.0.0.1")
    assert caught.value.headers["Retry-After"] == "10"  # 9.5 s, rounded up
    assert caught.value.headers["retry-after-ms"] == "9500"
    assert caught.value.message == "rate limit exceeded for 'alice': requests_per_minute=2; resets in 10s"
    assert refused == ["alice:requests_per_minute"]
    now[0] = MINUTE0 + 60  # exactly when Retry-After said
    assert admit(limiter, alice, "127.0.0.1")[1] == {
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "1m0s",
    }


def test_a_refused_request_counts_against_nothing() -> None:
    now = [MINUTE0]
    limiter, alice, _ = _limiter(RateLimits(requests_per_minute=5, max_concurrent=1), now)
    held, _ = admit(limiter, alice)
    for _ in range(3):
        with pytest.raises(TooManyRequests):
            admit(limiter, alice)
    limiter.finish(held, make_record())
    headers = admit(limiter, alice)[1]
    assert headers is not None and headers["x-ratelimit-remaining-requests"] == "3"


def test_token_headers_describe_the_budget_with_less_left() -> None:
    now = [MINUTE0 + 30]
    limiter, alice, _ = _limiter(RateLimits(tokens_per_minute=100, tokens_per_day=1000), now)
    a, headers = admit(limiter, alice)
    assert headers == {
        "x-ratelimit-limit-tokens": "100",
        "x-ratelimit-remaining-tokens": "100",
        "x-ratelimit-reset-tokens": "30s",
    }
    limiter.finish(a, make_record(prompt_tokens=900, completion_tokens=50))  # over the minute's budget: charged whole
    now[0] = MINUTE0 + 60
    b, headers = admit(limiter, alice)
    assert headers is not None and headers["x-ratelimit-limit-tokens"] == "1000"  # the day has 50 left
    assert headers["x-ratelimit-remaining-tokens"] == "50"
    limiter.finish(b, make_record(completion_tokens=50))
    with pytest.raises(TooManyRequests) as caught:
        admit(limiter, alice)
    day_end = window_bounds(now[0], 86400)[1]
    assert caught.value.headers["Retry-After"] == str(math.ceil(day_end - now[0]))


def test_unknown_token_counts_charge_nothing() -> None:
    now = [MINUTE0]
    limiter, alice, _ = _limiter(RateLimits(tokens_per_minute=1), now)
    limiter.finish(admit(limiter, alice)[0], make_record())  # the backend reported no usage
    limiter.finish(admit(limiter, alice)[0], make_record(prompt_tokens=1))
    with pytest.raises(TooManyRequests):
        admit(limiter, alice)


def test_anonymous_callers_by_address_and_ipv6_prefix() -> None:
    now = [MINUTE0]
    limiter, _, refused = _limiter(RateLimits(), now, auth=False)
    limiter.default = RateLimits(requests_per_minute=1)
    for remote in ("10.0.0.1", "10.0.0.2", "2001:db8::1", "::ffff:10.0.0.3"):
        admit(limiter, ANONYMOUS, remote)
    for remote in ("10.0.0.1", "2001:db8::2", "10.0.0.3"):
        with pytest.raises(TooManyRequests):
            admit(limiter, ANONYMOUS, remote)
    assert refused == ["anonymous:requests_per_minute"] * 3
    rows = {row["address"]: row for row in limiter.usage()}
    assert set(rows) == {"10.0.0.1", "10.0.0.2", "2001:db8::/64", "10.0.0.3"}
    assert rows["2001:db8::/64"]["requests_today"] == 1


def test_reloaded_limits_apply_to_the_same_counters() -> None:
    now = [MINUTE0]
    limiter, alice, _ = _limiter(RateLimits(requests_per_minute=1), now)
    limiter.finish(admit(limiter, alice)[0], make_record())
    raised = Principal("alice", admin=False, models=("*",), limits=RateLimits(requests_per_minute=2))
    headers = admit(limiter, raised)[1]
    assert headers is not None and headers["x-ratelimit-remaining-requests"] == "0"


class UndecidedStore(MemoryStore):
    """A shared store whose local lease is always used up: every take needs the slow path."""

    name = "undecided"

    def __init__(self) -> None:
        super().__init__()
        self.slow_takes = 0

    def try_take(self, w: Window, amount: int = 1) -> bool | None:  # type: ignore[override]
        return None

    async def take(self, w: Window, amount: int = 1) -> bool:
        self.slow_takes += 1
        await asyncio.sleep(0)  # a round trip
        return super().try_take(w, amount)


async def test_pending_admissions_settle_on_the_store() -> None:
    now = [MINUTE0]
    limiter, alice, refused = _limiter(RateLimits(requests_per_minute=1, max_concurrent=5), now)
    store = limiter.store = UndecidedStore()
    rec = make_record()
    pending = limiter.admit(alice, rec)
    assert isinstance(pending, Pending) and rec.response_headers is None
    client = await limiter.settle(pending, rec)
    assert rec.response_headers is not None and rec.response_headers["x-ratelimit-remaining-requests"] == "0"
    second = limiter.admit(alice, make_record())
    assert isinstance(second, Pending)
    with pytest.raises(TooManyRequests):
        await limiter.settle(second, make_record())
    assert client.in_flight == 1  # the refused one gave its slot back
    assert store.slow_takes == 2 and refused == ["alice:requests_per_minute"]


def test_no_limits_anywhere_means_no_limiter() -> None:
    base = {"backends": [{"name": "b", "url": "http://127.0.0.1:1"}]}
    assert make_limiter(parse_config(base, "<t>")) is None
    assert make_limiter(parse_config({**base, "limits": {"default": {"max_queued": 3}}}, "<t>")) is None
    key = {"name": "k", "hash": "sha256:" + "0" * 64, "limits": {"tokens_per_day": 5}}
    assert make_limiter(parse_config({**base, "auth": {"api_keys": [key]}}, "<t>")) is not None
    assert make_limiter(parse_config({**base, "limits": {"default": {"max_concurrent": 1}}}, "<t>")) is not None


# --------------------------------------------------------------------------- gateway check


def test_check_prints_each_clients_effective_limits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "backends": [{"name": "desktop", "url": "http://127.0.0.1:11434"}],
                "limits": {"default": {"requests_per_minute": 30, "tokens_per_day": 100000}},
                "auth": {
                    "api_keys": [
                        {"name": "ci", "hash": "sha256:" + "1" * 64, "limits": {"max_concurrent": 2}, "share": 0.5},
                        {"name": "app", "hash": "sha256:" + "2" * 64},
                    ],
                    "basic_users": [{"name": "ann", "password_hash": "$2b$12$" + "a" * 53, "share": 2}],
                },
            }
        )
    )
    assert main(["check", "-c", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == [
        "limits: default: requests_per_minute=30 tokens_per_day=100000",
        "limits: key 'ci' (its own): requests_per_minute=30 tokens_per_day=100000 max_concurrent=2, share 0.5",
        "limits: key 'app' (the default): requests_per_minute=30 tokens_per_day=100000, share 1",
        "limits: user 'ann' (the default): requests_per_minute=30 tokens_per_day=100000, share 2",
    ]


def test_check_lines_without_auth() -> None:
    config = parse_config({"backends": [{"name": "b", "url": "http://127.0.0.1:1"}]}, "<t>")
    assert effective_limit_lines(config) == [
        "limits: anonymous callers, each source address (IPv6: each /64): unlimited"
    ]
    assert describe_limits(RateLimits(max_queued=4)) == "max_queued=4"
