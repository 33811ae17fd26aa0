"""The demo's question set (``infra/demo/kb/questions.yaml``): big enough for the
held-out yardstick, every fact copied from its source document, and the
held-out questions never asked (nor near-duplicated) during feedback."""

from __future__ import annotations

import re
from difflib import SequenceMatcher
from pathlib import Path

import pytest
import yaml
from bs4 import BeautifulSoup

from infra.demo.questions import (
    Question,
    _norm,
    ideal_answer,
    judge,
    load_out_of_policy,
    load_questions,
    split,
)
from infra.demo.settings import DemoSettings
from training.gates import DEFAULT_SAFETY_FILE
from training.refusals import is_refusal
from training.suites_io import load_safety

KB = Path(__file__).resolve().parents[1] / "infra" / "demo" / "kb"
QUESTIONS = load_questions(KB)
STOP = set(
    "a an and are at by can do does for from how i in is it my of on the to what when which who"
    " whose with within".split()
)


def document_lines(source: str) -> list[str]:
    """The document's text as it reaches a retrieved chunk, line by line (markup dropped)."""
    raw = (KB / source).read_text()
    if source.endswith(".html"):
        raw = BeautifulSoup(raw, "html.parser").get_text()
    return [" ".join(line.replace("**", "").replace("`", "").split()) for line in raw.splitlines()]


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower())) - STOP


def near_duplicate(a: str, b: str) -> bool:
    jaccard = len(words(a) & words(b)) / len(words(a) | words(b))
    return jaccard >= 0.4 or SequenceMatcher(None, a.lower(), b.lower()).ratio() >= 0.75


def test_the_file_is_well_formed_and_big_enough() -> None:
    raw = yaml.safe_load((KB / "questions.yaml").read_text())
    assert len(raw) >= 120
    for q in raw:
        assert set(q) == {"question", "source", "facts"}, q
        assert (KB / q["source"]).is_file(), q["source"]
        assert q["facts"] and all(isinstance(f, str) and f.strip() for f in q["facts"]), q
    texts = [_norm(q.question) for q in QUESTIONS]
    assert len(set(texts)) == len(texts), "a question is listed twice"


@pytest.mark.parametrize("q", QUESTIONS, ids=lambda q: q.question[:50])
def test_every_fact_is_in_its_source_document(q: Question) -> None:
    lines = document_lines(q.source)
    for fact in q.facts:
        # Verbatim on one line, so a retrieved chunk carries it as it is written.
        assert any(fact in line for line in lines), (fact, q.source)
    # The employees' correction (the handbook's sentences) passes their own rule.
    verdict = judge(ideal_answer(KB, q), q)
    assert verdict.states_fact and verdict.cites, ideal_answer(KB, q)


def test_the_full_demo_holds_out_at_least_40_and_asks_enough_for_the_gates() -> None:
    """All 84 not held out are asked: 24 gave 20 held-out pairs (the gates need 30), 40
    gave 25 pairs from 11 prompts (the win-rate gate needs 16)."""
    s = DemoSettings(size="full")
    asked, held = split(QUESTIONS, asked=s.n_asked(), held_out=s.n_held_out())
    assert len(held) >= 40
    assert len(asked) == s.n_asked() == 84 == len(QUESTIONS) - len(held)
    assert not {q.question for q in asked} & {q.question for q in held}
    # Both sets cover the whole handbook, so the yardstick is not one document's.
    documents = {q.source for q in QUESTIONS}
    assert {q.source for q in held} == documents
    assert {q.source for q in asked} == documents


@pytest.mark.parametrize("size", ["full", "tiny"])
def test_no_held_out_question_is_asked_or_near_duplicated_in_feedback(size: str) -> None:
    """Against every question the employees could ask (even with RATCHET_DEMO_ASKED raised)."""
    s = DemoSettings(size=size)  # type: ignore[arg-type]
    pool, held = split(QUESTIONS, asked=len(QUESTIONS), held_out=s.n_held_out())
    asked, _ = split(QUESTIONS, asked=s.n_asked(), held_out=s.n_held_out())
    assert set(asked) <= set(pool) and len(pool) + len(held) == len(QUESTIONS)
    assert not set(pool) & set(held)
    for h in held:
        for a in pool:
            assert not near_duplicate(h.question, a.question), (h.question, a.question)
            # Asking the other question would not give away the held-out answer.
            assert not (a.source == h.source and set(a.facts) == set(h.facts)), (h, a)
            assert not any(_norm(f) in _norm(a.question) for f in h.facts), (h, a)


def test_the_near_duplicate_check_catches_a_rephrasing() -> None:
    assert near_duplicate(
        "How much is the on-call allowance?", "How much is the on-call allowance per week?"
    )
    assert not near_duplicate(
        "How much is the on-call allowance?", "Which tool sends the on-call pages?"
    )


def test_too_many_held_out_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot hold out"):
        split(QUESTIONS, asked=1, held_out=len(QUESTIONS))


def test_out_of_policy_requests_are_disjoint_from_the_safety_gates_prompts() -> None:
    """The employees teach the bot to decline; the safety gate must measure it on
    requests it never saw, not on these or rephrasings of them."""
    requests = load_out_of_policy(KB)
    assert len(requests) >= 20 and all(r.decline for r in requests)
    assert len({_norm(r.question) for r in requests}) == len(requests)
    for prompt in load_safety(DEFAULT_SAFETY_FILE):
        for r in requests:
            assert not near_duplicate(prompt, r.question), (prompt, r.question)
    assert DemoSettings(size="full").n_refusals() == len(requests)
    assert DemoSettings(size="tiny").n_refusals() == 0


def test_employees_want_an_out_of_policy_request_declined() -> None:
    request = load_out_of_policy(KB)[0]
    declined = judge("I'm sorry, I can't help with that request.", request)
    complied = judge("Sure! Subject: urgent password check. Dear colleague, ...", request)
    assert (declined.thumbs, declined.stars, declined.score) == ("up", 5, 3)
    assert (complied.thumbs, complied.stars, complied.score) == ("down", 1, 0)
    correction = ideal_answer(KB, request)
    assert correction == request.refusal and is_refusal(correction)
    assert judge(correction, request).score == 3


BOILERPLATE = {"help", "with", "that", "goes", "against", "company", "policy", "your"}


def test_each_out_of_policy_request_is_corrected_with_a_refusal_of_its_own() -> None:
    """One refusal for every request taught SFT to open any reply with it, handbook
    questions included (training/RECIPES.md): each correction names what it declines."""
    requests = load_out_of_policy(KB)
    refusals = [ideal_answer(KB, r) for r in requests]
    assert len(set(refusals)) == len(requests)
    for request, refusal in zip(requests, refusals, strict=True):
        assert is_refusal(refusal), refusal
        assert judge(refusal, request).score == 3
        # It names the request: it shares a content word with it beyond the boilerplate.
        said = set(re.findall(r"[a-z]{4,}", refusal.lower())) - BOILERPLATE
        assert said & set(re.findall(r"[a-z]{4,}", request.question.lower())), request


def test_a_request_without_its_refusal_is_named(tmp_path: Path) -> None:
    (tmp_path / "out_of_policy.yaml").write_text("- request: Tell me every salary.\n")
    with pytest.raises(ValueError, match="entry 1 needs a request and its refusal"):
        load_out_of_policy(tmp_path)


def test_a_correction_cites_the_source_by_the_number_the_reply_listed_it_under() -> None:
    q = next(q for q in QUESTIONS if q.source == "policies/annual-leave.md")
    listed = [
        {"index": 1, "source_path": "policies/travel.html"},
        {"index": 2, "source_path": "policies/annual-leave.md"},
    ]
    numbered = ideal_answer(KB, q, listed)
    assert numbered.startswith("According to [2], ")
    # Not listed: the employee names the document instead.
    named = ideal_answer(KB, q, listed[:1])
    assert named.startswith("According to the handbook (policies/annual-leave.md): ")
    assert numbered.removeprefix("According to [2], ") == named.split("): ", 1)[1]
    for text in (numbered, named):
        verdict = judge(text, q)
        assert verdict.states_fact and verdict.cites, text
