"""The one prompt builder: system prompt + grounding sources + conversation ->
the messages a model is asked with.

Serving's chat path calls it for every knowledge-mode request, and training's
golden and safety suites call it, so the suites measure the prompt that is
served. Pure functions over plain data: no retrieval, no I/O (the caller
retrieves the sources and passes them in).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

Messages = list[dict[str, str]]

GROUNDING_INSTRUCTIONS = (
    "You are a knowledge assistant. Answer using only the numbered sources below. "
    "Cite the sources you use as [1], [2]. If the sources do not contain the answer, "
    'say "I don\'t know" instead of guessing.'
)
NO_SOURCES = "(no relevant sources were found)"


class Source(Protocol):
    """A retrieved passage, as the prompt shows it."""

    @property
    def title(self) -> str: ...

    @property
    def source_path(self) -> str: ...

    @property
    def text(self) -> str: ...


def grounding_prompt(sources: Sequence[Source]) -> str:
    """The system message carrying the sources."""
    if not sources:
        return f"{GROUNDING_INSTRUCTIONS}\n\nSources:\n{NO_SOURCES}"
    blocks = [
        f"[{i}] {c.title} ({c.source_path})\n{c.text.strip()}" for i, c in enumerate(sources, 1)
    ]
    return f"{GROUNDING_INSTRUCTIONS}\n\nSources:\n" + "\n\n".join(blocks)


def grounded_messages(messages: Messages, sources: Sequence[Source]) -> Messages:
    """``messages`` with the sources as a system message placed after any leading
    system messages (so the caller's own instructions still come first)."""
    head = 0
    while head < len(messages) and messages[head]["role"] in ("system", "developer"):
        head += 1
    system = {"role": "system", "content": grounding_prompt(sources)}
    return [*messages[:head], system, *messages[head:]]


def last_user_text(messages: Messages) -> str:
    for m in reversed(messages):
        if m["role"] == "user":
            return m["content"]
    return ""
