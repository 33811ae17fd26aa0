"""The KL gate (issue 17): a negative KL estimate is no pass, and `models show`
prints it as a failure."""

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
