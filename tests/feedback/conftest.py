"""Feedback fixtures: settings pointing at a real broker and a fresh database,
event builders, and a consumer running in a thread."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from feedback.consumer import FeedbackConsumer
from feedback.events import ChatMessage, MessageLogged, RatingGiven
from feedback.message_ids import new_message_id
from feedback.settings import FeedbackSettings
from infra.local.tansu import Broker

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


def count(url: str, table: str, where: str = "TRUE") -> int:
    with psycopg.connect(url) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()[0])  # type: ignore[index]


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


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
