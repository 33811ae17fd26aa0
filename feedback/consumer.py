"""``ratchet consume``: Kafka -> validate -> one Postgres transaction -> commit offsets.

The loop, per ``poll()``:

1. decode every record; one that fails validation becomes a dead letter (reason kept);
2. write the valid events and the dead letters in ONE transaction (``store.write_batch``);
   while Postgres is unreachable, pause the partitions, keep the group membership
   alive with empty polls, and retry the same batch;
3. publish the dead letters to ``ratchet.dead-letters.v1``;
4. commit ``offset + 1`` per partition, only now.

A crash anywhere before step 4 redelivers the batch, and the store's upserts
keyed by ``event_id`` make that harmless. SIGTERM/SIGINT finish the current
batch and leave the group cleanly.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata
from prometheus_client import Counter, Gauge, start_http_server
from pydantic import ValidationError

from feedback.events import ALL_TOPICS, TOPIC_DEAD_LETTERS, TOPIC_OF, AnyEvent, decode
from feedback.settings import FeedbackSettings
from feedback.store import DeadLetter, write_batch

logger = logging.getLogger(__name__)

LAG = Gauge("ratchet_feedback_consumer_lag", "Records behind the log end.", ["topic", "partition"])
STORED = Counter("ratchet_feedback_events_stored", "Events written to the store.", ["kind"])
DEAD = Counter("ratchet_feedback_dead_letters", "Records sent to the dead-letter topic.")
DB_RETRIES = Counter("ratchet_feedback_db_retries", "Batch writes retried after a DB error.")

STATUS_FILE = "consumer-status.json"


@dataclass
class ConsumerStats:
    batches: int = 0
    events: int = 0
    dead_letters: int = 0
    db_retries: int = 0
    lag: dict[str, int] = field(default_factory=dict)
    last_batch_at: float | None = None


def validate(record: Any) -> AnyEvent | DeadLetter:
    """The event in ``record``, or a dead letter saying why not."""

    def dead(reason: str) -> DeadLetter:
        return DeadLetter(
            record.topic, record.partition, record.offset, record.key, record.value, reason
        )

    if record.value is None:
        return dead("empty record")
    try:
        event = decode(record.value)
    except ValidationError as exc:
        return dead(f"invalid event: {_short(exc)}")
    except ValueError as exc:  # undecodable bytes
        return dead(f"undecodable: {exc}"[:500])
    expected = TOPIC_OF.get(type(event))
    if expected != record.topic:
        return dead(f"{event.type} event on topic {record.topic} (belongs on {expected})")
    if b"\\u0000" in record.value:
        return dead("NUL character in text (Postgres cannot store it)")
    return event


def _short(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc or 'value'}: {err.get('msg')}")
    return "; ".join(parts)[:500]


class FeedbackConsumer:
    """One member of the store's consumer group."""

    def __init__(
        self,
        settings: FeedbackSettings,
        *,
        topics: Sequence[str] = ALL_TOPICS,
        on_batch: Callable[[ConsumerStats], None] | None = None,
    ) -> None:
        self._settings = settings
        self._topics = list(topics)
        self._stop = threading.Event()
        self._conn: psycopg.Connection | None = None
        self._dlq: KafkaProducer | None = None
        self._on_batch = on_batch
        self.stats = ConsumerStats()
        self._last_status = 0.0
        s = settings
        self._consumer = KafkaConsumer(
            bootstrap_servers=[x.strip() for x in s.kafka_bootstrap_servers.split(",")],
            group_id=s.consumer_group,
            client_id="ratchet-consumer",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=s.consumer_session_timeout_ms,
            heartbeat_interval_ms=s.consumer_heartbeat_interval_ms,
            max_poll_interval_ms=s.consumer_max_poll_interval_ms,
            max_poll_records=s.consumer_batch_size,
        )
        self._consumer.subscribe(self._topics)

    def stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: object) -> None:
            logger.info("signal %s: finishing the current batch, then stopping", signum)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self, *, max_idle_s: float | None = None) -> ConsumerStats:
        """Consume until stopped (or idle for ``max_idle_s``, for tests and one-shot runs)."""
        idle_since = time.monotonic()
        try:
            while not self._stop.is_set():
                polled = self._consumer.poll(
                    timeout_ms=self._settings.consumer_poll_timeout_ms,
                    max_records=self._settings.consumer_batch_size,
                )
                records = [r for batch in polled.values() for r in batch]
                if records:
                    self._process(records)
                    idle_since = time.monotonic()
                elif max_idle_s is not None and time.monotonic() - idle_since > max_idle_s:
                    break
                self._update_lag()
        finally:
            self.close()
        return self.stats

    def _process(self, records: list[Any]) -> None:
        events: list[AnyEvent] = []
        dead: list[DeadLetter] = []
        for record in records:
            item = validate(record)
            (dead if isinstance(item, DeadLetter) else events).append(item)  # type: ignore[arg-type]
        if not self._write(events, dead):
            logger.info("stopped before %s records were stored; they will come again", len(records))
            return
        if dead:
            self._publish_dead(dead)
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            if tp not in offsets or offsets[tp].offset <= r.offset:
                offsets[tp] = OffsetAndMetadata(r.offset + 1, "", -1)
        try:
            self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # The group rebalanced while we worked: the batch is stored, the next owner
            # will see it again and the upserts make that a no-op.
            logger.warning("offset commit failed (%s); the batch may be redelivered", exc)
        self.stats.batches += 1
        self.stats.events += len(events)
        self.stats.dead_letters += len(dead)
        self.stats.last_batch_at = time.time()
        for e in events:
            STORED.labels(e.type).inc()
        logger.info("stored %s events, %s dead letters", len(events), len(dead))
        if self._on_batch:
            self._on_batch(self.stats)

    def _write(self, events: list[AnyEvent], dead: list[DeadLetter]) -> bool:
        """Write the batch, waiting out Postgres outages (partitions paused meanwhile).
        False if told to stop before it could: the caller must not commit the offsets."""
        paused = False
        try:
            while True:
                try:
                    conn = self._connection()
                    try:
                        write_batch(conn, events, dead)
                    except psycopg.DataError:
                        events, dead = self._isolate_bad(conn, events, dead)
                        write_batch(conn, events, dead)
                    return True
                except psycopg.OperationalError as exc:
                    self._drop_connection()
                    self.stats.db_retries += 1
                    DB_RETRIES.inc()
                    logger.warning("Postgres unavailable (%s); retrying the batch", exc)
                    if not paused:
                        self._consumer.pause(*self._consumer.assignment())
                        paused = True
                    self._wait(self._settings.consumer_retry_interval_s)
                    if self._stop.is_set():
                        return False
        finally:
            if paused:
                self._consumer.resume(*self._consumer.paused())

    def _isolate_bad(
        self, conn: psycopg.Connection, events: list[AnyEvent], dead: list[DeadLetter]
    ) -> tuple[list[AnyEvent], list[DeadLetter]]:
        """Find the events Postgres refuses (one by one, rolled back) and dead-letter them."""
        good: list[AnyEvent] = []
        dead = list(dead)
        for event in events:
            try:
                with conn.transaction():
                    write_batch(conn, [event])
                    raise _Probe
            except _Probe:
                good.append(event)
            except psycopg.DataError as exc:
                dead.append(
                    DeadLetter(
                        "?",
                        -1,
                        -1,
                        event.partition_key(),
                        event.model_dump_json().encode(),
                        f"rejected by the store: {exc}"[:500],
                    )
                )
        return good, dead

    def _wait(self, seconds: float) -> None:
        """Sleep while keeping the consumer's group membership (paused polls)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self._stop.is_set():
            self._consumer.poll(timeout_ms=100)

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._settings.database_url, connect_timeout=3)
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                logger.debug("closing a broken connection", exc_info=True)
        self._conn = None

    def _publish_dead(self, dead: list[DeadLetter]) -> None:
        try:
            if self._dlq is None:
                self._dlq = KafkaProducer(
                    bootstrap_servers=[
                        x.strip() for x in self._settings.kafka_bootstrap_servers.split(",")
                    ],
                    acks="all",
                    enable_idempotence=False,
                    max_block_ms=5000,
                )
            for d in dead:
                headers = [
                    ("reason", d.reason.encode()),
                    ("source", f"{d.topic}/{d.partition}/{d.offset}".encode()),
                ]
                self._dlq.send(TOPIC_DEAD_LETTERS, key=d.key, value=d.value, headers=headers)
            self._dlq.flush(timeout=10)
            DEAD.inc(len(dead))
        except KafkaError as exc:  # the dead_letters table already holds them
            logger.warning("could not publish %s dead letters: %s", len(dead), exc)

    def _update_lag(self) -> None:
        now = time.monotonic()
        if now - self._last_status < 2:
            return
        self._last_status = now
        lag: dict[str, int] = {}
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            try:
                pos = self._consumer.position(tp, timeout_ms=500)
            except KafkaError:
                continue
            if high is None or pos is None:
                continue
            lag[f"{tp.topic}/{tp.partition}"] = max(0, high - pos)
            LAG.labels(tp.topic, str(tp.partition)).set(max(0, high - pos))
        self.stats.lag = lag
        self._write_status()

    def _write_status(self) -> None:
        path = Path(self._settings.home) / STATUS_FILE
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"updated_at": time.time(), **self.stats.__dict__}))
            tmp.replace(path)
        except OSError as exc:
            logger.debug("status file: %s", exc)

    def close(self) -> None:
        try:
            self._consumer.close()
        except KafkaError:
            logger.warning("consumer did not close cleanly", exc_info=True)
        if self._dlq is not None:
            self._dlq.close(timeout=5)
        self._drop_connection()
        self._write_status()


class _Probe(Exception):
    """Raised to roll back a trial write."""


def serve_metrics(port: int) -> None:
    """Expose this process's Prometheus metrics on 127.0.0.1:``port`` (loopback only).
    A port in use is logged and skipped: the consumer's work matters more than its metrics."""
    if not port:
        return
    try:
        start_http_server(port, addr="127.0.0.1")
    except OSError as exc:
        logger.warning(
            "consumer metrics NOT served: 127.0.0.1:%s: %s (set RATCHET_CONSUMER_METRICS_PORT)",
            port,
            exc,
        )
        return
    logger.info("consumer metrics on http://127.0.0.1:%s/metrics", port)
