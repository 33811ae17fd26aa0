"""Serving fixtures: ONE shared API server on the vLLM engine (engine start is
the expensive part), with its own database and API keys."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from serving.app import build_app
from serving.settings import ServingSettings
from tests.serving.server import Keys, ServerThread, make_keys, new_database


@dataclass
class LiveServer:
    base_url: str
    settings: ServingSettings
    database_url: str
    keys: Keys
    thread: ServerThread

    @property
    def state(self):  # type: ignore[no-untyped-def]
        return self.thread.app.state.ratchet


def serving_settings(
    database_url: str, kafka: str, home: Path, model: Path, **kw
) -> ServingSettings:  # type: ignore[no-untyped-def]
    base = dict(
        database_url=database_url,
        kafka_bootstrap_servers=kafka,
        home=home,
        model=model,
        backend="vllm",
        max_model_len=512,
        dtype="float32",
        default_max_tokens=16,
        registry_poll_seconds=1.0,
        rate_limit_per_minute=6000,
        rate_limit_burst=1000,
        message_id_secret="test-secret",
    )
    base.update(kw)
    return ServingSettings(**base)


@pytest.fixture(scope="session")
def live_server(
    pg_cluster,
    template_db,
    kafka_bootstrap,
    tiny_model_dir,
    tmp_path_factory,  # type: ignore[no-untyped-def]
) -> Iterator[LiveServer]:
    """The API on the vLLM engine, serving the tiny model as version ``base``."""
    db = new_database(pg_cluster, template_db)
    settings = serving_settings(
        db, kafka_bootstrap, tmp_path_factory.mktemp("serving-home"), tiny_model_dir
    )
    keys = make_keys(db)
    thread = ServerThread(build_app(settings)).start()
    yield LiveServer(thread.base_url, settings, db, keys, thread)
    thread.stop()
