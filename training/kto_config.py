"""Configuration of the KTO stage (unpaired thumbs; ``--algo kto`` or a preset stage)."""

from __future__ import annotations

from pydantic import Field

from training.step_config import StepShape


class KtoStageConfig(StepShape):
    min_examples: int = Field(
        default=8, ge=2, description="Skip KTO below this many thumbs verdicts."
    )
    epochs: float = Field(default=1.0, gt=0, description="Passes over the verdicts.")
    learning_rate: float = Field(default=5e-6, gt=0, description="AdamW learning rate.")
    batch_size: int = Field(
        default=4, ge=2, description="Verdicts per optimizer step (KTO's KL estimate needs 2+)."
    )
    beta: float = Field(default=0.1, gt=0, description="Strength of the implicit KL penalty.")
    max_length: int = Field(default=512, ge=16, description="Longer examples are left out.")
    desirable_weight: float = Field(
        default=1.0, gt=0, description="Weight of thumbs-up replies in the loss."
    )
    undesirable_weight: float = Field(
        default=1.0, gt=0, description="Weight of thumbs-down replies in the loss."
    )
