"""Hot swap: serve the registry's production version, follow it as it changes.

:class:`ModelManager` holds the current backend. ``lease()`` pins the backend a
request started on; a swap loads the new version in the background, switches
new requests to it, waits for the old version's leases to end (at most
``swap_drain_seconds``), then shuts the old backend down. A failed load keeps
the old version and is reported (``last_error``, metrics, log). With an empty
registry it serves ``settings.model`` as version ``base``.

The registry's canary (a candidate marked for A/B drafts) is loaded beside
production as a second backend with leases of its own (``lease_canary()``). It
follows the registry the same way: a new canary replaces the old one, a cleared
canary drains and is freed, and a promoted canary becomes the production
backend without loading twice. A canary that fails to load is reported
(``last_canary_error``, ``on_swap_error`` with role ``canary``, log) and never
touches production; it is tried again once the registry names another canary
(or clears and re-marks it).

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
from typing import Literal

import psycopg
from psycopg_pool import ConnectionPool

from serving.backends import Backend, make_backend
from serving.cleanup import await_cancelled, close_quietly
from serving.errors import ServiceUnavailable
from serving.settings import ServingSettings
from training.registry import NOTIFY_CHANNEL, get_canary, get_production

logger = logging.getLogger(__name__)

BASE_VERSION = "base"
BackendFactory = Callable[[ServingSettings, str, str], Backend]
Target = tuple[str, str]  # (version, path)


def _default_factory(settings: ServingSettings, path: str, version: str) -> Backend:
    return make_backend(settings, path=path, version=version)


@dataclass(frozen=True)
class SwapError:
    version: str
    path: str
    message: str
    at: float
    role: Literal["production", "canary"] = "production"


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
        on_canary: Callable[[str | None], None] | None = None,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._factory = factory
        self._on_swap = on_swap
        self._on_swap_error = on_swap_error
        self._on_canary = on_canary
        self._current: _Slot | None = None
        self._canary: _Slot | None = None
        self._failed: set[Target] = set()
        self._canary_failed: Target | None = None  # the canary the registry names, unloadable
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._retiring: set[asyncio.Task[None]] = set()
        self._swap_lock = asyncio.Lock()
        self.last_error: SwapError | None = None
        self.last_canary_error: SwapError | None = None
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

    @property
    def canary_version(self) -> str | None:
        """The canary version loaded beside production, if any."""
        return self._canary.backend.version if self._canary else None

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[Backend]:
        """The current backend, kept alive until the block exits (even across a swap)."""
        slot = self._current
        if slot is None:
            raise ServiceUnavailable("no model is loaded yet")
        async with self._hold(slot) as backend:
            yield backend

    @contextlib.asynccontextmanager
    async def lease_canary(self) -> AsyncIterator[Backend | None]:
        """The canary backend (None when no canary is loaded), kept alive like ``lease``."""
        slot = self._canary
        if slot is None:
            yield None
            return
        async with self._hold(slot) as backend:
            yield backend

    @staticmethod
    @contextlib.asynccontextmanager
    async def _hold(slot: _Slot) -> AsyncIterator[Backend]:
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
        self._install(_Slot(backend))
        if self._settings.follow_registry and self._pool is not None:
            self._wake.set()  # load the canary, if any, in the background
            self._tasks.append(asyncio.create_task(self._poll_loop(), name="registry-poll"))
            self._tasks.append(asyncio.create_task(self._listen_loop(), name="registry-listen"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            await await_cancelled("registry task", task)
        self._tasks.clear()
        for task in list(self._retiring):
            task.cancel()
            await await_cancelled("retiring engine", task)
        for slot in (self._canary, self._current):
            if slot is not None:
                await slot.backend.shutdown()
        self._canary = self._current = None

    def poke(self) -> None:
        """Check the registry now (tests, operators)."""
        self._wake.set()

    # ---- swapping ----------------------------------------------------------

    def _production_target(self) -> Target:
        return self._targets()[0]

    def _targets(self) -> tuple[Target, Target | None]:
        """(production, canary) as the registry names them now."""
        base = (BASE_VERSION, str(self._settings.model))
        if self._pool is None or not self._settings.follow_registry:
            return base, None
        with self._pool.connection() as conn:
            prod = get_production(conn)
            canary = get_canary(conn)
        return (
            (prod.id, prod.path) if prod else base,
            (canary.id, canary.path) if canary else None,
        )

    async def check_once(self) -> bool:
        """Follow the registry: swap production if it changed (True if swapped), then
        load, replace or free the canary."""
        async with self._swap_lock:
            production, canary = await asyncio.to_thread(self._targets)
            swapped = await self._check_production(*production)
            await self._check_canary(canary)
            return swapped

    async def _check_production(self, version: str, path: str) -> bool:
        current = self._current.backend if self._current else None
        if current is not None and (current.version, current.path) == (version, path):
            return False
        if (version, path) in self._failed and not self._remote_unmanaged:
            return False
        if self._canary is not None and _target(self._canary) == (version, path):
            # The canary was promoted: it is loaded already, and keeps its leases.
            slot, self._canary = self._canary, None
            self._install(slot)
            self.last_error = None
            self._canary_changed()
            logger.info("now serving version %s (the canary, promoted)", version)
            return True
        logger.info("loading model version %s from %s", version, path)
        started = time.monotonic()
        backend = await self._load(version, path, "production")
        if backend is None:
            self._failed.add((version, path))
            return False
        self._install(_Slot(backend))
        self.last_error = None
        logger.info(
            "now serving version %s (loaded in %.1f s)", version, time.monotonic() - started
        )
        return True

    async def _check_canary(self, target: Target | None) -> None:
        if self._canary_failed is not None and self._canary_failed != target:
            self._canary_failed = None  # the registry moved on: a re-marked canary is retried
            self.last_canary_error = None
        loaded = _target(self._canary) if self._canary else None
        if target == loaded or (target is not None and target == self._canary_failed):
            return
        if self._canary is not None:
            logger.info("canary %s is no longer the registry's canary; freeing it", loaded)
            old, self._canary = self._canary, None
            self._retire_later(old)
            self._canary_changed()
        if target is None:
            return
        version, path = target
        logger.info("loading canary version %s from %s", version, path)
        started = time.monotonic()
        backend = await self._load(version, path, "canary")
        if backend is None:
            self._canary_failed = target
            return
        self._canary = _Slot(backend)
        self.last_canary_error = None
        self._canary_changed()
        logger.info(
            "canary %s ready beside %s (loaded in %.1f s)",
            version,
            self.version,
            time.monotonic() - started,
        )

    async def _load(
        self, version: str, path: str, role: Literal["production", "canary"]
    ) -> Backend | None:
        """A started backend, or None after reporting why it failed to load."""
        backend = self._factory(self._settings, path, version)
        try:
            await backend.start()
        except Exception as exc:  # any load failure keeps what is served
            err = SwapError(version, path, f"{type(exc).__name__}: {exc}", time.time(), role)
            if role == "canary":
                self.last_canary_error = err
            else:
                self.last_error = err
            logger.error(
                "loading %s version %s failed, still serving %s (canary %s): %s",
                role,
                version,
                self.version,
                self.canary_version,
                err.message,
            )
            await close_quietly("failed engine shutdown", backend.shutdown)
            if self._on_swap_error:
                self._on_swap_error(err)
            return None
        return backend

    @property
    def _remote_unmanaged(self) -> bool:
        """Servers run by someone else (a Deployment being rolled) may serve a version
        later: a failed load is retried at each check (one GET /v1/models)."""
        return self._settings.backend == "vllm-server" and not self._settings.managed

    def _install(self, slot: _Slot) -> None:
        old, self._current = self._current, slot
        self.installed.append((slot.backend.version, time.monotonic()))
        self.swaps += 1 if old is not None else 0
        if self._on_swap:
            self._on_swap(slot.backend.version)
        if old is not None:
            self._retire_later(old)

    def _canary_changed(self) -> None:
        if self._on_canary:
            self._on_canary(self.canary_version)

    def _retire_later(self, slot: _Slot) -> None:
        task = asyncio.create_task(self._retire(slot), name=f"retire-{slot.backend.version}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, slot: _Slot) -> None:
        try:
            await self._drain(slot)
        finally:  # also when close() cancels the wait: the engine is stopped, not leaked
            await slot.backend.shutdown()
        self.retired.append((slot.backend.version, time.monotonic()))
        logger.info("version %s freed", slot.backend.version)

    async def _drain(self, slot: _Slot) -> None:
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


def _target(slot: _Slot) -> Target:
    return slot.backend.version, slot.backend.path
