"""Hot swap on the real vLLM engine: serving follows the registry's production
version, loads the new weights in the background, moves new requests over,
lets in-flight ones finish on the old engine, then frees it; a version that
fails to load leaves the old one serving and is reported."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import psycopg
import pytest

from serving.app import build_app
from tests.serving.conftest import serving_settings
from tests.serving.server import Keys, ServerThread, make_keys, new_database
from training import registry
from training.base_model import weights_digest

ASK = [{"role": "user", "content": "Tell me about the travel policy, in detail."}]


@dataclass
class SwapServer:
    base_url: str
    database_url: str
    keys: Keys
    thread: ServerThread
    root: Path

    @property
    def models(self):  # type: ignore[no-untyped-def]
        return self.thread.app.state.ratchet.models

    def served(self) -> str:
        resp = httpx.get(
            f"{self.base_url}/v1/models",
            headers={"Authorization": f"Bearer {self.keys.user}"},
            timeout=30,
        )
        return str(resp.json()["data"][0]["id"])

    def wait_for(self, version: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while self.served() != version:
            assert time.monotonic() < deadline, f"still serving {self.served()}, not {version}"
            time.sleep(0.5)

    def register(self, path: Path, *, gates_passed: bool = True) -> str:
        """A trained version as the cycle registers it (candidate), then promoted."""
        digest = weights_digest(path) if any(path.glob("*.safetensors")) else "0" * 64
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            production = registry.get_production(conn)
            with conn.transaction():
                version = registry.next_version_id(conn)
                registry.register_version(
                    conn,
                    version_id=version,
                    path=str(path),
                    weights_sha256=digest,
                    parent_id=production.id if production else None,
                    training_run_id=None,
                    metrics={},
                    gate_report={"passed": gates_passed, "gates": {}},
                    gates_passed=gates_passed,
                    actor="test",
                )
            registry.promote(
                conn, version, actor="test", reason="hot swap test", force=not gates_passed
            )
        return version


@pytest.fixture(scope="module")
def swap_server(pg_cluster, template_db, kafka_bootstrap, tiny_model_dir, tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("swap")
    db = new_database(pg_cluster, template_db)
    with psycopg.connect(db, autocommit=True) as conn:
        registry.ensure_base(conn, str(tiny_model_dir), weights_digest(tiny_model_dir))
    settings = serving_settings(db, kafka_bootstrap, root / "home", tiny_model_dir)
    thread = ServerThread(build_app(settings)).start()
    yield SwapServer(thread.base_url, db, make_keys(db), thread, root)
    thread.stop()


@dataclass
class Traffic:
    """Threads streaming chat requests back to back until stopped."""

    base_url: str
    key: str
    threads: int = 4
    versions: list[list[str]] = field(default_factory=list)  # per thread, in order
    errors: list[str] = field(default_factory=list)
    completed: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _loop(self, seen: list[str]) -> None:
        client = openai.OpenAI(base_url=self.base_url + "/v1", api_key=self.key, max_retries=0)
        while not self._stop.is_set():
            try:
                chunks = list(
                    client.chat.completions.create(
                        model="ratchet", messages=ASK, max_tokens=48, stream=True
                    )
                )
                versions = {c.model_extra["model_version"] for c in chunks}
                finished = [c for c in chunks if c.choices and c.choices[0].finish_reason]
                if len(versions) != 1 or len(finished) != 1:
                    raise AssertionError(f"versions {versions}, {len(finished)} finish chunks")
                seen.append(versions.pop())
                with self._lock:
                    self.completed += 1
            except Exception as exc:  # recorded; the test fails on any
                with self._lock:
                    self.errors.append(f"{type(exc).__name__}: {exc}")

    def __enter__(self) -> Traffic:
        self._workers = []
        for _ in range(self.threads):
            seen: list[str] = []
            self.versions.append(seen)
            worker = threading.Thread(target=self._loop, args=(seen,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(120)


def test_a_swap_under_streaming_traffic_loses_no_request(swap_server: SwapServer) -> None:
    assert swap_server.served() == "v0001"
    new_dir = swap_server.root / "v0002-weights"
    shutil.copytree(swap_server.models.current.path, new_dir)
    with Traffic(swap_server.base_url, swap_server.keys.user) as traffic:
        time.sleep(2)  # traffic flowing on v0001
        version = swap_server.register(new_dir)
        swap_server.wait_for(version)
        before = traffic.completed
        deadline = time.monotonic() + 60
        while traffic.completed < before + 8 and time.monotonic() < deadline:
            time.sleep(0.2)
    assert not traffic.errors, traffic.errors[:3]
    flat = [v for seen in traffic.versions for v in seen]
    assert "v0001" in flat and version in flat
    for seen in traffic.versions:  # each client moves forward once, never back
        assert seen == sorted(seen), seen
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
    swap_server: SwapServer,
) -> None:
    serving = swap_server.served()
    broken = swap_server.root / f"broken-{uuid.uuid4().hex[:6]}"
    broken.mkdir()
    (broken / "config.json").write_text("{}")  # no weights, no tokenizer
    version = swap_server.register(broken, gates_passed=False)
    deadline = time.monotonic() + 120
    while swap_server.models.last_error is None:
        assert time.monotonic() < deadline, "the failed load was never reported"
        time.sleep(0.5)
    assert swap_server.models.last_error.version == version
    assert swap_server.served() == serving
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
