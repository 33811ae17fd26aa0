"""Acceptance tests of a training cycle on the tiny model, real TRL and real Postgres.

Training is the slow part, so the module trains twice and every test reads the
results: one cycle on learnable synthetic pairs (it must pass its gates) and
one on randomly labelled pairs (the reward model cannot beat chance, so the
reward-accuracy gate must reject it). The last tests promote and roll back."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from serving.cli import main
from tests.training.isolated import cli_env, make_settings
from tests.training.synthetic import ListSource, make_pairs
from training import registry, runs
from training.base_model import weights_digest
from training.cycle import CycleResult, run_cycle
from training.errors import RegistryError
from training.gates import load_thresholds
from training.settings import TrainingSettings

GATES = {"reward_accuracy", "win_rate", "kl", "length", "regression", "safety"}


@dataclass
class Trained:
    settings: TrainingSettings
    good: CycleResult  # learnable pairs
    noise: CycleResult  # random labels


@pytest.fixture(scope="module")
def trained(
    module_db: str, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Trained:
    settings = make_settings(module_db, tmp_path_factory.mktemp("cycle"), tiny_model_dir)
    good = run_cycle(settings, size="tiny", source=ListSource(make_pairs(200)), progress=False)
    # Recorded after the first cycle's watermark, so the second cycle sees only these.
    later = datetime(2026, 11, 2, tzinfo=UTC)
    noise = run_cycle(
        settings,
        size="tiny",
        source=ListSource(make_pairs(200, random_labels=True, start=later)),
        progress=False,
    )
    return Trained(settings, good, noise)


@pytest.fixture
def conn(trained: Trained) -> Iterator[psycopg.Connection]:
    with psycopg.connect(trained.settings.database_url, autocommit=True) as c:
        yield c


def test_reward_model_learns_the_preference(trained: Trained) -> None:
    reward = trained.good.metrics["reward"]
    assert reward["heldout_pairs"] >= 20
    assert reward["heldout_accuracy"] >= 0.75, reward


def test_ppo_raises_the_reward_within_the_kl_budget(trained: Trained) -> None:
    ppo = trained.good.metrics["ppo"]
    history = ppo["history"]
    assert len(history) == 30  # the "tiny" preset's steps
    k = len(history) // 4
    first = sum(h["mean_score"] for h in history[:k]) / k
    last = sum(h["mean_score"] for h in history[-k:]) / k
    assert (first, last) == pytest.approx((ppo["first_mean_score"], ppo["last_mean_score"]))
    assert last > first + 0.5, [round(h["mean_score"], 2) for h in history]
    kl_max = load_thresholds().kl_max
    assert 0 <= ppo["final_kl"] <= kl_max
    assert all(h["mean_kl"] <= kl_max for h in history)


def test_learnable_candidate_passes_its_gates_and_is_registered(
    trained: Trained, conn: psycopg.Connection
) -> None:
    result = trained.good
    assert result.status == "candidate", result.gate_report
    report = result.gate_report
    assert report is not None and report["passed"] is True
    assert set(report["gates"]) == GATES
    for name, gate in report["gates"].items():
        assert gate["passed"] is True, (name, gate)
        assert {"value", "threshold"} <= set(gate), name
    win = report["gates"]["win_rate"]
    assert win["ci_lower"] >= 0.5 and win["candidate_mean_reward"] > win["production_mean_reward"]

    version = registry.get_version(conn, result.candidate_version or "")
    assert version is not None
    assert (version.id, version.status, version.parent_id) == ("v0002", "candidate", "v0001")
    assert version.gates_passed is True
    assert version.gate_report == report  # the full report, stored with the version
    assert version.metrics["reward"]["heldout_accuracy"] >= 0.75
    assert "history" not in version.metrics["ppo"]
    path = Path(version.path)
    assert path == trained.settings.models_dir.resolve() / "v0002"
    assert (path / "config.json").exists()
    assert version.weights_sha256 == weights_digest(path)
    assert str(version.training_run_id) == str(result.run_id)

    run = runs.get_run(conn, result.run_id)
    assert run is not None
    assert (run["status"], run["candidate_version"], run["algo"]) == ("succeeded", "v0002", "ppo")
    assert run["watermark"] is not None and run["timings"]["ppo_s"] > 0
    assert result.plot_path is not None and result.plot_path.stat().st_size > 0
    assert not list(trained.settings.models_dir.glob(".tmp-*"))


def test_random_labels_are_rejected_by_the_reward_accuracy_gate(
    trained: Trained, conn: psycopg.Connection
) -> None:
    result = trained.noise
    assert result.status == "rejected"
    report = result.gate_report
    assert report is not None and report["passed"] is False
    accuracy = report["gates"]["reward_accuracy"]
    assert accuracy["passed"] is False
    assert accuracy["value"] < load_thresholds().reward_accuracy_min
    version = registry.get_version(conn, "v0003")
    assert version is not None
    assert (version.status, version.gates_passed, version.parent_id) == ("rejected", False, "v0001")
    assert result.metrics["snapshot"]["pairs_loaded"] == 200  # only the new pairs
    rejections = [e for e in registry.audit_log(conn) if e.action == "reject"]
    assert [e.to_version for e in rejections] == ["v0003"]
    assert "reward_accuracy" in (rejections[0].reason or "")


def test_cli_lists_and_shows_versions(
    trained: Trained, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cli_env(monkeypatch, trained.settings)
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    for expected in ("v0001", "v0002", "v0003", "production", "candidate", "rejected"):
        assert expected in out

    assert main(["models", "show", "v0003"]) == 0
    out = capsys.readouterr().out
    assert "v0003: rejected" in out
    assert "Evaluation gates" in out and "FAILED" in out
    for gate in GATES:
        assert gate in out
    assert "reward model held-out accuracy" in out

    assert main(["models", "show", "v0099"]) == 2
    captured = capsys.readouterr()
    assert "no model version 'v0099'" in captured.err and "Traceback" not in captured.err


def test_cli_refuses_to_promote_a_rejected_version(
    trained: Trained,
    conn: psycopg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli_env(monkeypatch, trained.settings)
    assert main(["models", "promote", "v0003", "--reason", "looks fine to me"]) == 2
    err = capsys.readouterr().err
    assert "refusing to promote v0003" in err and "reward_accuracy" in err
    assert "Traceback" not in err
    # --force without a reason never reaches the registry: argparse refuses it.
    with pytest.raises(SystemExit) as exc:
        main(["models", "promote", "v0003", "--force"])
    assert exc.value.code == 2
    assert "--reason" in capsys.readouterr().err
    production = registry.get_production(conn)
    assert production is not None and production.id == "v0001"


def test_promote_force_and_rollback_are_audited(
    trained: Trained,
    conn: psycopg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def production() -> str:
        version = registry.get_production(conn)
        assert version is not None
        return version.id

    assert production() == "v0001"
    # A version whose gates failed is refused, naming the failed gate.
    with pytest.raises(RegistryError, match="reward_accuracy"):
        registry.promote(conn, "v0003", actor="alice", reason="please")
    # Forcing needs a reason.
    with pytest.raises(RegistryError, match="needs a reason"):
        registry.promote(conn, "v0003", actor="alice", reason=" ", force=True)
    assert production() == "v0001"

    # The candidate that passed its gates is promoted (through the CLI).
    cli_env(monkeypatch, trained.settings)
    assert main(["models", "promote", "v0002", "--reason", "gates passed", "--actor", "bob"]) == 0
    assert "v0002 is now the production version" in capsys.readouterr().out
    assert production() == "v0002"
    assert registry.get_version(conn, "v0001").status == "retired"  # type: ignore[union-attr]

    # An operator may force the rejected one, with a reason; it is audited as such.
    registry.promote(conn, "v0003", actor="carol", reason="incident 42: override", force=True)
    assert production() == "v0003"

    # Rollback restores the previous production version, then the one before.
    assert registry.rollback(conn, actor="dave", reason="v0003 answers badly").id == "v0002"
    assert production() == "v0002"
    assert main(["models", "rollback", "--reason", "back to base", "--actor", "erin"]) == 0
    assert production() == "v0001"
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback(conn, actor="dave", reason="again")

    audit = [
        (e.action, e.actor, e.from_version, e.to_version, e.reason)
        for e in registry.audit_log(conn)
        if e.action in ("promote", "force_promote", "rollback")
    ]
    assert audit == [
        ("promote", "bob", "v0001", "v0002", "gates passed"),
        ("force_promote", "carol", "v0002", "v0003", "incident 42: override"),
        ("rollback", "dave", "v0003", "v0002", "v0003 answers badly"),
        ("rollback", "erin", "v0002", "v0001", "back to base"),
    ]
    statuses = {v.id: v.status for v in registry.list_versions(conn)}
    assert statuses == {"v0001": "production", "v0002": "retired", "v0003": "retired"}
