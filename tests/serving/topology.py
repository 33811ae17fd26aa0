"""The production topology on one host, for the managed-servers test and bench:
the API with ``--backend vllm-server --managed`` (real vLLM OpenAI server
processes on loopback, one per served version), a feedback consumer, and
steady mixed traffic (streaming and non-streaming greedy chat) that counts
every request, failure and request in flight."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import openai

from tests.servers import ApiServer, registry_server

ASK = [{"role": "user", "content": "Tell me about the travel policy, in detail."}]
TOKENS = 24
REQUEST_S = 120  # per request: one stranded on a stopped server fails the count


@dataclass
class Reply:
    version: str
    text: str
    stream: bool
    started: float
    ended: float


@dataclass
class Traffic:
    """Client threads sending greedy chat back to back (even threads stream, odd
    ones do not) until stopped. Every request is counted: a reply, or a failure."""

    base_url: str
    key: str
    threads: int = 4
    pause_s: float = 0.0  # each client's pause between requests (0: back to back)
    replies: list[list[Reply]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    sent: int = 0
    in_flight: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def completed(self) -> int:
        with self._lock:
            return sum(len(seen) for seen in self.replies)

    def all_replies(self) -> list[Reply]:
        with self._lock:
            return sorted((r for seen in self.replies for r in seen), key=lambda r: r.started)

    def _one(self, client: openai.OpenAI, stream: bool) -> Reply:
        started = time.monotonic()
        if not stream:
            resp = client.chat.completions.create(
                model="ratchet", messages=ASK, max_tokens=TOKENS, temperature=0
            )
            text = resp.choices[0].message.content or ""
            return Reply(resp.model_extra["model_version"], text, False, started, time.monotonic())
        chunks = list(
            client.chat.completions.create(
                model="ratchet", messages=ASK, max_tokens=TOKENS, temperature=0, stream=True
            )
        )
        versions = {c.model_extra["model_version"] for c in chunks}
        finished = [c for c in chunks if c.choices and c.choices[0].finish_reason]
        if len(versions) != 1 or len(finished) != 1:
            raise AssertionError(f"versions {versions}, {len(finished)} finish chunks")
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return Reply(versions.pop(), text, True, started, time.monotonic())

    def _loop(self, seen: list[Reply], stream: bool) -> None:
        client = openai.OpenAI(
            base_url=self.base_url + "/v1", api_key=self.key, max_retries=0, timeout=REQUEST_S
        )
        while not self._stop.is_set():
            with self._lock:
                self.sent += 1
                self.in_flight += 1
            try:
                reply = self._one(client, stream)
                with self._lock:
                    seen.append(reply)
            except Exception as exc:  # counted; the test fails on any
                with self._lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
            finally:
                with self._lock:
                    self.in_flight -= 1
            self._stop.wait(self.pause_s)

    def wait_for(self, count: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while self.completed < count:
            assert not self.failures, self.failures[:3]
            assert time.monotonic() < deadline, f"{self.completed} of {count} requests completed"
            time.sleep(0.05)

    def wait_for_both_kinds(self, version: str, timeout: float = 300) -> None:
        """Until ``version`` has answered a streaming and a non-streaming request."""
        deadline = time.monotonic() + timeout
        while {r.stream for r in self.all_replies() if r.version == version} != {True, False}:
            assert not self.failures, self.failures[:3]
            assert time.monotonic() < deadline, f"{version} did not answer both kinds"
            time.sleep(0.05)

    def __enter__(self) -> Traffic:
        self._workers = []
        for i in range(self.threads):
            seen: list[Reply] = []
            self.replies.append(seen)
            worker = threading.Thread(target=self._loop, args=(seen, i % 2 == 0), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(REQUEST_S + 10)
        alive = sum(worker.is_alive() for worker in self._workers)
        assert alive == 0, f"{alive} client thread(s) still waiting on a reply"


def ratchet_cli(database_url: str, *args: str) -> str:
    """``ratchet ARGS`` as an operator runs it, against the test's database."""
    env = {**os.environ, "DATABASE_URL": database_url, "RATCHET_ACTOR": "operator-test"}
    done = subprocess.run(
        [sys.executable, "-m", "serving.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"ratchet {' '.join(args)}: {done.stderr[-2000:]}"
    return done.stdout


@contextlib.contextmanager
def managed_topology(
    pg_cluster,  # type: ignore[no-untyped-def]
    template_db: str,
    kafka_bootstrap: str,
    tiny_model_dir: Path,
    tiny_model_b_dir: Path,
    root: Path,
) -> Iterator[tuple[ApiServer, str]]:
    """The API with managed vLLM servers serving v0001 (the tiny model), and the
    second tiny model registered as candidate v0002 (gates passed); yields both."""
    with registry_server(
        pg_cluster,
        template_db,
        tiny_model_dir,
        root,
        kafka_bootstrap,
        consume=True,
        backend="vllm-server",
        managed=True,
        enforce_eager=True,
        kv_cache_gib=0.25,
        managed_start_timeout_s=600,
        swap_drain_seconds=120,
    ) as server:
        weights = root / "v0002-weights"
        shutil.copytree(tiny_model_b_dir, weights)
        yield server, server.add_candidate(weights)
