"""The promotion policy: offline gates, then the human canary, then promote.

A candidate that passed its offline gates becomes the canary; serving answers
A/B requests with one draft from it and one from production, and users pick.
With ``require_canary`` (on by default) :func:`promote` refuses until the
canary's Wilson lower bound over those picks (a tie counting half) reaches
``canary_win_lower_min`` with at least ``canary_min_picks`` picks; the refusal
says how many picks there are and what is needed. ``force`` overrides with a
reason and is audited as ``force_promote``. The auto-promote policy calls the
same function. Importable without torch, like the registry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg

from training import registry
from training.canary_report import CanaryReport, canary_report
from training.errors import RegistryError
from training.gates import GateThresholds
from training.stats import wilson_interval

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CanaryEvidence:
    """The canary stage's verdict on ``report``."""

    report: CanaryReport
    interval: tuple[float, float]
    min_picks: int
    lower_min: float
    confidence: float

    @property
    def ready(self) -> bool:
        return self.report.total >= self.min_picks and self.interval[0] >= self.lower_min

    def describe(self) -> str:
        r = self.report
        rate = "-" if not r.total else f"{r.win_rate:.3f}"
        low, high = self.interval
        return (
            f"the canary {r.canary} has {r.total} A/B picks against {r.baseline}"
            f" (wins {r.wins}, losses {r.losses}, ties {r.ties}; win rate {rate},"
            f" {self.confidence:.0%} Wilson interval {low:.3f}-{high:.3f});"
            f" it needs at least {self.min_picks} picks and a lower bound >= {self.lower_min}"
        )

    def as_dict(self) -> dict[str, object]:
        return {
            **self.report.as_dict(),
            "interval": list(self.interval),
            "min_picks": self.min_picks,
            "lower_min": self.lower_min,
            "ready": self.ready,
        }


def canary_evidence(
    conn: psycopg.Connection, version_id: str, thresholds: GateThresholds
) -> CanaryEvidence:
    """Users' picks of ``version_id`` against the production version."""
    report = canary_report(conn, canary=version_id)
    interval = wilson_interval(
        report.wins + 0.5 * report.ties, report.total, confidence=thresholds.confidence
    )
    return CanaryEvidence(
        report,
        interval,
        thresholds.canary_min_picks,
        thresholds.canary_win_lower_min,
        thresholds.confidence,
    )


def promote(
    conn: psycopg.Connection,
    version_id: str,
    *,
    actor: str,
    reason: str,
    thresholds: GateThresholds,
    require_canary: bool = True,
    force: bool = False,
) -> registry.ModelVersion:
    """Promote through the stages; raises :class:`RegistryError` saying what is missing."""
    if not reason or not reason.strip():
        raise RegistryError("a promotion needs a reason (--reason)")
    overridden: str | None = None
    if require_canary:
        why = _canary_refusal(conn, version_id, thresholds)
        if why is not None and not force:
            raise RegistryError(
                f"refusing to promote {version_id}: {why}"
                " (`ratchet models canary-report`); --force overrides this and is audited"
            )
        overridden = f"canary stage: {why}" if why else None
    return registry.promote(
        conn, version_id, actor=actor, reason=reason, force=force, overridden=overridden
    )


def _canary_refusal(
    conn: psycopg.Connection, version_id: str, thresholds: GateThresholds
) -> str | None:
    target = registry.get_version(conn, version_id)
    if target is None:
        raise RegistryError(f"no model version {version_id!r} (see `ratchet models list`)")
    if target.status == "production":
        raise RegistryError(f"{version_id} is already the production version")
    if not target.canary:
        return (
            f"{version_id} has not been the canary; serve it to users first"
            f" (`ratchet models canary {version_id}`)"
        )
    evidence = canary_evidence(conn, version_id, thresholds)
    return None if evidence.ready else evidence.describe()


def promote_if_ready(
    conn: psycopg.Connection,
    *,
    actor: str,
    thresholds: GateThresholds,
    require_canary: bool = True,
) -> registry.ModelVersion | None:
    """The auto-promote policy: promote the canary once its stage clears; else None."""
    canary = registry.get_canary(conn)
    if canary is None:
        return None
    try:
        return promote(
            conn,
            canary.id,
            actor=actor,
            reason="auto-promote: offline gates passed and the canary bound cleared",
            thresholds=thresholds,
            require_canary=require_canary,
        )
    except RegistryError as exc:
        logger.info("auto-promote waits: %s", exc)
        return None
