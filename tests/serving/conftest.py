"""Serving fixtures: ONE shared API server on the vLLM engine (engine start is
the expensive part), with its own database and API keys."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import ApiServer, new_database, running_api, serving_settings


@pytest.fixture(scope="session")
def live_server(
    pg_cluster,
    template_db,
    kafka_bootstrap,
    tiny_model_dir,
    tmp_path_factory,  # type: ignore[no-untyped-def]
) -> Iterator[ApiServer]:
    """The API on the vLLM engine, serving the tiny model as version ``base``."""
    db = new_database(pg_cluster, template_db)
    settings = serving_settings(
        db, kafka_bootstrap, tmp_path_factory.mktemp("serving-home"), tiny_model_dir
    )
    with running_api(settings) as server:
        yield server
