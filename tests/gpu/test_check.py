"""The GPU check's CPU path: the same measurements at a small shape, so the script
that runs on a lent GPU machine is known to work before it gets there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.gpu.check import main

pytestmark = pytest.mark.slow


def test_small_cpu_run_measures_every_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OUT", str(tmp_path))
    assert main(["--device", "cpu", "--small"]) == 0
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    assert record["failed"] == [] and record["device"] == "cpu"
    for name in ("reward.trl", "reward.project", "ppo.project_hf", "ppo.trl"):
        assert record[name]["ok"], record[name]
    assert record["reward.project"]["model_device"] == "cpu"
    assert record["ppo.project_hf"]["engine"] == "hf"
    assert record["ppo.project_hf"]["step_s"] > 0 and record["ppo.trl"]["step_s"] > 0
    assert record["ratios"]["reward_tokens_per_s_project_over_trl"] is not None
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["check"]
