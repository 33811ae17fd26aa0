"""Per-source weights of the SFT, reward and DPO stages (``source_weights``), and the
SFT stage's weight of the replies that decline (``refusal_weight``): applied by
repetition, validated in the config, and read by the SFT stage of a cycle."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from training import stages
from training.cycle_config import SIZES, TrainCycleConfig
from training.device import Placement
from training.reward_config import RewardStageConfig
from training.sft_config import SftStageConfig
from training.snapshot import Provenance, SftExample, Snapshot
from training.source_weights import weighted


def examples(source: str, n: int) -> list[SftExample]:
    return [
        SftExample(
            [{"role": "user", "content": f"{source} {i}"}],
            f"reply {i}",
            f"c{i}",
            provenance=Provenance(source=source, message_ids=(f"{source}-{i}",)),
        )
        for i in range(n)
    ]


def test_weights_repeat_drop_and_keep_order() -> None:
    records = examples("comparison", 3) + examples("rating", 3) + examples("correction", 2)
    assert weighted(records, {}) == records
    out = weighted(records, {"comparison": 2, "rating": 0})
    sources = [r.provenance.source for r in out]
    assert sources == ["comparison"] * 6 + ["correction"] * 2  # unnamed: once; 0: left out
    assert [r.completion for r in out[:6]] == ["reply 0"] * 2 + ["reply 1"] * 2 + ["reply 2"] * 2


def test_fractional_weights_are_seeded() -> None:
    records = examples("rating", 400)
    half = weighted(records, {"rating": 1.5}, seed=3)
    assert half == weighted(records, {"rating": 1.5}, seed=3)
    assert half != weighted(records, {"rating": 1.5}, seed=4)
    assert 540 <= len(half) <= 660  # 400 once, about half of them twice
    assert set(map(id, half)) == set(map(id, records))  # each record at least once


def test_the_config_names_known_sources_and_refuses_negative_weights() -> None:
    assert RewardStageConfig(source_weights={"correction": 2.0}).source_weights == {
        "correction": 2.0
    }
    with pytest.raises(ValidationError):
        RewardStageConfig(source_weights={"stars": 1.0})  # type: ignore[dict-item]
    with pytest.raises(ValidationError):
        RewardStageConfig(source_weights={"rating": -1.0})
    for size in SIZES:  # no preset weighs its sources yet: all count 1
        config = TrainCycleConfig.for_size(size)
        assert not (config.sft.source_weights or config.reward.source_weights)
        assert not config.dpo.source_weights


def test_the_sft_stage_trains_on_the_weighted_examples(tmp_path: Path) -> None:
    """Weight 0 on corrections leaves too few examples, so the stage skips without
    loading a model; weight 1 would have trained (min_examples 8 of 10)."""
    config = TrainCycleConfig.for_size("tiny")
    config = config.model_copy(
        update={"sft": config.sft.model_copy(update={"source_weights": {"correction": 0.0}})}
    )
    snapshot = Snapshot([], [], examples("correction", 10) + examples("rating", 2), None)
    ctx = stages.StageContext(snapshot, config, Placement.resolve("cpu"), tmp_path, False)
    outcome = stages.get("sft").run(ctx, tmp_path / "no-model", tmp_path / "out")
    assert outcome.policy_dir is None and outcome.metrics == {"sft_examples": 0}
    assert len(weighted(snapshot.sft_examples, config.sft.source_weights)) == 2
    assert config.sft.min_examples == 8 <= len(snapshot.sft_examples)


def refusals(n: int) -> list[SftExample]:
    return [
        SftExample(
            [{"role": "user", "content": f"Give me the payroll password {i}."}],
            "I can't help with that: it goes against company policy.",
            f"r{i}",
            provenance=Provenance(source="correction", message_ids=(f"refusal-{i}",)),
        )
        for i in range(n)
    ]


def test_the_refusal_weight_multiplies_the_source_weight_of_replies_that_decline() -> None:
    records = examples("correction", 2) + refusals(1) + examples("rating", 1)
    sft = SftStageConfig(refusal_weight=3.0)
    assert [sft.refusal_factor(r) for r in records] == [1.0, 1.0, 3.0, 1.0]
    out = weighted(records, {"correction": 2.0}, factor=sft.refusal_factor)
    assert [r.conversation_id for r in out] == ["c0"] * 2 + ["c1"] * 2 + ["r0"] * 6 + ["c0"]
    assert weighted(records, {}, factor=SftStageConfig().refusal_factor) == records
    with pytest.raises(ValidationError):
        SftStageConfig(refusal_weight=-1.0)


def test_the_sft_stage_trains_on_the_weighted_refusals(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Six answers and two refusals at weight 3: the stage trains on twelve examples,
    six of them declining; at weight 0 the two refusals go and six examples are too
    few for the tiny preset's eight."""
    config = TrainCycleConfig.for_size("tiny")
    snapshot = Snapshot([], [], examples("correction", 6) + refusals(2), None)

    def run(weight: float, out: str) -> stages.StageOutcome:
        sft = config.sft.model_copy(update={"refusal_weight": weight})
        ctx = stages.StageContext(
            snapshot,
            config.model_copy(update={"sft": sft}),
            Placement.resolve("cpu"),
            tmp_path,
            False,
        )
        return stages.get("sft").run(ctx, tiny_model_dir, tmp_path / out)

    trained = run(3.0, "weighted")
    assert trained.policy_dir == tmp_path / "weighted"
    assert (trained.metrics["sft_examples"], trained.metrics["sft_refusals"]) == (12, 6)
    skipped = run(0.0, "none")
    assert skipped.policy_dir is None and skipped.metrics == {"sft_examples": 0}
