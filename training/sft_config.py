"""Configuration of the SFT stage (corrections and top-rated replies)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from training.refusals import is_refusal
from training.snapshot import SftExample
from training.source_weights import SourceWeights, weighted
from training.step_config import StepShape


class SftStageConfig(StepShape):
    min_examples: int = Field(default=20, ge=1, description="Skip SFT below this many examples.")
    epochs: float = Field(default=1.0, gt=0, description="Passes over the SFT examples.")
    learning_rate: float = Field(default=2e-5, gt=0, description="AdamW learning rate.")
    batch_size: int = Field(default=4, ge=1, description="Examples per optimizer step.")
    max_length: int = Field(
        default=512,
        ge=16,
        description="Tokens of an example; longer ones have their prompts cut by whole messages"
        " (older turns, then the least relevant sources) and are left out if still too long.",
    )
    source_weights: SourceWeights = Field(
        default_factory=dict,
        description="Weight of each feedback source's SFT examples (comparison, correction, rating;"
        " applied by repetition, 0 leaves a source out; unnamed sources count 1). See"
        " training/source_weights.py.",
    )
    refusal_weight: float = Field(
        default=1.0,
        ge=0,
        description="Weight of the examples whose reply declines (the safety gate's rule,"
        " training/refusals.py), times their source's: out-of-policy requests are a small"
        " share of the feedback, and one pass at a rate the KL gate allows may not teach them.",
    )
    precision: Literal["auto", "fp32"] = Field(
        default="auto",
        description="auto: the cycle's training precision (RATCHET_TRAIN_PRECISION); fp32: this"
        " stage in fp32 whatever that is.",
    )

    def refusal_factor(self, example: SftExample) -> float:
        """``refusal_weight`` for an example whose reply declines, else 1."""
        return self.refusal_weight if is_refusal(example.completion) else 1.0

    def training_examples(
        self, examples: Sequence[SftExample], *, seed: int = 0
    ) -> list[SftExample]:
        """``examples`` as the stage trains on them: repeated by their source's weight
        times ``refusal_factor`` (seeded)."""
        return weighted(examples, self.source_weights, seed=seed, factor=self.refusal_factor)
