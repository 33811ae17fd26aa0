"""Errors of the knowledge base.

KBError
├── UnreadableDocument      a file that cannot be ingested
│   ├── UnsupportedFormat   extension we have no loader for
│   ├── BinaryDocument      binary content (NUL bytes, not UTF-8)
│   ├── EmptyDocument       no text at all
│   └── PdfNotSupported     PDF given but no PDF loader installed
└── EmbeddingModelMissing   the embedding model directory is not there
"""

from __future__ import annotations


class KBError(Exception):
    """Base class of knowledge-base errors."""


class UnreadableDocument(KBError):
    """A file that cannot be ingested; the message says why and what to do."""


class UnsupportedFormat(UnreadableDocument):
    pass


class BinaryDocument(UnreadableDocument):
    pass


class EmptyDocument(UnreadableDocument):
    pass


class PdfNotSupported(UnreadableDocument):
    pass


class EmbeddingModelMissing(KBError):
    pass
