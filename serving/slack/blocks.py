"""Block Kit payloads: answers with citations and feedback buttons, the correction modal.

Pure functions of plain data, so they are tested without Slack. Action ids and
the modal's callback id are the names the handlers listen for; a button's
``value`` is the signed message id of the answer it rates.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

ACTION_RATE_UP = "ratchet_rate_up"
ACTION_RATE_DOWN = "ratchet_rate_down"
ACTION_SUGGEST = "ratchet_suggest"
FEEDBACK_BLOCK_ID = "ratchet_feedback"
CORRECTION_CALLBACK_ID = "ratchet_correction"
CORRECTION_BLOCK_ID = "correction"
CORRECTION_INPUT_ID = "text"

SECTION_LIMIT = 3000  # characters in one section's text (Slack's limit)
MAX_SECTIONS = 40  # leaves room for the context and actions blocks (50 blocks in all)
FALLBACK_LIMIT = 39000  # the top-level `text` of a message
INPUT_LIMIT = 3000  # plain_text_input max_length
METADATA_LIMIT = 3000  # private_metadata length

THINKING = "Thinking…"
CURSOR = " ▌"


def escape(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def split_text(text: str, limit: int = SECTION_LIMIT) -> list[str]:
    """Split ``text`` into chunks of at most ``limit`` chars, preferring line breaks."""
    chunks: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = rest.rfind("\n", 0, limit)
        if cut < limit // 2:
            cut = rest.rfind(" ", 0, limit)
        if cut < limit // 2:
            cut = limit
        chunks.append(rest[:cut])
        rest = rest[cut:].lstrip("\n")
    if rest or not chunks:
        chunks.append(rest)
    return chunks


def fallback_text(text: str) -> str:
    """The message's top-level ``text`` (notifications, screen readers)."""
    return text[:FALLBACK_LIMIT] if text.strip() else THINKING


def _sections(text: str) -> list[dict[str, Any]]:
    body = escape(text) if text.strip() else "_(empty answer)_"
    chunks = split_text(body)
    if len(chunks) > MAX_SECTIONS:
        chunks = chunks[:MAX_SECTIONS]
        chunks[-1] = chunks[-1][: SECTION_LIMIT - 2] + " …"
    return [{"type": "section", "text": {"type": "mrkdwn", "text": c}} for c in chunks]


def citation_label(citation: Mapping[str, Any], index: int) -> str:
    """One citation as mrkdwn: ``[1] <url|title>`` or ``[1] title``."""
    title = str(
        citation.get("title") or citation.get("source") or citation.get("document_id") or "source"
    )
    url = citation.get("url") or citation.get("source")
    label = escape(title.replace("|", "/"))[:200]
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        return f"[{index}] <{url}|{label}>"
    return f"[{index}] {label}"


def citation_block(citations: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    if not citations:
        return None
    elements = [
        {"type": "mrkdwn", "text": citation_label(c, i)} for i, c in enumerate(citations[:10], 1)
    ]
    return {"type": "context", "elements": elements}


def feedback_actions(message_id: str) -> dict[str, Any]:
    """The 👍 / 👎 / "Suggest a better answer" buttons; each carries the message id."""
    return {
        "type": "actions",
        "block_id": FEEDBACK_BLOCK_ID,
        "elements": [
            {
                "type": "button",
                "action_id": ACTION_RATE_UP,
                "text": {"type": "plain_text", "text": "👍", "emoji": True},
                "value": message_id,
            },
            {
                "type": "button",
                "action_id": ACTION_RATE_DOWN,
                "text": {"type": "plain_text", "text": "👎", "emoji": True},
                "value": message_id,
            },
            {
                "type": "button",
                "action_id": ACTION_SUGGEST,
                "text": {"type": "plain_text", "text": "Suggest a better answer"},
                "value": message_id,
            },
        ],
    }


def streaming_blocks(text: str) -> list[dict[str, Any]]:
    """An answer still being written: its text so far and a cursor, no buttons yet."""
    if not text.strip():
        return [{"type": "context", "elements": [{"type": "mrkdwn", "text": f"_{THINKING}_"}]}]
    return _sections(text + CURSOR)


def answer_blocks(
    text: str, *, message_id: str, citations: Sequence[Mapping[str, Any]] = ()
) -> list[dict[str, Any]]:
    """A finished answer: text, citations (if any) and the feedback buttons."""
    blocks = _sections(text)
    cites = citation_block(citations)
    if cites is not None:
        blocks.append(cites)
    blocks.append(feedback_actions(message_id))
    return blocks


def error_blocks(message: str) -> list[dict[str, Any]]:
    return [{"type": "section", "text": {"type": "mrkdwn", "text": f":warning: {escape(message)}"}}]


def correction_modal(
    *, message_id: str, channel: str | None, thread_ts: str | None, original: str
) -> dict[str, Any]:
    """The "Suggest a better answer" modal, pre-filled with the answer to edit."""
    metadata = json.dumps({"message_id": message_id, "channel": channel, "thread_ts": thread_ts})
    if len(metadata) > METADATA_LIMIT:  # cannot happen with our ids; fail loudly if it does
        raise ValueError("modal metadata too long")
    element: dict[str, Any] = {
        "type": "plain_text_input",
        "action_id": CORRECTION_INPUT_ID,
        "multiline": True,
        "max_length": INPUT_LIMIT,
    }
    if original.strip():
        element["initial_value"] = original[:INPUT_LIMIT]
    return {
        "type": "modal",
        "callback_id": CORRECTION_CALLBACK_ID,
        "private_metadata": metadata,
        "title": {"type": "plain_text", "text": "Suggest a better answer"},
        "submit": {"type": "plain_text", "text": "Send"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {
                "type": "input",
                "block_id": CORRECTION_BLOCK_ID,
                "label": {"type": "plain_text", "text": "The answer you wanted"},
                "element": element,
            }
        ],
    }


def parse_modal_metadata(raw: str) -> dict[str, Any]:
    try:
        data = json.loads(raw or "{}")
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}
