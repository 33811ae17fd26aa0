"""Shared fixtures: a real private Postgres cluster, a real tansu Kafka broker,
and the tiny model. Each starts once per test session; tests that stop or
restart a service use their own (``fresh_broker``, ``private_pg``)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from feedback.db import migrate
from infra.local.postgres import PrivateCluster
from infra.local.tansu import Broker, free_port
from tests.fixtures.tiny_model import build_tiny_model

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".ratchet" / "cache"

# Keep torch from fighting over the two cores with the services under test.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The vLLM engine runs eagerly in tests: compiling costs minutes per start on two
# shared cores (README, "Serving speed"); the benchmarks compile.
os.environ.setdefault("RATCHET_ENFORCE_EAGER", "true")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PrivateCluster]:
    """A Postgres cluster private to this test session (so tests may restart it).

    It lives outside pytest's tmp dir: that one is private to root, and the
    server runs as the ``postgres`` user."""
    root = Path(tempfile.mkdtemp(prefix="ratchet-pg-"))
    cluster = PrivateCluster(root / "data", free_port())
    cluster.start()
    yield cluster
    cluster.stop(mode="immediate")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def template_db(pg_cluster: PrivateCluster) -> str:
    """A migrated database used as the template for each test's database."""
    url = pg_cluster.url_for("ratchet_template")
    migrate(url)
    return "ratchet_template"


@pytest.fixture
def database_url(pg_cluster: PrivateCluster, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_cluster.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield pg_cluster.url_for(name)
    with psycopg.connect(pg_cluster.url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tansu broker shared by the session. Use unique topic names per test."""
    broker = Broker(CACHE / "bin", free_port(), tmp_path_factory.mktemp("kafka") / "tansu.log")
    broker.start()
    yield broker.bootstrap
    broker.stop()


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker of this test's own, for tests that stop and restart it."""
    broker = Broker(CACHE / "bin", free_port(), tmp_path / "tansu.log")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny Llama: a few MB, random weights, loadable by transformers and vLLM."""
    return build_tiny_model(CACHE / "tiny-model")


@pytest.fixture(scope="session")
def tiny_model_b_dir() -> Path:
    """A second tiny model: same architecture and tokenizer, other weights (another
    seed), so a reply tells which of the two answered (see ``greedy_reply``)."""
    return build_tiny_model(CACHE / "tiny-model-b", seed=1, init_std=0.1, ascii_only=True)


@pytest.fixture
def ratchet_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated RATCHET_HOME (spool, logs, runs) for one test."""
    home = tmp_path / "ratchet-home"
    home.mkdir()
    monkeypatch.setenv("RATCHET_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """CLI tests call ``main()``, which points the root logger at the (captured)
    stderr of that test; put the handlers back so later log lines from background
    threads do not go to a closed capture stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
