"""Slack feedback passes the HTTP API's feedback gate (``FeedbackService``): the
per-user cap, the duplicate drop, and "the latest rating wins".

The answers are not generated here: the message ids are minted with the
deployment's secret, as the chat service would have issued them, so many can
be rated quickly. The server is a second API with Slack mounted and a cap of
``CAP`` feedback events per user per minute, on the Slack tests' database and
broker, so the Slack tests' consumer stores its events.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from feedback.events import TOPIC_RATINGS
from feedback.message_ids import new_message_id
from serving.slack import blocks
from tests.feedback.conftest import read_topic
from tests.fixtures.clock import ManualClock
from tests.servers import running_api
from tests.serving.slack.conftest import SlackServer, slack_settings
from tests.serving.slack.fake_slack import TEAM_ID, FakeSlack
from tests.serving.slack.feedback_store import wait_for_row
from tests.serving.slack.payloads import CHANNEL, block_action, new_ts, view_submission

CAP = 3  # feedback events per user per minute on this module's server


@pytest.fixture(scope="module")
def capped(
    slack_server: SlackServer,
    fake_slack: FakeSlack,
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SlackServer]:
    settings = slack_settings(
        slack_server.database_url,
        slack_server.bootstrap,
        tmp_path_factory.mktemp("slack-capped-home"),
        tiny_model_dir,
        fake_slack.base_url,
        backend="transformers",  # it answers no chat: the cheap backend will do
    )
    settings = settings.model_copy(update={"rate_cap_per_minute": CAP})
    # A manual clock: the cap's 60 s window never slides under a slow test.
    with running_api(settings, clock=ManualClock(), kind=SlackServer) as server:
        yield server


def ratchet_user(slack_user: str) -> str:
    return f"slack:{TEAM_ID}:{slack_user}"


def mint(server: SlackServer, slack_user: str) -> str:
    """A message id of an answer given to ``slack_user``."""
    return new_message_id(ratchet_user(slack_user), server.settings.message_id_secret)


def click(server: SlackServer, fake: FakeSlack, slack_user: str, action_id: str, mid: str) -> str:
    """Click 👍 or 👎 under the answer ``mid`` (in a thread of its own); the ephemeral reply."""
    thread_ts = new_ts()
    body = block_action(action_id, mid, user=slack_user, message_ts=thread_ts, thread_ts=thread_ts)
    resp = server.post(body, form=True)
    assert resp.status_code == 200, resp.text
    note = fake.wait_for(
        "chat.postEphemeral",
        lambda c: c.args.get("user") == slack_user and c.args.get("thread_ts") == thread_ts,
    )
    assert note.args["channel"] == CHANNEL
    return str(note.args["text"])


def stored_rating(server: SlackServer, slack_user: str, mid: str, thumbs: str) -> tuple:  # type: ignore[type-arg]
    """(event_id, revisions) of the user's rating of ``mid`` once it reads ``thumbs``."""
    return wait_for_row(
        server.database_url,
        "SELECT event_id, revisions FROM ratings"
        " WHERE user_id = %s AND message_id = %s AND thumbs = %s",
        (ratchet_user(slack_user), mid, thumbs),
    )


def published_ratings(server: SlackServer, mid: str) -> list[dict]:  # type: ignore[type-arg]
    values = [json.loads(r.value) for r in read_topic(server.bootstrap, TOPIC_RATINGS)]
    return [v for v in values if v.get("message_id") == mid]


def test_thumbs_clicks_past_the_per_user_cap_are_refused_with_the_wait(
    capped: SlackServer, fake_slack: FakeSlack, feedback_consumer: None
) -> None:
    user = "U0CAROL"
    mids = [mint(capped, user) for _ in range(CAP + 1)]
    for mid in mids[:CAP]:
        assert click(capped, fake_slack, user, blocks.ACTION_RATE_UP, mid).startswith("Thanks")
    refused = click(capped, fake_slack, user, blocks.ACTION_RATE_DOWN, mids[CAP])
    assert refused.startswith("You're rating too fast; try again in ")
    seconds = int(refused.removeprefix("You're rating too fast; try again in ").split()[0])
    assert 1 <= seconds <= 60

    # The correction modal is gated too: the error shows in the modal.
    view = blocks.correction_modal(
        message_id=mids[0], channel=CHANNEL, thread_ts=new_ts(), original="the answer"
    )
    resp = capped.post(view_submission(view, "A better answer.", user=user), form=True)
    assert resp.status_code == 200
    assert resp.json()["response_action"] == "errors"
    assert "rating too fast" in resp.json()["errors"][blocks.CORRECTION_BLOCK_ID]

    for mid in mids[:CAP]:
        stored_rating(capped, user, mid, "up")
    assert published_ratings(capped, mids[CAP]) == []


def test_a_repeated_identical_click_is_published_once(
    capped: SlackServer, fake_slack: FakeSlack, feedback_consumer: None
) -> None:
    user = "U0DAVE"
    mid, later = mint(capped, user), mint(capped, user)
    assert click(capped, fake_slack, user, blocks.ACTION_RATE_UP, mid).startswith("Thanks")
    assert click(capped, fake_slack, user, blocks.ACTION_RATE_UP, mid).startswith("Thanks")
    # Events of one user share a partition: once this later one is stored, a
    # second event for ``mid`` (had one been published) is on the topic too.
    assert click(capped, fake_slack, user, blocks.ACTION_RATE_UP, later).startswith("Thanks")
    stored_rating(capped, user, later, "up")
    event_id, revisions = stored_rating(capped, user, mid, "up")
    published = published_ratings(capped, mid)
    assert [(v["thumbs"], v["event_id"]) for v in published] == [("up", str(event_id))]
    assert revisions == 1


def test_a_change_of_mind_is_stored_as_the_latest_rating(
    capped: SlackServer, fake_slack: FakeSlack, feedback_consumer: None
) -> None:
    user = "U0ERIN"
    mid = mint(capped, user)
    assert (
        click(capped, fake_slack, user, blocks.ACTION_RATE_UP, mid) == "Thanks for the feedback 👍"
    )
    stored_rating(capped, user, mid, "up")
    assert (
        click(capped, fake_slack, user, blocks.ACTION_RATE_DOWN, mid)
        == "Thanks for the feedback 👎"
    )
    _, revisions = stored_rating(capped, user, mid, "down")
    assert revisions == 2
    assert [v["thumbs"] for v in published_ratings(capped, mid)] == ["up", "down"]
