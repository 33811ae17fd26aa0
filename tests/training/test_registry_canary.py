"""The canary role in the model registry: only a candidate, at most one, audited,
announced on ``ratchet_models``, ended by promotion; and its CLI, whose refusals
name the problem without a traceback. No training: versions are registered as a
training cycle would register them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from serving.cli import main
from training import registry
from training.canary_report import canary_report
from training.errors import RegistryError


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    """v0001 production (base), v0002 and v0004 candidates, v0003 rejected."""
    with psycopg.connect(database_url, autocommit=True) as c:
        registry.ensure_base(c, "/models/base", "0" * 64)
        for version, passed in (("v0002", True), ("v0003", False), ("v0004", True)):
            gates = {"passed": passed, "gates": {"reward_accuracy": {"passed": passed}}}
            with c.transaction():
                registry.register_version(
                    c,
                    version_id=version,
                    path=f"/models/{version}",
                    weights_sha256="0" * 64,
                    parent_id="v0001",
                    training_run_id=None,
                    metrics={},
                    gate_report=gates,
                    gates_passed=passed,
                    actor="trainer",
                )
        yield c


@pytest.fixture
def cli(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("RATCHET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "220")
    monkeypatch.delenv("RATCHET_ACTOR", raising=False)


def canary_id(conn: psycopg.Connection) -> str | None:
    version = registry.get_canary(conn)
    return version.id if version else None


def test_a_candidate_becomes_the_canary_audited_and_announced(
    conn: psycopg.Connection, database_url: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {registry.NOTIFY_CHANNEL}")
        marked = registry.set_canary(conn, "v0002", actor="olga", reason="try it on real users")
        assert marked.canary and marked.status == "candidate"
        # A second canary replaces the first: at most one.
        registry.set_canary(conn, "v0004", actor="olga")
        registry.clear_canary(conn, actor="olga", reason="enough data")
        payloads = [n.payload for n in listener.notifies(timeout=5, stop_after=3)]
    assert payloads == ["canary:v0002", "canary:v0004", "canary:"]
    assert canary_id(conn) is None
    assert [v.id for v in registry.list_versions(conn) if v.canary] == []
    audit = [
        (e.action, e.actor, e.from_version, e.to_version, e.reason)
        for e in registry.audit_log(conn)
        if e.action.startswith("canary")
    ]
    assert audit == [
        ("canary", "olga", None, "v0002", "try it on real users"),
        ("canary", "olga", "v0002", "v0004", None),
        ("canary_clear", "olga", "v0004", None, "enough data"),
    ]


def test_only_a_candidate_can_be_the_canary(conn: psycopg.Connection) -> None:
    with pytest.raises(RegistryError, match=r"v0003 cannot be the canary: it was rejected.*"):
        registry.set_canary(conn, "v0003", actor="olga")
    with pytest.raises(RegistryError, match="reward_accuracy"):
        registry.set_canary(conn, "v0003", actor="olga")
    with pytest.raises(RegistryError, match="it is the production version"):
        registry.set_canary(conn, "v0001", actor="olga")
    with pytest.raises(RegistryError, match="no model version 'v0099'"):
        registry.set_canary(conn, "v0099", actor="olga")
    registry.promote(conn, "v0002", actor="olga", reason="gates passed")
    with pytest.raises(RegistryError, match="v0001 cannot be the canary: it is retired"):
        registry.set_canary(conn, "v0001", actor="olga")
    with pytest.raises(RegistryError, match="there is no canary to clear"):
        registry.clear_canary(conn, actor="olga")
    registry.set_canary(conn, "v0004", actor="olga")
    with pytest.raises(RegistryError, match="v0004 is already the canary"):
        registry.set_canary(conn, "v0004", actor="olga")
    assert canary_id(conn) == "v0004"
    # Refusals change nothing and leave no audit entry.
    canaries = [e.to_version for e in registry.audit_log(conn) if e.action.startswith("canary")]
    assert canaries == ["v0004"]


def test_the_schema_refuses_two_canaries_or_a_canary_that_is_not_a_candidate(
    conn: psycopg.Connection,
) -> None:
    registry.set_canary(conn, "v0002", actor="olga")
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("UPDATE model_versions SET canary = true WHERE id = 'v0004'")
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE model_versions SET status = 'retired' WHERE id = 'v0002'")


def test_promoting_the_canary_ends_its_canary_role(conn: psycopg.Connection) -> None:
    registry.set_canary(conn, "v0002", actor="olga")
    promoted = registry.promote(conn, "v0002", actor="bob", reason="won the A/B")
    assert promoted.status == "production" and not promoted.canary
    assert canary_id(conn) is None
    last = registry.audit_log(conn)[-2:]
    assert [(e.action, e.from_version, e.to_version) for e in last] == [
        ("promote", "v0001", "v0002"),
        ("canary_clear", "v0002", None),
    ]
    # Promoting another version leaves the canary in place.
    registry.set_canary(conn, "v0004", actor="olga")
    registry.rollback(conn, actor="bob", reason="back")
    assert canary_id(conn) == "v0004"


def test_canary_report_needs_a_canary_and_counts_nothing_without_picks(
    conn: psycopg.Connection,
) -> None:
    with pytest.raises(RegistryError, match="no canary is set"):
        canary_report(conn)
    registry.set_canary(conn, "v0002", actor="olga")
    report = canary_report(conn)
    assert (report.canary, report.baseline, report.total) == ("v0002", "v0001", 0)
    with pytest.raises(RegistryError, match="both v0001"):
        canary_report(conn, canary="v0001")


def test_cli_marks_and_clears_the_canary(
    conn: psycopg.Connection, cli: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "canary", "v0002", "--reason", "A/B", "--actor", "olga"]) == 0
    assert "v0002 is now the canary" in capsys.readouterr().out
    assert canary_id(conn) == "v0002"
    assert main(["models", "list"]) == 0
    assert "candidate (canary)" in capsys.readouterr().out
    assert main(["models", "show", "v0002"]) == 0
    assert "v0002: candidate (canary)" in capsys.readouterr().out
    assert main(["models", "canary-report"]) == 0
    out = capsys.readouterr().out
    assert "v0002 (canary) vs v0001 (production)" in out and "no comparisons" in out
    assert main(["models", "canary", "--clear", "--actor", "olga"]) == 0
    assert "canary cleared: v0002" in capsys.readouterr().out
    assert canary_id(conn) is None
    actions = [(e.action, e.actor) for e in registry.audit_log(conn)][-2:]
    assert actions == [("canary", "olga"), ("canary_clear", "olga")]


def test_cli_refusals_name_the_problem_without_a_traceback(
    conn: psycopg.Connection, cli: None, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        (["models", "canary", "v0003"], "v0003 cannot be the canary: it was rejected"),
        (["models", "canary", "v0001"], "v0001 cannot be the canary: it is the production"),
        (["models", "canary", "v0099"], "no model version 'v0099'"),
        (["models", "canary", "--clear"], "there is no canary to clear"),
        (["models", "canary"], "name the candidate to serve as the canary, or --clear"),
        (["models", "canary", "v0002", "--clear"], "or --clear (not both)"),
        (["models", "canary-report"], "no canary is set"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err, (argv, err)
        assert err.startswith("ratchet models: ") and "Traceback" not in err
    assert canary_id(conn) is None
