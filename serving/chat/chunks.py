"""JSON of one stream's ``chat.completion.chunk`` objects, written fast.

Every chunk of a stream repeats the same id, model and ratchet fields; only the
choices differ. :class:`ChunkWriter` serialises that shared part once, through
the wire model, and writes each content delta (one per token) around it. The
bytes are exactly what ``ChatCompletionChunk(...).model_dump_json(exclude_none=True)``
writes (strings go through the same pydantic-core serialiser); the rarer chunks
(role, finish, usage) still go through the wire model itself.

:func:`stream_chunks` is the whole stream of one request, in OpenAI's order.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

from pydantic_core import to_json

from serving.backends import ChoiceDelta
from serving.chat.prepared import PreparedAB, PreparedChat
from serving.chat.protocol import ChatCompletionChunk, ChunkChoice, DeltaMessage

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


async def stream_chunks(
    prep: PreparedChat | PreparedAB,
    deltas: AsyncIterator[list[ChoiceDelta]],
    *,
    include_usage: bool = False,
    footnotes: str = "",
) -> AsyncIterator[bytes]:
    """OpenAI chunks, each as the JSON of its ``ChatCompletionChunk`` (``exclude_none``):
    a role chunk per choice (with the citations and, for an A/B request, ``ab``),
    content deltas, a finish chunk per choice, then (if asked) a usage chunk with
    no choices. ``deltas`` is the request's generation (it runs as this is iterated);
    ``footnotes`` (the sources as text) is a last content delta of every choice."""
    writer = ChunkWriter(
        id=prep.id,
        created=prep.created,
        model=prep.model_version,
        message_id=prep.message_ids[0],
        model_version=prep.model_version,
        conversation_id=prep.conversation_id,
    )
    yield writer.chunk(
        [
            ChunkChoice(
                index=i,
                delta=DeltaMessage(role="assistant", content=""),
                message_id=prep.message_ids[i],
            )
            for i in range(prep.n)
        ],
        citations=prep.citations,
        ab=prep.ab,
    )
    # One choice per chunk, content then a separate finish chunk, as OpenAI sends them
    # (LangChain reads only choices[0] of each chunk).
    async for step in deltas:
        for d in step:
            if d.text:
                yield writer.content(d.index, d.text)
            if d.finish_reason is not None:
                if footnotes:
                    yield writer.content(d.index, footnotes)
                finish = ChunkChoice(
                    index=d.index,
                    delta=DeltaMessage(),
                    finish_reason=d.finish_reason,
                    message_id=prep.message_ids[d.index],
                )
                yield writer.chunk([finish])
    if include_usage:
        yield writer.chunk([], usage=prep.usage())
