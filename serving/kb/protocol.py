"""Wire models of the knowledge-base inspection API (Ratchet's own; not OpenAI)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class KBBaseModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchRequest(KBBaseModel):
    query: str = Field(min_length=1, max_length=4000, description="The question to retrieve for.")
    k: int = Field(default=4, ge=1, le=50, description="How many chunks to return at most.")
    min_score: float | None = Field(
        default=None,
        ge=-1.0,
        le=1.0,
        description="Relevance threshold (cosine); default: the server's RATCHET_KB_MIN_SCORE.",
    )


class SearchHit(KBBaseModel):
    chunk_id: str
    source_path: str
    title: str
    text: str
    score: float


class SearchResponse(KBBaseModel):
    object: Literal["list"] = "list"
    data: list[SearchHit]
    min_score: float
    index: str  # numpy (in process) | pgvector
    chunks_indexed: int | None  # None with pgvector


class SourceOut(KBBaseModel):
    path: str
    title: str
    kind: str
    sha256: str
    bytes: int
    chunks: int
    updated_at: datetime


class SourceList(KBBaseModel):
    object: Literal["list"] = "list"
    data: list[SourceOut]
