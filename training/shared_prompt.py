"""A preference pair in one sequence: the prompt once, then both replies.

TRL's ``RewardTrainer`` and ``DPOTrainer`` run a pair as two sequences, (prompt,
chosen) and (prompt, rejected), so the prompt goes through the model twice. In the
demo the prompt (system header, two sources, the question) is about 260 of a pair's
320 tokens a side. Packed as ``[prompt | chosen reply | rejected reply]``, with each
reply's positions counted from the end of the prompt and an attention mask that lets
the rejected reply see the prompt but not the chosen one, the model reads the prompt
once and gives each reply what it would give it alone.

:class:`PackedPairs` does this beneath TRL: it takes the trainer's own batch (row
``i`` the chosen and row ``B + i`` the rejected conversation of pair ``i``), runs the
model on it packed, and hands back outputs in the trainer's layout, so TRL's losses
and metrics run unchanged. ``tests/training/test_shared_prompt.py`` checks outputs
and gradients against the unpacked batch. A reward model's scorer packs pairs too
(``training.reward.RewardScorer.score_pairs``: the held-out accuracy, the gates' win
rates of candidate against production); PPO's rewards, one reply a prompt, are read
one at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from trl import DPOTrainer, RewardTrainer

from training.errors import TrainingError
from training.readout import RepliesMean, head_outputs, reply_start, score_head

# Segment of each packed token: it attends to the earlier tokens of its own segment
# and of the prompt.
_PROMPT, _CHOSEN, _REJECTED, _PAD = 0, 1, 2, 3
# Attention implementations that apply a custom 4D mask as given (flash attention
# kernels take only padding masks).
_MASKED_ATTENTION = ("sdpa", "eager")


@dataclass(frozen=True)
class PackedPair:
    input_ids: list[int]
    position_ids: list[int]
    segments: list[int]
    shared: int  # tokens both conversations begin with, packed once

    @property
    def ends(self) -> tuple[int, int]:
        """Where the chosen and the rejected conversation end in the packed sequence."""
        return self.segments.index(_REJECTED) - 1, len(self.input_ids) - 1

    def places(self, length: int, rejected: bool) -> list[int]:
        """Where each of the first ``length`` tokens of one conversation sits packed."""
        if not rejected:
            return list(range(length))
        start = self.segments.index(_REJECTED) - self.shared
        return [i if i < self.shared else start + i for i in range(length)]


def pack_pair(chosen_ids: Sequence[int], rejected_ids: Sequence[int]) -> PackedPair:
    """``chosen_ids`` and ``rejected_ids`` (each a whole conversation) as one sequence:
    their shared beginning once, then the rest of each. Each keeps at least its last
    token after the shared part, so that it has an end of its own."""
    shared = 0
    limit = min(len(chosen_ids), len(rejected_ids)) - 1
    while shared < limit and chosen_ids[shared] == rejected_ids[shared]:
        shared += 1
    rest = list(rejected_ids[shared:])
    return PackedPair(
        input_ids=list(chosen_ids) + rest,
        position_ids=list(range(len(chosen_ids))) + list(range(shared, len(rejected_ids))),
        segments=[_PROMPT] * shared
        + [_CHOSEN] * (len(chosen_ids) - shared)
        + [_REJECTED] * len(rest),
        shared=shared,
    )


def attention_allowed(segments: torch.Tensor) -> torch.Tensor:
    """``(batch, 1, length, length)`` booleans from ``(batch, length)`` segments: a token
    sees the earlier tokens of its own segment and of the prompt. Padding sees only
    padding (never an empty row), and nothing real sees padding."""
    index = torch.arange(segments.shape[1], device=segments.device)
    causal = index[None, :] <= index[:, None]
    key, query = segments[:, None, :], segments[:, :, None]
    return (causal & ((key == query) | (key == _PROMPT)))[:, None]


class PackedPairs:
    """``model`` called on a trainer's preference batch, packed.

    ``read="logits"`` (a causal LM, for DPO): the logits of every position of every
    conversation, ``(2B, length, vocab)``, as the unpacked call gives them at the real
    tokens (padding's are left as any real token's). ``read="scores"`` (a
    sequence-classification model, for the reward model): each conversation's score at
    its last token, or with ``reply_marker`` its mean over the reply, ``(2B, 1)``. The
    call goes through ``model``, which may be a data-parallel wrapper whose forward
    syncs the gradients."""

    def __init__(
        self,
        model: Any,
        read: Literal["logits", "scores"],
        reply_marker: Sequence[int] | None = None,
    ) -> None:
        self.model = model
        self.read = read
        # With ``read="scores"``: None reads each conversation's score at its last token;
        # the assistant turn's opening ids read the mean over its reply
        # (``training.readout``).
        self.reply_marker = reply_marker
        inner = model.module if hasattr(model, "module") else model
        self.head: nn.Module | None = (
            score_head(model, "to read packed pairs with") if read == "scores" else None
        )
        attention = getattr(inner.config, "_attn_implementation", None)
        if attention not in _MASKED_ATTENTION:
            raise TrainingError(
                "packed pairs need an attention that takes a 4D mask"
                f" ({', '.join(_MASKED_ATTENTION)}), and {type(inner).__name__} uses"
                f" {attention!r}: set pack_pairs to false"
            )
        self.dtype = next(inner.parameters()).dtype

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, use_cache: bool = False
    ) -> Any:
        n_pairs = input_ids.shape[0] // 2
        lengths = attention_mask.sum(dim=1).tolist()  # TRL's collators pad on the right
        rows = [input_ids[i, : lengths[i]].tolist() for i in range(2 * n_pairs)]
        packed = [pack_pair(rows[i], rows[n_pairs + i]) for i in range(n_pairs)]
        width = max(len(p.input_ids) for p in packed)

        def padded(values: list[int], fill: int) -> torch.Tensor:
            return torch.tensor(values + [fill] * (width - len(values)), device=input_ids.device)

        allowed = attention_allowed(torch.stack([padded(p.segments, _PAD) for p in packed]))
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=input_ids.device)
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        call = {
            # Padding's token is any: nothing real sees it, and its outputs are dropped.
            "input_ids": torch.stack([padded(p.input_ids, 0) for p in packed]),
            "position_ids": torch.stack([padded(p.position_ids, 0) for p in packed]),
            "attention_mask": mask,
            "use_cache": False,
        }
        if self.read == "logits":
            outputs = self.model(**call)
            # Conversation r's token t is packed pair (r mod B)'s token places[t].
            places = [
                p.places(input_ids.shape[1], rejected) for rejected in (False, True) for p in packed
            ]
            pair = torch.arange(2 * n_pairs, device=input_ids.device) % n_pairs
            where = torch.tensor(places, device=input_ids.device).clamp(max=width - 1)
            outputs.logits = outputs.logits[pair[:, None], where]
            return outputs
        assert self.head is not None  # __init__ checked it
        outputs, scores = head_outputs(self.model, self.head, **call)  # at every position
        if self.reply_marker is None:
            ends = torch.tensor([p.ends for p in packed], device=scores.device)
            picked = scores.gather(1, ends)  # (B, 2): chosen, rejected
            outputs.logits = torch.cat([picked[:, 0], picked[:, 1]])[:, None]
            return outputs
        means = []
        for r, row in enumerate(rows):  # the chosen conversations, then the rejected
            at = packed[r % n_pairs].places(len(row), rejected=r >= n_pairs)
            means.append(scores[r % n_pairs, at[reply_start(row, self.reply_marker) :]].mean())
        outputs.logits = torch.stack(means)[:, None]
        return outputs


class _ReadingRewardTrainer(RewardTrainer):
    """TRL's ``RewardTrainer`` calling the model through :meth:`reader`, with the
    mean readout's ``reply_marker`` (None: the score at the last token)."""

    def __init__(self, *args: Any, reply_marker: Sequence[int] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.reply_marker = reply_marker

    def reader(self, model: Any) -> Any:
        raise NotImplementedError

    def compute_loss(
        self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        return super().compute_loss(self.reader(model), inputs, return_outputs, num_items_in_batch)


class SharedPromptRewardTrainer(_ReadingRewardTrainer):
    """TRL's ``RewardTrainer`` with each pair packed (:class:`PackedPairs`), scores read
    at the last token or, with ``reply_marker``, as the mean over each reply."""

    def reader(self, model: Any) -> Any:
        return PackedPairs(model, "scores", self.reply_marker)


class MeanReadoutRewardTrainer(_ReadingRewardTrainer):
    """TRL's ``RewardTrainer`` with each conversation's score the mean over its reply
    (:class:`RepliesMean`), each pair as two sequences; needs ``reply_marker``."""

    def reader(self, model: Any) -> Any:
        assert self.reply_marker is not None  # _fit passes the marker
        return RepliesMean(model, self.reply_marker)


class SharedPromptDPOTrainer(DPOTrainer):
    """TRL's ``DPOTrainer`` with each pair packed (:class:`PackedPairs`), the
    reference model's forward too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.ref_model is None or self.precompute_ref_logps:
            raise TrainingError("packed DPO needs a reference model of its own")
        self.ref_model = PackedPairs(self.ref_model, "logits")  # type: ignore[assignment]

    def _compute_loss(self, model: Any, inputs: Any, return_outputs: bool) -> Any:
        return super()._compute_loss(PackedPairs(model, "logits"), inputs, return_outputs)
