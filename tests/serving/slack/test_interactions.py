"""Acceptance: button clicks and the correction modal become feedback in Postgres.

A click is a signed ``block_actions`` payload; the app publishes RatingGiven
through the API's feedback service and producer to the real broker, and the
real consumer stores it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import psycopg
import pytest

from serving.slack import blocks
from tests.serving.slack.conftest import SlackServer
from tests.serving.slack.fake_slack import TEAM_ID, Call, FakeSlack
from tests.serving.slack.feedback_store import wait_for_row
from tests.serving.slack.payloads import (
    ALICE,
    BOB,
    CHANNEL,
    app_mention,
    block_action,
    event_callback,
    view_submission,
)
from tests.serving.slack.test_events import buttons, finished, in_thread

ALICE_ID = f"slack:{TEAM_ID}:{ALICE}"


@dataclass
class Answered:
    thread_ts: str
    message_ts: str
    message_id: str
    text: str


@pytest.fixture(scope="module")
def answered(slack_server: SlackServer, fake_slack: FakeSlack) -> Answered:
    """One answer given to Alice in #general."""
    event = app_mention("How many vacation days do I get?")
    assert slack_server.post(event_callback(event)).status_code == 200
    post = fake_slack.wait_for("chat.postMessage", in_thread(CHANNEL, event["ts"]))
    final = fake_slack.wait_for("chat.update", finished(post.response["ts"]), timeout=90)
    return Answered(
        event["ts"], post.response["ts"], buttons(final)[blocks.ACTION_RATE_UP], final.args["text"]
    )


def click(server: SlackServer, answered: Answered, action_id: str, *, user: str = ALICE) -> None:
    body = block_action(
        action_id,
        answered.message_id,
        user=user,
        message_ts=answered.message_ts,
        thread_ts=answered.thread_ts,
        message_text=answered.text,
    )
    resp = server.post(body, form=True)
    assert resp.status_code == 200, resp.text


def ephemeral_to(fake: FakeSlack, user: str, text: str) -> Call:
    return fake.wait_for(
        "chat.postEphemeral", lambda c: c.args.get("user") == user and text in c.args["text"]
    )


def test_thumbs_up_click_stores_a_rating_for_the_message_and_user(
    slack_server: SlackServer, fake_slack: FakeSlack, answered: Answered, feedback_consumer: None
) -> None:
    click(slack_server, answered, blocks.ACTION_RATE_UP)
    note = ephemeral_to(fake_slack, ALICE, "Thanks")
    assert note.args["channel"] == CHANNEL
    assert note.args["thread_ts"] == answered.thread_ts
    row = wait_for_row(
        slack_server.database_url,
        "SELECT user_id, thumbs FROM ratings WHERE message_id = %s",
        (answered.message_id,),
    )
    assert row == (ALICE_ID, "up")


def settled_rating(server: SlackServer, fake: FakeSlack, answered: Answered, action: str) -> None:
    """A sentinel: Alice's own click ``action`` on ``answered``, waited for until the
    consumer stored it. Ratings of one reply share a partition key, so a rating
    published before the sentinel would be stored by then too."""
    thumbs = "up" if action == blocks.ACTION_RATE_UP else "down"
    click(server, answered, action)
    ephemeral_to(fake, ALICE, "Thanks")
    wait_for_row(
        server.database_url,
        "SELECT 1 FROM ratings WHERE message_id = %s AND user_id = %s AND thumbs = %s",
        (answered.message_id, ALICE_ID, thumbs),
    )


def ratings_by(url: str, **where: str) -> int:
    ((column, value),) = where.items()
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT count(*) FROM ratings WHERE {column} = %s", (value,)).fetchone()
    return int(row[0])  # type: ignore[index]


def test_someone_else_cannot_rate_an_answer_given_to_another_user(
    slack_server: SlackServer, fake_slack: FakeSlack, answered: Answered, feedback_consumer: None
) -> None:
    click(slack_server, answered, blocks.ACTION_RATE_DOWN, user=BOB)
    note = ephemeral_to(fake_slack, BOB, "Only the person who asked")
    assert note.args["channel"] == CHANNEL
    settled_rating(slack_server, fake_slack, answered, blocks.ACTION_RATE_DOWN)
    assert ratings_by(slack_server.database_url, user_id=f"slack:{TEAM_ID}:{BOB}") == 0


def test_suggest_opens_a_modal_whose_submission_stores_a_correction(
    slack_server: SlackServer, fake_slack: FakeSlack, answered: Answered, feedback_consumer: None
) -> None:
    click(slack_server, answered, blocks.ACTION_SUGGEST)
    opened = fake_slack.wait_for(
        "views.open",
        lambda c: (
            json.loads(c.args["view"]["private_metadata"])["message_id"] == answered.message_id
        ),
    )
    view = opened.args["view"]
    assert opened.args["trigger_id"]
    assert view["callback_id"] == blocks.CORRECTION_CALLBACK_ID

    empty = slack_server.post(view_submission(view, "   "), form=True)
    assert empty.status_code == 200
    assert empty.json()["response_action"] == "errors"

    better = "You get 25 vacation days a year; ask your manager in the HR portal."
    resp = slack_server.post(view_submission(view, better), form=True)
    assert resp.status_code == 200
    assert not resp.text.strip() or "errors" not in resp.text
    ephemeral_to(fake_slack, ALICE, "your answer was recorded")
    row = wait_for_row(
        slack_server.database_url,
        "SELECT user_id, corrected_reply FROM corrections WHERE message_id = %s",
        (answered.message_id,),
    )
    assert row == (ALICE_ID, better)


def test_a_forged_message_id_is_refused(
    slack_server: SlackServer, fake_slack: FakeSlack, answered: Answered, feedback_consumer: None
) -> None:
    forged = Answered(answered.thread_ts, answered.message_ts, "msg_" + "0" * 32, answered.text)
    click(slack_server, forged, blocks.ACTION_RATE_UP)
    ephemeral_to(fake_slack, ALICE, "can no longer be rated")
    settled_rating(slack_server, fake_slack, answered, blocks.ACTION_RATE_UP)
    assert ratings_by(slack_server.database_url, message_id=forged.message_id) == 0
