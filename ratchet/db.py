"""Postgres connections and schema migrations.

Each package owns its tables' migrations: ``<package>/migrations/NNNN_name.sql``
(feedback: messages and feedback; training: the model registry; serving: API
keys, knowledge base, Slack). The numbers are global: the runner gathers the
files of every package in :data:`MIGRATION_PACKAGES` and applies them in one
order, each in its own transaction, recorded by name (``NNNN_name``) in
``schema_migrations``. A Postgres advisory lock makes concurrent ``migrate``
calls safe.

The runner finds a package's folder by name without importing the package
(like Django's ``INSTALLED_APPS``), so this module depends on none of them.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg_pool import ConnectionPool

logger = logging.getLogger(__name__)

# The packages whose ``migrations/`` folder holds tables, lowest layer first.
MIGRATION_PACKAGES: tuple[str, ...] = ("feedback", "training", "serving")
_MIGRATE_LOCK = 7_400_001  # advisory lock key held while migrating


class MigrationError(Exception):
    """Two migrations share a number, or a package's migrations folder is malformed."""


def connect(url: str, **kwargs: object) -> psycopg.Connection:
    return psycopg.connect(url, **kwargs)  # type: ignore[arg-type]


@contextmanager
def given_or_own(
    conn: psycopg.Connection | None, database_url: str | None = None
) -> Iterator[psycopg.Connection]:
    """``conn``, or a connection of our own to ``database_url``, closed afterwards."""
    if conn is not None:
        yield conn
        return
    if database_url is None:
        raise ValueError("pass a connection or the database URL to open one")
    with psycopg.connect(database_url, connect_timeout=5) as own:
        yield own


def open_pool(url: str, *, min_size: int = 1, max_size: int = 8) -> ConnectionPool:
    """Open a pool and wait for it, so a bad DSN fails at start-up."""
    pool = ConnectionPool(url, min_size=min_size, max_size=max_size, open=False)
    pool.open(wait=True, timeout=15)
    return pool


def ensure_database(url: str) -> None:
    """Create the database named in ``url`` if the server does not have it yet."""
    name = psycopg.conninfo.conninfo_to_dict(url).get("dbname") or "postgres"
    admin = psycopg.conninfo.make_conninfo(url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            try:
                conn.execute(f'CREATE DATABASE "{name}"')
            except psycopg.errors.DuplicateDatabase:
                pass


def migration_dirs(packages: tuple[str, ...] = MIGRATION_PACKAGES) -> list[Path]:
    """The ``migrations/`` folders of ``packages`` (found without importing them)."""
    dirs = []
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise MigrationError(f"package {name!r} (in MIGRATION_PACKAGES) is not installed")
        for location in spec.submodule_search_locations:
            folder = Path(location) / "migrations"
            if folder.is_dir():
                dirs.append(folder)
    return dirs


def migration_files(dirs: list[Path] | None = None) -> list[Path]:
    """Every package's migrations in their one global order (by number)."""
    files = [p for d in (dirs or migration_dirs()) for p in d.glob("[0-9][0-9][0-9][0-9]_*.sql")]
    files.sort(key=lambda p: p.name)
    by_number: dict[str, Path] = {}
    for path in files:
        other = by_number.setdefault(path.name[:4], path)
        if other is not path:
            raise MigrationError(
                f"migrations {other} and {path} share the number {path.name[:4]}: "
                "numbers are global across packages, take the next free one"
            )
    return files


def migrate(url: str, dirs: list[Path] | None = None) -> list[str]:
    """Apply the migrations the database lacks; return the names applied."""
    files = migration_files(dirs)
    ensure_database(url)
    applied: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATE_LOCK,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            for path in files:
                if path.stem in done:
                    continue
                with conn.transaction():
                    conn.execute(path.read_text())  # type: ignore[arg-type]
                    conn.execute(
                        "INSERT INTO schema_migrations (version) VALUES (%s)", (path.stem,)
                    )
                logger.info("applied migration %s (%s)", path.stem, path.parent.parent.name)
                applied.append(path.stem)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATE_LOCK,))
    return applied
