"""The demo's background processes (the API and the consumer): started with
a pidfile under ``$RATCHET_HOME/run/`` and a log under ``$RATCHET_HOME/logs/``
(so ``make stack-down`` stops them), reused when already running."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from infra.demo.steps import last_line

logger = logging.getLogger(__name__)


def ratchet_cmd(*args: str) -> list[str]:
    """``ratchet ARGS`` with this interpreter (works without the console script on PATH)."""
    return [sys.executable, "-m", "ratchet", *args]


@dataclass(frozen=True)
class Background:
    name: str
    run_dir: Path
    log_dir: Path

    @property
    def pidfile(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        """The running process's id, or None (a stale pidfile is removed)."""
        try:
            pid = int(self.pidfile.read_text())
            _reap(pid)  # a child of ours that exited is a zombie until reaped
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            self.pidfile.unlink(missing_ok=True)
            return None
        except PermissionError:
            return None
        return pid

    def start(self, cmd: list[str], env: dict[str, str]) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            out.write(f"\n$ {' '.join(cmd)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # outlives the demo; `make stack-down` stops it
            )
        self.pidfile.write_text(str(proc.pid))
        logger.info("%s started (pid %d, log %s)", self.name, proc.pid, self.log)
        return proc.pid

    def stop(self, timeout: float = 30.0) -> None:
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            _reap(pid)
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
            _reap(pid)
        self.pidfile.unlink(missing_ok=True)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def api_ready(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def wait_ready(
    service: Background,
    base_url: str,
    *,
    timeout: float,
    on_progress: Callable[[str], None] = lambda _: None,
) -> None:
    """Wait until the API answers /readyz; fail early if its process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api_ready(base_url):
            return
        if service.pid() is None:
            raise RuntimeError(f"the {service.name} process exited: {last_line(service.log)}")
        on_progress(last_line(service.log))
        time.sleep(1.0)
    raise RuntimeError(f"the {service.name} was not ready after {timeout:.0f} s")


def wait_alive(service: Background, seconds: float) -> None:
    """A process without a readiness endpoint: it must survive its start-up."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if service.pid() is None:
            raise RuntimeError(f"the {service.name} process exited: {last_line(service.log)}")
        time.sleep(0.5)
