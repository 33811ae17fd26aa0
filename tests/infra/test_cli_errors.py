"""The CLI names the problem (the setting and the address) instead of a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def ratchet(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serving.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_unreachable_database_names_the_setting_and_address() -> None:
    done = ratchet("db", "migrate", DATABASE_URL="postgresql://postgres@127.0.0.1:1/nowhere")
    assert done.returncode == 2
    assert done.stderr.startswith("ratchet db: cannot reach the database (DATABASE_URL)")
    assert '"127.0.0.1", port 1' in done.stderr
    assert "Traceback" not in done.stderr


def test_base_model_directory_without_a_model_says_so(tmp_path: Path) -> None:
    done = ratchet("model", "bootstrap", RATCHET_BASE_MODEL=str(tmp_path))
    assert done.returncode == 2
    assert f"RATCHET_BASE_MODEL={tmp_path} has no config.json" in done.stderr
    assert "Traceback" not in done.stderr
