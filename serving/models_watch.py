"""Hot swap: serve the registry's production version, follow it as it changes.

:class:`ModelManager` holds the current backend. ``lease()`` pins the backend a
request started on; a swap loads the new version in the background, switches
new requests to it, waits for the old version's leases to end (at most
``swap_drain_seconds``), then shuts the old backend down. A failed load keeps
the old version and is reported (``last_error``, metrics, log). With an empty
registry it serves ``settings.model`` as version ``base``.

The manager wakes on ``LISTEN ratchet_models`` and every
``registry_poll_seconds`` (LISTEN can miss notifications across reconnects).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import psycopg
from psycopg_pool import ConnectionPool

from serving.backends import Backend, make_backend
from serving.errors import ServiceUnavailable
from serving.settings import ServingSettings
from training.registry import NOTIFY_CHANNEL, get_production

logger = logging.getLogger(__name__)

BASE_VERSION = "base"
BackendFactory = Callable[[ServingSettings, str, str], Backend]


def _default_factory(settings: ServingSettings, path: str, version: str) -> Backend:
    return make_backend(settings, path=path, version=version)


@dataclass(frozen=True)
class SwapError:
    version: str
    path: str
    message: str
    at: float


@dataclass
class _Slot:
    backend: Backend
    leases: int = 0
    drained: asyncio.Event = field(default_factory=asyncio.Event)


class ModelManager:
    def __init__(
        self,
        settings: ServingSettings,
        pool: ConnectionPool | None,
        *,
        factory: BackendFactory = _default_factory,
        on_swap: Callable[[str], None] | None = None,
        on_swap_error: Callable[[SwapError], None] | None = None,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._factory = factory
        self._on_swap = on_swap
        self._on_swap_error = on_swap_error
        self._current: _Slot | None = None
        self._failed: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._retiring: set[asyncio.Task[None]] = set()
        self._swap_lock = asyncio.Lock()
        self.last_error: SwapError | None = None
        self.swaps = 0
        # (version, monotonic time) when each version started serving / was freed
        self.installed: list[tuple[str, float]] = []
        self.retired: list[tuple[str, float]] = []

    # ---- what requests use -------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._current is not None

    @property
    def version(self) -> str | None:
        return self._current.backend.version if self._current else None

    @property
    def current(self) -> Backend:
        if self._current is None:
            raise ServiceUnavailable("no model is loaded yet")
        return self._current.backend

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[Backend]:
        """The current backend, kept alive until the block exits (even across a swap)."""
        slot = self._current
        if slot is None:
            raise ServiceUnavailable("no model is loaded yet")
        slot.leases += 1
        try:
            yield slot.backend
        finally:
            slot.leases -= 1
            if slot.leases == 0:
                slot.drained.set()

    # ---- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Load the production version (or the base model) and start following the registry."""
        target = await asyncio.to_thread(self._production_target)
        version, path = target
        backend = self._factory(self._settings, path, version)
        await backend.start()
        self._install(backend)
        if self._settings.follow_registry and self._pool is not None:
            self._tasks.append(asyncio.create_task(self._poll_loop(), name="registry-poll"))
            self._tasks.append(asyncio.create_task(self._listen_loop(), name="registry-listen"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        for task in list(self._retiring):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._current is not None:
            slot, self._current = self._current, None
            await slot.backend.shutdown()

    def poke(self) -> None:
        """Check the registry now (tests, operators)."""
        self._wake.set()

    # ---- swapping ----------------------------------------------------------

    def _production_target(self) -> tuple[str, str]:
        if self._pool is None or not self._settings.follow_registry:
            return BASE_VERSION, str(self._settings.model)
        with self._pool.connection() as conn:
            prod = get_production(conn)
        if prod is None:
            return BASE_VERSION, str(self._settings.model)
        return prod.id, prod.path

    async def check_once(self) -> bool:
        """Swap if the production version differs from the one served; True if swapped."""
        async with self._swap_lock:
            version, path = await asyncio.to_thread(self._production_target)
            current = self._current.backend if self._current else None
            if current is not None and (current.version, current.path) == (version, path):
                return False
            if (version, path) in self._failed:
                return False
            logger.info("loading model version %s from %s", version, path)
            started = time.monotonic()
            backend = self._factory(self._settings, path, version)
            try:
                await backend.start()
            except Exception as exc:  # any load failure keeps the old version
                err = SwapError(version, path, f"{type(exc).__name__}: {exc}", time.time())
                self._failed.add((version, path))
                self.last_error = err
                logger.error(
                    "loading version %s failed, still serving %s: %s",
                    version,
                    current.version if current else None,
                    err.message,
                )
                with contextlib.suppress(Exception):
                    await backend.shutdown()
                if self._on_swap_error:
                    self._on_swap_error(err)
                return False
            self._install(backend)
            self.last_error = None
            logger.info(
                "now serving version %s (loaded in %.1f s)", version, time.monotonic() - started
            )
            return True

    def _install(self, backend: Backend) -> None:
        old, self._current = self._current, _Slot(backend)
        self.installed.append((backend.version, time.monotonic()))
        self.swaps += 1 if old is not None else 0
        if self._on_swap:
            self._on_swap(backend.version)
        if old is not None:
            task = asyncio.create_task(self._retire(old), name=f"retire-{old.backend.version}")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire(self, slot: _Slot) -> None:
        if slot.leases > 0:
            logger.info(
                "version %s: waiting for %d in-flight request(s)", slot.backend.version, slot.leases
            )
            slot.drained.clear()
            try:
                await asyncio.wait_for(slot.drained.wait(), self._settings.swap_drain_seconds)
            except TimeoutError:
                logger.warning(
                    "version %s: %d request(s) still running after %.0f s; shutting down anyway",
                    slot.backend.version,
                    slot.leases,
                    self._settings.swap_drain_seconds,
                )
        await slot.backend.shutdown()
        self.retired.append((slot.backend.version, time.monotonic()))
        logger.info("version %s freed", slot.backend.version)

    async def _poll_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings.registry_poll_seconds)
            self._wake.clear()
            try:
                await self.check_once()
            except Exception:  # outermost loop: log and keep following
                logger.exception("checking the model registry failed")

    async def _listen_loop(self) -> None:
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._settings.database_url, autocommit=True
                )
                async with conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self._wake.set()  # catch up on anything missed while not listening
                    async for note in conn.notifies():
                        logger.info("registry notification: %s", note.payload)
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # outermost loop: reconnect after a pause
                logger.warning("LISTEN %s failed (%s); retrying", NOTIFY_CHANNEL, exc)
                await asyncio.sleep(self._settings.registry_poll_seconds)
