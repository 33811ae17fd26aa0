"""Faults on the feedback path, each with exact counts: ratings go through the real
API server, a real tansu broker and the real consumer into real Postgres.

Message ids are minted with the server's secret (as the chat API would issue
them); every rating goes through ``POST /v1/feedback/ratings``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from kafka import KafkaProducer

from feedback.db import migrate
from feedback.events import (
    TOPIC_DEAD_LETTERS,
    TOPIC_MESSAGES,
    TOPIC_RATINGS,
    RatingGiven,
    encode,
)
from infra.local.postgres import PrivateCluster
from infra.local.tansu import Broker, free_port
from tests.conftest import REPO
from tests.feedback.conftest import (
    ApiServer,
    ConsumerThread,
    count,
    make_settings,
    mint,
    post_all,
    rating_ids,
    read_topic,
    wait_for,
)

RATINGS = "/v1/feedback/ratings"


def rate_all(api: ApiServer, user: str, n: int) -> list[str]:
    """``n`` ratings by ``user`` through the API; the accepted event ids."""
    with api.client(user) as http:
        bodies = [
            {"message_id": m, "thumbs": "up"} if i % 2 else {"message_id": m, "stars": 1 + i % 5}
            for i, m in enumerate(mint(user, n))
        ]
        return post_all(http, RATINGS, bodies)


def delivered(api: ApiServer) -> bool:
    """Everything the API accepted is on the broker (nothing pending, nothing spooled)."""
    producer = api.state.producer
    return producer.pending() == 0 and producer.backlog() == 0


def test_broker_down_ratings_spooled_then_stored_once(
    fresh_broker: Broker,
    api_factory: Callable[..., ApiServer],
    run_consumer: Callable[..., ConsumerThread],
    tmp_path: Path,
) -> None:
    api = api_factory(fresh_broker.bootstrap)
    url, user = api.database_url, "spooler"
    settings = make_settings(fresh_broker.bootstrap, url, tmp_path / "consumer")
    consumer = run_consumer(settings)
    warm = rate_all(api, user, 10)
    wait_for(lambda: rating_ids(url, user) == set(warm), 60, "ratings while the broker is up")
    # tansu keeps the log in memory: after a restart, offsets start again at 0, which a
    # consumer that lived through the restart may have passed already (it then skips
    # records). A real Kafka never rewinds; here the consumer restarts with the broker.
    consumer.stop()

    fresh_broker.stop()
    accepted = rate_all(api, user, 1000)  # every one answered 202 at once
    producer = api.state.producer
    wait_for(
        lambda: producer.pending() == 0 and producer.backlog() == 1000,
        120,
        "all 1,000 ratings in the spool",
        lambda: (producer.pending(), producer.backlog()),
    )
    assert count(url, "ratings") == 10

    fresh_broker.start()  # tansu keeps nothing: the spool is the only copy
    consumer = run_consumer(settings)
    wait_for(
        lambda: count(url, "ratings") == 1010,
        240,
        "the spooled ratings stored",
        lambda: (
            count(url, "ratings"),
            producer.pending(),
            producer.backlog(),
            consumer.consumer.stats,
        ),
    )
    wait_for(lambda: delivered(api), 30, "an empty spool")
    assert rating_ids(url, user) == set(warm) | set(accepted)
    assert len(set(accepted)) == 1000
    assert count(url, "dead_letters") == 0
    assert count(url, "ratings", "revisions <> 1") == 0  # no event applied twice
    # The restarted broker started empty: it holds the spool's replay, each event once
    # (the store drops repeats, so only the topic shows a spool replayed twice).
    replayed = [
        json.loads(r.value)["event_id"] for r in read_topic(fresh_broker.bootstrap, TOPIC_RATINGS)
    ]
    assert len(replayed) == 1000, f"{len(replayed)} records on the topic for 1000 spooled"
    assert set(replayed) == set(accepted)
    assert consumer.thread.is_alive()


def _consume(
    bootstrap: str, url: str, home: Path, group: str, log: Path, *args: str
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "RATCHET_HOME": str(home),
        "RATCHET_CONSUMER_GROUP": group,
        "RATCHET_CONSUMER_SESSION_TIMEOUT_MS": "3000",
    }
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "serving.cli", "consume", *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_consumer_sigkill_mid_stream_no_loss_no_duplicates(
    fresh_broker: Broker, api_factory: Callable[..., ApiServer], tmp_path: Path
) -> None:
    api = api_factory(fresh_broker.bootstrap)
    url, user = api.database_url, "killed"
    accepted = rate_all(api, user, 1000)
    wait_for(lambda: delivered(api), 60, "all ratings on the broker")
    group, home, log = f"g-{uuid.uuid4().hex[:8]}", tmp_path / "home", tmp_path / "consume.log"

    proc = _consume(fresh_broker.bootstrap, url, home, group, log, "--batch-size", "10")
    try:
        deadline = time.monotonic() + 120
        while count(url, "ratings") < 30:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the consumer stored nothing: " + log.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    at_kill = count(url, "ratings")
    assert 30 <= at_kill < 1000, "the consumer finished before it was killed"

    more = rate_all(api, user, 200)  # arrive while no consumer runs
    wait_for(lambda: delivered(api), 60, "the later ratings on the broker")
    proc = _consume(fresh_broker.bootstrap, url, home, group, log)
    try:
        wait_for(lambda: count(url, "ratings") == 1200, 150, "every rating after the restart")
        proc.send_signal(signal.SIGTERM)  # finishes its batch, leaves the group
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rating_ids(url, user) == set(accepted) | set(more)
    assert count(url, "ratings", "revisions <> 1") == 0  # redelivered events changed nothing
    assert count(url, "dead_letters") == 0


@pytest.fixture
def own_pg() -> Iterator[PrivateCluster]:
    """A Postgres cluster for one test that stops and restarts it (outside pytest's
    root-private tmp dir: the server runs as the ``postgres`` user)."""
    root = Path(tempfile.mkdtemp(prefix="ratchet-pg-fault-"))
    cluster = PrivateCluster(root / "data", free_port())
    cluster.start()
    yield cluster
    cluster.stop(mode="immediate")
    shutil.rmtree(root, ignore_errors=True)


def test_postgres_restart_while_consuming(
    fresh_broker: Broker,
    api_factory: Callable[..., ApiServer],
    run_consumer: Callable[..., ConsumerThread],
    own_pg: PrivateCluster,
    tmp_path: Path,
) -> None:
    api = api_factory(fresh_broker.bootstrap)  # API keys live in the session cluster
    with psycopg.connect(own_pg.url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE store")
    url, user = own_pg.url_for("store"), "through-restart"
    migrate(url)
    accepted = rate_all(api, user, 1000)
    settings = make_settings(
        fresh_broker.bootstrap, url, tmp_path / "consumer", consumer_batch_size=20
    )
    consumer = run_consumer(settings)
    wait_for(lambda: count(url, "ratings") >= 40, 120, "the first batches")

    own_pg.stop(mode="immediate")  # a crash: in-flight transactions are lost
    retries = consumer.consumer.stats.db_retries
    wait_for(
        lambda: consumer.consumer.stats.db_retries >= retries + 3, 60, "retries during the outage"
    )
    during = rate_all(api, user, 200)  # the API does not need the store
    assert consumer.thread.is_alive()
    own_pg.start()
    wait_for(lambda: count(url, "ratings") == 1200, 150, "every rating after the restart")
    consumer.stop()
    assert rating_ids(url, user) == set(accepted) | set(during)
    assert count(url, "dead_letters") == 0
    # Batches lost in the crash come again; each event is applied once (a rating
    # applied twice would count a revision; every reply here was rated once).
    assert count(url, "ratings", "revisions <> 1") == 0
    on_topic = read_topic(fresh_broker.bootstrap, TOPIC_RATINGS)
    assert len(on_topic) == 1200, f"{len(on_topic)} records on the topic for 1200 accepted"


def test_consumer_stops_promptly_while_postgres_is_down(
    fresh_broker: Broker,
    api_factory: Callable[..., ApiServer],
    run_consumer: Callable[..., ConsumerThread],
    own_pg: PrivateCluster,
    tmp_path: Path,
) -> None:
    """SIGTERM during an outage must not hang: the batch is not committed, and the
    next consumer of the group stores it."""
    api = api_factory(fresh_broker.bootstrap)
    with psycopg.connect(own_pg.url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE store")
    url, user = own_pg.url_for("store"), "stopped-in-outage"
    migrate(url)
    own_pg.stop()
    accepted = rate_all(api, user, 100)
    settings = make_settings(fresh_broker.bootstrap, url, tmp_path / "consumer")
    consumer = run_consumer(settings)
    wait_for(lambda: consumer.consumer.stats.db_retries >= 2, 60, "retries during the outage")
    consumer.consumer.stop()
    consumer.thread.join(30)
    assert not consumer.thread.is_alive(), "the consumer hangs while Postgres is down"
    own_pg.start()
    assert count(url, "ratings") == 0
    consumer = run_consumer(settings)  # same group: the uncommitted batch comes again
    wait_for(lambda: count(url, "ratings") == 100, 120, "the batch after the restart")
    consumer.stop()
    assert rating_ids(url, user) == set(accepted)


def test_malformed_records_become_dead_letters(
    fresh_broker: Broker,
    api_factory: Callable[..., ApiServer],
    run_consumer: Callable[..., ConsumerThread],
    tmp_path: Path,
) -> None:
    api = api_factory(fresh_broker.bootstrap)
    url, user = api.database_url, "amid-garbage"
    run_consumer(make_settings(fresh_broker.bootstrap, url, tmp_path / "consumer"))
    before = rate_all(api, user, 100)

    (mid,) = mint(user, 1)
    valid = RatingGiven(user_id=user, message_id=mid, thumbs="up")
    good = valid.model_dump(mode="json")
    bad: list[tuple[str, bytes | None, str]] = [
        (TOPIC_RATINGS, b"not json at all", "invalid event"),
        (TOPIC_RATINGS, b"\xff\xfe\x00garbage", "invalid event"),
        (TOPIC_RATINGS, b'{"type": "rating_given", "user_id": "x"}', "invalid event"),
        (TOPIC_RATINGS, _json({**good, "event_id": str(uuid.uuid4()), "stars": 9}), "invalid"),
        (TOPIC_RATINGS, _json({**good, "type": "mystery_given"}), "invalid event"),
        (TOPIC_RATINGS, None, "empty record"),
        (TOPIC_MESSAGES, encode(valid), "belongs on"),
        (TOPIC_RATINGS, _json({**good, "comment": "nul \u0000 inside"}), "NUL"),
    ]
    raw = KafkaProducer(bootstrap_servers=fresh_broker.bootstrap, enable_idempotence=False)
    try:
        for topic, value, _ in bad:
            raw.send(topic, key=user.encode(), value=value)
        raw.flush(30)
    finally:
        raw.close()
    after = rate_all(api, user, 100)

    wait_for(
        lambda: count(url, "ratings") == 200 and count(url, "dead_letters") == len(bad),
        120,
        "valid ratings stored and every bad record dead-lettered",
    )
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT topic, value, reason FROM dead_letters ORDER BY id").fetchall()
    got = {(t, None if v is None else bytes(v)): r for t, v, r in rows}
    for topic, value, why in bad:
        assert why in got[(topic, value)], (value, got[(topic, value)])
    assert rating_ids(url, user) == set(before) | set(after)  # the valid raw ones never were
    assert count(url, "ratings", f"message_id = '{mid}'") == 0
    published = read_topic(fresh_broker.bootstrap, TOPIC_DEAD_LETTERS)
    assert sorted(r.value or b"" for r in published) == sorted(v or b"" for _, v, _ in bad)
    assert all(dict(r.headers)["reason"] for r in published)


def _json(obj: object) -> bytes:
    return json.dumps(obj).encode()
