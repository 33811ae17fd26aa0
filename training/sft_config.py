"""Configuration of the SFT stage (corrections and top-rated replies)."""

from __future__ import annotations

from pydantic import Field

from training.source_weights import SourceWeights
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
