"""The demo's probe (``python -m infra.demo.probe``) names a store it cannot read, as
the ``ratchet`` command does, instead of printing a traceback."""

from __future__ import annotations

import psycopg
import pytest

from infra.demo.probe import main
from infra.local.postgres import PrivateCluster


@pytest.mark.parametrize(
    ("exists", "named"),
    [
        (False, 'database "ratchet_probe_store" does not exist'),
        (True, "run `ratchet db migrate`"),
    ],
    ids=["no-such-database", "not-migrated"],
)
def test_a_store_it_cannot_read_is_named_not_a_traceback(
    pg_cluster: PrivateCluster,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    exists: bool,
    named: str,
) -> None:
    name = "ratchet_probe_store"
    with psycopg.connect(pg_cluster.url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        if exists:
            conn.execute(f'CREATE DATABASE "{name}"')  # empty: no migrations applied
    monkeypatch.setenv("DATABASE_URL", pg_cluster.url_for(name))

    assert main(["--stage", "pairs"]) == 2

    err = capsys.readouterr().err
    assert err.startswith("probe: ")
    assert named in err
    assert "Traceback" not in err
