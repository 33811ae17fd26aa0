"""Streaming an answer into Slack by editing one message (``chat.update``).

Slack allows about one ``chat.update`` per second per channel, so the text is
pushed at most every ``interval_s`` seconds, or sooner once ``min_chars`` new
characters have arrived (never more often than a quarter of the interval),
and once more with the finished answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from serving.slack import blocks

logger = logging.getLogger(__name__)


class MessageStreamer:
    """Owns one placeholder message and keeps it up to date with a growing text."""

    def __init__(
        self,
        client: AsyncWebClient,
        *,
        channel: str,
        thread_ts: str,
        interval_s: float = 1.0,
        min_chars: int = 400,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._channel = channel
        self._thread_ts = thread_ts
        self._interval = interval_s
        self._min_chars = min_chars
        self._clock = clock
        self.ts: str | None = None
        self._shown = ""
        self._last = 0.0
        self.updates = 0

    async def start(self) -> str:
        """Post the placeholder in the thread; returns its ts."""
        resp = await self._client.chat_postMessage(
            channel=self._channel,
            thread_ts=self._thread_ts,
            text=blocks.THINKING,
            blocks=blocks.streaming_blocks(""),
        )
        self.ts = str(resp["ts"])
        self._last = self._clock()
        return self.ts

    def _due(self, text: str) -> bool:
        elapsed = self._clock() - self._last
        new_chars = len(text) - len(self._shown)
        if new_chars <= 0 or not text.strip():
            return False
        return elapsed >= self._interval or (
            new_chars >= self._min_chars and elapsed >= self._interval / 4
        )

    async def push(self, text: str) -> None:
        """The answer so far; updates the message when an update is due."""
        if not self._due(text):
            return
        try:
            await self._update(
                text=blocks.fallback_text(text), blocks=blocks.streaming_blocks(text)
            )
            self._shown = text
        except SlackApiError as exc:  # e.g. rate limited: skip this frame, the final one counts
            logger.warning("chat.update while streaming failed: %s", exc.response.get("error"))
        self._last = self._clock()

    async def finish(self, text: str, answer: list[dict[str, Any]]) -> None:
        await self._update(text=blocks.fallback_text(text), blocks=answer)

    async def fail(self, message: str) -> None:
        """Show ``message`` in place of the answer (or in a new message if none was posted)."""
        if self.ts is None:
            await self._client.chat_postMessage(
                channel=self._channel,
                thread_ts=self._thread_ts,
                text=message,
                blocks=blocks.error_blocks(message),
            )
        else:
            await self._update(text=message, blocks=blocks.error_blocks(message))

    async def _update(self, *, text: str, blocks: list[dict[str, Any]]) -> None:
        assert self.ts is not None, "start() first"
        await self._client.chat_update(channel=self._channel, ts=self.ts, text=text, blocks=blocks)
        self.updates += 1
