"""The OpenAI-compatible API on the real vLLM engine, driven by the official
``openai`` client and LangChain over HTTP."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import openai
import pytest
from kafka import KafkaConsumer, TopicPartition

from feedback.events import TOPIC_MESSAGES, MessageLogged, decode
from feedback.message_ids import verify_message_id
from tests.fixtures.tiny_model import greedy_reply

HELLO = [{"role": "user", "content": "hello, what is the leave policy?"}]


@pytest.fixture(scope="module")
def client(live_server) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=live_server.base_url + "/v1", api_key=live_server.keys.user)


def logged_events(
    bootstrap: str, message_ids: set[str], timeout: float = 30.0
) -> dict[str, MessageLogged]:
    """Read ratchet.messages.v1 from the beginning until all ``message_ids`` are seen."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    found: dict[str, MessageLogged] = {}
    try:
        deadline = asyncio.get_event_loop_policy().new_event_loop().time() + timeout
        parts = None
        loop_time = asyncio.get_event_loop_policy().new_event_loop().time
        while parts is None and loop_time() < deadline:
            parts = consumer.partitions_for_topic(TOPIC_MESSAGES)
        assert parts, "topic ratchet.messages.v1 was never created"
        tps = [TopicPartition(TOPIC_MESSAGES, p) for p in parts]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        while message_ids - found.keys() and loop_time() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for r in records:
                    ev = decode(r.value)
                    if isinstance(ev, MessageLogged) and ev.message_id in message_ids:
                        found[ev.message_id] = ev
    finally:
        consumer.close()
    return found


def test_non_streaming_reply_has_message_id_version_and_usage(client, live_server) -> None:  # type: ignore[no-untyped-def]
    raw = client.chat.completions.with_raw_response.create(
        model="ratchet", messages=HELLO, max_tokens=8, temperature=0
    )
    resp = raw.parse()
    assert resp.object == "chat.completion"
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage.prompt_tokens > 0
    assert 1 <= resp.usage.completion_tokens <= 8
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    extra = resp.model_extra or {}
    assert extra["model_version"] == "base" == resp.model
    message_id = extra["message_id"]
    verify_message_id(message_id, "alice", live_server.settings.message_id_secret)
    assert choice.model_extra["message_id"] == message_id
    assert raw.headers["X-Ratchet-Message-Id"] == message_id
    assert raw.headers["X-Ratchet-Model-Version"] == "base"
    conversation = uuid.UUID(extra["conversation_id"])
    assert raw.headers["X-Ratchet-Conversation-Id"] == str(conversation)


def test_streaming_reply_is_framed_like_openai(client, live_server) -> None:  # type: ignore[no-untyped-def]
    stream = client.chat.completions.create(
        model="ratchet",
        messages=HELLO,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes in (["length"], ["stop"])
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert 1 <= usage.completion_tokens <= 10
    message_id = chunks[0].model_extra["message_id"]
    assert all(c.model_extra["message_id"] == message_id for c in chunks)
    assert all(c.model_extra["model_version"] == "base" for c in chunks)
    verify_message_id(message_id, "alice", live_server.settings.message_id_secret)

    # The raw SSE framing: data lines, blank-line separated, ending with [DONE].
    with httpx.stream(
        "POST",
        live_server.base_url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {live_server.keys.user}"},
        json={"model": "ratchet", "messages": HELLO, "max_tokens": 4, "stream": True},
        timeout=60,
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["X-Ratchet-Message-Id"].startswith("msg_")
        body = r.read().decode()
    events = body.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    for ev in events[:-2]:
        assert ev.startswith("data: ")
        json.loads(ev[len("data: ") :])
    # The streamed pieces add up to the model's own greedy answer.
    assert text == greedy_reply(live_server.settings.model, HELLO, 10)


def test_n_two_gives_two_choices_each_with_its_own_message_id(client, live_server) -> None:  # type: ignore[no-untyped-def]
    resp = client.chat.completions.create(
        model="ratchet", messages=HELLO, n=2, max_tokens=6, temperature=1.0, seed=3
    )
    assert [c.index for c in resp.choices] == [0, 1]
    ids = [c.model_extra["message_id"] for c in resp.choices]
    assert ids[0] != ids[1]
    assert resp.model_extra["message_id"] == ids[0]
    for mid in ids:
        verify_message_id(mid, "alice", live_server.settings.message_id_secret)

    stream = client.chat.completions.create(
        model="ratchet", messages=HELLO, n=2, max_tokens=6, stream=True
    )
    per_choice: dict[int, str] = {}
    finished: dict[int, str] = {}
    for c in stream:
        for ch in c.choices:
            if ch.model_extra.get("message_id"):
                per_choice.setdefault(ch.index, ch.model_extra["message_id"])
            if ch.finish_reason:
                finished[ch.index] = ch.finish_reason
    assert sorted(per_choice) == [0, 1] and per_choice[0] != per_choice[1]
    assert sorted(finished) == [0, 1]


def test_seed_makes_sampling_repeatable_and_stop_cuts_the_text(client) -> None:  # type: ignore[no-untyped-def]
    def once(**kw):  # type: ignore[no-untyped-def]
        r = client.chat.completions.create(model="ratchet", messages=HELLO, max_tokens=16, **kw)
        return r.choices[0]

    a = once(temperature=1.0, seed=1234)
    b = once(temperature=1.0, seed=1234)
    assert a.message.content == b.message.content
    greedy = once(temperature=0)
    text = greedy.message.content
    assert len(text) >= 4, text
    stop = text[2:4]
    cut = once(temperature=0, stop=[stop])
    assert cut.message.content == text[: text.index(stop)]
    assert cut.finish_reason == "stop"
    short = once(temperature=0, max_completion_tokens=2)
    assert short.finish_reason == "length"


def test_every_reply_is_logged_as_a_message_event(client, live_server) -> None:  # type: ignore[no-untyped-def]
    conversation = uuid.uuid4()
    resp = client.chat.completions.create(
        model="ratchet",
        messages=HELLO,
        max_tokens=5,
        n=2,
        extra_body={"conversation_id": str(conversation)},
    )
    assert resp.model_extra["conversation_id"] == str(conversation)
    ids = {c.model_extra["message_id"] for c in resp.choices}
    events = logged_events(live_server.settings.kafka_bootstrap_servers, ids)
    assert events.keys() == ids
    for c in resp.choices:
        ev = events[c.model_extra["message_id"]]
        assert ev.user_id == "alice"
        assert ev.conversation_id == conversation
        assert ev.model_version == "base"
        assert ev.reply == c.message.content
        assert [m.content for m in ev.prompt] == [HELLO[0]["content"]]
        assert ev.prompt_token_ids and ev.reply_token_ids
        assert ev.usage["completion_tokens"] == len(ev.reply_token_ids)
        assert ev.latency_ms and ev.latency_ms > 0 and ev.ttft_ms is not None


def test_conversation_id_from_header_or_created(live_server) -> None:  # type: ignore[no-untyped-def]
    url = live_server.base_url + "/v1/chat/completions"
    auth = {"Authorization": f"Bearer {live_server.keys.user}"}
    body = {"model": "ratchet", "messages": HELLO, "max_tokens": 2}
    conv = str(uuid.uuid4())
    r = httpx.post(url, json=body, headers={**auth, "X-Ratchet-Conversation-Id": conv}, timeout=60)
    assert r.status_code == 200 and r.json()["conversation_id"] == conv
    r1 = httpx.post(url, json=body, headers=auth, timeout=60).json()
    r2 = httpx.post(url, json=body, headers=auth, timeout=60).json()
    assert r1["conversation_id"] != r2["conversation_id"]
    uuid.UUID(r1["conversation_id"])


def test_models_health_ready_metrics(client, live_server) -> None:  # type: ignore[no-untyped-def]
    models = client.models.list()
    assert [m.id for m in models.data] == ["base", "ratchet"]
    assert httpx.get(live_server.base_url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(live_server.base_url + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["model_version"] == "base" and ready.json()["database"] == "ok"
    client.chat.completions.create(model="ratchet", messages=HELLO, max_tokens=3)
    text = httpx.get(live_server.base_url + "/metrics").text
    assert 'ratchet_model_version_served{version="base"} 1.0' in text
    count = [
        ln for ln in text.splitlines() if ln.startswith("ratchet_time_to_first_token_seconds_count")
    ]
    assert count and float(count[0].split()[-1]) >= 1
    assert 'ratchet_http_requests_total{code="200",route="/v1/chat/completions"}' in text
    assert "ratchet_generation_tokens_per_second_count" in text


def test_langchain_chat_openai_invoke_and_stream(live_server) -> None:  # type: ignore[no-untyped-def]
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url=live_server.base_url + "/v1",
        api_key=live_server.keys.user,
        model="ratchet",
        max_tokens=6,
        temperature=0,
    )
    msg = llm.invoke("hello there")
    assert isinstance(msg.content, str)
    assert msg.response_metadata.get("model_name") == "base"
    parts = list(llm.stream("hello there"))
    assert parts
    assert "".join(p.content for p in parts) == msg.content


def test_sixteen_concurrent_requests_all_complete(live_server) -> None:  # type: ignore[no-untyped-def]
    aclient = openai.AsyncOpenAI(
        base_url=live_server.base_url + "/v1", api_key=live_server.keys.user
    )

    async def one(i: int):  # type: ignore[no-untyped-def]
        if i % 2:
            r = await aclient.chat.completions.create(
                model="ratchet",
                messages=[{"role": "user", "content": f"question {i}"}],
                max_tokens=12,
            )
            return r.choices[0].finish_reason, r.model_extra["message_id"]
        stream = await aclient.chat.completions.create(
            model="ratchet",
            messages=[{"role": "user", "content": f"q {i}"}],
            max_tokens=12,
            stream=True,
        )
        finish, mid = None, None
        async for c in stream:
            mid = c.model_extra["message_id"]
            if c.choices and c.choices[0].finish_reason:
                finish = c.choices[0].finish_reason
        return finish, mid

    async def all16():  # type: ignore[no-untyped-def]
        try:
            return await asyncio.gather(*(one(i) for i in range(16)))
        finally:
            await aclient.close()

    results = asyncio.run(all16())
    assert len(results) == 16
    assert all(f in ("stop", "length") for f, _ in results)
    assert len({m for _, m in results}) == 16
