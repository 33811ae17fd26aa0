"""Thin routes for inspecting the knowledge base (operator role):
``GET /v1/kb/sources``, ``POST /v1/kb/search``."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends
from psycopg_pool import ConnectionPool

from serving.auth import User
from serving.deps import StateDep, require_role
from serving.errors import ServiceUnavailable, error_responses
from serving.kb import store
from serving.kb.protocol import SearchHit, SearchRequest, SearchResponse, SourceList, SourceOut

router = APIRouter(
    prefix="/v1/kb", tags=["knowledge base"], responses=error_responses(401, 403, 422, 429, 503)
)

Operator = Annotated[User, Depends(require_role("operator"))]


def _sources(pool: ConnectionPool) -> list[store.SourceRow]:
    with pool.connection() as conn:
        return store.list_sources(conn)


@router.get("/sources", response_model=SourceList)
async def list_sources(state: StateDep, user: Operator) -> SourceList:
    rows = await asyncio.to_thread(_sources, state.pool)
    return SourceList(
        data=[
            SourceOut(
                path=r.path,
                title=r.title,
                kind=r.kind,
                sha256=r.sha256,
                bytes=r.bytes,
                chunks=r.chunks,
                updated_at=r.updated_at,
            )
            for r in rows
        ]
    )


@router.post("/search", response_model=SearchResponse)
async def search(body: SearchRequest, state: StateDep, user: Operator) -> SearchResponse:
    kb = state.knowledge_base
    if kb is None:
        raise ServiceUnavailable(
            "the knowledge base is not loaded: start the server with RATCHET_KNOWLEDGE_BOT=true"
        )
    threshold = kb.settings.min_score if body.min_score is None else body.min_score
    hits = await asyncio.to_thread(kb.search, body.query, body.k, min_score=threshold)
    return SearchResponse(
        data=[
            SearchHit(
                chunk_id=str(h.chunk_id),
                source_path=h.source_path,
                title=h.title,
                text=h.text,
                score=h.score,
            )
            for h in hits
        ],
        min_score=threshold,
        index=kb.backend,
        chunks_indexed=None if kb.backend == "pgvector" else kb.size,
    )
