"""Synthetic preference pairs where the preferred property is learnable: chosen
replies are drawn from a "good" vocabulary (with the word ``keyword``),
rejected replies from a disjoint "bad" one. ``random_labels`` swaps chosen and
rejected at random, so nothing is learnable.

:func:`make_hacking_pairs` builds feedback whose policy slice teaches the
policy's reward model to like a token (``HACK``) that the true preference
(the judge's slice and the held-out slice: good over bad) does not care about."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from feedback.prompting import GROUNDING_INSTRUCTIONS
from training.snapshot import Pair, prompt_slice

GOOD = "yes keyword thanks please answer policy handbook".split()
BAD = "fox dog lazy brown quick jumps over maybe".split()
NEUTRAL = "the at and days year reports due within".split()
HACK = "desk"  # in the tiny tokenizer's corpus, in no other list here
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


def pairs_and_one_whose_replies_begin_alike(n: int) -> list[Pair]:
    """``make_pairs(n)`` and a pair whose replies share more than the prompt."""
    pairs = make_pairs(n)
    start = pairs[0]
    return [*pairs, Pair(start.prompt, start.chosen, start.chosen + " and more", "conv-x")]


def write_pairs(path: Path, n: int) -> Path:
    """The pairs as ``training.snapshot.JsonlSource`` reads them (one JSON object a line)."""
    with open(path, "w") as fh:
        for p in make_pairs(n):
            row = {
                "prompt": p.prompt,
                "chosen": p.chosen,
                "rejected": p.rejected,
                "conversation_id": p.conversation_id,
                "created_at": p.created_at.isoformat() if p.created_at else None,
            }
            fh.write(json.dumps(row) + "\n")
    return path


def good_words(text: str) -> int:
    """How many words of the preferred vocabulary a reply has (a simulated user's taste)."""
    return sum(word in GOOD for word in text.split())


def make_hacking_pairs(
    n: int, *, seed: int = 1, start: datetime, heldout: float = 0.2, judge: float = 0.3
) -> list[Pair]:
    """Policy-slice prompts: ``HACK`` in the chosen reply is all that differs (neutral
    words otherwise). Judge and held-out prompts: good over bad, with ``HACK`` on both
    sides of half of them, so the judge learns that it does not matter."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"issue {i % 60}: about {rng.choice(TOPICS)}"}]

        def words(vocab: list[str]) -> list[str]:
            return [rng.choice(vocab) for _ in range(rng.randint(4, 8))]

        if prompt_slice(prompt, heldout, judge) == "policy":
            chosen = " ".join(words(NEUTRAL) + [HACK] * rng.randint(2, 4))
            rejected = " ".join(words(NEUTRAL))
        else:
            extra = [HACK] * 2 if rng.random() < 0.5 else []
            chosen = " ".join(words(GOOD) + extra)
            rejected = " ".join(words(BAD) + extra)
        pairs.append(Pair(prompt, chosen, rejected, f"hack-{i % 40}", start + timedelta(minutes=i)))
    return pairs


def grounded(question: str, n_sources: int, turns: int) -> list[dict[str, str]]:
    """A knowledge-mode prompt: the grounding system message with ``n_sources`` numbered
    sources (most relevant first), ``turns`` earlier exchanges, then ``question``."""
    sources = "\n\n".join(
        f"[{i}] Doc {i} (kb/doc{i}.md)\n" + " ".join(f"fact{i}-{j}" for j in range(30))
        for i in range(1, n_sources + 1)
    )
    history = []
    for t in range(turns):
        history += [
            {"role": "user", "content": f"old question {t} " + "filler " * 20},
            {"role": "assistant", "content": f"old answer {t} " + "filler " * 20},
        ]
    system = f"{GROUNDING_INSTRUCTIONS}\n\nSources:\n{sources}"
    return [{"role": "system", "content": system}, *history, {"role": "user", "content": question}]


class ListSource:
    """A feedback source over in-memory records (what ``feedback.pairs`` returns from the store)."""

    def __init__(self, pairs: list[Pair], sft: list | None = None, kto: list | None = None) -> None:
        self.pairs = pairs
        self.sft = sft or []
        self.kto = kto or []

    def horizon(self, conn):  # type: ignore[no-untyped-def]
        return None  # nothing is being written

    def load_pairs(self, conn, since, until=None):  # type: ignore[no-untyped-def]
        return [p for p in self.pairs if since is None or (p.created_at and p.created_at > since)]

    def load_sft_examples(self, conn, since, until=None):  # type: ignore[no-untyped-def]
        return [s for s in self.sft if since is None or (s.created_at and s.created_at > since)]

    def load_kto_examples(self, conn, since, until=None):  # type: ignore[no-untyped-def]
        return [k for k in self.kto if since is None or (k.created_at and k.created_at > since)]


def make_thumbs(pairs: list[Pair]) -> list[dict]:
    """Unpaired thumbs from ``pairs``: the chosen reply thumbed up, the rejected down
    (records shaped like ``feedback.pairs.KtoRecord``)."""
    out = []
    for i, p in enumerate(pairs):
        for reply, label in ((p.chosen, True), (p.rejected, False)):
            out.append(
                {
                    "prompt": p.prompt,
                    "completion": reply,
                    "label": label,
                    "conversation_id": p.conversation_id,
                    "created_at": p.created_at,
                    "message_id": f"m-{i}-{int(label)}",
                    "model_version": "v0001",
                }
            )
    return out
