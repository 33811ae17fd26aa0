"""The per-user rate cap on feedback, on the request path (no I/O).

:class:`FeedbackRateCap`: a user may give at most ``per_minute`` feedback events
in any 60 s window (sliding); the same user sending the exact same feedback again
within ``duplicate_window_s`` gets the first event's id back and nothing new is
published. (Not to be confused with training's evaluation gates.)
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    """What to do with one piece of feedback."""

    accept: bool
    duplicate_of: uuid.UUID | None = None  # the earlier identical event, if any
    retry_after: float = 0.0  # when rate-capped


class FeedbackRateCap:
    """Per-user sliding-window rate cap and exact-duplicate drop (in memory, thread-safe)."""

    def __init__(
        self,
        *,
        per_minute: int,
        duplicate_window_s: float = 600.0,
        max_users: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock  # seconds; tests pass a clock they move by hand
        self._per_minute = per_minute
        self._dup_window = duplicate_window_s
        self._max_users = max_users
        self._lock = threading.Lock()
        self._times: dict[str, deque[float]] = {}
        self._seen: dict[tuple[str, str], tuple[float, uuid.UUID]] = {}

    def check(self, user_id: str, items: Sequence[tuple[str, uuid.UUID]]) -> list[Verdict]:
        """Record and judge feedback from ``user_id``: ``(fingerprint, event_id)`` pairs,
        a fingerprint being the feedback's content; one item or a batch, all or nothing.

        Duplicates (of earlier feedback, or of an earlier item in the batch) get
        the first event's id. If the rest does not fit in the user's window,
        nothing is recorded and every non-duplicate item is refused with the
        time until it would all fit (``inf`` when the batch is larger than the
        cap itself)."""
        now = self._clock()
        with self._lock:
            verdicts: list[Verdict] = []
            first: dict[str, uuid.UUID] = {}
            for fingerprint, event_id in items:
                seen = self._seen.get((user_id, fingerprint))
                if seen is not None and now - seen[0] < self._dup_window:
                    verdicts.append(Verdict(accept=False, duplicate_of=seen[1]))
                elif fingerprint in first:
                    verdicts.append(Verdict(accept=False, duplicate_of=first[fingerprint]))
                else:
                    first[fingerprint] = event_id
                    verdicts.append(Verdict(accept=True))
            times = self._times.get(user_id)
            if times is None:
                times = self._times[user_id] = deque()
            while times and now - times[0] >= 60.0:
                times.popleft()
            room = self._per_minute - len(times)
            if len(first) > room:
                if len(first) > self._per_minute:
                    retry_after = math.inf
                else:  # wait until enough of the window's oldest entries expire
                    retry_after = 60.0 - (now - times[len(first) - room - 1])
                refused = Verdict(accept=False, retry_after=retry_after)
                return [refused if v.accept else v for v in verdicts]
            for fingerprint, event_id in first.items():
                times.append(now)
                self._seen[(user_id, fingerprint)] = (now, event_id)
            if len(self._seen) > self._max_users * 4 or len(self._times) > self._max_users:
                self._prune(now)
            return verdicts

    def _prune(self, now: float) -> None:
        self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self._dup_window}
        self._times = {u: t for u, t in self._times.items() if t and now - t[-1] < 60.0}
