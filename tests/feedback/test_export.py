"""``feedback.export`` and ``ratchet feedback export`` on a real, migrated store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import datasets
import psycopg
import pytest

from feedback.events import ComparisonGiven, CorrectionGiven, RatingGiven
from feedback.export import ExportError, export
from feedback.store import write_batch
from tests.feedback.test_pairs import message
from training.snapshot import JsonlSource

REPO = Path(__file__).resolve().parents[2]
SECRET = "sk-" + "Zz9Yy8Xx7Ww6Vv5Uu4Tt3"


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as c:
        yield c


@pytest.fixture
def populated(conn: psycopg.Connection) -> psycopg.Connection:
    """2 pairs (a comparison, a correction), 2 KTO examples, 2 SFT examples."""
    a = message("alice", "Name: Ada Lovelace. Which laptop?", "The ThinkPad.", version="v1")
    b = message("alice", "Name: Ada Lovelace. Which laptop?", "Any.", version="v2")
    c = message("bob", "Reset my password", f"Use key {SECRET} or mail it@example.com.")
    write_batch(
        conn,
        [
            a,
            b,
            c,
            ComparisonGiven(
                user_id="alice", message_id_a=a.message_id, message_id_b=b.message_id, winner="a"
            ),
            RatingGiven(user_id="alice", message_id=a.message_id, thumbs="up"),
            RatingGiven(user_id="bob", message_id=c.message_id, thumbs="down"),
            CorrectionGiven(
                user_id="bob",
                message_id=c.message_id,
                corrected_reply="Open the IT portal, or call +1 415 555 0100 (Grace Hopper).",
            ),
        ],
    )
    return conn


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_jsonl_export_writes_all_kinds_redacted(populated: psycopg.Connection, tmp_path: Path):
    out = tmp_path / "export"
    summary = export(populated, out, fmt="jsonl", names=["Grace Hopper"])
    assert (summary.pairs, summary.kto, summary.sft) == (2, 2, 2)
    pairs = read_jsonl(out / "pairs.jsonl")
    kto = read_jsonl(out / "kto.jsonl")
    sft = read_jsonl(out / "sft.jsonl")
    assert sorted((p["source"], p["chosen"]) for p in pairs) == [
        ("comparison", "The ThinkPad."),
        ("correction", "Open the IT portal, or call [PHONE] ([NAME])."),
    ]
    comparison = next(p for p in pairs if p["source"] == "comparison")
    assert comparison["prompt"] == [{"role": "user", "content": "Name: [NAME]. Which laptop?"}]
    assert comparison["model_version"] == "v2" and comparison["chosen_model_version"] == "v1"
    assert len(comparison["pair_key"]) == 64 and comparison["created_at"]
    assert sorted((k["completion"], k["label"]) for k in kto) == [
        ("The ThinkPad.", True),
        ("Use key [SECRET] or mail [EMAIL].", False),
    ]
    assert {s["source"] for s in sft} == {"correction", "rating"}
    text = "\n".join(p.read_text() for p in out.iterdir())
    for raw in ("Ada Lovelace", SECRET, "it@example.com", "555 0100", "Grace Hopper"):
        assert raw not in text
    stored = populated.execute("SELECT string_agg(reply || prompt::text, ' ') FROM messages")
    assert SECRET in stored.fetchone()[0]  # type: ignore[index]
    # The trainer can read the export back.
    assert len(JsonlSource(out / "pairs.jsonl", out / "sft.jsonl").load_pairs(None, None)) == 2


def test_hf_export_round_trips(populated: psycopg.Connection, tmp_path: Path) -> None:
    out = tmp_path / "hf"
    summary = export(populated, out, fmt="hf", names=[])
    assert {p.name for p in summary.paths} == {"pairs", "kto", "sft"}
    pairs = datasets.load_from_disk(str(out / "pairs"))
    assert len(pairs) == 2 and pairs.column_names[:2] == ["prompt", "conversation_id"]
    assert set(pairs["chosen"]) == {
        "The ThinkPad.",
        "Open the IT portal, or call [PHONE] (Grace Hopper).",
    }
    assert pairs[0]["prompt"][0]["role"] == "user"
    kto = datasets.load_from_disk(str(out / "kto"))
    assert sorted(kto["label"]) == [False, True]
    assert len(datasets.load_from_disk(str(out / "sft"))) == 2
    # A second export replaces the datasets in place.
    export(populated, out, fmt="hf", names=[])
    assert len(datasets.load_from_disk(str(out / "pairs"))) == 2
    assert sorted(p.name for p in out.iterdir()) == ["kto", "pairs", "sft"]


def test_hf_export_holds_no_raw_pii(populated: psycopg.Connection, tmp_path: Path) -> None:
    """Every record of every dataset, and every byte of the files on disk, is free of
    the PII the store holds (names, e-mail, phone, secret key)."""
    out = tmp_path / "hf"
    export(populated, out, fmt="hf", names=["Grace Hopper"])
    records = [
        json.dumps(row)
        for kind in ("pairs", "kto", "sft")
        for row in datasets.load_from_disk(str(out / kind))
    ]
    assert len(records) == 6
    text = "\n".join(records)
    on_disk = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    for raw in ("Ada Lovelace", SECRET, "it@example.com", "555 0100", "Grace Hopper"):
        assert raw not in text, raw
        assert raw.encode() not in on_disk, raw
    for tag in ("[NAME]", "[SECRET]", "[EMAIL]", "[PHONE]"):
        assert tag in text, tag


def test_empty_store_exports_empty_files_and_datasets(
    conn: psycopg.Connection, tmp_path: Path
) -> None:
    summary = export(conn, tmp_path / "j", fmt="jsonl", names=[])
    assert (summary.pairs, summary.kto, summary.sft) == (0, 0, 0)
    assert (tmp_path / "j" / "pairs.jsonl").read_text() == ""
    export(conn, tmp_path / "h", fmt="hf", names=[])
    empty = datasets.load_from_disk(str(tmp_path / "h" / "pairs"))
    assert len(empty) == 0 and "chosen" in empty.column_names


def test_pairs_are_recorded_once(populated: psycopg.Connection, tmp_path: Path) -> None:
    first = export(populated, tmp_path / "one", fmt="jsonl", names=[])
    second = export(populated, tmp_path / "two", fmt="hf", names=[])
    assert (first.pairs_recorded, second.pairs_recorded) == (2, 0)
    rows = populated.execute(
        "SELECT source, chosen, rejected, chosen_message_id IS NULL, model_version, feedback_at"
        " FROM preference_pairs ORDER BY source"
    ).fetchall()
    assert [r[:4] for r in rows] == [
        ("comparison", "The ThinkPad.", "Any.", False),
        (
            "correction",
            "Open the IT portal, or call [PHONE] (Grace Hopper).",
            "Use key [SECRET] or mail [EMAIL].",
            True,
        ),
    ]
    assert all(r[5] is not None for r in rows)


def test_since_limits_the_export(populated: psycopg.Connection, tmp_path: Path) -> None:
    later = populated.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
    summary = export(populated, tmp_path / "x", fmt="jsonl", since=later, names=[])
    assert (summary.pairs, summary.kto, summary.sft) == (0, 0, 0)


def test_bad_destinations_are_refused(conn: psycopg.Connection, tmp_path: Path) -> None:
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    with pytest.raises(ExportError, match="not a directory"):
        export(conn, afile, fmt="jsonl", names=[])
    with pytest.raises(ExportError, match="unknown format 'csv'"):
        export(conn, tmp_path / "y", fmt="csv", names=[])
    (tmp_path / "z" / "pairs").mkdir(parents=True)
    with pytest.raises(ExportError, match="not a saved dataset"):
        export(conn, tmp_path / "z", fmt="hf", names=[])


def run_cli(database_url: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url, "RATCHET_HOME": str(home)}
    env.pop("RATCHET_DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "serving.cli", "feedback", "export", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_export(populated: psycopg.Connection, database_url: str, tmp_path: Path) -> None:
    out = tmp_path / "cli-out"
    done = run_cli(database_url, tmp_path, "--out", str(out), "--format", "jsonl")
    assert done.returncode == 0, done.stderr
    assert "wrote 2 preference pairs, 2 KTO examples, 2 SFT examples" in done.stdout
    assert len(read_jsonl(out / "pairs.jsonl")) == 2

    bad = run_cli(database_url, tmp_path, "--out", str(out), "--since", "last tuesday")
    assert bad.returncode == 2
    assert "--since 'last tuesday'" in bad.stderr and "Traceback" not in bad.stderr

    afile = tmp_path / "afile"
    afile.write_text("")
    clash = run_cli(database_url, tmp_path, "--out", str(afile))
    assert clash.returncode == 2 and "not a directory" in clash.stderr
    assert "Traceback" not in clash.stderr
