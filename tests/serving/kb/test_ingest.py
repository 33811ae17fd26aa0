"""Ingestion into Postgres: idempotence, replacement, deletion, bad files."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from serving.kb import store
from serving.kb.embeddings import Embedder
from serving.kb.ingest import Ingestor, IngestReport
from serving.kb.settings import KBSettings


def ingest(
    url: str, embedder: Embedder, *paths: Path, prune: bool = True, **chunking: int
) -> IngestReport:
    with psycopg.connect(url) as conn:
        return Ingestor(conn, embedder, KBSettings(database_url=url, **chunking)).ingest(
            list(paths), prune=prune, progress=False
        )


def snapshot(url: str) -> dict[str, list[tuple[int, str]]]:
    """path -> [(chunk id, text)] for every source."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT s.path, c.id, c.text FROM kb_sources s JOIN kb_chunks c ON c.source_id = s.id"
            " ORDER BY s.path, c.ordinal"
        ).fetchall()
    out: dict[str, list[tuple[int, str]]] = {}
    for path, cid, text in rows:
        out.setdefault(path, []).append((cid, text))
    return out


def generation(url: str) -> int:
    with psycopg.connect(url) as conn:
        return store.generation(conn)


def test_ingest_stores_sources_chunks_and_embeddings(
    database_url: str, embedder: Embedder, kb_copy: Path
) -> None:
    report = ingest(database_url, embedder, kb_copy)
    assert not report.failed
    expected = sorted(
        p.relative_to(kb_copy).as_posix()
        for p in kb_copy.rglob("*")
        if p.suffix in {".md", ".txt", ".html"}
    )
    assert sorted(report.added) == expected
    assert str(kb_copy / "questions.yaml") in report.skipped
    with psycopg.connect(database_url) as conn:
        sources = {s.path: s for s in store.list_sources(conn)}
        matrix = store.load_matrix(conn)
    assert sorted(sources) == expected
    travel = sources["policies/travel.html"]
    assert (travel.title, travel.kind) == ("Business travel policy", "html")
    assert sources["howto/onboarding.txt"].title == "Your first weeks at Kestrel Robotics"
    assert sum(s.chunks for s in sources.values()) == len(matrix.ids) == report.chunks_written
    assert matrix.vectors.shape == (len(matrix.ids), 384)
    norms = (matrix.vectors**2).sum(axis=1) ** 0.5
    assert abs(norms - 1).max() < 1e-4
    # HTML markup is gone from the stored text.
    assert not any(
        "<" in t for p, t in zip(matrix.paths, matrix.texts, strict=True) if p.endswith(".html")
    )


def test_reingest_is_idempotent(database_url: str, embedder: Embedder, kb_copy: Path) -> None:
    ingest(database_url, embedder, kb_copy)
    before, gen = snapshot(database_url), generation(database_url)
    report = ingest(database_url, embedder, kb_copy)
    assert report.added == report.updated == report.removed == []
    assert len(report.unchanged) == len(before)
    assert report.chunks_written == 0
    assert snapshot(database_url) == before  # same rows, same chunk ids
    assert generation(database_url) == gen  # nothing for retrievers to reload


def test_other_chunk_settings_split_unchanged_files_again(
    database_url: str, embedder: Embedder, kb_copy: Path
) -> None:
    ingest(database_url, embedder, kb_copy)
    before = snapshot(database_url)
    report = ingest(database_url, embedder, kb_copy, chunk_size=400, chunk_overlap=50)
    assert report.unchanged == [] and sorted(report.updated) == sorted(before)
    after = snapshot(database_url)
    assert sum(map(len, after.values())) > sum(map(len, before.values()))
    assert all(len(text) <= 400 for chunks in after.values() for _, text in chunks)
    with psycopg.connect(database_url) as conn:
        assert {s.chunking for s in store.list_sources(conn)} == {"400/50"}
    again = ingest(database_url, embedder, kb_copy, chunk_size=400, chunk_overlap=50)
    assert again.updated == [] and len(again.unchanged) == len(before)


def test_changed_file_replaces_its_chunks(
    database_url: str, embedder: Embedder, kb_copy: Path
) -> None:
    ingest(database_url, embedder, kb_copy)
    before = snapshot(database_url)
    leave = kb_copy / "policies" / "annual-leave.md"
    leave.write_text(leave.read_text().replace("**27 days**", "**29 days**"))
    report = ingest(database_url, embedder, kb_copy)
    assert report.updated == ["policies/annual-leave.md"]
    after = snapshot(database_url)
    new_text = " ".join(t for _, t in after["policies/annual-leave.md"])
    assert "29 days" in new_text and "27 days" not in new_text
    old_ids = {cid for cid, _ in before["policies/annual-leave.md"]}
    assert old_ids.isdisjoint(cid for cid, _ in after["policies/annual-leave.md"])
    for path in before:
        if path != "policies/annual-leave.md":
            assert after[path] == before[path]


def test_deleted_file_disappears_when_its_directory_is_reingested(
    database_url: str, embedder: Embedder, kb_copy: Path
) -> None:
    ingest(database_url, embedder, kb_copy)
    (kb_copy / "policies" / "travel.html").unlink()
    kept = ingest(database_url, embedder, kb_copy, prune=False)
    assert kept.removed == [] and "policies/travel.html" in snapshot(database_url)
    report = ingest(database_url, embedder, kb_copy)
    assert report.removed == ["policies/travel.html"]
    assert "policies/travel.html" not in snapshot(database_url)
    with psycopg.connect(database_url) as conn:
        orphans = conn.execute(
            "SELECT count(*) FROM kb_chunks c LEFT JOIN kb_sources s ON s.id = c.source_id"
            " WHERE s.id IS NULL"
        ).fetchone()
    assert orphans == (0,)


def test_pruning_a_subdirectory_leaves_the_rest(
    database_url: str, embedder: Embedder, kb_copy: Path
) -> None:
    ingest(database_url, embedder, kb_copy)
    (kb_copy / "README.md").unlink()
    report = ingest(database_url, embedder, kb_copy / "policies")
    assert report.removed == []  # README.md is not under policies/
    assert "README.md" in snapshot(database_url)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.md", b"", "empty"),
        ("blank.txt", b"  \n\n\t ", "empty"),
        ("image.md", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        ("latin1.txt", "Caf\u00e9 cr\u00e8me".encode("latin-1"), "not UTF-8"),
        ("scripts-only.html", b"<html><script>var x = 1;</script></html>", "no text"),
        ("broken.pdf", b"%PDF-1.4 this is not really a pdf", "not a readable PDF"),
    ],
)
def test_bad_files_get_a_clear_message(
    database_url: str, embedder: Embedder, tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / name).write_bytes(content)
    (docs / "good.md").write_text("# Good\n\nThe canteen serves soup on Wednesdays.\n")
    report = ingest(database_url, embedder, docs)
    assert report.added == ["good.md"]  # one bad file does not stop the rest
    assert len(report.failed) == 1
    path, text = report.failed[0]
    assert path == name and name in text and message in text


def test_missing_path_and_unsupported_file(
    database_url: str, embedder: Embedder, tmp_path: Path
) -> None:
    sheet = tmp_path / "budget.xlsx"
    sheet.write_bytes(b"PK\x03\x04")
    report = ingest(database_url, embedder, tmp_path / "nope", sheet)
    messages = [m for _, m in report.failed]
    assert any("no such file or directory" in m for m in messages)
    assert any("unsupported file type" in m and ".md" in m for m in messages)
    assert snapshot(database_url) == {}


def test_pdf_is_ingested(database_url: str, embedder: Embedder, tmp_path: Path) -> None:
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    page = writer.add_blank_page(width=612, height=792)
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    page[NameObject("/Resources")] = DictionaryObject(
        {NameObject("/Font"): DictionaryObject({NameObject("/F1"): writer._add_object(font)})}
    )
    stream = DecodedStreamObject()
    stream.set_data(b"BT /F1 12 Tf 72 720 Td (The parking garage closes at 23:00.) Tj ET")
    page[NameObject("/Contents")] = writer._add_object(stream)
    writer.add_metadata({"/Title": "Parking rules"})
    with open(tmp_path / "parking.pdf", "wb") as fh:
        writer.write(fh)
    report = ingest(database_url, embedder, tmp_path)
    assert report.added == ["parking.pdf"], report.failed
    with psycopg.connect(database_url) as conn:
        (source,) = store.list_sources(conn)
    assert (source.title, source.kind) == ("Parking rules", "pdf")
    assert "garage closes at 23:00" in snapshot(database_url)["parking.pdf"][0][1]
