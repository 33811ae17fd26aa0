"""Knowledge-base fixtures: the embedding model (loaded once per session) and
a database with the sample knowledge base ingested (once per module)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from infra.local.postgres import PrivateCluster
from serving.kb.embeddings import Embedder
from serving.kb.settings import KBSettings

REPO = Path(__file__).resolve().parents[3]
SAMPLE_KB = REPO / "infra" / "demo" / "kb"


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder()


@pytest.fixture
def kb_settings(database_url: str) -> KBSettings:
    return KBSettings(database_url=database_url, refresh_seconds=0.0)


@pytest.fixture
def kb_copy(tmp_path: Path) -> Path:
    """A private copy of the sample knowledge base that a test may change."""
    dest = tmp_path / "kb"
    shutil.copytree(SAMPLE_KB, dest)
    return dest


@pytest.fixture(scope="module")
def sample_kb_url(
    pg_cluster: PrivateCluster, template_db: str, embedder: Embedder
) -> Iterator[str]:
    """A database holding the ingested sample knowledge base, shared by a module."""
    from serving.kb.ingest import Ingestor

    name = f"kb_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_cluster.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    url = pg_cluster.url_for(name)
    with psycopg.connect(url) as conn:
        report = Ingestor(conn, embedder, KBSettings(database_url=url)).ingest(
            [SAMPLE_KB], progress=False
        )
    assert not report.failed, report.failed
    yield url
    with psycopg.connect(pg_cluster.url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
