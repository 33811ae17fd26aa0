"""The retrieval hook: knowledge mode grounds answers in retrieved chunks.

The knowledge-base package implements :class:`Retriever`; the chat service
calls it and builds the grounded prompt with :func:`grounded_messages`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

from serving.errors import InvalidRequest

GROUNDING_INSTRUCTIONS = (
    "You are a knowledge assistant. Answer using only the numbered sources below. "
    "Cite the sources you use as [1], [2]. If the sources do not contain the answer, "
    'say "I don\'t know" instead of guessing.'
)
NO_SOURCES = "(no relevant sources were found)"


@dataclass(frozen=True)
class RetrievedChunk:
    chunk_id: str
    source_path: str
    title: str
    text: str
    score: float


@runtime_checkable
class Retriever(Protocol):
    async def retrieve(self, query: str, k: int) -> list[RetrievedChunk]:
        """The ``k`` chunks most relevant to ``query``, best first."""
        ...


def grounding_prompt(chunks: list[RetrievedChunk]) -> str:
    """The system message carrying the sources."""
    if not chunks:
        return f"{GROUNDING_INSTRUCTIONS}\n\nSources:\n{NO_SOURCES}"
    blocks = [
        f"[{i}] {c.title} ({c.source_path})\n{c.text.strip()}" for i, c in enumerate(chunks, 1)
    ]
    return f"{GROUNDING_INSTRUCTIONS}\n\nSources:\n" + "\n\n".join(blocks)


def grounded_messages(
    messages: list[dict[str, str]], chunks: list[RetrievedChunk]
) -> list[dict[str, str]]:
    """``messages`` with the sources as a system message placed after any leading
    system messages (so the caller's own instructions still come first)."""
    head = 0
    while head < len(messages) and messages[head]["role"] in ("system", "developer"):
        head += 1
    system = {"role": "system", "content": grounding_prompt(chunks)}
    return [*messages[:head], system, *messages[head:]]


def citations(chunks: list[RetrievedChunk]) -> list[dict[str, Any]]:
    """What a reply reports about its sources (numbered as in the prompt)."""
    out = []
    for i, c in enumerate(chunks, 1):
        item = asdict(c)
        item.pop("text")
        item["index"] = i
        item["snippet"] = c.text.strip()[:300]
        out.append(item)
    return out


async def sources(
    retriever: Retriever | None,
    messages: list[dict[str, str]],
    *,
    use: bool,
    asked: bool,
    k: int,
) -> list[RetrievedChunk] | None:
    """The sources to ground the answer in, best first; None when not grounding.
    ``asked``: the request itself asked for knowledge mode (an error without a KB)."""
    if not use:
        return None
    if retriever is None:
        if asked:
            raise InvalidRequest(
                "knowledge mode was asked for but no knowledge base is configured",
                param="knowledge",
            )
        return None
    query = last_user_text(messages)
    return await retriever.retrieve(query, k) if query else []


def last_user_text(messages: list[dict[str, str]]) -> str:
    for m in reversed(messages):
        if m["role"] == "user":
            return m["content"]
    return ""


def footnotes(citations: list[dict[str, Any]]) -> str:
    """The sources as markdown appended to a reply's content, for clients that read
    only ``choices[].message.content`` (LangChain's ``ChatOpenAI`` drops unknown
    fields): a blank line, ``Sources:``, then a markdown list item ``[n] title (path)``
    per source, numbered as the model was told to cite them."""
    if not citations:
        return ""
    lines = [f"- [{c['index']}] {c['title']} ({c['source_path']})" for c in citations]
    return "\n\nSources:\n" + "\n".join(lines)
