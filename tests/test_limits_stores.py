"""The shared counter stores on their own: a real SQLite file and a real redis-server.

Two ``SharedStore`` objects on one file (or one Redis) stand for two workers (or two replicas);
the end-to-end tests through real gateways are in test_limits_shared.py.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gateway.config import LimitsConfig
from gateway.limits.factory import make_store
from gateway.limits.redis_store import KEY_PREFIX, RedisCounters
from gateway.limits.shared import SharedStore, StoreUnavailable
from gateway.limits.sqlite_store import SqliteCounters
from gateway.limits.store import Window
from gateway.limits.store_gauge import StoreUpCollector

from .redis_server import RedisServer, redis_server_or_skip

FAST_SYNC = 0.05


def window(key: str, limit: int, seconds: float = 60.0) -> Window:
    return Window(key, limit, time.time() + seconds)


async def admit(store: SharedStore, w: Window, n: int) -> int:
    """Ask ``n`` times for one unit the way the engine does (fast path, else the slow one)."""
    admitted = 0
    for _ in range(n):
        result = store.try_take(w)
        if result is None:
            result = await store.take(w)
        admitted += result
    return admitted


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


@pytest.fixture
async def redis() -> AsyncIterator[RedisServer]:
    server = await redis_server_or_skip()
    yield server
    await server.stop()


# --------------------------------------------------------------------------- SQLite


async def test_sqlite_two_workers_on_one_file_share_one_allowance(tmp_path: Path) -> None:
    path = str(tmp_path / "state" / "gateway-state.sqlite3")
    a = SharedStore(SqliteCounters(path), sync_interval=FAST_SYNC)
    b = SharedStore(SqliteCounters(path), sync_interval=FAST_SYNC)
    await a.start()
    await b.start()
    try:
        w = window("rpm:alice:1", 100)
        admitted = await asyncio.gather(admit(a, w, 80), admit(b, w, 80))
        assert sum(admitted) <= 100
        assert sum(admitted) >= 100 - 2 * w.limit // 20  # at most one unspent batch stranded per worker
        assert a.status() == (True, "sqlite: ok")
    finally:
        await a.close()
        await b.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("SELECT used FROM counters WHERE key = 'rpm:alice:1'").fetchone() == (100,)


async def test_sqlite_token_charges_are_seen_by_the_other_worker_and_survive_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "gateway-state.sqlite3")
    a = SharedStore(SqliteCounters(path), sync_interval=FAST_SYNC)
    b = SharedStore(SqliteCounters(path), sync_interval=FAST_SYNC)
    await a.start()
    await b.start()
    day = window("tpd:alice:20000", 1000, seconds=3600)
    try:
        a.charge(day, 300)
        assert a.used(day) == 300  # at once, locally
        assert b.used(day) == 0
        await eventually(lambda: b.used(day) == 300)  # within a sync or two
        b.charge(day, 50)
        await eventually(lambda: a.used(day) == 350)
        a.charge(day, 25)  # not yet synced when the store closes: close flushes it
    finally:
        await a.close()
        await b.close()
    again = SharedStore(SqliteCounters(path), sync_interval=FAST_SYNC)
    await again.start()
    try:
        assert again.used(day) == 375
    finally:
        await again.close()


async def test_no_file_until_something_is_counted_and_a_bad_path_falls_back_to_local_counters(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sub" / "state.sqlite3"
    store = make_store(LimitsConfig(state_path=str(path)))
    assert isinstance(store, SharedStore) and store.name == "sqlite"
    await store.start()
    try:
        await asyncio.sleep(FAST_SYNC * 3)
        assert store.status() == (True, "sqlite: ok") and not path.exists()  # no limit used: no file
        assert await admit(store, window("rpm:x:1", 10), 1) == 1
        assert path.exists()
    finally:
        await store.close()
    (tmp_path / "blocker").write_text("a file, not a folder")
    broken = SharedStore(SqliteCounters(str(tmp_path / "blocker" / "state.sqlite3")), sync_interval=FAST_SYNC)
    await broken.start()
    try:
        assert await admit(broken, window("rpm:x:1", 3), 5) == 3  # still limited, in memory
        ok, detail = broken.status()
        assert not ok and detail.startswith("sqlite unreachable (") and "serving on local counters" in detail
    finally:
        await broken.close()


# --------------------------------------------------------------------------- Redis


async def test_redis_two_replicas_share_one_allowance_atomically(redis: RedisServer) -> None:
    a = SharedStore(RedisCounters(redis.url), sync_interval=FAST_SYNC)
    b = SharedStore(RedisCounters(redis.url), sync_interval=FAST_SYNC)
    await a.start()
    await b.start()
    try:
        w = window("rpm:alice:7", 600)
        admitted = await asyncio.gather(admit(a, w, 500), admit(b, w, 500))
        assert 600 - 2 * 30 <= sum(admitted) <= 600
        # the key lives as long as the window (plus a minute's grace), not for ever
        client = a.counters._client
        assert int(await client.get(KEY_PREFIX + "rpm:alice:7")) == 600
        ttl = await client.pttl(KEY_PREFIX + "rpm:alice:7")
        assert 60_000 < ttl <= 120_000
        tokens = window("tpm:alice:7", 10_000)
        a.charge(tokens, 120)
        b.charge(tokens, 80)
        await eventually(lambda: a.used(tokens) == 200 and b.used(tokens) == 200)
    finally:
        await a.close()
        await b.close()


async def test_redis_state_is_loaded_at_start(redis: RedisServer) -> None:
    a = SharedStore(RedisCounters(redis.url), sync_interval=FAST_SYNC)
    await a.start()
    day = window("tpd:bob:20000", 5000, seconds=3600)
    a.charge(day, 4999)
    await a.close()
    b = SharedStore(RedisCounters(redis.url), sync_interval=FAST_SYNC)
    await b.start()
    try:
        assert b.used(day) == 4999  # the first request after a restart already sees it
    finally:
        await b.close()


async def test_redis_outage_under_allow_counts_locally_then_shares_again(redis: RedisServer) -> None:
    store = SharedStore(RedisCounters(redis.url), on_error="allow", sync_interval=FAST_SYNC)
    gauge = StoreUpCollector(lambda: store)
    await store.start()
    try:
        w = window("rpm:carol:1", 1000)
        assert await admit(store, w, 10) == 10
        assert next(iter(gauge.collect())).samples[0].value == 1.0
        await redis.stop()
        tokens = window("tpm:carol:1", 10_000)
        store.charge(tokens, 70)  # charged while Redis is away: must reach it later
        await eventually(lambda: not store.status()[0])
        ok, detail = store.status()
        assert detail.startswith("redis unreachable (") and "serving on local counters" in detail
        assert next(iter(gauge.collect())).samples[0].value == 0.0
        assert await admit(store, w, 50) == 50  # keeps serving, locally counted
        await redis.start()  # an empty Redis (no persistence), same port
        await eventually(lambda: store.status() == (True, "redis: ok"))
        await eventually(lambda: store.book.entries["tpm:carol:1"].pending == 0)
        client = store.counters._client
        await eventually(lambda: True)
        assert int(await client.get(KEY_PREFIX + "tpm:carol:1")) == 70
        before = int(await client.get(KEY_PREFIX + "rpm:carol:1") or 0)
        assert await admit(store, w, 100) == 100
        assert int(await client.get(KEY_PREFIX + "rpm:carol:1")) > before  # leases come from Redis again
    finally:
        await store.close()
    assert list(StoreUpCollector(lambda: None).collect()) == []  # no limits: no series


async def test_redis_outage_under_deny_refuses_with_retry_after_then_recovers(redis: RedisServer) -> None:
    store = SharedStore(RedisCounters(redis.url), on_error="deny", sync_interval=FAST_SYNC)
    await store.start()
    try:
        w = window("rpm:dave:1", 1000)
        assert await admit(store, w, 5) == 5
        await redis.stop()
        await eventually(lambda: not store.status()[0])
        with pytest.raises(StoreUnavailable) as refused:
            store.try_take(w)
        assert refused.value.status == 503
        assert int(refused.value.headers["Retry-After"]) >= 1
        assert "refusing requests with 503" in refused.value.message
        assert "limits.on_redis_error: deny" in refused.value.message
        with pytest.raises(StoreUnavailable):
            store.used(window("tpm:dave:1", 100))
        await redis.start()
        await eventually(lambda: store.status()[0])
        assert await admit(store, w, 5) == 5
    finally:
        await store.close()


async def test_redis_unreachable_at_start_is_reported_and_joined_later(redis: RedisServer) -> None:
    await redis.stop()
    store = SharedStore(RedisCounters(redis.url), on_error="allow", sync_interval=FAST_SYNC)
    await store.start()
    try:
        assert not store.status()[0]
        assert await admit(store, window("rpm:erin:1", 3), 4) == 3
        await redis.start()
        await eventually(lambda: store.status()[0])
    finally:
        await store.close()


async def test_refills_of_many_windows_share_one_round_trip(tmp_path: Path) -> None:
    rounds: list[int] = []

    class Counted(SqliteCounters):
        async def grant(self, items: list[tuple[str, int, int, float]]) -> list[tuple[int, int]]:
            rounds.append(len(items))
            return await super().grant(items)

    store = SharedStore(Counted(str(tmp_path / "state.sqlite3")), sync_interval=FAST_SYNC)
    await store.start()
    try:
        windows = [window(f"rpm:client{i}:1", 600) for i in range(50)]
        assert all(store.try_take(w) is None for w in windows)  # 50 windows, nothing leased yet
        assert await asyncio.gather(*(store.take(w) for w in windows)) == [True] * 50
        assert rounds == [50]  # one transaction for all of them
        assert all(store.book.entries[w.key].left == 29 for w in windows)  # a batch of 30 each, one spent
    finally:
        await store.close()
