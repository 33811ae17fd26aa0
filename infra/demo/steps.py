"""Numbered demo steps shown with rich: a spinner with the newest log line
while a step runs, a tick and its duration when it ends, and on failure the
step's name, the reason and where its log is."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.status import Status

logger = logging.getLogger(__name__)


class StepFailed(Exception):
    """A demo step failed; ``log`` is where its details are."""

    def __init__(self, step: str, reason: str, log: Path | None) -> None:
        super().__init__(f"{step}: {reason}")
        self.step, self.reason, self.log = step, reason, log


class Step:
    """Handle of the running step: update its status line, name its log, add a note."""

    def __init__(self, title: str, status: Status | None, log: Path | None) -> None:
        self.title = title
        self._status = status
        self.log = log
        self.note = ""

    def update(self, text: str) -> None:
        if self._status is not None:
            self._status.update(f"[bold]{self.title}[/] [dim]{text[-100:]}[/]")

    def run(
        self, cmd: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 3600
    ) -> str:
        """Run ``cmd`` with output appended to this step's log; show its last line meanwhile."""
        assert self.log is not None, "a step that runs commands needs a log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        start = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            out.write(f"\n$ {' '.join(cmd)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                list(cmd), stdout=out, stderr=subprocess.STDOUT, env=env or os.environ.copy()
            )
            deadline = time.monotonic() + timeout
            while proc.poll() is None:
                self.update(last_line(self.log))
                if time.monotonic() > deadline:
                    proc.kill()
                    raise RuntimeError(f"`{' '.join(cmd[:4])}` took longer than {timeout:.0f} s")
                time.sleep(0.3)
        with open(self.log, "rb") as fh:
            fh.seek(start)
            output = fh.read().decode(errors="replace")
        if proc.returncode != 0:
            raise RuntimeError(
                f"`{' '.join(cmd[:4])}` exited with {proc.returncode}: {last_line(self.log)}"
            )
        return output


def last_line(path: Path, limit: int = 4096) -> str:
    """The newest non-empty line of a log (tqdm's carriage-return updates included)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - limit))
            tail = fh.read().decode(errors="replace")
    except OSError:
        return ""
    parts = [p.strip() for p in tail.replace("\r", "\n").split("\n")]
    return next((p for p in reversed(parts) if p), "")


class Steps:
    """Runs the demo's steps in order and reports each one."""

    def __init__(self, console: Console, total: int) -> None:
        self.console = console
        self.total = total
        self.index = 0
        self.timings: dict[str, float] = {}

    @contextmanager
    def step(self, title: str, *, log: Path | None = None) -> Iterator[Step]:
        self.index += 1
        label = f"[{self.index}/{self.total}] {title}"
        started = time.monotonic()
        status = self.console.status(f"[bold]{label}[/]") if self.console.is_terminal else None
        handle = Step(label, status, log)
        if status is None:
            self.console.print(f"[bold]… {label}[/]")
        try:
            if status is not None:
                status.start()
            yield handle
        except StepFailed:
            raise
        except Exception as exc:
            logger.exception("step %s failed", title)
            raise StepFailed(label, str(exc) or type(exc).__name__, log) from exc
        finally:
            if status is not None:
                status.stop()
        elapsed = time.monotonic() - started
        self.timings[title] = elapsed
        note = f" [dim]{handle.note}[/]" if handle.note else ""
        self.console.print(f"[green]✓[/] {label} [dim]({elapsed:.1f} s)[/]{note}")

    def skip(self, title: str, why: str) -> None:
        self.index += 1
        self.console.print(f"[yellow]↷[/] [{self.index}/{self.total}] {title} [dim]({why})[/]")
