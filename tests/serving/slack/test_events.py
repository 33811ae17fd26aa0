"""Acceptance: signed Slack requests to ``POST /slack/events`` of the real app.

The app runs in uvicorn (the vLLM engine on the tiny model, real Postgres
and tansu); its Web API calls go to the fake Slack server, which records them.
"""

from __future__ import annotations

import json
import time

from feedback.message_ids import verify_message_id
from serving.slack import blocks
from tests.serving.slack.conftest import SlackServer
from tests.serving.slack.fake_slack import TEAM_ID, Call, FakeSlack
from tests.serving.slack.payloads import (
    ALICE,
    CHANNEL,
    DM_CHANNEL,
    app_mention,
    direct_message,
    event_callback,
    sign,
)

ALICE_ID = f"slack:{TEAM_ID}:{ALICE}"


def in_thread(channel: str, thread_ts: str):  # type: ignore[no-untyped-def]
    return lambda c: c.args.get("channel") == channel and c.args.get("thread_ts") == thread_ts


def finished(ts: str):  # type: ignore[no-untyped-def]
    """A chat.update of message ``ts`` that carries the feedback buttons."""
    return lambda c: c.args.get("ts") == ts and c.args["blocks"][-1]["type"] == "actions"


def answer(server: SlackServer, fake: FakeSlack, event: dict, **post_kw) -> tuple[Call, Call]:  # type: ignore[type-arg]
    """Post ``event``; return the placeholder post and the finished update."""
    resp = server.post(event_callback(event), **post_kw)
    assert resp.status_code == 200, resp.text
    thread_ts = event.get("thread_ts") or event["ts"]
    placeholder = fake.wait_for("chat.postMessage", in_thread(event["channel"], thread_ts))
    final = fake.wait_for("chat.update", finished(placeholder.response["ts"]), timeout=90)
    return placeholder, final


def settle(server: SlackServer, fake: FakeSlack) -> None:
    """Post a sentinel DM and wait until it is fully answered: whatever the app did
    with the events posted before it, it has done by then (in place of a sleep)."""
    answer(server, fake, direct_message("sentinel"))


def buttons(update: Call) -> dict[str, str]:
    return {e["action_id"]: e["value"] for e in update.args["blocks"][-1]["elements"]}


def test_url_verification_challenge_is_answered(slack_server: SlackServer) -> None:
    body = json.dumps({"type": "url_verification", "challenge": "c-123", "token": "x"})
    resp = slack_server.post(body)
    assert resp.status_code == 200
    assert "c-123" in resp.text


def test_app_mention_is_answered_in_its_thread_with_feedback_buttons(
    slack_server: SlackServer, fake_slack: FakeSlack
) -> None:
    event = app_mention("What is the travel policy?")
    placeholder, final = answer(slack_server, fake_slack, event)
    assert placeholder.args["thread_ts"] == event["ts"]
    assert placeholder.token is not None
    values = buttons(final)
    assert set(values) == {blocks.ACTION_RATE_UP, blocks.ACTION_RATE_DOWN, blocks.ACTION_SUGGEST}
    message_id = values[blocks.ACTION_RATE_UP]
    assert len(set(values.values())) == 1
    verify_message_id(message_id, ALICE_ID, slack_server.settings.message_id_secret)
    assert final.args["text"].strip()


def test_direct_message_is_answered_in_a_thread(
    slack_server: SlackServer, fake_slack: FakeSlack
) -> None:
    event = direct_message("hello there")
    placeholder, final = answer(slack_server, fake_slack, event)
    assert placeholder.args["channel"] == DM_CHANNEL
    assert placeholder.args["thread_ts"] == event["ts"]
    assert blocks.ACTION_RATE_DOWN in buttons(final)


def test_bot_messages_and_edits_in_dms_are_not_answered(
    slack_server: SlackServer, fake_slack: FakeSlack
) -> None:
    own = direct_message("my own answer")
    own["bot_id"] = "B0OTHER"
    edit = direct_message("edited")
    edit["subtype"] = "message_changed"
    for event in (own, edit):
        assert slack_server.post(event_callback(event)).status_code == 200
    settle(slack_server, fake_slack)
    for event in (own, edit):
        assert not [
            c for c in fake_slack.of("chat.postMessage") if in_thread(DM_CHANNEL, event["ts"])(c)
        ]


def test_bad_signature_is_rejected_with_401(
    slack_server: SlackServer, fake_slack: FakeSlack
) -> None:
    event = app_mention("forged")
    body = event_callback(event)
    resp = slack_server.post(body, signed=False, headers=sign(body, secret="not-the-secret"))
    assert resp.status_code == 401
    assert resp.json()["error"]["type"] == "authentication_error"
    unsigned = slack_server.post(body, signed=False)
    assert unsigned.status_code == 401
    garbage = slack_server.post(
        body,
        signed=False,
        headers={"X-Slack-Request-Timestamp": "soon", "X-Slack-Signature": "v0=1"},
    )
    assert garbage.status_code == 401
    settle(slack_server, fake_slack)
    assert not [c for c in fake_slack.of("chat.postMessage") if in_thread(CHANNEL, event["ts"])(c)]


def test_replayed_request_older_than_five_minutes_is_rejected(
    slack_server: SlackServer, fake_slack: FakeSlack
) -> None:
    event = app_mention("replayed")
    body = event_callback(event)
    old = sign(body, timestamp=int(time.time()) - 6 * 60)  # correctly signed, but stale
    resp = slack_server.post(body, signed=False, headers=old)
    assert resp.status_code == 401
    settle(slack_server, fake_slack)
    assert not [c for c in fake_slack.of("chat.postMessage") if in_thread(CHANNEL, event["ts"])(c)]


def test_retried_event_is_answered_once(slack_server: SlackServer, fake_slack: FakeSlack) -> None:
    event = app_mention("Are retries answered twice?")
    body = event_callback(event)
    first = slack_server.post(body)
    retry = {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    second = slack_server.post(body, headers=retry)
    assert (first.status_code, second.status_code) == (200, 200)
    placeholder = fake_slack.wait_for("chat.postMessage", in_thread(CHANNEL, event["ts"]))
    fake_slack.wait_for("chat.update", finished(placeholder.response["ts"]), timeout=90)
    late = slack_server.post(
        body, headers={"X-Slack-Retry-Num": "2", "X-Slack-Retry-Reason": "http_error"}
    )
    assert late.status_code == 200
    settle(slack_server, fake_slack)
    posts = [c for c in fake_slack.of("chat.postMessage") if in_thread(CHANNEL, event["ts"])(c)]
    assert len(posts) == 1


def test_a_failure_is_shown_to_the_user_as_a_short_message(
    slack_server: SlackServer, fake_slack: FakeSlack
) -> None:
    event = app_mention("tell me about " + "kestrel robotics handbook " * 400)  # > context window
    resp = slack_server.post(event_callback(event))
    assert resp.status_code == 200
    placeholder = fake_slack.wait_for("chat.postMessage", in_thread(CHANNEL, event["ts"]))
    update = fake_slack.wait_for(
        "chat.update", lambda c: c.args["ts"] == placeholder.response["ts"], timeout=60
    )
    assert ":warning:" in json.dumps(update.args["blocks"])
    assert "context length" in update.args["text"]
    assert update.args["text"].startswith("Sorry")
    assert len(update.args["text"]) < 300
    assert "Traceback" not in update.args["text"]
