"""Slack request payloads as Slack sends them, and their signatures."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from typing import Any
from urllib.parse import urlencode

from tests.serving.slack.fake_slack import BOT_USER_ID, TEAM_ID

SIGNING_SECRET = "ratchet-test-signing-secret"
CHANNEL = "C0GENERAL"
DM_CHANNEL = "D0ALICE"
ALICE = "U0ALICE"
BOB = "U0BOB"


def new_ts() -> str:
    return f"{time.time():.6f}"


def sign(
    body: str, *, secret: str = SIGNING_SECRET, timestamp: int | None = None
) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    mac = hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={mac}"}


def event_callback(event: dict[str, Any], *, event_id: str | None = None) -> str:
    return json.dumps(
        {
            "token": "unused-verification-token",
            "team_id": TEAM_ID,
            "api_app_id": "A0RATCHET",
            "event": event,
            "type": "event_callback",
            "event_id": event_id or f"Ev{uuid.uuid4().hex[:10].upper()}",
            "event_time": int(time.time()),
            "authorizations": [{"team_id": TEAM_ID, "user_id": BOT_USER_ID, "is_bot": True}],
        }
    )


def app_mention(
    text: str, *, user: str = ALICE, ts: str | None = None, **kw: Any
) -> dict[str, Any]:
    ts = ts or new_ts()
    event = {
        "type": "app_mention",
        "user": user,
        "text": f"<@{BOT_USER_ID}> {text}",
        "ts": ts,
        "channel": CHANNEL,
        "event_ts": ts,
        "team": TEAM_ID,
    }
    event.update(kw)
    return event


def direct_message(text: str, *, user: str = ALICE, ts: str | None = None) -> dict[str, Any]:
    ts = ts or new_ts()
    return {
        "type": "message",
        "channel_type": "im",
        "user": user,
        "text": text,
        "ts": ts,
        "channel": DM_CHANNEL,
        "event_ts": ts,
        "team": TEAM_ID,
    }


def block_action(
    action_id: str,
    value: str,
    *,
    user: str = ALICE,
    channel: str = CHANNEL,
    message_ts: str,
    thread_ts: str,
    message_text: str = "",
) -> str:
    """The form body Slack posts for a button click: ``payload=<json>``."""
    payload = {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "team_id": TEAM_ID},
        "api_app_id": "A0RATCHET",
        "token": "unused-verification-token",
        "container": {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel,
            "is_ephemeral": False,
            "thread_ts": thread_ts,
        },
        "trigger_id": f"{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex[:8]}",
        "team": {"id": TEAM_ID, "domain": "ratchet-test"},
        "channel": {"id": channel, "name": "general"},
        "message": {
            "type": "message",
            "user": BOT_USER_ID,
            "ts": message_ts,
            "thread_ts": thread_ts,
            "text": message_text,
        },
        "response_url": "https://hooks.slack.invalid/actions/T/1/x",
        "actions": [
            {
                "action_id": action_id,
                "block_id": "ratchet_feedback",
                "type": "button",
                "value": value,
                "action_ts": new_ts(),
            }
        ],
    }
    return urlencode({"payload": json.dumps(payload)})


def view_submission(view: dict[str, Any], answer: str, *, user: str = ALICE) -> str:
    """The form body for submitting ``view`` (as our app opened it) with ``answer`` typed in."""
    submitted = dict(view)
    submitted.update(
        {
            "id": "V0MODAL",
            "team_id": TEAM_ID,
            "state": {
                "values": {"correction": {"text": {"type": "plain_text_input", "value": answer}}}
            },
            "hash": "1700000000.abc",
        }
    )
    payload = {
        "type": "view_submission",
        "team": {"id": TEAM_ID, "domain": "ratchet-test"},
        "user": {"id": user, "username": user.lower(), "team_id": TEAM_ID},
        "api_app_id": "A0RATCHET",
        "token": "unused-verification-token",
        "trigger_id": f"{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex[:8]}",
        "view": submitted,
        "response_urls": [],
    }
    return urlencode({"payload": json.dumps(payload)})
