"""Window counters in a SQLite file: shared by ``--workers`` on one machine, kept across restarts.

One table, ``counters(key, used, expires_at)``, in WAL mode (readers never wait for the writer).
Every operation is one short transaction (``BEGIN IMMEDIATE``: workers take turns, SQLite's own file
lock) on a connection owned by one thread of this process, so the event loop never waits on the
file. It is visited once per lease refill or per sync, never per request (``shared.SharedStore``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

__all__ = ["SqliteCounters"]

BUSY_TIMEOUT_MS = 5000  # another worker holding the write lock: wait this long before failing
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
        self._db: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._needed = False  # something was counted: the file must exist from now on

    async def _run(self, fn: Any, *args: Any) -> Any:
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-sqlite")
        return await asyncio.get_running_loop().run_in_executor(self._thread, partial(fn, *args))

    # ------------------------------------------------------------------ in the store's thread

    def _open(self) -> None:
        """Open the file, creating it and its folder: done by the first count, so no limit means no file."""
        if self._db is not None:
            return
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across a crash of the process
            db.execute(SCHEMA)
        except sqlite3.Error:
            db.close()
            raise
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

    def _grant(self, key: str, limit: int, want: int, expires_at: float) -> tuple[int, int]:
        self._needed = True
        db = self._db_or_open()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT used FROM counters WHERE key = ?", (key,)).fetchone()
            used = int(row[0]) if row else 0
            granted = max(0, min(want, limit - used))
            if granted:
                db.execute(UPSERT, (key, granted, expires_at))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return granted, used + granted

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

    def _prune(self, now: float) -> None:
        if self._exists():
            self._db_or_open().execute("DELETE FROM counters WHERE expires_at <= ?", (now,))

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # ------------------------------------------------------------------ SharedCounters

    async def connect(self) -> None:
        await self._run(self._check)

    async def close(self) -> None:
        if self._thread is not None:
            await self._run(self._close)
            self._thread.shutdown(wait=False)
            self._thread = None

    async def load(self, now: float) -> dict[str, tuple[int, float]]:
        result: dict[str, tuple[int, float]] = await self._run(self._load, now)
        return result

    async def grant(self, key: str, limit: int, want: int, expires_at: float) -> tuple[int, int]:
        result: tuple[int, int] = await self._run(self._grant, key, limit, want, expires_at)
        return result

    async def add(self, items: list[tuple[str, int, float]]) -> dict[str, int]:
        result: dict[str, int] = await self._run(self._add, items)
        return result

    async def read(self, keys: list[str]) -> dict[str, int]:
        result: dict[str, int] = await self._run(self._read, keys)
        return result

    async def prune(self, now: float) -> None:
        await self._run(self._prune, now)
