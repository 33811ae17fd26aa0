"""Polling the feedback store for rows the consumer writes."""

from __future__ import annotations

import time
from typing import Any

import psycopg


def wait_for_row(url: str, query: str, params: tuple[Any, ...], timeout: float = 60.0) -> tuple:  # type: ignore[type-arg]
    """The first row of ``query`` once there is one; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            try:
                row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
            except psycopg.errors.UndefinedTable:
                row = None
            if row is not None:
                return tuple(row)
            if time.monotonic() > deadline:
                raise AssertionError(f"no row for {query!r} {params} within {timeout}s")
            time.sleep(0.2)
