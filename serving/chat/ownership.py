"""Who owns a conversation: a user may only add turns to their own.

A conversation belongs to the user whose reply started it. The API knows this
from two places: the conversations this process started or checked (an LRU in
memory, so a conversation is guarded before the consumer has stored it), and
the ``conversations`` table (for conversations other processes started). A
conversation id that neither knows is new: the caller may start it, and owns it
from then on. Slack threads are shared by their members and do not go through
this check (``ChatService.reply``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections import OrderedDict

from psycopg_pool import ConnectionPool

from serving.errors import Forbidden

logger = logging.getLogger(__name__)


class ForeignConversation(Forbidden):
    code = "foreign_conversation"

    def __init__(self, conversation_id: uuid.UUID) -> None:
        super().__init__(
            f"conversation {conversation_id} belongs to another user; "
            "leave conversation_id out to start a new one"
        )


class ConversationOwners:
    """Refuses turns in another user's conversation (:class:`ForeignConversation`, 403)."""

    def __init__(self, pool: ConnectionPool | None, *, max_entries: int = 100_000) -> None:
        self._pool = pool
        self._owners: OrderedDict[uuid.UUID, str] = OrderedDict()
        self._max_entries = max_entries
        self._lock = threading.Lock()

    def remember(self, conversation_id: uuid.UUID, user_id: str) -> None:
        """``user_id`` started (or was found to own) ``conversation_id``."""
        with self._lock:
            self._owners.setdefault(conversation_id, user_id)
            self._owners.move_to_end(conversation_id)
            while len(self._owners) > self._max_entries:
                self._owners.popitem(last=False)

    async def check(self, conversation_id: uuid.UUID, user_id: str) -> None:
        """Raise ForeignConversation unless ``user_id`` may add to ``conversation_id``."""
        with self._lock:
            owner = self._owners.get(conversation_id)
        if owner is None and self._pool is not None:
            owner = await asyncio.to_thread(self._stored_owner, conversation_id)
        if owner is not None and owner != user_id:
            logger.warning(
                "user %s refused in conversation %s of another user", user_id, conversation_id
            )
            raise ForeignConversation(conversation_id)
        self.remember(conversation_id, user_id)

    def _stored_owner(self, conversation_id: uuid.UUID) -> str | None:
        assert self._pool is not None
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT user_id FROM conversations WHERE id = %s", (conversation_id,)
            ).fetchone()
        return None if row is None else str(row[0])
