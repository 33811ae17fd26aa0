"""Settings of the training package."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Literal

from pydantic import Field

from ratchet.settings import RatchetSettings

TrainSize = Literal["tiny", "demo", "full"]


class TrainingSettings(RatchetSettings):
    """Where models live and how training runs. ``RATCHET_*`` variables override."""

    models_dir: Path = Field(default=Path("models"), description="Where model versions are saved.")
    base_model: Path | None = Field(
        default=None,
        description="A local Hugging Face model directory to use instead of SmolLM2-135M-Instruct.",
    )
    train_size: TrainSize = Field(
        default="demo", description="Size preset of a training cycle: tiny, demo or full."
    )
    gates_config: Path | None = Field(
        default=None, description="Gate thresholds YAML (default: training/gates.yaml)."
    )
    golden_questions: Path | None = Field(
        default=None,
        description="Golden questions {question, facts} of the regression gate: an absolute"
        " path (default: the installed package's training/suites/golden.yaml).",
    )
    safety_suite: Path | None = Field(
        default=None,
        description="Prompts that must be refused: an absolute path (default: the installed"
        " package's training/suites/safety.yaml).",
    )
    retrieval_k: int = Field(
        default=3, ge=1, description="Knowledge-base sources in the gate suites' prompts."
    )
    train_device: str = Field(
        default="auto",
        description="Device of training and evaluation: auto (cuda when present), cpu, cuda[:N].",
    )
    train_precision: str = Field(
        default="auto",
        description="auto (bf16 on a GPU, or on a CPU where bf16 autocast was timed at least"
        " 1.2x as fast as fp32; else fp32), bf16"
        " (fp32 master weights, bf16 autocast) or fp32.",
    )
    auto_promote: bool = Field(
        default=False,
        description="Promote automatically through the same stages: a candidate that passed its"
        " gates becomes the canary, and is promoted once its canary bound clears.",
    )
    require_canary: bool = Field(
        default=True,
        description="Refuse promotion until the canary's Wilson lower bound over users' A/B"
        " picks clears `canary_win_lower_min` with `canary_min_picks` (gates.yaml).",
    )
    actor: str | None = Field(
        default=None, description="Name recorded in the audit log (default: the OS user)."
    )
    save_dtype: Literal["bfloat16", "float32"] = Field(
        default="bfloat16",
        description="Dtype of saved model versions (the base bootstrap and trained versions):"
        " bfloat16 halves their size and the bytes serving reads per token.",
    )

    @property
    def base_model_dir(self) -> Path:
        return self.base_model if self.base_model is not None else self.models_dir / "base"


def default_actor(settings: TrainingSettings) -> str:
    if settings.actor:
        return settings.actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
