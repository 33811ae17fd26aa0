"""Dataset snapshots: preference pairs and SFT examples of the training window.

The feedback package builds the records (``feedback.pairs.load_pairs`` and
``load_sft_examples``, already PII-redacted); this module reads them through
the :class:`FeedbackSource` protocol, deduplicates them, and splits them by
the normalised prompt hash into three prompt-disjoint slices: the policy's
(reward model, SFT, PPO prompts), the judge's (the independent judge of the
gates) and the held-out one (accuracies and the gates' prompts). No prompt
sits on two sides, even when a rating pair joins replies from two conversations.

Training data is cumulative, or a rolling window (``TrainCycleConfig.window_days``),
not only what arrived since the last run, so a rejected run's feedback is used
again by the next cycle.

A snapshot reads the records in ``(since, until]`` (``since``: the window's
start): ``until`` is the source's :meth:`~FeedbackSource.horizon`, for the store
``feedback.watermark.committed_through`` (nothing at or below it can still be
committed). Its ``watermark`` (the next run's ``new_since``, which counts the
new pairs) is the newest ``created_at`` it read, so a consumer batch that
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
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

import psycopg

from feedback.events import Messages
from training.errors import TrainingError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Provenance:
    """Where a training example came from, so it can be traced to the replies users rated:
    the kind of feedback, the rated messages' ids and the served model versions that
    wrote them (empty where a source does not carry them, e.g. an old export)."""

    source: str = ""
    message_ids: tuple[str, ...] = ()
    model_versions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pair:
    """One preference: for ``prompt`` (chat messages), ``chosen`` beat ``rejected``."""

    prompt: Messages
    chosen: str
    rejected: str
    conversation_id: str
    created_at: datetime | None = None
    provenance: Provenance = field(default_factory=Provenance)


@dataclass(frozen=True)
class SftExample:
    """A reply worth imitating (a correction, or a top-rated answer)."""

    prompt: Messages
    completion: str
    conversation_id: str
    created_at: datetime | None = None
    provenance: Provenance = field(default_factory=Provenance)


@dataclass(frozen=True)
class KtoExample:
    """An unpaired thumbs verdict on a reply (``label`` True: every rater liked it)."""

    prompt: Messages
    completion: str
    label: bool
    conversation_id: str
    created_at: datetime | None = None
    provenance: Provenance = field(default_factory=Provenance)


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

    def load_kto_examples(
        self, conn: psycopg.Connection | None, since: datetime | None, until: datetime | None = None
    ) -> Sequence[Any]:
        from feedback import pairs

        return pairs.load_kto_examples(conn, since, until=until, names=self.names)


@dataclass
class Snapshot:
    train_pairs: list[Pair]
    heldout_pairs: list[Pair]
    sft_examples: list[SftExample]
    watermark: datetime | None
    stats: dict[str, int] = field(default_factory=dict)
    judge_pairs: list[Pair] = field(default_factory=list)
    kto_examples: list[KtoExample] = field(default_factory=list)  # the policy's prompts only

    @property
    def n_pairs(self) -> int:
        return len(self.train_pairs) + len(self.judge_pairs) + len(self.heldout_pairs)


def _as_messages(prompt: Any) -> Messages:
    """A stored prompt as chat messages (a bare string is one user turn)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]


def _field(record: Any, name: str, default: Any = None) -> Any:
    """``name`` of a record the source loaded: a row (dict) or an object with attributes."""
    if isinstance(record, dict):
        return record.get(name, default)
    return getattr(record, name, default)


def _provenance(record: Any, ids: Sequence[str], versions: Sequence[str]) -> Provenance:
    return Provenance(
        source=str(_field(record, "source", "") or ""),
        message_ids=tuple(str(v) for n in ids if (v := _field(record, n)) is not None),
        model_versions=tuple(str(v) for n in versions if (v := _field(record, n)) is not None),
    )


def to_pair(record: Any) -> Pair:
    return Pair(
        prompt=_as_messages(_field(record, "prompt")),
        chosen=str(_field(record, "chosen")),
        rejected=str(_field(record, "rejected")),
        conversation_id=str(_field(record, "conversation_id", "")),
        created_at=_field(record, "created_at"),
        provenance=_provenance(
            record,
            ("chosen_message_id", "rejected_message_id"),
            ("chosen_model_version", "model_version"),
        ),
    )


def to_sft(record: Any) -> SftExample:
    completion = _field(record, "completion") or _field(record, "chosen") or _field(record, "reply")
    return SftExample(
        prompt=_as_messages(_field(record, "prompt")),
        completion=str(completion),
        conversation_id=str(_field(record, "conversation_id", "")),
        created_at=_field(record, "created_at"),
        provenance=_provenance(record, ("message_id",), ("model_version",)),
    )


def to_kto(record: Any) -> KtoExample:
    return KtoExample(
        prompt=_as_messages(_field(record, "prompt")),
        completion=str(_field(record, "completion")),
        label=bool(_field(record, "label")),
        conversation_id=str(_field(record, "conversation_id", "")),
        created_at=_field(record, "created_at"),
        provenance=replace(
            _provenance(record, ("message_id",), ("model_version",)), source="thumbs"
        ),
    )


def write_provenance(snapshot: Snapshot, path: Any) -> dict[str, Any]:
    """One JSON line per training record of ``snapshot`` (slice, kind, provenance) at
    ``path``; returns the run record's summary (path, counts by source, versions)."""
    from collections import Counter

    by_source: Counter[str] = Counter()
    versions: set[str] = set()
    with open(path, "w") as fh:
        records: list[tuple[str, str, Pair | SftExample | KtoExample]] = [
            *(("policy", "pair", p) for p in snapshot.train_pairs),
            *(("judge", "pair", p) for p in snapshot.judge_pairs),
            *(("heldout", "pair", p) for p in snapshot.heldout_pairs),
            *(("policy", "sft", e) for e in snapshot.sft_examples),
            *(("policy", "kto", e) for e in snapshot.kto_examples),
        ]
        for slice_name, kind, rec in records:
            prov = rec.provenance
            by_source[f"{kind}:{prov.source or 'unknown'}"] += 1
            versions.update(prov.model_versions)
            line = {
                "slice": slice_name,
                "kind": kind,
                "source": prov.source,
                "message_ids": list(prov.message_ids),
                "model_versions": list(prov.model_versions),
                "conversation_id": rec.conversation_id,
            }
            fh.write(json.dumps(line) + "\n")
    return {"path": str(path), "by_source": dict(by_source), "model_versions": sorted(versions)}


SLICES = ("policy", "judge", "heldout")


def prompt_slice(prompt: Messages, heldout_fraction: float, judge_fraction: float) -> str:
    """Which slice a prompt's pairs belong to, by its normalised prompt hash: a stable,
    prompt-disjoint split (the same question always lands in the same slice, whatever
    conversation it was asked in). ``heldout``: judged by the gates; ``judge``: trains
    the independent judge only; ``policy``: trains the policy's reward model and SFT."""
    from feedback.pairs import normalised_prompt_hash

    bucket = int(normalised_prompt_hash(prompt)[:8], 16) / 0x100000000
    if bucket < heldout_fraction:
        return "heldout"
    if bucket < heldout_fraction + judge_fraction:
        return "judge"
    return "policy"


def _content_hash(*parts: Any) -> str:
    """A hash of ``parts`` (their JSON): two records with the same content share it."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _dedup_pairs(raw: Sequence[Pair]) -> list[Pair]:
    seen: set[str] = set()
    pairs: list[Pair] = []
    for p in raw:
        key = _content_hash(p.prompt, p.chosen, p.rejected)
        if key in seen or p.chosen == p.rejected:
            continue
        seen.add(key)
        pairs.append(p)
    return pairs


def build_snapshot(
    source: FeedbackSource,
    conn: psycopg.Connection | None,
    *,
    since: datetime | None,
    new_since: datetime | None = None,
    heldout_fraction: float = 0.2,
    judge_fraction: float = 0.3,
) -> Snapshot:
    """Load, deduplicate and split the feedback recorded after ``since`` (the start
    of the training window; None: all of it) up to the source's horizon.

    Training data is cumulative (or a rolling window): a rejected run's feedback
    is used again next cycle. ``new_since`` (the last run's watermark) only
    counts how many pairs are new (``stats["pairs_new"]``)."""
    if heldout_fraction + judge_fraction >= 1:
        raise TrainingError("heldout_fraction + judge_fraction must leave pairs for the policy")
    until = source.horizon(conn)
    raw_pairs = [to_pair(r) for r in source.load_pairs(conn, since, until)]
    raw_sft = [to_sft(r) for r in source.load_sft_examples(conn, since, until)]
    pairs = _dedup_pairs(raw_pairs)
    split: dict[str, list[Pair]] = {name: [] for name in SLICES}
    for p in pairs:
        split[prompt_slice(p.prompt, heldout_fraction, judge_fraction)].append(p)
    seen: set[str] = set()
    sft: list[SftExample] = []
    for s in raw_sft:
        key = _content_hash(s.prompt, s.completion)
        # SFT trains the policy: never on a held-out question.
        heldout = prompt_slice(s.prompt, heldout_fraction, judge_fraction) == "heldout"
        if key not in seen and not heldout:
            seen.add(key)
            sft.append(s)
    # KTO trains the policy: only the policy slice's questions (never the judge's or held-out).
    load_kto = getattr(source, "load_kto_examples", None)
    kto = [
        k
        for k in (to_kto(r) for r in (load_kto(conn, since, until) if load_kto else []))
        if prompt_slice(k.prompt, heldout_fraction, judge_fraction) == "policy"
    ]
    # The newest record read (at most ``until``), not ``until`` itself: the JSONL
    # source has no horizon, and the store's records above it come next time.
    read = [r.created_at for r in raw_pairs] + [r.created_at for r in raw_sft]
    stamps = [stamp for stamp in read if stamp is not None]
    watermark = max(stamps) if stamps else new_since
    new = [p for p in pairs if new_since is None or (p.created_at and p.created_at > new_since)]
    stats = {
        "pairs_loaded": len(raw_pairs),
        "pairs_deduplicated": len(pairs),
        "pairs_new": len(new),
        "pairs_train": len(split["policy"]),
        "pairs_judge": len(split["judge"]),
        "pairs_heldout": len(split["heldout"]),
        "sft_examples": len(sft),
        "kto_examples": len(kto),
    }
    logger.info("snapshot of (%s, %s]: %s", since, until, stats)
    return Snapshot(split["policy"], split["heldout"], sft, watermark, stats, split["judge"], kto)


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
