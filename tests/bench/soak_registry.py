"""The soak's registry faults (issue 17), done the way an operator does them:
``ratchet models canary`` / ``--clear`` and ``ratchet models promote`` (a hot swap
of the API's engine) against the soak's database, and a training cycle
(``ratchet train --size tiny``) killed with -9 partway, then the next cycle.

Each returns what it saw; ``test_soak`` counts the requests that overlapped it
and fails on failures, a lost version or an inconsistent registry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.servers import wait_until
from tests.serving.topology import ratchet_cli
from tests.training.synthetic import write_pairs
from training import registry

CANDIDATE = "v0002"  # the second tiny model, registered before the API starts
SETTLE_S = 3.0  # traffic kept flowing after each change before the window closes


@dataclass
class Window:
    """A registry change and the time span (monotonic) requests are judged over."""

    name: str
    start: float
    end: float = 0.0
    facts: dict[str, Any] = field(default_factory=dict)

    def overlaps(self, started: float, ended: float) -> bool:
        return started <= self.end and ended >= self.start


def readiness(url: str) -> dict[str, Any]:
    try:
        return dict(httpx.get(f"{url}/readyz", timeout=10).json())
    except (httpx.HTTPError, ValueError):
        return {}


def canary_change(system: dict) -> Window:
    """Mark the candidate as the canary, let A/B traffic reach it, clear it."""
    url, db = system["url"], system["db"]
    window = Window("canary set + cleared", time.monotonic())
    ratchet_cli(db, "models", "canary", CANDIDATE, "--reason", "soak")
    wait_until(lambda: readiness(url).get("canary_version") == CANDIDATE, "canary loaded", 600)
    window.facts["canary loaded after s"] = round(time.monotonic() - window.start, 1)
    time.sleep(SETTLE_S)
    cleared = time.monotonic()
    ratchet_cli(db, "models", "canary", "--clear", "--reason", "soak")
    wait_until(lambda: readiness(url).get("canary_version") is None, "canary freed", 600)
    window.facts["canary freed after s"] = round(time.monotonic() - cleared, 1)
    time.sleep(SETTLE_S)
    window.end = time.monotonic()
    return window


def hot_swap(system: dict) -> Window:
    """Promote the candidate (forced: the soak's A/B picks are no evidence); the API
    loads it beside the serving engine, switches, drains and frees the old one."""
    url, db = system["url"], system["db"]
    window = Window("hot swap v0001 -> v0002", time.monotonic())
    ratchet_cli(db, "models", "promote", CANDIDATE, "--reason", "soak", "--force")
    wait_until(lambda: readiness(url).get("model_version") == CANDIDATE, "the swap", 600)
    window.facts["switched"] = time.monotonic()
    window.facts["switched after s"] = round(window.facts["switched"] - window.start, 1)
    time.sleep(SETTLE_S)
    window.end = time.monotonic()
    return window


def registry_problems(db: str) -> list[str]:
    """What makes the registry inconsistent: not exactly one production version, a
    canary that is not a candidate, a version without its weights, a version whose
    training run did not succeed (half-registered)."""
    with psycopg.connect(db, autocommit=True) as conn:
        versions = registry.list_versions(conn)
        runs: dict[Any, str] = dict(conn.execute("SELECT id, status FROM training_runs").fetchall())
    problems = []
    production = [v.id for v in versions if v.status == "production"]
    if len(production) != 1:
        problems.append(f"production versions: {production}")
    problems += [
        f"{v.id}: canary but {v.status}" for v in versions if v.canary and v.status != "candidate"
    ]
    problems += [
        f"{v.id}: no weights at {v.path}"
        for v in versions
        if not (Path(v.path) / "config.json").exists()
    ]
    problems += [
        f"{v.id}: its run {v.training_run_id} is {runs.get(v.training_run_id)}"
        for v in versions
        if v.training_run_id is not None and runs.get(v.training_run_id) != "succeeded"
    ]  # fmt: skip
    return problems


KILL_AFTER_S = 5.0  # into the run's stages: after the snapshot and the run record
TRAIN = [sys.executable, "-m", "serving.cli", "train", "--size", "tiny", "--quiet"]


def _trainer_env(system: dict, home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": system["db"],
        "RATCHET_HOME": str(home / "trainer"),
        "RATCHET_MODELS_DIR": str(home / "models"),
        "RATCHET_BASE_MODEL": str(system["base_model"]),
        "RATCHET_TRAIN_SIZE": "tiny",
        "RATCHET_ACTOR": "soak-trainer",
        "OMP_NUM_THREADS": "1",
    }


def _runs(db: str) -> dict[str, tuple[str, str | None, str | None]]:
    """Every training run: (status, error, logs path), by id."""
    with psycopg.connect(db, autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute("SELECT id::text, status, error, logs_path FROM training_runs")
        return {r[0]: (r[1], r[2], r[3]) for r in rows.fetchall()}


def _versions(db: str) -> list[str]:
    with psycopg.connect(db, autocommit=True) as conn:
        return [v.id for v in registry.list_versions(conn)]


def _kill_when_running(proc: subprocess.Popen[bytes], db: str) -> str:
    """Wait until the cycle's run is recorded ``running``, give its stages
    ``KILL_AFTER_S``, then kill -9; the run's id."""

    def running() -> bool:
        assert proc.poll() is None, f"the trainer exited ({proc.returncode}) before its run began"
        return any(status == "running" for status, _, _ in _runs(db).values())

    wait_until(running, "the training run is recorded running", 600)
    time.sleep(KILL_AFTER_S)
    assert proc.poll() is None, f"the tiny cycle ended ({proc.returncode}) before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    return next(i for i, (status, _, _) in _runs(db).items() if status == "running")


def kill_trainer_mid_cycle(system: dict, home: Path) -> Window:
    """``ratchet train`` on synthetic pairs, killed with -9 mid-cycle; then the next
    cycle (``--wait`` for the dead one's lock, skipped for want of new pairs) must
    mark the run failed and clear its leftovers, the registry unchanged throughout."""
    db, env = system["db"], _trainer_env(system, home)
    pairs = write_pairs(home / "pairs.jsonl", 120)
    before = _versions(db)
    window = Window("trainer killed mid-cycle", time.monotonic())
    with open(home / "trainer.log", "ab") as out:
        proc = subprocess.Popen(
            [*TRAIN, "--pairs-file", str(pairs)], env=env, stdout=out, stderr=out
        )
    try:
        run_id = _kill_when_running(proc, db)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    logs = Path(_runs(db)[run_id][2] or "")
    facts = window.facts
    facts["killed after s"] = round(time.monotonic() - window.start, 1)
    lines = logs.read_text().strip().splitlines() if logs.exists() else []
    facts["run log at the kill"] = f"{len(lines)} lines" + (
        f", last: {lines[-1][-100:]}" if lines else ""
    )
    facts["run after the kill"] = _runs(db)[run_id][0]
    facts["versions after the kill"] = _versions(db)
    facts["weights dirs after the kill"] = sorted(p.name for p in (home / "models").glob("v[0-9]*"))
    nxt = subprocess.run(
        [*TRAIN, "--pairs-file", str(pairs), "--min-new-pairs", "1000000", "--wait"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    facts["next cycle"] = f"exit {nxt.returncode}: {(nxt.stdout.strip().splitlines() or ['-'])[-1]}"
    status, error, _ = _runs(db)[run_id]
    facts["run after the next cycle"] = f"{status}: {error}"
    facts["leftovers"] = sorted(p.name for p in (home / "models").glob("*"))
    facts["versions before / after"] = f"{before} / {_versions(db)}"
    facts["consistent"] = (
        facts["run after the kill"] == "running"
        and nxt.returncode == 0 and "skipped" in nxt.stdout and status == "failed"
        and facts["versions after the kill"] == before == _versions(db)
        and not facts["weights dirs after the kill"] and not facts["leftovers"]
    )  # fmt: skip
    window.end = time.monotonic()
    return window
