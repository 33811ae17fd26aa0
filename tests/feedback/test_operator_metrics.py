"""Spool metrics operators alert on (issue 17): depth and replays, read from a
real producer while its broker is away and after it comes back."""

from __future__ import annotations

import re
import time
from pathlib import Path

from feedback.producer import EventProducer
from infra.local.tansu import Broker, free_port
from serving.metrics import ServingMetrics
from tests.conftest import CACHE
from tests.feedback.conftest import make_settings, message, thumbs


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if m:
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(1) or "")))
            out[labels] = float(m.group(2))
    return out


def test_spool_depth_and_replays_while_the_broker_is_away(tmp_path: Path) -> None:
    broker = Broker(CACHE / "bin", free_port(), tmp_path / "tansu.log")  # not started yet
    settings = make_settings(broker.bootstrap, "postgresql://unused", tmp_path / "home")
    producer = EventProducer(settings)
    metrics = ServingMetrics()
    metrics.watch_producer(producer)

    def scrape() -> tuple[float, float, float]:
        text = metrics.render().decode()
        out = samples(text, "ratchet_feedback_events_out_total")
        depth = samples(text, "ratchet_feedback_spool_depth")[()]
        return depth, out[(("outcome", "spooled"),)], out[(("outcome", "replayed"),)]

    try:
        m = message()
        for event in (m, thumbs(m), thumbs(m, False)):
            producer.publish(event)
        assert producer.flush(30)
        assert scrape() == (3, 3, 0)
        broker.start()
        deadline = time.monotonic() + 60
        while scrape() != (0, 3, 3):
            assert time.monotonic() < deadline, f"not replayed: {scrape()}"
            time.sleep(0.2)
    finally:
        producer.close(10)
        broker.stop()
