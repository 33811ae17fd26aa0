"""JSON of one stream's ``chat.completion.chunk`` objects, written fast.

Every chunk of a stream repeats the same id, model and ratchet fields; only the
choices differ. :class:`ChunkWriter` serialises that shared part once, through
the wire model, and writes each content delta (one per token) around it. The
bytes are exactly what ``ChatCompletionChunk(...).model_dump_json(exclude_none=True)``
writes (strings go through the same pydantic-core serialiser); the rarer chunks
(role, finish, usage) still go through the wire model itself.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic_core import to_json

from serving.chat.protocol import ChatCompletionChunk, ChunkChoice

_EMPTY_CHOICES = b'"choices":[]'


class ChunkWriter:
    """Chunks of one stream, each as JSON bytes (no SSE framing)."""

    def __init__(
        self,
        *,
        id: str,
        created: int,
        model: str,
        message_id: str,
        model_version: str,
        conversation_id: uuid.UUID,
    ) -> None:
        self._fields: dict[str, Any] = {
            "id": id,
            "created": created,
            "model": model,
            "message_id": message_id,
            "model_version": model_version,
            "conversation_id": conversation_id,
        }
        empty = self.chunk([])
        # A JSON string cannot hold an unescaped quote, so the first match is the field.
        head, found, tail = empty.partition(_EMPTY_CHOICES)
        if not found:  # the wire model changed shape: fail loudly, not with bad JSON
            raise RuntimeError(f"no {_EMPTY_CHOICES!r} in {empty!r}")
        self._head = head + b'"choices":['
        self._tail = b"]" + tail

    def chunk(self, choices: list[ChunkChoice], **extra: Any) -> bytes:
        """Any chunk, through the wire model."""
        model = ChatCompletionChunk(choices=choices, **self._fields, **extra)
        return model.model_dump_json(exclude_none=True).encode()

    def content(self, index: int, text: str) -> bytes:
        """The chunk of choice ``index``'s new ``text``: ``{"index":…,"delta":{"content":…}}``."""
        return b'%s{"index":%d,"delta":{"content":%s}}%s' % (
            self._head,
            index,
            to_json(text),
            self._tail,
        )
