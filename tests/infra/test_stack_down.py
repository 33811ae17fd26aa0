"""``make stack-down`` waits for the processes it stops (``infra.local.stack._stop``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from infra.local.stack import _alive, _stop

# Exits one second after SIGTERM, like an API flushing its producer; the last thing it
# does is write the file named by argv[1] (proof that its shutdown ran to the end).
SLOW_EXIT = (
    "import pathlib, signal, sys, time\n"
    "def bye(*a):\n"
    "    time.sleep(1)\n"
    "    pathlib.Path(sys.argv[1]).write_text('flushed')\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, bye)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)
IGNORES_TERM = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def _start(code: str, pidfile: Path, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    pidfile.write_text(str(proc.pid))
    return proc


def test_stop_waits_for_the_process_to_exit(tmp_path: Path) -> None:
    pidfile = tmp_path / "api.pid"
    flushed = tmp_path / "flushed"
    proc = _start(SLOW_EXIT, pidfile, str(flushed))
    _stop(pidfile, "api", timeout=30)
    # It returned only after the process finished its shutdown (not on a clock).
    assert flushed.read_text() == "flushed"
    assert not _alive(proc.pid)
    assert proc.wait(5) == 0  # a clean exit, not the SIGKILL fallback
    assert not pidfile.exists()


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    pidfile = tmp_path / "consumer.pid"
    proc = _start(IGNORES_TERM, pidfile)
    _stop(pidfile, "consumer", timeout=1)
    assert proc.wait(5) == -9
    assert not _alive(proc.pid)
    assert not pidfile.exists()


def test_stop_with_a_stale_pidfile(tmp_path: Path) -> None:
    pidfile = tmp_path / "api.pid"
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    pidfile.write_text(str(proc.pid))
    _stop(pidfile, "api")
    assert not pidfile.exists()
