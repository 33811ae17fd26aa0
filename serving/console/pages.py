"""The console's pages (GET): overview, versions, a version, feedback, runs, audit."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime
from typing import Any

import psycopg
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from serving.console import queries, svg
from serving.console.render import Console, page, read
from serving.deps import StateDep
from serving.errors import InvalidRequest, NotFound
from training import operations, registry

router = APIRouter(prefix="/console", include_in_schema=False)


@router.get("", response_class=HTMLResponse)
async def overview(request: Request, state: StateDep, who: Console) -> HTMLResponse:
    now = datetime.now(UTC)

    def load(conn: psycopg.Connection) -> dict[str, Any]:
        runs = queries.runs(conn, limit=1)
        return {
            "production": registry.get_production(conn),
            "canary": registry.get_canary(conn),
            "per_hour": queries.feedback_per_hour(conn, now),
            "rates": queries.rates_by_version(conn),
            "last_run": runs[0] if runs else None,
            "dlq": queries.dead_letters(conn),
        }

    data = await read(state, load)
    consumer = queries.consumer_status(state.settings.home, time.time())
    per_hour = data.pop("per_hour")
    chart = svg.bar_chart(
        "feedback events per hour, last 24 h (UTC)",
        [f"{h:%H}h" for h, _ in per_hour],
        [n for _, n in per_hour],
    )
    return page(
        request,
        who,
        "overview.html",
        chart=chart,
        total_24h=sum(n for _, n in per_hour),
        served=state.models.version,
        served_canary=state.models.canary_version,
        consumer=consumer,
        **data,
    )


@router.get("/versions", response_class=HTMLResponse)
async def versions(request: Request, state: StateDep, who: Console) -> HTMLResponse:
    rows = await read(state, registry.list_versions)
    return page(request, who, "versions.html", versions=rows)


@router.get("/versions/{version_id}", response_class=HTMLResponse)
async def version(request: Request, version_id: str, state: StateDep, who: Console) -> HTMLResponse:
    policy = operations.default_policy()

    def load(conn: psycopg.Connection) -> dict[str, Any]:
        v = registry.get_version(conn, version_id)
        if v is None:
            raise NotFound(f"no model version {version_id!r}")
        run = queries.run(conn, v.training_run_id) if v.training_run_id else None
        evidence = (
            None if v.status == "production" else operations.canary_evidence(conn, v.id, policy)
        )
        return {"v": v, "run": run, "evidence": evidence}

    data = await read(state, load)
    run = data["run"]
    charts = [svg.line_chart(name, values) for name, values in
              queries.curves(run["metrics"] if run else {}).items()]  # fmt: skip
    gates = (data["v"].gate_report or {}).get("gates", {})
    return page(request, who, "version.html", gates=gates, charts=charts, policy=policy, **data)


@router.get("/feedback", response_class=HTMLResponse)
async def feedback(
    request: Request,
    state: StateDep,
    who: Console,
    kind: str = "",
    version: str = "",
    since: str = "",
    until: str = "",
) -> HTMLResponse:
    """Empty filters (as the form sends them) mean "any"."""
    start, end = _day(since, "from"), _day(until, "to")
    kinds = [kind] if kind in queries.KINDS else list(queries.KINDS)
    names = getattr(state.settings, "pii_names", [])
    rows = await read(
        state,
        lambda conn: queries.feedback(
            conn,
            kinds=kinds,
            version=version.strip() or None,
            since=start,
            until=end,
            names=names,
        ),
    )
    filters = {"kind": kind, "version": version, "since": since or "", "until": until or ""}
    return page(request, who, "feedback.html", rows=rows, filters=filters, kinds=queries.KINDS)


@router.get("/runs", response_class=HTMLResponse)
async def runs(request: Request, state: StateDep, who: Console) -> HTMLResponse:
    def load(conn: psycopg.Connection) -> list[dict[str, Any]]:
        rows = queries.runs(conn, limit=20)
        for row in rows:
            row["log_tail"] = queries.log_tail(row.get("logs_path"))
        return rows

    rows = await read(state, load)
    return page(request, who, "runs.html", runs=rows)


@router.get("/audit", response_class=HTMLResponse)
async def audit(request: Request, state: StateDep, who: Console) -> HTMLResponse:
    entries = await read(state, lambda conn: registry.audit_log(conn, limit=200))
    return page(request, who, "audit.html", entries=list(reversed(entries)))


def _day(value: str, name: str) -> date | None:
    if not value.strip():
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError as exc:
        raise InvalidRequest(f"'{name}' must be a date (YYYY-MM-DD), not {value!r}") from exc
