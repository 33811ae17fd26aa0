"""``--backend vllm-server --managed``: blue/green vLLM OpenAI servers run by Ratchet
on one host.

Each backend owns one ``python -m vllm.entrypoints.openai.api_server`` process
for one registry version, on a free loopback port, with
``--served-model-name <version>``. ``start()`` spawns it and returns once its
``/v1/models`` lists that version (the routing rule of
:mod:`serving.backends.vllm_server` then holds); ``shutdown()`` stops it: SIGTERM
to its process group (the API server, its EngineCore and worker processes), and
it returns only once no process of the group runs, SIGKILL after
``STOP_GRACE_S``. On vLLM CPU builds each server gets
``VLLM_CPU_OMP_THREADS_BIND=<managed_cpu_bind>`` (``nobind`` by default): vLLM's
``auto`` binding pins every server's worker process, from its start (an
LD_PRELOADed libgomp with ``GOMP_CPU_AFFINITY``), to the same cores (all but
the last), so a new version's server started beside a busy one got a share of
one core on a 2-core host and took many minutes to start.

The model manager does the rest: on a promotion it starts the new version's
server beside the old one, switches new requests once it answers, drains the
old server's requests, then shuts it down; the canary is one more server, and
a promoted canary's server becomes production as it runs; a rollback is a
promotion backwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from serving.backends.machine import engine_dtype, engine_eager
from serving.backends.vllm_server import VLLMServerBackend
from serving.settings import ServingSettings

logger = logging.getLogger(__name__)

STOP_GRACE_S = 30.0


def free_loopback_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(settings: ServingSettings, path: str, version: str, port: int) -> list[str]:
    """The vLLM OpenAI server's command line for ``version`` at ``path``."""
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        path,
        "--served-model-name",
        version,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        engine_dtype(settings.dtype),
        "--max-model-len",
        str(settings.max_model_len),
        "--gpu-memory-utilization",
        str(settings.gpu_memory_utilization),
        "--disable-log-stats",
    ]
    if engine_eager(settings.enforce_eager):
        command.append("--enforce-eager")
    kv_bytes = _kv_cache_bytes(settings.kv_cache_gib)
    if kv_bytes is not None:
        command += ["--kv-cache-memory-bytes", str(kv_bytes)]
    return command + list(settings.managed_server_args)


def _kv_cache_bytes(gib: float | None) -> int | None:
    from serving.backends.vllm_engine import _kv_cache_bytes as engine_kv_bytes

    return engine_kv_bytes(gib)


class ManagedVLLMServerBackend(VLLMServerBackend):
    """One vLLM OpenAI server process per version, started and stopped here."""

    name = "vllm-server"
    stop_grace_s = STOP_GRACE_S  # SIGTERM to SIGKILL, and SIGKILL to giving up

    def __init__(self, settings: ServingSettings, *, path: str, version: str) -> None:
        self._port = free_loopback_port()
        super().__init__(
            settings, path=path, version=version, base_url=f"http://127.0.0.1:{self._port}"
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(settings.home) / "logs" / f"vllm-{version}-{self._port}.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def start(self) -> None:
        if not Path(self.path).is_dir():
            raise FileNotFoundError(f"model directory {self.path} does not exist")
        command = server_command(self._settings, str(self.path), self.version, self._port)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": self._settings.managed_cpu_bind}
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
        logger.info(
            "started vLLM server for %s on port %d (pid %d, CPU binding %s, log %s)",
            self.version,
            self._port,
            self._proc.pid,
            self._settings.managed_cpu_bind,
            self.log_path,
        )
        try:
            await self._wait_serving(started)
            await super().start()
        except BaseException:
            await self._stop()
            raise
        logger.info(
            "vLLM server for %s ready on port %d in %.1f s",
            self.version,
            self._port,
            time.monotonic() - started,
        )

    async def _wait_serving(self, started: float) -> None:
        """Until ``/v1/models`` lists the version (the process exiting or the
        timeout raises, with the log's tail)."""
        assert self._proc is not None
        deadline = started + self._settings.managed_start_timeout_s
        async with httpx.AsyncClient(base_url=self._base, timeout=5) as client:
            while True:
                if self._proc.poll() is not None:
                    raise RuntimeError(
                        f"vLLM server for {self.version} exited with {self._proc.returncode}:"
                        f" {self._log_tail()}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"vLLM server for {self.version} not serving after"
                        f" {self._settings.managed_start_timeout_s:.0f} s: {self._log_tail()}"
                    )
                try:
                    resp = await client.get("/models")
                    if resp.status_code == 200 and any(
                        m.get("id") == self.version for m in resp.json().get("data", [])
                    ):
                        return
                except (httpx.HTTPError, ValueError):
                    pass  # not listening yet
                await asyncio.sleep(0.5)

    def _log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError as exc:
            return f"(no log: {exc})"

    async def shutdown(self) -> None:
        await super().shutdown()
        await self._stop()

    async def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            await stop_process_group(proc, f"vLLM server for {self.version}", self.stop_grace_s)


async def stop_process_group(proc: subprocess.Popen[bytes], what: str, grace_s: float) -> bool:
    """Stop the process group that ``proc`` leads (started with
    ``start_new_session``): a vLLM server, its EngineCore and its workers. SIGTERM,
    then SIGKILL after ``grace_s``; returns once no process of the group runs (True),
    so the next server never starts beside a dying one, or False after reporting a
    group that even SIGKILL did not end."""
    pgid = proc.pid
    _signal_group(pgid, signal.SIGTERM)
    if not await _group_gone(proc, pgid, grace_s):
        logger.warning(
            "%s (process group %d) still running %.0f s after SIGTERM; killing it",
            what,
            pgid,
            grace_s,
        )
        _signal_group(pgid, signal.SIGKILL)
        if not await _group_gone(proc, pgid, grace_s):
            logger.error("%s: process group %d survived SIGKILL", what, pgid)
            return False
    logger.info("stopped %s (process group %d)", what, pgid)
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(pgid, sig)


async def _group_gone(proc: subprocess.Popen[bytes], pgid: int, timeout: float) -> bool:
    """Wait until no process of group ``pgid`` runs (True), or ``timeout`` (False)."""
    deadline = time.monotonic() + timeout
    while True:
        proc.poll()  # reap the leader, our child
        if not await asyncio.to_thread(group_running, pgid):
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.2)


def group_running(pgid: int, proc_root: Path = Path("/proc")) -> bool:
    """Whether a process of group ``pgid`` is alive. Zombies do not count: an
    EngineCore's worker orphaned to an init that does not reap stays one."""
    if not proc_root.is_dir():  # no procfs: a zombie then counts as alive
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc_root.glob("[0-9]*/stat"):
        try:  # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue  # the process exited while we looked
        if int(pgrp) == pgid and state not in ("Z", "X"):
            return True
    return False
