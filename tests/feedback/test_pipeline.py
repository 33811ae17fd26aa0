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
    # Redelivery of the same event (same event_id) must not add rows.
    producer.publish(early[0])
    producer.publish(msgs[0])
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
    producer.close()

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
    consumer.stop()
    assert count(url, "ratings", "thumbs = 'up'") == 10
    assert count(url, "ratings", "thumbs = 'down'") == 30
    assert count(url, "users") == 1
    assert count(url, "conversations") == 40
    assert count(url, "dead_letters") == 0


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
    wait_for(lambda: count(settings.database_url, "messages") == 1, 60, "message row")
    consumer.stop()
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute("SELECT event_id, stars, thumbs, comment FROM ratings").fetchall()
    assert rows == [(second.event_id, 2, None, "meh")]
