"""``ratchet kb ingest``: files and directories -> chunks and embeddings in Postgres.

A file whose bytes (sha256), embedding model and chunk settings are unchanged
is skipped; a changed file's chunks are replaced in one transaction; when a
directory is ingested with pruning (the default), sources under it whose files
are gone are deleted with their chunks. Files that cannot be read are reported, never
fatal to the rest of the run."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from langchain_text_splitters import Language, RecursiveCharacterTextSplitter
from tqdm import tqdm

from serving.kb import store
from serving.kb.embeddings import Embedder
from serving.kb.errors import UnreadableDocument
from serving.kb.loaders import LoadedDocument, kind_of, load_document
from serving.kb.settings import KBSettings

logger = logging.getLogger(__name__)


@dataclass
class IngestReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, message)
    skipped: list[str] = field(default_factory=list)  # unsupported extension inside a directory
    chunks_written: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)

    def summary(self) -> str:
        return (
            f"{len(self.added)} added, {len(self.updated)} updated, "
            f"{len(self.unchanged)} unchanged, {len(self.removed)} removed, "
            f"{len(self.failed)} failed; "
            f"{self.chunks_written} chunks written"
        )


@dataclass(frozen=True)
class _Candidate:
    file: Path  # absolute
    display: str  # path shown in citations
    root: Path | None  # the directory argument it was found under


class Ingestor:
    """Ingests files into the knowledge base through one Postgres connection."""

    def __init__(self, conn: psycopg.Connection, embedder: Embedder, settings: KBSettings) -> None:
        self._conn = conn
        self._embedder = embedder
        self._settings = settings

    def splitter(self, kind: str) -> RecursiveCharacterTextSplitter:
        size, overlap = self._settings.chunk_size, self._settings.chunk_overlap
        if kind == "markdown":
            return RecursiveCharacterTextSplitter.from_language(
                Language.MARKDOWN, chunk_size=size, chunk_overlap=overlap
            )
        return RecursiveCharacterTextSplitter(chunk_size=size, chunk_overlap=overlap)

    def split(self, doc: LoadedDocument) -> list[str]:
        return [c.strip() for c in self.splitter(doc.kind).split_text(doc.text) if c.strip()]

    def ingest(
        self, paths: Iterable[Path], *, prune: bool = True, progress: bool = True
    ) -> IngestReport:
        report = IngestReport()
        candidates, roots = self._collect([Path(p) for p in paths], report)
        bar = tqdm(candidates, desc="kb ingest", unit="file", disable=not progress)
        for cand in bar:
            bar.set_postfix_str(cand.display[-40:], refresh=False)
            self._ingest_one(cand, report)
        if prune:
            # Only sources whose file is gone: a file that failed to load keeps
            # its last good chunks (the failure is reported).
            seen = {str(c.file) for c in candidates}
            for root in roots:
                gone = [
                    s
                    for s in store.list_sources(self._conn, under=str(root))
                    if s.location not in seen and not Path(s.location).exists()
                ]
                store.delete_sources(self._conn, [s.id for s in gone])
                report.removed.extend(s.path for s in gone)
        for _path, message in report.failed:
            logger.warning("not ingested: %s", message)
        logger.info("kb ingest: %s", report.summary())
        return report

    def _collect(
        self, paths: list[Path], report: IngestReport
    ) -> tuple[list[_Candidate], list[Path]]:
        candidates: dict[Path, _Candidate] = {}
        roots: list[Path] = []
        for arg in paths:
            absolute = arg.resolve()
            if absolute.is_dir():
                roots.append(absolute)
                for dirpath, dirnames, filenames in os.walk(absolute):
                    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                    for name in sorted(filenames):
                        file = Path(dirpath) / name
                        if name.startswith("."):
                            continue
                        if kind_of(file) is None:
                            report.skipped.append(str(file))
                            continue
                        display = file.relative_to(absolute).as_posix()
                        candidates.setdefault(file, _Candidate(file, display, absolute))
            elif absolute.is_file():
                display = _display_for_file(absolute)
                candidates.setdefault(absolute, _Candidate(absolute, display, None))
            else:
                report.failed.append((str(arg), f"{arg}: no such file or directory"))
        return list(candidates.values()), roots

    def _ingest_one(self, cand: _Candidate, report: IngestReport) -> None:
        try:
            data = cand.file.read_bytes()
        except OSError as exc:
            report.failed.append((cand.display, f"{cand.display}: cannot read ({exc.strerror})"))
            return
        digest = hashlib.sha256(data).hexdigest()
        existing = store.get_source(self._conn, str(cand.file))
        model, chunking = self._embedder.name, self._settings.chunking
        if (
            existing
            and existing.sha256 == digest
            and existing.embedding_model == model
            and existing.chunking == chunking
        ):
            report.unchanged.append(existing.path)
            return
        try:
            doc = load_document(Path(cand.display), data)
        except UnreadableDocument as exc:
            report.failed.append((cand.display, str(exc)))
            return
        texts = self.split(doc)
        # The title goes into what is embedded: a chunk deep in "Expense policy"
        # is then still about expenses.
        vectors = self._embedder.embed([f"{doc.title}\n{t}" for t in texts])
        chunks = [store.NewChunk(text=t, embedding=v) for t, v in zip(texts, vectors, strict=True)]
        store.replace_source(
            self._conn,
            location=str(cand.file),
            path=existing.path if existing else cand.display,
            title=doc.title,
            kind=doc.kind,
            sha256=digest,
            size=len(data),
            embedding_model=model,
            chunking=chunking,
            chunks=chunks,
        )
        report.chunks_written += len(chunks)
        (report.updated if existing else report.added).append(
            existing.path if existing else cand.display
        )


def _display_for_file(file: Path) -> str:
    """A file named on the command line shows relative to the working directory
    when it lies inside it, else by its name."""
    try:
        return file.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return file.name
