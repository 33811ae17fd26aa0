"""A small reader of the knowledge-base tables, for the gate suites' grounding.

Training must not import serving, so it cannot run serving's dense retriever
(``serving.kb``). This reader takes the chunks ``ratchet kb ingest`` stored and
ranks them by word overlap with the question (an idf-weighted bag of words):
close to what serving retrieves for the handbook's one-fact questions, though
not the same ranking. The prompt itself is built by the one shared builder,
``feedback.prompting.grounded_messages``.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import dataclass

import psycopg

from training.suites_io import Grounder

logger = logging.getLogger(__name__)

_WORD = re.compile(r"[a-z0-9€$£%]+")


@dataclass(frozen=True)
class KbChunk:
    title: str
    source_path: str
    text: str


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.casefold()))


def kb_grounder(conn: psycopg.Connection, *, k: int = 3) -> Grounder | None:
    """A grounder over the stored knowledge base, or None when it is empty."""
    try:
        rows = conn.execute(
            "SELECT s.title, s.path, c.text FROM kb_chunks c"
            " JOIN kb_sources s ON s.id = c.source_id ORDER BY s.path, c.ordinal"
        ).fetchall()
    except psycopg.errors.UndefinedTable:
        return None
    if not rows:
        return None
    chunks = [KbChunk(str(t), str(p), str(x)) for t, p, x in rows]
    bags = [_words(c.text + " " + c.title) for c in chunks]
    df = Counter(w for bag in bags for w in bag)
    idf = {w: math.log((1 + len(bags)) / (1 + n)) + 1 for w, n in df.items()}
    logger.info("gate suites grounded in %d knowledge-base chunks (top %d)", len(chunks), k)

    def ground(question: str) -> list[KbChunk]:
        query = _words(question)
        scores = [sum(idf[w] for w in query & bag) for bag in bags]
        best = sorted(range(len(chunks)), key=lambda i: (-scores[i], i))[:k]
        return [chunks[i] for i in best if scores[i] > 0]

    return ground
