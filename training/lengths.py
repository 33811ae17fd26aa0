"""Which training examples fit a stage's ``max_length``.

TRL's trainers silently drop (reward, DPO) or fully mask (SFT) examples longer
than ``max_length``; knowledge-bot prompts carry their sources and are long.
SFT filters first, so it can say how many examples it kept and skip clearly
when too few fit, instead of training on nothing. (The reward stage keeps every
pair and cuts long ones from the left instead: ``training.reward.encode``.)"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from feedback.events import Messages


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
