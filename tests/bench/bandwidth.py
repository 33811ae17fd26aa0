"""The physical limit of decode on a CPU: memory bandwidth.

Generating one token for one stream reads every weight once, so single-stream
tokens/s can be at most ``bandwidth / weights bytes per token``."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import numpy as np

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def memory_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes/s of a large numpy copy (each byte read once and written once), best of
    ``repeats``; the array is far larger than any cache."""
    src = np.ones(int(gib * 2**30) // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - started)
    return 2 * src.nbytes / best


def parameter_count(model_dir: Path) -> int:
    """Parameters in the model's safetensors files (read from their headers)."""
    total = 0
    for path in model_dir.glob("*.safetensors"):
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        for name, info in header.items():
            if name != "__metadata__":
                total += int(np.prod(info["shape"]))
    return total


def decode_limit_tokens_per_s(model_dir: Path, dtype: str, bandwidth: float) -> float:
    """Single-stream tokens/s if decode did nothing but read the weights once per token."""
    return bandwidth / (parameter_count(model_dir) * DTYPE_BYTES[dtype])
