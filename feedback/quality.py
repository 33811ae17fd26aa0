"""Feedback quality: per-user rate caps, duplicate-spam drop, PII redaction.

- :class:`FeedbackGate` runs on the request path (no I/O): a user may give at
  most ``per_minute`` feedback events in any 60 s window (sliding); the same
  user sending the exact same feedback again within ``duplicate_window_s``
  gets the first event's id back and nothing new is published.
- :func:`redact` is applied to everything that leaves the store for training
  (export, ``feedback.pairs``). Raw text stays in the store.

Redacted forms: emails -> ``[EMAIL]``, phone numbers -> ``[PHONE]``, API-key-like
strings -> ``[SECRET]``, person names -> ``[NAME]``. Names are recognised when
labelled (``Name: Ada Lovelace``, ``name is Ada Lovelace``, ``my name is Ada``),
after an honorific (``Dr. Lovelace``, ``Ms Ada Lovelace``), or when listed in
``RATCHET_PII_NAMES``.
"""

from __future__ import annotations

import math
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_SECRET = re.compile(
    r"\b(?:"
    r"sk-[A-Za-z0-9_-]{16,}"  # OpenAI-style
    r"|rk_[A-Za-z0-9_-]{12,}"  # Ratchet API keys
    r"|(?:ghp|gho|ghs|github_pat)_[A-Za-z0-9_]{20,}"
    r"|xox[abpr]-[A-Za-z0-9-]{10,}"  # Slack
    r"|AKIA[0-9A-Z]{16}"  # AWS access key id
    r"|AIza[0-9A-Za-z_-]{30,}"  # Google
    r"|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"  # JWT
    r"|(?=[A-Za-z0-9_-]*\d)(?=[A-Za-z0-9_-]*[A-Za-z])[A-Za-z0-9_-]{32,}"  # long random token
    r")"
)
# +CC, (area), groups of digits; at least 7 digits overall (checked in _phone).
_PHONE = re.compile(r"(?<![\w.])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d[\d\s.-]{5,}\d(?!\w)")
_CAP = r"[A-Z][a-z]+(?:[-'][A-Z][a-z]+)?"
_LABELLED_NAME = re.compile(
    rf"(?P<label>\b(?:[Nn]ame\s*[:=]|[Nn]ame\s+is|I\s+am|I'm|[Cc]ontact\s*[:=])\s*)"
    rf"(?P<name>{_CAP}(?:\s+{_CAP}){{0,2}})"
)
_HONORIFIC_NAME = re.compile(
    rf"(?P<label>\b(?:Mr|Mrs|Ms|Mx|Dr|Prof)\.?\s+)(?P<name>{_CAP}(?:\s+{_CAP})?)"
)


def _phone(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = sum(c.isdigit() for c in text)
    if digits < 7 or digits > 15:
        return text
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()):  # a date, not a phone number
        return text
    return "[PHONE]"


def redact(text: str, names: Iterable[str] = ()) -> str:
    """``text`` with emails, phone numbers, secrets and person names replaced."""
    text = _EMAIL.sub("[EMAIL]", text)
    text = _SECRET.sub("[SECRET]", text)
    text = _PHONE.sub(_phone, text)
    text = _LABELLED_NAME.sub(lambda m: m.group("label") + "[NAME]", text)
    text = _HONORIFIC_NAME.sub(lambda m: m.group("label") + "[NAME]", text)
    for name in sorted({n.strip() for n in names if n.strip()}, key=len, reverse=True):
        text = re.sub(rf"\b{re.escape(name)}\b", "[NAME]", text, flags=re.IGNORECASE)
    return text


def redact_messages(messages: Iterable[dict[str, str]], names: Iterable[str] = ()) -> list[dict]:
    names = list(names)
    return [{**m, "content": redact(m.get("content", ""), names)} for m in messages]


@dataclass(frozen=True)
class Verdict:
    """What to do with one piece of feedback."""

    accept: bool
    duplicate_of: uuid.UUID | None = None  # the earlier identical event, if any
    retry_after: float = 0.0  # when rate-capped


class FeedbackGate:
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
            times = self._times.setdefault(user_id, deque())
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
