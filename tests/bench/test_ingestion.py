"""Ingestion benchmark (feedback issue): ratings/s sustained from HTTP through
Kafka into Postgres, and POST-to-row latency, against the raw broker produce
rate and the raw Postgres COPY rate measured in the same run.

The API (``ratchet serve``), the consumer (``ratchet consume``) and the load
generator (``tests.bench.loadgen``) run as their own processes. Two phases:
one rating per POST (``/v1/feedback/ratings``, what a chat UI sends), and 100
per POST (``/v1/feedback/batch``, what a bulk client sends). The CPU each
process spends per 1,000 ratings shows where the time goes. Target: 5,000
ratings/s end to end. On a 2-core machine everything (client, API, broker,
consumer, Postgres) shares the same two cores, so read the ratios, not only the
absolute rate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest
from kafka import KafkaProducer

from feedback.message_ids import new_message_id
from infra.local.tansu import Broker, free_port
from tests.bench.conftest import REPO, percentile, print_table, ratio, save_json
from tests.conftest import CACHE

pytestmark = pytest.mark.bench

N = int(os.environ.get("RATCHET_BENCH_RATINGS", "20000"))  # batched phase
N_SINGLE = int(os.environ.get("RATCHET_BENCH_SINGLE_RATINGS", "3000"))
BATCH = 100
USERS = 50
SECRET = "bench-secret"
TARGET = 5000


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
    from tests.servers import new_database

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
        cpu_pids = {
            "API": [api.proc.pid],
            "consumer": [consumer.proc.pid],
            "broker (tansu)": [broker.process.pid],
            "postgres": [int((pg_cluster.data_dir / "postmaster.pid").read_text().split()[0])],
        }
        yield {
            "url": base_url,
            "keys": keys,
            "db": database_url,
            "bootstrap": broker.bootstrap,
            "home": home,
            "cpu_pids": cpu_pids,
        }
    finally:
        api.stop()
        consumer.stop()
        broker.stop()


def _cpu_seconds(pids: list[int], *, children: bool = False) -> float:
    """User + system CPU seconds used so far by ``pids`` (and their live children)."""
    total = 0.0
    for pid in pids:
        try:
            procs = [psutil.Process(pid)]
            if children:
                procs += procs[0].children(recursive=True)
            for p in procs:
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total


def _run_phase(pipeline: dict, name: str, n: int, per_request: int, concurrency: int) -> dict:
    """Send ``n`` ratings, ``per_request`` to a POST, and wait for every row.

    The load generator is its own process (``tests.bench.loadgen``), so this
    process only prepares the requests and reads the store afterwards."""
    users = list(pipeline["keys"])
    work = pipeline["home"] / name
    work.mkdir()
    requests_file, results_file = work / "requests.jsonl", work / "results.jsonl"
    with requests_file.open("w") as f:
        for start in range(0, n, per_request):
            user = users[(start // per_request) % len(users)]
            ratings = [
                {"message_id": new_message_id(user, SECRET), "thumbs": "up" if i % 3 else "down"}
                for i in range(start, min(n, start + per_request))
            ]
            path, body = (
                ("/v1/feedback/ratings", ratings[0])
                if per_request == 1
                else ("/v1/feedback/batch", {"ratings": ratings})
            )
            headers = {"Authorization": f"Bearer {pipeline['keys'][user]}"}
            f.write(json.dumps({"path": path, "headers": headers, "body": body}) + "\n")

    with psycopg.connect(pipeline["db"], autocommit=True) as conn:
        before = conn.execute("SELECT count(*) FROM ratings").fetchone()[0]  # type: ignore[index]
    cpu_pids = pipeline["cpu_pids"]
    cpu_before = {k: _cpu_seconds(v, children=k == "postgres") for k, v in cpu_pids.items()}
    loadgen = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.loadgen", str(requests_file), str(results_file)]
        + ["--url", pipeline["url"], "--concurrency", str(concurrency)],
        cwd=REPO,
    )
    loadgen_proc = psutil.Process(loadgen.pid)
    loadgen_cpu = 0.0
    while loadgen.poll() is None:
        try:
            t = loadgen_proc.cpu_times()
            loadgen_cpu = t.user + t.system
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    assert loadgen.returncode == 0, "the load generator failed"

    sent: dict[str, float] = {}
    first_sent = float("inf")
    with results_file.open() as f:
        for line in f:
            r = json.loads(line)
            assert r["status"] == 202, r
            first_sent = min(first_sent, r["sent"])
            accepted = [r["body"]] if per_request == 1 else r["body"]["ratings"]
            for a in accepted:
                sent[a["event_id"]] = r["sent"]
    assert len(sent) == n, f"{len(sent)} distinct event ids for {n} ratings"
    posted = max(json.loads(line)["done"] for line in results_file.open())

    stored = 0
    deadline = time.monotonic() + 600
    with psycopg.connect(pipeline["db"], autocommit=True) as conn:
        while stored < before + n and time.monotonic() < deadline:
            stored = conn.execute("SELECT count(*) FROM ratings").fetchone()[0]  # type: ignore[index]
            time.sleep(0.05)
        rows = conn.execute(
            "SELECT event_id::text, extract(epoch FROM stored_at) FROM ratings"
            " WHERE event_id = ANY(%s::uuid[])",
            (list(sent),),
        ).fetchall()
    assert len(rows) == n, f"{len(rows)} of {n} ratings stored"
    cpu = {
        k: _cpu_seconds(v, children=k == "postgres") - cpu_before[k] for k, v in cpu_pids.items()
    }
    cpu["load generator"] = loadgen_cpu
    done = max(float(r[1]) for r in rows)
    latencies_ms = [(float(r[1]) - sent[r[0]]) * 1000 for r in rows]
    return {
        "ratings": n,
        "ratings_per_request": per_request,
        "concurrency": concurrency,
        "end_to_end_ratings_per_s": n / (done - first_sent),
        "http_accept_ratings_per_s": n / (posted - first_sent),
        "post_to_row_p50_ms": percentile(latencies_ms, 50),
        "post_to_row_p99_ms": percentile(latencies_ms, 99),
        "cpu_ms_per_1000_ratings": {k: v * 1e6 / n for k, v in cpu.items()},
    }


def test_ingestion_throughput_and_latency(pipeline) -> None:
    produce_rate = _raw_produce_rate(pipeline["bootstrap"], N)
    copy_rate = _raw_copy_rate(pipeline["db"], N)
    single = _run_phase(pipeline, "single", N_SINGLE, 1, concurrency=32)
    batched = _run_phase(pipeline, "batched", N, BATCH, concurrency=4)

    rows = []
    for label, phase in (("1 rating per POST", single), (f"{BATCH} per POST", batched)):
        rate = phase["end_to_end_ratings_per_s"]
        rows.append(
            [
                f"end to end, {label}",
                f"{rate:,.0f}",
                ratio(rate, produce_rate),
                ratio(rate, copy_rate),
                f"{phase['post_to_row_p50_ms']:,.0f} / {phase['post_to_row_p99_ms']:,.0f}",
            ]
        )
        rows.append(
            [f"  HTTP accepted (202), {label}", f"{phase['http_accept_ratings_per_s']:,.0f}"]
            + ["", "", ""]
        )
    rows.append(["raw broker produce (acks=all)", f"{produce_rate:,.0f}", 1.0, "", ""])
    rows.append(["raw Postgres COPY", f"{copy_rate:,.0f}", "", 1.0, ""])
    print_table(
        "Feedback ingestion: HTTP -> Kafka -> Postgres",
        ["what", "ratings/s", "vs raw produce", "vs raw COPY", "POST-to-row p50/p99 ms"],
        rows,
    )
    components = list(single["cpu_ms_per_1000_ratings"])
    print_table(
        "CPU ms per 1,000 ratings, by process (2 cores = 2,000 ms per s)",
        ["process", "1 per POST", f"{BATCH} per POST"],
        [
            [c, single["cpu_ms_per_1000_ratings"][c], batched["cpu_ms_per_1000_ratings"][c]]
            for c in components
        ],
    )
    best = batched["end_to_end_ratings_per_s"]
    print(f"end to end (batched) is {best / TARGET:.0%} of the {TARGET:,}/s target")
    save_json(
        "ingestion",
        {
            "users": USERS,
            "single": single,
            "batched": batched,
            "raw_broker_produce_per_s": produce_rate,
            "raw_postgres_copy_rows_per_s": copy_rate,
            "target_ratings_per_s": TARGET,
        },
    )
