"""Slack users as Ratchet users: ``slack:<team>:<user>``, recorded in ``slack_users``.

The mapping is a pure function, so a rating can be checked against the
message id without a database read; the table only records who has used the
bot (one insert per user and process, off the event loop).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from psycopg import Error as PsycopgError
from psycopg_pool import ConnectionPool

logger = logging.getLogger(__name__)


def ratchet_user_id(team_id: str, slack_user_id: str) -> str:
    """The Ratchet user id of a Slack user (stable, and unique across workspaces)."""
    if not team_id or not slack_user_id:
        raise ValueError("a Slack user needs both a team id and a user id")
    return f"slack:{team_id}:{slack_user_id}"


def team_and_user(body: dict[str, Any]) -> tuple[str, str]:
    """The (team, user) of an interaction payload (block_actions, view_submission)."""
    user = body.get("user") or {}
    team = user.get("team_id") or (body.get("team") or {}).get("id") or ""
    return str(team), str(user.get("id") or "")


class SlackUserDirectory:
    """Maps Slack users to Ratchet user ids and records them (when a pool is given)."""

    def __init__(self, pool: ConnectionPool | None) -> None:
        self._pool = pool
        self._known: set[str] = set()

    async def resolve(self, team_id: str, slack_user_id: str) -> str:
        user_id = ratchet_user_id(team_id, slack_user_id)
        if self._pool is not None and user_id not in self._known:
            try:
                await asyncio.to_thread(self._record, team_id, slack_user_id, user_id)
                self._known.add(user_id)
            except PsycopgError:  # the mapping is derivable: answering must not depend on it
                logger.warning("could not record Slack user %s", user_id, exc_info=True)
        return user_id

    def _record(self, team_id: str, slack_user_id: str, user_id: str) -> None:
        assert self._pool is not None
        with self._pool.connection() as conn:
            conn.execute(
                "INSERT INTO slack_users (team_id, slack_user_id, user_id) VALUES (%s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                (team_id, slack_user_id, user_id),
            )
