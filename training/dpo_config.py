"""Configuration of the DPO stage (``--algo dpo``)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class DpoStageConfig(BaseModel):
    epochs: float = Field(default=1.0, gt=0, description="Passes over the training pairs.")
    learning_rate: float = Field(default=5e-6, gt=0, description="AdamW learning rate.")
    batch_size: int = Field(default=4, ge=1, description="Pairs per optimizer step.")
    beta: float = Field(default=0.1, gt=0, description="Strength of the implicit KL penalty.")
    max_length: int = Field(default=512, ge=16, description="Pairs are truncated to this length.")
