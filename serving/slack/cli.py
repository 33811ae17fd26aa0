"""``ratchet slack --socket``: run the Slack bot over Socket Mode."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from ratchet.cli import CliError


def _slack(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from serving.settings import ServingSettings

    if not args.socket:
        raise CliError(
            "HTTP mode runs inside `ratchet serve` (POST /slack/events, with "
            "RATCHET_SLACK_BOT_TOKEN and RATCHET_SLACK_SIGNING_SECRET set); "
            "use `ratchet slack --socket` for Socket Mode"
        )
    try:
        settings = ServingSettings(**({"model": args.model} if args.model else {}))
    except ValidationError as exc:
        raise CliError(str(exc)) from exc
    missing = [
        name
        for name, value in (
            ("RATCHET_SLACK_BOT_TOKEN", settings.slack_bot_token),
            ("RATCHET_SLACK_APP_TOKEN", settings.slack_app_token),
        )
        if not value
    ]
    if missing:
        raise CliError(f"Socket Mode needs {' and '.join(missing)} (see README, section Slack)")
    if settings.slack_app_token and not settings.slack_app_token.startswith("xapp-"):
        raise CliError("RATCHET_SLACK_APP_TOKEN must be an app-level token (xapp-...)")
    if settings.backend != "vllm-server" and not Path(settings.model).is_dir():
        raise CliError(
            f"model directory {settings.model} not found; run `ratchet model bootstrap` "
            "or pass --model DIR"
        )

    from serving.slack.socket_mode import run_socket_mode

    asyncio.run(run_socket_mode(settings))
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    slack = sub.add_parser("slack", help="run the Slack bot (Socket Mode)")
    slack.add_argument(
        "--socket", action="store_true", help="connect to Slack over Socket Mode (app token)"
    )
    slack.add_argument(
        "--model", type=Path, help="model directory served while the registry is empty"
    )
    slack.set_defaults(func=_slack)
