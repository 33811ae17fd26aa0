"""The retrieval hook: knowledge mode grounds answers in retrieved chunks.

The knowledge-base package implements :class:`Retriever`; the chat service
calls it and builds the grounded prompt with :func:`grounded_messages`, which
lives in ``feedback.prompting`` so training's gate suites build the same prompt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

from feedback.prompting import (  # noqa: F401 - re-exported: the one prompt builder
    GROUNDING_INSTRUCTIONS,
    NO_SOURCES,
    grounded_messages,
    grounding_prompt,
    last_user_text,
)
from serving.errors import InvalidRequest


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


def footnotes(citations: list[dict[str, Any]]) -> str:
    """The sources as markdown appended to a reply's content, for clients that read
    only ``choices[].message.content`` (LangChain's ``ChatOpenAI`` drops unknown
    fields): a blank line, ``Sources:``, then a markdown list item ``[n] title (path)``
    per source, numbered as the model was told to cite them."""
    if not citations:
        return ""
    lines = [f"- [{c['index']}] {c['title']} ({c['source_path']})" for c in citations]
    return "\n\nSources:\n" + "\n".join(lines)
