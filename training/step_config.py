"""How a TRL stage computes its optimizer step: in micro-batches, with or without
activation checkpointing. Neither changes what the step computes (the gradient
of the same ``batch_size`` examples, averaged), only its time and memory."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator


class StepShape(BaseModel):
    """Fields shared by the configs of the stages TRL trains (SFT, reward model and
    judge, DPO, KTO); each names its own ``batch_size`` (examples or pairs per
    optimizer step)."""

    batch_size: int

    micro_batch_size: int | None = Field(
        default=None,
        ge=1,
        description="Examples (or pairs) per forward and backward pass; the step accumulates"
        " batch_size / micro_batch_size of them. None: the whole batch at once. It must divide"
        " batch_size.",
    )
    gradient_checkpointing: bool | None = Field(
        default=None,
        description="Recompute each block's activations in the backward pass: less memory,"
        " about a quarter more compute. Off, a micro-batch keeps every activation; pair it"
        " with a smaller micro_batch_size to bound the memory. None: the TRL trainer's"
        " default (on for SFT, the reward model, DPO and KTO in the pinned TRL).",
    )

    @model_validator(mode="after")
    def _micro_batch_divides_batch(self) -> StepShape:
        micro = self.micro_batch_size
        if micro is not None and self.batch_size % micro:
            raise ValueError(
                f"micro_batch_size {micro} does not divide batch_size {self.batch_size}"
            )
        return self

    def trainer_args(self) -> dict[str, Any]:
        """The ``TrainingArguments`` that give this step shape."""
        micro = self.micro_batch_size or self.batch_size
        args: dict[str, Any] = {
            "per_device_train_batch_size": micro,
            "gradient_accumulation_steps": self.batch_size // micro,
        }
        if self.gradient_checkpointing is not None:
            args["gradient_checkpointing"] = self.gradient_checkpointing
        return args


class PairStepShape(StepShape):
    """A step over preference pairs (the reward model and judge, DPO)."""

    pack_pairs: bool = Field(
        default=True,
        description="Run each pair as one sequence, the prompt once and both replies after it"
        " (training/shared_prompt.py): the same outputs and gradients as TRL's two sequences"
        " a pair, with the prompt's share of the compute spent once. A reward model's"
        " scorer reads pairs so too (its held-out accuracy, the gates' win rates)."
        " False: TRL's own, and the scorer reads one reply at a time.",
    )
