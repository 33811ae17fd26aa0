"""Where ``make stack-up`` leaves the resolved service addresses, and how to read it."""

from __future__ import annotations

import os
from pathlib import Path


def stack_env_file() -> Path:
    """``$RATCHET_HOME/stack.env`` (default ``.ratchet/stack.env``); settings read it if present."""
    return Path(os.environ.get("RATCHET_HOME", ".ratchet")) / "stack.env"


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of ``path`` ({} when it does not exist)."""
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def write_env_file(path: Path, values: dict[str, str]) -> None:
    """Write ``values`` as sorted ``KEY=value`` lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k}={v}\n" for k, v in sorted(values.items())))
