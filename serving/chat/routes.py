"""Thin routes of the OpenAI-compatible API: /v1/chat/completions, /v1/models."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse, StreamingResponse

from serving.chat.protocol import ChatCompletionRequest, ModelCard, ModelList
from serving.deps import CurrentUser, StateDep
from serving.errors import APIError, InvalidRequest, error_body

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["chat"])

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


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest,
    state: StateDep,
    user: CurrentUser,
    x_ratchet_conversation_id: Annotated[str | None, Header()] = None,
) -> JSONResponse | StreamingResponse:
    prep = await state.chat.prepare(
        body, user_id=user.id, conversation_id=_conversation(x_ratchet_conversation_id)
    )
    headers = {
        MESSAGE_ID_HEADER: prep.message_ids[0],
        VERSION_HEADER: prep.model_version,
        CONVERSATION_HEADER: str(prep.conversation_id),
    }
    if not body.stream:
        response = await state.chat.complete(prep)
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
    backend = state.models.current
    return ModelList(
        data=[ModelCard(id=backend.version, created=int(state.started_at), root=backend.path)]
    )
