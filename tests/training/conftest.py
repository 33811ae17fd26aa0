"""Fixtures of the training tests. Training is slow, so a module trains once
into a database of its own and its tests share the results."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from infra.local.postgres import PrivateCluster


@pytest.fixture(scope="module")
def module_db(pg_cluster: PrivateCluster, template_db: str) -> Iterator[str]:
    """A fresh, migrated database shared by the tests of one module."""
    name = f"m_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_cluster.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield pg_cluster.url_for(name)
    with psycopg.connect(pg_cluster.url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
