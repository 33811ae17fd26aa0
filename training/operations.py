"""The operator's actions, in one place: promote, roll back, set or clear the
canary, start a training cycle. ``ratchet models ...`` and the web console
(``serving/console``) both call these, so each action has one implementation,
one policy and one audit trail.

Promotion goes through :mod:`training.promotion` (the offline gates, then the
canary stage); ``force`` needs a typed reason and is audited as
``force_promote`` with the actor. Starting a cycle takes the same advisory
lock as ``ratchet train``: :func:`start_cycle` refuses while a cycle holds it
and otherwise launches ``ratchet train`` as a background process, which takes
the lock itself (so two clicks can never run two cycles).

Importable without torch, like the registry: serving imports this module (and
the errors it raises, re-exported here: ``LockBusy``, ``RegistryError``).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import psycopg

from training import promotion, registry, runs
from training.errors import LockBusy, RegistryError
from training.gates import GateThresholds, load_thresholds
from training.promotion import CanaryEvidence
from training.stats import wilson_interval

logger = logging.getLogger(__name__)

__all__ = [
    "CanaryEvidence",
    "LockBusy",
    "RegistryError",
    "Policy",
    "StartedCycle",
    "canary_evidence",
    "clear_canary",
    "cycle_running",
    "default_policy",
    "promote",
    "rollback",
    "set_canary",
    "start_cycle",
    "wilson_interval",
]


@dataclass(frozen=True)
class Policy:
    """What promotion checks: the gate thresholds and whether the canary stage is required."""

    thresholds: GateThresholds
    require_canary: bool = True


def default_policy() -> Policy:
    """The policy ``ratchet models promote`` applies (``RATCHET_GATES_CONFIG``,
    ``RATCHET_REQUIRE_CANARY``), for callers without training settings of their own."""
    from training.settings import TrainingSettings

    settings = TrainingSettings()
    return Policy(load_thresholds(settings.gates_config), settings.require_canary)


def canary_evidence(
    conn: psycopg.Connection, version_id: str, policy: Policy
) -> CanaryEvidence | None:
    """Users' A/B picks of ``version_id`` against production under ``policy``
    (None when there is nothing to compare it with, e.g. it is production)."""
    try:
        return promotion.canary_evidence(conn, version_id, policy.thresholds)
    except RegistryError:
        return None


def _need_actor(actor: str) -> str:
    if not actor or not actor.strip():
        raise RegistryError("an operator action needs an actor (who is doing this)")
    return actor.strip()


def promote(
    conn: psycopg.Connection,
    version_id: str,
    *,
    actor: str,
    reason: str,
    policy: Policy,
    force: bool = False,
) -> registry.ModelVersion:
    """Promote ``version_id`` under the promotion policy; :class:`RegistryError` says why not.

    ``force`` overrides failed gates and an unfinished canary stage, but only with a
    reason; the audit log records it as ``force_promote`` with what was overridden."""
    if force and (not reason or not reason.strip()):
        raise RegistryError("a forced promotion needs a typed reason")
    target = registry.get_version(conn, version_id)
    if target is not None and target.gates_passed is False and not force:
        # Say the first reason first: a rejected version never reaches the canary stage.
        failed = ", ".join(registry.failed_gates(target.gate_report)) or "unknown"
        raise RegistryError(
            f"refusing to promote {version_id}: its offline gates failed ({failed});"
            " forcing it needs a typed reason and is audited"
        )
    version = promotion.promote(
        conn,
        version_id,
        actor=_need_actor(actor),
        reason=reason,
        thresholds=policy.thresholds,
        require_canary=policy.require_canary,
        force=force,
    )
    logger.info("%s promoted %s (force=%s): %s", actor, version_id, force, reason)
    return version


def rollback(conn: psycopg.Connection, *, actor: str, reason: str) -> registry.ModelVersion:
    """Return production to the previous production version (audited)."""
    version = registry.rollback(conn, actor=_need_actor(actor), reason=reason)
    logger.info("%s rolled back to %s: %s", actor, version.id, reason)
    return version


def set_canary(
    conn: psycopg.Connection, version_id: str, *, actor: str, reason: str | None = None
) -> registry.ModelVersion:
    """Serve the candidate ``version_id`` beside production for A/B drafts (audited)."""
    version = registry.set_canary(conn, version_id, actor=_need_actor(actor), reason=reason)
    logger.info("%s set the canary to %s", actor, version_id)
    return version


def clear_canary(
    conn: psycopg.Connection, *, actor: str, reason: str | None = None
) -> registry.ModelVersion:
    """Stop serving the canary (audited); returns the version that was the canary."""
    version = registry.clear_canary(conn, actor=_need_actor(actor), reason=reason)
    logger.info("%s cleared the canary %s", actor, version.id)
    return version


def cycle_running(database_url: str) -> bool:
    """True while a training cycle holds the cycle lock (``ratchet train``'s)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (runs.CYCLE_LOCK,)).fetchone()
        if row and row[0]:
            conn.execute("SELECT pg_advisory_unlock(%s)", (runs.CYCLE_LOCK,))
            return False
    return True


@dataclass(frozen=True)
class StartedCycle:
    pid: int
    log_path: Path
    command: list[str]


def start_cycle(
    database_url: str,
    *,
    actor: str,
    log_dir: Path,
    algo: str = "dpo",
    size: str | None = None,
    env: dict[str, str] | None = None,
) -> StartedCycle:
    """Launch ``ratchet train`` in the background and return at once.

    Refused with :class:`LockBusy` while another cycle holds the lock. The child
    takes the same lock without waiting, so a cycle started by someone else in
    between makes the child exit with "another training cycle is running"."""
    _need_actor(actor)
    if algo not in ("ppo", "dpo"):
        raise RegistryError(f"unknown algorithm {algo!r}; choose ppo or dpo")
    if cycle_running(database_url):
        raise LockBusy("another training cycle is running; wait for it to finish")
    command = [sys.executable, "-m", "ratchet.cli", "train", "--algo", algo, "--quiet"]
    if size:
        command += ["--size", size]
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "console-train.log"
    child_env = {**os.environ, **(env or {}), "DATABASE_URL": database_url, "RATCHET_ACTOR": actor}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - a fixed argv, no shell
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env,
            start_new_session=True,
        )
    # Reap the child when it ends, so a long-lived server keeps no zombie.
    threading.Thread(target=proc.wait, name=f"cycle-{proc.pid}", daemon=True).start()
    logger.info("%s started a training cycle (pid %s, log %s)", actor, proc.pid, log_path)
    return StartedCycle(proc.pid, log_path, command)
