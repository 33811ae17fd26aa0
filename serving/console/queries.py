"""What the console reads: feedback counts and rates, training runs, feedback rows.

Read-only SQL on the feedback and training tables; registry rows come from
``training.registry``. Blocking: routes call these in a worker thread.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from feedback.redaction import redact
from training.operations import wilson_interval

Z95 = 1.959964


@dataclass(frozen=True)
class VersionRates:
    version: str
    thumbs_n: int
    thumbs_up: int
    thumbs_interval: tuple[float, float]
    stars_n: int
    stars_mean: float | None
    stars_interval: tuple[float, float] | None

    @property
    def thumbs_rate(self) -> float | None:
        return self.thumbs_up / self.thumbs_n if self.thumbs_n else None


def feedback_per_hour(conn: psycopg.Connection, now: datetime) -> list[tuple[datetime, int]]:
    """Ratings, comparisons and corrections per hour over the last 24 hours (oldest first)."""
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=23)
    rows = conn.execute(
        "SELECT date_trunc('hour', occurred_at) h, count(*) FROM ("
        " SELECT occurred_at FROM ratings WHERE occurred_at >= %(s)s"
        " UNION ALL SELECT occurred_at FROM comparisons WHERE occurred_at >= %(s)s"
        " UNION ALL SELECT occurred_at FROM corrections WHERE occurred_at >= %(s)s"
        ") f GROUP BY h",
        {"s": start},
    ).fetchall()
    counts: dict[datetime, int] = dict(rows)
    hours = [start + timedelta(hours=i) for i in range(24)]
    return [(h, int(counts.get(h, 0))) for h in hours]


def rates_by_version(conn: psycopg.Connection) -> list[VersionRates]:
    """Thumbs-up rate (Wilson 95%) and mean stars (normal 95%) per version that served replies."""
    rows = conn.execute(
        "SELECT m.model_version,"
        " count(r.thumbs), count(*) FILTER (WHERE r.thumbs = 'up'),"
        " count(r.stars), avg(r.stars)::float8, stddev_samp(r.stars)::float8"
        " FROM ratings r JOIN messages m ON m.id = r.message_id"
        " GROUP BY m.model_version ORDER BY m.model_version"
    ).fetchall()
    out = []
    for version, tn, up, sn, mean, sd in rows:
        interval = None
        if sn and mean is not None:
            half = Z95 * (sd or 0.0) / math.sqrt(sn) if sn > 1 else math.nan
            interval = (mean - half, mean + half)
        out.append(
            VersionRates(
                version, int(tn), int(up), wilson_interval(up, tn), int(sn), mean, interval
            )
        )
    return out


def dead_letters(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class ConsumerStatus:
    lag: int
    events: int
    age_s: float


def consumer_status(home: Path, now: float) -> ConsumerStatus | None:
    """The feedback consumer's last report (lag summed over partitions), from the status
    file ``ratchet consume`` writes under ``RATCHET_HOME``; None when there is none here."""
    from feedback.consumer import STATUS_FILE

    path = home / STATUS_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    lag = sum(int(v) for v in (data.get("lag") or {}).values())
    return ConsumerStatus(lag, int(data.get("events") or 0), now - float(data["updated_at"]))


def runs(conn: psycopg.Connection, *, limit: int = 20) -> list[dict[str, Any]]:
    cur = conn.execute(
        "SELECT id, status, algo, started_at, finished_at, timings, metrics, logs_path,"
        " plot_path, candidate_version, error FROM training_runs"
        " ORDER BY started_at DESC LIMIT %s",
        (limit,),
    )
    names = [d.name for d in cur.description or []]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def run(conn: psycopg.Connection, run_id: Any) -> dict[str, Any] | None:
    cur = conn.execute("SELECT * FROM training_runs WHERE id = %s", (run_id,))
    row = cur.fetchone()
    names = [d.name for d in cur.description or []]
    return dict(zip(names, row, strict=True)) if row else None


def log_tail(path: str | None, lines: int = 40) -> str:
    """The last ``lines`` lines of a run's log file ("" when it is not on this machine)."""
    if not path:
        return ""
    p = Path(path)
    if not p.is_file():
        return ""
    with p.open("rb") as fh:
        fh.seek(0, 2)
        fh.seek(max(0, fh.tell() - 64_000))
        text = fh.read().decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


def curves(metrics: dict[str, Any]) -> dict[str, list[float]]:
    """Per-step series from a run's metrics (``{algo: {"history": [{...}]}}``), by name."""
    series: dict[str, list[float]] = {}
    for stage, value in metrics.items():
        history = value.get("history") if isinstance(value, dict) else None
        for step in history or []:
            for key, v in step.items():
                if key != "step" and isinstance(v, int | float) and not isinstance(v, bool):
                    series.setdefault(f"{stage}: {key}", []).append(float(v))
    return series


KINDS = ("rating", "comparison", "correction")

# The first successful training run whose snapshot reached a preference pair made
# from these messages (a run uses the pairs up to its watermark).
_USED_BY = (
    "(SELECT t.id FROM preference_pairs p JOIN training_runs t ON t.status = 'succeeded'"
    " AND t.watermark >= p.feedback_at WHERE p.rejected_message_id IN ({ids})"
    " OR p.chosen_message_id IN ({ids}) ORDER BY t.watermark LIMIT 1)"
)

_FEEDBACK_SQL = {
    "rating": (
        "SELECT 'rating' kind, r.occurred_at at, r.user_id, m.model_version version,"
        " m.prompt, m.reply, NULL other, r.thumbs, r.stars, r.comment, NULL winner,"
        f" {_USED_BY.format(ids='m.id')} run_id"
        " FROM ratings r JOIN messages m ON m.id = r.message_id"
    ),
    "comparison": (
        "SELECT 'comparison', c.occurred_at, c.user_id, a.model_version || ' vs ' ||"
        " b.model_version, a.prompt, a.reply, b.reply, NULL, NULL, NULL, c.winner,"
        f" {_USED_BY.format(ids='a.id, b.id')}"
        " FROM comparisons c JOIN messages a ON a.id = c.message_id_a"
        " JOIN messages b ON b.id = c.message_id_b"
    ),
    "correction": (
        "SELECT 'correction', k.occurred_at, k.user_id, m.model_version, m.prompt, m.reply,"
        " k.corrected_reply, NULL, NULL, NULL, NULL,"
        f" {_USED_BY.format(ids='m.id')}"
        " FROM corrections k JOIN messages m ON m.id = k.message_id"
    ),
}


@dataclass(frozen=True)
class FeedbackRow:
    kind: str
    at: datetime
    user: str
    version: str
    prompt: str
    reply: str
    other: str | None  # the correction, or the other draft of a comparison
    thumbs: str | None
    stars: int | None
    comment: str | None
    winner: str | None
    run_id: Any = None  # the training run that first used a pair made from it


def feedback(
    conn: psycopg.Connection,
    *,
    kinds: Iterable[str] = KINDS,
    version: str | None = None,
    since: date | None = None,
    until: date | None = None,
    names: Iterable[str] = (),
    limit: int = 100,
) -> list[FeedbackRow]:
    """Recent feedback, newest first, every user-written text PII-redacted."""
    parts = [_FEEDBACK_SQL[k] for k in kinds if k in _FEEDBACK_SQL]
    if not parts:
        return []
    where: list[str] = []
    params: dict[str, object] = {"limit": limit}
    if version:
        where.append("f.version LIKE %(version)s")
        params["version"] = f"%{version}%"
    if since:
        where.append("f.at >= %(since)s")
        params["since"] = since
    if until:
        where.append("f.at < %(until)s")
        params["until"] = until + timedelta(days=1)
    sql = (
        "SELECT * FROM ("
        + " UNION ALL ".join(parts)
        + ") f"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY f.at DESC LIMIT %(limit)s"
    )
    names = list(names)

    def clean(text: str | None) -> str | None:
        return None if text is None else redact(text, names)

    rows = []
    for (
        kind,
        at,
        user,
        ver,
        prompt,
        reply,
        other,
        thumbs,
        stars,
        comment,
        winner,
        run_id,
    ) in conn.execute(sql, params):
        asked = next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")
        rows.append(
            FeedbackRow(
                kind, at, user, ver, clean(asked) or "", clean(reply) or "", clean(other),
                thumbs, stars, clean(comment), winner, run_id,
            )
        )  # fmt: skip
    return rows
