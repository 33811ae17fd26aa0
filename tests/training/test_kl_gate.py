"""The KL gate (issue 17): a negative KL estimate is no pass, and `models show`
prints it as a failure. Its figure is split by reply kind (declining or not), which
explains the figure and leaves the verdict alone."""

from __future__ import annotations

import math

import pytest

from training.gates import GateThresholds, accuracy_gate, kl_gate
from training.models_cli import print_gates

T = GateThresholds()


@pytest.mark.parametrize(
    ("kl", "passed"),
    [(-0.017, False), (0.0, True), (3.0, True), (25.0, True), (25.5, False), (math.nan, False)],
)
def test_kl_gate(kl: float, passed: bool) -> None:
    assert T.kl_max == 25.0
    assert kl_gate(kl=kl, n=T.min_replies, t=T).passed is passed


def test_models_show_prints_a_negative_kl_as_a_failure(capsys: pytest.CaptureFixture[str]) -> None:
    gate = kl_gate(kl=-0.017, n=T.min_replies, t=T)
    print_gates({"passed": False, "gates": {"kl": gate.as_dict()}})
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "kl" in line and "-0.017" in line)
    assert "fail" in row and "pass" not in row


def test_models_show_prints_an_accuracy_gate_with_its_estimate_and_its_bound(
    capsys: pytest.CaptureFixture[str],
) -> None:
    gate = accuracy_gate(
        "reward_accuracy", correct=36, n=52, floor=0.65, min_n=30, confidence=T.confidence
    )
    print_gates({"passed": False, "gates": {"reward_accuracy": gate.as_dict()}})
    row = next(line for line in capsys.readouterr().out.splitlines() if "reward_accuracy" in line)
    low, high = gate.interval or (math.nan, math.nan)
    # the estimate (36/52), then the Wilson lower bound the gate compares with 0.65
    assert row.index("0.692") < row.index(f"{low:.3f}")
    assert f"[{low:.3f}, {high:.3f}]" in row and "fail" in row


def test_the_kl_figure_is_split_into_declining_replies_and_the_rest() -> None:
    by_reply = [
        ("I can't help with that: it goes against company policy.", 74.0),
        ("According to the handbook: 20 weeks.", 38.0),
        ("Parental leave is 20 weeks at full pay.", 36.0),
        ("I'm sorry, but I cannot share that.", 80.0),
    ]
    kl = sum(v for _, v in by_reply) / len(by_reply)
    gate = kl_gate(kl=kl, n=T.min_replies, t=T, by_reply=by_reply)
    assert gate.detail == {
        "declining_replies": 2,
        "declining_mean_kl": pytest.approx(77.0),
        "other_mean_kl": pytest.approx(37.0),
    }
    assert gate.reason == "57.000 is not in [0, 25.0] (2 declining, mean 77.0; 2 others, mean 37.0)"
    # The split explains the figure; the verdict is the one without it.
    assert gate.passed is kl_gate(kl=kl, n=T.min_replies, t=T).passed is False
    low = kl_gate(kl=3.0, n=T.min_replies, t=T, by_reply=[("x", 3.0)] * T.min_replies)
    assert low.passed and low.reason.endswith(f"({T.min_replies} others, mean 3.0)")
