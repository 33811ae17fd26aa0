"""Serving's subcommands: ``serve``, ``keys``, ``kb``, ``slack`` (added by their modules)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    # Each feature module adds itself here: serving.app (serve), serving.auth (keys), ...
    from serving import serve_cli

    serve_cli.register(sub)

    from serving.kb import cli as kb_cli

    kb_cli.register(sub)

    from serving.slack import cli as slack_cli

    slack_cli.register(sub)
