"""``ratchet feedback export``: training data out of the store, PII-redacted.

Writes three kinds of records (built by :mod:`feedback.pairs`) into one
directory, each with its provenance:

- ``pairs``: ``prompt`` (chat messages), ``chosen``, ``rejected`` (strings),
  ``conversation_id``, ``created_at`` (ISO time), ``source``,
  ``chosen_message_id``, ``rejected_message_id``, ``model_version``,
  ``chosen_model_version``, ``pair_key``;
- ``kto``: ``prompt``, ``completion``, ``label`` (bool), ``conversation_id``,
  ``created_at``, ``message_id``, ``model_version``;
- ``sft``: ``prompt``, ``completion``, ``conversation_id``, ``created_at``,
  ``source``, ``message_id``, ``model_version``.

``fmt="jsonl"`` writes ``pairs.jsonl``, ``kto.jsonl`` and ``sft.jsonl``
(``pairs.jsonl`` is what ``training.snapshot.JsonlSource`` reads);
``fmt="hf"`` writes Hugging Face datasets (``save_to_disk``) into ``pairs/``,
``kto/`` and ``sft/``, read back with ``datasets.load_from_disk``. Each file or
dataset is written under a temporary name and then moved into place, so a
failed export leaves the previous one whole. Nothing to export writes empty
files (or datasets) and says so in the log.

The exported pairs are also recorded in ``preference_pairs`` (once per
``pair_key``: exporting twice adds nothing).

An export reads up to :func:`feedback.watermark.committed_through` and reports that
time as ``complete_through``: records stored while a consumer batch was still
being written are left out rather than half-read, and ``--since
<complete_through>`` next time exports exactly what came after (a watermark
taken from the newest exported ``created_at`` could skip such a batch).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg.types.json import Jsonb

from feedback.errors import FeedbackError
from feedback.pairs import (
    KtoRecord,
    PreferencePair,
    SftRecord,
    load_kto_examples,
    load_pairs,
    load_sft_examples,
)
from feedback.watermark import committed_through

logger = logging.getLogger(__name__)

Format = Literal["jsonl", "hf"]
FORMATS: tuple[str, ...] = ("jsonl", "hf")
KINDS: tuple[str, ...] = ("pairs", "kto", "sft")
_PROGRESS_FROM = 50_000  # rows; smaller datasets save without a progress bar


class ExportError(FeedbackError):
    """The export cannot be written where or how it was asked for."""


@dataclass(frozen=True)
class ExportSummary:
    """What one export wrote."""

    out: Path
    fmt: str
    pairs: int
    kto: int
    sft: int
    pairs_recorded: int  # rows new to preference_pairs
    paths: tuple[Path, ...]
    complete_through: datetime | None = None  # the next export's safe ``since``


def export(
    conn: psycopg.Connection,
    out: Path,
    *,
    fmt: str = "jsonl",
    since: datetime | None = None,
    names: Iterable[str] = (),
) -> ExportSummary:
    """Write the pairs, KTO and SFT examples built since ``since`` (and up to
    ``committed_through``, returned as ``complete_through``) into the directory ``out``,
    with the person ``names`` redacted (the caller passes its ``pii_names`` setting)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    _prepare(out)
    names = list(names)
    until = committed_through(conn)
    pairs = load_pairs(conn, since, until=until, names=names)
    kto = load_kto_examples(conn, since, until=until, names=names)
    sft = load_sft_examples(conn, since, until=until, names=names)
    rows = {
        "pairs": [pair_row(p) for p in pairs],
        "kto": [kto_row(k) for k in kto],
        "sft": [sft_row(s) for s in sft],
    }
    write = _write_jsonl if fmt == "jsonl" else _write_hf
    paths = tuple(write(out, kind, rows[kind]) for kind in KINDS)
    recorded = record_pairs(conn, pairs=pairs)
    if not (pairs or kto or sft):
        logger.warning("nothing to export since %s: wrote empty %s files to %s", since, fmt, out)
    logger.info(
        "exported %d pairs (%d new in preference_pairs), %d KTO, %d SFT to %s (%s)",
        len(pairs),
        recorded,
        len(kto),
        len(sft),
        out,
        fmt,
    )
    return ExportSummary(out, fmt, len(pairs), len(kto), len(sft), recorded, paths, until)


def record_pairs(conn: psycopg.Connection, *, pairs: Sequence[PreferencePair]) -> int:
    """Insert ``pairs`` into ``preference_pairs`` (existing ``pair_key``s are left alone).

    Returns how many rows were new."""
    if not pairs:
        return 0
    params = [
        (
            p.pair_key,
            p.source,
            Jsonb(p.prompt),
            p.chosen,
            p.rejected,
            _uuid_or_none(p.conversation_id),
            p.chosen_message_id,
            p.rejected_message_id,
            p.model_version,
            p.created_at,
        )
        for p in pairs
    ]
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO preference_pairs (pair_key, source, prompt, chosen, rejected,"
            " conversation_id, chosen_message_id, rejected_message_id, model_version, feedback_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (pair_key) DO NOTHING",
            params,
        )
        return max(cur.rowcount, 0)  # psycopg sums rowcount over executemany


def pair_row(p: PreferencePair) -> dict[str, Any]:
    return {**asdict(p), "created_at": p.created_at.isoformat(), "pair_key": p.pair_key}


def kto_row(k: KtoRecord) -> dict[str, Any]:
    return {**asdict(k), "created_at": k.created_at.isoformat()}


def sft_row(s: SftRecord) -> dict[str, Any]:
    return {**asdict(s), "created_at": s.created_at.isoformat()}


def _prepare(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory; give a directory for --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create {out}: {exc.strerror or exc}") from exc
    if not os.access(out, os.W_OK):
        raise ExportError(f"cannot write into {out}: permission denied")


def _write_jsonl(out: Path, kind: str, rows: list[dict[str, Any]]) -> Path:
    target = out / f"{kind}.jsonl"
    if target.is_dir():
        raise ExportError(f"{target} is a directory; remove it or export elsewhere")
    tmp = out / f".{kind}.jsonl.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"cannot write {target}: {exc.strerror or exc}") from exc
    return target


def _write_hf(out: Path, kind: str, rows: list[dict[str, Any]]) -> Path:
    import datasets

    target = out / kind
    if target.exists() and not (target / "dataset_info.json").exists():
        raise ExportError(
            f"{target} exists and is not a saved dataset; remove it or export elsewhere"
        )
    tmp = out / f".{kind}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        features = _features(kind)
        columns = {name: [row[name] for row in rows] for name in features}
        dataset = datasets.Dataset.from_dict(columns, features=features)
        quiet = len(rows) < _PROGRESS_FROM and datasets.is_progress_bar_enabled()
        if quiet:
            datasets.disable_progress_bars()
        try:
            # An empty dataset needs one explicit shard, or it does not load back.
            dataset.save_to_disk(str(tmp), num_shards=None if rows else 1)
        finally:
            if quiet:
                datasets.enable_progress_bars()
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except OSError as exc:
        raise ExportError(f"cannot write {target}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _features(kind: str) -> Any:
    from datasets import Features, List, Value

    text = Value("string")
    common = {
        "prompt": List({"role": text, "content": text}),
        "conversation_id": text,
        "created_at": text,
    }
    if kind == "pairs":
        return Features(
            {
                **common,
                "chosen": text,
                "rejected": text,
                "source": text,
                "chosen_message_id": text,
                "rejected_message_id": text,
                "model_version": text,
                "chosen_model_version": text,
                "pair_key": text,
            }
        )
    if kind == "kto":
        return Features(
            {
                **common,
                "completion": text,
                "label": Value("bool"),
                "message_id": text,
                "model_version": text,
            }
        )
    return Features(
        {
            **common,
            "completion": text,
            "source": text,
            "message_id": text,
            "model_version": text,
        }
    )


def _uuid_or_none(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
