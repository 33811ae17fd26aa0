"""Training records built from the feedback store: preference pairs, SFT and KTO examples.

Preference pairs come from three kinds of feedback:

- **comparisons**: the A/B winner is chosen, the loser rejected; a tie gives no
  pair. The latest pick per (user, pair of replies) wins, like ratings.
- **corrections**: the corrected reply is chosen, the original reply rejected.
- **ratings**: replies to the same prompt (same ``prompt_hash``) are ranked by
  their ratings (each rater's latest, as the store keeps it). A thumb is coarser
  than stars: up says "good", 4 or 5 stars, and down says "bad", 1 or 2 stars,
  so each rating stands for a range of the 0-1 score (stars (s - 1) / 4 a
  point, up 0.75-1, down 0-0.25) and a reply's range is the mean of its raters'.
  A reply is chosen over another only when its range lies wholly above the
  other's: a thumbs up over a thumbs down or 3 stars or fewer, 3 stars or more
  over a thumbs down, but never a thumbs up over 4 stars, nor 5 stars over a
  thumbs up, nor 2 stars over a thumbs down, which the raters did not order.
  At most ``max_pairs_per_prompt`` pairs per prompt, largest gap first, so one
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

**Watermarks.** ``stored_at`` is the writing transaction's *start*, not its
commit, so a snapshot reads only up to :func:`feedback.watermark.committed_through`
(``until``); its watermark is the newest ``created_at`` it returned, and
consecutive snapshots ``(since, until]`` neither skip nor repeat a record.

Feedback on messages that are not (yet) in the store is skipped; it is picked up
once the message arrives, since the message's ``stored_at`` then raises
``created_at`` past the old watermark.

All text that leaves through this module is PII-redacted with
:func:`feedback.redaction.redact` (``names``: the caller passes ``RATCHET_PII_NAMES``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row

from feedback.db import given_or_own
from feedback.events import Messages
from feedback.redaction import redact, redact_messages

logger = logging.getLogger(__name__)
PairSource = Literal["comparison", "correction", "rating"]

# A message's range of scores must lie above another's by more than this to form a
# pair (the mean of stars is a float; equal scores must not pair through rounding).
_SCORE_EPSILON = 1e-9
# The stars a thumb stands for, as scores: up is 4 or 5 stars, down 1 or 2.
_THUMBS_UP_LOW = 0.75
_THUMBS_DOWN_HIGH = 0.25


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
    def prompt_key(self) -> str:
        """The normalised prompt hash (:func:`normalised_prompt_hash`)."""
        return normalised_prompt_hash(self.prompt)

    @property
    def pair_key(self) -> str:
        """sha256 of (prompt, chosen, rejected): the key of ``preference_pairs``."""
        canon = json.dumps([self.prompt, self.chosen, self.rejected], sort_keys=True)
        return hashlib.sha256(canon.encode()).hexdigest()


def normalised_prompt_hash(prompt: Messages) -> str:
    """What a prompt asks, hashed: its last user message, case-folded, with runs of
    whitespace collapsed. The same question asked in two conversations (or with a
    different history or system prompt) gets the same hash, so a split on it keeps
    every copy of a question on one side (training never sees a held-out question)."""
    text = ""
    for m in reversed(prompt):
        if m.get("role") == "user":
            text = str(m.get("content", ""))
            break
    canon = " ".join(text.casefold().split())
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
    SELECT m.id, m.prompt_hash,
           avg(CASE r.thumbs WHEN 'up' THEN {_THUMBS_UP_LOW} ELSE r.score END) AS low,
           avg(CASE r.thumbs WHEN 'down' THEN {_THUMBS_DOWN_HIGH} ELSE r.score END) AS high,
           greatest(max(r.stored_at), m.stored_at) AS rated_at
    FROM ratings r JOIN messages m ON m.id = r.message_id
    GROUP BY m.id
), ranked AS (
    SELECT c.id AS chosen_id, r.id AS rejected_id,
           greatest(c.rated_at, r.rated_at) AS created_at,
           row_number() OVER (PARTITION BY c.prompt_hash
                              ORDER BY c.low - r.high DESC, c.id, r.id) AS rank
    FROM scored c JOIN scored r
      ON r.prompt_hash = c.prompt_hash AND c.low > r.high + {_SCORE_EPSILON}
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


def load_pairs(
    conn: psycopg.Connection | None,
    since: datetime | None = None,
    *,
    until: datetime | None = None,
    names: Iterable[str],
    max_pairs_per_prompt: int | None = 32,
) -> list[PreferencePair]:
    """Preference pairs from comparisons, corrections and ratings stored after ``since``
    (and up to ``until``: pass :func:`committed_through` when chaining watermarks).

    ``names`` are the person names to redact besides the patterns (the caller passes its
    ``pii_names`` setting). Ordered by ``created_at``."""
    names = list(names)
    window = {"since": since, "until": until}
    with given_or_own(conn) as c, c.cursor(row_factory=dict_row) as cur:
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
    names: Iterable[str],
) -> list[SftRecord]:
    """Corrections, and replies every rater gave top marks (thumbs up or 5 stars),
    stored after ``since`` and up to ``until``."""
    names = list(names)
    window = {"since": since, "until": until}
    with given_or_own(conn) as c, c.cursor(row_factory=dict_row) as cur:
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
    names: Iterable[str],
) -> list[KtoRecord]:
    """Thumbs verdicts as unpaired (prompt, completion, label) examples, stored after
    ``since`` and up to ``until``."""
    names = list(names)
    with given_or_own(conn) as c, c.cursor(row_factory=dict_row) as cur:
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
