"""The durable local spool: events the broker has not acknowledged yet.

One SQLite file (``<spool_dir>/events.sqlite3``) in WAL mode with
``synchronous=FULL``, so every committed append is fsynced. Rows are kept in
arrival order (``seq``) and deleted only after the broker has acknowledged
them; replay therefore resends in order, and a crash between the send and the
delete only causes a duplicate, which the consumer drops by ``event_id``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SPOOL_FILE = "events.sqlite3"


@dataclass(frozen=True)
class SpooledEvent:
    seq: int
    topic: str
    key: bytes
    value: bytes


@dataclass(frozen=True)
class SpoolStatus:
    path: Path
    backlog: int
    oldest_at: float | None
    newest_at: float | None
    size_bytes: int


class Spool:
    """Append-only, fsynced queue of encoded events; safe to share between threads."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / SPOOL_FILE
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS spool ("
            " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " topic TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL,"
            " spooled_at REAL NOT NULL)"
        )
        self._count = self._query_count()

    def _query_count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM spool").fetchone()[0])

    def append(self, records: list[tuple[str, bytes, bytes]]) -> None:
        """Append ``(topic, key, value)`` records in one fsynced transaction."""
        if not records:
            return
        now = time.time()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT INTO spool (topic, key, value, spooled_at) VALUES (?, ?, ?, ?)",
                    [(t, k, v, now) for t, k, v in records],
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._count += len(records)

    def peek(self, limit: int) -> list[SpooledEvent]:
        """The oldest ``limit`` events, in order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, topic, key, value FROM spool ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [SpooledEvent(int(s), t, bytes(k), bytes(v)) for s, t, k, v in rows]

    def delete_through(self, seq: int) -> None:
        """Drop every event up to and including ``seq`` (they were acknowledged)."""
        with self._lock:
            self._conn.execute("DELETE FROM spool WHERE seq <= ?", (seq,))
            self._count = int(self._conn.execute("SELECT count(*) FROM spool").fetchone()[0])

    def __len__(self) -> int:
        return self._count

    def refresh(self) -> int:
        """Re-read the count (another process may share the spool)."""
        self._count = self._query_count()
        return self._count

    def status(self) -> SpoolStatus:
        with self._lock:
            count, oldest, newest = self._conn.execute(
                "SELECT count(*), min(spooled_at), max(spooled_at) FROM spool"
            ).fetchone()
        size = sum(p.stat().st_size for p in self.path.parent.glob(SPOOL_FILE + "*"))
        return SpoolStatus(self.path, int(count), oldest, newest, size)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
