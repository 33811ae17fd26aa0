"""The operator operations module (``training.operations``), which ``ratchet models``
and the console both call: the promotion policy's refusals, a forced promotion's
audit, and starting a cycle under ``ratchet train``'s lock (real Postgres)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psycopg
import pytest

from training import operations, registry, runs
from training.errors import LockBusy, RegistryError
from training.gates import GateThresholds

POLICY = operations.Policy(GateThresholds(), require_canary=True)


def _versions(conn: psycopg.Connection) -> None:
    registry.ensure_base(conn, "/models/base", "0" * 64)
    for version, passed in (("v0002", False), ("v0003", True)):
        with conn.transaction():
            registry.register_version(
                conn, version_id=version, path=f"/models/{version}", weights_sha256="0" * 64,
                parent_id="v0001", training_run_id=None, metrics={},
                gate_report={"passed": passed, "gates": {"kl": {"passed": passed}}},
                gates_passed=passed, actor="test",
            )  # fmt: skip


def test_promotion_follows_the_policy_and_force_is_audited(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        _versions(conn)
        with pytest.raises(RegistryError, match=r"offline gates failed \(kl\)"):
            operations.promote(conn, "v0002", actor="olga", reason="why not", policy=POLICY)
        with pytest.raises(RegistryError, match="has not been the canary"):
            operations.promote(conn, "v0003", actor="olga", reason="why not", policy=POLICY)
        with pytest.raises(RegistryError, match="typed reason"):
            operations.promote(conn, "v0002", actor="olga", reason=" ", policy=POLICY, force=True)
        with pytest.raises(RegistryError, match="actor"):
            operations.rollback(conn, actor=" ", reason="r")
        assert registry.get_production(conn).id == "v0001"  # type: ignore[union-attr]
        operations.promote(conn, "v0002", actor="olga", reason="hotfix", policy=POLICY, force=True)
        last = registry.audit_log(conn, limit=1)[0]
        assert (last.action, last.actor, last.to_version) == ("force_promote", "olga", "v0002")
        assert last.reason is not None and last.reason.startswith("hotfix")
        assert operations.rollback(conn, actor="olga", reason="bad").id == "v0001"
        assert operations.set_canary(conn, "v0003", actor="olga").canary
        assert operations.clear_canary(conn, actor="olga").id == "v0003"


def test_a_cycle_is_not_started_while_another_holds_the_lock(
    database_url: str, tmp_path: Path
) -> None:
    with runs.cycle_lock(database_url):
        assert operations.cycle_running(database_url)
        with pytest.raises(LockBusy, match="another training cycle is running"):
            operations.start_cycle(database_url, actor="olga", log_dir=tmp_path)
        assert not (tmp_path / "console-train.log").exists()
    assert not operations.cycle_running(database_url)


def test_starting_a_cycle_runs_ratchet_train_in_the_background(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No base model and no pairs here: the child starts, takes the lock, and says why
    # it stops; the call itself returns at once with the child's pid and log.
    monkeypatch.setenv("RATCHET_HOME", str(tmp_path / "home"))
    # Not the checkout's models/ (a `make demo` leaves a base model there).
    monkeypatch.setenv("RATCHET_MODELS_DIR", str(tmp_path / "models"))
    started = operations.start_cycle(database_url, actor="olga", log_dir=tmp_path)
    assert started.command[:3] == [sys.executable, "-m", "ratchet.cli"]
    deadline = time.monotonic() + 120
    while _alive(started.pid):
        assert time.monotonic() < deadline, "the background cycle did not end"
        time.sleep(0.5)
    log = started.log_path.read_text()
    assert "ratchet train: " in log and "Traceback" not in log, log


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a reaped child is gone; an unreaped zombie would still answer kill(0)
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split()[2] != "Z"
