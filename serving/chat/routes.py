"""Thin routes of the OpenAI-compatible API: /v1/chat/completions, /v1/models."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Coroutine
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from serving.chat.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ModelCard,
    ModelList,
)
from serving.deps import CurrentUser, StateDep
from serving.errors import APIError, InvalidRequest, error_body, error_responses

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["chat"], responses=error_responses(401, 422, 429))

T = TypeVar("T")
# One server-sent event of a streamed completion: ``data`` is a chat.completion.chunk
# as JSON, an error body, or ``[DONE]``.
SSE_EVENT = {
    "type": "object",
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
    "required": ["data"],
}
DISCONNECT_POLL_S = 0.25  # how often a non-streaming request checks for its client
CLIENT_CLOSED = 499  # nginx's "client closed request": never seen by the client

MESSAGE_ID_HEADER = "X-Ratchet-Message-Id"
VERSION_HEADER = "X-Ratchet-Model-Version"
CONVERSATION_HEADER = "X-Ratchet-Conversation-Id"


def _conversation(header: str | None) -> uuid.UUID | None:
    if not header:
        return None
    try:
        return uuid.UUID(header)
    except ValueError as exc:
        raise InvalidRequest(
            f"{CONVERSATION_HEADER} must be a UUID", param="conversation_id"
        ) from exc


async def unless_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T | None:
    """Run ``work`` until it ends or the client goes away; then cancel it (which
    aborts the generation in the engine) and return None."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return None
    finally:
        task.cancel()


@router.post(
    "/chat/completions",
    response_model=ChatCompletionResponse,
    responses={
        **error_responses(400, 403, 404),
        200: {"content": {"text/event-stream": {"schema": SSE_EVENT}}},
    },
)
async def chat_completions(
    request: Request,
    body: ChatCompletionRequest,
    state: StateDep,
    user: CurrentUser,
    x_ratchet_conversation_id: Annotated[str | None, Header()] = None,
) -> Response:
    prep = await state.chat.prepare(
        body, user_id=user.id, conversation_id=_conversation(x_ratchet_conversation_id)
    )
    headers = {
        MESSAGE_ID_HEADER: prep.message_ids[0],
        VERSION_HEADER: prep.model_version,
        CONVERSATION_HEADER: str(prep.conversation_id),
    }
    if not body.stream:
        response = await unless_disconnected(request, state.chat.complete(prep))
        if response is None:
            logger.info("client of %s went away; generation aborted", prep.id)
            return Response(status_code=CLIENT_CLOSED)
        return JSONResponse(response.model_dump(mode="json"), headers=headers)

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def sse() -> AsyncIterator[bytes]:
        try:
            async for chunk in state.chat.stream(prep, include_usage=include_usage):
                yield b"data: " + chunk + b"\n\n"
        except APIError as exc:
            yield f"data: {json.dumps(exc.body())}\n\n".encode()
        except Exception:  # the status line is gone: report in-stream, as OpenAI does
            logger.exception("stream %s failed", prep.id)
            body_ = error_body("generation failed", "server_error", "internal_error")
            yield f"data: {json.dumps(body_)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(
        sse(),
        media_type="text/event-stream",
        headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/models")
async def list_models(state: StateDep, user: CurrentUser) -> ModelList:
    """The names ``model`` may take: the production version and the ``ratchet`` alias."""
    created = int(state.started_at)
    return ModelList(data=[ModelCard(id=m, created=created) for m in state.chat.model_ids()])
