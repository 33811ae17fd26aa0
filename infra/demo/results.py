"""What the demo did (:class:`DemoResult`, one :class:`CycleRun` per training cycle),
and how to rebuild it from the saved state (``$RATCHET_HOME/demo/state.json``) when a
second ``make demo`` reuses a finished run."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.demo.employees import Evaluation, Reply, Tally
from infra.demo.questions import Judgement, Question
from infra.demo.replay import Replay
from infra.demo.training_step import CycleOutcome


@dataclass
class CycleRun:
    """One cycle of the demo: the employees' feedback, the training cycle, the canary
    stage, the promotion, and the held-out answers after it (None: nothing promoted;
    then ``replay`` holds the refused candidate's answers, asked offline)."""

    tally: Tally | None = None
    stored_ratings: int = 0
    cycle: CycleOutcome | None = None
    promotion: str | None = None  # "promote", "force_promote", or None (not promoted)
    canary: dict[str, Any] | None = None  # users' A/B picks of the canary (training.promotion)
    refusal: str | None = None  # why the promotion policy refused, if it did
    swap_seconds: float | None = None
    served: str | None = None
    after: Evaluation | None = None
    replay: Replay | None = None


@dataclass
class DemoResult:
    """What the demo did, for the summary, the report and the e2e test. ``runs`` holds
    one :class:`CycleRun` per training cycle (``RATCHET_DEMO_CYCLES``); the properties
    below are the first cycle's, except ``served`` (what the API serves at the end)."""

    model_dir: str = ""
    before: Evaluation | None = None
    runs: list[CycleRun] = field(default_factory=lambda: [CycleRun()])
    timings: dict[str, float] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)

    @property
    def tally(self) -> Tally | None:
        return self.runs[0].tally

    @property
    def stored_ratings(self) -> int:
        return self.runs[0].stored_ratings

    @property
    def cycle(self) -> CycleOutcome | None:
        return self.runs[0].cycle

    @property
    def promotion(self) -> str | None:
        return self.runs[0].promotion

    @property
    def canary(self) -> dict[str, Any] | None:
        return self.runs[0].canary

    @property
    def refusal(self) -> str | None:
        return self.runs[0].refusal

    @property
    def swap_seconds(self) -> float | None:
        return self.runs[0].swap_seconds

    @property
    def after(self) -> Evaluation | None:
        return self.runs[0].after

    @property
    def served(self) -> str | None:
        return self.runs[-1].served

    def yardstick(self) -> list[tuple[str, Evaluation]]:
        """The held-out answers across versions: before training, then after each cycle
        that promoted a version (label, evaluation)."""
        out = [("base", self.before)] if self.before is not None else []
        out += [(f"cycle {i}", r.after) for i, r in enumerate(self.runs, 1) if r.after is not None]
        return out


# -- rebuilding results from state.json (a second `make demo`) ----------------
def evaluation_from(data: dict[str, Any] | None) -> Evaluation | None:
    if not data:
        return None
    rows = []
    for a in data.get("answers", []):
        score = int(a["score"])
        judgement = Judgement(states_fact=score >= 2, cites=score % 2 == 1)
        rows.append(
            (
                Question(a["question"], "", ()),
                Reply(a["reply"], a.get("message_id", ""), data["version"], judgement),
            )
        )
    return Evaluation(version=data["version"], rows=rows)


def tally_from(data: dict[str, Any] | None) -> Tally | None:
    if not data:
        return None
    tally = Tally(
        chats=data["chats"],
        ratings=data["ratings"],
        comparisons=data["comparisons"],
        corrections=data["corrections"],
    )
    tally.rejected = Counter(data.get("rejected", {}))
    tally.thumbs = Counter(data.get("thumbs", {}))
    tally.stars = Counter({int(k): v for k, v in data.get("stars", {}).items()})
    tally.winners = Counter(data.get("winners", {}))
    tally.ratings_by_user = Counter(data.get("ratings_by_user", {}))
    tally.scores = list(data.get("scores", []))
    return tally


def run_from(state: dict[str, Any]) -> CycleRun:
    """One cycle's results from its saved state (the demo's state.json)."""
    return CycleRun(
        tally=tally_from(state.get("feedback")),
        stored_ratings=int(state.get("stored_ratings", 0)),
        cycle=cycle_from(state.get("cycle")),
        promotion=state.get("promotion"),
        canary=state.get("canary"),
        refusal=state.get("refusal"),
        swap_seconds=state.get("swap_seconds"),
        served=state.get("served"),
        after=evaluation_from(state.get("after")),
        replay=replay_from(state.get("replay")),
    )


def replay_from(data: dict[str, Any] | None) -> Replay | None:
    if not data:
        return None
    served, candidate = evaluation_from(data["served"]), evaluation_from(data["candidate"])
    if served is None or candidate is None:
        return None
    return Replay(served=served, candidate=candidate, identical=int(data["identical"]))


def cycle_from(data: dict[str, Any] | None) -> CycleOutcome | None:
    if not data:
        return None
    return CycleOutcome(
        run_id=data.get("run_id"),
        version=data.get("version"),
        gates_passed=bool(data.get("gates_passed")),
        gate_report=data.get("gate_report") or {},
        metrics=data.get("metrics") or {},
        pairs=int(data.get("pairs") or 0),
        skipped_reason=data.get("skipped_reason"),
        plots=[Path(p) for p in data.get("plots", [])],
    )
