"""The demo's probe (``python -m infra.demo.probe``) names a store it cannot read, as
the ``ratchet`` command does, instead of printing a traceback."""

from __future__ import annotations

import psycopg
import pytest

from infra.demo.probe import main
from infra.local.postgres import PrivateCluster


@pytest.mark.parametrize(
    ("database", "named"),
    [
        ("ratchet_no_such_database", 'database "ratchet_no_such_database" does not exist'),
        ("ratchet_not_migrated", "run `ratchet db migrate`"),
    ],
)
def test_a_store_it_cannot_read_is_named_not_a_traceback(
    pg_cluster: PrivateCluster,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    database: str,
    named: str,
) -> None:
    if database == "ratchet_not_migrated":
        with psycopg.connect(pg_cluster.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}"')
            conn.execute(f'CREATE DATABASE "{database}"')
    monkeypatch.setenv("DATABASE_URL", pg_cluster.url_for(database))

    assert main(["--stage", "pairs"]) == 2

    err = capsys.readouterr().err
    assert err.startswith("probe: ")
    assert named in err
    assert "Traceback" not in err
