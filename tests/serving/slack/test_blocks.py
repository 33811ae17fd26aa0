"""Block Kit payloads, thread mapping and text cleaning (pure functions)."""

from __future__ import annotations

import uuid

from serving.slack import blocks
from serving.slack.threads import ThreadHistory, clean_text, conversation_id
from serving.slack.users import ratchet_user_id, team_and_user


def test_answer_blocks_have_text_citations_and_buttons_with_the_message_id() -> None:
    out = blocks.answer_blocks(
        "Use <b> & be brief",
        message_id="msg_x",
        citations=[
            {"title": "Handbook", "url": "https://wiki.example/handbook"},
            {"source": "policies/leave.md"},
        ],
    )
    assert out[0]["text"]["text"] == "Use &lt;b&gt; &amp; be brief"
    cites = [e["text"] for e in out[1]["elements"]]
    assert cites == ["[1] <https://wiki.example/handbook|Handbook>", "[2] policies/leave.md"]
    actions = out[-1]
    assert actions["type"] == "actions"
    ids = [(e["action_id"], e["value"]) for e in actions["elements"]]
    assert ids == [
        (blocks.ACTION_RATE_UP, "msg_x"),
        (blocks.ACTION_RATE_DOWN, "msg_x"),
        (blocks.ACTION_SUGGEST, "msg_x"),
    ]


def test_long_answers_are_split_into_sections_within_slack_limits() -> None:
    text = ("word " * 1000 + "\n") * 3  # ~15,000 characters
    out = blocks.answer_blocks(text, message_id="m")
    sections = [b for b in out if b["type"] == "section"]
    assert len(sections) >= 5
    assert all(len(s["text"]["text"]) <= blocks.SECTION_LIMIT for s in sections)
    assert "".join(s["text"]["text"] for s in sections).replace(" ", "").replace("\n", "") == (
        text.replace(" ", "").replace("\n", "")
    )
    assert len(out) <= 50


def test_streaming_blocks_show_progress_but_no_buttons() -> None:
    assert "Thinking" in str(blocks.streaming_blocks(""))
    frame = blocks.streaming_blocks("partial answer")
    assert frame[0]["text"]["text"].endswith(blocks.CURSOR)
    assert all(b["type"] != "actions" for b in frame)


def test_correction_modal_round_trips_its_metadata() -> None:
    view = blocks.correction_modal(
        message_id="msg_1", channel="C1", thread_ts="1.2", original="old answer"
    )
    assert view["callback_id"] == blocks.CORRECTION_CALLBACK_ID
    assert len(view["title"]["text"]) <= 24
    element = view["blocks"][0]["element"]
    assert element["initial_value"] == "old answer"
    assert blocks.parse_modal_metadata(view["private_metadata"]) == {
        "message_id": "msg_1",
        "channel": "C1",
        "thread_ts": "1.2",
    }
    assert blocks.parse_modal_metadata("not json") == {}


def test_threads_map_to_stable_distinct_conversations() -> None:
    a = conversation_id("T1", "C1", "100.1")
    assert a == conversation_id("T1", "C1", "100.1")
    assert isinstance(a, uuid.UUID)
    assert len({a, conversation_id("T1", "C1", "100.2"), conversation_id("T2", "C1", "100.1")}) == 3


def test_clean_text_strips_the_bot_mention_and_unwraps_links() -> None:
    raw = "<@UBOT> what is <https://x.example/a|the policy> for <@U22|bob> &amp; <!here>?"
    assert clean_text(raw, "UBOT") == "what is the policy for @bob & @here?"


def test_thread_history_keeps_recent_turns_of_recent_threads() -> None:
    history = ThreadHistory(max_threads=2, max_turns=4)
    a, b, c = (conversation_id("T", "C", str(i)) for i in range(3))
    history.record(a, "q1", "a1")
    history.record(a, "q2", "a2")
    history.record(a, "q3", "a3")
    assert history.messages(a, "q4") == [
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
        {"role": "user", "content": "q3"},
        {"role": "assistant", "content": "a3"},
        {"role": "user", "content": "q4"},
    ]
    history.record(b, "x", "y")
    history.record(c, "x", "y")  # evicts a, the least recent
    assert history.messages(a, "q") == [{"role": "user", "content": "q"}]


def test_slack_users_map_to_namespaced_ratchet_users() -> None:
    assert ratchet_user_id("T1", "U1") == "slack:T1:U1"
    body = {"user": {"id": "U1", "team_id": "T1"}, "team": {"id": "T9"}}
    assert team_and_user(body) == ("T1", "U1")
    assert team_and_user({"user": {"id": "U1"}, "team": {"id": "T9"}}) == ("T9", "U1")
