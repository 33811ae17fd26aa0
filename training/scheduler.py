"""Periodic training: ``ratchet train --every 6h --min-new-pairs 200``.

Each tick runs one cycle if enough new pairs arrived; the Postgres advisory
lock keeps cycles on several machines from overlapping (a busy lock skips the
tick). Errors of one cycle are logged and the loop goes on."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

from training.cycle import CycleResult, run_cycle
from training.errors import LockBusy, TrainingError
from training.settings import TrainingSettings
from training.snapshot import FeedbackSource

logger = logging.getLogger(__name__)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_interval(text: str) -> float:
    """``90s``, ``15m``, ``6h``, ``1d`` (or plain seconds) -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"invalid interval {text!r}: use e.g. 30m, 6h or 1d")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def run_periodically(
    settings: TrainingSettings,
    *,
    every_s: float,
    min_new_pairs: int,
    algo: str = "ppo",
    size: str | None = None,
    source: FeedbackSource | None = None,
    max_cycles: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[CycleResult]:
    results: list[CycleResult] = []
    tick = 0
    while max_cycles is None or tick < max_cycles:
        tick += 1
        started = time.monotonic()
        try:
            if settings.auto_promote:
                _auto_promote(settings)
            result = run_cycle(
                settings,
                algo=algo,
                size=size,
                source=source,
                min_new_pairs=min_new_pairs,
                progress=False,
            )
            results.append(result)
            logger.info("training tick %d: %s %s", tick, result.status, result.message)
        except LockBusy as exc:
            logger.info("training tick %d skipped: %s", tick, exc)
        except TrainingError as exc:
            logger.error("training tick %d failed: %s", tick, exc)
        except Exception:  # the outermost loop: log and keep the schedule
            logger.exception("training tick %d crashed", tick)
        if max_cycles is not None and tick >= max_cycles:
            break
        sleep(max(0.0, every_s - (time.monotonic() - started)))
    return results


def _auto_promote(settings: TrainingSettings) -> None:
    """The auto-promote policy, each tick: the canary is promoted once users' picks clear
    its bound (the same stage an operator's ``ratchet models promote`` goes through)."""
    import psycopg

    from training.gates import load_thresholds
    from training.promotion import promote_if_ready

    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        promoted = promote_if_ready(
            conn,
            actor="auto-promote",
            thresholds=load_thresholds(settings.gates_config),
            require_canary=settings.require_canary,
        )
    if promoted is not None:
        logger.info("auto-promote: %s is now the production version", promoted.id)
