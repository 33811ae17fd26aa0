"""Wire models of the OpenAI-compatible chat API. Fields not in OpenAI's spec
are marked ``# ratchet``; unknown request fields are ignored, as OpenAI clients
send many we do not use."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1


def _int64_bounds(schema: dict[str, Any]) -> None:
    # A callable: a dict given to json_schema_extra has its big ints turned into floats.
    for alt in schema.get("anyOf", [schema]):
        if alt.get("type") == "integer":
            alt.update(minimum=SEED_MIN, maximum=SEED_MAX)


class OpenAIBaseModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(OpenAIBaseModel):
    type: Literal["text"]
    text: str


class ChatMessageIn(OpenAIBaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(OpenAIBaseModel):
    include_usage: bool = False


class ChatCompletionRequest(OpenAIBaseModel):
    model: str | None = None
    # documented minItems; an empty list is a 400 from the service, as OpenAI answers
    messages: list[ChatMessageIn] = Field(json_schema_extra={"minItems": 1})
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    # int64, as in OpenAI's spec; outside it is a 400 (checked by the service)
    seed: int | None = Field(default=None, json_schema_extra=_int64_bounds)
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    conversation_id: uuid.UUID | None = None  # ratchet: groups turns; created if absent
    knowledge: bool | None = None  # ratchet: ground in the knowledge base (default: server setting)
    # ratchet: two choices to pick from, one from production and one from the canary in
    # random order (two production drafts when no canary is configured); n must be 1 or 2
    ab: bool = False

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        items = [v] if isinstance(v, str) else (v or [])
        if len(items) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(s == "" for s in items):
            raise ValueError("stop sequences must not be empty")
        return v

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens else self.max_tokens


class Usage(OpenAIBaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(OpenAIBaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(OpenAIBaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None
    message_id: str  # ratchet: rate this choice with it


class ChatCompletionResponse(OpenAIBaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    message_id: str  # ratchet: message id of choice 0
    model_version: str  # ratchet
    conversation_id: uuid.UUID  # ratchet
    citations: list[dict[str, Any]] = Field(default_factory=list)  # ratchet
    # ratchet, A/B requests only: "canary" (production vs canary) or "drafts" (no canary)
    ab: Literal["canary", "drafts"] | None = None


class DeltaMessage(OpenAIBaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(OpenAIBaseModel):
    index: int
    delta: DeltaMessage
    finish_reason: str | None = None
    logprobs: None = None
    message_id: str | None = None  # ratchet


class ChatCompletionChunk(OpenAIBaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    message_id: str  # ratchet
    model_version: str  # ratchet
    conversation_id: uuid.UUID  # ratchet
    citations: list[dict[str, Any]] | None = None  # ratchet: on the first chunk
    ab: Literal["canary", "drafts"] | None = None  # ratchet: on the first chunk (A/B requests)


class ModelCard(OpenAIBaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ratchet"


class ModelList(OpenAIBaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
