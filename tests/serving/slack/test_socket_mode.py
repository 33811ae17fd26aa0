"""Socket Mode (``ratchet slack --socket``): events pushed over the fake Slack websocket."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from pathlib import Path

import pytest

from infra.local.tansu import Broker
from serving.cli import main
from serving.slack import blocks
from serving.slack.socket_mode import run_socket_mode
from tests.servers import new_database
from tests.serving.slack.conftest import slack_settings
from tests.serving.slack.fake_slack import APP_TOKEN, FakeSlack
from tests.serving.slack.payloads import direct_message, event_callback
from tests.serving.slack.test_events import finished, in_thread


def test_socket_mode_answers_events_pushed_over_the_websocket(
    pg_cluster,
    template_db,
    slack_broker: Broker,
    tiny_model_dir: Path,
    tmp_path: Path,  # type: ignore[no-untyped-def]
    fake_slack: FakeSlack,
) -> None:
    settings = slack_settings(
        new_database(pg_cluster, template_db),
        slack_broker.bootstrap,
        tmp_path,
        tiny_model_dir,
        fake_slack.base_url,
        slack_signing_secret=None,
        slack_app_token=APP_TOKEN,
    )
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_until_complete(run_socket_mode(settings, stop=stop))
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not fake_slack.connected():
            assert not errors, errors
            assert time.monotonic() < deadline, "Socket Mode never connected"
            time.sleep(0.1)
        opened = fake_slack.of("apps.connections.open")
        assert opened and opened[-1].token == APP_TOKEN

        event = direct_message("hello over socket mode")
        envelope_id = str(uuid.uuid4())
        fake_slack.send_envelope(
            {
                "envelope_id": envelope_id,
                "type": "events_api",
                "accepts_response_payload": False,
                "retry_attempt": 0,
                "retry_reason": "",
                "payload": json.loads(event_callback(event)),
            }
        )
        post = fake_slack.wait_for("chat.postMessage", in_thread(event["channel"], event["ts"]))
        final = fake_slack.wait_for("chat.update", finished(post.response["ts"]), timeout=90)
        assert final.args["blocks"][-1]["elements"][0]["action_id"] == blocks.ACTION_RATE_UP
        assert any(a.get("envelope_id") == envelope_id for a in fake_slack.socket_acks)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(60)
    assert not errors, errors


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "needs RATCHET_SLACK_BOT_TOKEN and RATCHET_SLACK_APP_TOKEN"),
        ({"RATCHET_SLACK_BOT_TOKEN": "xoxb-1"}, "needs RATCHET_SLACK_APP_TOKEN"),
        (
            {"RATCHET_SLACK_BOT_TOKEN": "xoxb-1", "RATCHET_SLACK_APP_TOKEN": "xoxb-2"},
            "app-level token",
        ),
    ],
)
def test_slack_command_explains_missing_configuration(
    env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("RATCHET_SLACK_BOT_TOKEN", "RATCHET_SLACK_APP_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["slack", "--socket"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ratchet slack: ") and message in err
    assert "Traceback" not in err
