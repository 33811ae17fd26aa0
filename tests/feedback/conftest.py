"""Feedback fixtures: settings pointing at a real broker and a fresh database,
event builders, a consumer running in a thread, and the real API server
(``api_factory``) for the feedback endpoints; ``stack``: one API server, broker,
database and consumer for a test module, each test its own ``user()``."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from kafka import KafkaConsumer, TopicPartition

from feedback.consumer import FeedbackConsumer
from feedback.events import ChatMessage, MessageLogged, RatingGiven
from feedback.message_ids import new_message_id
from feedback.producer import EventProducer
from feedback.settings import FeedbackSettings
from infra.local.postgres import PrivateCluster
from infra.local.tansu import Broker, free_port
from serving.auth import create_key
from tests import servers
from tests.conftest import CACHE
from tests.fixtures.clock import ManualClock
from tests.servers import new_database, serving_settings

SECRET = "test-secret"


def make_settings(bootstrap: str, database_url: str, home: Path, **kw: object) -> FeedbackSettings:
    base: dict[str, object] = dict(
        kafka_bootstrap_servers=bootstrap,
        database_url=database_url,
        home=home,
        consumer_group=f"g-{uuid.uuid4().hex[:8]}",
        message_id_secret=SECRET,
        producer_delivery_timeout_ms=4000,
        spool_replay_interval_s=0.5,
        consumer_retry_interval_s=0.5,
    )
    base.update(kw)
    return FeedbackSettings(**base)  # type: ignore[arg-type]


@pytest.fixture
def settings(fresh_broker: Broker, database_url: str, tmp_path: Path) -> FeedbackSettings:
    return make_settings(fresh_broker.bootstrap, database_url, tmp_path / "home")


def message(
    user: str = "alice",
    prompt: str = "What is Ratchet?",
    reply: str = "A bot.",
    *,
    conversation_id: uuid.UUID | None = None,
    version: str = "v1",
) -> MessageLogged:
    return MessageLogged(
        user_id=user,
        message_id=new_message_id(user, SECRET),
        conversation_id=conversation_id or uuid.uuid4(),
        model_version=version,
        prompt=[ChatMessage(role="user", content=prompt)],
        reply=reply,
    )


def thumbs(m: MessageLogged, up: bool = True, **kw: object) -> RatingGiven:
    return RatingGiven(
        user_id=m.user_id, message_id=m.message_id, thumbs="up" if up else "down", **kw
    )  # type: ignore[arg-type]


def publish_thumbs(producer: EventProducer, user: str, n: int) -> set[str]:
    """``n`` thumbs-up of ``user`` published through ``producer``; their event ids."""
    events = [thumbs(message(user)) for _ in range(n)]
    for e in events:
        producer.publish(e)
    return {str(e.event_id) for e in events}


def count(url: str, table: str, where: str = "TRUE") -> int:
    with psycopg.connect(url) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()[0])  # type: ignore[index]


def wait_for(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    state: Callable[[], object] | None = None,
) -> None:
    """Poll ``check`` until it holds; on timeout, fail saying ``what`` (and ``state()``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    seen = f"; state: {state()}" if state is not None else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}{seen}")


@dataclass
class ConsumerThread:
    consumer: FeedbackConsumer
    thread: threading.Thread

    def stop(self) -> None:
        self.consumer.stop()
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.fixture
def run_consumer() -> Iterator[Callable[[FeedbackSettings], ConsumerThread]]:
    started: list[ConsumerThread] = []

    def start(settings: FeedbackSettings) -> ConsumerThread:
        consumer = FeedbackConsumer(settings)
        thread = threading.Thread(target=consumer.run, daemon=True)
        thread.start()
        started.append(ConsumerThread(consumer, thread))
        return started[-1]

    yield start
    for c in started:
        if c.thread.is_alive():
            c.stop()


# -- the API server, for tests of the HTTP half ---------------------------------


class ApiServer(servers.ApiServer):
    """The API on the tiny model (``tests/servers.py``), with a key and a client per
    user; its ``clock`` (a ``ManualClock``) drives the rate caps."""

    def key(self, user_id: str) -> str:
        with psycopg.connect(self.database_url) as conn:
            return create_key(conn, user_id=user_id, role="user")

    def client(self, user_id: str) -> httpx.Client:
        """An HTTP client authenticated as ``user_id`` (a fresh key)."""
        return httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self.key(user_id)}"},
            timeout=60,
        )


def start_api(
    database_url: str,
    bootstrap: str,
    home: Path,
    model: Path,
    *,
    rate_cap: int = 10_000,
    backend: str = "transformers",
) -> ApiServer:
    """Start the API on ``database_url`` (API keys) publishing to ``bootstrap``. Its
    rate caps run on a manual clock: a window slides only when a test moves it."""
    settings = serving_settings(database_url, bootstrap, home, model, backend=backend)
    settings = settings.model_copy(update={"rate_cap_per_minute": rate_cap})
    assert settings.message_id_secret == SECRET
    return servers.start_api(settings, clock=ManualClock(), kind=ApiServer)


@pytest.fixture
def api_factory(
    pg_cluster: PrivateCluster, template_db: str, tiny_model_dir: Path, tmp_path: Path
) -> Iterator[Callable[..., ApiServer]]:
    """Start API servers (each on a database of its own) for one test."""
    started: list[ApiServer] = []

    def start(bootstrap: str, **kw: object) -> ApiServer:
        db = new_database(pg_cluster, template_db)
        home = tmp_path / f"api-home-{len(started)}"
        started.append(start_api(db, bootstrap, home, tiny_model_dir, **kw))  # type: ignore[arg-type]
        return started[-1]

    yield start
    for server in started:
        server.stop()


def mint(user: str, n: int) -> list[str]:
    """``n`` valid message ids of ``user`` (as if the chat API had issued them)."""
    return [new_message_id(user, SECRET) for _ in range(n)]


def post_all(client: httpx.Client, path: str, bodies: list[dict], workers: int = 4) -> list[str]:
    """POST every body (a few at a time); assert each got 202; the event ids, in order."""

    def one(body: dict) -> str:
        resp = client.post(path, json=body)
        assert resp.status_code == 202, (resp.status_code, resp.text)
        assert resp.json()["status"] == "accepted"
        return str(resp.json()["event_id"])

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, bodies))


def rating_ids(url: str, user: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT event_id FROM ratings WHERE user_id = %s", (user,)).fetchall()
    return {str(r[0]) for r in rows}


def read_topic(bootstrap: str, topic: str, *, timeout: float = 30.0) -> list[Any]:
    """Every record on ``topic``, from the beginning, read without a group until a
    few polls in a row bring nothing (tansu's ListOffsets reports the last offset,
    not the next one, so end offsets are not a reliable stop)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        deadline = time.monotonic() + timeout
        parts: set[int] | None = None
        while not parts and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic)
            time.sleep(0.1)
        assert parts, f"topic {topic} was never created"
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        empty = 0
        while empty < 3 and time.monotonic() < deadline:
            polled = consumer.poll(timeout_ms=500)
            empty = 0 if polled else empty + 1
            for records in polled.values():
                out.extend(records)
        return out
    finally:
        consumer.close()


FEEDBACK_RATE_CAP = 150  # feedback events per user per minute, on the `stack` server


@dataclass
class Stack:
    api: ApiServer
    consumer: ConsumerThread

    @property
    def url(self) -> str:
        return self.api.database_url


@pytest.fixture(scope="module")
def stack(
    pg_cluster: PrivateCluster,
    template_db: str,
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("feedback-api")
    broker = Broker(CACHE / "bin", free_port(), tmp / "tansu.log")
    broker.start()
    db = new_database(pg_cluster, template_db)
    # The vLLM engine, as in production (the fault tests' servers use transformers:
    # they test the feedback path, and start several servers each).
    api = start_api(
        db,
        broker.bootstrap,
        tmp / "home",
        tiny_model_dir,
        rate_cap=FEEDBACK_RATE_CAP,
        backend="vllm",
    )
    # Shares this process (and its GIL) with the server generating text: a longer
    # session keeps a busy machine from turning slow heartbeats into rebalances.
    settings = make_settings(
        broker.bootstrap,
        db,
        tmp / "consumer-home",
        consumer_session_timeout_ms=20000,
        consumer_max_poll_interval_ms=60000,
    )
    consumer = FeedbackConsumer(settings)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    running = ConsumerThread(consumer, thread)
    yield Stack(api, running)
    running.stop()
    api.stop()
    broker.stop()


def user() -> str:
    """A new user id: counts per user are exact on a shared ``stack``."""
    return f"u-{uuid.uuid4().hex[:10]}"


def error_body(resp: httpx.Response, status: int, type_: str) -> dict:
    """The OpenAI-shaped error body of ``resp``, after checking its status and type."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert set(body) == {"error"}, body
    assert body["error"]["type"] == type_, body
    assert body["error"]["message"], body
    return body["error"]
