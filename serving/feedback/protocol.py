"""Wire models of the feedback API (``/v1/feedback/...``). None of these are in
OpenAI's spec; the limits mirror :mod:`feedback.events`, so a request that
passes here always makes a valid event."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StringConstraints, field_validator, model_validator
from pydantic.config import JsonDict

from serving.chat.protocol import OpenAIBaseModel

# The pattern is documented, not enforced here: a malformed id gets the service's
# 422 ``malformed_message_id`` (feedback.message_ids), with a message naming it.
MESSAGE_ID_PATTERN = r"^msg_[0-9a-f]{32}_[0-9a-f]{8}_[0-9a-f]{16}$"
MessageId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        description="The reply's id (X-Ratchet-Message-Id).",
        json_schema_extra={"pattern": MESSAGE_ID_PATTERN},
    ),
]
Tag = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


def _no_nul(value: str | None) -> str | None:
    # Postgres text cannot hold NUL; refuse it here rather than dead-letter it later.
    if value is not None and "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


class RatingRequest(OpenAIBaseModel):
    """Thumbs or stars on one reply; a later rating of the same reply replaces it."""

    message_id: MessageId
    thumbs: Literal["up", "down"] | None = None
    stars: int | None = Field(default=None, ge=1, le=5)
    comment: str | None = Field(default=None, max_length=4000)
    tags: list[Tag] = Field(default_factory=list, max_length=20)

    _comment = field_validator("comment")(_no_nul)

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: list[str]) -> list[str]:
        for tag in tags:
            _no_nul(tag)
        return tags

    @model_validator(mode="after")
    def _one_score(self) -> RatingRequest:
        if (self.thumbs is None) == (self.stars is None):
            raise ValueError("give exactly one of 'thumbs' or 'stars'")
        return self


class ComparisonRequest(OpenAIBaseModel):
    """An A/B pick between two replies (to the same prompt)."""

    message_id_a: MessageId
    message_id_b: MessageId
    winner: Literal["a", "b", "tie"]

    @model_validator(mode="after")
    def _distinct(self) -> ComparisonRequest:
        if self.message_id_a == self.message_id_b:
            raise ValueError("message_id_a and message_id_b must differ")
        return self


class CorrectionRequest(OpenAIBaseModel):
    """The answer the user wanted instead of the reply; a later one replaces it."""

    message_id: MessageId
    corrected_reply: str = Field(min_length=1, max_length=20000)

    _corrected = field_validator("corrected_reply")(_no_nul)

    @field_validator("corrected_reply")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value


MAX_BATCH = 1000


_NOT_EMPTY: JsonDict = {
    "anyOf": [
        {"required": [name], "properties": {name: {"minItems": 1}}}
        for name in ("ratings", "comparisons", "corrections")
    ]
}


class FeedbackBatch(OpenAIBaseModel):
    """Many pieces of feedback in one request (at most ``MAX_BATCH`` in all);
    accepted or refused as a whole."""

    model_config = ConfigDict(extra="ignore", json_schema_extra=_NOT_EMPTY)

    ratings: list[RatingRequest] = Field(default_factory=list, max_length=MAX_BATCH)
    comparisons: list[ComparisonRequest] = Field(default_factory=list, max_length=MAX_BATCH)
    corrections: list[CorrectionRequest] = Field(default_factory=list, max_length=MAX_BATCH)

    @model_validator(mode="after")
    def _size(self) -> FeedbackBatch:
        size = len(self.ratings) + len(self.comparisons) + len(self.corrections)
        if size == 0:
            raise ValueError("the batch is empty: give ratings, comparisons or corrections")
        if size > MAX_BATCH:
            raise ValueError(f"the batch has {size} items; at most {MAX_BATCH} per request")
        return self


class FeedbackAccepted(OpenAIBaseModel):
    """The event the feedback became (HTTP 202: stored asynchronously)."""

    event_id: uuid.UUID
    status: Literal["accepted"] = "accepted"


class FeedbackBatchAccepted(OpenAIBaseModel):
    """One :class:`FeedbackAccepted` per item, in the request's order."""

    ratings: list[FeedbackAccepted]
    comparisons: list[FeedbackAccepted]
    corrections: list[FeedbackAccepted]
