"""``ratchet kb ingest PATH...``, ``ratchet kb sources``, ``ratchet kb search QUERY``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    kb = sub.add_parser("kb", help="knowledge base: ingest documents, list sources, search")
    kb_sub = kb.add_subparsers(dest="kb_command", required=True, metavar="ACTION")

    ingest = kb_sub.add_parser(
        "ingest",
        help="ingest Markdown, text, HTML and PDF files (directories recursively)",
        description="Split, embed and store documents. Unchanged files are skipped (same "
        "bytes, embedding model and RATCHET_KB_CHUNK_SIZE/_OVERLAP); changed files are "
        "replaced; files deleted from an ingested directory are removed.",
    )
    ingest.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    ingest.add_argument(
        "--no-prune",
        dest="prune",
        action="store_false",
        help="keep sources whose files are gone from the ingested directories",
    )
    ingest.add_argument("--no-progress", dest="progress", action="store_false")
    ingest.set_defaults(func=_ingest)

    sources = kb_sub.add_parser("sources", help="list the ingested documents")
    sources.set_defaults(func=_sources)

    search = kb_sub.add_parser("search", help="show the chunks a question retrieves")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=4, help="chunks to show (default 4)")
    search.add_argument(
        "--all", action="store_true", help="ignore the relevance threshold (RATCHET_KB_MIN_SCORE)"
    )
    search.set_defaults(func=_search)


def _settings():  # noqa: ANN202 - KBSettings, imported lazily
    from serving.kb.settings import KBSettings

    return KBSettings()


def _connect(url: str):  # noqa: ANN202
    import psycopg

    from ratchet.cli import CliError
    from ratchet.db import migrate

    try:
        migrate(url)
        return psycopg.connect(url)
    except psycopg.OperationalError as exc:
        raise CliError(
            f"cannot reach Postgres at DATABASE_URL ({exc}); run `make stack-up`"
        ) from exc


def _ingest(args: argparse.Namespace) -> int:
    from ratchet.cli import CliError
    from serving.kb.embeddings import Embedder
    from serving.kb.errors import KBError
    from serving.kb.ingest import Ingestor

    settings = _settings()
    with _connect(settings.database_url) as conn:
        try:
            embedder = Embedder(settings.embedding_model, batch_size=settings.embed_batch_size)
        except KBError as exc:
            raise CliError(str(exc)) from exc
        report = Ingestor(conn, embedder, settings).ingest(
            args.paths, prune=args.prune, progress=args.progress
        )
    for path in report.removed:
        print(f"removed  {path}")
    for _, message in report.failed:
        print(f"skipped  {message}")
    print(report.summary())
    return 1 if report.failed else 0


def _sources(args: argparse.Namespace) -> int:
    from serving.kb import store

    with _connect(_settings().database_url) as conn:
        rows = store.list_sources(conn)
    for s in rows:
        print(f"{s.path}\t{s.title}\t{s.kind}\t{s.chunks} chunks\t{s.sha256[:12]}")
    print(f"{len(rows)} sources")
    return 0


def _search(args: argparse.Namespace) -> int:
    from psycopg_pool import ConnectionPool

    from serving.kb.retriever import KnowledgeBase

    settings = _settings()
    _connect(settings.database_url).close()
    with ConnectionPool(settings.database_url, min_size=1, max_size=2) as pool:
        kb = KnowledgeBase.open(pool, settings)
        hits = kb.search(args.query, args.k, min_score=-1.0 if args.all else None)
    if not hits:
        print(f"nothing scores above {settings.min_score} (RATCHET_KB_MIN_SCORE)")
    for h in hits:
        snippet = " ".join(h.text.split())[:160]
        print(f"{h.score:.3f}  {h.source_path}#{h.chunk_id}  {h.title}\n       {snippet}")
    return 0
