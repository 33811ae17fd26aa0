"""The knowledge base as chat sees it: ``KnowledgeBase.retrieve`` implements
``serving.chat.grounding.Retriever``; ``KBLangChainRetriever`` wraps it as a
LangChain retriever.

The in-process index is rebuilt from Postgres when ``kb_state.generation``
moved (checked at most every ``refresh_seconds``; one indexed single-row read).
Chunks scoring below ``min_score`` are dropped, so an off-topic question
retrieves nothing and the model is told to say "I don't know"."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import numpy as np
from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from psycopg_pool import ConnectionPool
from pydantic import ConfigDict

from serving.chat.grounding import RetrievedChunk
from serving.kb import store
from serving.kb.embeddings import Embedder
from serving.kb.excerpts import excerpt
from serving.kb.index import Hit, MatrixIndex, PgVectorIndex
from serving.kb.settings import KBSettings
from serving.settings import ServingSettings

logger = logging.getLogger(__name__)


class KnowledgeBase:
    """Embedder + index + the Postgres pool they are built from."""

    def __init__(self, pool: ConnectionPool, embedder: Embedder, settings: KBSettings) -> None:
        self.pool = pool
        self.embedder = embedder
        self.settings = settings
        self._lock = threading.Lock()
        self._index: MatrixIndex | None = None
        self._checked_at = 0.0
        with pool.connection() as conn:
            self._pgvector = PgVectorIndex() if store.has_pgvector(conn) else None
        if self._pgvector is None:
            self.refresh(force=True)
        logger.info(
            "knowledge base ready: %s",
            "pgvector search in Postgres" if self._pgvector else f"{self.size} chunks in process",
        )

    @classmethod
    def open(
        cls, pool: ConnectionPool, settings: KBSettings, *, embedder: Embedder | None = None
    ) -> KnowledgeBase:
        """Load the embedding model (unless given) and build the index (blocking)."""
        embedder = embedder or Embedder(
            settings.embedding_model, batch_size=settings.embed_batch_size
        )
        return cls(pool, embedder, settings)

    @property
    def size(self) -> int:
        return len(self._index) if self._index else 0

    @property
    def backend(self) -> str:
        return "pgvector" if self._pgvector else "numpy"

    def refresh(self, *, force: bool = False) -> bool:
        """Rebuild the index if ingestion changed the KB; True when it did."""
        if self._pgvector is not None:
            return False
        now = time.monotonic()
        if not force and now - self._checked_at < self.settings.refresh_seconds:
            return False
        with self._lock:
            if not force and now - self._checked_at < self.settings.refresh_seconds:
                return False
            with self.pool.connection() as conn:
                gen = store.generation(conn)
                if not force and self._index is not None and gen == self._index.generation:
                    self._checked_at = time.monotonic()
                    return False
                started = time.perf_counter()
                index = MatrixIndex(store.load_matrix(conn))
            self._index = index  # an atomic swap: searches in flight keep the old snapshot
            self._checked_at = time.monotonic()
        logger.info(
            "kb index generation %d: %d chunks loaded in %.0f ms",
            index.generation,
            len(index),
            (time.perf_counter() - started) * 1000,
        )
        return True

    def search(self, query: str, k: int, *, min_score: float | None = None) -> list[Hit]:
        """The ``k`` best chunks for ``query`` scoring at least ``min_score`` (blocking)."""
        if not query.strip():
            return []
        return self._search(self.embedder.embed([query])[0], k, min_score)

    def _search(self, vector: np.ndarray, k: int, min_score: float | None = None) -> list[Hit]:
        threshold = self.settings.min_score if min_score is None else min_score
        if self._pgvector is not None:
            with self.pool.connection() as conn:
                return self._pgvector.search_with(conn, vector, k, threshold)
        self.refresh()
        index = self._index
        return index.search(vector, k, threshold) if index else []

    async def retrieve(self, query: str, k: int) -> list[RetrievedChunk]:
        """``serving.chat.grounding.Retriever``: relevant chunks, best first (cut to
        excerpts when ``excerpt_sentences`` is set)."""
        return await asyncio.to_thread(self._retrieve, query, k)

    def _retrieve(self, query: str, k: int) -> list[RetrievedChunk]:
        if not query.strip():
            return []
        vector = self.embedder.embed([query])[0]
        chunks = [to_retrieved(h) for h in self._search(vector, k)]
        n = self.settings.excerpt_sentences
        return excerpt(chunks, vector, self.embedder, n) if n and chunks else chunks

    def sources(self) -> list[store.SourceRow]:
        with self.pool.connection() as conn:
            return store.list_sources(conn)

    def as_langchain(self, k: int = 4) -> KBLangChainRetriever:
        return KBLangChainRetriever(kb=self, k=k)


def to_retrieved(hit: Hit) -> RetrievedChunk:
    return RetrievedChunk(
        chunk_id=str(hit.chunk_id),
        source_path=hit.source_path,
        title=hit.title,
        text=hit.text,
        score=hit.score,
    )


def to_document(hit: Hit) -> Document:
    return Document(
        page_content=hit.text,
        id=str(hit.chunk_id),
        metadata={
            "chunk_id": str(hit.chunk_id),
            "source": hit.source_path,
            "title": hit.title,
            "score": hit.score,
        },
    )


class KBLangChainRetriever(BaseRetriever):
    """The knowledge base as a LangChain retriever (``invoke``/``ainvoke`` -> Documents)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    kb: Any  # KnowledgeBase (Any keeps pydantic from inspecting it)
    k: int = 4

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        return [to_document(h) for h in self.kb.search(query, self.k)]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        hits = await asyncio.to_thread(self.kb.search, query, self.k)
        return [to_document(h) for h in hits]


def open_knowledge_base(settings: ServingSettings, pool: ConnectionPool) -> KnowledgeBase:
    """The knowledge base for the API server (blocking: loads the model, builds
    the index). ``RATCHET_KB_*`` variables tune it; the database is serving's."""
    kb = KnowledgeBase.open(pool, KBSettings(database_url=settings.database_url))
    if kb.backend == "numpy" and kb.size == 0:
        logger.warning("the knowledge base is empty: run `ratchet kb ingest PATH...`")
    return kb
