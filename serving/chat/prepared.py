"""Requests the chat service has started: one generation (:class:`PreparedChat`), or
an A/B request on two versions (:class:`PreparedAB`), and :class:`Reply`, the
finished answer of the simple API.

An A/B request with a canary loaded runs one single-choice generation on each
version; :func:`merge_deltas` interleaves their deltas as they come and renames
each part's choice to its place in the response (which the service drew at
random, so a position says nothing about the version).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from feedback.events import ChatMessage, MessageLogged
from serving.backends import ChoiceDelta, Generation
from serving.chat.protocol import Usage
from serving.cleanup import close_quietly

ABMode = Literal["canary", "drafts"]


@dataclass
class Reply:
    """One finished assistant reply."""

    message_id: str
    conversation_id: uuid.UUID
    model_version: str
    text: str
    citations: list[dict[str, Any]]
    finish_reason: str | None
    usage: dict[str, int]


@dataclass
class PreparedChat:
    """A validated request, its lease on a model version and its started generation."""

    id: str
    created: int
    user_id: str
    conversation_id: uuid.UUID
    message_ids: list[str]
    model_version: str
    prompt: list[dict[str, str]]
    citations: list[dict[str, Any]]
    generation: Generation
    started: float
    leases: contextlib.AsyncExitStack  # the model leases; closed when the reply ends
    texts: list[str] = field(default_factory=list)
    token_ids: list[list[int]] = field(default_factory=list)
    finish_reasons: list[str | None] = field(default_factory=list)
    ttft: float | None = None
    ab: ABMode | None = None  # "drafts": an A/B request answered by production alone
    released: bool = False  # the lease is back and the replies were logged

    @property
    def n(self) -> int:
        return len(self.message_ids)

    def usage(self) -> Usage:
        done = sum(len(t) for t in self.token_ids)
        p = self.generation.prompt_tokens
        return Usage(prompt_tokens=p, completion_tokens=done, total_tokens=p + done)

    def logged(self, i: int, elapsed: float) -> MessageLogged:
        """The ``MessageLogged`` event of choice ``i``, ``elapsed`` seconds after the start."""
        prompt_tokens = self.generation.prompt_tokens
        n_tokens = len(self.token_ids[i])
        return MessageLogged(
            user_id=self.user_id,
            message_id=self.message_ids[i],
            conversation_id=self.conversation_id,
            model_version=self.model_version,
            prompt=[
                ChatMessage(role=p["role"], content=_storable(p["content"]))  # type: ignore[arg-type]
                for p in self.prompt
            ],
            reply=_storable(self.texts[i]),
            prompt_token_ids=self.generation.prompt_token_ids,
            reply_token_ids=self.token_ids[i] or None,
            finish_reason=self.finish_reasons[i] or "abort",
            usage={
                "prompt_tokens": prompt_tokens,
                "completion_tokens": n_tokens,
                "total_tokens": prompt_tokens + n_tokens,
            },
            latency_ms=elapsed * 1000,
            ttft_ms=self.ttft * 1000 if self.ttft is not None else None,
            citations=self.citations,
        )

    async def abandon(self) -> None:
        """Undo a started generation whose reply will never be delivered (nothing is logged)."""
        self.released = True
        await close_quietly("generation", self.generation.aclose)
        await self.leases.aclose()


@dataclass
class PreparedAB:
    """An A/B request on production and the canary: ``parts[i]`` (one choice each)
    answers choice ``i``. The response names production's version only; which
    choice came from the canary is in each reply's ``MessageLogged`` event."""

    id: str
    created: int
    parts: list[PreparedChat]
    model_version: str  # production's
    citations: list[dict[str, Any]]
    ab: ABMode = "canary"

    @property
    def conversation_id(self) -> uuid.UUID:
        return self.parts[0].conversation_id

    @property
    def n(self) -> int:
        return len(self.parts)

    @property
    def message_ids(self) -> list[str]:
        return [p.message_ids[0] for p in self.parts]

    @property
    def texts(self) -> list[str]:
        return [p.texts[0] for p in self.parts]

    @property
    def finish_reasons(self) -> list[str | None]:
        return [p.finish_reasons[0] for p in self.parts]

    def usage(self) -> Usage:
        """Both versions' tokens: each processed the prompt."""
        usages = [p.usage() for p in self.parts]
        return Usage(
            prompt_tokens=sum(u.prompt_tokens for u in usages),
            completion_tokens=sum(u.completion_tokens for u in usages),
            total_tokens=sum(u.total_tokens for u in usages),
        )


async def merge_deltas(
    parts: list[PreparedChat],
    run: Callable[[PreparedChat], AsyncIterator[list[ChoiceDelta]]],
    release: Callable[[PreparedChat], Awaitable[None]],
) -> AsyncIterator[list[ChoiceDelta]]:
    """The deltas of every part as they arrive, part ``i``'s choice renamed to index
    ``i``. Each part keeps generating while the caller handles another's output. An
    error in one part, or the caller stopping, ends all of them; ``release`` then
    makes sure every part gave back its lease (also one whose ``run`` never began)."""
    streams = [run(p) for p in parts]
    pending = {asyncio.ensure_future(anext(s)): i for i, s in enumerate(streams)}
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                i = pending.pop(future)
                try:
                    deltas = future.result()
                except StopAsyncIteration:
                    continue
                pending[asyncio.ensure_future(anext(streams[i]))] = i
                yield [dataclasses.replace(d, index=i) for d in deltas]
    finally:
        for future in pending:
            future.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for stream in streams:
            await close_quietly("stream", stream.aclose)  # type: ignore[attr-defined]
        for part in parts:
            await release(part)


def _storable(text: str) -> str:
    """Text the feedback store can hold: Postgres text has no NUL, which a model may emit
    (the reply's token ids keep the exact output)."""
    return text.replace("\x00", "\ufffd")
