"""The registry's moves on the real vLLM engine, in order on one API server (an
engine start is the expensive part):

- the canary: two engines in one API process (production and canary), an A/B
  request answered by both, streamed and not; cleared, its engine is freed (the
  transformers tests, ``test_canary.py``, cover the registry's moves; this one
  covers the engine the product serves with);
- hot swap: serving follows the registry's production version, loads the new
  weights in the background, moves new requests over, lets in-flight ones finish
  on the old engine, then frees it;
- a version that fails to load leaves the old one serving and is reported."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest

from tests.fixtures.tiny_model import greedy_reply
from tests.servers import ApiServer, registry_server, wait_until
from tests.serving.test_canary import ab, check_choices, greedy_by_version, ids_of
from training import registry

ASK = [{"role": "user", "content": "Tell me about the travel policy, in detail."}]
TOKENS = 48
REQUEST_S = 60  # per request: a stream stranded on a retired engine fails the test


def promote_new(server: ApiServer, path: Path, *, gates_passed: bool = True) -> str:
    """A trained version as the cycle registers it (candidate), then promoted."""
    version = server.add_candidate(path, gates_passed=gates_passed)
    server.in_database(
        lambda conn: registry.promote(
            conn, version, actor="test", reason="hot swap test", force=not gates_passed
        )
    )
    return version


@pytest.fixture(scope="module")
def swap_server(pg_cluster, template_db, kafka_bootstrap, tiny_model_dir, tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("swap")
    with registry_server(
        pg_cluster, template_db, tiny_model_dir, root, kafka_bootstrap, consume=True
    ) as server:
        assert server.settings.backend == "vllm"
        yield server


@dataclass
class Reply:
    version: str
    text: str
    started: float  # time.monotonic() when the request was sent
    ended: float  # ... and when its last chunk came


@dataclass
class Traffic:
    """Threads streaming greedy chat requests back to back until stopped; each
    request has its own timeout, so one stranded on a retired engine is an error."""

    base_url: str
    key: str
    threads: int = 4
    replies: list[list[Reply]] = field(default_factory=list)  # per thread, in order
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def completed(self) -> int:
        with self._lock:
            return sum(len(seen) for seen in self.replies)

    def _one(self, client: openai.OpenAI) -> Reply:
        started = time.monotonic()
        chunks = list(
            client.chat.completions.create(
                model="ratchet", messages=ASK, max_tokens=TOKENS, temperature=0, stream=True
            )
        )
        ended = time.monotonic()
        versions = {c.model_extra["model_version"] for c in chunks}
        finished = [c for c in chunks if c.choices and c.choices[0].finish_reason]
        if len(versions) != 1 or len(finished) != 1:
            raise AssertionError(f"versions {versions}, {len(finished)} finish chunks")
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return Reply(versions.pop(), text, started, ended)

    def _loop(self, seen: list[Reply]) -> None:
        client = openai.OpenAI(
            base_url=self.base_url + "/v1", api_key=self.key, max_retries=0, timeout=REQUEST_S
        )
        while not self._stop.is_set():
            try:
                reply = self._one(client)
                with self._lock:
                    seen.append(reply)
            except Exception as exc:  # recorded; the test fails on any
                with self._lock:
                    self.errors.append(f"{type(exc).__name__}: {exc}")

    def __enter__(self) -> Traffic:
        self._workers = []
        for _ in range(self.threads):
            seen: list[Reply] = []
            self.replies.append(seen)
            worker = threading.Thread(target=self._loop, args=(seen,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(REQUEST_S + 10)
        alive = sum(worker.is_alive() for worker in self._workers)
        assert alive == 0, f"{alive} client thread(s) still waiting on a reply"


def installed_at(server: ApiServer, version: str, timeout: float = 300) -> float:
    """When the server switched new requests to ``version`` (its own record)."""
    deadline = time.monotonic() + timeout
    while True:
        times = [at for v, at in server.models.installed if v == version]
        if times:
            return times[0]
        assert time.monotonic() < deadline, f"{version} was never installed"
        time.sleep(0.05)


def wait_for_count(traffic: Traffic, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while traffic.completed < count:
        assert not traffic.errors, traffic.errors[:3]
        assert time.monotonic() < deadline, f"{traffic.completed} of {count} requests completed"
        time.sleep(0.05)


def test_two_vllm_engines_answer_an_ab_request(
    swap_server: ApiServer, tiny_model_b_dir: Path
) -> None:
    server = swap_server
    path = server.root / "v0002-weights"  # where greedy_by_version reads the candidate
    shutil.copytree(tiny_model_b_dir, path)
    candidate = server.add_candidate(path)
    server.in_database(lambda c: registry.set_canary(c, candidate, actor="olga", reason="A/B"))
    wait_until(lambda: server.models.canary_version == candidate, "the canary engine is up", 300)

    resp = ab(server, temperature=0)
    assert resp.model_extra["ab"] == "canary"
    assert all(c.finish_reason in ("stop", "length") for c in resp.choices)
    texts = [c.message.content for c in resp.choices]
    check_choices(server, ids_of(resp), texts, greedy_by_version(server, candidate, 4))
    streamed = list(ab(server, max_tokens=6, temperature=0, stream=True))
    stream_ids = [c.model_extra["message_id"] for c in streamed[0].choices]
    streamed_texts = ["", ""]
    for c in streamed[1:]:
        streamed_texts[c.choices[0].index] += c.choices[0].delta.content or ""
    check_choices(server, stream_ids, streamed_texts, greedy_by_version(server, candidate, 6))
    for ids in (ids_of(resp), stream_ids):
        assert sorted(server.stored_versions(ids).values()) == ["v0001", candidate]
    # Clearing frees the canary's engine; production keeps answering.
    server.in_database(lambda c: registry.clear_canary(c, actor="olga", reason="done"))
    wait_until(lambda: server.models.canary_version is None, "the canary engine is freed")
    assert ab(server).model_extra["ab"] == "drafts"


def test_a_swap_under_streaming_traffic_loses_no_request(
    swap_server: ApiServer, tiny_model_b_dir: Path
) -> None:
    assert swap_server.served_version() == "v0001"  # the canary test left production alone
    new_dir = swap_server.root / "swap-weights"
    shutil.copytree(tiny_model_b_dir, new_dir)
    old_text = greedy_reply(swap_server.models.current.path, ASK, TOKENS)
    new_text = greedy_reply(new_dir, ASK, TOKENS)
    assert old_text != new_text  # the two weights tell apart
    with Traffic(swap_server.base_url, swap_server.keys.user) as traffic:
        wait_for_count(traffic, 8)  # traffic flowing on v0001
        version = promote_new(swap_server, new_dir)
        expected = {"v0001": old_text, version: new_text}
        swapped = installed_at(swap_server, version)
        wait_for_count(traffic, traffic.completed + 8)
    assert not traffic.errors, traffic.errors[:3]
    replies = [r for seen in traffic.replies for r in seen]
    assert {r.version for r in replies} == {"v0001", version}
    for reply in replies:  # each reply came from the weights of the version it names
        assert reply.text == expected[reply.version], reply
    for seen in traffic.replies:  # each client moves forward once, never back
        assert [r.version for r in seen] == sorted(r.version for r in seen)
    # Requests were in flight on the old engine when the new one was installed,
    # and they finished there.
    late = [r for r in replies if r.version == "v0001" and r.ended > swapped]
    assert late, "no request was in flight on v0001 at the swap"
    # New requests report the new version in the body and the headers.
    resp = httpx.post(
        f"{swap_server.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {swap_server.keys.user}"},
        json={"model": "ratchet", "messages": ASK, "max_tokens": 4},
        timeout=60,
    )
    assert resp.json()["model_version"] == version
    assert resp.headers["X-Ratchet-Model-Version"] == version
    # The old engine was freed once its requests finished.
    deadline = time.monotonic() + 120
    while "v0001" not in [v for v, _ in swap_server.models.retired]:
        assert time.monotonic() < deadline, "the old engine was never freed"
        time.sleep(0.5)


def test_a_version_that_fails_to_load_keeps_the_old_one_serving(
    swap_server: ApiServer,
) -> None:
    serving = swap_server.served_version()
    broken = swap_server.root / f"broken-{uuid.uuid4().hex[:6]}"
    broken.mkdir()
    (broken / "config.json").write_text("{}")  # no weights, no tokenizer
    version = promote_new(swap_server, broken, gates_passed=False)
    deadline = time.monotonic() + 120
    while swap_server.models.last_error is None:
        assert time.monotonic() < deadline, "the failed load was never reported"
        time.sleep(0.5)
    assert swap_server.models.last_error.version == version
    assert swap_server.served_version() == serving
    ready = httpx.get(f"{swap_server.base_url}/readyz", timeout=30).json()
    assert ready["model_version"] == serving
    assert ready["last_swap_error"]["version"] == version
    reply = httpx.post(
        f"{swap_server.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {swap_server.keys.user}"},
        json={"model": "ratchet", "messages": ASK, "max_tokens": 4},
        timeout=60,
    )
    assert reply.status_code == 200 and reply.json()["model_version"] == serving
    metrics = httpx.get(f"{swap_server.base_url}/metrics", timeout=30).text
    assert f'ratchet_model_swap_failures_total{{version="{version}"}} 1.0' in metrics
