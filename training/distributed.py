"""Data parallelism across processes started by ``accelerate launch`` (or ``torchrun``).

One process per GPU (or per CPU slot, gloo backend): every rank trains on its
share of the batch and gradients are averaged; rank 0 alone talks to the
registry, writes the run record and saves models. The others follow: they get
rank 0's snapshot and run id by broadcast and wait at barriers while rank 0
writes. A single process (no launcher) sees rank 0 of a world of 1, and every
helper here is a no-op.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger(__name__)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Whether this process does the writes (rank 0, or the only process)."""
    return rank() == 0


def is_distributed() -> bool:
    return world_size() > 1


def _group_ready() -> bool:
    """Start the process group on first use (gloo on CPU, nccl on CUDA)."""
    if not is_distributed():
        return False
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and not _cpu_forced() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
        logger.info("rank %d of %d joined the %s process group", rank(), world_size(), backend)
    return True


def leave() -> None:
    """Leave the process group before the process exits: a rank that exits with the
    group's threads still running aborts ("terminate called without an active
    exception") and takes the launcher down with it."""
    if not is_distributed():
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _cpu_forced() -> bool:
    return os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")


def barrier() -> None:
    """Wait until every rank gets here (a no-op for one process)."""
    if _group_ready():
        import torch.distributed as dist

        dist.barrier()


_sent = 0


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; for small things such as a snapshot)."""
    global _sent
    if not _group_ready():
        return obj
    import torch.distributed as dist

    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    _sent += 1
    return box[0]


@contextlib.contextmanager
def followers_released() -> Iterator[None]:
    """Rank 0: if the body ends without a broadcast (a skip, a busy lock, an error before
    the plan went out), broadcast ``None`` so the waiting followers return."""
    sent = _sent
    try:
        yield
    finally:
        if is_distributed() and _sent == sent:
            broadcast(None)


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` for one process)."""
    if not _group_ready():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def wrap_ddp(module: Any) -> Any:
    """``module`` in DistributedDataParallel when several processes train (gradients
    averaged across ranks on ``backward``); ``module`` itself otherwise."""
    if not _group_ready():
        return module
    from torch.nn.parallel import DistributedDataParallel

    device = next(module.parameters()).device
    return DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None
    )


def mean(value: float) -> float:
    """The mean of ``value`` over the ranks."""
    values = all_gather(value)
    return sum(values) / len(values)
