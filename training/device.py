"""Where training runs and in which precision: the one place that decides.

``RATCHET_TRAIN_DEVICE`` (``auto``, ``cuda``, ``cuda:N``, ``cpu``) and
``RATCHET_TRAIN_PRECISION`` (``auto``, ``bf16``, ``fp32``) resolve into a
:class:`Placement`:

- ``auto`` device: CUDA when present, else the CPU. Under ``accelerate launch``
  (or ``torchrun``) each process takes the GPU of its ``LOCAL_RANK``.
- ``auto`` precision: ``bf16`` on a GPU that supports it, and on a CPU with bf16
  instructions (``avx512_bf16``, ``amx_bf16``) where a linear layer under bf16
  autocast, timed once per process, is at least 1.2x as fast as in fp32
  (``ratchet.hardware.cpu_bf16_is_faster``); else ``fp32``. Without the
  instructions bf16 runs in emulation, twice as slow as fp32. With them an SFT step
  was 1.4-1.5x faster under autocast on an AMD EPYC and on a Xeon with AMX, and a
  reward-model step 0.76x as fast on a Xeon that lists ``avx512_bf16`` but not AMX
  (RECIPES.md, "A Xeon where bf16 is slower"). Four demos trained under autocast
  kept 3 of the safety gate's 8 refusals while PPO's log-probabilities came from
  bf16 logits; with the output layer in fp32, the next three kept 8, 8 and 6
  (RECIPES.md, "The AMX Xeon with excerpts, and PPO's logits from an fp32 head").
- ``bf16``: models that train keep fp32 master weights and run their forward
  passes under bf16 autocast; frozen policies (PPO's reference, the evaluated
  policies) are loaded in bf16 on a GPU and in their checkpoint's dtype on a CPU.
- ``fp32``: models that train are fp32; frozen policies keep the checkpoint's
  dtype, except on a CPU where bf16 is not faster than fp32 (without bf16
  instructions, or timed slower), where they are fp32.

Reward models score in fp32 under either precision (:attr:`Placement.score_dtype`).

Every stage (SFT, reward model, PPO, DPO, scoring, evaluation) takes its
device and dtypes from a Placement, and TRL's trainers get theirs through
:func:`trl_arguments`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ratchet import hardware
from training.errors import TrainingError
from training.step_config import StepShape

logger = logging.getLogger(__name__)

Precision = Literal["auto", "bf16", "fp32"]
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class Placement:
    """A resolved device and precision."""

    device: torch.device
    precision: Literal["bf16", "fp32"]

    @classmethod
    def resolve(cls, device: str = "auto", precision: str = "auto") -> Placement:
        """Turn the settings' strings into a Placement; a clear error for bad values."""
        dev = _resolve_device(device)
        if precision not in PRECISIONS:
            raise TrainingError(
                f"unknown training precision {precision!r}; choose one of {', '.join(PRECISIONS)}"
            )
        if precision == "auto":
            precision = "bf16" if _computes_bf16_faster(dev) else "fp32"
        placement = cls(dev, precision)  # type: ignore[arg-type]
        logger.debug("training placement: %s", placement)
        return placement

    def in_precision(self, precision: Literal["bf16", "fp32"]) -> Placement:
        """This device in ``precision`` (a stage that asks for its own)."""
        return dataclasses.replace(self, precision=precision)

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None

    @property
    def train_dtype(self) -> torch.dtype:
        """Models that train hold fp32 master weights (bf16 runs under autocast)."""
        return torch.float32

    @property
    def frozen_dtype(self) -> torch.dtype | str:
        """Dtype of policies that only infer. On a GPU: bf16 under bf16 precision, else the
        checkpoint's own (``"auto"``). On a CPU: the checkpoint's own, so that an fp32
        model (the SFT model that is PPO's reference) is not rounded to nearest bf16,
        which loses most of a fine-tune's change (RECIPES.md, "Saving in bf16 undid
        SFT"); except under fp32 precision on a CPU where bf16 is not faster than fp32,
        where a bf16 checkpoint (what Ratchet saves) would compute slower than in fp32:
        in emulation, several times slower, without bf16 instructions (RECIPES.md, "bf16
        checkpoints on a CPU without bf16"), or at about half fp32's speed with them
        on a Xeon without AMX (RECIPES.md, "A Xeon where bf16 is slower"): fp32."""
        if self.device.type == "cpu":
            if self.precision == "fp32" and not hardware.cpu_bf16_is_faster():
                return torch.float32
            return "auto"
        return torch.bfloat16 if self.precision == "bf16" else "auto"

    @property
    def score_dtype(self) -> torch.dtype:
        """Dtype of reward models that score: fp32 under any precision. A bf16 forward pass
        moves a score by more than a reward model trained on little feedback tells its
        pairs apart: the demo's judge, scored in bf16, ordered 27 of 54 held-out pairs
        right (8 of 20 corrections) and 39 (20 of 20) in fp32 (RECIPES.md, "Training
        under bf16 autocast on a CPU with bf16 instructions")."""
        return torch.float32

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast on this device, or nothing."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def load_causal_lm(self, model_dir: Path | str, *, trainable: bool) -> Any:
        """A causal LM from ``model_dir`` on this device, in its training or frozen dtype."""
        from transformers import AutoModelForCausalLM

        dtype = self.train_dtype if trainable else self.frozen_dtype
        model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        return model.to(self.device)

    def describe(self) -> dict[str, Any]:
        """What a run's record keeps of where it trained: the device and the precision,
        and on a CPU with bf16 instructions how many times as fast it computed bf16 as
        fp32, the figure ``auto`` decides by (:func:`ratchet.hardware.cpu_bf16_speedup`)."""
        described: dict[str, Any] = {"device": str(self.device), "precision": self.precision}
        if self.device.type == "cpu" and hardware.cpu_has_bf16():
            described["cpu_bf16_speedup"] = round(hardware.cpu_bf16_speedup(), 2)
        return described


def _computes_bf16_faster(dev: torch.device) -> bool:
    """Whether ``dev`` computes bf16 faster than fp32, so that autocast pays for its
    rounding: a GPU that supports bf16, or a CPU where it was timed faster."""
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return hardware.cpu_bf16_is_faster()


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise TrainingError(
            f"unknown training device {device!r}; use auto, cpu, cuda or cuda:N"
        ) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError(
                f"training device {device!r} asked for, but torch sees no CUDA device"
            )
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    elif dev.type != "cpu":
        raise TrainingError(f"unsupported training device {device!r}; use auto, cpu or cuda")
    return dev


@contextlib.contextmanager
def on_device(placement: Placement) -> Iterator[None]:
    """Make ``placement``'s GPU the current one (a no-op on the CPU)."""
    if placement.on_cuda:
        with torch.cuda.device(placement.device):
            yield
    else:
        yield


def trl_arguments(
    config_cls: type,
    placement: Placement,
    *,
    output_dir: Path,
    step: StepShape,
    epochs: float,
    learning_rate: float,
    max_length: int,
    seed: int,
    progress: bool,
    **extra: Any,
) -> Any:
    """The arguments of a TRL trainer (``SFTConfig``, ``RewardConfig``, ``DPOConfig``):
    the settings every stage shares, and the device and precision of ``placement``.

    TRL and transformers take the device from accelerate: CUDA when present (one
    process per GPU under ``accelerate launch``), else the CPU. A CPU placement is
    said out loud (transformers' flag for it is the only way to keep a GPU machine's
    trainer on the CPU, and to allow bf16 autocast there); this is the one place.
    ``step`` gives the batch, its micro-batches and activation checkpointing; ``extra``
    overrides any of them."""
    return config_cls(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        learning_rate=learning_rate,
        max_length=max_length,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=seed,
        disable_tqdm=not progress,
        **trainer_device_args(placement),
        **{**step.trainer_args(), **extra},
    )


def trainer_device_args(placement: Placement) -> dict[str, Any]:
    """The device and precision arguments of a transformers/TRL ``TrainingArguments``."""
    device_args: dict[str, Any] = {"bf16": placement.precision == "bf16"}
    if placement.device.type == "cpu":
        device_args["use_cpu"] = True
    return device_args
