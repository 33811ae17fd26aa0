"""Configuration of the refusal-contrast stage (a preset stage after SFT)."""

from __future__ import annotations

from pydantic import Field

from training.dpo_config import DpoStageConfig


class ContrastStageConfig(DpoStageConfig):
    """DPO on the contrast pairs of :mod:`training.contrast` (``source_weights`` unused)."""

    min_pairs: int = Field(
        default=4, ge=1, description="Skip the stage below this many contrast pairs."
    )
    max_pairs: int | None = Field(
        default=None,
        ge=1,
        description="Train on a seeded sample of at most this many pairs (None: all of them).",
    )
