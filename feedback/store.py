"""The feedback store: one batch of events into Postgres in one transaction.

House style: COPY each event kind into a temporary staging table, then
``INSERT ... SELECT ... ON CONFLICT`` into the real table, so a redelivered
batch changes nothing (``event_id`` is the idempotency key). Ratings and
corrections keep the latest event per (user, reply), ordered by
``occurred_at`` then ``event_id``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg.types.json import Jsonb

from feedback.events import (
    AnyEvent,
    ChatMessage,
    ComparisonGiven,
    CorrectionGiven,
    MessageLogged,
    RatingGiven,
)

_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS stage_users (id text) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_messages (
    id text, event_id uuid, conversation_id uuid, user_id text, model_version text,
    prompt jsonb, prompt_hash text, reply text, prompt_token_ids int[], reply_token_ids int[],
    finish_reason text, usage jsonb, latency_ms double precision, ttft_ms double precision,
    citations jsonb, created_at timestamptz) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_ratings (
    user_id text, message_id text, event_id uuid, thumbs text, stars smallint,
    score double precision, comment text, tags text[], occurred_at timestamptz)
    ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_comparisons (
    event_id uuid, user_id text, message_id_a text, message_id_b text, winner text,
    occurred_at timestamptz) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_corrections (
    user_id text, message_id text, event_id uuid, corrected_reply text,
    occurred_at timestamptz) ON COMMIT DELETE ROWS;
"""

_MESSAGE_COLS = (
    "id, event_id, conversation_id, user_id, model_version, prompt, prompt_hash, reply,"
    " prompt_token_ids, reply_token_ids, finish_reason, usage, latency_ms, ttft_ms,"
    " citations, created_at"
)
_RATING_COLS = "user_id, message_id, event_id, thumbs, stars, score, comment, tags, occurred_at"
_COMPARISON_COLS = "event_id, user_id, message_id_a, message_id_b, winner, occurred_at"
_CORRECTION_COLS = "user_id, message_id, event_id, corrected_reply, occurred_at"

# Revisions: a new row counts every distinct event of its (user, reply) in the batch;
# an update adds those newer than the stored one (a rating and its change often land
# in one batch after an outage). Redelivered events are not newer, so add nothing.
_NEWER = """(SELECT count(DISTINCT n.event_id) FROM stage_{table} AS n
        WHERE n.user_id = EXCLUDED.user_id AND n.message_id = EXCLUDED.message_id
        AND (n.occurred_at, n.event_id) > ({table}.occurred_at, {table}.event_id))"""

_UPSERT = f"""
INSERT INTO users (id) SELECT DISTINCT id FROM stage_users ON CONFLICT DO NOTHING;
INSERT INTO conversations (id, user_id)
    SELECT DISTINCT ON (conversation_id) conversation_id, user_id FROM stage_messages
    ON CONFLICT DO NOTHING;
INSERT INTO messages ({_MESSAGE_COLS})
    SELECT {_MESSAGE_COLS} FROM stage_messages ON CONFLICT DO NOTHING;
INSERT INTO ratings ({_RATING_COLS}, revisions)
    SELECT DISTINCT ON (user_id, message_id) {_RATING_COLS},
        count(*) OVER (PARTITION BY user_id, message_id)
    FROM (SELECT DISTINCT ON (event_id) * FROM stage_ratings) AS s
    ORDER BY user_id, message_id, occurred_at DESC, event_id DESC
    ON CONFLICT (user_id, message_id) DO UPDATE SET
        event_id = EXCLUDED.event_id, thumbs = EXCLUDED.thumbs, stars = EXCLUDED.stars,
        score = EXCLUDED.score, comment = EXCLUDED.comment, tags = EXCLUDED.tags,
        occurred_at = EXCLUDED.occurred_at, stored_at = now(),
        revisions = ratings.revisions + {_NEWER.format(table="ratings")}
    WHERE (EXCLUDED.occurred_at, EXCLUDED.event_id) > (ratings.occurred_at, ratings.event_id);
INSERT INTO comparisons ({_COMPARISON_COLS})
    SELECT {_COMPARISON_COLS} FROM stage_comparisons ON CONFLICT (event_id) DO NOTHING;
INSERT INTO corrections ({_CORRECTION_COLS}, revisions)
    SELECT DISTINCT ON (user_id, message_id) {_CORRECTION_COLS},
        count(*) OVER (PARTITION BY user_id, message_id)
    FROM (SELECT DISTINCT ON (event_id) * FROM stage_corrections) AS s
    ORDER BY user_id, message_id, occurred_at DESC, event_id DESC
    ON CONFLICT (user_id, message_id) DO UPDATE SET
        event_id = EXCLUDED.event_id, corrected_reply = EXCLUDED.corrected_reply,
        occurred_at = EXCLUDED.occurred_at, stored_at = now(),
        revisions = corrections.revisions + {_NEWER.format(table="corrections")}
    WHERE (EXCLUDED.occurred_at, EXCLUDED.event_id)
        > (corrections.occurred_at, corrections.event_id);
"""


@dataclass(frozen=True)
class DeadLetter:
    """A record that could not be stored, and why."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str

    @property
    def value_sha256(self) -> str:
        return hashlib.sha256(self.value or b"").hexdigest()


@dataclass
class BatchCounts:
    messages: int = 0
    ratings: int = 0
    comparisons: int = 0
    corrections: int = 0
    dead_letters: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


def prompt_hash(prompt: Sequence[ChatMessage]) -> str:
    """Groups replies to the same prompt (same roles and contents, in order)."""
    canon = json.dumps([[m.role, m.content] for m in prompt], ensure_ascii=False)
    return hashlib.sha256(canon.encode()).hexdigest()


def write_batch(
    conn: psycopg.Connection, events: Sequence[AnyEvent], dead: Sequence[DeadLetter] = ()
) -> BatchCounts:
    """Store ``events`` and ``dead`` in ONE transaction; idempotent under redelivery."""
    counts = BatchCounts()
    users = {e.user_id for e in events}
    messages = [e for e in events if isinstance(e, MessageLogged)]
    ratings = [e for e in events if isinstance(e, RatingGiven)]
    comparisons = [e for e in events if isinstance(e, ComparisonGiven)]
    corrections = [e for e in events if isinstance(e, CorrectionGiven)]
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(_STAGING)
        _copy(cur, "stage_users (id)", [(u,) for u in users])
        _copy(cur, f"stage_messages ({_MESSAGE_COLS})", [_message_row(m) for m in messages])
        _copy(cur, f"stage_ratings ({_RATING_COLS})", [_rating_row(r) for r in ratings])
        _copy(
            cur,
            f"stage_comparisons ({_COMPARISON_COLS})",
            [
                (c.event_id, c.user_id, c.message_id_a, c.message_id_b, c.winner, c.occurred_at)
                for c in comparisons
            ],
        )
        _copy(
            cur,
            f"stage_corrections ({_CORRECTION_COLS})",
            [
                (c.user_id, c.message_id, c.event_id, c.corrected_reply, c.occurred_at)
                for c in corrections
            ],
        )
        cur.execute(_UPSERT)  # type: ignore[arg-type]
        if dead:
            cur.executemany(
                "INSERT INTO dead_letters"
                ' (topic, partition, "offset", key, value, value_sha256, reason)'
                " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [
                    (d.topic, d.partition, d.offset, d.key, d.value, d.value_sha256, d.reason)
                    for d in dead
                ],
            )
    counts.messages, counts.ratings = len(messages), len(ratings)
    counts.comparisons, counts.corrections = len(comparisons), len(corrections)
    counts.dead_letters = len(dead)
    return counts


def _copy(cur: psycopg.Cursor, target: str, rows: list[tuple[object, ...]]) -> None:
    if not rows:
        return
    with cur.copy(f"COPY {target} FROM STDIN") as copy:  # type: ignore[arg-type]
        for row in rows:
            copy.write_row(row)


def _message_row(m: MessageLogged) -> tuple[object, ...]:
    return (
        m.message_id,
        m.event_id,
        m.conversation_id,
        m.user_id,
        m.model_version,
        Jsonb([p.model_dump() for p in m.prompt]),
        prompt_hash(m.prompt),
        m.reply,
        m.prompt_token_ids,
        m.reply_token_ids,
        m.finish_reason,
        Jsonb(m.usage),
        m.latency_ms,
        m.ttft_ms,
        Jsonb(m.citations),
        m.occurred_at,
    )


def _rating_row(r: RatingGiven) -> tuple[object, ...]:
    return (
        r.user_id,
        r.message_id,
        r.event_id,
        r.thumbs,
        r.stars,
        r.score,
        r.comment,
        list(r.tags),
        r.occurred_at,
    )


def table_counts(conn: psycopg.Connection) -> dict[str, int]:
    """Row counts of the feedback tables (for ``ratchet feedback status`` and tests)."""
    out: dict[str, int] = {}
    for table in ("messages", "ratings", "comparisons", "corrections", "dead_letters"):
        out[table] = int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]
    return out
