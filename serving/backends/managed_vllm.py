"""``--backend vllm-server --managed``: blue/green vLLM OpenAI servers run by Ratchet
on one host.

Each backend owns one ``python -m vllm.entrypoints.openai.api_server`` process
for one registry version, on a free loopback port, with
``--served-model-name <version>``. ``start()`` spawns it and returns once its
``/v1/models`` lists that version (the routing rule of
:mod:`serving.backends.vllm_server` then holds); ``shutdown()`` stops it
(SIGTERM, then SIGKILL of its process group). The model manager does the rest:
on a promotion it starts the new version's server beside the old one, switches
new requests once it answers, drains the old server's requests, then shuts it
down; the canary is one more server; a rollback is a promotion backwards.
"""

from __future__ import annotations

import asyncio
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
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        logger.info(
            "started vLLM server for %s on port %d (pid %d, log %s)",
            self.version,
            self._port,
            self._proc.pid,
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
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its engine processes
        try:
            await asyncio.to_thread(proc.wait, STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            logger.warning("vLLM server for %s ignored SIGTERM; killing it", self.version)
            os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.to_thread(proc.wait, STOP_GRACE_S)
        logger.info("stopped vLLM server for %s (pid %d)", self.version, proc.pid)
