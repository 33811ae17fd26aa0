"""How far the feedback store is complete: :func:`committed_through`.

``stored_at`` is ``now()`` of the writing transaction, i.e. its
*start*, not its commit: a consumer batch that started before a snapshot but
commits after it carries a ``stored_at`` below records the snapshot did see. A
watermark taken as "the newest ``created_at`` seen" would then pass it, and the
next ``since`` query would skip it forever. So a snapshot reads only up to
:func:`committed_through` (``until``): a time before the start of every
transaction still open in this database (``pg_stat_activity.xact_start``, or
``query_start`` of a statement whose transaction is just starting) and before
the clock when it was asked (read a moment before the sessions, so one that
has just taken its start time has published it). Every row with ``stored_at`` at or below it is
committed and visible to any statement that starts afterwards; records above it
are left for the next snapshot, not skipped. A snapshot's watermark is the
newest ``created_at`` it returned (at most ``until``), so consecutive snapshots
``(since, until]`` neither skip nor repeat a record. The cost: records stored
while a long transaction stays open wait until it ends (a warning names the
session); the reader must see other roles' sessions (the same role as the
consumer, or ``pg_read_all_stats``), else a warning says so. (A commit-ordered
stamp would need ``track_commit_timestamp``, a server setting, or watermarks
that are transaction snapshots rather than times; this keeps ``stored_at`` and
the ``timestamptz`` watermark of ``training_runs``.)
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

import psycopg
from psycopg.rows import dict_row

from feedback.errors import FeedbackError
from ratchet.db import given_or_own

logger = logging.getLogger(__name__)

# Sessions of this database that may still commit rows: those in a transaction, and
# those running a statement (its transaction may be starting: ``query_start`` is
# then that transaction's ``now()``). Autovacuum writes no feedback.
_OPEN_TRANSACTIONS = """
SELECT pid, application_name, state,
       query = '<insufficient privilege>' AS hidden,
       least(xact_start, CASE WHEN state = 'active' THEN query_start END) AS started
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND backend_type NOT IN ('autovacuum worker', 'autovacuum launcher')
"""
# A session publishes "active" a moment after taking its statement's start time;
# waiting this long between reading the clock and the sessions covers that moment.
_SETTLE_S = 0.05
# An open transaction older than this holds new records back: say which one.
_LAGGING = timedelta(minutes=5)


def committed_through(conn: psycopg.Connection | None = None) -> datetime:
    """A ``created_at`` up to which the store is complete: every row with ``stored_at``
    at or below it is committed, and visible to any statement started after this
    returns. Pass it as ``until`` so that a watermark taken from the records read
    never passes a batch still being written (see the module docstring).

    Use it on an autocommit or READ COMMITTED connection: a REPEATABLE READ
    transaction would keep reading from a snapshot older than this answer."""
    with given_or_own(conn) as c:
        clock: datetime = c.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        if not c.autocommit:
            level = c.execute("SHOW transaction_isolation").fetchone()[0]  # type: ignore[index]
            if level != "read committed":
                raise FeedbackError(
                    f"committed_through needs an autocommit or READ COMMITTED connection,"
                    f" not a {level} transaction (its snapshot would predate the answer)"
                )
        time.sleep(_SETTLE_S)
        c.execute("SELECT pg_stat_clear_snapshot()")  # fresh activity, even mid-transaction
        with c.cursor(row_factory=dict_row) as cur:
            sessions = cur.execute(_OPEN_TRANSACTIONS).fetchall()
    hidden = sum(1 for s in sessions if s["hidden"])
    if hidden:
        logger.warning(
            "%d sessions of other roles are hidden from this role: feedback they are"
            " writing may be missed; read with the consumer's role or grant"
            " pg_read_all_stats",
            hidden,
        )
    open_ = [s for s in sessions if s["started"] is not None]
    if not open_:
        return clock - timedelta(microseconds=1)
    oldest = min(open_, key=lambda s: s["started"])
    if clock - oldest["started"] > _LAGGING:
        logger.warning(
            "a transaction open since %s (pid %s, %r, %s) holds back feedback stored"
            " since then until it ends",
            oldest["started"],
            oldest["pid"],
            oldest["application_name"],
            oldest["state"],
        )
    return min(clock, oldest["started"]) - timedelta(microseconds=1)
