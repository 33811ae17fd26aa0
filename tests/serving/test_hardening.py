"""What real clients found (issue 17): a non-streaming request abandoned by its
client stops generating; ``max_tokens`` past the context and a seed past int64
are 400s; another user's conversation is refused; ``/v1/models`` shows no paths
and an unknown model is a 404; an unparseable body is the same 400 everywhere;
sources reach clients that read only the content (real vLLM engine, tiny model)."""

from __future__ import annotations

import re
import time
import uuid

import httpx
import psycopg
import pytest

from serving.chat.grounding import RetrievedChunk
from serving.chat.protocol import ChatCompletionRequest
from serving.chat.service import ChatService
from tests.serving.test_auth_and_errors import assert_error

HELLO = [{"role": "user", "content": "hello"}]


def _auth(live_server, key: str = "user") -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"Authorization": f"Bearer {getattr(live_server.keys, key)}"}


def _chat(live_server, body, key="user", headers=None, timeout=60.0):  # type: ignore[no-untyped-def]
    return httpx.post(
        live_server.base_url + "/v1/chat/completions",
        json={"model": "ratchet", "messages": HELLO, **body},
        headers={**_auth(live_server, key), **(headers or {})},
        timeout=timeout,
    )


def _metric(live_server, name: str, **labels: str) -> float:  # type: ignore[no-untyped-def]
    text = httpx.get(live_server.base_url + "/metrics", timeout=30).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_non_streaming_request_is_aborted_when_its_client_leaves(live_server) -> None:  # type: ignore[no-untyped-def]
    aborted = _metric(live_server, "ratchet_chat_completions_total", finish_reason="abort")
    tokens = _metric(live_server, "ratchet_completion_tokens_total")
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        _chat(live_server, {"max_tokens": 480, "temperature": 0}, timeout=0.3)
    deadline = time.monotonic() + 30
    while _metric(live_server, "ratchet_chat_completions_total", finish_reason="abort") == aborted:
        assert time.monotonic() < deadline, "the abandoned request was not aborted"
        time.sleep(0.1)
    generated = _metric(live_server, "ratchet_completion_tokens_total") - tokens
    print(f"aborted after {time.monotonic() - started:.2f} s and {generated:.0f} tokens")
    assert generated < 480


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_past_the_context_is_a_400(live_server, stream: bool) -> None:  # type: ignore[no-untyped-def]
    r = _chat(live_server, {"max_tokens": 10**9, "stream": stream})
    message = assert_error(r, 400, "invalid_request_error", "context_length_exceeded")
    assert "512" in message and "max_tokens" not in r.headers.get("x-ratchet-message-id", "")
    assert _chat(live_server, {"max_tokens": 8, "stream": stream}).status_code == 200


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("seed", [2**64, 2**63, -(2**63) - 1])
def test_a_seed_past_int64_is_a_400(live_server, stream: bool, seed: int) -> None:  # type: ignore[no-untyped-def]
    r = _chat(live_server, {"max_tokens": 2, "seed": seed, "stream": stream})
    assert "seed" in assert_error(r, 400, "invalid_request_error")
    ok = _chat(live_server, {"max_tokens": 2, "seed": 2**63 - 1, "stream": stream})
    assert ok.status_code == 200, ok.text


def test_another_users_conversation_is_refused(live_server) -> None:  # type: ignore[no-untyped-def]
    mine = _chat(live_server, {"max_tokens": 2}).json()["conversation_id"]
    # alice may continue her conversation, bob may not: in the body or the header
    assert _chat(live_server, {"max_tokens": 2, "conversation_id": mine}).status_code == 200
    r = _chat(live_server, {"max_tokens": 2, "conversation_id": mine}, key="user2")
    assert_error(r, 403, "permission_error", "foreign_conversation")
    r = _chat(
        live_server, {"max_tokens": 2}, key="user2", headers={"X-Ratchet-Conversation-Id": mine}
    )
    assert_error(r, 403, "permission_error", "foreign_conversation")
    r = _chat(live_server, {"max_tokens": 2, "stream": True, "conversation_id": mine}, key="user2")
    assert_error(r, 403, "permission_error", "foreign_conversation")


def test_a_stored_conversation_of_another_user_is_refused(live_server) -> None:  # type: ignore[no-untyped-def]
    """A conversation another API process started: only the store knows its owner."""
    theirs = uuid.uuid4()
    with psycopg.connect(live_server.database_url) as conn:
        conn.execute("INSERT INTO users (id) VALUES ('carol') ON CONFLICT DO NOTHING")
        conn.execute("INSERT INTO conversations (id, user_id) VALUES (%s, 'carol')", (theirs,))
    r = _chat(live_server, {"max_tokens": 2, "conversation_id": str(theirs)})
    assert_error(r, 403, "permission_error", "foreign_conversation")
    new = str(uuid.uuid4())  # an id nobody has used yet: the caller starts it, and owns it
    assert _chat(live_server, {"max_tokens": 2, "conversation_id": new}).status_code == 200
    r = _chat(live_server, {"max_tokens": 2, "conversation_id": new}, key="user2")
    assert_error(r, 403, "permission_error", "foreign_conversation")


def test_models_show_no_paths_and_unknown_models_are_404(live_server) -> None:  # type: ignore[no-untyped-def]
    listed = httpx.get(live_server.base_url + "/v1/models", headers=_auth(live_server)).json()
    assert [m["id"] for m in listed["data"]] == ["base", "ratchet"]
    assert str(live_server.settings.model) not in str(listed)
    assert all(set(m) == {"id", "object", "created", "owned_by"} for m in listed["data"])
    for name in ("base", "ratchet"):
        assert _chat(live_server, {"max_tokens": 2, "model": name}).status_code == 200
    for stream in (False, True):
        r = _chat(live_server, {"max_tokens": 2, "model": "gpt-4o", "stream": stream})
        assert "gpt-4o" in assert_error(r, 404, "not_found_error", "model_not_found")


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/kb/search", "/v1/feedback/ratings", "/v1/feedback/batch"]
)
@pytest.mark.parametrize("raw", [b"{not json", b'{"query": "\xff\xfe"}'])
def test_an_unparseable_body_is_the_same_400_everywhere(live_server, path: str, raw: bytes) -> None:  # type: ignore[no-untyped-def]
    r = httpx.post(
        live_server.base_url + path,
        content=raw,
        headers={**_auth(live_server, "operator"), "Content-Type": "application/json"},
        timeout=30,
    )
    assert_error(r, 400, "invalid_request_error", "invalid_json")


class TwoSources:
    async def retrieve(self, query: str, k: int) -> list[RetrievedChunk]:
        return [
            RetrievedChunk("c1", "policies/leave.md", "Annual leave", "25 days a year.", 0.9),
            RetrievedChunk("c2", "howto/vpn.md", "VPN setup", "Use the client.", 0.8),
        ]


@pytest.mark.parametrize("stream", [False, True])
def test_sources_in_the_content_when_the_setting_says_so(live_server, stream: bool) -> None:  # type: ignore[no-untyped-def]
    state = live_server.state
    request = ChatCompletionRequest.model_validate(
        {"model": "ratchet", "messages": HELLO, "max_tokens": 3, "knowledge": True}
    )

    def ask(on: bool) -> tuple[str, list[dict]]:  # type: ignore[type-arg]
        settings = state.settings.model_copy(update={"citations_in_content": on})
        chat = ChatService(settings, state.models, None, retriever=TwoSources())

        async def run():  # type: ignore[no-untyped-def]
            prep = await chat.prepare(request, user_id="alice")
            if not stream:
                reply = await chat.complete(prep)
                return reply.choices[0].message.content, reply.citations
            import json

            text, cites = "", []
            async for raw in chat.stream(prep):
                chunk = json.loads(raw)
                cites = chunk.get("citations") or cites
                for choice in chunk["choices"]:
                    text += choice["delta"].get("content") or ""
            return text, cites

        return live_server.thread.call(run())  # type: ignore[no-any-return]

    plain, cites = ask(False)
    assert "Sources:" not in plain and [c["index"] for c in cites] == [1, 2]
    with_notes, cites = ask(True)
    assert with_notes.endswith(
        "\n\nSources:\n- [1] Annual leave (policies/leave.md)\n- [2] VPN setup (howto/vpn.md)"
    )
    assert [c["source_path"] for c in cites] == ["policies/leave.md", "howto/vpn.md"]
