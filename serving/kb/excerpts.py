"""Excerpts: each retrieved chunk cut to the sentences most like the question.

A chunk of a handbook page holds several facts; a small model asked from it
tends to copy one of its sentences, not always the one that answers
(training/RECIPES.md, "Excerpts of the sources"). With
``RATCHET_KB_EXCERPT_SENTENCES=N`` the knowledge base keeps, of each chunk it
retrieves, the ``N`` sentences whose embeddings are closest to the question's,
the closest first: LangChain's contextual compression (its ``EmbeddingsFilter``)
at the grain of sentences, with the embedding model that ranked the chunks.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np

from serving.chat.grounding import RetrievedChunk
from serving.kb.embeddings import Embedder

_HEADING = re.compile(r"^\s*#+\s")
# A paragraph ends at a blank line, a list item at the next item.
_BLOCK = re.compile(r"\n\s*\n|\n(?=\s*(?:[-*]|\d+\.)\s)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentences(text: str) -> list[str]:
    """A chunk's sentences: its paragraphs and list items with their wrapped lines
    joined, split after ``.``, ``!`` or ``?``; Markdown headings dropped."""
    out: list[str] = []
    for block in _BLOCK.split(text):
        lines = [line.strip() for line in block.splitlines()]
        joined = " ".join(line for line in lines if line and not _HEADING.match(line))
        out.extend(s for s in _SENTENCE_END.split(joined) if s)
    return out


def excerpt(
    chunks: list[RetrievedChunk], query_vector: np.ndarray, embedder: Embedder, n: int
) -> list[RetrievedChunk]:
    """``chunks`` in the same order, each text cut to its ``n`` sentences closest to the
    question (``query_vector``, its embedding), the closest first. A chunk with no
    sentence to rank keeps its text."""
    split = [sentences(c.text) for c in chunks]
    flat = [s for ss in split for s in ss]
    if not flat:
        return chunks
    scores = embedder.embed(flat) @ query_vector
    out, start = [], 0
    for chunk, ss in zip(chunks, split, strict=True):
        mine = scores[start : start + len(ss)]
        start += len(ss)
        if not ss:
            out.append(chunk)
            continue
        best = np.argsort(-mine, kind="stable")[:n]
        out.append(replace(chunk, text=" ".join(ss[i] for i in best)))
    return out
