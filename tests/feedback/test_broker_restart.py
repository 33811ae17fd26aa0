"""A tansu restart with sends still in the producer's hands (the soak's 230 lost
ratings, issue 17): the broker is down for less than the delivery timeout, so the
events published during the outage are still in kafka-python's buffer when the
new, empty broker comes up.

Left to kafka-python, those buffered batches are retried into the new broker
before any metadata request has created their topics there; tansu acknowledges
them, and the partitions are left in a state where later records are given
offsets already taken (and produce requests fail with UnknownError). A consumer
whose position has passed a reused offset never sees that record: acknowledged,
then lost. The producer must instead spool such sends and replay them through a
fresh client.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaProducer
from kafka.errors import KafkaTimeoutError

from feedback.events import TOPIC_RATINGS
from feedback.producer import EventProducer, force_close
from infra.local.tansu import Broker
from tests.feedback.conftest import (
    ConsumerThread,
    make_settings,
    publish_thumbs,
    rating_ids,
    read_topic,
    wait_for,
)


def test_sends_buffered_across_a_broker_restart_are_all_stored(
    fresh_broker: Broker,
    database_url: str,
    run_consumer: Callable[..., ConsumerThread],
    tmp_path: Path,
) -> None:
    user = "restart"
    # the outage (about 5 s of tansu shutting down, then 1 s) is shorter than this
    settings = make_settings(
        fresh_broker.bootstrap, database_url, tmp_path / "home", producer_delivery_timeout_ms=15000
    )
    producer = EventProducer(settings)
    try:
        before = publish_thumbs(producer, user, 20)
        assert producer.flush(30)
        consumer = run_consumer(settings)
        wait_for(lambda: rating_ids(database_url, user) == before, 60, "the first 20 stored")
        consumer.stop()  # tansu forgets offsets and groups: the consumer restarts with it

        fresh_broker.stop()
        during = publish_thumbs(producer, user, 300)  # the producer still believes in the broker
        time.sleep(1)
        fresh_broker.start()
        after: set[str] = set()
        for _ in range(6):
            after |= publish_thumbs(producer, user, 50)
            time.sleep(0.3)
        wait_for(
            lambda: producer.pending() == 0 and producer.backlog() == 0,
            120,
            "every event acknowledged by the new broker",
            lambda: (producer.pending(), producer.backlog(), producer.outcomes),
        )
        consumer = run_consumer(settings)
        expected = before | during | after
        try:
            wait_for(
                lambda: rating_ids(database_url, user) == expected,
                90,
                "every published rating stored",
                lambda: (len(expected - rating_ids(database_url, user)), producer.outcomes),
            )
        finally:
            consumer.stop()
        # The new log holds each event of the outage and after, at offsets of its own.
        records = read_topic(fresh_broker.bootstrap, TOPIC_RATINGS)
        offsets = Counter((r.partition, r.offset) for r in records)
        assert [po for po, n in offsets.items() if n > 1] == []
        assert {json.loads(r.value)["event_id"] for r in records} == during | after
    finally:
        producer.close()


def test_each_event_settles_once_as_sent_or_spooled(fresh_broker: Broker, tmp_path: Path) -> None:
    """The sender settles its sends by sweeping their futures (no callback per
    event): every published event ends counted exactly once, acknowledged or
    spooled, and counts as pending until then, across a broker that goes away."""
    settings = make_settings(
        fresh_broker.bootstrap, "postgresql://unused", tmp_path / "home", spool_replay_interval_s=60
    )
    producer = EventProducer(settings)
    try:
        publish_thumbs(producer, "settle", 500)
        assert producer.flush(30)
        assert producer.outcomes == {"sent": 500, "spooled": 0, "replayed": 0}

        publish_thumbs(producer, "settle", 300)
        fresh_broker.stop()
        publish_thumbs(producer, "settle", 300)
        assert producer.pending() > 0
        wait_for(
            lambda: producer.pending() == 0,
            60,
            "every event acknowledged or spooled",
            lambda: (producer.pending(), producer.outcomes),
        )
        sent, spooled = producer.outcomes["sent"], producer.outcomes["spooled"]
        assert sent + spooled == 1100, producer.outcomes
        assert spooled >= 300  # at least those published once the broker was gone
        assert producer.backlog() == spooled
    finally:
        producer.close()


def test_public_close_cannot_force_close_so_force_close_fails_pending_sends(
    fresh_broker: Broker,
) -> None:
    """Why ``force_close`` reaches into kafka-python (issue 17): its public
    ``close(timeout=0)`` raises while sends are pending and leaves them pending,
    to be retried into whatever broker answers next. If the first assertion ever
    fails, kafka-python's ``close(0)`` force-closes: use it in ``force_close``."""
    kafka = KafkaProducer(
        bootstrap_servers=fresh_broker.bootstrap, acks="all", delivery_timeout_ms=60000
    )
    kafka.send(TOPIC_RATINGS, key=b"k", value=b"warm").get(timeout=30)  # metadata known
    fresh_broker.stop()
    pending = kafka.send(TOPIC_RATINGS, key=b"k", value=b"during the outage")
    with pytest.raises(KafkaTimeoutError):
        kafka.close(timeout=0)
    assert not pending.is_done  # still buffered: a restarted broker would get it

    force_close(kafka)
    assert pending.is_done and pending.failed()  # failed, so the producer spools it
