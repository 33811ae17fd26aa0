"""The KL gate (issue 17): a negative KL estimate is no pass, and `models show`
prints it as a failure."""

from __future__ import annotations

import math

import pytest

from training.gates import GateThresholds, kl_gate
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
