"""Typed gate results and the rules every gate shares (torch-free).

Every gate fails closed: below its minimum sample count, on NaN, or when its
suite is missing, it fails with a reason saying so."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict: ``value`` compared with ``threshold`` over ``n`` samples
    (``interval``: the confidence interval of the value, when it has one)."""

    name: str
    passed: bool
    value: float | None
    threshold: str
    n: int
    min_n: int
    interval: tuple[float, float] | None = None
    reason: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "value": _clean(self.value),
            "threshold": self.threshold,
            "n": self.n,
            "min_n": self.min_n,
            "interval": list(self.interval) if self.interval else None,
            "reason": self.reason,
            "detail": {k: _clean(v) for k, v in self.detail.items()},
        }


@dataclass(frozen=True)
class GateReport:
    gates: list[GateResult]
    thresholds: dict[str, Any]
    eval: dict[str, Any]

    @property
    def passed(self) -> bool:
        return bool(self.gates) and all(g.passed for g in self.gates)

    def get(self, name: str) -> GateResult:
        for g in self.gates:
            if g.name == name:
                return g
        raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        """The stored form (``model_versions.gate_report``): gates keyed by name."""
        return {
            "passed": self.passed,
            "gates": {g.name: g.as_dict() for g in self.gates},
            "thresholds": self.thresholds,
            "eval": self.eval,
        }


# Where a gate is decided on a confidence bound, its point estimate is kept in its
# detail under one of these names.
_ESTIMATES = ("accuracy", "win_rate")


def point_estimate(gate: dict[str, Any]) -> Any:
    """A stored gate's point estimate: its accuracy or win rate where the value it
    is gated on is a confidence bound, else that value itself."""
    detail = gate.get("detail") or {}
    return next((detail[k] for k in _ESTIMATES if k in detail), gate.get("value"))


def _clean(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    return v


def is_number(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def enough(n: int, min_n: int) -> bool:
    """The minimum-count rule: a gate decides only on at least ``min_n`` samples."""
    return n >= min_n and n > 0


def decide(
    name: str,
    *,
    value: float | None,
    ok: bool,
    threshold: str,
    n: int,
    min_n: int,
    interval: tuple[float, float] | None = None,
    **detail: Any,
) -> GateResult:
    """A gate's result under the shared fail-closed rules (count first, then NaN, then ``ok``)."""
    if not enough(n, min_n):
        passed, reason = False, f"only {n} samples; the gate needs at least {min_n}"
    elif not is_number(value) or (interval is not None and not all(map(is_number, interval))):
        passed, reason = False, "the value is not a number (NaN)"
    elif ok:
        passed, reason = True, f"{_fmt(value)} {threshold}"
    else:
        passed, reason = False, f"{_fmt(value)} is not {threshold}"
    return GateResult(name, passed, value, threshold, n, min_n, interval, reason, detail)


def failed(name: str, *, threshold: str, min_n: int, reason: str, **detail: Any) -> GateResult:
    """A gate that could not be measured (e.g. its suite is missing)."""
    return GateResult(name, False, None, threshold, 0, min_n, None, reason, detail)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
