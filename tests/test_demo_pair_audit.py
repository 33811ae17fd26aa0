"""The reward-model probe's pair audit (``infra.demo.pair_audit``): the employees' own
rule applied to both replies of each pair, and what the reward model reads of it."""

from __future__ import annotations

from pathlib import Path

from feedback.prompting import grounded_messages
from infra.demo.pair_audit import audit
from infra.demo.questions import Question
from training.snapshot import Pair, Provenance

QUESTION = Question(
    "How many days of paid annual leave does a full-time employee get?",
    "policies/annual-leave.md",
    ("27 days",),
)


class _Chunk:
    def __init__(self, title: str, path: str, text: str) -> None:
        self.title, self.source_path, self.text = title, path, text


def _prompt(question: str) -> list[dict[str, str]]:
    sources = [
        _Chunk("Annual leave", "policies/annual-leave.md", "Every employee gets 27 days."),
        _Chunk("Expenses", "policies/expenses.md", "Claim expenses within 30 days. " * 40),
    ]
    return grounded_messages([{"role": "user", "content": question}], sources)


def _pair(question: str, chosen: str, rejected: str) -> Pair:
    return Pair(_prompt(question), chosen, rejected, "c", provenance=Provenance("rating"))


def test_the_rule_sorts_pairs_and_the_cut_keeps_the_figures_document(
    tiny_model_dir: Path,
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    q = QUESTION.question
    pairs = [
        _pair(q, "According to the handbook: 27 days.", "Some days."),  # 3 > 0: agrees
        _pair(q, "27 days.", "It is 27 days."),  # 2 = 2: a tie
        _pair(q, "Ask HR.", "27 days per the handbook."),  # 0 < 3: contradicts
        _pair("What is the meaning of life?", "42", "43"),  # not a question: unknown
    ]
    result = audit(pairs, [QUESTION], tokenizer, max_length=300)

    assert (result.agrees, result.ties, result.contradicts, result.unknown) == (1, 1, 1, 1)
    assert result.ceiling == (1 + 0.5) / 3
    # Both sources are in every prompt; at 300 tokens the long, less relevant second one
    # is cut and the first (the figure's document) stays.
    assert result.sources_kept == {1: 4}
    assert (result.figure_source_shown, result.figure_source_kept) == (3, 3)
    # The baselines: the chosen reply is the shorter one in the second and third pairs;
    # it has the larger share of its words in the sources kept only in the second (1.0
    # against 0.5; the first ties at 0.5, and neither "42" nor "43" is in the sources).
    assert result.shorter == 2
    assert result.grounded == 1
