"""Configuration of the DPO stage (``--algo dpo``)."""

from __future__ import annotations

from pydantic import Field

from training.source_weights import SourceWeights
from training.step_config import PairStepShape


class DpoStageConfig(PairStepShape):
    epochs: float = Field(default=1.0, gt=0, description="Passes over the training pairs.")
    learning_rate: float = Field(default=5e-6, gt=0, description="AdamW learning rate.")
    batch_size: int = Field(default=4, ge=1, description="Pairs per optimizer step.")
    beta: float = Field(default=0.1, gt=0, description="Strength of the implicit KL penalty.")
    max_length: int = Field(default=512, ge=16, description="Pairs are truncated to this length.")
    source_weights: SourceWeights = Field(
        default_factory=dict,
        description="Weight of each feedback source's training pairs (comparison, correction,"
        " rating; applied by repetition, 0 leaves a source out; unnamed sources count 1). See"
        " training/source_weights.py.",
    )
