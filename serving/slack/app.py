"""The Slack app (slack-bolt ``AsyncApp``), mounted in the API at ``POST /slack/events``.

HTTP mode: Slack signs every request; bolt checks the signature and that the
timestamp is within 5 minutes, else 401. Socket Mode (``ratchet slack
--socket``) builds the same app without request verification.

The handlers reach the chat service, the feedback service (the HTTP API's, so
Slack feedback passes the same per-user cap and duplicate check) and the pool
through the FastAPI app's state (``app.state.ratchet``), read when the first
event arrives, after the lifespan opened them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.middleware.async_middleware import AsyncMiddleware
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.web.async_client import AsyncWebClient

from serving.errors import error_body
from serving.settings import ServingSettings
from serving.slack import blocks
from serving.slack.dedupe import EventDeduper
from serving.slack.handlers import SlackContext, SlackHandlers
from serving.slack.threads import ThreadHistory
from serving.slack.users import SlackUserDirectory

logger = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"


class DedupeMiddleware(AsyncMiddleware):
    """Answers a repeated event id (a Slack retry) with 200 and does nothing else."""

    def __init__(self, context: Callable[[], SlackContext]) -> None:
        self._context = context

    async def async_process(
        self,
        *,
        req: AsyncBoltRequest,
        resp: BoltResponse,
        next: Callable[[], Awaitable[BoltResponse]],  # noqa: A002 (bolt's name)
    ) -> BoltResponse:
        body = req.body if isinstance(req.body, dict) else {}
        event_id = body.get("event_id")
        if body.get("type") == "event_callback" and isinstance(event_id, str):
            if not await self._context().dedupe.claim(event_id):
                retry = req.headers.get("x-slack-retry-num", ["-"])[0]
                logger.info("slack event %s already taken (retry %s): skipped", event_id, retry)
                return BoltResponse(status=200, body="")
        return await next()


class StateContext:
    """Builds the ``SlackContext`` from the serving app's state on first use."""

    def __init__(self, state: Callable[[], Any], settings: ServingSettings) -> None:
        self._state = state
        self._settings = settings
        self._built: SlackContext | None = None
        self._for: Any = None

    def __call__(self) -> SlackContext:
        state = self._state()
        if state is None:
            raise RuntimeError("the serving app has not started yet")
        if self._built is None or self._for is not state:
            pool = getattr(state, "pool", None)
            self._built = SlackContext(
                chat=state.chat,
                feedback=state.feedback,
                users=SlackUserDirectory(pool),
                dedupe=EventDeduper(pool),
                history=ThreadHistory(),
                stream_interval_s=self._settings.slack_stream_interval_s,
                stream_chars=self._settings.slack_stream_chars,
            )
            self._for = state
        return self._built


def build_slack_app(
    settings: ServingSettings, context: Callable[[], SlackContext], *, socket_mode: bool = False
) -> AsyncApp:
    """The bolt app with Ratchet's listeners; Web API calls go to ``slack_api_base_url``."""
    if not settings.slack_bot_token:
        raise ValueError("RATCHET_SLACK_BOT_TOKEN is not set")
    if not socket_mode and not settings.slack_signing_secret:
        raise ValueError("RATCHET_SLACK_SIGNING_SECRET is not set")
    client = AsyncWebClient(token=settings.slack_bot_token, base_url=settings.slack_api_base_url)
    app = AsyncApp(
        client=client,
        signing_secret=settings.slack_signing_secret if not socket_mode else None,
        request_verification_enabled=not socket_mode,
        logger=logging.getLogger("serving.slack.bolt"),
    )
    app.use(DedupeMiddleware(context))
    handlers = SlackHandlers(context)
    app.event("app_mention")(handlers.on_app_mention)
    app.event("message")(handlers.on_message)
    app.action(blocks.ACTION_RATE_UP)(handlers.on_rate)
    app.action(blocks.ACTION_RATE_DOWN)(handlers.on_rate)
    app.action(blocks.ACTION_SUGGEST)(handlers.on_suggest)
    app.view(blocks.CORRECTION_CALLBACK_ID)(handlers.on_correction)
    return app


def _valid_timestamp(request: Request) -> bool:
    raw = request.headers.get("x-slack-request-timestamp", "")
    return raw.isdigit()


def mount_slack(app: FastAPI, settings: ServingSettings) -> AsyncApp:
    """Add ``POST /slack/events`` to ``app`` (call only when ``settings.slack_enabled``)."""
    context = StateContext(lambda: getattr(app.state, "ratchet", None), settings)
    bolt = build_slack_app(settings, context)
    handler = AsyncSlackRequestHandler(bolt)

    async def slack_events(request: Request) -> Response:
        if not _valid_timestamp(request):  # bolt would fail on int() of it
            response: Response = await _unauthorized()
        else:
            response = await handler.handle(request)
            if response.status_code == 401:
                response = await _unauthorized()
        return response

    app.add_api_route(EVENTS_PATH, slack_events, methods=["POST"], include_in_schema=False)
    logger.info("Slack app mounted at %s", EVENTS_PATH)
    return bolt


async def _unauthorized() -> JSONResponse:
    return JSONResponse(
        status_code=401,
        content=error_body(
            "invalid Slack request: bad signature or a timestamp more than 5 minutes off",
            "authentication_error",
            "invalid_slack_signature",
        ),
    )
