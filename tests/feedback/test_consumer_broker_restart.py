"""A consumer that lives through a tansu restart (issue 17): tansu keeps its log,
its offsets and its groups in memory only, so the restarted broker numbers new
records from offset 0 again, below the position the consumer had reached. The
consumer must notice and read the new log from its start, without a restart of
its own: every rating published after the broker came back is stored."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kafka import KafkaProducer

from feedback.events import TOPIC_RATINGS, encode
from feedback.producer import EventProducer
from infra.local.tansu import Broker
from tests.feedback.conftest import (
    ConsumerThread,
    make_settings,
    message,
    publish_thumbs,
    rating_ids,
    thumbs,
    wait_for,
)


def test_consumer_reads_the_new_log_after_a_broker_restart(
    fresh_broker: Broker,
    database_url: str,
    run_consumer: Callable[..., ConsumerThread],
    tmp_path: Path,
) -> None:
    user = "lives-through"  # one user: one partition, whose offsets the restart reuses
    settings = make_settings(fresh_broker.bootstrap, database_url, tmp_path / "home")
    producer = EventProducer(settings)
    consumer = run_consumer(settings)
    try:
        before = publish_thumbs(producer, user, 300)
        wait_for(lambda: rating_ids(database_url, user) == before, 90, "the first 300 stored")

        fresh_broker.stop()
        fresh_broker.start()  # empty: offsets start at 0 again, below the consumer's 300
        # At once, before the consumer is back: the new log passes its old position.
        events = [thumbs(message(user)) for _ in range(400)]
        raw = KafkaProducer(bootstrap_servers=fresh_broker.bootstrap, acks="all")
        for e in events:
            raw.send(TOPIC_RATINGS, key=e.partition_key(), value=encode(e))
        raw.flush(30)
        raw.close()
        after = {str(e.event_id) for e in events}
        expected = before | after
        wait_for(
            lambda: rating_ids(database_url, user) == expected,
            90,
            "every rating published after the restart stored",
            lambda: (len(expected - rating_ids(database_url, user)), consumer.consumer.stats),
        )
        assert consumer.thread.is_alive()
    finally:
        producer.close()
