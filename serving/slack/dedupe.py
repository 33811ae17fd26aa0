"""Slack retries an event when it did not see a 200 within 3 s (``X-Slack-Retry-Num``);
each event id is answered at most once.

An in-process LRU answers the common case (a retry arriving at the same
process); the ``slack_events`` table covers several replicas and restarts.
The claim is taken before answering: a crash mid-answer loses that answer
rather than answering twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from psycopg import Error as PsycopgError
from psycopg_pool import ConnectionPool

logger = logging.getLogger(__name__)

PRUNE_EVERY = 500  # claims between deletions of old rows
PRUNE_SQL = (
    "DELETE FROM slack_events WHERE received_at < now() - interval '1 day'"  # retries: minutes
)


class EventDeduper:
    def __init__(self, pool: ConnectionPool | None, *, capacity: int = 10_000) -> None:
        self._pool = pool
        self._capacity = capacity
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = asyncio.Lock()
        self._claims = 0

    async def claim(self, event_id: str) -> bool:
        """True the first time ``event_id`` is seen (answer it), False for a repeat."""
        async with self._lock:
            if event_id in self._seen:
                self._seen.move_to_end(event_id)
                return False
            self._seen[event_id] = None
            if len(self._seen) > self._capacity:
                self._seen.popitem(last=False)
        if self._pool is None:
            return True
        try:
            return await asyncio.to_thread(self._claim_in_db, event_id)
        except PsycopgError:  # better a rare double answer than no answer
            logger.warning("slack_events unavailable; deduplicating in process only", exc_info=True)
            return True

    def _claim_in_db(self, event_id: str) -> bool:
        assert self._pool is not None
        self._claims += 1
        with self._pool.connection() as conn:
            row = conn.execute(
                "INSERT INTO slack_events (event_id) VALUES (%s)"
                " ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
                (event_id,),
            ).fetchone()
            if self._claims % PRUNE_EVERY == 0:
                conn.execute(PRUNE_SQL)
        return row is not None
