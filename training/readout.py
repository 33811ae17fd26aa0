"""Where a reward model reads its score: at the conversation's last token, or as the
mean of its score head over the reply's tokens.

transformers' ``...ForSequenceClassification`` applies its one-label head at every
position and keeps the last real token's value ("last"). Two of the demo's drafts
may differ by one phrase ("According to the handbook, ...") that the last token has
to gather through attention, from 64 pairs of feedback. With ``"mean"`` the score is
the head's mean over the reply's tokens (from the assistant's turn header to the
end), so a phrase anywhere in the reply moves the score through its own positions.

The readout is saved in the model's config (:data:`CONFIG_KEY`), so every reader of
the model (the held-out accuracy, PPO's rewards, the gates) reads it the same way.
The reply starts after the last occurrence of the chat template's opening of an
assistant turn (:func:`reply_marker`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from training.errors import TrainingError

Readout = Literal["last", "mean"]
CONFIG_KEY = "ratchet_readout"


def saved_readout(model: Any) -> Readout:
    """The readout saved in ``model``'s config ("last" where none was: transformers')."""
    readout = getattr(model.config, CONFIG_KEY, "last")
    if readout == "mean":
        return "mean"
    if readout == "last":
        return "last"
    raise TrainingError(f"unknown reward-model readout {readout!r} in the model's config")


def reply_marker(tokenizer: Any) -> list[int]:
    """The token ids with which the chat template opens the assistant's turn (what
    ``add_generation_prompt`` appends), e.g. ``<|im_start|>assistant\\n`` in ChatML."""
    probe = [{"role": "user", "content": "?"}]
    opened = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    closed = tokenizer.apply_chat_template(probe, tokenize=False)
    if opened == closed or not opened.startswith(closed):
        raise TrainingError(
            "the tokenizer's chat template opens no assistant turn of its own, so the mean"
            " readout cannot find where a reply starts: use readout 'last'"
        )
    ids: list[int] = tokenizer(opened[len(closed) :], add_special_tokens=False)["input_ids"]
    return ids


def reply_start(ids: Sequence[int], marker: Sequence[int]) -> int:
    """Where the reply begins in one conversation's ``ids``: after the last ``marker``
    (at the last token, where nothing follows it)."""
    n = len(marker)
    for start in range(len(ids) - n, -1, -1):
        if list(ids[start : start + n]) == list(marker):
            return min(start + n, len(ids) - 1)
    raise TrainingError("a conversation holds no assistant turn for the mean readout to read")


def mean_over_replies(
    scores: torch.Tensor, input_ids: torch.Tensor, lengths: Sequence[int], marker: Sequence[int]
) -> torch.Tensor:
    """``(batch,)``: each row's mean of ``scores`` (``(batch, length)``, the head at
    every position) over its reply, from its start to its last real token."""
    means = []
    for row in range(scores.shape[0]):
        start = reply_start(input_ids[row, : lengths[row]].tolist(), marker)
        means.append(scores[row, start : lengths[row]].mean())
    return torch.stack(means)


def head_outputs(model: Any, head: torch.nn.Module, **call: Any) -> tuple[Any, torch.Tensor]:
    """``model(**call)`` and its score head's output at every position, ``(batch,
    length)``."""
    seen: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _module, _args, out: seen.append(out))
    try:
        outputs = model(**call)
    finally:
        hook.remove()
    return outputs, seen[0].squeeze(-1)


def score_head(model: Any, purpose: str) -> torch.nn.Module:
    """The one-label head (``score``) of ``model``, or of the model inside a
    data-parallel wrapper; a TrainingError naming ``purpose`` where there is none."""
    inner = model.module if hasattr(model, "module") else model
    head = getattr(inner, "score", None)
    if not isinstance(head, torch.nn.Module):
        raise TrainingError(f"{type(inner).__name__} has no score head (`score`) {purpose}")
    return head


class RepliesMean:
    """``model`` (a sequence-classification model) called on a batch of conversations,
    padded on the right, with each row's score the mean over its reply, ``(batch, 1)``
    in ``logits``: the unpacked reader of the mean readout."""

    def __init__(self, model: Any, reply_marker: Sequence[int]) -> None:
        self.model, self.reply_marker = model, reply_marker
        self.head = score_head(model, "for the mean readout")

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, use_cache: bool = False
    ) -> Any:
        outputs, scores = head_outputs(
            self.model,
            self.head,
            input_ids=input_ids,
            attention_mask=attention_mask,
            use_cache=False,
        )
        lengths = attention_mask.sum(dim=1).tolist()
        outputs.logits = mean_over_replies(scores, input_ids, lengths, self.reply_marker)[:, None]
        return outputs
