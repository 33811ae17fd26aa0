"""Training-run records and the cycle lock.

One cycle runs at a time across machines: the cycle holds a session-level
Postgres advisory lock on its own connection for its whole duration. A killed
process loses its connection and with it the lock, so whoever takes the lock
next knows every run still marked ``running`` is stale and marks it failed.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg

from training.errors import LockBusy
from training.registry import to_json

logger = logging.getLogger(__name__)

CYCLE_LOCK = 7_400_100  # advisory lock key held while a training cycle runs


@contextmanager
def cycle_lock(database_url: str, *, wait: bool = False, poll_s: float = 2.0) -> Iterator[None]:
    """Hold the training-cycle lock; raise :class:`LockBusy` (or wait) if another cycle has it."""
    conn = psycopg.connect(database_url, autocommit=True)
    try:
        announced = False
        while True:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (CYCLE_LOCK,)).fetchone()
            if row and row[0]:
                break
            holder = running_run(conn)
            detail = (
                f" (run {holder[0]} started {holder[1]:%Y-%m-%d %H:%M:%S %Z})" if holder else ""
            )
            if not wait:
                raise LockBusy(f"another training cycle is running{detail}; try again later")
            if not announced:
                logger.info("waiting for the running training cycle to finish%s", detail)
                announced = True
            time.sleep(poll_s)
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (CYCLE_LOCK,))
    finally:
        conn.close()


def running_run(conn: psycopg.Connection) -> tuple[uuid.UUID, datetime] | None:
    row = conn.execute(
        "SELECT id, started_at FROM training_runs WHERE status = 'running'"
        " ORDER BY started_at DESC LIMIT 1"
    ).fetchone()
    return (row[0], row[1]) if row else None


def fail_stale_runs(conn: psycopg.Connection) -> list[uuid.UUID]:
    """Mark runs left ``running`` by a dead process as failed. Call while holding the cycle lock."""
    rows = conn.execute(
        "UPDATE training_runs SET status = 'failed', finished_at = now(),"
        " error = 'interrupted: the process running it went away'"
        " WHERE status = 'running' RETURNING id"
    ).fetchall()
    conn.commit()
    for (run_id,) in rows:
        logger.warning("marked stale training run %s as failed", run_id)
    return [r[0] for r in rows]


def start_run(
    conn: psycopg.Connection,
    *,
    run_id: uuid.UUID,
    algo: str,
    config: dict[str, Any],
    logs_path: str,
) -> uuid.UUID:
    """Record a run as ``running`` (committed at once, so a crash leaves a trace)."""
    conn.execute(
        "INSERT INTO training_runs (id, status, algo, config, logs_path)"
        " VALUES (%s, 'running', %s, %s, %s)",
        (run_id, algo, to_json(config), logs_path),
    )
    conn.commit()
    return run_id


def update_run(conn: psycopg.Connection, run_id: uuid.UUID, **fields: Any) -> None:
    """Set columns of a run (jsonb columns take dicts)."""
    allowed = {
        "status",
        "finished_at",
        "watermark",
        "metrics",
        "timings",
        "plot_path",
        "candidate_version",
        "error",
    }
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"unknown run fields {sorted(unknown)}")
    sets = []
    values: list[Any] = []
    for name, value in fields.items():
        sets.append(f"{name} = %s")
        values.append(to_json(value) if name in ("metrics", "timings") else value)
    conn.execute(f"UPDATE training_runs SET {', '.join(sets)} WHERE id = %s", (*values, run_id))


def fail_run(conn: psycopg.Connection, run_id: uuid.UUID, error: str) -> None:
    conn.rollback()
    update_run(
        conn, run_id, status="failed", finished_at=datetime.now().astimezone(), error=error[:2000]
    )
    conn.commit()


def last_watermark(conn: psycopg.Connection) -> datetime | None:
    """Feedback up to this time was used by the last successful run."""
    row = conn.execute(
        "SELECT watermark FROM training_runs WHERE status = 'succeeded' AND watermark IS NOT NULL"
        " ORDER BY finished_at DESC LIMIT 1"
    ).fetchone()
    return row[0] if row else None


def last_succeeded(conn: psycopg.Connection) -> dict[str, Any] | None:
    """The latest succeeded run's ``id``, ``config`` and ``metrics`` (None: none has)."""
    cur = conn.execute(
        "SELECT id, config, metrics FROM training_runs WHERE status = 'succeeded'"
        " ORDER BY finished_at DESC LIMIT 1"
    )
    row = cur.fetchone()
    return None if row is None else {"id": row[0], "config": row[1], "metrics": row[2]}


def get_run(conn: psycopg.Connection, run_id: Any) -> dict[str, Any] | None:
    cur = conn.execute("SELECT * FROM training_runs WHERE id = %s", (run_id,))
    row = cur.fetchone()
    if row is None:
        return None
    names = [d.name for d in cur.description or []]
    return dict(zip(names, row, strict=True))
