"""The soak's counts (``test_soak``): every request with its class, outcome,
timing and the version that answered; the tables printed and saved from them."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from tests.bench.conftest import percentile, print_table, save_json
from tests.bench.soak_registry import CANDIDATE, Window

CHAT = ("chat", "chat-stream", "chat-hangup", "chat-ab")


@dataclass(frozen=True)
class Request:
    cls: str
    outcome: str  # answered, failed, hung up
    started: float  # monotonic
    ended: float
    version: str | None  # which model version answered (with the A/B mode)


class Tally:
    """Every request (class, outcome, when, which version answered), and the
    accepted ratings' event ids."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[Request] = []
        self.accepted: set[str] = set()
        self.accepted_at: dict[str, float] = {}  # event id -> monotonic time of its 202

    def record(
        self,
        cls: str,
        outcome: str,
        started: float,
        event_ids: Sequence[str] = (),
        version: str | None = None,
    ) -> None:
        now = time.monotonic()
        with self.lock:
            self.requests.append(Request(cls, outcome, started, now, version))
            self.accepted.update(event_ids)
            for e in event_ids:
                self.accepted_at[e] = now

    def snapshot(self) -> list[Request]:
        with self.lock:
            return list(self.requests)


def _class_rows(requests: list[Request]) -> list[list]:
    """Sent, answered, failed, hung up and p50/p99 (ms) of the answered, by class."""
    rows = []
    for cls in sorted({r.cls for r in requests}):
        mine = [r for r in requests if r.cls == cls]
        counts = Counter(r.outcome for r in mine)
        lat = [r.ended - r.started for r in mine if r.outcome == "answered"]
        p50, p99 = (f"{percentile(lat, q) * 1000:.0f}" for q in (50, 99))
        rows.append([cls, len(mine), counts["answered"], counts["failed"], counts["hung up"],
                     p50, p99])  # fmt: skip
    return rows


def _window_rows(requests: list[Request], windows: list[Window]) -> list[list]:
    """The requests that overlapped each registry change, by class."""
    rows = []
    for w in windows:
        mine = [r for r in requests if w.overlaps(r.started, r.ended)]
        for row in _class_rows(mine):
            rows.append([w.name, *row[:5]])
    return rows


def _version_rows(requests: list[Request], switched: float) -> list[list]:
    """Answers by version, before and after the swap; old-version answers to
    requests sent after the API reported the switch (must be 0)."""
    rows = []
    for cls in CHAT:
        mine = [r for r in requests if r.cls == cls and r.version]
        before = Counter(r.version for r in mine if r.ended < switched)
        after = Counter(r.version for r in mine if r.started >= switched)
        stale = sum(1 for r in mine if r.started >= switched and r.version != CANDIDATE
                    and not str(r.version).startswith(CANDIDATE + " "))  # fmt: skip
        rows.append([cls, _counts(before), _counts(after), stale])
    return rows


def _counts(counter: Counter) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counter.items())) or "-"


def report(
    seconds: float, tally: Tally, windows: list[Window], summary: list[list], events: list[str]
) -> dict:
    """Print the tables; what the JSON keeps."""
    requests = tally.snapshot()
    swap = next(w for w in windows if w.name.startswith("hot swap"))
    trainer = next(w for w in windows if w.name.startswith("trainer"))
    tables = {
        "classes": _class_rows(requests),
        "registry changes": _window_rows(requests, windows),
        "versions": _version_rows(requests, swap.facts["switched"]),
        "trainer": [[k, str(v)] for k, v in trainer.facts.items()],
        "summary": summary,
    }
    counts = ["class", "sent", "answered", "failed", "hung up"]
    print_table(
        f"soak: {seconds:.0f} s under faults", [*counts, "p50 ms", "p99 ms"], tables["classes"]
    )
    print_table(
        "soak: requests overlapping each registry change",
        ["change", *counts],
        tables["registry changes"],
    )
    print_table(
        "soak: which version answered",
        ["class", "before the swap", "after the swap", "old version after"],
        tables["versions"],
    )
    print_table("soak: trainer killed mid-cycle", ["", "value"], tables["trainer"])
    print_table("soak: feedback, registry and memory", ["", "value"], summary)
    save_json("soak", {**tables, "faults": events})
    return tables
