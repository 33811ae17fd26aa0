"""The demo's yardstick, independent of every model: the employees' own rule
(exact figure from the handbook, cites it) on the held-out questions, before and
after training, each rate with its Wilson interval, and an exact McNemar test
(a two-sided sign test on the questions whose verdict changed) of before vs after."""

from __future__ import annotations

import math
from dataclasses import dataclass

from infra.demo.employees import Evaluation
from training.stats import wilson_interval

CRITERIA = (("exact figure", "states_fact"), ("cites", "cites"))


def mcnemar_exact_p(gained: int, lost: int) -> float:
    """Two-sided exact McNemar p-value: under no change, each of the ``gained + lost``
    discordant questions is a fair coin."""
    n = gained + lost
    if n == 0:
        return 1.0
    k = min(gained, lost)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class Change:
    criterion: str
    n: int
    before: int
    after: int
    gained: int  # questions failing before and passing after
    lost: int

    @property
    def before_interval(self) -> tuple[float, float]:
        return wilson_interval(self.before, self.n)

    @property
    def after_interval(self) -> tuple[float, float]:
        return wilson_interval(self.after, self.n)

    @property
    def p_value(self) -> float:
        return mcnemar_exact_p(self.gained, self.lost)

    def line(self) -> str:
        def rate(k: int, ci: tuple[float, float]) -> str:
            return f"{k}/{self.n} = {k / max(1, self.n):.0%} [{ci[0]:.0%}, {ci[1]:.0%}]"

        return (
            f"{rate(self.before, self.before_interval)} -> {rate(self.after, self.after_interval)}"
            f" (+{self.gained} -{self.lost}, exact McNemar p = {self.p_value:.3g})"
        )


def compare(before: Evaluation, after: Evaluation) -> list[Change]:
    """Before vs after per criterion, paired by question (questions answered in both)."""
    b = {q.question: r.judgement for q, r in before.rows}
    a = {q.question: r.judgement for q, r in after.rows}
    common = [q for q in b if q in a]
    out = []
    for name, attr in CRITERIA:
        pb = [bool(getattr(b[q], attr)) for q in common]
        pa = [bool(getattr(a[q], attr)) for q in common]
        out.append(
            Change(
                criterion=name,
                n=len(common),
                before=sum(pb),
                after=sum(pa),
                gained=sum(not x and y for x, y in zip(pb, pa, strict=True)),
                lost=sum(x and not y for x, y in zip(pb, pa, strict=True)),
            )
        )
    return out
