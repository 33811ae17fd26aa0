"""What the reward model's pairs say, by the employees' own rule: no model involved.

The demo's employees rate with a fixed rule (``infra.demo.questions.judge``: 2
points for the exact figure, 1 for citing the handbook). For every preference
pair of a snapshot, this applies the rule to both replies and says whether the
pair agrees with it (chosen scores higher), ties (the same score: the pair's
order comes from how it was built, e.g. a thumbs up beside four stars, not from
the replies) or contradicts it. A reward model that learned the rule exactly
would score the agreeing pairs right, the contradicting ones wrong and the ties
about half right: that is the held-out slice's ceiling (``ceiling``).

It also says what the reward model reads of each pair at its ``max_length``: how
many of the prompt's sources survive the cut by whole messages
(``training.reward.encode``), and whether the handbook document that holds the
figure is among them; and how two model-free baselines order the pairs: the
shorter reply wins (``shorter``), or the reply with the larger share of its words
found in the system messages the reward model reads (``grounded``: a word-overlap
measure of copying from the sources).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from feedback.prompting import last_user_text
from infra.demo.questions import Question, judge
from training.grounding import grounding
from training.reward import conversation_ids, read_messages
from training.snapshot import Messages, Pair

_SOURCE_BLOCK = re.compile(r"^\[\d+\] .*\((?P<path>[^()\n]+)\)$", re.MULTILINE)


@dataclass
class SliceAudit:
    """One slice's (or one source's) pairs, by what the rule says of them."""

    pairs: int = 0
    agrees: int = 0
    ties: int = 0
    contradicts: int = 0
    unknown: int = 0  # the prompt is not one of the questions (no rule to apply)
    sources_kept: Counter[int] = field(default_factory=Counter)
    figure_source_kept: int = 0
    figure_source_shown: int = 0  # the figure's document was in the prompt at all
    shorter: int = 0  # pairs whose chosen reply is the shorter one
    grounded: int = 0  # pairs whose chosen reply has the larger share of source words

    def add(self, verdict: str, kept: int, shown: bool, kept_figure: bool) -> None:
        self.pairs += 1
        setattr(self, verdict, getattr(self, verdict) + 1)
        self.sources_kept[kept] += 1
        self.figure_source_shown += shown
        self.figure_source_kept += kept_figure

    @property
    def ceiling(self) -> float:
        """Expected accuracy of a reward model that knows the rule (ties: a coin)."""
        known = self.pairs - self.unknown
        return (self.agrees + 0.5 * self.ties) / known if known else float("nan")

    def line(self) -> str:
        kept = ", ".join(f"{k}: {n}" for k, n in sorted(self.sources_kept.items()))
        return (
            f"{self.pairs} pairs: rule agrees {self.agrees}, ties {self.ties},"
            f" contradicts {self.contradicts}, unknown prompt {self.unknown};"
            f" ceiling {self.ceiling:.3f}; sources kept {{{kept}}};"
            f" figure's document in the prompt {self.figure_source_shown},"
            f" still there after the cut {self.figure_source_kept};"
            f" baselines: shorter wins {self.shorter}, more grounded wins {self.grounded}"
        )


def _documents(prompt_messages: Sequence[dict[str, str]]) -> list[str]:
    return [
        m.group("path")
        for msg in prompt_messages
        if msg["role"] == "system"
        for m in _SOURCE_BLOCK.finditer(msg["content"])
    ]


def read_prompt(tokenizer: Any, pair: Pair, max_length: int) -> Messages:
    """The prompt of ``pair`` as the reward model reads it beside the longer of its two
    replies at ``max_length`` (``training.reward.read_messages``)."""
    longer = max(
        (pair.chosen, pair.rejected), key=lambda r: len(conversation_ids(tokenizer, pair.prompt, r))
    )
    return read_messages(tokenizer, pair.prompt, longer, max_length)


def audit(
    pairs: Sequence[Pair], questions: Sequence[Question], tokenizer: Any, max_length: int
) -> SliceAudit:
    """The rule's verdict on ``pairs``, and the sources the reward model reads of them."""
    by_text = {q.question: q for q in questions}
    out = SliceAudit()
    for p in pairs:
        question = by_text.get(last_user_text(p.prompt))
        shown = _documents(p.prompt)
        kept_prompt = read_prompt(tokenizer, p, max_length)
        kept = _documents(kept_prompt)
        out.shorter += len(p.chosen) < len(p.rejected)
        out.grounded += grounding(kept_prompt, p.chosen) > grounding(kept_prompt, p.rejected)
        if question is None:
            out.add("unknown", len(kept), False, False)
            continue
        chosen, rejected = judge(p.chosen, question).score, judge(p.rejected, question).score
        verdict = "agrees" if chosen > rejected else "ties" if chosen == rejected else "contradicts"
        figure_doc = question.source
        out.add(verdict, len(kept), figure_doc in shown, figure_doc in kept)
    return out
