"""``python -m infra.demo`` (what ``make demo`` runs after ``make stack-up``).

Sizes and options come from ``RATCHET_DEMO_*`` variables (infra/demo/settings.py);
``--size`` and ``--fresh`` override the two most used ones."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from pydantic import ValidationError
from rich.console import Console


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.demo", description=__doc__)
    parser.add_argument(
        "--size", choices=["full", "tiny"], help="default: RATCHET_DEMO_SIZE or full"
    )
    parser.add_argument(
        "--fresh", action="store_true", help="run feedback and training again even if done"
    )
    args = parser.parse_args(argv)
    console = Console()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from infra.demo.driver import Demo
    from infra.demo.settings import DemoSettings
    from infra.demo.steps import StepFailed

    overrides: dict[str, Any] = {}
    if args.size:
        overrides["size"] = args.size
    if args.fresh:
        overrides["fresh"] = True
    try:
        settings = DemoSettings(**overrides)
    except ValidationError as exc:
        console.print(f"[red]demo settings are invalid:[/] {exc}")
        return 2
    try:
        Demo(settings, console).run()
    except StepFailed as exc:
        console.print(f"\n[bold red]✗ step {exc.step} failed:[/] {exc.reason}")
        if exc.log is not None:
            console.print(f"  log: [bold]{exc.log}[/]")
        console.print("  fix the cause and run `make demo` again: finished steps are reused.")
        return 1
    except KeyboardInterrupt:
        console.print("\n[yellow]interrupted[/]; `make stack-down` stops what was started")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
