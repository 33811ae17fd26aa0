"""The demo's yardstick: Wilson intervals and the exact McNemar test, by hand."""

from __future__ import annotations

import pytest

from infra.demo.employees import Evaluation, Reply
from infra.demo.questions import Judgement, Question
from infra.demo.yardstick import compare, mcnemar_exact_p


def test_exact_mcnemar_by_hand() -> None:
    # 6 gained, 0 lost: p = 2 * (1/2)^6 = 0.03125
    assert mcnemar_exact_p(6, 0) == pytest.approx(0.03125)
    # 5 vs 1: 2 * (C(6,0) + C(6,1)) / 64 = 14 / 64
    assert mcnemar_exact_p(1, 5) == pytest.approx(14 / 64)
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(3, 3) == 1.0


def evaluation(version: str, verdicts: list[tuple[bool, bool]]) -> Evaluation:
    rows = [
        (Question(f"q{i}", "", ()), Reply("", "", version, Judgement(fact, cites)))
        for i, (fact, cites) in enumerate(verdicts)
    ]
    return Evaluation(version=version, rows=rows)


def test_compare_pairs_by_question() -> None:
    before = evaluation("v1", [(False, False)] * 8 + [(True, True)] * 2)
    after = evaluation("v2", [(True, False)] * 8 + [(False, True)] * 2)
    facts, cites = compare(before, after)
    assert (facts.n, facts.before, facts.after, facts.gained, facts.lost) == (10, 2, 8, 8, 2)
    assert facts.p_value == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert (cites.before, cites.after, cites.gained, cites.lost) == (2, 2, 0, 0)
    assert cites.p_value == 1.0
    lo, hi = facts.after_interval
    assert lo < 0.8 < hi
    assert "exact McNemar p = " in facts.line()


def test_the_summary_and_report_show_intervals_and_the_p_value() -> None:
    from infra.demo.plots import plots
    from infra.demo.report import headline
    from infra.demo.results import CycleRun, DemoResult

    result = DemoResult(
        before=evaluation("v1", [(False, False)] * 10),
        runs=[CycleRun(after=evaluation("v2", [(True, True)] * 9 + [(False, False)]))],
    )
    rows = dict(headline(result))
    line = rows["held-out exact figure: before -> after (95% Wilson)"]
    assert line.startswith("0/10 = 0% [0%, 28%] -> 9/10 = 90% [60%, 98%]")
    assert "p = 0.00391" in line  # 2 / 2^9
    titles = [title for title, _ in plots(result)]
    assert "Held-out questions, before and after (95% Wilson)" in titles


def test_a_second_cycle_is_compared_with_the_first_and_plotted_across_versions() -> None:
    from infra.demo.plots import plots
    from infra.demo.report import headline, regressions
    from infra.demo.results import CycleRun, DemoResult

    base = evaluation("v0001", [(False, False)] * 10)
    first = evaluation("v0002", [(True, True)] * 6 + [(False, False)] * 4)
    held = evaluation("v0003", [(True, True)] * 7 + [(False, False)] * 3)
    fell = evaluation("v0003", [(True, True)] * 5 + [(False, True)] + [(False, False)] * 4)
    kept = DemoResult(before=base, runs=[CycleRun(after=first), CycleRun(after=held)])
    [(number, line, regressed)] = regressions(kept)
    assert (number, regressed) == (2, False)
    assert line.startswith("v0002 -> v0003: no regression; exact figure 6/10")
    assert [label for label, _ in kept.yardstick()] == ["base", "cycle 1", "cycle 2"]
    titles = [title for title, _ in plots(kept)]
    assert "Held-out yardstick across versions (95% Wilson)" in titles
    assert dict(headline(kept))["cycle 2: held-out yardstick"] == line

    worse = DemoResult(before=base, runs=[CycleRun(after=first), CycleRun(after=fell)])
    [(_, line, regressed)] = regressions(worse)
    assert regressed and "REGRESSED" in line and "-1" in line  # one question lost its figure
    # A cycle that promoted nothing is compared with nothing: the served version is unchanged.
    idle = DemoResult(before=base, runs=[CycleRun(after=first), CycleRun()])
    assert regressions(idle) == [(2, "promoted nothing: the served version is unchanged", False)]
    # A first cycle that promoted nothing: the second is compared with the base.
    late = DemoResult(before=base, runs=[CycleRun(), CycleRun(after=held)])
    assert regressions(late)[0][1].startswith("v0001 -> v0003: no regression")
    assert [label for label, _ in late.yardstick()] == ["base", "cycle 2"]


def test_the_summary_shows_each_reward_models_accuracy_with_its_interval() -> None:
    from infra.demo.report import gate_rows, headline
    from infra.demo.results import CycleRun, DemoResult
    from infra.demo.training_step import CycleOutcome
    from training.gates import accuracy_gate

    gates = {
        name: accuracy_gate(
            name, correct=correct, n=60, floor=0.65, min_n=30, confidence=0.95
        ).as_dict()
        for name, correct in (("reward_accuracy", 35), ("judge_accuracy", 40))
    }
    cycle = CycleOutcome(
        run_id="r",
        version="v0002",
        gates_passed=False,
        gate_report={"passed": False, "gates": gates},
        metrics={},
        pairs=204,
    )
    rows = dict(headline(DemoResult(runs=[CycleRun(cycle=cycle)])))
    # the estimate (35/60), then the Wilson interval the gate reads its lower bound from
    assert rows["reward model held-out accuracy (Wilson)"] == "0.583 [0.457, 0.699], n=60 pairs"
    assert rows["judge held-out accuracy (Wilson)"].startswith("0.667 [0.541, 0.773]")
    assert not any(name.startswith("reward model: learned score alone") for name in rows)
    # With the grounding term, the gate reads the sum; the learned score alone is shown too.
    cycle.metrics = {"reward": {"grounding_weight": 5.0, "model_heldout_accuracy": 0.55}}
    rows = dict(headline(DemoResult(runs=[CycleRun(cycle=cycle)])))
    learned = rows["reward model: learned score alone (held-out), grounding weight"]
    assert learned == "0.550, w = 5.0"
    [reward, _] = gate_rows(cycle)
    assert reward[3:6] == ("0.583", "0.457", "[0.457, 0.699]")
