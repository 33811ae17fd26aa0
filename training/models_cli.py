"""``ratchet models ...``: the registry from the command line (list, show,
promote, rollback, canary, canary-report, audit). Errors are printed as
``ratchet models CMD: message`` (exit 2), like the rest of training's commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from training.cli_base import cli_errors, connect
from training.gate_results import point_estimate


def print_gates(report: dict[str, Any] | None) -> None:
    """Every gate with its n, the value it is gated on (and, where that is a
    confidence bound, the estimate), interval and threshold, and why it failed."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    if not report:
        console.print("no gate report (this version was not trained by Ratchet)")
        return
    table = Table(
        title="Evaluation gates — " + ("[green]passed[/]" if report["passed"] else "[red]FAILED[/]")
    )
    for column in (
        "gate",
        "result",
        "n",
        "estimate",
        "gated value",
        "interval",
        "threshold",
        "reason",
    ):
        table.add_column(column)
    for name, gate in report.get("gates", {}).items():
        interval = gate.get("interval")
        n = gate.get("n")
        table.add_row(
            name,
            "[green]pass[/]" if gate["passed"] else "[red]fail[/]",
            "-" if n is None else f"{n} (min {gate.get('min_n', '-')})",
            _fmt(point_estimate(gate)),
            _fmt(gate.get("value")),
            f"[{_fmt(interval[0])}, {_fmt(interval[1])}]" if interval else "-",
            str(gate.get("threshold", "")),
            str(gate.get("reason", "")),
        )
    console.print(table)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


@cli_errors
def _models_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from training.registry import list_versions
    from training.settings import TrainingSettings

    with connect(TrainingSettings()) as conn:
        versions = list_versions(conn)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "id": v.id,
                        "status": v.status,
                        "parent": v.parent_id,
                        "gates_passed": v.gates_passed,
                        "canary": v.canary,
                        "path": v.path,
                        "created_at": v.created_at.isoformat(),
                    }
                    for v in versions
                ]
            )
        )
        return 0
    table = Table(title="Model versions")
    for column in ("version", "status", "parent", "gates", "created", "path"):
        table.add_column(column)
    colour = {"production": "bold green", "candidate": "cyan", "rejected": "red", "retired": "dim"}
    for v in versions:
        gates = "-" if v.gates_passed is None else ("passed" if v.gates_passed else "failed")
        status = f"[{colour.get(v.status, '')}]{v.status}[/]"
        table.add_row(
            v.id,
            status + (" [bold yellow](canary)[/]" if v.canary else ""),
            v.parent_id or "-",
            gates,
            f"{v.created_at:%Y-%m-%d %H:%M}",
            v.path,
        )
    Console().print(table)
    return 0


@cli_errors
def _models_show(args: argparse.Namespace) -> int:
    from training.errors import RegistryError
    from training.registry import get_version
    from training.runs import get_run
    from training.settings import TrainingSettings

    settings = TrainingSettings()
    canary_line = None
    with connect(settings) as conn:
        version = get_version(conn, args.version)
        if version is None:
            raise RegistryError(f"no model version {args.version!r} (see `ratchet models list`)")
        run = get_run(conn, version.training_run_id) if version.training_run_id else None
        if version.canary:
            from training.gates import load_thresholds
            from training.promotion import canary_evidence

            evidence = canary_evidence(conn, version.id, load_thresholds(settings.gates_config))
            verdict = "ready to promote" if evidence.ready else "not yet"
            canary_line = f"canary stage ({verdict}): {evidence.describe()}"
    created = f"{version.created_at:%Y-%m-%d %H:%M}"
    status = version.status + (" (canary)" if version.canary else "")
    print(f"{version.id}: {status}  parent={version.parent_id or '-'}  created={created}")
    print(f"path: {version.path}")
    print(f"weights sha256: {version.weights_sha256}")
    if run:
        print(
            f"training run: {run['id']} ({run['algo']}, {run['status']})  log: {run['logs_path']}"
        )
    placement = version.metrics.get("placement")
    if placement:
        print(f"trained on: {_placement_line(placement, version.metrics.get('sft', {}))}")
    for key, label in (("reward", "reward model"), ("judge", "judge (independent)")):
        rm = version.metrics.get(key, {})
        if rm:
            start = f"; init {rm['init']}: {rm.get('init_dir')}" if "init" in rm else ""
            term = (
                f" (with {rm['grounding_weight']} x the grounding term; the model alone"
                f" {_fmt(rm.get('model_heldout_accuracy'))})"
                if "grounding_weight" in rm
                else ""
            )
            print(
                f"{label} held-out accuracy: {_fmt(rm.get('heldout_accuracy'))}{term}"
                f" on {rm.get('heldout_pairs')} pairs{start}"
            )
    print_gates(version.gate_report)
    if canary_line:
        print(canary_line)
    if run and run.get("plot_path"):
        exists = Path(run["plot_path"]).exists()
        print(f"plot: {run['plot_path']}" + ("" if exists else " (missing)"))
    return 0


def _placement_line(placement: dict[str, Any], sft: dict[str, Any]) -> str:
    """Where a run trained, as its record keeps it: "cpu, bf16 (SFT fp32; bf16 timed at
    4.72x fp32 on this CPU)"."""
    notes = []
    if sft.get("sft_precision", placement["precision"]) != placement["precision"]:
        notes.append(f"SFT {sft['sft_precision']}")
    if "cpu_bf16_speedup" in placement:
        notes.append(f"bf16 timed at {placement['cpu_bf16_speedup']}x fp32 on this CPU")
    extra = f" ({'; '.join(notes)})" if notes else ""
    return f"{placement['device']}, {placement['precision']}{extra}"


def _actor(args: argparse.Namespace) -> str:
    from training.cycle import default_actor
    from training.settings import TrainingSettings

    return args.actor or default_actor(TrainingSettings())


@cli_errors
def _models_promote(args: argparse.Namespace) -> int:
    from training import operations
    from training.gates import load_thresholds
    from training.settings import TrainingSettings

    settings = TrainingSettings()
    policy = operations.Policy(load_thresholds(settings.gates_config), settings.require_canary)
    with connect(settings) as conn:
        version = operations.promote(
            conn,
            args.version,
            actor=_actor(args),
            reason=args.reason,
            force=args.force,
            policy=policy,
        )
    print(f"{version.id} is now the production version")
    return 0


@cli_errors
def _models_rollback(args: argparse.Namespace) -> int:
    from training import operations
    from training.settings import TrainingSettings

    with connect(TrainingSettings()) as conn:
        version = operations.rollback(conn, actor=_actor(args), reason=args.reason)
    print(f"rolled back: {version.id} is now the production version")
    return 0


@cli_errors
def _models_canary(args: argparse.Namespace) -> int:
    from ratchet.cli import CliError
    from training.operations import clear_canary, set_canary
    from training.settings import TrainingSettings

    if bool(args.version) == bool(args.clear):
        raise CliError("name the candidate to serve as the canary, or --clear (not both)")
    with connect(TrainingSettings()) as conn:
        if args.clear:
            version = clear_canary(conn, actor=_actor(args), reason=args.reason)
            print(f"canary cleared: {version.id} is no longer served beside production")
            return 0
        version = set_canary(conn, args.version, actor=_actor(args), reason=args.reason)
    print(f"{version.id} is now the canary: A/B requests get one draft from it")
    return 0


@cli_errors
def _models_canary_report(args: argparse.Namespace) -> int:
    from training.canary_report import canary_report
    from training.gates import load_thresholds
    from training.promotion import CanaryEvidence
    from training.settings import TrainingSettings
    from training.stats import wilson_interval

    settings = TrainingSettings()
    t = load_thresholds(settings.gates_config)
    with connect(settings) as conn:
        report = canary_report(conn, canary=args.canary, baseline=args.baseline)
    interval = wilson_interval(
        report.wins + 0.5 * report.ties, report.total, confidence=t.confidence
    )
    evidence = CanaryEvidence(
        report, interval, t.canary_min_picks, t.canary_win_lower_min, t.confidence
    )
    if args.json:
        print(json.dumps(evidence.as_dict()))
        return 0
    print(f"A/B picks of {report.canary} (canary) vs {report.baseline} (production):")
    print(f"  wins {report.wins}  losses {report.losses}  ties {report.ties}")
    if report.total:
        low, high = interval
        print(
            f"  win rate {report.win_rate:.3f} (ties count half;"
            f" {t.confidence:.0%} Wilson interval {low:.3f}-{high:.3f}, n={report.total})"
        )
    else:
        print("  no comparisons between the two yet")
    verdict = "ready to promote" if evidence.ready else "not yet"
    print(
        f"  canary stage: {verdict} (needs >= {t.canary_min_picks} picks and"
        f" a Wilson lower bound >= {t.canary_win_lower_min})"
    )
    return 0


@cli_errors
def _models_audit(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from training.registry import audit_log
    from training.settings import TrainingSettings

    with connect(TrainingSettings()) as conn:
        entries = audit_log(conn, limit=args.limit)
    table = Table(title="Registry audit log")
    for column in ("at", "action", "actor", "from", "to", "reason"):
        table.add_column(column)
    for e in entries:
        table.add_row(
            f"{e.at:%Y-%m-%d %H:%M:%S}",
            e.action,
            e.actor,
            e.from_version or "-",
            e.to_version or "-",
            e.reason or "",
        )
    Console().print(table)
    return 0


def register_models(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    models = sub.add_parser("models", help="the model registry")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    ls = models_sub.add_parser("list", help="list model versions")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=_models_list)
    show = models_sub.add_parser("show", help="a version's metrics, gate report and plot")
    show.add_argument("version")
    show.set_defaults(func=_models_show)
    promote = models_sub.add_parser(
        "promote",
        help="make a version the production version (after its gates and its canary stage)",
    )
    promote.add_argument("version")
    promote.add_argument("--reason", required=True, help="why (recorded in the audit log)")
    promote.add_argument(
        "--force",
        action="store_true",
        help="promote even if its gates or its canary stage failed (needs --reason; audited)",
    )
    promote.add_argument("--actor", help="who (default: RATCHET_ACTOR or the OS user)")
    promote.set_defaults(func=_models_promote)
    rollback = models_sub.add_parser("rollback", help="return to the previous production version")
    rollback.add_argument("--reason", required=True, help="why (recorded in the audit log)")
    rollback.add_argument("--actor", help="who (default: RATCHET_ACTOR or the OS user)")
    rollback.set_defaults(func=_models_rollback)
    canary = models_sub.add_parser(
        "canary", help="serve a candidate beside production for A/B drafts (or --clear)"
    )
    canary.add_argument("version", nargs="?", help="the candidate to serve as the canary")
    canary.add_argument("--clear", action="store_true", help="stop serving the canary")
    canary.add_argument("--reason", help="why (recorded in the audit log)")
    canary.add_argument("--actor", help="who (default: RATCHET_ACTOR or the OS user)")
    canary.set_defaults(func=_models_canary)
    report = models_sub.add_parser(
        "canary-report", help="users' A/B picks: the canary's wins, losses and ties vs production"
    )
    report.add_argument("--canary", help="the version to report on (default: the canary)")
    report.add_argument("--baseline", help="compared with (default: the production version)")
    report.add_argument("--json", action="store_true", help="machine-readable output")
    report.set_defaults(func=_models_canary_report)
    audit = models_sub.add_parser("audit", help="the registry audit log (promotions, canaries)")
    audit.add_argument("--limit", type=int, default=50)
    audit.set_defaults(func=_models_audit)
