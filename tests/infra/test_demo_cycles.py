"""``RATCHET_DEMO_CYCLES``: the demo's step count, where each cycle's state is saved,
and a second ``make demo`` rebuilding every cycle's results from state.json (no
services: the driver is built but not run)."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from rich.console import Console

from infra.demo import results
from infra.demo.driver import STEPS, Demo
from infra.demo.loop import STEPS_PER_CYCLE
from infra.demo.settings import EMPLOYEE_NAMES, DemoSettings


def answers(version: str, score: int) -> dict:
    return {"version": version, "answers": [{"question": "q", "reply": "r", "score": score}]}


def test_two_cycles_save_apart_and_are_rebuilt_from_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RATCHET_HOME", str(tmp_path))
    monkeypatch.setenv("RATCHET_DEMO_CYCLES", "2")
    console = Console(width=160, record=True)
    demo = Demo(DemoSettings(size="tiny", fresh=True), console)
    assert demo.s.cycles == 2 and demo.steps.total == STEPS + STEPS_PER_CYCLE
    demo.cstate["served"] = "v0002"  # the first cycle's state stays at the top level
    demo.number = 2
    demo.cstate["served"] = "v0003"
    assert demo.state["served"] == "v0002" and demo.state["later"] == [{"served": "v0003"}]

    demo.state = {
        "before": answers("v0001", 0),
        "cycle": {"version": "v0002", "gates_passed": True},
        "promotion": "promote",
        "after": answers("v0002", 3),
        "served": "v0002",
        "later": [
            {
                "cycle": {"version": "v0003", "gates_passed": True},
                "promotion": "promote",
                "after": answers("v0003", 2),  # keeps the figure, stops citing
                "served": "v0003",
            }
        ],
    }
    demo._reuse_finished_run()
    first, second = demo.result.runs
    assert (first.served, second.served, demo.result.served) == ("v0002", "v0003", "v0003")
    assert second.after is not None and second.after.cite_rate == 0.0
    from infra.demo.report import summarize

    summarize(console, demo.result, demo.s)
    text = console.export_text()
    assert "cycle 2 on the held-out yardstick: v0002 -> v0003: REGRESSED" in text
    with pytest.raises(ValueError):
        DemoSettings(cycles=0)
    assert DemoSettings(employees=len(EMPLOYEE_NAMES)).n_employees() == len(EMPLOYEE_NAMES)
    with pytest.raises(ValueError, match="employees"):  # one more than there are names
        DemoSettings(employees=len(EMPLOYEE_NAMES) + 1)


def test_a_refused_candidate_replayed_offline_is_reported_and_rebuilt_from_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RATCHET_HOME", str(tmp_path))
    console = Console(width=200, record=True)
    demo = Demo(DemoSettings(size="tiny", fresh=True), console)
    demo.state = {
        "before": answers("v0001", 0),
        "cycle": {"version": "v0002", "gates_passed": False},
        "after": None,
        "served": "v0001",
        "replay": {"served": answers("v0001", 0), "candidate": answers("v0002", 3), "identical": 1},
    }
    demo._reuse_finished_run()
    [run] = demo.result.runs
    assert run.after is None and run.replay is not None and run.replay.identical == 1
    assert (run.replay.served.fact_rate, run.replay.candidate.fact_rate) == (0.0, 1.0)
    from infra.demo.report import summarize, write_html

    summarize(console, demo.result, demo.s)
    text = console.export_text()
    assert "held-out exact figure, replayed offline: v0001 -> refused v0002" in text
    assert "0/1 = 0% [0%, 79%] -> 1/1 = 100% [21%, 100%] (+1 -0" in text
    assert "1 of 1, token for token" in text
    page = write_html(demo.result, demo.s).read_text()
    assert "replayed offline: served vs the refused candidate" in page
    assert "refused candidate, replayed offline (not served) (v0002)" in page


def test_a_replay_that_fails_leaves_the_cycle_to_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second ``make demo`` reuses a run whose state holds "after": the refused
    candidate's replay saves it only once it is done, so a failed replay runs again."""
    monkeypatch.setenv("RATCHET_HOME", str(tmp_path))
    monkeypatch.setenv(
        "DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/ratchet_no_such_database"
    )
    demo = Demo(DemoSettings(size="tiny", fresh=True), Console(width=160, record=True))
    demo.number = 1
    demo.state = {
        "before": answers("v0001", 0),
        "cycle": {"version": "v0002", "gates_passed": False},
        "served": "v0001",
    }
    demo.result.before = results.evaluation_from(demo.state["before"])
    demo.result.runs = [results.run_from(demo.state)]
    with pytest.raises(psycopg.OperationalError):
        demo.ask_after([])  # the registry cannot be read: the replay fails
    assert "after" not in demo.state
    assert not demo.state_file.exists() or "after" not in json.loads(demo.state_file.read_text())
