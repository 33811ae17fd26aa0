"""What training's command modules (:mod:`training.cli`, :mod:`training.models_cli`)
share: training errors turned into CLI messages, and the registry connection.

A database that cannot be reached, or a schema older than the code, is named by
the command root (:func:`ratchet.cli.service_problem`), the one place for those
messages."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from typing import Any

from ratchet.cli import CliError


def cli_errors(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn training errors into CLI messages (``ratchet CMD: message``, exit 2)."""

    @functools.wraps(func)
    def wrapper(args: argparse.Namespace) -> int:
        from training.errors import TrainingError

        try:
            return func(args)
        except TrainingError as exc:
            raise CliError(str(exc)) from exc

    return wrapper


def connect(settings: Any) -> Any:
    """An autocommit connection to ``settings.database_url`` (5 s connect timeout)."""
    import psycopg

    return psycopg.connect(settings.database_url, autocommit=True, connect_timeout=5)
