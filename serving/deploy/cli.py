"""``ratchet deploy watch``: follow the registry and keep one vLLM Deployment per
served version in a Kubernetes namespace (see README, "Running in production")."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import psycopg

from ratchet.cli import CliError
from ratchet.settings import RatchetSettings
from serving.deploy.manifest import TemplateError, load_template
from serving.deploy.plan import plan

logger = logging.getLogger(__name__)


def _watch(args: argparse.Namespace) -> int:
    from serving.deploy.kube import Cluster, MissingExtra

    if args.replicas < 1 or args.canary_replicas < 1:
        raise CliError("--replicas and --canary-replicas must be at least 1")
    if args.drain_seconds < 0:
        raise CliError("--drain-seconds must be 0 or more")
    try:
        template = load_template(Path(args.template).read_text())
    except OSError as exc:
        raise CliError(f"cannot read the vLLM template {args.template}: {exc.strerror}") from exc
    except TemplateError as exc:
        raise CliError(f"{args.template}: {exc}") from exc
    try:
        cluster = Cluster(args.namespace)
    except MissingExtra as exc:
        raise CliError(str(exc)) from exc
    database_url = RatchetSettings().database_url
    logger.info("following the registry into namespace %s", args.namespace)
    while True:
        try:
            failed = _pass(args, cluster, template, database_url)
        except (psycopg.OperationalError, cluster.api_error) as exc:
            if args.once:
                raise
            logger.warning("pass failed, retrying in %.0f s: %s", args.interval, exc)
            failed = 0
        if args.once:
            return 1 if failed else 0
        time.sleep(args.interval)


def _pass(args: argparse.Namespace, cluster: Any, template: dict[str, Any], url: str) -> int:
    """One look at the registry and the namespace, and the actions; the failed count.
    A failed action is logged and tried again (re-planned) at the next pass."""
    from serving.deploy.kube import desired_state

    desired = desired_state(url, replicas=args.replicas, canary_replicas=args.canary_replicas)
    failed = 0
    for action in plan(desired, cluster.observe(), now=time.time(), drain_s=args.drain_seconds):
        logger.info("%s %s %s", action.kind, action.name, action.version or "")
        if args.dry_run:
            continue
        try:
            cluster.apply(action, template)
        except cluster.api_error as exc:
            failed += 1
            logger.error("%s %s failed: %s", action.kind, action.name, exc)
    return failed


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    deploy = sub.add_parser("deploy", help="Kubernetes: roll vLLM Deployments with the registry")
    deploy_sub = deploy.add_subparsers(dest="deploy_command", required=True)
    watch = deploy_sub.add_parser(
        "watch", help="one vLLM Deployment per served version, blue/green on promotion"
    )
    watch.add_argument("--namespace", default="ratchet", help="namespace of the vLLM Deployments")
    watch.add_argument(
        "--template",
        default="/etc/ratchet/vllm-deployment.yaml",
        help="the per-version vLLM Deployment template (YAML)",
    )
    watch.add_argument("--replicas", type=int, default=2, help="pods of the production version")
    watch.add_argument("--canary-replicas", type=int, default=1, help="pods of the canary")
    watch.add_argument(
        "--drain-seconds",
        type=float,
        default=120.0,
        help="how long an old version stays up after the switch (the API's requests finish)",
    )
    watch.add_argument("--interval", type=float, default=5.0, help="seconds between passes")
    watch.add_argument("--once", action="store_true", help="one pass, then exit")
    watch.add_argument("--dry-run", action="store_true", help="log the actions, apply none")
    watch.set_defaults(func=_watch)
