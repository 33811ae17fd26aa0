"""The ``ratchet`` command's root. Each package adds its subcommands through the
``ratchet.commands`` entry-point group (``register(subparsers)``), so this module
imports no Ratchet package, nor torch.

A subcommand raises :class:`CliError` for a problem with what the user asked for;
:func:`main` prints it (and a database or broker that cannot be reached, or a
schema older than the code) as ``ratchet COMMAND: message`` with exit status 2."""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points


class CliError(Exception):
    """A problem with what the user asked for; printed without a traceback."""


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ratchet", description="Ratchet: a chatbot that learns.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for ep in sorted(entry_points(group="ratchet.commands"), key=lambda e: e.name):
        ep.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except CliError as exc:
        print(f"ratchet {args.command}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        return report_service_problem(f"ratchet {args.command}", exc)


def report_service_problem(prog: str, exc: Exception) -> int:
    """Print ``prog: message`` (:func:`service_problem`) and return the exit status 2;
    re-raise ``exc`` when it is not such a problem."""
    message = service_problem(exc)
    if message is None:
        raise exc
    print(f"{prog}: {message}", file=sys.stderr)
    return 2


def service_problem(exc: BaseException) -> str | None:
    """A message naming the setting and address when ``exc`` says the database or the
    Kafka broker cannot be reached (or the schema is older than the code); None for
    anything else. The one wording of these messages."""
    import psycopg
    from kafka import errors as kafka_errors

    if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedColumn):
        return "the database schema is older than this Ratchet: run `ratchet db migrate`"
    if isinstance(exc, psycopg.OperationalError):
        return database_unreachable(exc)
    if isinstance(exc, kafka_errors.KafkaConnectionError | kafka_errors.KafkaTimeoutError):
        return (
            f"cannot reach the Kafka broker (KAFKA_BOOTSTRAP_SERVERS): {exc}; "
            "is the stack up (make stack-up)?"
        )
    return None


def database_unreachable(exc: BaseException) -> str:
    """``cannot reach the database (DATABASE_URL): <first line>; is the stack up ...?``"""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"cannot reach the database (DATABASE_URL): {first}; is the stack up (make stack-up)?"


if __name__ == "__main__":
    # Run the imported module, not this __main__ copy: subcommands raise ratchet.cli.CliError.
    from ratchet.cli import main as _main

    sys.exit(_main())
