"""The model registry: versions, their status, and an append-only audit log.

Importable without torch: serving reads it to find the production version.
Promotion and rollback ``NOTIFY`` the ``ratchet_models`` channel with the new
production version id in the same transaction, so serving can hot-swap without
polling delay (it also polls :func:`get_production`).

Statuses: ``candidate`` (registered, gates passed, waiting for promotion),
``rejected`` (gates failed), ``production`` (at most one), ``retired`` (was
production once). Every write happens in one transaction under an advisory
transaction lock, so concurrent promotions cannot interleave.

The canary is a role, not a status (like MLflow's ``challenger`` alias): at most
one ``candidate`` is marked ``canary``, and serving loads it beside production
to answer A/B requests with one draft from each. :func:`set_canary` and
:func:`clear_canary` are audited and ``NOTIFY`` the same channel (payload
``canary:<id>``, or ``canary:`` when cleared); promoting the canary clears the
role in the same transaction.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg.rows import class_row

from training.errors import RegistryError

NOTIFY_CHANNEL = "ratchet_models"
_REGISTRY_LOCK = 7_400_200  # advisory transaction lock held by every registry write


VersionStatus = Literal["candidate", "rejected", "production", "retired"]  # the table's CHECK


@dataclass(frozen=True)
class ModelVersion:
    id: str
    parent_id: str | None
    path: str
    weights_sha256: str
    training_run_id: Any
    metrics: dict[str, Any]
    gate_report: dict[str, Any] | None
    gates_passed: bool | None
    status: VersionStatus
    created_at: datetime
    canary: bool = False


@dataclass(frozen=True)
class AuditEntry:
    id: int
    action: str
    actor: str
    from_version: str | None
    to_version: str | None
    reason: str | None
    at: datetime


_COLUMNS = (
    "id, parent_id, path, weights_sha256, training_run_id, metrics, gate_report,"
    " gates_passed, status, created_at, canary"
)
_INSERT_COLUMNS = _COLUMNS.removesuffix(", canary")


def get_production(conn: psycopg.Connection) -> ModelVersion | None:
    """The version serving should use now, or None before the base is registered."""
    with conn.cursor(row_factory=class_row(ModelVersion)) as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM model_versions WHERE status = 'production'")
        return cur.fetchone()


def get_canary(conn: psycopg.Connection) -> ModelVersion | None:
    """The candidate serving answers A/B requests beside production, if any."""
    with conn.cursor(row_factory=class_row(ModelVersion)) as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM model_versions WHERE canary")
        return cur.fetchone()


def get_version(conn: psycopg.Connection, version_id: str) -> ModelVersion | None:
    with conn.cursor(row_factory=class_row(ModelVersion)) as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM model_versions WHERE id = %s", (version_id,))
        return cur.fetchone()


def list_versions(conn: psycopg.Connection) -> list[ModelVersion]:
    with conn.cursor(row_factory=class_row(ModelVersion)) as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM model_versions ORDER BY id")
        return cur.fetchall()


def audit_log(conn: psycopg.Connection, *, limit: int = 100) -> list[AuditEntry]:
    """The most recent audit entries, oldest first."""
    with conn.cursor(row_factory=class_row(AuditEntry)) as cur:
        cur.execute(
            "SELECT * FROM (SELECT id, action, actor, from_version, to_version, reason, at"
            " FROM model_audit ORDER BY id DESC LIMIT %s) a ORDER BY id",
            (limit,),
        )
        return cur.fetchall()


def to_json(value: Any) -> str:
    """JSON for a jsonb column: NaN and infinities become null, unknown types strings."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), default=str)


def failed_gates(gate_report: dict[str, Any] | None) -> list[str]:
    """Names of the gates a report marks as failed."""
    gates = (gate_report or {}).get("gates", {})
    return [name for name, gate in gates.items() if not gate.get("passed")]


def lock_registry(conn: psycopg.Connection) -> None:
    """Serialise registry writes: an advisory lock held until the transaction ends."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_REGISTRY_LOCK,))


def _audit(
    conn: psycopg.Connection,
    action: str,
    actor: str,
    from_version: str | None,
    to_version: str | None,
    reason: str | None,
) -> None:
    conn.execute(
        "INSERT INTO model_audit (action, actor, from_version, to_version, reason)"
        " VALUES (%s, %s, %s, %s, %s)",
        (action, actor, from_version, to_version, reason),
    )


def _notify(conn: psycopg.Connection, payload: str) -> None:
    """Wake serving: a production version id, or ``canary:<id>`` (``canary:`` when cleared)."""
    conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, payload))


def next_version_id(conn: psycopg.Connection) -> str:
    """The next free id (``v0001``, ``v0002``, ...). Call inside the registering transaction."""
    row = conn.execute(
        "SELECT max(substring(id from 2)::int) FROM model_versions WHERE id ~ '^v[0-9]+$'"
    ).fetchone()
    return f"v{(row[0] or 0) + 1:04d}" if row else "v0001"


def register_version(
    conn: psycopg.Connection,
    *,
    version_id: str,
    path: str,
    weights_sha256: str,
    parent_id: str | None,
    training_run_id: Any,
    metrics: dict[str, Any],
    gate_report: dict[str, Any] | None,
    gates_passed: bool,
    actor: str,
) -> ModelVersion:
    """Insert a trained version as ``candidate`` (gates passed) or ``rejected``.

    Runs inside the caller's transaction (``with conn.transaction():``) so the
    version, its audit rows and the run's update commit together."""
    lock_registry(conn)
    status = "candidate" if gates_passed else "rejected"
    conn.execute(
        f"INSERT INTO model_versions ({_INSERT_COLUMNS})"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, now())",
        (
            version_id,
            parent_id,
            path,
            weights_sha256,
            training_run_id,
            to_json(metrics),
            to_json(gate_report) if gate_report is not None else None,
            gates_passed,
            status,
        ),
    )
    _audit(conn, "register", actor, parent_id, version_id, f"training run {training_run_id}")
    if not gates_passed:
        failed = failed_gates(gate_report)
        _audit(conn, "reject", actor, None, version_id, "gates failed: " + ", ".join(failed))
    found = get_version(conn, version_id)
    assert found is not None
    return found


def ensure_base(
    conn: psycopg.Connection, path: str, weights_sha256: str, *, actor: str = "bootstrap"
) -> ModelVersion:
    """Register the base model as the first production version if the registry is empty."""
    with conn.transaction():
        lock_registry(conn)
        existing = conn.execute("SELECT count(*) FROM model_versions").fetchone()
        if existing and existing[0]:
            production = get_production(conn)
            if production is None:
                raise RegistryError("the registry has versions but none is in production")
            return production
        conn.execute(
            f"INSERT INTO model_versions ({_INSERT_COLUMNS})"
            " VALUES ('v0001', NULL, %s, %s, NULL, '{}', NULL, NULL, 'production', now())",
            (path, weights_sha256),
        )
        _audit(conn, "bootstrap", actor, None, "v0001", "base model")
        _notify(conn, "v0001")
    production = get_production(conn)
    assert production is not None
    return production


def promote(
    conn: psycopg.Connection,
    version_id: str,
    *,
    actor: str,
    reason: str,
    force: bool = False,
    overridden: str | None = None,
) -> ModelVersion:
    """Make ``version_id`` the production version.

    Refused unless its gates passed; ``force`` overrides that, needs a reason,
    and is audited as ``force_promote`` (also when ``overridden`` names another
    check the caller skipped because of ``force``, e.g. the canary stage; see
    ``training.promotion``). Promoting the canary ends its canary role (audited
    as ``canary_clear``)."""
    if not reason or not reason.strip():
        raise RegistryError("a promotion needs a reason (--reason)")
    with conn.transaction():
        lock_registry(conn)
        target = get_version(conn, version_id)
        if target is None:
            raise RegistryError(f"no model version {version_id!r} (see `ratchet models list`)")
        if target.status == "production":
            raise RegistryError(f"{version_id} is already the production version")
        if not target.gates_passed and not force:
            why = (
                f"its gates failed ({', '.join(failed_gates(target.gate_report)) or 'unknown'})"
                if target.gates_passed is False
                else "it has no gate report"
            )
            raise RegistryError(
                f"refusing to promote {version_id}: {why} (`ratchet models show {version_id}`);"
                " --force overrides this and is audited"
            )
        current = get_production(conn)
        if current is not None:
            conn.execute(
                "UPDATE model_versions SET status = 'retired' WHERE id = %s", (current.id,)
            )
        conn.execute(
            "UPDATE model_versions SET status = 'production', canary = false WHERE id = %s",
            (version_id,),
        )
        forced = force and (not target.gates_passed or overridden is not None)
        action = "force_promote" if forced else "promote"
        if forced and overridden:
            reason = f"{reason} [forced over: {overridden}]"
        _audit(conn, action, actor, current.id if current else None, version_id, reason)
        if target.canary:
            _audit(conn, "canary_clear", actor, version_id, None, "promoted to production")
        _notify(conn, version_id)
    promoted = get_version(conn, version_id)
    assert promoted is not None
    return promoted


def production_history(conn: psycopg.Connection) -> list[str]:
    """The stack of production versions, replayed from the audit log (current last)."""
    stack: list[str] = []
    rows = conn.execute(
        "SELECT action, to_version FROM model_audit"
        " WHERE action IN ('bootstrap', 'promote', 'force_promote', 'rollback') ORDER BY id"
    ).fetchall()
    for action, to_version in rows:
        if action == "bootstrap":
            stack = [to_version]
        elif action in ("promote", "force_promote"):
            stack.append(to_version)
        elif stack:
            stack.pop()
    return stack


def rollback(conn: psycopg.Connection, *, actor: str, reason: str) -> ModelVersion:
    """Return production to the version that preceded the current one (per the audit log)."""
    if not reason or not reason.strip():
        raise RegistryError("a rollback needs a reason (--reason)")
    with conn.transaction():
        lock_registry(conn)
        current = get_production(conn)
        history = production_history(conn)
        if current is None or len(history) < 2 or history[-1] != current.id:
            raise RegistryError("nothing to roll back to: no earlier production version")
        previous = history[-2]
        conn.execute("UPDATE model_versions SET status = 'retired' WHERE id = %s", (current.id,))
        conn.execute("UPDATE model_versions SET status = 'production' WHERE id = %s", (previous,))
        _audit(conn, "rollback", actor, current.id, previous, reason)
        _notify(conn, previous)
    restored = get_version(conn, previous)
    assert restored is not None
    return restored


def set_canary(
    conn: psycopg.Connection, version_id: str, *, actor: str, reason: str | None = None
) -> ModelVersion:
    """Mark the candidate ``version_id`` as the canary, replacing any other canary.

    Only a ``candidate`` can be the canary: a rejected version failed its gates, a
    retired one was already replaced, and the production version is served anyway."""
    with conn.transaction():
        lock_registry(conn)
        target = get_version(conn, version_id)
        if target is None:
            raise RegistryError(f"no model version {version_id!r} (see `ratchet models list`)")
        if target.canary:
            raise RegistryError(f"{version_id} is already the canary")
        if target.status != "candidate":
            why = {
                "production": "it is the production version",
                "rejected": "it was rejected (gates failed: "
                + (", ".join(failed_gates(target.gate_report)) or "unknown")
                + ")",
                "retired": "it is retired (it was production once and has been replaced)",
            }.get(target.status, f"its status is {target.status}")
            raise RegistryError(
                f"{version_id} cannot be the canary: {why}; only a candidate can"
                " (`ratchet models list`)"
            )
        previous = get_canary(conn)
        if previous is not None:
            conn.execute("UPDATE model_versions SET canary = false WHERE id = %s", (previous.id,))
        conn.execute("UPDATE model_versions SET canary = true WHERE id = %s", (version_id,))
        _audit(conn, "canary", actor, previous.id if previous else None, version_id, reason)
        _notify(conn, f"canary:{version_id}")
    marked = get_version(conn, version_id)
    assert marked is not None
    return marked


def clear_canary(
    conn: psycopg.Connection, *, actor: str, reason: str | None = None
) -> ModelVersion:
    """End the canary role; serving stops answering A/B requests with it. Returns the
    version that was the canary (it stays a candidate)."""
    with conn.transaction():
        lock_registry(conn)
        current = get_canary(conn)
        if current is None:
            raise RegistryError("there is no canary to clear (`ratchet models list`)")
        conn.execute("UPDATE model_versions SET canary = false WHERE id = %s", (current.id,))
        _audit(conn, "canary_clear", actor, current.id, None, reason)
        _notify(conn, "canary:")
    cleared = get_version(conn, current.id)
    assert cleared is not None
    return cleared
