"""Each package owns its tables' migrations; the runner applies them in one global
order, and a database migrated before the split counts as migrated."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest

from ratchet.db import MigrationError, migrate, migration_dirs, migration_files

# What the single-folder runner (feedback/migrations, before the split) recorded.
RECORDED_BEFORE_THE_SPLIT = [
    "0001_core",
    "0002_registry",
    "0003_feedback",
    "0004_api_keys",
    "0005_kb",
    "0006_slack",
    "0007_canary",
]


def _old_runner(url: str, files: list[Path]) -> None:
    """The migration loop as ``feedback.db.migrate`` ran it before the split
    (one folder, ids are the file stems)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for path in sorted(files):
            with conn.transaction():
                conn.execute(path.read_text())  # type: ignore[arg-type]
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (path.stem,))


def test_each_package_owns_its_tables_migrations() -> None:
    owners = {p.stem: p.parent.parent.name for p in migration_files()}
    assert owners == {
        "0001_core": "feedback",
        "0002_registry": "training",
        "0003_feedback": "feedback",
        "0004_api_keys": "serving",
        "0005_kb": "serving",
        "0006_slack": "serving",
        "0007_canary": "training",
    } | {k: v for k, v in owners.items() if k > "0007"}  # later ones: any owner
    assert [p.stem for p in migration_files()][:7] == RECORDED_BEFORE_THE_SPLIT


def test_a_database_migrated_before_the_split_is_already_migrated(pg_cluster) -> None:
    url = pg_cluster.url_for(f"old_{uuid.uuid4().hex[:8]}")
    with psycopg.connect(pg_cluster.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{url.rsplit("/", 1)[-1]}"')
    before = [p for p in migration_files() if p.stem in RECORDED_BEFORE_THE_SPLIT]
    _old_runner(url, before)
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO users (id) VALUES ('kept')")
        conn.commit()

    applied = migrate(url)

    # Only migrations newer than the split (none yet, or another branch's) are applied.
    assert applied == [p.stem for p in migration_files() if p not in before]
    assert migrate(url) == []
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT id FROM users").fetchall() == [("kept",)]
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
    assert sorted(versions) == [p.stem for p in migration_files()]


def test_a_new_migration_in_any_package_runs_in_number_order(pg_cluster, tmp_path: Path) -> None:
    url = pg_cluster.url_for(f"new_{uuid.uuid4().hex[:8]}")
    extra = tmp_path / "newpkg" / "migrations"
    extra.mkdir(parents=True)
    (extra / "9001_later.sql").write_text("CREATE TABLE later (id int REFERENCES later0 (id));")
    (extra / "9000_first.sql").write_text("CREATE TABLE later0 (id int PRIMARY KEY);")
    dirs = [extra, *migration_dirs()]  # listed first, still applied last (by number)
    applied = migrate(url, dirs)
    assert applied[-2:] == ["9000_first", "9001_later"]
    assert applied[:-2] == [p.stem for p in migration_files()]


def test_two_packages_may_not_share_a_migration_number(tmp_path: Path) -> None:
    for pkg in ("a", "b"):
        (tmp_path / pkg / "migrations").mkdir(parents=True)
    (tmp_path / "a" / "migrations" / "0042_x.sql").write_text("SELECT 1;")
    (tmp_path / "b" / "migrations" / "0042_y.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="share the number 0042"):
        migration_files([tmp_path / "a" / "migrations", tmp_path / "b" / "migrations"])
