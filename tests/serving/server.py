"""A real uvicorn server in a background thread, for tests that drive the API
over HTTP with the official clients."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from dataclasses import dataclass

import psycopg
import uvicorn
from fastapi import FastAPI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """Runs ``app`` on 127.0.0.1 in a thread with its own event loop."""

    def __init__(self, app: FastAPI, *, port: int | None = None) -> None:
        self.app = app
        self.port = port or free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
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
            loop.run_until_complete(self.server.serve())
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
