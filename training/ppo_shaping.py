"""PPO's practical details beside the algorithm (training/ppo.py): the pinned
sampling settings of rollouts, the missing-EOS penalty, running reward
normalisation and dropout off."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def rollout_generation_config(
    tokenizer: Any,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    do_sample: bool = True,
    repetition_penalty: float = 1.0,
) -> Any:  # a transformers GenerationConfig
    """Every sampling setting of a rollout pinned (none read from the checkpoint): plain
    sampling at ``temperature`` from the full distribution, the sampling PPO's ratio assumes."""
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=do_sample,
        temperature=temperature if do_sample else None,
        top_k=0 if do_sample else None,
        top_p=1.0 if do_sample else None,
        min_p=None,
        typical_p=1.0,
        repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=0,
        min_new_tokens=0,
        max_new_tokens=max_new_tokens,
        num_beams=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def ended_with_eos(
    replies: torch.Tensor, mask: torch.Tensor, eos_token_id: int | list[int] | None
) -> torch.Tensor:
    """Per row: True when the reply's last kept token is an end-of-sequence token."""
    eos_ids = [e for e in (eos_token_id if isinstance(eos_token_id, list) else [eos_token_id])]
    last = (mask.sum(1).long() - 1).clamp(min=0)
    tokens = replies.gather(1, last.unsqueeze(1)).squeeze(1)
    ended = torch.zeros_like(tokens, dtype=torch.bool)
    for eos in eos_ids:
        if eos is not None:
            ended |= tokens == eos
    return ended & (mask.sum(1) > 0)


class RunningMoments:
    """Mean and standard deviation of every score seen so far (Chan et al.'s parallel
    update), for reward normalisation that does not change scale from batch to batch."""

    def __init__(self) -> None:
        self.mean = 0.0
        self.var = 1.0
        self.count = 0

    def update(self, xs: torch.Tensor) -> None:
        xs = xs.double()
        n = xs.numel()
        if n == 0:
            return
        batch_mean = xs.mean().item()
        batch_var = xs.var(unbiased=False).item()
        total = self.count + n
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var = m2 / total
        self.count = total

    @property
    def std(self) -> float:
        return max(self.var, 0.0) ** 0.5

    def normalize(self, xs: torch.Tensor) -> torch.Tensor:
        return (xs - self.mean) / (self.std + 1e-8)


def disable_dropout(model: nn.Module) -> None:
    """Every dropout of ``model`` set to 0 (modules and attention's functional dropout)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0  # type: ignore[assignment]
