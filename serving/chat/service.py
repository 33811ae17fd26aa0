"""The chat service: OpenAI requests and the simple reply API Slack uses.

No FastAPI here. Every reply (every choice when ``n > 1``) gets its own signed
``message_id`` and is published as a ``MessageLogged`` event when it ends.

An A/B request (``"ab": true``) answers with two choices: one from production and
one from the canary (``ratchet models canary VERSION``), or two drafts of
production without one (:mod:`serving.chat.ab`).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from feedback.events import ChatMessage, Publisher
from feedback.message_ids import new_message_id
from serving.backends import Backend, SamplingOptions
from serving.chat import grounding
from serving.chat.ab import prepare_ab
from serving.chat.chunks import stream_chunks
from serving.chat.ownership import ConversationOwners
from serving.chat.prepared import PreparedAB, PreparedChat, Reply, merge_deltas
from serving.chat.protocol import (
    SEED_MAX,
    SEED_MIN,
    AssistantMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
)
from serving.cleanup import close_quietly
from serving.errors import InvalidRequest, ModelNotFound, PromptTooLong
from serving.metrics import ServingMetrics
from serving.model_manager import ModelManager
from serving.settings import ServingSettings

logger = logging.getLogger(__name__)

_MODEL_ROLES = {"developer": "system"}  # roles chat templates rarely know
MODEL_ALIAS = "ratchet"  # a request's ``model``: whichever version production serves


__all__ = ["ChatService", "PreparedAB", "PreparedChat", "Publisher", "Reply"]


class ChatService:
    def __init__(
        self,
        settings: ServingSettings,
        models: ModelManager,
        producer: Publisher | None,
        *,
        metrics: ServingMetrics | None = None,
        retriever: grounding.Retriever | None = None,
        owners: ConversationOwners | None = None,
    ) -> None:
        self._settings = settings
        self._owners = owners
        self._models = models
        self._producer = producer
        self._metrics = metrics
        self.retriever = retriever

    # ---- OpenAI API ---------------------------------------------------------

    async def prepare(
        self,
        req: ChatCompletionRequest,
        *,
        user_id: str,
        conversation_id: uuid.UUID | None = None,
    ) -> PreparedChat | PreparedAB:
        """Validate ``req`` and start generating; raises InvalidRequest (400), ModelNotFound
        (404) or ForeignConversation (403) before any output."""
        self._check_model(req.model)
        if req.ab and req.n not in (1, 2):
            raise InvalidRequest(
                "an A/B request ('ab': true) answers with two choices:"
                " leave 'n' out or set it to 2",
                param="n",
            )
        if req.seed is not None and not SEED_MIN <= req.seed <= SEED_MAX:
            raise InvalidRequest(
                f"'seed' must be a 64-bit signed integer ({SEED_MIN} to {SEED_MAX})", param="seed"
            )
        options = SamplingOptions(
            max_tokens=req.max_new_tokens(),
            temperature=req.temperature,
            top_p=req.top_p,
            stop=req.stop_list(),
            seed=req.seed,
            n=2 if req.ab else req.n,
        )
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        conversation_id = req.conversation_id or conversation_id
        if conversation_id is not None and self._owners is not None:
            await self._owners.check(conversation_id, user_id)
        prepare = self._prepare_ab if req.ab else self._prepare
        prep = await prepare(
            messages,
            options,
            user_id=user_id,
            conversation_id=conversation_id,
            knowledge=req.knowledge,
        )
        if self._owners is not None:
            self._owners.remember(prep.conversation_id, user_id)
        return prep

    def model_ids(self) -> list[str]:
        """The names a request's ``model`` may take: the production version serving
        now, and :data:`MODEL_ALIAS` for "whatever production serves"."""
        served = self._models.version
        return [served, MODEL_ALIAS] if served else [MODEL_ALIAS]

    def _check_model(self, model: str | None) -> None:
        if model is None or model in self.model_ids():
            return
        raise ModelNotFound(
            f"the model '{model[:100]}' does not exist; this server serves "
            f"{' or '.join(repr(m) for m in self.model_ids())} (see GET /v1/models)"
        )

    async def complete(self, prep: PreparedChat | PreparedAB) -> ChatCompletionResponse:
        async for _ in self._deltas(prep):
            pass
        notes = self.footnotes(prep)
        choices = [
            Choice(
                index=i,
                message=AssistantMessage(content=prep.texts[i] + notes),
                finish_reason=prep.finish_reasons[i],
                message_id=prep.message_ids[i],
            )
            for i in range(prep.n)
        ]
        return ChatCompletionResponse(
            id=prep.id,
            created=prep.created,
            model=prep.model_version,
            choices=choices,
            usage=prep.usage(),
            message_id=prep.message_ids[0],
            model_version=prep.model_version,
            conversation_id=prep.conversation_id,
            citations=prep.citations,
            ab=prep.ab,
        )

    def stream(
        self, prep: PreparedChat | PreparedAB, *, include_usage: bool = False
    ) -> AsyncIterator[bytes]:
        """The request's ``chat.completion.chunk`` objects, as JSON (see :func:`stream_chunks`)."""
        return stream_chunks(
            prep, self._deltas(prep), include_usage=include_usage, footnotes=self.footnotes(prep)
        )

    def footnotes(self, prep: PreparedChat | PreparedAB) -> str:
        """The sources appended to the content (setting ``citations_in_content``);
        the logged reply and the ``citations`` field stay as they are."""
        if not self._settings.citations_in_content:
            return ""
        return grounding.footnotes(prep.citations)

    # ---- simple API (Slack and other adapters) ------------------------------

    async def reply(
        self,
        messages: list[dict[str, str]],
        *,
        user_id: str,
        conversation_id: uuid.UUID | None = None,
        knowledge: bool | None = None,
        max_tokens: int | None = None,
    ) -> Reply:
        reply: Reply | None = None
        async for item in self.stream_reply(
            messages,
            user_id=user_id,
            conversation_id=conversation_id,
            knowledge=knowledge,
            max_tokens=max_tokens,
        ):
            if isinstance(item, Reply):
                reply = item
        assert reply is not None
        return reply

    async def stream_reply(
        self,
        messages: list[dict[str, str]],
        *,
        user_id: str,
        conversation_id: uuid.UUID | None = None,
        knowledge: bool | None = None,
        max_tokens: int | None = None,
    ) -> AsyncIterator[str | Reply]:
        """Text deltas, then the final :class:`Reply`."""
        for m in messages:
            if m.get("role") not in ChatMessage.model_fields["role"].annotation.__args__:  # type: ignore[union-attr]
                raise InvalidRequest(f"unknown message role {m.get('role')!r}", param="messages")
        prep = await self._prepare(
            [{"role": m["role"], "content": str(m.get("content") or "")} for m in messages],
            SamplingOptions(max_tokens=max_tokens),
            user_id=user_id,
            conversation_id=conversation_id,
            knowledge=knowledge,
        )
        async for deltas in self._run(prep):
            for d in deltas:
                if d.text:
                    yield d.text
        usage = prep.usage()
        yield Reply(
            message_id=prep.message_ids[0],
            conversation_id=prep.conversation_id,
            model_version=prep.model_version,
            text=prep.texts[0],
            citations=prep.citations,
            finish_reason=prep.finish_reasons[0],
            usage=usage.model_dump(),
        )

    # ---- internals ----------------------------------------------------------

    async def _prepare(
        self,
        messages: list[dict[str, str]],
        options: SamplingOptions,
        *,
        user_id: str,
        conversation_id: uuid.UUID | None,
        knowledge: bool | None,
    ) -> PreparedChat:
        self._validate(messages, options)
        chunks = await self._retrieve(messages, knowledge)
        return await self._on_production(
            messages, chunks, options, user_id=user_id, conversation_id=conversation_id
        )

    async def _prepare_ab(
        self,
        messages: list[dict[str, str]],
        options: SamplingOptions,
        *,
        user_id: str,
        conversation_id: uuid.UUID | None,
        knowledge: bool | None,
    ) -> PreparedChat | PreparedAB:
        """An A/B reply (see :mod:`serving.chat.ab`)."""
        self._validate(messages, options)
        chunks = await self._retrieve(messages, knowledge)
        conversation = conversation_id or uuid.uuid4()

        async def start(
            stack: contextlib.AsyncExitStack, backend: Backend, opts: SamplingOptions
        ) -> PreparedChat:
            return await self._start(
                stack,
                backend,
                messages,
                chunks,
                opts,
                user_id=user_id,
                conversation_id=conversation,
            )

        async def on_production(opts: SamplingOptions) -> PreparedChat:
            return await self._on_production(
                messages, chunks, opts, user_id=user_id, conversation_id=conversation
            )

        return await prepare_ab(
            self._models, on_production, start, options, conversation, self._count_ab
        )

    def _validate(self, messages: list[dict[str, str]], options: SamplingOptions) -> None:
        if not messages:
            raise InvalidRequest("'messages' must contain at least one message", param="messages")
        if options.n > self._settings.max_n:
            raise InvalidRequest(
                f"n={options.n} is more than this server allows ({self._settings.max_n})",
                param="n",
            )

    def _count_ab(self, mode: str) -> None:
        if self._metrics is not None:
            self._metrics.ab_requests.labels(mode).inc()

    async def _on_production(
        self,
        messages: list[dict[str, str]],
        chunks: list[grounding.RetrievedChunk] | None,
        options: SamplingOptions,
        *,
        user_id: str,
        conversation_id: uuid.UUID | None,
    ) -> PreparedChat:
        stack = contextlib.AsyncExitStack()
        backend = await stack.enter_async_context(self._models.lease())
        return await self._start(
            stack,
            backend,
            messages,
            chunks,
            options,
            user_id=user_id,
            conversation_id=conversation_id,
        )

    async def _start(
        self,
        stack: contextlib.AsyncExitStack,
        backend: Backend,
        messages: list[dict[str, str]],
        chunks: list[grounding.RetrievedChunk] | None,
        options: SamplingOptions,
        *,
        user_id: str,
        conversation_id: uuid.UUID | None,
    ) -> PreparedChat:
        """Start generating on ``backend``, whose lease ``stack`` holds (and gives back if
        starting fails). Sources that do not fit the context window are dropped."""
        try:
            request_id = f"chatcmpl-{uuid.uuid4().hex}"
            while True:
                prompt = (
                    messages if chunks is None else grounding.grounded_messages(messages, chunks)
                )
                try:
                    generation = await backend.generate(
                        _model_messages(prompt), options, request_id
                    )
                    break
                except PromptTooLong:
                    if not chunks:  # the caller's own messages do not fit
                        raise
                    chunks = chunks[:-1]  # our sources must not cost the user an answer
        except BaseException:
            await stack.aclose()
            raise
        cites = grounding.citations(chunks) if chunks else []
        return PreparedChat(
            id=request_id,
            created=int(time.time()),
            user_id=user_id,
            conversation_id=conversation_id or uuid.uuid4(),
            message_ids=[
                new_message_id(user_id, self._settings.message_id_secret) for _ in range(options.n)
            ],
            model_version=backend.version,
            prompt=prompt,
            citations=cites,
            generation=generation,
            started=time.monotonic(),
            leases=stack,
            texts=[""] * options.n,
            token_ids=[[] for _ in range(options.n)],
            finish_reasons=[None] * options.n,
        )

    async def _retrieve(
        self, messages: list[dict[str, str]], knowledge: bool | None
    ) -> list[grounding.RetrievedChunk] | None:
        use = self._settings.knowledge_bot if knowledge is None else knowledge
        return await grounding.sources(
            self.retriever, messages, use=use, asked=bool(knowledge), k=self._settings.retrieval_k
        )

    def _deltas(self, prep: PreparedChat | PreparedAB) -> AsyncIterator[list[Any]]:
        if isinstance(prep, PreparedAB):
            return merge_deltas(prep.parts, self._run, self._release)
        return self._run(prep)

    async def _run(self, prep: PreparedChat) -> AsyncIterator[list[Any]]:
        """Iterate the generation, accumulating; publish and release the model at the end."""
        try:
            async for deltas in prep.generation.deltas:
                if prep.ttft is None and any(d.text or d.token_ids for d in deltas):
                    prep.ttft = time.monotonic() - prep.started
                for d in deltas:
                    prep.texts[d.index] += d.text
                    prep.token_ids[d.index].extend(d.token_ids)
                    if d.finish_reason is not None:
                        prep.finish_reasons[d.index] = d.finish_reason
                yield deltas
        finally:
            await self._release(prep)

    async def _release(self, prep: PreparedChat) -> None:
        """Close the generation, give back the lease and log the replies (once)."""
        if prep.released:
            return
        prep.released = True
        await close_quietly("generation", prep.generation.aclose)
        await prep.leases.aclose()
        self._finish(prep)

    def _finish(self, prep: PreparedChat) -> None:
        elapsed = time.monotonic() - prep.started
        usage = prep.usage()
        m = self._metrics
        if m is not None:
            m.prompt_tokens.labels(prep.model_version).inc(usage.prompt_tokens)
            m.completion_tokens.labels(prep.model_version).inc(usage.completion_tokens)
            if prep.ttft is not None:
                m.ttft.observe(prep.ttft)
            if elapsed > 0 and usage.completion_tokens:
                m.tokens_per_second.observe(usage.completion_tokens / elapsed)
        for i, message_id in enumerate(prep.message_ids):
            reason = prep.finish_reasons[i] or "abort"
            if m is not None:
                m.chat_completions.labels(prep.model_version, reason).inc()
            event = prep.logged(i, elapsed)
            n_tokens = len(prep.token_ids[i])
            logger.info(
                "reply %s conversation %s version %s: %d tokens, %s",
                message_id,
                prep.conversation_id,
                prep.model_version,
                n_tokens,
                reason,
            )
            if self._producer is not None:
                try:
                    self._producer.publish(event)
                except Exception:  # the producer must not fail a reply; it spools itself
                    logger.exception("publishing MessageLogged %s failed", message_id)


def _model_messages(prompt: list[dict[str, str]]) -> list[dict[str, str]]:
    return [
        {"role": _MODEL_ROLES.get(m["role"], m["role"]), "content": m["content"]} for m in prompt
    ]
