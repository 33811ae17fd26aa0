"""Simulated employees: each has an API key, asks handbook questions through
the official ``openai`` client (two drafts per question, ``n=2``) and gives
feedback through the API's feedback endpoints, following the stated
preference in :data:`infra.demo.questions.PREFERENCE`:

- an A/B pick between the two drafts (``POST /v1/feedback/comparisons``),
- thumbs on draft A and stars on draft B (``POST /v1/feedback/ratings``),
- a correction with the handbook's sentence when neither draft states the
  figure, for every other such question (``POST /v1/feedback/corrections``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI

from infra.demo.questions import Judgement, Question, ideal_answer, judge

logger = logging.getLogger(__name__)


@dataclass
class Reply:
    text: str
    message_id: str
    model_version: str
    judgement: Judgement
    citations: tuple[dict[str, Any], ...] = ()  # the sources the API listed, numbered


MAX_RETRIES = 8  # attempts of one feedback POST that keeps getting 429


@dataclass
class Tally:
    """What the employees did; counts only what the API accepted (202)."""

    chats: int = 0
    ratings: int = 0
    comparisons: int = 0
    corrections: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # "ratings 422" -> count
    thumbs: Counter[str] = field(default_factory=Counter)
    stars: Counter[int] = field(default_factory=Counter)
    winners: Counter[str] = field(default_factory=Counter)
    ratings_by_user: Counter[str] = field(default_factory=Counter)
    scores: list[int] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict[str, Any]:
        return {
            "chats": self.chats,
            "ratings": self.ratings,
            "comparisons": self.comparisons,
            "corrections": self.corrections,
            "rejected": dict(self.rejected),
            "thumbs": dict(self.thumbs),
            "stars": {str(k): v for k, v in sorted(self.stars.items())},
            "winners": dict(self.winners),
            "ratings_by_user": dict(self.ratings_by_user),
            "scores": list(self.scores),
        }


def message_id_of(obj: Any) -> str:
    """The ``message_id`` Ratchet adds to a choice (an extra field the client keeps)."""
    extra = getattr(obj, "model_extra", None) or {}
    value = extra.get("message_id") or getattr(obj, "message_id", None)
    if not value:
        raise RuntimeError("the API reply carries no message_id")
    return str(value)


class Employee:
    """One simulated employee with their own API key."""

    def __init__(self, name: str, key: str, base_url: str, *, max_tokens: int, kb_dir: Path):
        self.name = name
        self.kb_dir = kb_dir
        self.max_tokens = max_tokens
        self.client = OpenAI(
            base_url=f"{base_url}/v1", api_key=key, max_retries=MAX_RETRIES, timeout=600
        )
        self.http = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        )

    def ask(self, question: Question, *, n: int = 2, temperature: float = 0.9) -> list[Reply]:
        resp = self.client.chat.completions.create(
            model="ratchet",
            messages=[{"role": "user", "content": question.question}],
            n=n,
            temperature=temperature,
            max_tokens=self.max_tokens,
        )
        version = str((resp.model_extra or {}).get("model_version") or resp.model)
        citations = tuple((resp.model_extra or {}).get("citations") or ())
        return [
            Reply(
                text=c.message.content or "",
                message_id=message_id_of(c),
                model_version=version,
                judgement=judge(c.message.content or "", question),
                citations=citations,
            )
            for c in resp.choices
        ]

    def _post(self, kind: str, body: dict[str, Any], tally: Tally) -> bool:
        """POST one piece of feedback; like a polite client, wait out a 429's Retry-After."""
        for _ in range(MAX_RETRIES):
            resp = self.http.post(f"/v1/feedback/{kind}", json=body)
            if resp.status_code != 429:
                break
            time.sleep(min(float(resp.headers.get("Retry-After", "1")), 10.0))
        if resp.status_code == 202:
            return True
        with tally._lock:
            tally.rejected[f"{kind} {resp.status_code}"] += 1
        logger.warning("%s: %s -> %s %s", self.name, kind, resp.status_code, resp.text[:300])
        return False

    def give_feedback(
        self, question: Question, replies: list[Reply], tally: Tally, *, correct: bool
    ):
        a, b = replies[0], replies[1] if len(replies) > 1 else None
        if self._post("ratings", {"message_id": a.message_id, "thumbs": a.judgement.thumbs}, tally):
            tally.add(ratings=1)
            with tally._lock:
                tally.thumbs[a.judgement.thumbs] += 1
                tally.ratings_by_user[self.name] += 1
        if b is not None:
            if self._post(
                "ratings", {"message_id": b.message_id, "stars": b.judgement.stars}, tally
            ):
                tally.add(ratings=1)
                with tally._lock:
                    tally.stars[b.judgement.stars] += 1
                    tally.ratings_by_user[self.name] += 1
            sa, sb = a.judgement.score, b.judgement.score
            winner = "a" if sa > sb else "b" if sb > sa else "tie"
            body = {"message_id_a": a.message_id, "message_id_b": b.message_id, "winner": winner}
            if self._post("comparisons", body, tally):
                tally.add(comparisons=1)
                with tally._lock:
                    tally.winners[winner] += 1
        if correct and not any(r.judgement.states_fact for r in replies):
            body = {
                "message_id": a.message_id,
                "corrected_reply": ideal_answer(self.kb_dir, question, a.citations),
            }
            if self._post("corrections", body, tally):
                tally.add(corrections=1)
        with tally._lock:
            tally.scores.extend(r.judgement.score for r in replies)

    def close(self) -> None:
        self.http.close()
        self.client.close()


def simulate(
    employees: list[Employee],
    questions: list[Question],
    *,
    rounds: int,
    correct_every: int = 2,
    on_progress: Callable[[int, int], None] = lambda done, total: None,
) -> Tally:
    """Every employee asks their share of the questions ``rounds`` times, concurrently;
    every ``correct_every``-th question gets a correction when both drafts miss the figure."""
    tally = Tally()
    jobs = [
        (employees[i % len(employees)], q, i, r)
        for r in range(rounds)
        for i, q in enumerate(questions)
    ]
    done = 0
    lock = threading.Lock()

    def one(job: tuple[Employee, Question, int, int]) -> None:
        nonlocal done
        employee, question, index, round_ = job
        replies = employee.ask(question)
        tally.add(chats=1)
        correct = (index + round_) % correct_every == 0
        employee.give_feedback(question, replies, tally, correct=correct)
        with lock:
            done += 1
            on_progress(done, len(jobs))

    with ThreadPoolExecutor(max_workers=len(employees)) as pool:
        for future in [pool.submit(one, job) for job in jobs]:
            future.result()
    return tally


@dataclass
class Evaluation:
    """Held-out questions answered by one model version (greedy)."""

    version: str
    rows: list[tuple[Question, Reply]]

    @property
    def fact_rate(self) -> float:
        return sum(r.judgement.states_fact for _, r in self.rows) / max(1, len(self.rows))

    @property
    def cite_rate(self) -> float:
        return sum(r.judgement.cites for _, r in self.rows) / max(1, len(self.rows))

    @property
    def mean_score(self) -> float:
        return sum(r.judgement.score for _, r in self.rows) / max(1, len(self.rows))

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "fact_rate": self.fact_rate,
            "cite_rate": self.cite_rate,
            "mean_score": self.mean_score,
            "answers": [
                {
                    "question": q.question,
                    "reply": r.text,
                    "score": r.judgement.score,
                    "message_id": r.message_id,
                }
                for q, r in self.rows
            ],
        }


def evaluate(asker: Employee, questions: list[Question], *, concurrency: int = 8) -> Evaluation:
    """Each question asked once, greedily, ``concurrency`` at a time (the engine batches
    them); the rows keep the questions' order."""
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        replies = list(pool.map(lambda q: asker.ask(q, n=1, temperature=0.0)[0], questions))
    rows = list(zip(questions, replies, strict=True))
    versions = {r.model_version for _, r in rows}
    return Evaluation(version=",".join(sorted(versions)), rows=rows)
