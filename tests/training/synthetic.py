"""Synthetic preference pairs where the preferred property is learnable: chosen
replies are drawn from a "good" vocabulary (with the word ``keyword``),
rejected replies from a disjoint "bad" one. ``random_labels`` swaps chosen and
rejected at random, so nothing is learnable."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from training.snapshot import Pair

GOOD = "yes keyword thanks please answer policy handbook".split()
BAD = "fox dog lazy brown quick jumps over maybe".split()
TOPICS = ["leave", "expenses", "the office", "passwords", "Ratchet", "the handbook", "IT", "policy"]


def make_pairs(
    n: int, *, seed: int = 0, random_labels: bool = False, start: datetime | None = None
) -> list[Pair]:
    rng = random.Random(seed)
    t0 = start or datetime(2026, 11, 1, tzinfo=UTC)
    pairs = []
    for i in range(n):
        prompt = [
            {"role": "user", "content": f"question {i % 50}: tell me about {rng.choice(TOPICS)}"}
        ]
        good = " ".join(rng.choice(GOOD) for _ in range(rng.randint(4, 8)))
        bad = " ".join(rng.choice(BAD) for _ in range(rng.randint(4, 8)))
        chosen, rejected = (good, bad)
        if random_labels and rng.random() < 0.5:
            chosen, rejected = bad, good
        pairs.append(Pair(prompt, chosen, rejected, f"conv-{i % 40}", t0 + timedelta(minutes=i)))
    return pairs


class ListSource:
    """A feedback source over in-memory records (what ``feedback.pairs`` returns from the store)."""

    def __init__(self, pairs: list[Pair], sft: list | None = None) -> None:
        self.pairs = pairs
        self.sft = sft or []

    def horizon(self, conn):  # type: ignore[no-untyped-def]
        return None  # nothing is being written

    def load_pairs(self, conn, since, until=None):  # type: ignore[no-untyped-def]
        return [p for p in self.pairs if since is None or (p.created_at and p.created_at > since)]

    def load_sft_examples(self, conn, since, until=None):  # type: ignore[no-untyped-def]
        return [s for s in self.sft if since is None or (s.created_at and s.created_at > since)]
