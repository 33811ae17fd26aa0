"""`ratchet consume` exports its own metrics on a loopback port (issue 17):
consumer lag, dead letters and stored events, scraped over HTTP from the real
command while it consumes from a real broker into a real database."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
from kafka import KafkaProducer

from feedback.events import TOPIC_RATINGS, encode, topic_for
from infra.local.tansu import Broker, free_port
from tests.feedback.conftest import message, thumbs


def _value(text: str, name: str) -> float | None:
    m = re.search(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE)
    return None if m is None else float(m.group(1))


def test_consume_serves_lag_and_dead_letters(
    fresh_broker: Broker, database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": fresh_broker.bootstrap,
        "RATCHET_HOME": str(tmp_path / "home"),
        "RATCHET_CONSUMER_GROUP": f"g-{uuid.uuid4().hex[:8]}",
    }
    producer = KafkaProducer(bootstrap_servers=fresh_broker.bootstrap)
    m = message()
    for event in (m, thumbs(m)):
        producer.send(topic_for(event), key=event.user_id.encode(), value=encode(event))
    producer.send(TOPIC_RATINGS, key=b"x", value=b"not an event")
    producer.flush(30)
    producer.close()
    cmd = [sys.executable, "-m", "serving.cli", "consume", "--metrics-port", str(port)]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 90
        text = ""
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.TransportError:
                text = ""
            lags = re.findall(r"^ratchet_feedback_consumer_lag\{.*\} (\S+)$", text, re.M)
            dead = _value(text, "ratchet_feedback_dead_letters_total")
            if dead == 1.0 and lags and all(float(v) == 0.0 for v in lags):
                break
            time.sleep(0.5)
        assert _value(text, "ratchet_feedback_dead_letters_total") == 1.0, text[-2000:]
        stored = re.findall(r"^ratchet_feedback_events_stored_total\{(.*)\} (\S+)$", text, re.M)
        assert sum(float(v) for _, v in stored) == 2.0, stored
        lags = re.findall(r"^ratchet_feedback_consumer_lag\{.*\} (\S+)$", text, re.MULTILINE)
        assert lags and all(float(v) == 0.0 for v in lags), lags
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
