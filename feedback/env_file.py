"""Where ``make stack-up`` leaves the resolved service addresses."""

from __future__ import annotations

import os
from pathlib import Path


def stack_env_file() -> Path:
    """``$RATCHET_HOME/stack.env`` (default ``.ratchet/stack.env``); settings read it if present."""
    return Path(os.environ.get("RATCHET_HOME", ".ratchet")) / "stack.env"
