"""Templates, the console's dependency alias, and running reads off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import psycopg
from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape

from serving.auth import User
from serving.console.session import Session, console_user
from serving.state import AppState

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"

_env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"], default=True, default_for_string=True),
)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if value != value else f"{value:.{digits}f}"
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M:%S}"
    return str(value)


def _stage_summary(metrics: dict[str, Any] | None) -> list[tuple[str, str, Any]]:
    """A run's scalar metrics per stage (per-step histories are drawn, not listed)."""
    rows = []
    for stage, value in (metrics or {}).items():
        items = value.items() if isinstance(value, dict) else [("", value)]
        for key, v in items:
            if isinstance(v, int | float | str) and not isinstance(v, bool):
                rows.append((stage, key, v))
    return rows


_env.filters["fmt"] = _fmt
_env.filters["stage_summary"] = _stage_summary
templates = Jinja2Templates(env=_env)

Console = Annotated[tuple[User, Session | None], Depends(console_user)]
T = TypeVar("T")


def page(
    request: Request,
    who: tuple[User, Session | None],
    name: str,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    user, session = who
    return templates.TemplateResponse(
        request,
        name,
        {"user": user, "csrf": session.csrf if session else "", **context},
        status_code=status_code,
    )


async def read(state: AppState, fn: Callable[[psycopg.Connection], T]) -> T:
    """Run ``fn(conn)`` with a pooled connection in a worker thread."""

    def run() -> T:
        with state.pool.connection() as conn:
            return fn(conn)

    return await asyncio.to_thread(run)


async def write(state: AppState, fn: Callable[[psycopg.Connection], T]) -> T:
    """Run ``fn(conn)`` on a fresh autocommit connection (registry writes open their
    own transactions, as the CLI's do) in a worker thread."""

    def run() -> T:
        with psycopg.connect(state.settings.database_url, autocommit=True) as conn:
            return fn(conn)

    return await asyncio.to_thread(run)
