"""The event schema: the one contract between serving, feedback and training.

Events are frozen pydantic models. Each carries ``event_id`` (UUID, the
idempotency key), ``schema_version``, ``occurred_at`` and ``user_id``. A change
to an event's fields is a schema version bump, and its topic name carries the
major version (``ratchet.ratings.v1``).
"""

from __future__ import annotations

import os
import threading
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

SCHEMA_VERSION = 1

TOPIC_MESSAGES = "ratchet.messages.v1"
TOPIC_RATINGS = "ratchet.ratings.v1"
TOPIC_COMPARISONS = "ratchet.comparisons.v1"
TOPIC_CORRECTIONS = "ratchet.corrections.v1"
TOPIC_DEAD_LETTERS = "ratchet.dead-letters.v1"


Messages = list[dict[str, str]]
"""Chat messages as plain dicts (``role``, ``content``): prompts in records and trainers."""


def _now() -> datetime:
    return datetime.now(UTC)


class _RandomUUIDs:
    """uuid4s cut from one ``os.urandom`` read per 256 ids. ``uuid.uuid4()`` reads
    16 bytes per call, and each read lets go of the GIL: on the API's hot path
    (one event per feedback POST) that hand-off to the producer's threads cost
    more than the rest of the request's own work (profiled, issue 17)."""

    _IDS_PER_READ = 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._pos = 0
        # a forked child must not hand out its parent's remaining ids
        os.register_at_fork(after_in_child=self._discard)

    def _discard(self) -> None:
        self._buffer, self._pos = b"", 0

    def __call__(self) -> uuid.UUID:
        with self._lock:
            if self._pos >= len(self._buffer):
                self._buffer, self._pos = os.urandom(16 * self._IDS_PER_READ), 0
            raw = self._buffer[self._pos : self._pos + 16]
            self._pos += 16
        return uuid.UUID(bytes=raw, version=4)


new_event_id = _RandomUUIDs()


class Event(BaseModel):
    """Fields every event has."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: uuid.UUID = Field(default_factory=new_event_id)
    schema_version: int = SCHEMA_VERSION
    occurred_at: datetime = Field(default_factory=_now)
    user_id: str = Field(min_length=1, max_length=200)

    def partition_key(self) -> bytes:
        """Kafka key: one user's feedback stays in order on one partition (a rating
        names a reply, not its conversation; ``MessageLogged`` keys by conversation)."""
        return self.user_id.encode()


class ChatMessage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class MessageLogged(Event):
    """An assistant reply was produced and can now be rated."""

    type: Literal["message_logged"] = "message_logged"
    message_id: str
    conversation_id: uuid.UUID
    model_version: str
    prompt: list[ChatMessage]
    reply: str
    prompt_token_ids: list[int] | None = None
    reply_token_ids: list[int] | None = None
    finish_reason: str | None = None
    usage: dict[str, int] = Field(default_factory=dict)
    latency_ms: float | None = None
    ttft_ms: float | None = None
    citations: list[dict[str, Any]] = Field(default_factory=list)

    def partition_key(self) -> bytes:
        return str(self.conversation_id).encode()


class RatingGiven(Event):
    """Thumbs up/down or 1-5 stars on one reply. The latest rating per (user, message) wins."""

    type: Literal["rating_given"] = "rating_given"
    message_id: str
    thumbs: Literal["up", "down"] | None = None
    stars: int | None = Field(default=None, ge=1, le=5)
    comment: str | None = Field(default=None, max_length=4000)
    tags: list[str] = Field(default_factory=list, max_length=20)

    @model_validator(mode="after")
    def _one_score(self) -> RatingGiven:
        if (self.thumbs is None) == (self.stars is None):
            raise ValueError("give exactly one of 'thumbs' or 'stars'")
        return self

    @property
    def score(self) -> float:
        """Normalised to [0, 1]: thumbs up 1, down 0; stars (s - 1) / 4."""
        if self.thumbs is not None:
            return 1.0 if self.thumbs == "up" else 0.0
        assert self.stars is not None
        return (self.stars - 1) / 4


class ComparisonGiven(Event):
    """An A/B pick between two replies to the same prompt."""

    type: Literal["comparison_given"] = "comparison_given"
    message_id_a: str
    message_id_b: str
    winner: Literal["a", "b", "tie"]

    @model_validator(mode="after")
    def _distinct(self) -> ComparisonGiven:
        if self.message_id_a == self.message_id_b:
            raise ValueError("message_id_a and message_id_b must differ")
        return self


class CorrectionGiven(Event):
    """The answer the user wanted instead of the reply."""

    type: Literal["correction_given"] = "correction_given"
    message_id: str
    corrected_reply: str = Field(min_length=1, max_length=20000)


AnyEvent = Annotated[
    MessageLogged | RatingGiven | ComparisonGiven | CorrectionGiven, Field(discriminator="type")
]
_ADAPTER: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)

TOPIC_OF: dict[type[Event], str] = {
    MessageLogged: TOPIC_MESSAGES,
    RatingGiven: TOPIC_RATINGS,
    ComparisonGiven: TOPIC_COMPARISONS,
    CorrectionGiven: TOPIC_CORRECTIONS,
}
ALL_TOPICS = [TOPIC_MESSAGES, TOPIC_RATINGS, TOPIC_COMPARISONS, TOPIC_CORRECTIONS]


def topic_for(event: Event) -> str:
    return TOPIC_OF[type(event)]


def encode(event: Event) -> bytes:
    return event.model_dump_json().encode()


def decode(data: bytes | str) -> AnyEvent:
    """Parse one event; raises ``pydantic.ValidationError`` on anything invalid."""
    return _ADAPTER.validate_json(data)


class Publisher(Protocol):
    """Where events go: :class:`feedback.producer.EventProducer`, or a test's list."""

    def publish(self, event: Event) -> None: ...
