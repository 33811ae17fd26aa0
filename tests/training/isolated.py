"""Training settings and CLI environment that point every path at test directories."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from training.settings import TrainingSettings

REPO = Path(__file__).resolve().parents[2]


def make_settings(
    database_url: str, root: Path, base_model: Path, **extra: Any
) -> TrainingSettings:
    """Settings with state and models under ``root`` and the tiny model as the base."""
    return TrainingSettings(
        database_url=database_url,
        home=root / "home",
        models_dir=root / "models",
        base_model=base_model,
        train_size="tiny",
        **extra,
    )


def env_for(settings: TrainingSettings) -> dict[str, str]:
    """The environment variables under which ``ratchet`` sees ``settings``."""
    env = {
        "DATABASE_URL": settings.database_url,
        "RATCHET_HOME": str(settings.home),
        "RATCHET_MODELS_DIR": str(settings.models_dir),
        "RATCHET_BASE_MODEL": str(settings.base_model),
        "RATCHET_TRAIN_SIZE": settings.train_size,
    }
    if settings.gates_config is not None:
        env["RATCHET_GATES_CONFIG"] = str(settings.gates_config)
    return env


def cli_env(monkeypatch: pytest.MonkeyPatch, settings: TrainingSettings) -> None:
    """Point an in-process ``serving.cli.main`` at ``settings``; wide tables for rich."""
    for name, value in env_for(settings).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("COLUMNS", "220")
    monkeypatch.delenv("RATCHET_ACTOR", raising=False)
