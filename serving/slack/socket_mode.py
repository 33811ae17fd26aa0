"""Socket Mode: the bot without a public URL (``ratchet slack --socket``).

Slack pushes events over a websocket the bot opens with its app-level token
(``xapp-...``); the listeners are the HTTP mode's. The serving parts (model,
producer, pool, chat service) come from ``build_app``'s lifespan, so answers
use the same chat service and knowledge base as the API.
"""

from __future__ import annotations

import asyncio
import logging

from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

from serving.app import build_app
from serving.settings import ServingSettings
from serving.slack.app import StateContext, build_slack_app

logger = logging.getLogger(__name__)


async def run_socket_mode(settings: ServingSettings, *, stop: asyncio.Event | None = None) -> None:
    """Serve Slack over Socket Mode until ``stop`` is set (or forever)."""
    if not settings.slack_bot_token or not settings.slack_app_token:
        raise ValueError("Socket Mode needs RATCHET_SLACK_BOT_TOKEN and RATCHET_SLACK_APP_TOKEN")
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        context = StateContext(lambda: getattr(app.state, "ratchet", None), settings)
        bolt = build_slack_app(settings, context, socket_mode=True)
        handler = AsyncSocketModeHandler(bolt, settings.slack_app_token)
        await handler.connect_async()
        logger.info("Slack Socket Mode connected; answering events")
        try:
            await (stop or asyncio.Event()).wait()
        finally:
            await handler.close_async()
