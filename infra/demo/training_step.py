"""The demo's training step: one cycle through the training package's API
(``training.cycle.run_cycle``), then promotion through the registry, and the
wait until the API serves the promoted version."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

logger = logging.getLogger(__name__)

ACTOR = "ratchet-demo"


@dataclass
class CycleOutcome:
    """What one training cycle produced, in the terms the demo reports."""

    run_id: str | None
    version: str | None  # None: the cycle was skipped (too few pairs) or failed
    gates_passed: bool
    gate_report: dict[str, Any]
    metrics: dict[str, Any]
    pairs: int
    skipped_reason: str | None = None
    plots: list[Path] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "version": self.version,
            "gates_passed": self.gates_passed,
            "gate_report": self.gate_report,
            "metrics": self.metrics,
            "pairs": self.pairs,
            "skipped_reason": self.skipped_reason,
            "plots": [str(p) for p in self.plots],
        }


def run_training_cycle(*, size: str, database_url: str, progress: bool = True) -> CycleOutcome:
    """One cycle (snapshot, SFT, reward model, PPO, gates, registration) at the demo's size."""
    from training.cycle import run_cycle
    from training.settings import TrainingSettings

    settings = TrainingSettings(database_url=database_url)
    result = run_cycle(settings, size=size, progress=progress)
    snapshot = result.metrics.get("snapshot", {})
    report = result.gate_report or {}
    return CycleOutcome(
        run_id=str(result.run_id) if result.run_id else None,
        version=result.candidate_version,
        gates_passed=bool(report.get("passed")),
        gate_report=report,
        metrics=result.metrics,
        pairs=int(snapshot.get("pairs_train", 0)) + int(snapshot.get("pairs_heldout", 0)),
        skipped_reason=result.message if result.status == "skipped" else None,
        plots=[result.plot_path] if result.plot_path else [],
    )


def promote(database_url: str, version: str, *, force: bool, reason: str) -> str:
    """Promote ``version`` through the promotion policy (offline gates, then the canary
    stage); return the audit action recorded (promote or force_promote). A refusal
    raises ``training.errors.RegistryError`` saying what is missing."""
    from ratchet.db import connect
    from training.gates import load_thresholds
    from training.promotion import promote as promote_version
    from training.settings import TrainingSettings

    settings = TrainingSettings(database_url=database_url)
    with connect(database_url) as conn:
        promote_version(
            conn,
            version,
            actor=ACTOR,
            reason=reason,
            force=force,
            thresholds=load_thresholds(settings.gates_config),
            require_canary=settings.require_canary,
        )
        row = conn.execute(
            "SELECT action FROM model_audit WHERE to_version = %s"
            " AND action IN ('promote', 'force_promote') ORDER BY id DESC LIMIT 1",
            (version,),
        ).fetchone()
    return str(row[0]) if row else "promote"


def served_version(base_url: str, key: str) -> str | None:
    try:
        resp = httpx.get(
            f"{base_url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10
        )
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    data = resp.json().get("data") or []
    return str(data[0]["id"]) if data else None


def wait_for_version(
    base_url: str,
    key: str,
    version: str,
    *,
    timeout: float,
    on_progress: Callable[[str], None] = lambda _: None,
) -> float:
    """Poll ``GET /v1/models`` until it reports ``version``; return the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        current = served_version(base_url, key)
        if current == version:
            return time.monotonic() - started
        on_progress(f"serving {current}, loading {version}…")
        time.sleep(1.0)
    raise RuntimeError(
        f"the API still serves {served_version(base_url, key)} after {timeout:.0f} s"
    )
