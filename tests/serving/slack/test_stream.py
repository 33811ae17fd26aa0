"""Streaming cadence against the fake Slack Web API, and dedupe / user records in Postgres."""

from __future__ import annotations

import asyncio

import psycopg
from psycopg_pool import ConnectionPool
from slack_sdk.web.async_client import AsyncWebClient

from serving.slack import blocks
from serving.slack.dedupe import EventDeduper
from serving.slack.stream import MessageStreamer
from serving.slack.users import SlackUserDirectory
from tests.serving.slack.fake_slack import BOT_TOKEN, FakeSlack


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_streaming_updates_about_once_per_interval_not_per_token(fake_slack: FakeSlack) -> None:
    async def run() -> tuple[MessageStreamer, str]:
        client = AsyncWebClient(token=BOT_TOKEN, base_url=fake_slack.base_url)
        clock = Clock()
        streamer = MessageStreamer(
            client,
            channel="C0STREAM",
            thread_ts="1.1",
            interval_s=1.0,
            min_chars=10_000,
            clock=clock,
        )
        ts = await streamer.start()
        text = ""
        for i in range(100):  # 100 tokens over 10 s
            clock.now += 0.1
            text += f"tok{i} "
            await streamer.push(text)
        await streamer.finish(text, blocks.answer_blocks(text, message_id="msg_s"))
        return streamer, ts

    streamer, ts = asyncio.run(run())
    updates = [c for c in fake_slack.of("chat.update") if c.args["channel"] == "C0STREAM"]
    assert all(c.args["ts"] == ts for c in updates)
    assert 9 <= len(updates) <= 12  # ~1 per second plus the final one, not 100
    assert updates[-1].args["blocks"][-1]["type"] == "actions"
    assert all(b["type"] != "actions" for c in updates[:-1] for b in c.args["blocks"])
    post = [c for c in fake_slack.of("chat.postMessage") if c.args["channel"] == "C0STREAM"]
    assert len(post) == 1 and post[0].args["thread_ts"] == "1.1"


def test_streaming_updates_sooner_when_much_text_arrives(fake_slack: FakeSlack) -> None:
    async def run() -> int:
        client = AsyncWebClient(token=BOT_TOKEN, base_url=fake_slack.base_url)
        clock = Clock()
        streamer = MessageStreamer(
            client, channel="C0BURST", thread_ts="2.1", interval_s=1.0, min_chars=50, clock=clock
        )
        await streamer.start()
        text = ""
        for _ in range(10):  # 10 chunks of 60 chars within 3 s
            clock.now += 0.3
            text += "x" * 60
            await streamer.push(text)
        return streamer.updates

    assert asyncio.run(run()) == 10


def test_a_failed_answer_replaces_the_placeholder_with_a_short_message(
    fake_slack: FakeSlack,
) -> None:
    async def run() -> str:
        client = AsyncWebClient(token=BOT_TOKEN, base_url=fake_slack.base_url)
        streamer = MessageStreamer(client, channel="C0FAIL", thread_ts="3.1")
        ts = await streamer.start()
        await streamer.fail("Sorry, something went wrong.")
        return ts

    ts = asyncio.run(run())
    update = fake_slack.wait_for("chat.update", lambda c: c.args["channel"] == "C0FAIL")
    assert update.args["ts"] == ts
    assert update.args["text"] == "Sorry, something went wrong."


def test_dedupe_claims_each_event_once_across_processes(database_url: str) -> None:
    pool = ConnectionPool(database_url, min_size=1, max_size=2, open=True)
    try:

        async def run() -> list[bool]:
            first, second = EventDeduper(pool), EventDeduper(pool)  # two replicas
            return [
                await first.claim("Ev1"),
                await first.claim("Ev1"),  # the LRU answers
                await second.claim("Ev1"),  # the table answers
                await second.claim("Ev2"),
            ]

        assert asyncio.run(run()) == [True, False, False, True]
        assert asyncio.run(EventDeduper(None).claim("Ev1")) is True  # no pool: in-process only
    finally:
        pool.close()
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT event_id FROM slack_events ORDER BY 1").fetchall()
    assert rows == [("Ev1",), ("Ev2",)]


def test_slack_users_are_recorded_once(database_url: str) -> None:
    pool = ConnectionPool(database_url, min_size=1, max_size=2, open=True)
    try:

        async def run() -> list[str]:
            users = SlackUserDirectory(pool)
            return [await users.resolve("T1", "U1"), await users.resolve("T1", "U1")]

        assert asyncio.run(run()) == ["slack:T1:U1", "slack:T1:U1"]
        asyncio.run(SlackUserDirectory(pool).resolve("T1", "U1"))
    finally:
        pool.close()
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT team_id, slack_user_id, user_id FROM slack_users").fetchall()
    assert rows == [("T1", "U1", "slack:T1:U1")]
