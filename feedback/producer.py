"""The event producer: non-blocking publish, durable spool when the broker is away.

``publish(event)`` only encodes the event and hands it to a background sender
thread; it never blocks on, or raises for, the broker. The sender sends with
kafka-python (``acks='all'``, keyed by ``event.partition_key()``). A send that
fails, or an event that arrives while the broker is unreachable, is appended
to the fsynced :class:`~feedback.spool.Spool`. While the spool holds a backlog,
new events go behind it, and the sender replays the backlog in order once the
broker answers again, deleting spooled events only after they are
acknowledged (a crash in between gives a duplicate, which the consumer drops
by ``event_id``).

The sender keeps each send's future with its record, in send order, and sweeps
the settled ones off the front on each pass (every ``LINGER_S`` while busy):
successes are counted, failures spooled. There is no callback per event (two
per record, each run on kafka-python's I/O thread with a lock, a counter and a
notify): in the API, every thread's Python work shares one GIL with the event
loop.

What is lost on a hard crash: events still in the in-memory queue or in
kafka-python's send buffer (milliseconds' worth), and failed sends not yet swept
(at most ``LINGER_S``). ``close()`` spools them.

A broker that goes away ends its client: the sender checks every
``BROKER_CHECK_S`` that the broker still answers, and on the first failure
(that, or a failed delivery) it force-closes the kafka-python client, which
fails every batch it still buffers into the spool. Left alone, kafka-python
would retry those batches into a *restarted* broker as soon as it listens,
before any metadata request has created their topics there; tansu (memory-only)
acknowledges them and then numbers later records with offsets already taken, so
a consumer past those offsets never sees them (the soak's 230 lost ratings,
issue 17). The spool replays through a fresh client, whose first request
fetches the metadata.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.partitioner import DefaultPartitioner
from kafka.producer.future import FutureRecordMetadata
from prometheus_client import Counter

from feedback.events import Event, encode, topic_for
from feedback.settings import FeedbackSettings
from feedback.spool import Spool

logger = logging.getLogger(__name__)

Record = tuple[str, bytes, bytes]  # topic, key, value

EVENTS_OUT = Counter(
    "ratchet_feedback_events_produced",
    "Feedback events handed to the broker or the spool, by outcome.",
    ["outcome"],  # sent | spooled | replayed
)

_SENT = EVENTS_OUT.labels("sent")

BROKER_CHECK_S = 0.25  # how often a healthy producer checks that the broker still answers
LINGER_S = 0.002  # a busy sender waits this long for more events before taking a small batch
SMALL_BATCH = 64


def _broker_answers(servers: str) -> bool:
    import socket

    for server in servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=0.5):
                return True
        except (OSError, ValueError):
            continue
    return False


class _KeyedPartitioner(DefaultPartitioner):
    """kafka-python's default partitioner (murmur2 of the key, so the same partitions
    as any Kafka client), remembered per key: its murmur2 is pure Python, a sixth of
    the sender thread's time per event, and the keys (user ids) repeat."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self._known: dict[tuple[str, bytes, int], int] = {}
        self._max_keys = max_keys

    def partition(  # type: ignore[no-untyped-def]
        self, topic, key, serialized_key, value, serialized_value, cluster
    ) -> int:
        if serialized_key is None:
            return int(super().partition(topic, key, None, value, serialized_value, cluster))
        partitions = cluster.partitions_for_topic(topic) or ()
        known = (topic, serialized_key, len(partitions))  # a new partition count: new entry
        found = self._known.get(known)
        if found is None:
            found = int(
                super().partition(topic, key, serialized_key, value, serialized_value, cluster)
            )
            if len(self._known) >= self._max_keys:
                self._known.clear()
            self._known[known] = found
        return found


class EventProducer:
    """Publishes events to Kafka without ever blocking or failing the caller."""

    def __init__(self, settings: FeedbackSettings) -> None:
        self._settings = settings
        self._spool = Spool(settings.spool_dir)
        # publish() appends here without waking anyone (deque.append is atomic); the
        # sender drains it every LINGER_S while busy, and is woken only when idle.
        # A queue.Queue woke the sender thread for every event: a GIL hand-off per
        # feedback POST that cost the API's event loop more than the POST's own work.
        self._queue: deque[Record] = deque()
        self._idle = False
        self._wake = threading.Event()
        self._kafka: KafkaProducer | None = None
        self._healthy = False
        # sent, not yet settled (the sender thread's alone; pending() reads its length)
        self._inflight: deque[tuple[FutureRecordMetadata, Record]] = deque()
        self._settled = threading.Lock()
        self._busy = 0  # records taken off the queue but not yet sent or spooled
        self._stop = threading.Event()
        self._closed = False
        self._last_probe = 0.0
        self._last_check = 0.0
        self._last_error_log = 0.0
        # this producer's share of EVENTS_OUT (the API exports it on its own registry)
        self.outcomes: dict[str, int] = {"sent": 0, "spooled": 0, "replayed": 0}
        self._thread = threading.Thread(target=self._run, name="ratchet-producer", daemon=True)
        self._thread.start()

    # -- public API --------------------------------------------------------

    def publish(self, event: Event) -> None:
        """Queue ``event`` for delivery; returns at once."""
        if self._closed:
            raise RuntimeError("publish() after close()")
        self._queue.append((topic_for(event), event.partition_key(), encode(event)))
        if self._idle:  # the first event after a pause wakes the sender
            self._wake.set()

    def backlog(self) -> int:
        """Events in the durable spool, waiting for the broker."""
        return len(self._spool)

    def pending(self) -> int:
        """Events accepted but not yet acknowledged by the broker nor spooled."""
        with self._settled:
            return len(self._queue) + self._busy + len(self._inflight)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every accepted event is acknowledged or spooled. True if it got there."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pending() == 0:
                return True
            time.sleep(0.01)
        return self.pending() == 0

    def close(self, timeout: float = 30.0) -> None:
        """Flush, stop the sender, spool whatever is still undelivered."""
        if self._closed:
            return
        self._closed = True
        self.flush(timeout)
        self._stop.set()
        self._thread.join(timeout)
        if self._kafka is not None:
            try:
                self._kafka.close(timeout=5)
            except KafkaError:
                logger.warning("kafka producer did not close cleanly", exc_info=True)
        if not self._thread.is_alive():  # the sweeper has stopped: settle here
            self._sweep()
            if self._inflight:  # not settled even so: spooled (a duplicate at worst)
                self._to_spool([record for _, record in self._inflight])
                self._inflight.clear()
        leftover = list(self._queue)
        self._queue.clear()
        if leftover:
            self._to_spool(leftover)
        self._spool.close()

    # -- sender thread -----------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:  # the outermost loop: log and carry on
                logger.exception("producer sender loop error")
                time.sleep(0.5)

    def _step(self) -> None:
        self._check_broker()
        self._sweep()
        batch = self._take(busy=bool(self._inflight))
        if batch:
            try:
                if len(self._spool) > 0 or not self._usable():
                    self._wait_inflight()
                    self._to_spool(batch)
                else:
                    for record in batch:
                        self._send(record)
            finally:
                with self._settled:
                    self._busy -= len(batch)
        if len(self._spool) > 0 and time.monotonic() - self._last_probe >= (
            self._settings.spool_replay_interval_s
        ):
            self._replay()

    def _take(self, *, busy: bool) -> list[Record]:
        """Up to 1,000 queued records. With sends in flight (``busy``) an empty queue
        is slept on for ``LINGER_S``, without asking to be woken: a stream of events
        is taken a pass at a time, and ``publish()`` stays a ``deque.append``. Idle,
        the sender waits up to 0.1 s for ``publish()`` to wake it.

        (The busy wait used to be a wait on the wake event too, so an event published
        into an empty queue woke the sender: profiled at ~4,000 POSTs/s, the sender sat
        in that wait 87% of the time and ``Event.set`` was 2% of the event loop's
        samples, each wake a GIL hand-off; issue 17.)"""
        if not self._queue:
            if busy:
                time.sleep(LINGER_S)
            else:
                self._idle = True
                if not self._queue:  # re-checked: an event published before _idle was set
                    self._wake.wait(0.1)
                self._idle = False
                self._wake.clear()
        elif len(self._queue) < SMALL_BATCH:
            time.sleep(LINGER_S)  # let a few more arrive: one pass per batch, not per event
        with self._settled:  # taken and counted as busy at once, so pending() never dips
            n = min(len(self._queue), 1000)
            batch = [self._queue.popleft() for _ in range(n)]
            self._busy += n
        return batch

    def _check_broker(self) -> None:
        """End the client of a broker that stopped answering (see the module docstring)."""
        now = time.monotonic()
        if not self._healthy or now - self._last_check < BROKER_CHECK_S:
            return
        self._last_check = now
        if not _broker_answers(self._settings.kafka_bootstrap_servers):
            self._healthy = False
            self._log_error("broker stopped answering: spooling until it is back")
            self._abandon_kafka()

    def _usable(self) -> bool:
        """A connected producer we believe in, creating one if the broker answers."""
        if self._healthy and self._kafka is not None:
            return True
        if time.monotonic() - self._last_probe < self._settings.spool_replay_interval_s:
            return False
        return self._probe()

    def _probe(self) -> bool:
        self._last_probe = time.monotonic()
        if not _broker_answers(self._settings.kafka_bootstrap_servers):
            return False
        if not self._healthy:
            # a client that failed may hold batches for a broker that is gone: they go
            # to the spool, and a fresh client asks for metadata before it produces
            self._abandon_kafka()
        if self._kafka is None:
            try:
                self._kafka = self._make_kafka()
            except KafkaError as exc:
                self._log_error("broker not ready: %s", exc)
                return False
        self._healthy = True
        return True

    def _make_kafka(self) -> KafkaProducer:
        s = self._settings
        return KafkaProducer(
            bootstrap_servers=[x.strip() for x in s.kafka_bootstrap_servers.split(",")],
            client_id="ratchet-feedback",
            acks="all",
            # tansu answers InitProducerId with an error, so no idempotent producer:
            # duplicates from retries are dropped by the consumer (event_id is the key),
            # and one request in flight keeps retries from reordering a partition.
            enable_idempotence=False,
            max_in_flight_requests_per_connection=1,
            linger_ms=s.producer_linger_ms,
            # kafka-python wants delivery_timeout_ms >= linger_ms + request_timeout_ms
            request_timeout_ms=min(
                5000, s.producer_delivery_timeout_ms - s.producer_linger_ms - 10
            ),
            delivery_timeout_ms=s.producer_delivery_timeout_ms,
            max_block_ms=s.producer_max_block_ms,
            reconnect_backoff_max_ms=1000,
            partitioner=_KeyedPartitioner(),
            # kafka-python's own sensors (records per batch, byte rates, request
            # latency...) are read by nothing here, and cost the sender thread a few
            # pure-Python recordings per batch and per request, under the API's GIL;
            # EVENTS_OUT and the API's metrics count what operators read.
            metrics_enabled=False,
        )

    def _send(self, record: Record) -> None:
        topic, key, value = record
        assert self._kafka is not None
        try:
            future = self._kafka.send(topic, key=key, value=value)
        except KafkaError as exc:
            self._healthy = False
            self._log_error("send failed, spooling: %s", exc)
            self._to_spool([record])
            return
        self._inflight.append((future, record))

    def _sweep(self) -> None:
        """Settle the sends kafka-python has finished, oldest first: count the
        acknowledged, spool the failed (each run of them in one append). Stops at the
        first unfinished send; a record leaves ``pending()`` only once it is counted
        or spooled."""
        inflight = self._inflight
        while inflight and inflight[0][0].is_done:
            ok = inflight[0][0].exception is None
            run: list[Record] = []
            for future, record in inflight:  # the run of settled sends with this outcome
                if not future.is_done or (future.exception is None) is not ok:
                    break
                run.append(record)
            if ok:
                _SENT.inc(len(run))
                with self._settled:
                    self.outcomes["sent"] += len(run)
            else:
                self._healthy = False
                self._log_error("delivery failed, spooling: %s", inflight[0][0].exception)
                self._to_spool(run)
            for _ in run:
                inflight.popleft()

    def _wait_inflight(self) -> None:
        """Let earlier sends succeed or fail (and spool) before spooling newer events."""
        deadline = time.monotonic() + self._settings.producer_delivery_timeout_ms / 1000 * 2
        self._sweep()
        while self._inflight and time.monotonic() < deadline:
            time.sleep(LINGER_S)
            self._sweep()

    def _to_spool(self, records: list[Record]) -> None:
        self._spool.append(records)
        EVENTS_OUT.labels("spooled").inc(len(records))
        with self._settled:
            self.outcomes["spooled"] += len(records)

    def _replay(self) -> None:
        """Resend the backlog in order, deleting what the broker acknowledged."""
        self._sweep()
        if self._inflight:
            return
        if not self._probe():
            return
        assert self._kafka is not None
        total = 0
        while not self._stop.is_set():
            rows = self._spool.peek(self._settings.spool_replay_batch)
            if not rows:
                break
            try:
                futures = [self._kafka.send(r.topic, key=r.key, value=r.value) for r in rows]
                self._kafka.flush(timeout=self._settings.producer_delivery_timeout_ms / 1000 + 2)
            except KafkaError as exc:
                self._healthy = False
                self._log_error("replay failed, will retry: %s", exc)
                self._discard_kafka()
                return
            acked = 0
            for fut in futures:
                if not fut.succeeded():
                    break
                acked += 1
            if acked:
                self._spool.delete_through(rows[acked - 1].seq)
                EVENTS_OUT.labels("replayed").inc(acked)
                self.outcomes["replayed"] += acked
                total += acked
            if acked < len(rows):
                self._healthy = False
                self._log_error("replay stopped after %s events; broker away again", acked)
                self._discard_kafka()
                return
        if total:
            logger.info("replayed %s spooled events; backlog now %s", total, len(self._spool))

    def _abandon_kafka(self) -> None:
        """Force-close the client: every batch it still holds fails (and is spooled by
        ``_on_failed``) instead of being retried into whatever broker answers next."""
        kafka, self._kafka = self._kafka, None
        if kafka is not None:
            force_close(kafka)

    def _discard_kafka(self) -> None:
        """Drop a producer that failed a replay; the next probe builds a fresh one."""
        kafka, self._kafka = self._kafka, None
        if kafka is not None:
            try:
                kafka.close(timeout=1)
            except KafkaError:
                logger.debug("closing a failed producer", exc_info=True)

    def _log_error(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_error_log > 5:
            self._last_error_log = now
            logger.warning(msg, *args)


def force_close(kafka: KafkaProducer) -> None:
    """Close ``kafka`` at once, failing every batch it still holds (their futures fail).

    kafka-python has no public call for this: ``close(timeout=0)`` first runs
    ``flush(0)``, which raises ``KafkaTimeoutError`` while batches are pending,
    before it reaches its own force-close (since kafka-python 2.1's "flush before
    close"; pinned by ``tests/feedback/test_broker_restart.py``). Recreating the
    producer is no substitute: the old client's sender would still retry its
    batches into the restarted broker. So the sender's ``force_close()``, what
    ``close()`` itself calls once its timeout has run out, is called directly."""
    try:
        kafka.close(timeout=0)  # nothing pending: a plain close
    except KafkaError:  # batches pending: flush(0) timed out before the force-close
        sender = getattr(kafka, "_sender", None)
        if sender is None:
            raise
        sender.force_close()  # kafka-python fails every incomplete batch, then stops
        sender.join(5)
