"""Cleanup that must not raise: closing a generation, an engine, a background task
after the work it served is over. A failure there is logged at WARNING with the
exception and counted in ``ratchet_cleanup_failures_total{step}`` (on every app's
``/metrics``), so an operator sees it; it never replaces the error or the reply
that the caller is handling."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import Counter

logger = logging.getLogger(__name__)

# Process-wide; each app's ServingMetrics registers it on its own registry.
CLEANUP_FAILURES = Counter(
    "ratchet_cleanup_failures",
    "Cleanup steps that failed (logged at WARNING); what they cleaned up after went on.",
    ["step"],
    registry=None,
)


def cleanup_failed(step: str, exc: BaseException) -> None:
    """Log and count a failed cleanup ``step``."""
    CLEANUP_FAILURES.labels(step).inc()
    logger.warning("cleanup %s failed: %s: %s", step, type(exc).__name__, exc, exc_info=exc)


async def close_quietly(step: str, close: Callable[[], Awaitable[object]]) -> None:
    """Await ``close()``; an error from it is logged and counted, not raised.
    Cancellation still propagates."""
    try:
        await close()
    except Exception as exc:  # cleanup must not raise: logged and counted
        cleanup_failed(step, exc)


async def await_cancelled(step: str, task: asyncio.Task[object]) -> None:
    """Wait for a task this code cancelled: its ``CancelledError`` is the expected
    end; any other error is logged and counted."""
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception as exc:  # cleanup must not raise: logged and counted
        cleanup_failed(step, exc)
