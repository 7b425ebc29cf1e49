"""Window counters in a SQLite file: shared by ``--workers`` on one machine, kept across restarts.

One table, ``counters(key, used, expires_at)``, in WAL mode (readers never wait for the writer).
It is visited once per lease refill or per sync, never per request (``shared.SharedStore``), and
each visit is one short transaction (``BEGIN IMMEDIATE``: workers take turns on SQLite's own file
lock) that commits without an fsync (``synchronous = NORMAL``): 20-150 µs, run inline on the
event loop. Measured, that is several times cheaper than a hop to a thread, whose GIL hand-over
costs the loop ~0.5 ms when it is busy. What can take long, the WAL checkpoint (it fsyncs) and
the deletion of ended windows, runs in a thread of its own with its own connection.
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

__all__ = ["SqliteCounters"]

BUSY_TIMEOUT_MS = 2000  # another worker holding the write lock (for microseconds, normally): wait at most this
WAL_LIMIT = 4 * 1024 * 1024  # the WAL file is cut back to this after a checkpoint
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS counters ("
    " key TEXT PRIMARY KEY, used INTEGER NOT NULL, expires_at REAL NOT NULL) WITHOUT ROWID"
)
UPSERT = (
    "INSERT INTO counters (key, used, expires_at) VALUES (?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET used = used + excluded.used"
)


class SqliteCounters:
    """``SharedCounters`` over a SQLite file (``limits.state_path``), created on ``connect``."""

    name = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None  # the event loop's connection
        self._thread: ThreadPoolExecutor | None = None  # maintenance: checkpoints, pruning
        self._maintenance_db: sqlite3.Connection | None = None  # used in that thread only
        self._needed = False  # something was counted: the file must exist from now on

    async def _run(self, fn: Any, *args: Any) -> Any:
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-sqlite")
        return await asyncio.get_running_loop().run_in_executor(self._thread, partial(fn, *args))

    # ------------------------------------------------------------------ synchronous parts

    def _connection(self) -> sqlite3.Connection:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across a crash of the process
            db.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT}")
            db.execute(SCHEMA)
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _open(self) -> None:
        """Open the file, creating it and its folder: done by the first count, so no limit means no file."""
        if self._db is None:
            db = self._connection()
            db.execute("PRAGMA wal_autocheckpoint = 0")  # checkpoints fsync: the maintenance thread does them
            self._db = db

    def _db_or_open(self) -> sqlite3.Connection:
        self._open()
        assert self._db is not None
        return self._db

    def _exists(self) -> bool:
        return self._db is not None or self._needed or Path(self.path).exists()

    def _check(self) -> None:
        if self._exists():
            self._open()

    def _load(self, now: float) -> dict[str, tuple[int, float]]:
        if not self._exists():
            return {}
        rows = self._db_or_open().execute("SELECT key, used, expires_at FROM counters WHERE expires_at > ?", (now,))
        return {key: (int(used), float(exp)) for key, used, exp in rows}

    def _grant(self, items: list[tuple[str, int, int, float]]) -> list[tuple[int, int]]:
        self._needed = True
        db = self._db_or_open()
        out = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for key, limit, want, expires_at in items:
                used = self._count(db, key)
                granted = max(0, min(want, limit - used))
                if granted:
                    db.execute(UPSERT, (key, granted, expires_at))
                out.append((granted, used + granted))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return out

    def _add(self, items: list[tuple[str, int, float]]) -> dict[str, int]:
        self._needed = True
        db = self._db_or_open()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(UPSERT, items)
            totals = {key: self._count(db, key) for key, _, _ in items}
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return totals

    @staticmethod
    def _count(db: sqlite3.Connection, key: str) -> int:
        row = db.execute("SELECT used FROM counters WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _read(self, keys: list[str]) -> dict[str, int]:
        if not self._exists():  # nobody counted anything yet
            return dict.fromkeys(keys, 0)
        db = self._db_or_open()
        return {key: self._count(db, key) for key in keys}

    def _maintain(self, now: float) -> None:
        """In the maintenance thread: drop ended windows, fold the WAL back into the file."""
        if not Path(self.path).exists():
            return
        if self._maintenance_db is None:
            self._maintenance_db = self._connection()
        db = self._maintenance_db
        db.execute("DELETE FROM counters WHERE expires_at <= ?", (now,))
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _close_maintenance(self) -> None:
        if self._maintenance_db is not None:
            self._maintenance_db.close()
            self._maintenance_db = None

    # ------------------------------------------------------------------ SharedCounters

    async def connect(self) -> None:
        self._check()

    async def close(self) -> None:
        if self._thread is not None:
            await self._run(self._close_maintenance)
            self._thread.shutdown(wait=False)
            self._thread = None
        if self._db is not None:
            self._db.close()
            self._db = None

    async def load(self, now: float) -> dict[str, tuple[int, float]]:
        return self._load(now)

    async def grant(self, items: list[tuple[str, int, int, float]]) -> list[tuple[int, int]]:
        return self._grant(items)

    async def add(self, items: list[tuple[str, int, float]]) -> dict[str, int]:
        return self._add(items)

    async def read(self, keys: list[str]) -> dict[str, int]:
        return self._read(keys)

    async def prune(self, now: float) -> None:
        await self._run(self._maintain, now)
