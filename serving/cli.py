"""Serving's ``ratchet`` subcommands (``serve``, ``keys``, ``kb``, ``slack``,
``deploy``), added
through the ``ratchet.commands`` entry point ``serving.cli:register``.

The command's root is :mod:`ratchet.cli`; its ``main`` and ``build_parser`` stay
importable from here for installs whose console script still points at
``serving.cli:main``."""

from __future__ import annotations

import argparse
import sys

from ratchet.cli import build_parser, main

__all__ = ["build_parser", "main", "register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from serving import serve_cli
    from serving.deploy import cli as deploy_cli
    from serving.kb import cli as kb_cli
    from serving.slack import cli as slack_cli

    serve_cli.register(sub)
    kb_cli.register(sub)
    slack_cli.register(sub)
    deploy_cli.register(sub)


if __name__ == "__main__":
    sys.exit(main())
