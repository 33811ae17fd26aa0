"""Configuration of the SFT stage (corrections and top-rated replies)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SftStageConfig(BaseModel):
    min_examples: int = Field(default=20, ge=1, description="Skip SFT below this many examples.")
    epochs: float = Field(default=1.0, gt=0, description="Passes over the SFT examples.")
    learning_rate: float = Field(default=2e-5, gt=0, description="AdamW learning rate.")
    batch_size: int = Field(default=4, ge=1, description="Examples per optimizer step.")
    max_length: int = Field(default=512, ge=16, description="Longer examples are truncated.")
