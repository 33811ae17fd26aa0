"""Benchmark helpers: the model under test, percentiles, a rich results table,
and ``save_json`` into ``.ratchet/bench/``.

Benchmarks print figures and ratios against a baseline measured in the same
run; they never assert wall-clock limits. ``RATCHET_BENCH_MODEL=base`` runs
them on ``models/base`` (SmolLM2-135M) instead of the tiny test model."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO / ".ratchet" / "bench"


@pytest.fixture(scope="session")
def bench_model(tiny_model_dir: Path) -> Path:
    """The model directory benchmarked: the tiny model, or models/base on request."""
    choice = os.environ.get("RATCHET_BENCH_MODEL", "tiny")
    if choice == "tiny":
        return tiny_model_dir
    if choice == "base":
        path = REPO / "models" / "base"
        if not (path / "config.json").is_file():
            pytest.skip("models/base is missing: run `make bootstrap` first")
        return path
    raise pytest.UsageError(f"RATCHET_BENCH_MODEL must be 'tiny' or 'base', not {choice!r}")


def on_base_model() -> bool:
    """True when the run uses models/base (benchmarks then do less work)."""
    return os.environ.get("RATCHET_BENCH_MODEL", "tiny") == "base"


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100, linear interpolation); NaN for no values."""
    return float(np.percentile(values, q)) if len(values) else float("nan")


def ratio(a: float, b: float) -> float:
    """``a / b``, NaN when ``b`` is zero."""
    return a / b if b else float("nan")


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """One results table on the terminal (run pytest with ``-s`` to see it)."""
    table = Table(title=title, title_justify="left")
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    Console(width=max(100, len(columns) * 14)).print(table)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        if v != v:  # NaN
            return "-"
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def save_json(name: str, data: dict[str, Any]) -> Path:
    """Write ``data`` (plus when and where it was measured) to ``.ratchet/bench/<name>.json``."""
    import torch

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    path = BENCH_DIR / f"{name}.json"
    record = {
        "benchmark": name,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        **data,
    }
    path.write_text(json.dumps(_finite(record), indent=2, default=str) + "\n")
    print(f"saved {path.relative_to(REPO)}")
    return path


def _finite(v: Any) -> Any:
    """NaN and infinities as null, so the file is strict JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v
