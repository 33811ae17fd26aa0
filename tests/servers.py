"""The one way tests start the API server: ``build_app`` under a real uvicorn in a
background thread (``ServerThread``), on a database of the test's own
(``new_database``), driven over HTTP with the official clients.

``start_api`` / ``running_api`` start one from settings (``serving_settings`` holds
the test defaults); ``registry_server`` adds what the hot-swap, canary, console and
``vllm-server`` tests share: the tiny model registered as production (v0001) and,
when asked, the real feedback consumer storing what the server logs."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import psycopg
import uvicorn
from fastapi import FastAPI

from feedback.consumer import FeedbackConsumer
from feedback.settings import FeedbackSettings
from serving.app import build_app
from serving.http_protocol import CoalescingHttpToolsProtocol
from serving.settings import ServingSettings
from training import registry
from training.base_model import weights_digest


class ServerThread:
    """Runs ``app`` on 127.0.0.1 in a thread with its own event loop.

    The listening socket is bound here, before the app's startup loads an engine,
    so nothing that starts meanwhile can take the port."""

    def __init__(self, app: FastAPI, *, port: int | None = None) -> None:
        self.app = app
        self.socket = socket.socket()
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", port or 0))
        self.port = int(self.socket.getsockname()[1])
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            http=CoalescingHttpToolsProtocol,  # as `ratchet serve` does
        )
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, name=f"uvicorn-{self.port}", daemon=True)
        self.error: BaseException | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.server.serve(sockets=[self.socket]))
        except BaseException as exc:  # reported by start()
            self.error = exc
        finally:
            loop.close()

    def start(self, timeout: float = 240.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {self.error!r}")
            time.sleep(0.1)
        return self

    def call(self, coro, timeout: float = 120.0):  # type: ignore[no-untyped-def]
        """Run ``coro`` on the server's loop (to reach app objects safely)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=120)
        self.socket.close()


@dataclass
class Keys:
    user: str
    user2: str
    operator: str


def make_keys(database_url: str) -> Keys:
    from serving.auth import create_key

    with psycopg.connect(database_url) as conn:
        return Keys(
            user=create_key(conn, user_id="alice", role="user"),
            user2=create_key(conn, user_id="bob", role="user"),
            operator=create_key(conn, user_id="olga", role="operator"),
        )


def new_database(cluster, template: str) -> str:  # type: ignore[no-untyped-def]
    name = f"s_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return str(cluster.url_for(name))


def serving_settings(
    database_url: str, kafka: str, home: Path, model: Path, **kw
) -> ServingSettings:  # type: ignore[no-untyped-def]
    """The tests' server settings: the vLLM engine on ``model``, short replies, a
    fast registry poll and rate limits no test reaches unless it sets its own."""
    base = dict(
        database_url=database_url,
        kafka_bootstrap_servers=kafka,
        home=home,
        model=model,
        backend="vllm",
        max_model_len=512,
        dtype="float32",
        default_max_tokens=16,
        registry_poll_seconds=1.0,
        rate_limit_per_minute=6000,
        rate_limit_burst=1000,
        message_id_secret="test-secret",
    )
    base.update(kw)
    return ServingSettings(**base)


def wait_until(check: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.2)


def add_candidate(database_url: str, path: Path, *, gates_passed: bool = True) -> str:
    """``path`` registered as a training cycle registers a version (a candidate,
    child of production); its id."""
    digest = weights_digest(path) if any(path.glob("*.safetensors")) else "0" * 64
    with psycopg.connect(database_url, autocommit=True) as conn:
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
    return str(version)


@dataclass
class ApiServer:
    """A running API server: its thread, its settings and what tests reach it with."""

    thread: ServerThread
    settings: ServingSettings
    root: Path | None = None  # a directory of the test's own (weights, homes, logs)
    clock: Callable[[], float] = time.monotonic  # the rate limits' and caps' clock

    @property
    def base_url(self) -> str:
        return self.thread.base_url

    @property
    def database_url(self) -> str:
        return self.settings.database_url

    @property
    def state(self):  # type: ignore[no-untyped-def]
        return self.thread.app.state.ratchet

    @property
    def models(self):  # type: ignore[no-untyped-def]
        """The server's ``ModelManager`` (production, canary, swaps)."""
        return self.state.models

    @cached_property
    def keys(self) -> Keys:
        """API keys of alice and bob (users) and olga (operator), made on first use."""
        return make_keys(self.database_url)

    def openai_client(self) -> openai.OpenAI:
        """The ``openai`` client as alice, without retries (a failure is the test's)."""
        return openai.OpenAI(
            base_url=self.base_url + "/v1", api_key=self.keys.user, max_retries=0, timeout=120
        )

    def in_database(self, action: Callable[[psycopg.Connection], Any]) -> Any:
        """``action`` on an autocommit connection to the server's database; its result."""
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            return action(conn)

    def served_version(self) -> str:
        """The version ``/v1/models`` lists (what new requests get)."""
        resp = httpx.get(
            f"{self.base_url}/v1/models",
            headers={"Authorization": f"Bearer {self.keys.user}"},
            timeout=30,
        )
        return str(resp.json()["data"][0]["id"])

    def wait_until_serving(self, version: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while (served := self.served_version()) != version:
            assert time.monotonic() < deadline, f"still serving {served}, not {version}"
            time.sleep(0.5)

    def add_candidate(self, path: Path, *, gates_passed: bool = True) -> str:
        """A version as a training cycle registers it (child of production); its id."""
        return add_candidate(self.database_url, path, gates_passed=gates_passed)

    def stored_versions(self, message_ids: list[str], timeout: float = 60) -> dict[str, str]:
        """The ``model_version`` the store holds for each reply (once the consumer stored it)."""
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            while True:
                rows = conn.execute(
                    "SELECT id, model_version FROM messages WHERE id = ANY(%s)", (message_ids,)
                ).fetchall()
                if len(rows) == len(set(message_ids)):
                    return dict(rows)
                assert time.monotonic() < deadline, f"stored {len(rows)} of {len(message_ids)}"
                time.sleep(0.2)

    def stop(self) -> None:
        self.thread.stop()


Server = TypeVar("Server", bound=ApiServer)


def start_api(
    settings: ServingSettings,
    *,
    clock: Callable[[], float] = time.monotonic,
    root: Path | None = None,
    kind: type[Server] = ApiServer,  # type: ignore[assignment]
    timeout: float = 240.0,
) -> Server:
    """``build_app(settings)`` serving on a free loopback port, started."""
    thread = ServerThread(build_app(settings, clock=clock)).start(timeout)
    return kind(thread, settings, root, clock)


@contextlib.contextmanager
def running_api(
    settings: ServingSettings,
    *,
    kind: type[Server] = ApiServer,  # type: ignore[assignment]
    **kw: Any,
) -> Iterator[Server]:
    """``start_api``, stopped when the block ends."""
    server = start_api(settings, kind=kind, **kw)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def consumer_running(settings: FeedbackSettings, name: str) -> Iterator[FeedbackConsumer]:
    """The real feedback consumer (``ratchet consume``) in a thread, stopped at the end."""
    consumer = FeedbackConsumer(settings)
    consuming = threading.Thread(target=consumer.run, name=name, daemon=True)
    consuming.start()
    try:
        yield consumer
    finally:
        consumer.stop()
        consuming.join(30)


@contextlib.contextmanager
def registry_server(
    pg_cluster,  # type: ignore[no-untyped-def]
    template_db: str,
    model: Path,
    root: Path,
    bootstrap: str,
    *,
    consume: bool = False,
    **settings: Any,
) -> Iterator[ApiServer]:
    """The API (with ``settings``) on a fresh database whose production version is
    ``model`` (v0001); with ``consume``, a feedback consumer storing what it logs."""
    db = new_database(pg_cluster, template_db)
    with psycopg.connect(db, autocommit=True) as conn:
        registry.ensure_base(conn, str(model), weights_digest(model))
    serving = serving_settings(db, bootstrap, root / "home", model, **settings)
    with contextlib.ExitStack() as stack:
        if consume:
            consumer = FeedbackSettings(
                database_url=db,
                kafka_bootstrap_servers=bootstrap,
                home=root / "consumer-home",
                consumer_group=f"server-tests-{uuid.uuid4().hex[:8]}",
                message_id_secret=serving.message_id_secret,
            )
            stack.enter_context(consumer_running(consumer, "server-tests-consumer"))
        yield stack.enter_context(running_api(serving, root=root))
