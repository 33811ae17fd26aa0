"""The backend interface: render a chat, generate choices as streamed deltas.

A backend is built for one model version and started once; ``generate``
validates the request (raising :class:`serving.errors.InvalidRequest` before
any output) and returns a :class:`Generation` to iterate.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.errors import CompletionTooLong, PromptTooLong


@dataclass(frozen=True)
class SamplingOptions:
    """What the request asked for; None means the backend's default."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1


@dataclass
class ChoiceDelta:
    """New output of one choice since the last update."""

    index: int
    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class Generation:
    """A started generation: prompt facts known up front, then the deltas."""

    prompt_token_ids: list[int] | None
    prompt_tokens: int
    max_tokens: int
    deltas: AsyncIterator[list[ChoiceDelta]]

    async def aclose(self) -> None:
        aclose = getattr(self.deltas, "aclose", None)
        if aclose is not None:
            await aclose()


class Backend(abc.ABC):
    """One loaded model version."""

    name: str = "backend"

    def __init__(self, *, version: str, path: Path | str, max_model_len: int) -> None:
        self.version = version
        self.path = str(path)
        self.max_model_len = max_model_len

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model; raise on failure (the caller keeps the previous version)."""

    @abc.abstractmethod
    async def generate(
        self, messages: list[dict[str, str]], options: SamplingOptions, request_id: str
    ) -> Generation:
        """Validate and start one request."""

    @abc.abstractmethod
    async def shutdown(self) -> None:
        """Free the model (after in-flight requests finished)."""

    async def check(self) -> None:  # noqa: B027 - optional hook
        """Raise if the backend cannot serve (readiness)."""


def load_chat_tokenizer(path: Path | str) -> Any:
    """The model directory's tokenizer; a clear error when it has no chat template
    (both in-process backends render chats with it)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{path} has no chat template (tokenizer_config.json)")
    return tokenizer


def render_chat(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of ``messages`` through the model directory's chat template."""
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    if out and isinstance(out[0], list):
        out = out[0]
    return [int(t) for t in out]


def resolve_max_tokens(
    prompt_tokens: int, requested: int | None, *, default: int, max_model_len: int
) -> int:
    """Completion budget: ``requested`` (or ``default``) clamped to the room left in
    the context window; raises PromptTooLong when there is no room at all, and
    CompletionTooLong (400, as OpenAI) when an explicit ``requested`` does not fit."""
    room = max_model_len - prompt_tokens
    if room < 1:
        raise PromptTooLong(prompt_tokens, max_model_len)
    if requested is not None and requested > room:
        raise CompletionTooLong(prompt_tokens, requested, max_model_len)
    return max(1, min(requested if requested is not None else default, room))
