"""Which training examples fit a stage's ``max_length``.

TRL's trainers silently drop (reward, DPO) or fully mask (SFT) examples longer
than ``max_length``; knowledge-bot prompts carry their sources and are long.
SFT cuts the prompts of long examples by whole messages first (:func:`cut_to_fit`:
the least relevant sources go, the system header and the question stay) and
leaves out only what still does not fit, so it can say how many examples it cut
and dropped, and skip clearly when too few are left. DPO cuts its pairs the same
way, by the longer reply (:func:`cut_pairs_to_fit`). KTO filters
(:func:`fitting`). (The reward stage keeps every pair: ``training.reward.encode``
cuts a long one by whole messages too, then from the left if still needed.)"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from feedback.events import Messages
from training.truncation import cut_messages, prompt_tokens


def conversation_tokens(tokenizer: Any, prompt: Messages, reply: str) -> int:
    """Tokens of ``prompt`` plus the assistant's ``reply``, as the chat template renders them."""
    rendered = tokenizer.apply_chat_template(
        [*prompt, {"role": "assistant", "content": reply}], tokenize=True, return_dict=True
    )
    return len(rendered["input_ids"])


def fitting(
    tokenizer: Any,
    items: Sequence[Any],
    max_length: int,
    replies: Any,
) -> list[Any]:
    """The items whose prompt with every one of ``replies(item)`` fits in ``max_length``."""
    return [
        item
        for item in items
        if all(
            conversation_tokens(tokenizer, item.prompt, reply) <= max_length
            for reply in replies(item)
        )
    ]


@dataclass
class Fitted:
    """Examples that fit ``max_length``: ``kept`` (those cut carry their cut prompt),
    how many of them were cut, and how many were left out."""

    kept: list[Any]
    truncated: int
    too_long: int


def cut_to_fit(tokenizer: Any, items: Sequence[Any], max_length: int) -> Fitted:
    """``items`` (a ``prompt`` and a ``completion`` each) fitted to ``max_length``: an
    item that is too long gets its prompt cut by whole messages
    (:func:`training.truncation.cut_messages`) to what the completion leaves (its
    tokens and the template's around it); one that still does not fit is left out."""
    kept: list[Any] = []
    truncated = 0
    for item in items:
        total = conversation_tokens(tokenizer, item.prompt, item.completion)
        if total <= max_length:
            kept.append(item)
            continue
        reply = total - prompt_tokens(tokenizer, item.prompt)  # the completion and its markup
        if max_length - reply <= 0:
            continue
        cut, fits = cut_messages(tokenizer, item.prompt, max_length - reply)
        if fits and conversation_tokens(tokenizer, cut, item.completion) <= max_length:
            kept.append(dataclasses.replace(item, prompt=cut))
            truncated += 1
    return Fitted(kept, truncated, len(items) - len(kept))


@dataclass(frozen=True)
class _ByLonger:
    """A pair seen as an example whose completion is the longer of its two replies."""

    prompt: Messages
    completion: str
    pair: Any


def cut_pairs_to_fit(tokenizer: Any, pairs: Sequence[Any], max_length: int) -> Fitted:
    """``pairs`` (a ``prompt``, ``chosen`` and ``rejected`` each) fitted to ``max_length``
    as :func:`cut_to_fit` fits examples: a long pair's prompt is cut by whole messages
    to what the longer of its replies leaves, so both replies stay whole."""

    def longer(pair: Any) -> str:
        return max(
            (pair.chosen, pair.rejected),
            key=lambda reply: conversation_tokens(tokenizer, pair.prompt, reply),
        )

    fitted = cut_to_fit(tokenizer, [_ByLonger(p.prompt, longer(p), p) for p in pairs], max_length)
    kept = [dataclasses.replace(item.pair, prompt=item.prompt) for item in fitted.kept]
    return Fitted(kept, fitted.truncated, fitted.too_long)
