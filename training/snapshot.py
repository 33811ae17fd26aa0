"""Dataset snapshots: preference pairs and SFT examples since the last run.

The feedback package builds the records (``feedback.pairs.load_pairs`` and
``load_sft_examples``, already PII-redacted); this module reads them through
the :class:`FeedbackSource` protocol, deduplicates them, and splits them into
train and held-out sets by conversation, so no conversation leaks across.

A snapshot reads the records in ``(since, until]``: ``until`` is the source's
:meth:`~FeedbackSource.horizon`, for the store ``feedback.watermark.committed_through``
(nothing at or below it can still be committed). Its ``watermark``, the next
run's ``since``, is the newest ``created_at`` it read, so a consumer batch that
was still being written during the snapshot (its ``stored_at`` is its
transaction's start) comes in the next snapshot instead of falling below the
watermark, and no record is read twice (a changed rating does come back: it is
new feedback).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import psycopg

from feedback.events import Messages
from training.errors import TrainingError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pair:
    """One preference: for ``prompt`` (chat messages), ``chosen`` beat ``rejected``."""

    prompt: Messages
    chosen: str
    rejected: str
    conversation_id: str
    created_at: datetime | None = None


@dataclass(frozen=True)
class SftExample:
    """A reply worth imitating (a correction, or a top-rated answer)."""

    prompt: Messages
    completion: str
    conversation_id: str
    created_at: datetime | None = None


class FeedbackSource(Protocol):
    def horizon(self, conn: psycopg.Connection | None) -> datetime | None:
        """Records created after this may not all be readable yet (None: no such limit).
        Called before the loads; they get it as ``until``."""
        ...

    def load_pairs(
        self, conn: psycopg.Connection | None, since: datetime | None, until: datetime | None = None
    ) -> Sequence[Any]: ...

    def load_sft_examples(
        self, conn: psycopg.Connection | None, since: datetime | None, until: datetime | None = None
    ) -> Sequence[Any]: ...


def _settings_pii_names() -> list[str]:
    from feedback.settings import FeedbackSettings

    return list(FeedbackSettings().pii_names)


@dataclass
class StoreSource:
    """Reads the feedback store through ``feedback.pairs``, redacting ``names`` (default:
    the feedback settings' ``pii_names``, read when the source is made)."""

    names: list[str] = field(default_factory=_settings_pii_names)

    def horizon(self, conn: psycopg.Connection | None) -> datetime | None:
        from feedback.watermark import committed_through

        return committed_through(conn)

    def load_pairs(
        self, conn: psycopg.Connection | None, since: datetime | None, until: datetime | None = None
    ) -> Sequence[Any]:
        from feedback import pairs

        return pairs.load_pairs(conn, since, until=until, names=self.names)

    def load_sft_examples(
        self, conn: psycopg.Connection | None, since: datetime | None, until: datetime | None = None
    ) -> Sequence[Any]:
        from feedback import pairs

        return pairs.load_sft_examples(conn, since, until=until, names=self.names)


@dataclass
class Snapshot:
    train_pairs: list[Pair]
    heldout_pairs: list[Pair]
    sft_examples: list[SftExample]
    watermark: datetime | None
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def n_pairs(self) -> int:
        return len(self.train_pairs) + len(self.heldout_pairs)


def _messages(prompt: Any) -> Messages:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]


def _get(record: Any, name: str, default: Any = None) -> Any:
    if isinstance(record, dict):
        return record.get(name, default)
    return getattr(record, name, default)


def to_pair(record: Any) -> Pair:
    return Pair(
        prompt=_messages(_get(record, "prompt")),
        chosen=str(_get(record, "chosen")),
        rejected=str(_get(record, "rejected")),
        conversation_id=str(_get(record, "conversation_id", "")),
        created_at=_get(record, "created_at"),
    )


def to_sft(record: Any) -> SftExample:
    completion = _get(record, "completion") or _get(record, "chosen") or _get(record, "reply")
    return SftExample(
        prompt=_messages(_get(record, "prompt")),
        completion=str(completion),
        conversation_id=str(_get(record, "conversation_id", "")),
        created_at=_get(record, "created_at"),
    )


def is_heldout(conversation_id: str, heldout_fraction: float) -> bool:
    """A stable split: the same conversation always lands on the same side."""
    bucket = int(hashlib.sha256(conversation_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return bucket < heldout_fraction


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def build_snapshot(
    source: FeedbackSource,
    conn: psycopg.Connection | None,
    *,
    since: datetime | None,
    heldout_fraction: float = 0.2,
) -> Snapshot:
    """Load, deduplicate and split the feedback recorded after ``since`` (up to the
    source's horizon; the rest waits for the next snapshot)."""
    until = source.horizon(conn)
    raw_pairs = [to_pair(r) for r in source.load_pairs(conn, since, until)]
    raw_sft = [to_sft(r) for r in source.load_sft_examples(conn, since, until)]
    seen: set[str] = set()
    pairs: list[Pair] = []
    for p in raw_pairs:
        key = _key(p.prompt, p.chosen, p.rejected)
        if key in seen or p.chosen == p.rejected:
            continue
        seen.add(key)
        pairs.append(p)
    seen.clear()
    sft: list[SftExample] = []
    for s in raw_sft:
        key = _key(s.prompt, s.completion)
        if key not in seen:
            seen.add(key)
            sft.append(s)
    train = [p for p in pairs if not is_heldout(p.conversation_id, heldout_fraction)]
    heldout = [p for p in pairs if is_heldout(p.conversation_id, heldout_fraction)]
    # The newest record read (at most ``until``), not ``until`` itself: the JSONL
    # source has no horizon, and the store's records above it come next time.
    read = [r.created_at for r in raw_pairs] + [r.created_at for r in raw_sft]
    stamps = [stamp for stamp in read if stamp is not None]
    watermark = max(stamps) if stamps else since
    stats = {
        "pairs_loaded": len(raw_pairs),
        "pairs_deduplicated": len(pairs),
        "pairs_train": len(train),
        "pairs_heldout": len(heldout),
        "sft_examples": len(sft),
    }
    logger.info("snapshot of (%s, %s]: %s", since, until, stats)
    return Snapshot(train, heldout, sft, watermark, stats)


class JsonlSource:
    """Preference pairs from a JSONL file (one ``{prompt, chosen, rejected, conversation_id,
    created_at}`` object per line), e.g. an export of the feedback store."""

    def __init__(self, pairs_path: Any, sft_path: Any = None) -> None:
        from pathlib import Path

        self.pairs_path = Path(pairs_path)
        self.sft_path = Path(sft_path) if sft_path else None

    def horizon(self, conn: psycopg.Connection | None) -> datetime | None:
        return None  # a file is complete as it is

    @staticmethod
    def _read(path: Any, since: datetime | None, until: datetime | None) -> list[dict[str, Any]]:
        rows = []
        try:
            fh = open(path)
        except OSError as exc:
            raise TrainingError(f"cannot read {path}: {exc.strerror}") from exc
        with fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TrainingError(f"{path}:{number}: not JSON ({exc.msg})") from exc
                if row.get("created_at"):
                    row["created_at"] = datetime.fromisoformat(row["created_at"])
                stamp = row.get("created_at")
                if stamp is None or (
                    (since is None or stamp > since) and (until is None or stamp <= until)
                ):
                    rows.append(row)
        return rows

    def load_pairs(
        self, conn: psycopg.Connection | None, since: datetime | None, until: datetime | None = None
    ) -> Sequence[Any]:
        return self._read(self.pairs_path, since, until)

    def load_sft_examples(
        self, conn: psycopg.Connection | None, since: datetime | None, until: datetime | None = None
    ) -> Sequence[Any]:
        return self._read(self.sft_path, since, until) if self.sft_path else []
