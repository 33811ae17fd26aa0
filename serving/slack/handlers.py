"""What the bot does with Slack events and interactions.

- ``app_mention`` and ``message.im``: answer in the thread with the chat
  service the API uses (knowledge base included when enabled), streamed by
  editing one message, finished with the feedback buttons.
- 👍 / 👎: a ``RatingGiven`` event, through the API's feedback service.
- "Suggest a better answer": a modal; its submission is a ``CorrectionGiven``,
  through the same service.

Feedback from Slack takes the HTTP API's path (``FeedbackService.rate`` /
``correct``): the same message id check, per-user cap and duplicate drop, so a
click repeated in Slack publishes nothing new. Refusals become ephemeral
messages (or errors in the modal): someone else's answer -> ``NOT_YOURS``, past
the cap -> ``TOO_FAST`` with the wait, an id we cannot rate -> ``UNKNOWN``.

No FastAPI here: the handlers take their dependencies from ``SlackContext``.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import ValidationError
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from feedback.errors import ForeignMessageId, MessageIdError
from serving.errors import APIError, FeedbackRateLimited
from serving.feedback.protocol import CorrectionRequest, FeedbackAccepted, RatingRequest
from serving.slack import blocks
from serving.slack.dedupe import EventDeduper
from serving.slack.stream import MessageStreamer
from serving.slack.threads import ThreadHistory, clean_text, conversation_id
from serving.slack.users import SlackUserDirectory, team_and_user

logger = logging.getLogger(__name__)

GENERIC_ERROR = "Sorry, something went wrong while answering. Please try again."
NOT_YOURS = "Only the person who asked can rate this answer."
UNKNOWN = "This answer can no longer be rated."
TOO_FAST = "You're rating too fast; try again in {seconds} s."
EMPTY_CORRECTION = "Write the answer you wanted."


class ChatLike(Protocol):
    """What Slack needs from ``serving.chat.service.ChatService``."""

    def stream_reply(
        self,
        messages: list[dict[str, Any]],
        *,
        user_id: str,
        conversation_id: uuid.UUID | str | None = None,
        knowledge: bool | None = None,
        max_tokens: int | None = None,
    ) -> AsyncIterator[Any]: ...


class FeedbackLike(Protocol):
    """What Slack needs from ``serving.feedback.service.FeedbackService``."""

    def check(self, message_id: str, user_id: str) -> None: ...

    def rate(self, req: RatingRequest, *, user_id: str) -> FeedbackAccepted: ...

    def correct(self, req: CorrectionRequest, *, user_id: str) -> FeedbackAccepted: ...


@dataclass
class SlackContext:
    """The serving parts the handlers use (built once the app's lifespan ran)."""

    chat: ChatLike
    feedback: FeedbackLike
    users: SlackUserDirectory
    dedupe: EventDeduper
    history: ThreadHistory
    stream_interval_s: float = 1.0
    stream_chars: int = 400


def _dump(citation: Any) -> Mapping[str, Any]:
    if hasattr(citation, "model_dump"):
        return citation.model_dump()  # type: ignore[no-any-return]
    return citation if isinstance(citation, Mapping) else {"title": str(citation)}


def user_message(exc: BaseException) -> str:
    """What the Slack user is told when answering failed."""
    if isinstance(exc, APIError) and exc.status < 500 and exc.message:
        return f"Sorry, I can't answer that: {exc.message}"
    if isinstance(exc, APIError) and exc.status == 503:
        return "The assistant is busy or restarting; please try again in a minute."
    return GENERIC_ERROR


def refusal(exc: Exception, *, what: str) -> str:
    """What the Slack user is told when the feedback service refused ``what``."""
    if isinstance(exc, ForeignMessageId):
        return NOT_YOURS
    if isinstance(exc, FeedbackRateLimited):
        logger.info("slack %s: rate limited for %d s", what, exc.retry_after)
        return TOO_FAST.format(seconds=exc.retry_after)
    logger.warning("slack %s: bad message id: %s", what, exc)
    return UNKNOWN


class SlackHandlers:
    """Bolt listeners; ``context()`` gives the serving parts at call time."""

    def __init__(self, context: Callable[[], SlackContext]) -> None:
        self._context = context

    # -- events ------------------------------------------------------------

    async def on_app_mention(
        self, event: dict[str, Any], body: dict[str, Any], client: AsyncWebClient, context: Any
    ) -> None:
        await self._answer(event, body, client, bot_user_id=context.get("bot_user_id"))

    async def on_message(
        self, event: dict[str, Any], body: dict[str, Any], client: AsyncWebClient, context: Any
    ) -> None:
        # Only plain messages people send us directly: no edits, joins, bot posts.
        if event.get("channel_type") != "im" or event.get("subtype") or event.get("bot_id"):
            return
        await self._answer(event, body, client, bot_user_id=context.get("bot_user_id"))

    async def _answer(
        self,
        event: dict[str, Any],
        body: dict[str, Any],
        client: AsyncWebClient,
        *,
        bot_user_id: str | None,
    ) -> None:
        ctx = self._context()
        event_id = body.get("event_id", "-")
        team = str(body.get("team_id") or event.get("team") or "")
        channel = str(event["channel"])
        thread_ts = str(event.get("thread_ts") or event["ts"])
        question = clean_text(str(event.get("text") or ""), bot_user_id)
        if not question:
            question = "Hello!"
        streamer = MessageStreamer(
            client,
            channel=channel,
            thread_ts=thread_ts,
            interval_s=ctx.stream_interval_s,
            min_chars=ctx.stream_chars,
        )
        try:
            user_id = await ctx.users.resolve(team, str(event["user"]))
            conv = conversation_id(team, channel, thread_ts)
            logger.info(
                "slack event %s: answering %s in %s/%s", event_id, user_id, channel, thread_ts
            )
            await streamer.start()
            stream = ctx.chat.stream_reply(
                ctx.history.messages(conv, question), user_id=user_id, conversation_id=conv
            )
            if inspect.isawaitable(stream):
                stream = await stream
            text, reply = "", None
            async for item in stream:
                if isinstance(item, str):
                    text += item
                    await streamer.push(text)
                else:
                    reply = item
            if reply is None:
                raise RuntimeError("the chat service ended without a final reply")
            final = str(reply.text)
            citations = [_dump(c) for c in (getattr(reply, "citations", None) or [])]
            await streamer.finish(
                final, blocks.answer_blocks(final, message_id=reply.message_id, citations=citations)
            )
            ctx.history.record(conv, question, final)
            logger.info(
                "slack event %s: answered with %s (%d updates)",
                event_id,
                reply.message_id,
                streamer.updates,
            )
        except Exception as exc:  # the outermost handler of this event: tell the user, log
            logger.exception("slack event %s: answering failed", event_id)
            try:
                await streamer.fail(user_message(exc))
            except SlackApiError:
                logger.exception("slack event %s: could not report the failure", event_id)

    # -- interactions ------------------------------------------------------

    async def on_rate(
        self, ack: Any, body: dict[str, Any], action: dict[str, Any], client: AsyncWebClient
    ) -> None:
        await ack()
        ctx = self._context()
        team, slack_user = team_and_user(body)
        user_id = await ctx.users.resolve(team, slack_user)
        message_id = str(action.get("value") or "")
        thumbs: Literal["up", "down"] = (
            "up" if action.get("action_id") == blocks.ACTION_RATE_UP else "down"
        )
        emoji = "👍" if thumbs == "up" else "👎"
        try:
            request = RatingRequest(message_id=message_id, thumbs=thumbs)
            accepted = ctx.feedback.rate(request, user_id=user_id)
        except (ValidationError, MessageIdError, FeedbackRateLimited) as exc:
            text = refusal(exc, what=f"rating {thumbs} on {message_id[:80]!r} by {user_id}")
        else:
            logger.info(
                "slack rating %s on %s by %s: event %s",
                thumbs,
                message_id,
                user_id,
                accepted.event_id,
            )
            text = f"Thanks for the feedback {emoji}"
        await self._tell(client, body, slack_user, text)

    async def on_suggest(
        self, ack: Any, body: dict[str, Any], action: dict[str, Any], client: AsyncWebClient
    ) -> None:
        await ack()
        ctx = self._context()
        team, slack_user = team_and_user(body)
        user_id = await ctx.users.resolve(team, slack_user)
        message_id = str(action.get("value") or "")
        try:
            ctx.feedback.check(message_id, user_id)
        except MessageIdError as exc:
            what = f"correction of {message_id[:80]!r} by {user_id}"
            await self._tell(client, body, slack_user, refusal(exc, what=what))
            return
        message = body.get("message") or {}
        view = blocks.correction_modal(
            message_id=message_id,
            channel=(body.get("channel") or {}).get("id"),
            thread_ts=message.get("thread_ts") or message.get("ts"),
            original=str(message.get("text") or ""),
        )
        await client.views_open(trigger_id=body["trigger_id"], view=view)

    async def on_correction(
        self, ack: Any, body: dict[str, Any], view: dict[str, Any], client: AsyncWebClient
    ) -> None:
        ctx = self._context()
        team, slack_user = team_and_user(body)
        user_id = await ctx.users.resolve(team, slack_user)
        meta = blocks.parse_modal_metadata(view.get("private_metadata", ""))
        message_id = str(meta.get("message_id") or "")
        values = view.get("state", {}).get("values", {})
        field = values.get(blocks.CORRECTION_BLOCK_ID, {}).get(blocks.CORRECTION_INPUT_ID, {})
        text = str(field.get("value") or "").strip()
        problem = self._correct(ctx.feedback, message_id, text, user_id)
        if problem is not None:
            await ack(response_action="errors", errors={blocks.CORRECTION_BLOCK_ID: problem})
            return
        await ack()
        if meta.get("channel"):
            await self._post_ephemeral(
                client,
                channel=str(meta["channel"]),
                user=slack_user,
                thread_ts=meta.get("thread_ts"),
                text="Thanks: your answer was recorded and will help train the next version.",
            )

    # -- helpers -----------------------------------------------------------

    @staticmethod
    def _correct(feedback: FeedbackLike, message_id: str, text: str, user_id: str) -> str | None:
        """Submit a correction; None if accepted (or a repeat), else what the modal says."""
        what = f"correction of {message_id[:80]!r} by {user_id}"
        try:
            if not text:
                feedback.check(message_id, user_id)  # someone else's answer says so first
                return EMPTY_CORRECTION
            request = CorrectionRequest(message_id=message_id, corrected_reply=text)
            accepted = feedback.correct(request, user_id=user_id)
        except ValidationError as exc:
            problems = [e for e in exc.errors() if e["loc"][:1] != ("message_id",)]
            if problems:  # the text itself (too long, NUL characters)
                return f"Check your answer: {problems[0]['msg']}"
            return refusal(exc, what=what)
        except (MessageIdError, FeedbackRateLimited) as exc:
            return refusal(exc, what=what)
        logger.info(
            "slack correction on %s by %s: event %s", message_id, user_id, accepted.event_id
        )
        return None

    async def _tell(
        self, client: AsyncWebClient, body: dict[str, Any], slack_user: str, text: str
    ) -> None:
        channel = (body.get("channel") or {}).get("id")
        if not channel:
            return
        message = body.get("message") or {}
        await self._post_ephemeral(
            client,
            channel=str(channel),
            user=slack_user,
            thread_ts=message.get("thread_ts") or message.get("ts"),
            text=text,
        )

    @staticmethod
    async def _post_ephemeral(
        client: AsyncWebClient, *, channel: str, user: str, thread_ts: Any, text: str
    ) -> None:
        try:
            await client.chat_postEphemeral(
                channel=channel, user=user, text=text, thread_ts=thread_ts
            )
        except SlackApiError as exc:  # a courtesy message: the feedback itself is recorded
            logger.warning("chat.postEphemeral failed: %s", exc.response.get("error"))
