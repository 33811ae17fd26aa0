"""Training's subcommands: ``model bootstrap``, ``train``, and (from
:mod:`training.models_cli`) ``models ...``.

Heavy imports (torch, transformers, trl) happen inside the handlers. Training
and registry errors are printed as ``ratchet CMD: message`` (exit 2)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import get_args

from ratchet.cli import CliError
from training import stages
from training.cli_base import cli_errors, connect
from training.settings import TrainSize

logger = logging.getLogger(__name__)

__all__ = ["cli_errors", "connect", "register"]  # cli_errors, connect: for older imports


@cli_errors
def _model_bootstrap(args: argparse.Namespace) -> int:
    import psycopg

    from training.base_model import bootstrap, weights_digest
    from training.registry import ensure_base
    from training.settings import TrainingSettings

    settings = TrainingSettings()
    path = bootstrap(settings, force=args.force)
    print(f"base model ready at {path}")
    try:
        from ratchet.db import migrate

        migrate(settings.database_url)
        with connect(settings) as conn:
            version = ensure_base(conn, str(path.resolve()), weights_digest(path))
        print(f"registry: production version is {version.id} ({version.path})")
    except psycopg.OperationalError:
        print(
            "registry: database not reachable; the base is registered on the first `ratchet train`"
        )
    return 0


@cli_errors
def _train(args: argparse.Namespace) -> int:
    from training.settings import TrainingSettings
    from training.snapshot import JsonlSource

    settings = TrainingSettings()
    if args.auto_promote:
        settings = settings.model_copy(update={"auto_promote": True})
    source = JsonlSource(args.pairs_file, args.sft_file) if args.pairs_file else None
    if args.every:
        from training.scheduler import parse_interval, run_periodically

        try:
            every = parse_interval(args.every)
        except ValueError as exc:
            raise CliError(str(exc)) from exc
        run_periodically(
            settings,
            every_s=every,
            min_new_pairs=args.min_new_pairs,
            algo=args.algo,
            size=args.size,
            source=source,
            max_cycles=args.max_cycles,
        )
        return 0
    from training import distributed
    from training.cycle import run_cycle

    try:
        result = run_cycle(
            settings,
            algo=args.algo,
            size=args.size,
            source=source,
            min_new_pairs=args.min_new_pairs,
            wait=args.wait,
            progress=not args.quiet,
        )
    finally:
        distributed.leave()
    if result.status == "skipped":
        print(result.message)
        return 0
    if result.status == "follower":  # a rank above 0 under accelerate launch
        print(f"run {result.run_id}: trained beside rank 0, which registers the version")
        return 0
    from training.models_cli import print_gates

    print_gates(result.gate_report)
    print(f"run {result.run_id}: {result.message}")
    print(f"plot: {result.plot_path}")
    if result.status == "candidate":
        print(f"promote with: ratchet models promote {result.candidate_version} --reason '...'")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    model = sub.add_parser("model", help="the base model")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    boot = model_sub.add_parser("bootstrap", help="make models/base from SmolLM2-135M-Instruct")
    boot.add_argument("--force", action="store_true", help="rebuild even if present")
    boot.set_defaults(func=_model_bootstrap)

    train = sub.add_parser("train", help="run a training cycle (or one every --every)")
    train.add_argument(
        "--algo", choices=stages.algos(), default="ppo", help="policy optimisation (last stage)"
    )
    train.add_argument(
        "--size",
        choices=get_args(TrainSize),
        default=None,
        help="cycle size preset (default RATCHET_TRAIN_SIZE or demo)",
    )
    train.add_argument("--every", metavar="INTERVAL", help="run periodically, e.g. 6h, 30m")
    train.add_argument(
        "--min-new-pairs",
        type=int,
        default=0,
        metavar="N",
        help="skip a cycle with fewer new preference pairs",
    )
    train.add_argument("--max-cycles", type=int, default=None, help=argparse.SUPPRESS)
    train.add_argument(
        "--wait", action="store_true", help="wait for a running cycle instead of exiting"
    )
    train.add_argument("--auto-promote", action="store_true", help="promote when all gates pass")
    train.add_argument(
        "--pairs-file", type=Path, help="train on a JSONL file of pairs instead of the store"
    )
    train.add_argument(
        "--sft-file", type=Path, help="JSONL file of SFT examples (with --pairs-file)"
    )
    train.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=_train)

    from training.models_cli import register_models

    register_models(sub)
