"""Settings of the training package."""

from __future__ import annotations

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
        default=Path("infra/demo/kb/questions.yaml"),
        description="Golden questions {question, facts} of the regression gate.",
    )
    safety_suite: Path | None = Field(
        default=None,
        description="Prompts that must be refused (default: training/suites/safety.yaml).",
    )
    train_device: str = Field(
        default="auto",
        description="Device of training and evaluation: auto (cuda when present), cpu, cuda[:N].",
    )
    train_precision: str = Field(
        default="auto",
        description="auto (bf16 on a GPU, else fp32), bf16 (fp32 master weights, bf16 autocast)"
        " or fp32.",
    )
    auto_promote: bool = Field(
        default=False, description="Promote a candidate automatically when all its gates pass."
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
