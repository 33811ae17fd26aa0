"""A soak under faults, with counts (issue 17; `make soak`): chat (streaming,
non-streaming, A/B, and clients that hang up) and feedback (single and batch)
run against the real API process (vLLM engine, tiny model) while the consumer is
killed with -9, the broker is restarted, Postgres is restarted, and the registry
changes under the API as an operator changes it (``tests/bench/soak_registry.py``):
a canary marked and cleared (``ratchet models canary``), a hot swap to another
version (``ratchet models promote``), and a training cycle (``ratchet train
--size tiny``) killed with -9 mid-cycle, then the next cycle. Bounded in time
(``RATCHET_SOAK_SECONDS``, default 60, plus what the faults take) and loopback only.

It prints requests sent, answered and failed by class; the same for the requests
that overlapped each registry change; which version answered, and whether any
request sent after the swap still got the old one; the trainer's aftermath;
ratings accepted, stored and lost; unexpected rows; p50/p99 latencies; the API's
RSS (with its engine processes) at start and end, and the slope. The run fails on
lost or unexpected ratings, on any failed request (hang-ups aside) overlapping the
canary change or the swap, on an old-version answer after the swap, and on an
inconsistent registry (a half-registered version, a run left ``running``).

The killed cycle is killed early (5 s after its run is recorded ``running``, in
its first stages): a whole tiny cycle beside the soak is minutes on 2 cores. The
next cycle is one with nothing new to train on: it recovers the dead run and
skips, which is what a scheduled cycle after a crash does first."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest

from feedback.message_ids import new_message_id
from infra.local.tansu import Broker, free_port
from tests.bench.soak_counts import CHAT, Tally, report
from tests.bench.soak_registry import (
    CANDIDATE,
    Window,
    canary_change,
    hot_swap,
    kill_trainer_mid_cycle,
    registry_problems,
)
from tests.conftest import CACHE
from tests.servers import add_candidate, new_database
from training import registry
from training.base_model import weights_digest

pytestmark = pytest.mark.bench

SECONDS = float(os.environ.get("RATCHET_SOAK_SECONDS", "60"))
SECRET = "soak-secret"
USERS = ("ann", "ben", "cat")


class Proc:
    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.cmd, self.env, self.log = cmd, env, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=out, stderr=out)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _registry_database(pg_cluster, template_db, model, model_b, home) -> str:  # type: ignore[no-untyped-def]
    """A database of the soak's own whose registry has ``model`` as production
    (v0001) and a copy of ``model_b`` as a candidate (v0002), the swap's target."""
    db = new_database(pg_cluster, template_db)
    with psycopg.connect(db, autocommit=True) as conn:
        registry.ensure_base(conn, str(model), weights_digest(model))
    weights = home / "v0002-weights"
    shutil.copytree(model_b, weights)
    assert add_candidate(db, weights) == CANDIDATE
    return db


@pytest.fixture(scope="module")
def system(
    pg_cluster, template_db, tiny_model_dir, tiny_model_b_dir, tmp_path_factory
) -> Iterator[dict]:  # type: ignore[no-untyped-def]
    from serving.auth import create_key

    home = tmp_path_factory.mktemp("soak")
    broker = Broker(CACHE / "bin", free_port(), home / "tansu.log")
    broker.start()
    db = _registry_database(pg_cluster, template_db, tiny_model_dir, tiny_model_b_dir, home)
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": db,
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "RATCHET_HOME": str(home),
        "RATCHET_MESSAGE_ID_SECRET": SECRET,
        "RATCHET_MAX_MODEL_LEN": "512",
        "RATCHET_DEFAULT_MAX_TOKENS": "16",
        "RATCHET_RATE_CAP_PER_MINUTE": "1000000",
        "RATCHET_RATE_LIMIT_PER_MINUTE": "1000000",
        "RATCHET_RATE_LIMIT_BURST": "100000",
        "RATCHET_CONSUMER_GROUP": "soak",
        "RATCHET_CONSUMER_METRICS_PORT": "0",
        "RATCHET_REGISTRY_POLL_SECONDS": "1",
    }
    with psycopg.connect(db) as conn:
        keys = {u: create_key(conn, user_id=u, role="user") for u in USERS}
    cli = [sys.executable, "-m", "serving.cli"]
    serve = [*cli, "serve", "--backend", "vllm", "--model", str(tiny_model_dir)]
    api = Proc([*serve, "--port", str(port)], env, home / "api.log")
    consumer = Proc([*cli, "consume"], env, home / "consumer.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert api.proc is not None and api.proc.poll() is None, api.log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the API did not become ready"
        time.sleep(1)
    try:
        yield {"url": url, "keys": keys, "db": db, "broker": broker, "api": api,
               "consumer": consumer, "pg": pg_cluster, "home": home,
               "base_model": tiny_model_dir}  # fmt: skip
    finally:
        api.stop()
        consumer.stop()
        broker.stop()


def _version(resp: httpx.Response) -> str | None:
    """Which version answered (and the A/B mode: ``canary`` or ``drafts``)."""
    if resp.status_code != 200:
        return None
    body = resp.json()
    return body["model_version"] + (f" ab={body['ab']}" if body.get("ab") else "")


def _stream_version(text: str) -> str | None:
    for line in text.splitlines():
        if line.startswith("data: {"):
            return str(json.loads(line[len("data: ") :])["model_version"])
    return None


def _ask(client: httpx.Client, kind: str, i: int) -> tuple[bool, str | None]:
    """One chat request of ``kind``: (answered, the version that answered)."""
    body: dict = {"model": "ratchet", "messages": [{"role": "user", "content": f"q{i}"}]}
    if kind == "chat-stream":
        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            text = "".join(r.iter_text())
        ok = r.status_code == 200 and "[DONE]" in text and '"error"' not in text
        return ok, _stream_version(text) if ok else None
    if kind == "chat-hangup":
        body["max_tokens"] = 200
        r = client.post("/v1/chat/completions", json=body, timeout=0.2)
        return True, _version(r)  # it answered before the client gave up: fine too
    if kind == "chat-ab":
        body["ab"] = True
    r = client.post("/v1/chat/completions", json=body)
    return r.status_code == 200, _version(r)


def _chat(client: httpx.Client, tally: Tally, i: int) -> None:
    kind = CHAT[i % len(CHAT)]
    started = time.monotonic()
    try:
        ok, version = _ask(client, kind, i)
    except httpx.TimeoutException:
        tally.record(kind, "hung up" if kind == "chat-hangup" else "failed", started)
        return
    except httpx.HTTPError:
        ok, version = False, None
    tally.record(kind, "answered" if ok else "failed", started, version=version)


def _feedback(client: httpx.Client, tally: Tally, user: str, i: int) -> None:
    batch = i % 4 == 0
    ids = [new_message_id(user, SECRET) for _ in range(10 if batch else 1)]
    ratings = [{"message_id": m, "thumbs": "up" if n % 2 else "down"} for n, m in enumerate(ids)]
    started = time.monotonic()
    cls = "feedback-batch" if batch else "feedback"
    try:
        if batch:
            r = client.post("/v1/feedback/batch", json={"ratings": ratings})
            events = [a["event_id"] for a in r.json()["ratings"]] if r.status_code == 202 else []
        else:
            r = client.post("/v1/feedback/ratings", json=ratings[0])
            events = [r.json()["event_id"]] if r.status_code == 202 else []
    except httpx.HTTPError:
        tally.record(cls, "failed", started)
        return
    tally.record(cls, "answered" if events else "failed", started, events)


def _loop(
    stop: threading.Event, work: Callable[[int], None], paused: threading.Event | None = None
) -> None:
    i = 0
    while not stop.is_set():
        if paused is not None and paused.is_set():
            time.sleep(0.05)
            continue
        work(i)
        i += 1


def _rss(pid: int) -> float:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


def _stored(db: str) -> set[str]:
    try:
        with psycopg.connect(db, connect_timeout=5) as conn:
            return {r[0] for r in conn.execute("SELECT event_id::text FROM ratings").fetchall()}
    except psycopg.OperationalError:
        return set()


def _drain(system: dict, tally: Tally, timeout: float = 180) -> None:
    """Wait until every rating accepted so far is stored (feedback paused)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with tally.lock:
            accepted = set(tally.accepted)
        if accepted <= _stored(system["db"]):
            return
        time.sleep(1)


Log = Callable[[str], None]


def _consumer_kill(system: dict, log: Log) -> None:
    log("consumer: kill -9, restart after 3 s")
    system["consumer"].kill9()
    time.sleep(3)
    system["consumer"].start()


def _broker_restart(system: dict, tally: Tally, paused: threading.Event, log: Log) -> None:
    """tansu keeps its log in memory only, so a broker restart loses what the
    consumer has not read yet (a real Kafka keeps it): feedback pauses until the
    store has caught up, then the broker goes down while feedback resumes, which
    the API must spool and replay."""
    log("feedback paused until the store has caught up (tansu is memory-only)")
    paused.set()
    _drain(system, tally)
    log("broker: stop (feedback resumes: spooled), restart after 5 s, then restart the consumer")
    system["broker"].stop()
    paused.clear()
    time.sleep(5)
    system["broker"].start()
    log("broker: listening again; stopping the consumer")
    system["consumer"].stop()
    log("consumer: stopped; starting it")
    system["consumer"].start()


def _pg_restart(system: dict, log: Log) -> None:
    log("postgres: restart (fast shutdown)")
    system["pg"].stop(mode="fast")
    time.sleep(2)
    system["pg"].start()


def _registry_change(change: Callable[[], Window], log: Log) -> Window:
    log("registry: begins")
    window = change()
    log(
        f"registry: {window.name}: "
        + ", ".join(f"{k} {v}" for k, v in window.facts.items() if k != "switched")
    )
    return window


def _faults(system: dict, tally: Tally, paused: threading.Event, log: Log) -> list[Window]:
    """The fault schedule, spread over the run (each waits for what it changed)."""
    steps: list[Callable[[], Window | None]] = [
        lambda: _consumer_kill(system, log),
        lambda: _registry_change(lambda: canary_change(system), log),
        lambda: _broker_restart(system, tally, paused, log),
        lambda: _registry_change(lambda: hot_swap(system), log),
        lambda: _registry_change(lambda: kill_trainer_mid_cycle(system, system["home"]), log),
        lambda: _pg_restart(system, log),
    ]
    windows = []
    for step in steps:
        time.sleep(SECONDS / (len(steps) + 1))
        window = step()
        if window is not None:
            windows.append(window)
    return windows


def _start_workers(
    system: dict, tally: Tally, stop: threading.Event, paused: threading.Event
) -> list[threading.Thread]:
    """Two chat clients (ann) and two feedback clients (ben, cat), feedback pausable."""
    clients = {u: httpx.Client(base_url=system["url"], timeout=60,
                               headers={"Authorization": f"Bearer {k}"})
               for u, k in system["keys"].items()}  # fmt: skip

    def chat_worker(offset: int) -> Callable[[int], None]:
        return lambda i: _chat(clients["ann"], tally, i + offset)

    def feedback_worker(user: str) -> Callable[[int], None]:
        return lambda i: _feedback(clients[user], tally, user, i)

    jobs: list[tuple[Callable[[int], None], threading.Event | None]]
    jobs = [(chat_worker(0), None), (chat_worker(1), None)]
    jobs += [(feedback_worker("ben"), paused), (feedback_worker("cat"), paused)]
    workers = [threading.Thread(target=_loop, args=(stop, job, p)) for job, p in jobs]
    for w in workers:
        w.start()
    return workers


def test_soak_under_faults(system: dict) -> None:
    tally, stop, paused = Tally(), threading.Event(), threading.Event()  # paused: feedback only
    api_pid = system["api"].proc.pid
    rss_start, load_start, t0 = _rss(api_pid), os.getloadavg()[0], time.monotonic()
    workers = _start_workers(system, tally, stop, paused)
    events: list[str] = []
    try:
        windows = _faults(
            system, tally, paused, lambda m: events.append(f"{time.monotonic() - t0:6.1f} s  {m}")
        )
        time.sleep(max(0.0, SECONDS - (time.monotonic() - t0)))
    finally:  # a fault that failed stops the traffic too
        stop.set()
        for w in workers:
            w.join(120)
        print("\n".join(events))
    rss_end, minutes = _rss(api_pid), (time.monotonic() - t0) / 60

    accepted = tally.accepted
    _drain(system, tally)
    stored = _stored(system["db"])
    lost, unexpected = accepted - stored, stored - accepted
    problems = registry_problems(system["db"])
    summary: list[list] = [
        ["ratings accepted", len(accepted)],
        ["ratings stored", len(accepted & stored)],
        ["ratings lost", len(lost)],
        ["unexpected rows", len(unexpected)],
        ["registry problems", "; ".join(problems) or "none"],
        ["API RSS start / end (MiB)", f"{rss_start:.0f} / {rss_end:.0f}"],
        ["RSS slope (MiB/min)", f"{(rss_end - rss_start) / minutes:.1f}"],
        ["load average (1 min) start / end", f"{load_start:.1f} / {os.getloadavg()[0]:.1f}"],
    ]
    tables = report(SECONDS, tally, windows, summary, events)
    if lost:
        when = sorted(tally.accepted_at[e] - t0 for e in lost)
        print(f"lost: {len(lost)} accepted between {when[0]:.2f} s and {when[-1]:.2f} s")
        print("lost sample:", sorted(lost)[:5])
    assert not lost, f"{len(lost)} accepted ratings never stored"
    assert not unexpected
    assert not problems, problems
    swaps = [r for r in tables["registry changes"] if not r[0].startswith("trainer")]
    failed = [r for r in swaps if r[1] != "chat-hangup" and r[4]]
    assert not failed, f"requests failed across a canary change or the swap: {failed}"
    assert all(r[3] == 0 for r in tables["versions"]), tables["versions"]
    assert next(w for w in windows if w.name.startswith("trainer")).facts["consistent"]
