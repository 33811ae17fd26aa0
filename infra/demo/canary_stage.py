"""The demo's human canary stage: after the offline gates, the candidate is the
canary; simulated employees ask with ``"ab": true`` (one draft from the canary,
one from production, in random order), pick the draft that follows the stated
preference (:func:`infra.demo.questions.judge`), and the promotion policy reads
their picks (``training.promotion``: Wilson lower bound, minimum count)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from infra.demo.employees import Employee, Reply, Tally, message_id_of
from infra.demo.questions import Question, judge

logger = logging.getLogger(__name__)


def wait_for_canary(base_url: str, version: str, *, timeout: float) -> float:
    """Poll ``/readyz`` until serving has loaded ``version`` as its canary."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            checks = httpx.get(f"{base_url}/readyz", timeout=10).json().get("checks", {})
        except (httpx.HTTPError, ValueError):
            checks = {}
        if checks.get("canary_version") == version:
            return time.monotonic() - started
        time.sleep(1.0)
    raise RuntimeError(f"the API has not loaded the canary {version} after {timeout:.0f} s")


def ask_ab(employee: Employee, question: Question) -> list[Reply]:
    """One A/B request: a draft from production and one from the canary."""
    resp = employee.client.chat.completions.create(
        model="ratchet",
        messages=[{"role": "user", "content": question.question}],
        max_tokens=employee.max_tokens,
        temperature=0.9,
        extra_body={"ab": True},
    )
    return [
        Reply(
            text=c.message.content or "",
            message_id=message_id_of(c),
            model_version=str(resp.model),
            judgement=judge(c.message.content or "", question),
        )
        for c in resp.choices
    ]


def canary_picks(
    employees: list[Employee],
    questions: list[Question],
    picks: int,
    on_progress: Callable[[int, int], None] = lambda done, total: None,
) -> Tally:
    """``picks`` A/B questions spread over the employees; each picks the better draft
    by the stated preference (a tie when both are equally good)."""
    tally = Tally()
    jobs = [(employees[i % len(employees)], questions[i % len(questions)]) for i in range(picks)]
    done = 0

    def one(job: tuple[Employee, Question]) -> None:
        nonlocal done
        employee, question = job
        a, b = ask_ab(employee, question)
        tally.add(chats=1)
        sa, sb = a.judgement.score, b.judgement.score
        winner = "a" if sa > sb else "b" if sb > sa else "tie"
        body = {"message_id_a": a.message_id, "message_id_b": b.message_id, "winner": winner}
        if employee._post("comparisons", body, tally):
            tally.add(comparisons=1)
            with tally._lock:
                tally.winners[winner] += 1
                done += 1
                on_progress(done, len(jobs))

    with ThreadPoolExecutor(max_workers=len(employees)) as pool:
        for future in [pool.submit(one, job) for job in jobs]:
            future.result()
    return tally


def canary_evidence(database_url: str, version: str) -> dict[str, Any]:
    """Users' picks of the canary ``version`` against production, as the policy sees them."""
    from feedback.db import connect
    from training.gates import load_thresholds
    from training.promotion import canary_evidence as evidence
    from training.settings import TrainingSettings

    thresholds = load_thresholds(TrainingSettings().gates_config)
    with connect(database_url) as conn:
        return evidence(conn, version, thresholds).as_dict()


def wait_for_picks(database_url: str, version: str, expected: int, *, timeout: float) -> int:
    """Wait until ``expected`` picks involving the canary are in the store (via Kafka)."""
    deadline = time.monotonic() + timeout
    total = 0
    while time.monotonic() < deadline:
        total = int(canary_evidence(database_url, version)["total"])  # type: ignore[call-overload]
        if total >= expected:
            break
        time.sleep(1.0)
    return total
