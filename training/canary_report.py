"""The canary's record in users' A/B picks: wins, losses and ties against production.

An A/B request answers with one reply from each version; the user's pick is a
``ComparisonGiven`` stored in ``comparisons``, and each reply's version is in
``messages.model_version``. Only picks between one reply of each version count;
a user who changed their mind about the same two replies counts once (their
latest pick). Importable without torch, like the registry.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import psycopg

from training.errors import RegistryError
from training.registry import get_canary, get_production
from training.stats import wilson_interval

_PICKS = """
WITH latest AS (
    SELECT DISTINCT ON (c.user_id, least(c.message_id_a, c.message_id_b),
                        greatest(c.message_id_a, c.message_id_b))
           c.winner, ma.model_version AS version_a, mb.model_version AS version_b
    FROM comparisons c
    JOIN messages ma ON ma.id = c.message_id_a
    JOIN messages mb ON mb.id = c.message_id_b
    WHERE (ma.model_version, mb.model_version) IN ((%(canary)s, %(baseline)s),
                                                   (%(baseline)s, %(canary)s))
    ORDER BY c.user_id, least(c.message_id_a, c.message_id_b),
             greatest(c.message_id_a, c.message_id_b), c.occurred_at DESC, c.stored_at DESC
)
SELECT
    count(*) FILTER (WHERE (winner = 'a' AND version_a = %(canary)s)
                        OR (winner = 'b' AND version_b = %(canary)s)),
    count(*) FILTER (WHERE (winner = 'a' AND version_a = %(baseline)s)
                        OR (winner = 'b' AND version_b = %(baseline)s)),
    count(*) FILTER (WHERE winner = 'tie')
FROM latest
"""


@dataclass(frozen=True)
class CanaryReport:
    canary: str
    baseline: str
    wins: int
    losses: int
    ties: int

    @property
    def total(self) -> int:
        return self.wins + self.losses + self.ties

    @property
    def win_rate(self) -> float:
        """Share of picks the canary won, a tie counting half (NaN with no picks)."""
        return (self.wins + 0.5 * self.ties) / self.total if self.total else math.nan

    def interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """Wilson score interval of the win rate (95% by default)."""
        return wilson_interval(self.wins + 0.5 * self.ties, self.total, confidence=confidence)

    def as_dict(self) -> dict[str, object]:
        low, high = self.interval()
        rate = None if math.isnan(self.win_rate) else self.win_rate
        return {**asdict(self), "total": self.total, "win_rate": rate, "interval": [low, high]}


def canary_report(
    conn: psycopg.Connection, *, canary: str | None = None, baseline: str | None = None
) -> CanaryReport:
    """Users' picks between ``canary`` (default: the current canary) and ``baseline``
    (default: the production version)."""
    if canary is None:
        current = get_canary(conn)
        if current is None:
            raise RegistryError("no canary is set; name the version to report on (--canary)")
        canary = current.id
    if baseline is None:
        production = get_production(conn)
        if production is None:
            raise RegistryError("no production version; name the baseline (--baseline)")
        baseline = production.id
    if canary == baseline:
        raise RegistryError(f"the canary and the baseline are both {canary}")
    row = conn.execute(_PICKS, {"canary": canary, "baseline": baseline}).fetchone()
    wins, losses, ties = row if row else (0, 0, 0)
    return CanaryReport(canary, baseline, int(wins), int(losses), int(ties))
