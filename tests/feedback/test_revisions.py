"""``ratings.revisions`` and ``corrections.revisions`` count every change of mind,
whether the changes land in one consumer batch (typical after an outage) or in
several, and never count a redelivered event twice."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from feedback.events import CorrectionGiven
from feedback.store import write_batch
from tests.feedback.conftest import message, thumbs

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url) as c:
        yield c


def _rating(conn: psycopg.Connection, message_id: str) -> tuple[str, int]:
    row = conn.execute(
        "SELECT thumbs, revisions FROM ratings WHERE message_id = %s", (message_id,)
    ).fetchone()
    assert row is not None
    return str(row[0]), int(row[1])


def test_a_rating_and_its_change_in_one_batch_count_two(conn: psycopg.Connection) -> None:
    m = message()
    up = thumbs(m, True, occurred_at=T0)
    down = thumbs(m, False, occurred_at=T0 + timedelta(seconds=5))
    write_batch(conn, [m, down, up])
    assert _rating(conn, m.message_id) == ("down", 2)
    write_batch(conn, [m, down, up])  # the whole batch redelivered
    assert _rating(conn, m.message_id) == ("down", 2)


def test_revisions_across_batches_and_partial_redelivery(conn: psycopg.Connection) -> None:
    m = message()
    r1 = thumbs(m, True, occurred_at=T0)
    r2 = thumbs(m, False, occurred_at=T0 + timedelta(seconds=1))
    r3 = thumbs(m, True, occurred_at=T0 + timedelta(seconds=2))
    write_batch(conn, [m, r1])
    assert _rating(conn, m.message_id) == ("up", 1)
    write_batch(conn, [r1, r2, r3, r3])  # r1 again, two changes, r3 twice in the batch
    assert _rating(conn, m.message_id) == ("up", 3)
    write_batch(conn, [r2])  # an old event, late
    assert _rating(conn, m.message_id) == ("up", 3)


def test_corrections_count_changes_in_one_batch(conn: psycopg.Connection) -> None:
    m = message()
    first = CorrectionGiven(
        user_id=m.user_id, message_id=m.message_id, corrected_reply="A", occurred_at=T0
    )
    second = CorrectionGiven(
        user_id=m.user_id,
        message_id=m.message_id,
        corrected_reply="B",
        occurred_at=T0 + timedelta(seconds=1),
    )
    write_batch(conn, [m, first, second])
    row = conn.execute(
        "SELECT corrected_reply, revisions FROM corrections WHERE message_id = %s",
        (m.message_id,),
    ).fetchone()
    assert row == ("B", 2)
