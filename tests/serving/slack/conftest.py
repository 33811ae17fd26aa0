"""Slack fixtures: the fake Slack Web API, and ONE real API server with Slack mounted
(the vLLM engine on the tiny model, its own database and tansu broker), on
which the acceptance tests post signed Slack requests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from infra.local.tansu import Broker, free_port
from serving.settings import ServingSettings
from tests.conftest import CACHE
from tests.servers import ApiServer, consumer_running, new_database, running_api, serving_settings
from tests.serving.slack.fake_slack import BOT_TOKEN, FakeSlack
from tests.serving.slack.payloads import SIGNING_SECRET, sign


@pytest.fixture(scope="session")
def fake_slack() -> Iterator[FakeSlack]:
    server = FakeSlack().start()
    yield server
    server.stop()


class SlackServer(ApiServer):
    @property
    def bootstrap(self) -> str:
        return self.settings.kafka_bootstrap_servers

    def post(
        self,
        body: str,
        *,
        headers: dict[str, str] | None = None,
        form: bool = False,
        signed: bool = True,
    ) -> httpx.Response:
        sent = {"Content-Type": "application/x-www-form-urlencoded" if form else "application/json"}
        if signed:
            sent.update(sign(body))
        sent.update(headers or {})
        return httpx.post(f"{self.base_url}/slack/events", content=body, headers=sent, timeout=30)


def slack_settings(
    database_url: str, bootstrap: str, home: Path, model: Path, base_url: str, **kw
) -> ServingSettings:  # type: ignore[no-untyped-def]
    base = dict(
        backend="vllm",
        default_max_tokens=40,
        slack_bot_token=BOT_TOKEN,
        slack_signing_secret=SIGNING_SECRET,
        slack_api_base_url=base_url,
        slack_stream_interval_s=0.2,
        slack_stream_chars=40,
    )
    base.update(kw)
    return serving_settings(database_url, bootstrap, home, model, **base)


@pytest.fixture(scope="session")
def slack_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A broker of the Slack tests' own, so the consumer sees only their events."""
    broker = Broker(CACHE / "bin", free_port(), tmp_path_factory.mktemp("slack-kafka") / "t.log")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def slack_server(
    pg_cluster,
    template_db,
    slack_broker,
    tiny_model_dir,
    tmp_path_factory,
    fake_slack,  # type: ignore[no-untyped-def]
) -> Iterator[SlackServer]:
    db = new_database(pg_cluster, template_db)
    settings = slack_settings(
        db,
        slack_broker.bootstrap,
        tmp_path_factory.mktemp("slack-home"),
        tiny_model_dir,
        fake_slack.base_url,
    )
    with running_api(settings, kind=SlackServer) as server:
        yield server


@pytest.fixture(scope="session")
def feedback_consumer(
    slack_server: SlackServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """The real feedback consumer (``ratchet consume``) storing the Slack tests' events."""
    from feedback.settings import FeedbackSettings

    settings = FeedbackSettings(
        database_url=slack_server.database_url,
        kafka_bootstrap_servers=slack_server.bootstrap,
        home=tmp_path_factory.mktemp("slack-consumer"),
        consumer_group=f"slack-tests-{uuid.uuid4().hex[:8]}",
        message_id_secret=slack_server.settings.message_id_secret,
    )
    with consumer_running(settings, "slack-test-consumer"):
        yield
