"""``run_cycle(..., algo="dpo")``: TRL's DPOTrainer instead of PPO, same gates and registry."""

from __future__ import annotations

from pathlib import Path

import psycopg

from tests.training.isolated import make_settings
from tests.training.synthetic import ListSource, make_pairs
from training import registry
from training.cycle import run_cycle


def test_dpo_cycle_registers_a_candidate(
    database_url: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    settings = make_settings(database_url, tmp_path, tiny_model_dir)
    result = run_cycle(
        settings, algo="dpo", size="tiny", source=ListSource(make_pairs(200)), progress=False
    )
    assert result.candidate_version == "v0002"
    assert result.metrics["algo"] == "dpo"
    history = result.metrics["dpo"]["history"]
    assert history and history[-1]["loss"] < history[0]["loss"]
    report = result.gate_report
    assert report is not None and report["gates"]["reward_accuracy"]["passed"]
    # DPO moved the policy the way the independent judge prefers.
    assert report["gates"]["win_rate"]["detail"]["win_rate"] > 0.5
    assert result.status == ("candidate" if report["passed"] else "rejected")
    with psycopg.connect(database_url, autocommit=True) as conn:
        version = registry.get_version(conn, "v0002")
        assert version is not None and version.parent_id == "v0001"
        assert version.status == result.status
        assert version.gate_report == report
        assert (Path(version.path) / "config.json").exists()
    assert result.run_id is not None
    log = settings.home / "runs" / str(result.run_id) / "train.log"
    assert "reward model: held-out accuracy" in log.read_text()
