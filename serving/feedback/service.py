"""The feedback service: check who may rate a reply, drop spam, publish the event.

No FastAPI here. Each request:

1. verifies every message id against the caller (``feedback.message_ids``):
   malformed -> ``MalformedMessageId`` (422), never issued -> ``UnknownMessageId``
   (404), given to someone else -> ``ForeignMessageId`` (403);
2. passes :class:`~feedback.rate_cap.FeedbackRateCap`: past the per-user cap ->
   :class:`~serving.errors.FeedbackRateLimited` (429); the same feedback as the
   user's latest on that reply, again -> the first event's id, nothing published;
3. publishes a ``RatingGiven`` / ``ComparisonGiven`` / ``CorrectionGiven`` with the
   app's producer, which never blocks (it spools while the broker is away).

The store keeps the latest rating (and correction) per user and reply, so
changing one's mind (up, down, up again) publishes each change: an event
counts as a duplicate only of the latest feedback on the same target.

A batch (``submit_batch``: clients that collect feedback and send it in bulk,
and the ingestion benchmark) takes the same steps for every item, all or
nothing: one bad id or a batch past the cap, and nothing is published.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from feedback.errors import (
    ForeignMessageId,
    MalformedMessageId,
    MessageIdError,
    UnknownMessageId,
)
from feedback.events import ComparisonGiven, CorrectionGiven, Event, Publisher, RatingGiven
from feedback.message_ids import verify_message_id
from feedback.rate_cap import FeedbackRateCap
from serving.errors import APIError, FeedbackRateLimited, InvalidRequest
from serving.feedback.protocol import (
    ComparisonRequest,
    CorrectionRequest,
    FeedbackAccepted,
    FeedbackBatch,
    FeedbackBatchAccepted,
    RatingRequest,
)
from serving.metrics import ServingMetrics

logger = logging.getLogger(__name__)


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
        clock: Callable[[], float] = time.monotonic,
        metrics: ServingMetrics | None = None,
    ) -> None:
        self._publisher = publisher
        self._metrics = metrics
        self._accepted: dict[tuple[str, bool], Any] = {}  # (kind, duplicate) -> counter
        self._secret = message_id_secret
        self._per_minute = per_minute
        self._gate = FeedbackRateCap(
            per_minute=per_minute, duplicate_window_s=duplicate_window_s, clock=clock
        )
        self._max_targets = max_targets
        self._lock = threading.Lock()
        # (user, target) -> (content of the latest accepted feedback, its chain token)
        self._latest: OrderedDict[tuple[str, str], tuple[str, str]] = OrderedDict()

    def check(self, message_id: str, user_id: str) -> None:
        """Raise a ``feedback.errors.MessageIdError`` unless ``user_id`` may rate ``message_id``."""
        verify_message_id(message_id, user_id, self._secret)

    def rate(self, req: RatingRequest, *, user_id: str) -> FeedbackAccepted:
        # _counting_refusals written out: this is every single-rating POST
        try:
            return self._submit([self._rating(req, user_id)], user_id)[0]
        except (MessageIdError, APIError) as exc:
            self._count_refusal(exc)
            raise

    def compare(self, req: ComparisonRequest, *, user_id: str) -> FeedbackAccepted:
        with self._counting_refusals():
            return self._submit([self._comparison(req, user_id)], user_id)[0]

    def correct(self, req: CorrectionRequest, *, user_id: str) -> FeedbackAccepted:
        with self._counting_refusals():
            return self._submit([self._correction(req, user_id)], user_id)[0]

    def submit_batch(self, batch: FeedbackBatch, *, user_id: str) -> FeedbackBatchAccepted:
        """Many pieces of feedback from one user in one call, all or nothing: one id
        this user may not rate, or a batch past the cap, and nothing is published.
        Errors name the item (``ratings[3]: ...``)."""
        with self._counting_refusals():
            return self._submit_batch(batch, user_id)

    def _submit_batch(self, batch: FeedbackBatch, user_id: str) -> FeedbackBatchAccepted:
        items: list[_Item] = []
        for i, rating in enumerate(batch.ratings):
            with _named(f"ratings[{i}]"):
                items.append(self._rating(rating, user_id))
        for i, comparison in enumerate(batch.comparisons):
            with _named(f"comparisons[{i}]"):
                items.append(self._comparison(comparison, user_id))
        for i, correction in enumerate(batch.corrections):
            with _named(f"corrections[{i}]"):
                items.append(self._correction(correction, user_id))
        accepted = iter(self._submit(items, user_id))
        return FeedbackBatchAccepted(
            ratings=[next(accepted) for _ in batch.ratings],
            comparisons=[next(accepted) for _ in batch.comparisons],
            corrections=[next(accepted) for _ in batch.corrections],
        )

    def _accepted_counter(self, kind: str, duplicate: bool) -> Any:
        counter = self._accepted.get((kind, duplicate))
        if counter is None:
            assert self._metrics is not None
            label = "true" if duplicate else "false"
            counter = self._accepted[(kind, duplicate)] = self._metrics.feedback_accepted.labels(
                kind, label
            )
        return counter

    @contextmanager
    def _counting_refusals(self) -> Iterator[None]:
        """Count a refusal by its reason (the error code the client gets)."""
        try:
            yield
        except (MessageIdError, APIError) as exc:
            self._count_refusal(exc)
            raise

    def _count_refusal(self, exc: Exception) -> None:
        if self._metrics is not None:
            reason = _REASONS.get(type(exc)) or getattr(exc, "code", None) or "other"
            self._metrics.feedback_refused.labels(reason).inc()

    # -- one request -> event, target, content ---------------------------------

    def _rating(self, req: RatingRequest, user_id: str) -> _Item:
        self.check(req.message_id, user_id)
        event = RatingGiven(
            user_id=user_id,
            message_id=req.message_id,
            thumbs=req.thumbs,
            stars=req.stars,
            comment=req.comment,
            tags=req.tags,
        )
        # canonical: pydantic writes the fields in their declared order
        content = req.model_dump_json(exclude={"message_id"})
        return _Item(event, f"rating:{req.message_id}", content)

    def _comparison(self, req: ComparisonRequest, user_id: str) -> _Item:
        self.check(req.message_id_a, user_id)
        self.check(req.message_id_b, user_id)
        event = ComparisonGiven(
            user_id=user_id,
            message_id_a=req.message_id_a,
            message_id_b=req.message_id_b,
            winner=req.winner,
        )
        target = f"comparison:{req.message_id_a}:{req.message_id_b}"
        return _Item(event, target, json.dumps({"winner": req.winner}))

    def _correction(self, req: CorrectionRequest, user_id: str) -> _Item:
        self.check(req.message_id, user_id)
        event = CorrectionGiven(
            user_id=user_id, message_id=req.message_id, corrected_reply=req.corrected_reply
        )
        body = json.dumps({"corrected_reply": req.corrected_reply})
        return _Item(event, f"correction:{req.message_id}", body)

    def _submit(self, items: list[_Item], user_id: str) -> list[FeedbackAccepted]:
        """Gate ``items`` (all or nothing), publish the new ones, return an id per item."""
        with self._lock:
            # Chain tokens: the same content as the latest on a target keeps that
            # feedback's token, so the gate sees a duplicate. Anything else starts a
            # new chain (a change of mind is never spam). Items earlier in the batch
            # count as "latest" for later ones.
            latest: dict[tuple[str, str], tuple[str, str]] = {}
            fingerprints: list[tuple[str, uuid.UUID]] = []
            for item in items:
                key = (user_id, item.target)
                prev = latest.get(key) or self._latest.get(key)
                if prev is not None and prev[0] == item.body:
                    token = prev[1]
                else:
                    token = str(item.event.event_id)
                latest[key] = (item.body, token)
                fingerprint = f"{item.target}\n{token}\n{item.body}"
                fingerprints.append((fingerprint, item.event.event_id))
            verdicts = self._gate.check(user_id, fingerprints)
            refused = [v for v in verdicts if not v.accept and v.duplicate_of is None]
            if refused:
                if refused[0].retry_after == float("inf"):
                    raise InvalidRequest(
                        f"this batch has more new feedback than the per-user cap allows "
                        f"in a minute ({self._per_minute}); split it",
                        code="batch_too_large",
                    )
                raise FeedbackRateLimited(refused[0].retry_after, self._per_minute)
            for key, value in latest.items():
                self._latest[key] = value
                self._latest.move_to_end(key)
            while len(self._latest) > self._max_targets:
                self._latest.popitem(last=False)
        out: list[FeedbackAccepted] = []
        for item, verdict in zip(items, verdicts, strict=True):
            if self._metrics is not None:
                self._accepted_counter(item.kind, verdict.duplicate_of is not None).inc()
            if verdict.duplicate_of is not None:
                logger.info(
                    "feedback on %s by %s repeats event %s; not published",
                    item.target,
                    user_id,
                    verdict.duplicate_of,
                )
                out.append(FeedbackAccepted(event_id=verdict.duplicate_of))
                continue
            self._publisher.publish(item.event)
            logger.debug(
                "feedback event %s (%s) on %s by %s",
                item.event.event_id,
                type(item.event).__name__,
                item.target,
                user_id,
            )
            out.append(FeedbackAccepted(event_id=item.event.event_id))
        return out


@contextmanager
def _named(where: str) -> Iterator[None]:
    """Prefix a message id error with the batch item it is about."""
    try:
        yield
    except MessageIdError as exc:
        raise type(exc)(f"{where}: {exc}") from None


@dataclass(frozen=True)
class _Item:
    """One piece of feedback on its way through the gate."""

    event: Event
    target: str  # what it is about: "rating:<message id>", ...
    body: str  # its content, canonical JSON (without the target)

    @property
    def kind(self) -> str:
        return self.target.partition(":")[0]


_REASONS: dict[type[Exception], str] = {
    MalformedMessageId: "malformed_message_id",
    UnknownMessageId: "unknown_message_id",
    ForeignMessageId: "foreign_message_id",
}
