"""The sample knowledge base's golden questions (``kb/questions.yaml``), split
into the ones employees ask and rate and the held-out ones asked only before
and after training, plus the employees' stated preference."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from training.refusals import is_refusal  # the safety gate's rule

PREFERENCE = (
    "Employees prefer answers that state the exact figure from the handbook and say where it "
    "comes from (the handbook or the policy document); vague or wrong answers get a thumbs down."
)


@dataclass(frozen=True)
class Question:
    question: str
    source: str
    facts: tuple[str, ...]
    decline: bool = False  # an out-of-policy request: the wanted answer is a refusal
    # For an out-of-policy request: what an employee writes as the correction of two
    # drafts that comply. It names what it declines, so that SFT does not learn one
    # refusal it can open any reply with (training/RECIPES.md, "Refusals that name
    # the request").
    refusal: str = ""


@dataclass(frozen=True)
class Judgement:
    """How an employee sees one reply: 0 (vague) .. 3 (exact figure, cited). For a
    request the bot must decline, a refusal is the wanted answer and scores 3 (both
    flags), a reply that complies scores 0."""

    states_fact: bool
    cites: bool

    @property
    def score(self) -> int:
        return 2 * int(self.states_fact) + int(self.cites)

    @property
    def thumbs(self) -> str:
        return "up" if self.states_fact else "down"

    @property
    def stars(self) -> int:
        return {0: 1, 1: 2, 2: 4, 3: 5}[self.score]


def load_questions(kb_dir: Path) -> list[Question]:
    raw = yaml.safe_load((kb_dir / "questions.yaml").read_text())
    return [Question(q["question"], q["source"], tuple(q["facts"])) for q in raw]


def load_out_of_policy(kb_dir: Path) -> list[Question]:
    """The requests employees make that the bot must decline, each with the refusal an
    employee writes as its correction (``out_of_policy.yaml``)."""
    path = kb_dir / "out_of_policy.yaml"
    raw = yaml.safe_load(path.read_text())
    for i, entry in enumerate(raw):
        if not (isinstance(entry, dict) and entry.get("request") and entry.get("refusal")):
            raise ValueError(f"{path}: entry {i + 1} needs a request and its refusal: {entry!r}")
    return [
        Question(r["request"], source="", facts=(), decline=True, refusal=r["refusal"]) for r in raw
    ]


def _spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (the middle of each of ``k`` slices)."""
    step = n / k
    return [int(i * step + step / 2) for i in range(k)]


def split(questions: list[Question], *, asked: int, held_out: int) -> tuple[list, list]:
    """Held-out questions spread evenly over the list; ``asked`` of the rest, spread evenly
    too (all of them if there are fewer), are the ones employees ask and rate.

    The two lists are disjoint: a held-out question is never asked during feedback.
    Deterministic, so a second demo run asks the same questions."""
    if held_out + 1 > len(questions):
        raise ValueError(f"only {len(questions)} questions; cannot hold out {held_out}")
    picked = set(_spread(len(questions), held_out))
    held = [q for i, q in enumerate(questions) if i in picked]
    rest = [q for i, q in enumerate(questions) if i not in picked]
    if asked >= len(rest):
        return rest, held
    return [rest[i] for i in _spread(len(rest), asked)], held


def _norm(text: str) -> str:
    text = text.replace("**", "").replace("\u00a0", " ")
    return re.sub(r"\s+", " ", text).strip().lower()


def judge(reply: str, question: Question) -> Judgement:
    """The stated preference, applied to one reply's text."""
    if question.decline:
        declined = is_refusal(reply)
        return Judgement(states_fact=declined, cites=declined)
    text = _norm(reply)
    states_fact = all(_norm(f) in text for f in question.facts)
    stem = Path(question.source).stem.replace("-", " ")
    cites = "handbook" in text or stem in text or "according to" in text or "policy" in text
    return Judgement(states_fact=states_fact, cites=cites)


def document_lines(kb_dir: Path, source: str) -> list[str]:
    """The document's prose, one paragraph or list item per entry (headings dropped)."""
    raw = (kb_dir / source).read_text()
    if source.endswith(".html"):
        from bs4 import BeautifulSoup

        soup = BeautifulSoup(raw, "html.parser")
        for tag in soup.find_all(["h1", "h2", "h3", "title", "head"]):
            tag.decompose()
        raw = soup.get_text("\n")
    lines = []
    for line in re.split(r"\n\s*\n|\n(?=\s*[-*] )|\n(?=\s*\d+\. )", raw):
        line = " ".join(part for part in line.splitlines() if not part.lstrip().startswith("#"))
        line = re.sub(r"^\s*(?:[-*]|\d+\.)\s+", "", line)
        line = re.sub(r"[*`>|]", "", re.sub(r"\s+", " ", line)).strip()
        line = re.sub(r"\s+([.,;:!?])", r"\1", line)
        if len(line.split()) >= 4:
            lines.append(line)
    return lines


def ideal_answer(
    kb_dir: Path, question: Question, citations: Sequence[Mapping[str, Any]] = ()
) -> str:
    """What an employee writes as a correction: the handbook's sentence with the figure
    (for an out-of-policy request, its refusal).

    The employee cites as the bot is told to (the system prompt: "Cite the sources you
    use as [1], [2]"): by the number under which the reply listed the document
    (``citations``, the API's ``citations`` field), or by the document's path when the
    reply did not list it. The numbered form is the one the base model finds likely:
    "According to the handbook (path):" costs it about 22 nats a reply, which alone
    nearly spends the KL gate's budget (training/RECIPES.md, "Where the KL gate's nats go")."""
    if question.decline:
        return question.refusal
    wanted = [_norm(f) for f in question.facts]
    sentences = [
        s.strip()
        for line in document_lines(kb_dir, question.source)
        for s in re.split(r"(?<=[.!?])\s+", line)
    ]
    hits = [s for s in sentences if any(w in _norm(s) for w in wanted)]
    body = " ".join(hits[:2]) if hits else ", ".join(question.facts) + "."
    listed = [c["index"] for c in citations if c.get("source_path") == question.source]
    if listed:
        return f"According to [{listed[0]}], {body}"
    return f"According to the handbook ({question.source}): {body}"
