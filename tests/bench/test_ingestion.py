"""Ingestion benchmark (feedback issue): ratings/s sustained from HTTP through
Kafka into Postgres, and POST-to-row latency, against the raw broker produce
rate and the raw Postgres COPY rate measured in the same run.

The API (``ratchet serve``) and the consumer (``ratchet consume``) run as their
own processes, as deployed; this process only sends requests. Target: 5,000
ratings/s end to end. On a 2-core machine everything (client, API, broker,
consumer, Postgres) shares the same two cores, so read the ratios, not only the
absolute rate."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from kafka import KafkaProducer

from feedback.message_ids import new_message_id
from infra.local.tansu import Broker, free_port
from tests.bench.conftest import percentile, print_table, ratio, save_json
from tests.conftest import CACHE

pytestmark = pytest.mark.bench

N = int(os.environ.get("RATCHET_BENCH_RATINGS", "5000"))
USERS = 50
CONCURRENCY = 64
SECRET = "bench-secret"


def _raw_produce_rate(bootstrap: str, n: int) -> float:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    value = b'{"type":"rating_given","thumbs":"up","message_id":"' + b"x" * 200 + b'"}'
    topic = f"bench-raw-{uuid.uuid4().hex[:6]}"
    producer.send(topic, value).get(timeout=30)  # topic created, metadata warm
    started = time.perf_counter()
    for i in range(n):
        producer.send(topic, key=str(i % 64).encode(), value=value)
    producer.flush(120)
    elapsed = time.perf_counter() - started
    producer.close()
    return n / elapsed


def _raw_copy_rate(database_url: str, n: int) -> float:
    rows = [
        (f"user{i % USERS}", f"msg{i}", uuid.uuid4(), "up", None, 1.0, None, [], "now")
        for i in range(n)
    ]
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE raw_ratings (LIKE ratings INCLUDING DEFAULTS)")
        started = time.perf_counter()
        with cur.copy(
            "COPY raw_ratings (user_id, message_id, event_id, thumbs, stars, score, comment,"
            " tags, occurred_at) FROM STDIN"
        ) as copy:
            for row in rows:
                copy.write_row(row)
        conn.commit()
        return n / (time.perf_counter() - started)


class _Process:
    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        self._out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._out, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._out.close()


@pytest.fixture(scope="module")
def pipeline(pg_cluster, template_db, tiny_model_dir, tmp_path_factory) -> Iterator[dict]:
    from serving.auth import create_key
    from tests.serving.server import new_database

    home = tmp_path_factory.mktemp("bench-ingest")
    broker = Broker(CACHE / "bin", free_port(), home / "tansu.log")
    broker.start()
    database_url = new_database(pg_cluster, template_db)
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "RATCHET_HOME": str(home),
        "RATCHET_MESSAGE_ID_SECRET": SECRET,
        # The benchmark measures the pipeline, not the per-user caps.
        "RATCHET_RATE_CAP_PER_MINUTE": "100000000",
        "RATCHET_RATE_LIMIT_PER_MINUTE": "100000000",
        "RATCHET_RATE_LIMIT_BURST": "100000",
        "RATCHET_CONSUMER_GROUP": "bench",
    }
    with psycopg.connect(database_url) as conn:
        keys = {f"user{i}": create_key(conn, user_id=f"user{i}", role="user") for i in range(USERS)}
    cli = [sys.executable, "-m", "serving.cli"]
    api = _Process(
        "api",
        [*cli, "serve", "--backend", "transformers", "--model", str(tiny_model_dir)]
        + ["--port", str(port)],
        env,
        home / "api.log",
    )
    consumer = _Process("consumer", [*cli, "consume"], env, home / "consumer.log")
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(f"{base_url}/readyz", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert api.proc.poll() is None, api.log.read_text()[-2000:]
        assert time.monotonic() < deadline, "the API did not become ready"
        time.sleep(0.5)
    try:
        yield {"url": base_url, "keys": keys, "db": database_url, "bootstrap": broker.bootstrap}
    finally:
        api.stop()
        consumer.stop()
        broker.stop()


async def _post_all(base_url: str, keys: dict[str, str]) -> dict[str, float]:
    """POST N ratings with CONCURRENCY in flight; return event id -> send time (epoch s)."""
    users = list(keys)
    sent: dict[str, float] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(N):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                user = users[i % len(users)]
                body = {
                    "message_id": new_message_id(user, SECRET),
                    "thumbs": "up" if i % 3 else "down",
                }
                t0 = time.time()
                resp = await client.post(
                    "/v1/feedback/ratings",
                    json=body,
                    headers={"Authorization": f"Bearer {keys[user]}"},
                )
                assert resp.status_code == 202, resp.text
                sent[resp.json()["event_id"]] = t0

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return sent


def test_ingestion_throughput_and_latency(pipeline) -> None:
    produce_rate = _raw_produce_rate(pipeline["bootstrap"], N)
    copy_rate = _raw_copy_rate(pipeline["db"], N)

    started = time.time()
    sent = asyncio.run(_post_all(pipeline["url"], pipeline["keys"]))
    posted = time.time()
    assert len(sent) == N
    stored = 0
    deadline = time.monotonic() + 600
    with psycopg.connect(pipeline["db"], autocommit=True) as conn:
        while stored < N and time.monotonic() < deadline:
            stored = conn.execute("SELECT count(*) FROM ratings").fetchone()[0]  # type: ignore[index]
            time.sleep(0.05)
        rows = conn.execute(
            "SELECT event_id::text, extract(epoch FROM stored_at) FROM ratings"
        ).fetchall()
    assert stored == N, f"{stored} of {N} ratings stored"
    done = max(float(r[1]) for r in rows)
    latencies_ms = [(float(r[1]) - sent[r[0]]) * 1000 for r in rows]
    e2e_rate = N / (done - started)
    http_rate = N / (posted - started)
    p50, p99 = percentile(latencies_ms, 50), percentile(latencies_ms, 99)
    results = {
        "ratings": N,
        "users": USERS,
        "concurrency": CONCURRENCY,
        "end_to_end_ratings_per_s": e2e_rate,
        "http_accept_ratings_per_s": http_rate,
        "raw_broker_produce_per_s": produce_rate,
        "raw_postgres_copy_rows_per_s": copy_rate,
        "post_to_row_p50_ms": p50,
        "post_to_row_p99_ms": p99,
        "target_ratings_per_s": 5000,
    }
    print_table(
        "Feedback ingestion: HTTP -> Kafka -> Postgres",
        ["what", "rate /s", "vs end to end"],
        [
            ["end to end (POST to row)", f"{e2e_rate:,.0f}", 1.0],
            ["HTTP accepted (202)", f"{http_rate:,.0f}", ratio(http_rate, e2e_rate)],
            [
                "raw broker produce (acks=all)",
                f"{produce_rate:,.0f}",
                ratio(produce_rate, e2e_rate),
            ],
            ["raw Postgres COPY", f"{copy_rate:,.0f}", ratio(copy_rate, e2e_rate)],
        ],
    )
    print(
        f"POST-to-row latency p50 {p50:.0f} ms, p99 {p99:.0f} ms; "
        f"end to end is {e2e_rate / 5000:.0%} of the 5,000/s target"
    )
    save_json("ingestion", results)
