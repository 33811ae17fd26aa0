"""What this machine's CPU computes natively, read once from ``/proc/cpuinfo``, and
whether bf16 is faster than fp32 on it, timed once per process.

Both the serving engine (its ``machine`` dtype) and the trainer (its precision, and
the dtype of the models it only infers with) ask here: on a CPU without bf16
instructions, PyTorch runs bf16 matrix products in emulation, many times slower than
fp32. With them it is not always faster either: on 2 cores of a Xeon that lists
``avx512_bf16`` but not AMX, a linear layer under bf16 autocast ran at 0.51-0.63x
fp32's speed, and a reward-model step at 0.76x; on an AMD EPYC with ``avx512_bf16``
a step ran 1.5x faster (training/RECIPES.md)."""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from pathlib import Path

logger = logging.getLogger(__name__)

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")

# bf16 autocast is chosen by ``auto`` precision on a CPU only where it computes a linear
# layer at least this many times as fast as fp32: below it, the rounding is not paid for.
BF16_MIN_SPEEDUP = 1.2


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


@lru_cache
def cpu_bf16_speedup() -> float:
    """How many times as fast this CPU computes a linear layer under bf16 autocast as in
    fp32 (below 1: slower), at a small model's shape (384 tokens, 576 -> 1536: an MLP
    projection of SmolLM2-135M): the best of five interleaved timings of each, taken
    once per process with its thread settings (about 0.1 s)."""
    import torch
    import torch.nn.functional as F

    x, w = torch.randn(384, 576), torch.randn(1536, 576)

    def seconds(bf16: bool) -> float:
        started = time.perf_counter()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            F.linear(x, w)
            F.linear(x, w)
        return time.perf_counter() - started

    seconds(False), seconds(True)  # warm-up: kernels chosen, buffers allocated
    best = {False: float("inf"), True: float("inf")}
    for _ in range(5):
        for bf16 in (False, True):
            best[bf16] = min(best[bf16], seconds(bf16))
    speedup = best[False] / best[True]
    logger.info(
        "this CPU computes a linear layer under bf16 autocast at %.2fx fp32's speed"
        " (bf16 is chosen from %.1fx)",
        speedup,
        BF16_MIN_SPEEDUP,
    )
    return speedup


def cpu_bf16_is_faster() -> bool:
    """True where the CPU has bf16 instructions and computes under bf16 autocast at least
    :data:`BF16_MIN_SPEEDUP` times as fast as in fp32 (:func:`cpu_bf16_speedup`)."""
    return cpu_has_bf16() and cpu_bf16_speedup() >= BF16_MIN_SPEEDUP
