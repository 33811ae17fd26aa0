"""Crash safety and the cycle lock: a training process killed midway leaves the
registry consistent, and a second cycle never runs beside the first."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import psycopg
import pytest

from serving.cli import main
from tests.training.isolated import REPO, cli_env, env_for, make_settings
from tests.training.synthetic import ListSource, make_pairs, write_pairs
from training import registry, runs
from training.cycle import run_cycle
from training.errors import LockBusy
from training.settings import TrainingSettings


@pytest.fixture
def settings(database_url: str, tmp_path: Path, tiny_model_dir: Path) -> TrainingSettings:
    return make_settings(database_url, tmp_path, tiny_model_dir)


def run_status(conn: psycopg.Connection) -> list[tuple[object, str]]:
    return conn.execute("SELECT id, status FROM training_runs ORDER BY started_at").fetchall()


def wait_until(check, timeout: float, what: str, proc: subprocess.Popen | None = None):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"the training process exited ({proc.returncode}) before {what}:\n{out}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def lock_is_free(database_url: str) -> bool:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s",
            (runs.CYCLE_LOCK,),
        ).fetchone()
    return row is not None and row[0] == 0


def test_a_killed_run_leaves_the_registry_consistent(
    settings: TrainingSettings, tmp_path: Path
) -> None:
    pairs = write_pairs(tmp_path / "pairs.jsonl", 120)
    env = {**os.environ, **env_for(settings), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "train", "--size", "tiny"]
        + ["--pairs-file", str(pairs), "--quiet"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with psycopg.connect(settings.database_url, autocommit=True) as conn:

            def running() -> object:
                rows = run_status(conn)
                return rows[0][0] if rows and rows[0][1] == "running" else None

            run_id = wait_until(running, 180, "its run row is 'running'", proc)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    models = settings.models_dir
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        # Nothing half-registered: only the base version, which the run registered first.
        assert [v.id for v in registry.list_versions(conn)] == ["v0001"]
        assert run_status(conn) == [(run_id, "running")]
    assert not list(models.glob("v[0-9]*"))
    # Had it died between saving its policy and registering it, it would leave this.
    (models / f".tmp-{run_id}" / "policy").mkdir(parents=True)

    # The dead process's connection, and with it the cycle lock, goes away.
    wait_until(lambda: lock_is_free(settings.database_url), 30, "the cycle lock is released")
    result = run_cycle(settings, size="tiny", source=ListSource([]), progress=False)
    assert result.status == "skipped"  # no new pairs, but the stale run was dealt with

    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        run = runs.get_run(conn, run_id)
        assert run is not None
        assert run["status"] == "failed" and "interrupted" in run["error"]
        assert run["finished_at"] is not None and run["candidate_version"] is None
        assert [v.id for v in registry.list_versions(conn)] == ["v0001"]
        production = registry.get_production(conn)
        assert production is not None and production.id == "v0001"
        assert runs.last_watermark(conn) is None  # its pairs still count as new
    assert not list(models.glob("v[0-9]*")) and not list(models.glob(".tmp-*"))


def test_a_second_cycle_exits_while_the_lock_is_held(
    settings: TrainingSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pairs = write_pairs(tmp_path / "pairs.jsonl", 40)
    with runs.cycle_lock(settings.database_url):
        with pytest.raises(LockBusy, match="another training cycle is running"):
            run_cycle(settings, size="tiny", source=ListSource(make_pairs(40)), progress=False)

        cli_env(monkeypatch, settings)
        code = main(["train", "--size", "tiny", "--pairs-file", str(pairs), "--quiet"])
        assert code == 2
        err = capsys.readouterr().err
        assert "ratchet train: another training cycle is running" in err
        assert "Traceback" not in err
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        assert run_status(conn) == []  # neither started a run


def test_wait_true_waits_for_the_lock(settings: TrainingSettings) -> None:
    stack = ExitStack()
    stack.enter_context(runs.cycle_lock(settings.database_url))
    released = threading.Event()

    def release() -> None:
        stack.close()
        released.set()

    timer = threading.Timer(1.0, release)
    timer.start()
    try:
        result = run_cycle(settings, size="tiny", source=ListSource([]), wait=True, progress=False)
        assert released.is_set()  # it got the lock only once the holder let go
        assert result.status == "skipped"
    finally:
        timer.join()


def test_cli_train_reports_a_missing_pairs_file(
    settings: TrainingSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli_env(monkeypatch, settings)
    assert main(["train", "--pairs-file", str(tmp_path / "nope.jsonl"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cannot read" in err and "nope.jsonl" in err and "Traceback" not in err
