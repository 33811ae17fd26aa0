"""Slack threads as Ratchet conversations.

A thread (team, channel, thread_ts) maps to one conversation id (uuid5), so
every reply in it lands in the same conversation. The turns of recent threads
are kept in a bounded in-process LRU and sent as context with each new
question; after a restart a thread starts afresh.
"""

from __future__ import annotations

import re
import uuid
from collections import OrderedDict

NAMESPACE = uuid.UUID("6f1c2e1a-5a57-4a0e-9d3b-7261746368e7")  # fixed: ids must stay stable

_MENTION = re.compile(r"<@[UW][A-Z0-9]+(?:\|[^>]*)?>")
_LINK = re.compile(r"<((?:https?|mailto):[^|>]+)(?:\|([^>]+))?>")
_SPECIAL = re.compile(r"<!(here|channel|everyone)(?:\|[^>]*)?>")


def conversation_id(team_id: str, channel: str, thread_ts: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"slack:{team_id}:{channel}:{thread_ts}")


def clean_text(text: str, bot_user_id: str | None = None) -> str:
    """A Slack message as the model should read it: no bot mention, plain links."""
    if bot_user_id:
        text = re.sub(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>", "", text)
    text = _MENTION.sub(lambda m: "@" + m.group(0)[2:-1].split("|")[-1], text)
    text = _LINK.sub(lambda m: m.group(2) or m.group(1), text)
    text = _SPECIAL.sub(lambda m: "@" + m.group(1), text)
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return text.strip()


class ThreadHistory:
    """The last ``max_turns`` messages of the ``max_threads`` most recent threads."""

    def __init__(self, *, max_threads: int = 2000, max_turns: int = 12) -> None:
        self._threads: OrderedDict[uuid.UUID, list[dict[str, str]]] = OrderedDict()
        self._max_threads = max_threads
        self._max_turns = max_turns

    def messages(self, conv: uuid.UUID, question: str) -> list[dict[str, str]]:
        """The chat messages to send for ``question`` in thread ``conv``."""
        return [*self._threads.get(conv, []), {"role": "user", "content": question}]

    def record(self, conv: uuid.UUID, question: str, answer: str) -> None:
        turns = self._threads.pop(conv, [])
        turns += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        self._threads[conv] = turns[-self._max_turns :]
        while len(self._threads) > self._max_threads:
            self._threads.popitem(last=False)
