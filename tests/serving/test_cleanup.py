"""Cleanup that must not raise is logged at WARNING and counted on /metrics."""

from __future__ import annotations

import asyncio
import logging

import pytest

from serving.cleanup import CLEANUP_FAILURES, await_cancelled, close_quietly
from serving.metrics import ServingMetrics


def _count(step: str) -> float:
    for metric in CLEANUP_FAILURES.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels == {"step": step}:
                return sample.value
    return 0.0


def test_a_failing_close_is_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    async def close() -> None:
        raise RuntimeError("engine already dead")

    before = _count("test-close")
    with caplog.at_level(logging.WARNING, logger="serving.cleanup"):
        asyncio.run(close_quietly("test-close", close))
    assert _count("test-close") == before + 1
    [record] = [r for r in caplog.records if r.name == "serving.cleanup"]
    assert record.levelno == logging.WARNING
    assert "test-close" in record.getMessage() and "engine already dead" in record.getMessage()
    rendered = ServingMetrics().render().decode()
    assert 'ratchet_cleanup_failures_total{step="test-close"}' in rendered


def test_cancellation_is_not_swallowed() -> None:
    async def close() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(close_quietly("test-cancel", close))


def test_a_cancelled_task_ends_quietly_and_a_crashed_one_is_counted() -> None:
    async def main() -> None:
        sleeper = asyncio.create_task(asyncio.sleep(10))
        await asyncio.sleep(0)
        sleeper.cancel()
        await await_cancelled("test-task", sleeper)

        async def crash() -> None:
            raise ValueError("boom")

        crashed = asyncio.create_task(crash())
        await asyncio.sleep(0)
        await await_cancelled("test-task", crashed)

    before = _count("test-task")
    asyncio.run(main())
    assert _count("test-task") == before + 1
