"""Producer -> tansu -> consumer -> Postgres, on the real broker and database."""

from __future__ import annotations

import psycopg

from feedback.events import ComparisonGiven, CorrectionGiven, RatingGiven
from feedback.producer import EventProducer
from feedback.settings import FeedbackSettings
from tests.feedback.conftest import count, message, thumbs, wait_for


def test_events_become_rows_exactly_once(settings: FeedbackSettings, run_consumer) -> None:
    producer = EventProducer(settings)
    msgs = [message("alice", f"q{i}", f"a{i}") for i in range(40)]
    # Ratings published BEFORE their messages (other topic): they must not be lost.
    early = [thumbs(m) for m in msgs[:10]]
    for r in early:
        producer.publish(r)
    for m in msgs:
        producer.publish(m)
    for m in msgs[10:]:
        producer.publish(thumbs(m, up=False))
    producer.publish(
        ComparisonGiven(
            user_id="alice",
            message_id_a=msgs[0].message_id,
            message_id_b=msgs[1].message_id,
            winner="a",
        )
    )
    producer.publish(
        CorrectionGiven(
            user_id="alice", message_id=msgs[2].message_id, corrected_reply="The right answer."
        )
    )
    assert producer.flush(30)
    assert producer.backlog() == 0

    consumer = run_consumer(settings)
    url = settings.database_url
    wait_for(
        lambda: (
            count(url, "ratings") == 40
            and count(url, "messages") == 40
            and count(url, "comparisons") == 1
            and count(url, "corrections") == 1
        ),
        60,
        "all rows",
    )
    # Redelivery of events already stored (same event_id, a later batch) must change nothing.
    consumed = consumer.consumer.stats.events
    for event in (early[0], msgs[0]):
        producer.publish(event)
    assert producer.flush(30)
    producer.close()
    wait_for(lambda: consumer.consumer.stats.events >= consumed + 2, 60, "the redelivery")
    consumer.stop()
    assert count(url, "ratings", "thumbs = 'up'") == 10
    assert count(url, "ratings", "thumbs = 'down'") == 30
    assert count(url, "users") == 1
    assert count(url, "conversations") == 40
    assert count(url, "dead_letters") == 0
    # The rows are keyed so that their count cannot show a twice-applied event: the
    # redelivered rating must not have been applied again (``revisions`` stays 1)
    # and the row still holds the first delivery's event.
    assert count(url, "ratings", "revisions <> 1") == 0
    with psycopg.connect(url) as conn:
        stored = conn.execute(
            "SELECT event_id, thumbs FROM ratings WHERE message_id = %s", (msgs[0].message_id,)
        ).fetchall()
    assert stored == [(early[0].event_id, "up")]


def test_latest_rating_wins(settings: FeedbackSettings, run_consumer) -> None:
    producer = EventProducer(settings)
    m = message()
    first = thumbs(m, up=True)
    second = RatingGiven(user_id=m.user_id, message_id=m.message_id, stars=2, comment="meh")
    # The newer rating is published first: order on the wire must not matter.
    producer.publish(m)
    producer.publish(second)
    producer.publish(first)
    assert producer.flush(30)
    producer.close()
    consumer = run_consumer(settings)
    # All three events consumed (the message and BOTH ratings), not just the message row.
    wait_for(
        lambda: consumer.consumer.stats.events >= 3,
        60,
        "the message and both ratings consumed",
        lambda: consumer.consumer.stats,
    )
    consumer.stop()
    assert count(settings.database_url, "messages") == 1
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT event_id, stars, thumbs, comment, revisions FROM ratings"
        ).fetchall()
    # Both ratings were published before the consumer started, so they land in one
    # consumer batch: the newer one wins and both count as the user's ratings (the
    # store counts every change of mind inside a batch, tests/feedback/test_revisions.py).
    assert rows == [(second.event_id, 2, None, "meh", 2)]
