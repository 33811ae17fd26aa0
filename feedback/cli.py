"""Feedback's subcommands: ``db migrate``, ``consume``, ``feedback status|spool-status|export``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from feedback.settings import FeedbackSettings
from ratchet.cli import database_unreachable


def _fail(command: str, message: str) -> int:
    print(f"ratchet {command}: {message}", file=sys.stderr)
    return 2


def _db_migrate(args: argparse.Namespace) -> int:
    from ratchet.db import migrate

    settings = FeedbackSettings()
    applied = migrate(settings.database_url)
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ""))
    return 0


def _consume(args: argparse.Namespace) -> int:
    from feedback.consumer import FeedbackConsumer, serve_metrics
    from ratchet.db import migrate

    overrides: dict[str, object] = {}
    if args.group:
        overrides["consumer_group"] = args.group
    if args.batch_size:
        overrides["consumer_batch_size"] = args.batch_size
    if args.metrics_port is not None:
        overrides["consumer_metrics_port"] = args.metrics_port
    settings = FeedbackSettings(**overrides)  # type: ignore[arg-type]
    if args.migrate:
        migrate(settings.database_url)
    serve_metrics(settings.consumer_metrics_port)
    consumer = FeedbackConsumer(settings)
    consumer.install_signal_handlers()
    print(
        f"consuming into {settings.database_url.rsplit('@', 1)[-1]} as group "
        f"{settings.consumer_group!r} (Ctrl-C or SIGTERM to stop)",
        flush=True,
    )
    stats = consumer.run(max_idle_s=args.exit_when_idle)
    print(
        f"stopped: {stats.events} events in {stats.batches} batches, "
        f"{stats.dead_letters} dead letters",
        flush=True,
    )
    return 0


def _spool_status(args: argparse.Namespace) -> int:
    from feedback.spool import SPOOL_FILE, Spool

    settings = FeedbackSettings()
    if not (settings.spool_dir / SPOOL_FILE).exists():
        print(f"spool {settings.spool_dir}: empty (no spool file yet)")
        return 0
    spool = Spool(settings.spool_dir)
    try:
        st = spool.status()
    finally:
        spool.close()
    if args.json:
        print(json.dumps({**st.__dict__, "path": str(st.path)}))
        return 0
    print(f"spool:   {st.path}")
    print(f"backlog: {st.backlog} event(s) waiting for the broker")
    if st.oldest_at:
        age = time.time() - st.oldest_at
        print(
            f"oldest:  {datetime.fromtimestamp(st.oldest_at, UTC):%Y-%m-%d %H:%M:%S} UTC "
            f"({age:.0f} s ago)"
        )
    print(f"size:    {st.size_bytes / 1024:.1f} KiB")
    return 0


def _status(args: argparse.Namespace) -> int:
    import psycopg

    from feedback.consumer import STATUS_FILE
    from feedback.spool import SPOOL_FILE, Spool
    from feedback.store import table_counts

    settings = FeedbackSettings()
    out: dict[str, object] = {}
    try:
        with psycopg.connect(settings.database_url, connect_timeout=3) as conn:
            out["store"] = table_counts(conn)
    except psycopg.Error as exc:
        out["store"] = f"unreachable: {type(exc).__name__}"
    backlog = 0
    if (settings.spool_dir / SPOOL_FILE).exists():
        spool = Spool(settings.spool_dir)
        backlog = len(spool)
        spool.close()
    out["spool_backlog"] = backlog
    status_file = Path(settings.home) / STATUS_FILE
    if status_file.exists():
        out["consumer"] = json.loads(status_file.read_text())
    if args.json:
        print(json.dumps(out, default=str))
        return 0
    print(f"store:         {out['store']}")
    print(f"spool backlog: {backlog}")
    consumer = out.get("consumer")
    if isinstance(consumer, dict):
        lag = sum(consumer.get("lag", {}).values())
        age = time.time() - float(consumer.get("updated_at", 0))
        print(
            f"consumer:      {consumer.get('events')} events stored, lag {lag} "
            f"(reported {age:.0f} s ago)"
        )
    else:
        print("consumer:      no status reported yet (is `ratchet consume` running?)")
    return 0


def _export(args: argparse.Namespace) -> int:
    import psycopg

    from feedback.export import ExportError, export

    settings = FeedbackSettings()
    since = None
    if args.since:
        try:
            since = _parse_since(args.since)
        except ValueError as exc:
            return _fail("feedback export", str(exc))
    try:
        with psycopg.connect(settings.database_url, connect_timeout=5) as conn:
            summary = export(
                conn, Path(args.out), fmt=args.format, since=since, names=settings.pii_names
            )
    except ExportError as exc:
        return _fail("feedback export", str(exc))
    except psycopg.OperationalError as exc:
        return _fail("feedback export", database_unreachable(exc))
    print(
        f"wrote {summary.pairs} preference pairs, {summary.kto} KTO examples, "
        f"{summary.sft} SFT examples to {args.out} ({args.format})"
    )
    if summary.complete_through is not None:
        print(f"complete through {summary.complete_through.isoformat()} (the next --since)")
    return 0


def _parse_since(text: str) -> datetime:
    """ISO date/time, or a relative age like ``7d``, ``12h``, ``30m``."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    if text[-1:] in units and text[:-1].isdigit():
        return datetime.fromtimestamp(time.time() - int(text[:-1]) * units[text[-1]], UTC)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--since {text!r}: give an ISO date/time (2026-11-01, 2026-11-01T12:00) "
            "or an age (7d, 12h, 30m)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    db = sub.add_parser("db", help="database administration")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    mig = db_sub.add_parser("migrate", help="apply pending schema migrations")
    mig.set_defaults(func=_db_migrate)

    con = sub.add_parser("consume", help="store feedback events from Kafka into Postgres")
    con.add_argument("--group", help="consumer group (default RATCHET_CONSUMER_GROUP)")
    con.add_argument("--batch-size", type=int, help="max events per transaction")
    con.add_argument("--metrics-port", type=int, help="serve /metrics on 127.0.0.1:PORT")
    con.add_argument("--migrate", action="store_true", help="apply migrations first")
    con.add_argument(
        "--exit-when-idle", type=float, metavar="SECONDS", help="stop after SECONDS with no events"
    )
    con.set_defaults(func=_consume)

    fb = sub.add_parser("feedback", help="feedback store: status, spool, export")
    fb_sub = fb.add_subparsers(dest="feedback_command", required=True)
    st = fb_sub.add_parser("status", help="row counts, spool backlog, consumer lag")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_status)
    sp = fb_sub.add_parser("spool-status", help="events waiting in the local spool")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=_spool_status)
    ex = fb_sub.add_parser("export", help="write preference pairs / KTO / SFT data")
    ex.add_argument("--format", choices=["jsonl", "hf"], default="jsonl")
    ex.add_argument("--since", help="only feedback from then on (ISO time or 7d/12h/30m)")
    ex.add_argument("--out", required=True, help="output directory")
    ex.set_defaults(func=_export)
