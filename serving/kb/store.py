"""Postgres access for the knowledge base (tables of migrations 0005_kb and 0008_kb_chunking).

Every change bumps ``kb_state.generation`` in the same transaction and sends
``NOTIFY ratchet_kb``, so retrievers know their in-process index is stale."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import psycopg

NOTIFY_CHANNEL = "ratchet_kb"


@dataclass(frozen=True)
class SourceRow:
    id: int
    location: str
    path: str
    title: str
    kind: str
    sha256: str
    bytes: int
    embedding_model: str
    chunking: str  # "<chunk_size>/<chunk_overlap>" it was split with ('' before 0008)
    chunks: int
    updated_at: datetime


@dataclass(frozen=True)
class NewChunk:
    text: str
    embedding: np.ndarray  # float32, unit length


@dataclass(frozen=True)
class ChunkMatrix:
    """All chunks with their embeddings, as the in-process index needs them."""

    generation: int
    ids: np.ndarray  # int64, (n,)
    vectors: np.ndarray  # float32, (n, dim)
    texts: list[str]
    paths: list[str]
    titles: list[str]


_SOURCE_COLUMNS = (
    "s.id, s.location, s.path, s.title, s.kind, s.sha256, s.bytes, s.embedding_model,"
    " s.chunking, (SELECT count(*) FROM kb_chunks c WHERE c.source_id = s.id), s.updated_at"
)


def get_source(conn: psycopg.Connection, location: str) -> SourceRow | None:
    row = conn.execute(
        f"SELECT {_SOURCE_COLUMNS} FROM kb_sources s WHERE s.location = %s", (location,)
    ).fetchone()
    return SourceRow(*row) if row else None


def list_sources(conn: psycopg.Connection, *, under: str | None = None) -> list[SourceRow]:
    """All sources by path, or those whose location lies under the directory ``under``."""
    if under is None:
        rows = conn.execute(f"SELECT {_SOURCE_COLUMNS} FROM kb_sources s ORDER BY s.path, s.id")
    else:
        prefix = under.rstrip("/") + "/"
        rows = conn.execute(
            f"SELECT {_SOURCE_COLUMNS} FROM kb_sources s"
            " WHERE left(s.location, length(%s)) = %s ORDER BY s.path, s.id",
            (prefix, prefix),
        )
    return [SourceRow(*r) for r in rows]


def has_pgvector(conn: psycopg.Connection) -> bool:
    """True when kb_chunks has the pgvector column (the extension was installable)."""
    row = conn.execute(
        "SELECT 1 FROM information_schema.columns"
        " WHERE table_name = 'kb_chunks' AND column_name = 'embedding_vec'"
    ).fetchone()
    return row is not None


def replace_source(
    conn: psycopg.Connection,
    *,
    location: str,
    path: str,
    title: str,
    kind: str,
    sha256: str,
    size: int,
    embedding_model: str,
    chunking: str,
    chunks: list[NewChunk],
) -> int:
    """Insert or update one source and replace all its chunks, in one transaction."""
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO kb_sources"
            " (location, path, title, kind, sha256, bytes, embedding_model, chunking)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (location) DO UPDATE SET title = EXCLUDED.title, kind = EXCLUDED.kind,"
            " sha256 = EXCLUDED.sha256, bytes = EXCLUDED.bytes,"
            " embedding_model = EXCLUDED.embedding_model, chunking = EXCLUDED.chunking,"
            " updated_at = now()"
            " RETURNING id",
            (location, path, title, kind, sha256, size, embedding_model, chunking),
        ).fetchone()
        assert row is not None
        source_id = int(row[0])
        conn.execute("DELETE FROM kb_chunks WHERE source_id = %s", (source_id,))
        vector = has_pgvector(conn)
        columns = "source_id, ordinal, text, dim, embedding" + (", embedding_vec" if vector else "")
        with conn.cursor().copy(f"COPY kb_chunks ({columns}) FROM STDIN") as copy:
            for ordinal, chunk in enumerate(chunks):
                emb = np.ascontiguousarray(chunk.embedding, dtype="<f4")
                values: list[object] = [source_id, ordinal, chunk.text, emb.shape[0], emb.tobytes()]
                if vector:
                    values.append("[" + ",".join(f"{x:.7g}" for x in emb) + "]")
                copy.write_row(values)
        _bump(conn)
    return source_id


def delete_sources(conn: psycopg.Connection, ids: list[int]) -> int:
    """Delete sources (their chunks cascade); returns how many went."""
    if not ids:
        return 0
    with conn.transaction():
        cur = conn.execute("DELETE FROM kb_sources WHERE id = ANY(%s)", (ids,))
        _bump(conn)
    return cur.rowcount


def generation(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT generation FROM kb_state").fetchone()
    return int(row[0]) if row else 0


def load_matrix(conn: psycopg.Connection) -> ChunkMatrix:
    """Every chunk and its embedding. The generation is read first: if ingestion
    commits in between, the index is newer than its number and is merely
    rebuilt once more on the next check."""
    with conn.transaction():
        gen = generation(conn)
        cur = conn.cursor(binary=True)
        cur.execute(
            "SELECT c.id, c.dim, c.embedding, c.text, s.path, s.title"
            " FROM kb_chunks c JOIN kb_sources s ON s.id = c.source_id ORDER BY c.id"
        )
        rows = cur.fetchall()
    dims = {r[1] for r in rows}
    if len(dims) > 1:
        raise ValueError(f"kb_chunks mixes embedding sizes {sorted(dims)}: re-ingest everything")
    dim = dims.pop() if dims else 0
    vectors = np.frombuffer(b"".join(bytes(r[2]) for r in rows), dtype="<f4").reshape(
        len(rows), dim
    )
    return ChunkMatrix(
        generation=gen,
        ids=np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)),
        vectors=vectors.astype(np.float32, copy=False),
        texts=[r[3] for r in rows],
        paths=[r[4] for r in rows],
        titles=[r[5] for r in rows],
    )


def _bump(conn: psycopg.Connection) -> None:
    conn.execute("UPDATE kb_state SET generation = generation + 1, changed_at = now()")
    conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
