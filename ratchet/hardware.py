"""What this machine's CPU computes natively, read once from ``/proc/cpuinfo``.

Both the serving engine (its ``machine`` dtype) and the trainer (the dtype of the
models it only infers with) ask here: on a CPU without bf16 instructions, PyTorch
runs bf16 matrix products in emulation, many times slower than fp32."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@lru_cache
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU feature flags (empty where ``/proc/cpuinfo`` is missing)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_has_bf16() -> bool:
    """True where the CPU has bf16 instructions (``avx512_bf16`` or ``amx_bf16``)."""
    return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)
