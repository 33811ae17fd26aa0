"""`make serve` and `make consume` run something (issue 17: both were declared
with no commands, "Nothing to be done"). Checked with `make -n`, which prints
the commands without running them."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("target", "command"), [("serve", "serve"), ("consume", "consume")])
def test_make_target_runs_the_ratchet_command(target: str, command: str) -> None:
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "Nothing to be done" not in out
    last = shlex.split(out.strip().splitlines()[-1])
    assert last[0].endswith("/ratchet") and last[1] == command, out
    # the arguments it passes are ones the command takes
    help_run = subprocess.run(
        [sys.executable, "-m", "serving.cli", *last[1:], "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert help_run.returncode == 0, help_run.stderr
