"""Nearest-neighbour search over chunk embeddings.

``MatrixIndex``: all embeddings in one NumPy matrix in process (exact cosine
search; at 10k x 384 one query is a ~4 MB matrix-vector product, well under a
millisecond to a few ms). ``PgVectorIndex``: the same search done by Postgres
with pgvector when the server has the extension (migration 0005 adds the
column then). Both return ``Hit``s, best first."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import psycopg

from serving.kb.store import ChunkMatrix


@dataclass(frozen=True)
class Hit:
    chunk_id: int
    source_path: str
    title: str
    text: str
    score: float  # cosine similarity, -1..1


class MatrixIndex:
    """An immutable snapshot of the knowledge base at one generation."""

    def __init__(self, matrix: ChunkMatrix) -> None:
        self.generation = matrix.generation
        self._m = matrix

    def __len__(self) -> int:
        return int(self._m.ids.shape[0])

    def search(self, query: np.ndarray, k: int, min_score: float) -> list[Hit]:
        m = self._m
        n = len(self)
        if n == 0 or k <= 0:
            return []
        if query.shape[0] != m.vectors.shape[1]:
            raise ValueError(
                f"query has {query.shape[0]} dimensions, the index {m.vectors.shape[1]}: "
                "the knowledge base was embedded with another model; re-ingest it"
            )
        scores = m.vectors @ query.astype(np.float32, copy=False)
        k = min(k, n)
        top = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
        top = top[np.argsort(-scores[top], kind="stable")]
        return [
            Hit(int(m.ids[i]), m.paths[i], m.titles[i], m.texts[i], float(scores[i]))
            for i in top
            if scores[i] >= min_score
        ]


class PgVectorIndex:
    """Search in Postgres with pgvector (``embedding_vec <=> query``).

    Untested here: Debian 12's PostgreSQL 15 has no pgvector package."""

    generation = -1

    def search_with(
        self, conn: psycopg.Connection, query: np.ndarray, k: int, min_score: float
    ) -> list[Hit]:
        literal = "[" + ",".join(f"{x:.7g}" for x in query) + "]"
        rows = conn.execute(
            "SELECT c.id, s.path, s.title, c.text, 1 - (c.embedding_vec <=> %s::vector) AS score"
            " FROM kb_chunks c JOIN kb_sources s ON s.id = c.source_id"
            " ORDER BY c.embedding_vec <=> %s::vector LIMIT %s",
            (literal, literal, k),
        ).fetchall()
        return [Hit(int(r[0]), r[1], r[2], r[3], float(r[4])) for r in rows if r[4] >= min_score]
