"""Prompts cut to a token budget by whole messages, before the chat template.

Cutting templated tokens from the left removes the system header and the
sources first. Here the cut is made on the messages instead: first the oldest
conversation turns (between the leading system messages and the last user
message), then the least relevant sources (the grounding prompt lists them by
retrieval rank, so the last one goes first; the numbering of the rest is
unchanged, so their citations stay valid). The system header and the question
are never cut: a prompt that still does not fit is returned whole, with a warning.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from feedback.events import Messages
from feedback.prompting import GROUNDING_INSTRUCTIONS, NO_SOURCES

logger = logging.getLogger(__name__)

_SOURCE_START = re.compile(r"\n\n(?=\[\d+\] )")
_SOURCES_HEADER = "\n\nSources:\n"


def prompt_tokens(tokenizer: Any, messages: Messages) -> int:
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # a BatchEncoding on newer transformers
        ids = ids["input_ids"]
    return len(ids)


def _head(messages: Messages) -> int:
    head = 0
    while head < len(messages) and messages[head]["role"] in ("system", "developer"):
        head += 1
    return head


def _last_user(messages: Messages) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "user":
            return i
    return len(messages) - 1


def drop_last_source(content: str) -> str | None:
    """The grounding prompt ``content`` less its last source (None: none left to drop)."""
    if not content.startswith(GROUNDING_INSTRUCTIONS) or _SOURCES_HEADER not in content:
        return None
    head, body = content.split(_SOURCES_HEADER, 1)
    blocks = _SOURCE_START.split(body)
    if not blocks or blocks == [NO_SOURCES]:
        return None
    rest = blocks[:-1] or [NO_SOURCES]
    return head + _SOURCES_HEADER + "\n\n".join(rest)


def cut_messages(tokenizer: Any, messages: Messages, max_tokens: int) -> tuple[Messages, bool]:
    """``messages`` cut by whole turns and sources towards at most ``max_tokens``
    templated tokens, and whether they fit; when they do not, what is left is the
    system header (without sources) and the question."""
    out = [dict(m) for m in messages]
    while prompt_tokens(tokenizer, out) > max_tokens:
        head, last = _head(out), _last_user(out)
        if last > head:  # an older turn sits between the system messages and the question
            del out[head]
            continue
        for i in range(head - 1, -1, -1):
            smaller = drop_last_source(out[i]["content"])
            if smaller is not None:
                out[i]["content"] = smaller
                break
        else:
            return out, False
    return out, True


def fit_messages(tokenizer: Any, messages: Messages, max_tokens: int) -> Messages:
    """``messages`` cut by whole turns and sources to at most ``max_tokens`` templated
    tokens (:func:`cut_messages`); when that is not enough, the system header and the
    question, kept whole, with a warning."""
    out, fits = cut_messages(tokenizer, messages, max_tokens)
    if not fits:
        logger.warning(
            "a prompt of %d tokens exceeds max_prompt_length %d with only its system"
            " header and question left; kept whole",
            prompt_tokens(tokenizer, out),
            max_tokens,
        )
    return out
