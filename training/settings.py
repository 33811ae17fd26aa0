"""Settings of the training package."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from feedback.env_file import stack_env_file


class TrainingSettings(BaseSettings):
    """Where models live and how training runs. ``RATCHET_*`` variables override."""

    model_config = SettingsConfigDict(
        env_prefix="RATCHET_", env_file=stack_env_file(), extra="ignore", populate_by_name=True
    )

    database_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5432/ratchet",
        validation_alias=AliasChoices("DATABASE_URL", "RATCHET_DATABASE_URL"),
        description="Postgres DSN of the feedback store and model registry.",
    )
    home: Path = Field(default=Path(".ratchet"), description="State directory (runs, logs, cache).")
    models_dir: Path = Field(default=Path("models"), description="Where model versions are saved.")
    base_model: Path | None = Field(
        default=None,
        description="A local Hugging Face model directory to use instead of SmolLM2-135M-Instruct.",
    )
    train_size: str = Field(
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

    @property
    def base_model_dir(self) -> Path:
        return self.base_model if self.base_model is not None else self.models_dir / "base"


@lru_cache
def get_settings() -> TrainingSettings:
    return TrainingSettings()
