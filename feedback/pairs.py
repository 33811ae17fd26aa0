"""Training records built from the feedback store: preference pairs, SFT and KTO examples.

Preference pairs come from three kinds of feedback:

- **comparisons**: the A/B winner is chosen, the loser rejected; a tie gives no
  pair. The latest pick per (user, pair of replies) wins, like ratings.
- **corrections**: the corrected reply is chosen, the original reply rejected.
- **ratings**: replies to the same prompt (same ``prompt_hash``) are ranked by
  their mean score over raters (each rater's latest rating, as the store keeps
  it); the higher-scored reply is chosen; equal scores give no pair. At most
  ``max_pairs_per_prompt`` pairs per prompt, largest score gap first, so one
  popular question cannot flood a snapshot.

SFT examples are corrections and replies whose every rating is top (thumbs up
or 5 stars) and that nobody corrected. KTO examples are the thumbs: a reply
every thumbs rater liked is ``label=True``, one every rater disliked
``label=False``; mixed verdicts are left out.

**Time.** Each record's ``created_at`` is when it became buildable *in the
store*: the greatest ``stored_at`` of the feedback rows and messages it joins.
``since`` and ``until`` filter on that same value (``since < created_at <=
until``). ``stored_at`` rather than ``occurred_at`` because feedback arrives late
(the producer's spool, a rating stored before its message): filtering on the
event's own time would silently drop everything that arrived after the
trainer's watermark but happened before it. A changed rating moves its
``stored_at``, so the pairs it affects come back in the next snapshot (by
design: it is new feedback).

**Watermarks.** ``stored_at`` is ``now()`` of the writing transaction, i.e. its
*start*, not its commit: a consumer batch that started before a snapshot but
commits after it carries a ``stored_at`` below records the snapshot did see. A
watermark taken as "the newest ``created_at`` seen" would then pass it, and the
next ``since`` query would skip it forever. So a snapshot reads only up to
:func:`committed_through` (``until``): a time before the start of every
transaction still open in this database (``pg_stat_activity.xact_start``, or
``query_start`` of a statement whose transaction is just starting) and before
the clock when it was asked (read a moment before the sessions, so one that
has just taken its start time has published it). Every row with ``stored_at`` at or below it is
committed and visible to any statement that starts afterwards; records above it
are left for the next snapshot, not skipped. A snapshot's watermark is the
newest ``created_at`` it returned (at most ``until``), so consecutive snapshots
``(since, until]`` neither skip nor repeat a record. The cost: records stored
while a long transaction stays open wait until it ends (a warning names the
session); the reader must see other roles' sessions (the same role as the
consumer, or ``pg_read_all_stats``), else a warning says so. (A commit-ordered
stamp would need ``track_commit_timestamp``, a server setting, or watermarks
that are transaction snapshots rather than times; this keeps ``stored_at`` and
the ``timestamptz`` watermark of ``training_runs``.)

Feedback on messages that are not (yet) in the store is skipped; it is picked up
once the message arrives, since the message's ``stored_at`` then raises
``created_at`` past the old watermark.

All text that leaves through this module is PII-redacted with
:func:`feedback.quality.redact` (``names``, by default ``RATCHET_PII_NAMES``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row

from feedback.errors import FeedbackError
from feedback.quality import redact, redact_messages

logger = logging.getLogger(__name__)

Messages = list[dict[str, str]]
PairSource = Literal["comparison", "correction", "rating"]

# A message's mean score must beat another's by more than this to form a pair
# (the mean of stars is a float; equal scores must not pair through rounding).
_SCORE_EPSILON = 1e-9


@dataclass(frozen=True)
class PreferencePair:
    """For ``prompt``, ``chosen`` beat ``rejected`` (redacted), with where that came from."""

    prompt: Messages
    chosen: str
    rejected: str
    conversation_id: str  # the rejected reply's conversation
    created_at: datetime  # when the pair became buildable in the store
    source: PairSource
    chosen_message_id: str | None  # None for corrections (the user wrote the chosen text)
    rejected_message_id: str
    model_version: str  # that produced the rejected reply
    chosen_model_version: str | None

    @property
    def pair_key(self) -> str:
        """sha256 of (prompt, chosen, rejected): the key of ``preference_pairs``."""
        canon = json.dumps([self.prompt, self.chosen, self.rejected], sort_keys=True)
        return hashlib.sha256(canon.encode()).hexdigest()


@dataclass(frozen=True)
class SftRecord:
    """A reply worth imitating: a correction, or a reply every rater gave top marks."""

    prompt: Messages
    completion: str
    conversation_id: str
    created_at: datetime
    source: Literal["correction", "rating"]
    message_id: str  # the reply that was corrected or rated
    model_version: str


@dataclass(frozen=True)
class KtoRecord:
    """An unpaired thumbs verdict on one reply (``label`` True: good)."""

    prompt: Messages
    completion: str
    label: bool
    conversation_id: str
    created_at: datetime
    message_id: str
    model_version: str


_WINDOW = (
    "(%(since)s::timestamptz IS NULL OR {stamp} > %(since)s::timestamptz)"
    " AND (%(until)s::timestamptz IS NULL OR {stamp} <= %(until)s::timestamptz)"
)

_COMPARISONS = f"""
WITH latest AS (
    SELECT DISTINCT ON (user_id, least(message_id_a, message_id_b),
                        greatest(message_id_a, message_id_b))
        event_id, message_id_a, message_id_b, winner, stored_at
    FROM comparisons
    ORDER BY user_id, least(message_id_a, message_id_b), greatest(message_id_a, message_id_b),
             occurred_at DESC, event_id DESC
), joined AS (
    SELECT l.event_id, l.winner, a.prompt, a.prompt_hash AS hash_a, b.prompt_hash AS hash_b,
           a.id AS id_a, a.reply AS reply_a, a.model_version AS version_a,
           a.conversation_id AS conv_a,
           b.id AS id_b, b.reply AS reply_b, b.model_version AS version_b,
           b.conversation_id AS conv_b,
           greatest(l.stored_at, a.stored_at, b.stored_at) AS created_at
    FROM latest l
    JOIN messages a ON a.id = l.message_id_a
    JOIN messages b ON b.id = l.message_id_b
    WHERE l.winner <> 'tie'
)
SELECT * FROM joined WHERE {_WINDOW.format(stamp="created_at")}
ORDER BY created_at, event_id
"""

_CORRECTIONS = f"""
SELECT c.event_id, c.corrected_reply, m.id, m.prompt, m.reply, m.model_version,
       m.conversation_id, greatest(c.stored_at, m.stored_at) AS created_at
FROM corrections c JOIN messages m ON m.id = c.message_id
WHERE {_WINDOW.format(stamp="greatest(c.stored_at, m.stored_at)")}
ORDER BY created_at, c.event_id
"""

_RATING_PAIRS = f"""
WITH scored AS (
    SELECT m.id, m.prompt_hash, avg(r.score) AS score,
           greatest(max(r.stored_at), m.stored_at) AS rated_at
    FROM ratings r JOIN messages m ON m.id = r.message_id
    GROUP BY m.id
), ranked AS (
    SELECT c.id AS chosen_id, r.id AS rejected_id,
           greatest(c.rated_at, r.rated_at) AS created_at,
           row_number() OVER (PARTITION BY c.prompt_hash
                              ORDER BY c.score - r.score DESC, c.id, r.id) AS rank
    FROM scored c JOIN scored r
      ON r.prompt_hash = c.prompt_hash AND c.score > r.score + {_SCORE_EPSILON}
    WHERE {_WINDOW.format(stamp="greatest(c.rated_at, r.rated_at)")}
)
SELECT k.created_at, cm.id AS chosen_id, cm.reply AS chosen, cm.model_version AS chosen_version,
       rm.id AS rejected_id, rm.reply AS rejected, rm.model_version AS rejected_version,
       rm.prompt, rm.conversation_id
FROM ranked k
JOIN messages cm ON cm.id = k.chosen_id
JOIN messages rm ON rm.id = k.rejected_id
WHERE %(cap)s::int IS NULL OR k.rank <= %(cap)s::int
ORDER BY k.created_at, cm.id, rm.id
"""

_TOP_RATED = f"""
WITH lowest AS (
    SELECT m.id, min(r.score) AS score, greatest(max(r.stored_at), m.stored_at) AS rated_at
    FROM ratings r JOIN messages m ON m.id = r.message_id
    GROUP BY m.id
)
SELECT s.rated_at AS created_at, m.id, m.prompt, m.reply, m.model_version, m.conversation_id
FROM lowest s JOIN messages m ON m.id = s.id
WHERE s.score >= 1 AND NOT EXISTS (SELECT 1 FROM corrections c WHERE c.message_id = m.id)
  AND {_WINDOW.format(stamp="s.rated_at")}
ORDER BY created_at, m.id
"""

_THUMBS = f"""
WITH verdicts AS (
    SELECT m.id, bool_and(r.thumbs = 'up') AS all_up, bool_and(r.thumbs = 'down') AS all_down,
           greatest(max(r.stored_at), m.stored_at) AS created_at
    FROM ratings r JOIN messages m ON m.id = r.message_id
    WHERE r.thumbs IS NOT NULL
    GROUP BY m.id
)
SELECT v.created_at, v.all_up, m.id, m.prompt, m.reply, m.model_version, m.conversation_id
FROM verdicts v JOIN messages m ON m.id = v.id
WHERE (v.all_up OR v.all_down) AND {_WINDOW.format(stamp="v.created_at")}
ORDER BY created_at, m.id
"""


# Sessions of this database that may still commit rows: those in a transaction, and
# those running a statement (its transaction may be starting: ``query_start`` is
# then that transaction's ``now()``). Autovacuum writes no feedback.
_OPEN_TRANSACTIONS = """
SELECT pid, application_name, state,
       query = '<insufficient privilege>' AS hidden,
       least(xact_start, CASE WHEN state = 'active' THEN query_start END) AS started
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND backend_type NOT IN ('autovacuum worker', 'autovacuum launcher')
"""
# A session publishes "active" a moment after taking its statement's start time;
# waiting this long between reading the clock and the sessions covers that moment.
_SETTLE_S = 0.05
# An open transaction older than this holds new records back: say which one.
_LAGGING = timedelta(minutes=5)


def committed_through(conn: psycopg.Connection | None = None) -> datetime:
    """A ``created_at`` up to which the store is complete: every row with ``stored_at``
    at or below it is committed, and visible to any statement started after this
    returns. Pass it as ``until`` so that a watermark taken from the records read
    never passes a batch still being written (see the module docstring).

    Use it on an autocommit or READ COMMITTED connection: a REPEATABLE READ
    transaction would keep reading from a snapshot older than this answer."""
    with _connection(conn) as c:
        clock: datetime = c.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        if not c.autocommit:
            level = c.execute("SHOW transaction_isolation").fetchone()[0]  # type: ignore[index]
            if level != "read committed":
                raise FeedbackError(
                    f"committed_through needs an autocommit or READ COMMITTED connection,"
                    f" not a {level} transaction (its snapshot would predate the answer)"
                )
        time.sleep(_SETTLE_S)
        c.execute("SELECT pg_stat_clear_snapshot()")  # fresh activity, even mid-transaction
        with c.cursor(row_factory=dict_row) as cur:
            sessions = cur.execute(_OPEN_TRANSACTIONS).fetchall()
    hidden = sum(1 for s in sessions if s["hidden"])
    if hidden:
        logger.warning(
            "%d sessions of other roles are hidden from this role: feedback they are"
            " writing may be missed; read with the consumer's role or grant"
            " pg_read_all_stats",
            hidden,
        )
    open_ = [s for s in sessions if s["started"] is not None]
    if not open_:
        return clock - timedelta(microseconds=1)
    oldest = min(open_, key=lambda s: s["started"])
    if clock - oldest["started"] > _LAGGING:
        logger.warning(
            "a transaction open since %s (pid %s, %r, %s) holds back feedback stored"
            " since then until it ends",
            oldest["started"],
            oldest["pid"],
            oldest["application_name"],
            oldest["state"],
        )
    return min(clock, oldest["started"]) - timedelta(microseconds=1)


def load_pairs(
    conn: psycopg.Connection | None,
    since: datetime | None = None,
    *,
    until: datetime | None = None,
    names: Iterable[str] | None = None,
    max_pairs_per_prompt: int | None = 32,
) -> list[PreferencePair]:
    """Preference pairs from comparisons, corrections and ratings stored after ``since``
    (and up to ``until``: pass :func:`committed_through` when chaining watermarks).

    ``conn`` None opens a connection to ``DATABASE_URL``. Ordered by ``created_at``."""
    names = _names(names)
    window = {"since": since, "until": until}
    with _connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
        pairs = [
            *_comparison_pairs(cur, window, names),
            *_correction_pairs(cur, window, names),
            *_rating_pairs(cur, window, names, max_pairs_per_prompt),
        ]
    pairs = [p for p in pairs if p.chosen.strip() != p.rejected.strip()]
    pairs.sort(key=lambda p: p.created_at)
    logger.info(
        "built %d preference pairs in (%s, %s] (%s)",
        len(pairs),
        since,
        until,
        ", ".join(f"{s}: {sum(p.source == s for p in pairs)}" for s in _SOURCES),
    )
    return pairs


def load_sft_examples(
    conn: psycopg.Connection | None,
    since: datetime | None = None,
    *,
    until: datetime | None = None,
    names: Iterable[str] | None = None,
) -> list[SftRecord]:
    """Corrections, and replies every rater gave top marks (thumbs up or 5 stars),
    stored after ``since`` and up to ``until``."""
    names = _names(names)
    window = {"since": since, "until": until}
    with _connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
        cur.execute(_CORRECTIONS, window)
        out = [
            _sft(row, row["corrected_reply"], "correction", names)
            for row in cur.fetchall()
            if row["corrected_reply"].strip() != row["reply"].strip()
        ]
        cur.execute(_TOP_RATED, window)
        out += [_sft(row, row["reply"], "rating", names) for row in cur.fetchall()]
    out.sort(key=lambda s: s.created_at)
    logger.info("built %d SFT examples in (%s, %s]", len(out), since, until)
    return out


def load_kto_examples(
    conn: psycopg.Connection | None,
    since: datetime | None = None,
    *,
    until: datetime | None = None,
    names: Iterable[str] | None = None,
) -> list[KtoRecord]:
    """Thumbs verdicts as unpaired (prompt, completion, label) examples, stored after
    ``since`` and up to ``until``."""
    names = _names(names)
    with _connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
        cur.execute(_THUMBS, {"since": since, "until": until})
        out = [
            KtoRecord(
                prompt=redact_messages(row["prompt"], names),
                completion=redact(row["reply"], names),
                label=bool(row["all_up"]),
                conversation_id=str(row["conversation_id"]),
                created_at=row["created_at"],
                message_id=row["id"],
                model_version=row["model_version"],
            )
            for row in cur.fetchall()
        ]
    logger.info("built %d KTO examples in (%s, %s]", len(out), since, until)
    return out


_SOURCES: tuple[PairSource, ...] = ("comparison", "correction", "rating")
_Window = dict[str, datetime | None]  # {"since": ..., "until": ...}


def _comparison_pairs(
    cur: psycopg.Cursor[dict[str, Any]], window: _Window, names: list[str]
) -> list[PreferencePair]:
    cur.execute(_COMPARISONS, window)
    out = []
    for row in cur.fetchall():
        if row["hash_a"] != row["hash_b"]:
            logger.debug("comparison %s: replies to different prompts, skipped", row["event_id"])
            continue
        win, lose = ("a", "b") if row["winner"] == "a" else ("b", "a")
        out.append(
            PreferencePair(
                prompt=redact_messages(row["prompt"], names),
                chosen=redact(row[f"reply_{win}"], names),
                rejected=redact(row[f"reply_{lose}"], names),
                conversation_id=str(row[f"conv_{lose}"]),
                created_at=row["created_at"],
                source="comparison",
                chosen_message_id=row[f"id_{win}"],
                rejected_message_id=row[f"id_{lose}"],
                model_version=row[f"version_{lose}"],
                chosen_model_version=row[f"version_{win}"],
            )
        )
    return out


def _correction_pairs(
    cur: psycopg.Cursor[dict[str, Any]], window: _Window, names: list[str]
) -> list[PreferencePair]:
    cur.execute(_CORRECTIONS, window)
    return [
        PreferencePair(
            prompt=redact_messages(row["prompt"], names),
            chosen=redact(row["corrected_reply"], names),
            rejected=redact(row["reply"], names),
            conversation_id=str(row["conversation_id"]),
            created_at=row["created_at"],
            source="correction",
            chosen_message_id=None,
            rejected_message_id=row["id"],
            model_version=row["model_version"],
            chosen_model_version=None,
        )
        for row in cur.fetchall()
    ]


def _rating_pairs(
    cur: psycopg.Cursor[dict[str, Any]],
    window: _Window,
    names: list[str],
    cap: int | None,
) -> list[PreferencePair]:
    cur.execute(_RATING_PAIRS, {**window, "cap": cap})
    return [
        PreferencePair(
            prompt=redact_messages(row["prompt"], names),
            chosen=redact(row["chosen"], names),
            rejected=redact(row["rejected"], names),
            conversation_id=str(row["conversation_id"]),
            created_at=row["created_at"],
            source="rating",
            chosen_message_id=row["chosen_id"],
            rejected_message_id=row["rejected_id"],
            model_version=row["rejected_version"],
            chosen_model_version=row["chosen_version"],
        )
        for row in cur.fetchall()
    ]


def _sft(row: dict[str, Any], completion: str, source: Any, names: list[str]) -> SftRecord:
    return SftRecord(
        prompt=redact_messages(row["prompt"], names),
        completion=redact(completion, names),
        conversation_id=str(row["conversation_id"]),
        created_at=row["created_at"],
        source=source,
        message_id=row["id"],
        model_version=row["model_version"],
    )


def _names(names: Iterable[str] | None) -> list[str]:
    if names is not None:
        return list(names)
    from feedback.settings import get_settings

    return list(get_settings().pii_names)


@contextmanager
def _connection(conn: psycopg.Connection | None) -> Iterator[psycopg.Connection]:
    if conn is not None:
        yield conn
        return
    from feedback.settings import get_settings

    with psycopg.connect(get_settings().database_url, connect_timeout=5) as own:
        yield own
