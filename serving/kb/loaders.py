"""Turn a file into text and a title: Markdown, plain text, HTML, PDF (pypdf).

Every loader gets the file's bytes and raises an ``UnreadableDocument``
subclass with a message a user can act on."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

from serving.kb.errors import (
    BinaryDocument,
    EmptyDocument,
    PdfNotSupported,
    UnsupportedFormat,
)

_BLOCK_TAGS = [
    "p",
    "div",
    "li",
    "ul",
    "ol",
    "tr",
    "table",
    "section",
    "article",
    "header",
    "footer",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "pre",
    "blockquote",
    "dt",
    "dd",
]

KINDS: dict[str, str] = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    ".rst": "text",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}


@dataclass(frozen=True)
class LoadedDocument:
    kind: str
    title: str
    text: str


def kind_of(path: Path) -> str | None:
    """The loader kind for ``path``'s extension, or None when unsupported."""
    return KINDS.get(path.suffix.lower())


def load_document(path: Path, data: bytes) -> LoadedDocument:
    """Text and title of ``path`` (whose bytes are ``data``)."""
    kind = kind_of(path)
    if kind is None:
        supported = ", ".join(sorted(KINDS))
        raise UnsupportedFormat(f"{path}: unsupported file type; supported: {supported}")
    if not data.strip():
        raise EmptyDocument(f"{path}: the file is empty; nothing to ingest")
    if kind == "pdf":
        text, title = _pdf(path, data)
    else:
        raw = _decode(path, data)
        if kind == "html":
            text, title = _html(raw)
        elif kind == "markdown":
            text, title = raw, _markdown_title(raw)
        else:
            text, title = raw, _text_title(raw)
    text = text.strip()
    if not text:
        raise EmptyDocument(f"{path}: no text found in the {kind} file; nothing to ingest")
    return LoadedDocument(kind=kind, title=(title or _title_from_name(path)).strip(), text=text)


def _decode(path: Path, data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise BinaryDocument(f"{path}: binary content (NUL bytes); expected a text document")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BinaryDocument(
            f"{path}: not UTF-8 text (byte {exc.start}); convert it to UTF-8 or remove it"
        ) from exc


def _markdown_title(text: str) -> str | None:
    match = re.search(r"^#\s+(.+?)\s*#*\s*$", text, flags=re.MULTILINE)
    return match.group(1) if match else None


def _text_title(text: str) -> str | None:
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= 120 else None
    return None


def _html(raw: str) -> tuple[str, str | None]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(raw, "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    title = None
    if soup.title and soup.title.get_text(strip=True):
        title = soup.title.get_text(strip=True)
    elif soup.h1:
        title = soup.h1.get_text(" ", strip=True)
    if soup.title:
        soup.title.decompose()
    for br in soup.find_all("br"):
        br.replace_with("\n")
    for tag in soup.find_all(_BLOCK_TAGS):
        tag.insert_before("\n")
        tag.insert_after("\n")
    body = soup.body or soup
    lines = (" ".join(part.split()) for part in body.get_text().splitlines())
    text = "\n".join(line for line in lines if line)
    return text, title


def _pdf(path: Path, data: bytes) -> tuple[str, str | None]:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError as exc:  # pypdf is a dependency; a trimmed install may lack it
        raise PdfNotSupported(
            f"{path}: PDF not supported in this installation (pip install pypdf)"
        ) from exc
    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
        title = reader.metadata.title if reader.metadata else None
    except (PdfReadError, ValueError, KeyError) as exc:
        raise BinaryDocument(f"{path}: not a readable PDF ({exc})") from exc
    return "\n\n".join(pages), title


def _title_from_name(path: Path) -> str:
    return path.stem.replace("-", " ").replace("_", " ").strip().capitalize() or path.name
