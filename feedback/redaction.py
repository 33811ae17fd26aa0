"""PII redaction, applied to everything that leaves the store for training
(export, ``feedback.pairs``). Raw text stays in the store.

Redacted forms: emails -> ``[EMAIL]``, phone numbers -> ``[PHONE]``, API-key-like
strings -> ``[SECRET]``, person names -> ``[NAME]``. Names are recognised when
labelled (``Name: Ada Lovelace``, ``name is Ada Lovelace``, ``my name is Ada``),
after an honorific (``Dr. Lovelace``, ``Ms Ada Lovelace``), or when listed in
``names`` (the callers pass the ``RATCHET_PII_NAMES`` setting).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

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
