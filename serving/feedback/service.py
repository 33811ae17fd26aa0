"""The feedback service: check who may rate a reply, drop spam, publish the event.

No FastAPI here. Each request:

1. verifies every message id against the caller (``feedback.message_ids``):
   malformed -> ``MalformedMessageId`` (422), never issued -> ``UnknownMessageId``
   (404), given to someone else -> ``ForeignMessageId`` (403);
2. passes :class:`~feedback.quality.FeedbackGate`: past the per-user cap ->
   :class:`~serving.errors.FeedbackRateLimited` (429); the same feedback as the
   user's latest on that reply, again -> the first event's id, nothing published;
3. publishes a ``RatingGiven`` / ``ComparisonGiven`` / ``CorrectionGiven`` with the
   app's producer, which never blocks (it spools while the broker is away).

The store keeps the latest rating (and correction) per user and reply, so
changing one's mind (up, down, up again) publishes each change: an event
counts as a duplicate only of the latest feedback on the same target.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Protocol

from feedback.events import ComparisonGiven, CorrectionGiven, Event, RatingGiven
from feedback.message_ids import verify_message_id
from feedback.quality import FeedbackGate
from serving.errors import FeedbackRateLimited
from serving.feedback.protocol import (
    ComparisonRequest,
    CorrectionRequest,
    FeedbackAccepted,
    RatingRequest,
)

logger = logging.getLogger(__name__)


class Publisher(Protocol):
    def publish(self, event: Event) -> None: ...


class FeedbackService:
    """Turns feedback requests into events; built once in the app's lifespan."""

    def __init__(
        self,
        publisher: Publisher,
        *,
        message_id_secret: str,
        per_minute: int,
        duplicate_window_s: float = 600.0,
        max_targets: int = 200_000,
    ) -> None:
        self._publisher = publisher
        self._secret = message_id_secret
        self._per_minute = per_minute
        self._gate = FeedbackGate(per_minute=per_minute, duplicate_window_s=duplicate_window_s)
        self._max_targets = max_targets
        self._lock = threading.Lock()
        # (user, target) -> (content of the latest accepted feedback, its chain token)
        self._latest: OrderedDict[tuple[str, str], tuple[str, str]] = OrderedDict()

    def check(self, message_id: str, user_id: str) -> None:
        """Raise a ``feedback.errors.MessageIdError`` unless ``user_id`` may rate ``message_id``."""
        verify_message_id(message_id, user_id, self._secret)

    def rate(self, req: RatingRequest, *, user_id: str) -> FeedbackAccepted:
        self.check(req.message_id, user_id)
        event = RatingGiven(
            user_id=user_id,
            message_id=req.message_id,
            thumbs=req.thumbs,
            stars=req.stars,
            comment=req.comment,
            tags=req.tags,
        )
        content = req.model_dump(exclude={"message_id"})
        return self._submit(event, target=f"rating:{req.message_id}", content=content)

    def compare(self, req: ComparisonRequest, *, user_id: str) -> FeedbackAccepted:
        self.check(req.message_id_a, user_id)
        self.check(req.message_id_b, user_id)
        event = ComparisonGiven(
            user_id=user_id,
            message_id_a=req.message_id_a,
            message_id_b=req.message_id_b,
            winner=req.winner,
        )
        target = f"comparison:{req.message_id_a}:{req.message_id_b}"
        return self._submit(event, target=target, content={"winner": req.winner})

    def correct(self, req: CorrectionRequest, *, user_id: str) -> FeedbackAccepted:
        self.check(req.message_id, user_id)
        event = CorrectionGiven(
            user_id=user_id, message_id=req.message_id, corrected_reply=req.corrected_reply
        )
        content = {"corrected_reply": req.corrected_reply}
        return self._submit(event, target=f"correction:{req.message_id}", content=content)

    def _submit(
        self, event: Event, *, target: str, content: Mapping[str, object]
    ) -> FeedbackAccepted:
        key = (event.user_id, target)
        body = json.dumps(content, sort_keys=True)
        with self._lock:
            latest = self._latest.get(key)
            # Same as the latest on this target: same chain token, so the gate sees a
            # duplicate. Anything else starts a new chain (a change of mind is never spam).
            token = latest[1] if latest is not None and latest[0] == body else str(event.event_id)
            verdict = self._gate.check(event.user_id, f"{target}\n{token}\n{body}", event.event_id)
            if verdict.duplicate_of is not None:
                logger.info(
                    "feedback on %s by %s repeats event %s; not published",
                    target,
                    event.user_id,
                    verdict.duplicate_of,
                )
                return FeedbackAccepted(event_id=verdict.duplicate_of)
            if not verdict.accept:
                raise FeedbackRateLimited(verdict.retry_after, self._per_minute)
            self._latest[key] = (body, token)
            self._latest.move_to_end(key)
            while len(self._latest) > self._max_targets:
                self._latest.popitem(last=False)
        self._publisher.publish(event)
        logger.debug(
            "feedback event %s (%s) on %s by %s",
            event.event_id,
            type(event).__name__,
            target,
            event.user_id,
        )
        return FeedbackAccepted(event_id=event.event_id)
