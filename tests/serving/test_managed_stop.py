"""Stopping a managed vLLM server stops its whole process group (the API server,
its EngineCore, its workers) before returning: real process groups stand in for
the server, with children that outlive their leader or ignore SIGTERM, as a
dying vLLM server's processes can. Also: the CPU binding the servers get."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.backends.managed_vllm import (
    ManagedVLLMServerBackend,
    group_running,
    stop_process_group,
)
from tests.servers import serving_settings

# A child that ignores SIGTERM and sleeps: an EngineCore stuck in its shutdown.
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"


def _group(leader: str, tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A new process group: a leader running ``leader`` after starting a stubborn
    child, whose pid it writes to a file; returns the leader and the child's pid."""
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, pathlib\n"
        f"child = subprocess.Popen([sys.executable, '-c', {STUBBORN!r}])\n"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(child.pid))\n" + leader
    )
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the group's child did not start"
        time.sleep(0.05)
    return proc, int(pid_file.read_text())


def test_a_child_that_outlives_its_leader_is_waited_for_and_killed(tmp_path: Path) -> None:
    # The leader exits at once (as vLLM's API server does on SIGTERM), its child stays.
    proc, child = _group("import signal, time; time.sleep(300)", tmp_path)
    assert group_running(proc.pid)
    stopped = asyncio.run(stop_process_group(proc, "test group", grace_s=1.0))
    assert stopped
    assert proc.poll() is not None
    assert not group_running(proc.pid)
    assert not _alive(child)


def test_a_group_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    proc, child = _group(STUBBORN, tmp_path)  # the leader ignores SIGTERM too
    started = time.monotonic()
    assert asyncio.run(stop_process_group(proc, "test group", grace_s=1.0))
    assert time.monotonic() - started >= 1.0  # it waited for SIGTERM first
    assert not group_running(proc.pid) and not _alive(child)


def test_a_group_already_gone_is_stopped(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    proc.wait(60)
    assert not group_running(proc.pid)
    assert asyncio.run(stop_process_group(proc, "test group", grace_s=1.0))


def test_the_cpu_binding_setting(tmp_path: Path) -> None:
    """vLLM's default CPU binding (auto) pins every server's worker to the same cores;
    managed servers get nobind unless told otherwise (the topology test reads it in a
    real server's log), and a value vLLM would not parse is refused at start-up."""
    settings = serving_settings(
        "postgresql://unused",
        "unused:9092",
        tmp_path,
        tmp_path,
        backend="vllm-server",
        managed=True,
    )
    assert settings.managed_cpu_bind == "nobind"
    for ok in ("auto", "0-3", "0,2,4|1,3,5"):
        serving_settings(
            "postgresql://unused", "unused:9092", tmp_path, tmp_path, managed_cpu_bind=ok
        )
    with pytest.raises(ValidationError):
        serving_settings(
            "postgresql://unused", "unused:9092", tmp_path, tmp_path, managed_cpu_bind="all"
        )
    backend = ManagedVLLMServerBackend(settings, path=str(tmp_path), version="v0001")
    assert backend.pid is None  # nothing runs before start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
