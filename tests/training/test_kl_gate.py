"""The KL gate (issue 17): a negative KL estimate is no pass, and `models show`
prints it as a failure."""

from __future__ import annotations

import math

import pytest

from training.gates import kl_gate
from training.models_cli import print_gates


@pytest.mark.parametrize(
    ("kl", "passed"),
    [(-0.017, False), (0.0, True), (3.0, True), (25.0, True), (25.5, False), (math.nan, False)],
)
def test_kl_gate(kl: float, passed: bool) -> None:
    assert kl_gate(kl, 25.0)["passed"] is passed


def test_models_show_prints_a_negative_kl_as_a_failure(capsys: pytest.CaptureFixture[str]) -> None:
    print_gates({"passed": False, "gates": {"kl": kl_gate(-0.017, 25.0)}})
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "kl" in line and "-0.017" in line)
    assert "fail" in row and "pass" not in row
