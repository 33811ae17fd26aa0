"""A stage's step shape (micro-batches, activation checkpointing) changes how a step is
computed, not what it computes: a reward model trained one pair a pass without
checkpointing ends where the whole batch with checkpointing does. A micro-batch that
does not divide the batch is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModelForSequenceClassification

from tests.training.synthetic import make_pairs
from training.device import Placement
from training.reward import train_reward_model
from training.reward_config import RewardStageConfig
from training.sft_config import SftStageConfig


def _trained_weights(
    tiny_model_dir: Path, out: Path, batch_size: int = 4, **step: object
) -> tuple[dict[str, torch.Tensor], float]:
    config = RewardStageConfig(
        epochs=1, learning_rate=1e-3, batch_size=batch_size, max_length=1024, **step
    )
    result = train_reward_model(
        tiny_model_dir,
        make_pairs(8),
        make_pairs(2),
        out,
        config,
        progress=False,
        # fp32: the two step shapes agree to fp32's float noise; under bf16 autocast (`auto`
        # where bf16 is timed faster than fp32) to bf16's, which the tolerance is not for.
        placement=Placement.resolve("cpu", "fp32"),
    )
    model = AutoModelForSequenceClassification.from_pretrained(result.model_dir, num_labels=1)
    return model.state_dict(), result.train_metrics["train_loss"]


def test_micro_batches_without_checkpointing_take_the_same_step(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    start = base.state_dict()
    whole, whole_loss = _trained_weights(tiny_model_dir, tmp_path / "whole")
    micro, micro_loss = _trained_weights(
        tiny_model_dir, tmp_path / "micro", micro_batch_size=1, gradient_checkpointing=False
    )
    other, _ = _trained_weights(tiny_model_dir, tmp_path / "other", batch_size=2)

    def off_by(weights: dict[str, torch.Tensor]) -> float:
        """The largest distance from the whole-batch model, per tensor, as a share of how
        far that tensor moved in training (the order of the sums leaves float noise)."""
        return max(
            ((weights[k] - whole[k]).norm() / (whole[k] - start[k]).norm()).item()
            for k in whole
            if k in start
        )

    assert micro_loss == pytest.approx(whole_loss, rel=1e-4)
    assert off_by(micro) < 0.01
    assert off_by(other) > 0.5  # another step (batch 2) lands elsewhere


def test_step_shape_becomes_the_trainers_arguments() -> None:
    step = SftStageConfig(batch_size=4, micro_batch_size=2, gradient_checkpointing=False)
    assert step.trainer_args() == {
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "gradient_checkpointing": False,
    }
    assert SftStageConfig(batch_size=4).trainer_args() == {
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 1,
    }


def test_a_micro_batch_must_divide_the_batch() -> None:
    with pytest.raises(ValidationError, match="micro_batch_size 3 does not divide batch_size 8"):
        RewardStageConfig(batch_size=8, micro_batch_size=3)
