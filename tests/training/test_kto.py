"""KTO on unpaired thumbs (TRL KTOTrainer): ``--algo kto`` through the whole cycle,
and the stage's refusal to train on one kind of verdict."""

from __future__ import annotations

import json
from pathlib import Path

from tests.training.isolated import make_settings
from tests.training.synthetic import ListSource, make_pairs, make_thumbs
from training.cycle import run_cycle
from training.kto import train_kto
from training.kto_config import KtoStageConfig
from training.snapshot import to_kto


def test_kto_cycle_learns_from_thumbs_and_registers_a_candidate(
    database_url: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    settings = make_settings(database_url, tmp_path, tiny_model_dir)
    pairs = make_pairs(200)
    source = ListSource(pairs, kto=make_thumbs(pairs))
    result = run_cycle(settings, algo="kto", size="tiny", source=source, progress=False)
    assert result.candidate_version == "v0002"
    assert result.metrics["stages"] == ["sft", "kto"]
    kto = result.metrics["kto"]
    assert kto["kto_examples"] > 0 and 0 < kto["kto_desirable"] < kto["kto_examples"]
    history = kto["history"]
    assert history and history[-1]["loss"] < history[0]["loss"]
    report = result.gate_report
    assert report is not None
    # KTO moved the policy the way the independent judge (trained on pairs) prefers.
    assert report["gates"]["win_rate"]["detail"]["win_rate"] > 0.5
    # Only the policy slice's thumbs trained it, each traceable to its message.
    assert result.run_id is not None
    lines = (settings.home / "runs" / str(result.run_id) / "provenance.jsonl").read_text()
    kto_lines = [json.loads(x) for x in lines.splitlines() if '"kind": "kto"' in x]
    assert len(kto_lines) == kto["kto_examples"]
    assert all(x["source"] == "thumbs" and x["message_ids"] for x in kto_lines)


def test_kto_needs_both_kinds_of_verdict(tiny_model_dir: Path, tmp_path: Path) -> None:
    thumbs = [to_kto(t) for t in make_thumbs(make_pairs(20)) if t["label"]]
    metrics = train_kto(
        tiny_model_dir, thumbs, tmp_path / "out", KtoStageConfig(min_examples=2), progress=False
    )
    assert metrics == {"kto_examples": 0}
    assert not (tmp_path / "out").exists()
