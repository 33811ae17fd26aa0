"""A plain-ASGI fast path for ``POST /v1/feedback/ratings``, the busiest route (a
chat UI sends one rating per POST).

The route stays a FastAPI route (its OpenAPI operation, its dependencies, its error
answers); :func:`install` puts :class:`RatingFastPath` in front of its handler.
A request whose body is a JSON object that :class:`RatingRequest` accepts, sent as
``application/json``, is answered here: the same ``RatingRequest`` validation,
the same :func:`serving.deps.authenticate` and the same
:meth:`FeedbackService.rate`, without FastAPI's per-request machinery (the
``Request`` object, the content-type parse, dependency solving, the endpoint
call and the ``Response`` object). Anything else (no or another content type,
invalid JSON, a body the model refuses, the server not started) goes to the
FastAPI handler with the body replayed, so every 400 and 422 is FastAPI's own.

Errors raised here (401 and 429 from the key, 403/404/422 from the message id,
429 from the per-user cap) propagate to the app's exception handlers exactly as
they do from the FastAPI handler: the fast path sits inside the route, behind
Starlette's ``ExceptionMiddleware`` and the request metrics, so their bodies,
headers and counters are the same. (``app.dependency_overrides`` of
``get_current_user`` do not reach it: nothing overrides it, tests included.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.auth import DEV_USER
from serving.deps import authenticate
from serving.feedback.protocol import RatingRequest

if TYPE_CHECKING:
    from serving.state import AppState

RATINGS_PATH = "/v1/feedback/ratings"
_JSON = b"application/json"
_HEADERS_202 = [(b"content-type", _JSON)]


class RatingFastPath:
    """The ASGI app of the ``POST /v1/feedback/ratings`` route: the fast path, or
    ``handler`` (the route's FastAPI handler) for anything it does not take."""

    def __init__(self, handler: ASGIApp) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        messages, body = await _read_body(receive)
        state: AppState | None = getattr(scope["app"].state, "ratchet", None)
        rating = _rating(scope, body) if state is not None else None
        if rating is None or state is None:
            await self.handler(scope, _replay(messages, receive), send)
            return
        user = await authenticate(state, _header(scope, b"authorization"))
        if user is not DEV_USER:
            scope.setdefault("state", {})["user"] = user  # as ``get_current_user`` does
        accepted = state.feedback.rate(rating, user_id=user.id).model_dump_json().encode()
        await send(
            {
                "type": "http.response.start",
                "status": 202,
                "headers": [(b"content-length", str(len(accepted)).encode()), *_HEADERS_202],
            }
        )
        await send({"type": "http.response.body", "body": accepted})


def install(app: FastAPI) -> None:
    """Put :class:`RatingFastPath` in front of the ratings route's handler."""
    for route in app.router.routes:
        if isinstance(route, APIRoute) and route.path == RATINGS_PATH and "POST" in route.methods:
            route.app = RatingFastPath(route.app)
            return
    raise RuntimeError(f"no POST {RATINGS_PATH} route to put the fast path in front of")


async def _read_body(receive: Receive) -> tuple[list[Message], bytes]:
    """The request's messages as received (to replay them) and its body; stops at
    the first message that is not body (a disconnect), which then has no body."""
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, b""
        if not message.get("more_body", False):
            break
    if len(messages) == 1:
        return messages, messages[0].get("body", b"")
    return messages, b"".join(m.get("body", b"") for m in messages)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` for the FastAPI handler: ``messages`` again, then the client's."""
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return None


def _rating(scope: Scope, body: bytes) -> RatingRequest | None:
    """The rating in ``body`` when the FastAPI handler would take it as given;
    None for anything it should answer itself (it answers errors FastAPI's way)."""
    content_type = _header(scope, b"content-type")
    if not body or content_type is None:
        return None
    if content_type.partition(";")[0].strip().lower() != "application/json":
        return None
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    try:
        # as FastAPI validates a body: the JSON's Python objects, lax mode
        return RatingRequest.model_validate(data)
    except ValidationError:
        return None
