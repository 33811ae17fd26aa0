"""The settings base: the fields every package shares. Each package's settings
class extends :class:`RatchetSettings` with its own fields (and may change the
``env_prefix`` of those; the shared fields keep their standard names)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ratchet.env_file import stack_env_file

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/ratchet"


class RatchetSettings(BaseSettings):
    """Read from ``RATCHET_*`` variables, the standard ``DATABASE_URL`` and
    ``KAFKA_BOOTSTRAP_SERVERS``, and ``.ratchet/stack.env`` written by ``make stack-up``.
    Nothing is instantiated at import time: entry points build settings and pass them down."""

    model_config = SettingsConfigDict(
        env_prefix="RATCHET_", env_file=stack_env_file(), extra="ignore", populate_by_name=True
    )

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        validation_alias=AliasChoices("DATABASE_URL", "RATCHET_DATABASE_URL"),
        description="Postgres DSN: feedback store, model registry, API keys, knowledge base.",
    )
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:19092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "RATCHET_KAFKA_BOOTSTRAP_SERVERS"),
        description="Comma-separated Kafka bootstrap servers.",
    )
    home: Path = Field(
        default=Path(".ratchet"),
        validation_alias=AliasChoices("RATCHET_HOME"),
        description="State directory (spool, logs, runs, cache).",
    )
