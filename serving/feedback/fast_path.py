"""A plain-ASGI fast path for ``POST /v1/feedback/ratings``, the busiest route (a
chat UI sends one rating per POST).

The route stays a FastAPI route (its OpenAPI operation, its dependencies, its error
answers). :func:`install` adds :class:`RatingFastPath` as the app's outermost
middleware (inside Starlette's ``ServerErrorMiddleware`` only), and
:class:`RatingErrors` in front of the route's handler. A request for the route
whose body is a JSON object that :class:`RatingRequest` accepts, sent as
``application/json``, is answered by the middleware: the same ``RatingRequest``
validation, the same :func:`serving.deps.authenticate` and the same
:meth:`FeedbackService.rate`, then the 202 sent and counted in
``ratchet_http_requests_total`` directly, without the middleware stack, the
router, FastAPI's per-request machinery (the ``Request`` object, the
content-type parse, dependency solving, the endpoint call and the ``Response``
object) and their send wrappers. Anything else (no or another content type,
invalid JSON, a body the model refuses, the server not started) goes through the
app to the FastAPI handler with the body replayed, so every 400 and 422 is
FastAPI's own.

An error raised by the authentication or the service (401 and 429 from the key,
403/404/422 from the message id, 429 from the per-user cap, or any other) is not
answered by the middleware: the request goes through the app with the body
replayed, and :class:`RatingErrors` raises that same exception where the route's
handler would have, so the app's exception handlers and the request metrics
answer and count it exactly as they do for the FastAPI handler. Nothing runs
twice: the key, the rate limits and the service saw the request once.
(``app.dependency_overrides`` of ``get_current_user`` do not reach the fast
path: nothing overrides it, tests included.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.deps import authenticate
from serving.feedback.protocol import RatingRequest

if TYPE_CHECKING:
    from serving.metrics import ServingMetrics
    from serving.state import AppState

RATINGS_PATH = "/v1/feedback/ratings"
_JSON = b"application/json"
_HEADERS_202 = [(b"content-type", _JSON)]
_ERROR = "ratchet.rating_error"  # scope key: the error the fast path hands to the route


class RatingFastPath:
    """The app's outermost middleware: answers a valid single rating for
    ``POST /v1/feedback/ratings``; hands everything else to ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._metrics: ServingMetrics | None = None
        self._accepted: Any = None  # ratchet_http_requests_total{route, code="202"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != RATINGS_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        messages, body = await _read_body(receive)
        state: AppState | None = getattr(scope["app"].state, "ratchet", None)
        rating = _rating(scope, body) if state is not None else None
        if rating is None or state is None:
            await self.app(scope, _replay(messages, receive), send)
            return
        try:
            user = await authenticate(state, _header(scope, b"authorization"))
            accepted = state.feedback.rate(rating, user_id=user.id)
        except Exception as exc:  # answered and counted by the app, from the route
            scope[_ERROR] = exc
            await self.app(scope, _replay(messages, receive), send)
            return
        answer = accepted.model_dump_json().encode()
        self._count_accepted(state.metrics)
        await send(
            {
                "type": "http.response.start",
                "status": 202,
                "headers": [(b"content-length", str(len(answer)).encode()), *_HEADERS_202],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    def _count_accepted(self, metrics: ServingMetrics) -> None:
        """Count the 202 as ``RequestMetricsMiddleware`` would have."""
        if metrics is not self._metrics:
            self._metrics = metrics
            self._accepted = metrics.requests.labels(RATINGS_PATH, "202")
        self._accepted.inc()


class RatingErrors:
    """The route's ASGI app: raises the error :class:`RatingFastPath` met, where
    the route's handler would have; otherwise the handler."""

    def __init__(self, handler: ASGIApp) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = scope.pop(_ERROR, None)
        if error is not None:
            raise error
        await self.handler(scope, receive, send)


def install(app: FastAPI) -> None:
    """Add :class:`RatingFastPath` to ``app`` and :class:`RatingErrors` to its route."""
    for route in app.router.routes:
        if isinstance(route, APIRoute) and route.path == RATINGS_PATH and "POST" in route.methods:
            route.app = RatingErrors(route.app)
            app.add_middleware(RatingFastPath)
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
