"""Preference pairs, SFT and KTO examples built from a real, migrated store."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from feedback.errors import FeedbackError
from feedback.events import (
    ChatMessage,
    ComparisonGiven,
    CorrectionGiven,
    MessageLogged,
    RatingGiven,
)
from feedback.message_ids import new_message_id
from feedback.pairs import load_kto_examples, load_pairs, load_sft_examples
from feedback.store import write_batch
from feedback.watermark import committed_through
from training.snapshot import (
    Snapshot,
    StoreSource,
    build_snapshot,
    prompt_slice,
    to_pair,
    to_sft,
)

T0 = datetime(2026, 11, 1, 12, tzinfo=UTC)


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as c:
        yield c


def message(user: str, prompt: str, reply: str, *, version: str = "v1") -> MessageLogged:
    """A reply to a one-turn ``prompt`` (same prompt text: same ``prompt_hash``)."""
    return MessageLogged(
        user_id=user,
        message_id=new_message_id(user, "test-secret"),
        conversation_id=uuid.uuid4(),
        model_version=version,
        prompt=[ChatMessage(role="user", content=prompt)],
        reply=reply,
    )


def thumbs(m: MessageLogged, up: bool = True, user: str | None = None, **kw: object) -> RatingGiven:
    return RatingGiven(
        user_id=user or m.user_id,
        message_id=m.message_id,
        thumbs="up" if up else "down",
        **kw,  # type: ignore[arg-type]
    )


def stars(m: MessageLogged, n: int, user: str | None = None, **kw: object) -> RatingGiven:
    return RatingGiven(user_id=user or m.user_id, message_id=m.message_id, stars=n, **kw)  # type: ignore[arg-type]


def compare(
    a: MessageLogged, b: MessageLogged, winner: str, user: str | None = None, **kw: object
) -> ComparisonGiven:
    return ComparisonGiven(
        user_id=user or a.user_id,
        message_id_a=a.message_id,
        message_id_b=b.message_id,
        winner=winner,  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def correct(m: MessageLogged, text: str, **kw: object) -> CorrectionGiven:
    return CorrectionGiven(user_id=m.user_id, message_id=m.message_id, corrected_reply=text, **kw)  # type: ignore[arg-type]


def now(conn: psycopg.Connection) -> datetime:
    return conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]


def test_comparisons_give_winner_over_loser_and_ties_give_nothing(
    conn: psycopg.Connection,
) -> None:
    a = message("alice", "Q?", "answer A", version="v1")
    b = message("alice", "Q?", "answer B", version="v2")
    c = message("alice", "Q?", "answer C", version="v2")
    write_batch(conn, [a, b, c, compare(a, b, "a"), compare(c, b, "b"), compare(a, c, "tie")])
    pairs = load_pairs(conn, None, names=[])
    got = sorted((p.chosen, p.rejected) for p in pairs)
    assert got == [("answer A", "answer B"), ("answer B", "answer C")]
    ab = next(p for p in pairs if p.chosen == "answer A")
    assert ab.source == "comparison"
    assert ab.prompt == [{"role": "user", "content": "Q?"}]
    assert (ab.chosen_message_id, ab.rejected_message_id) == (a.message_id, b.message_id)
    assert (ab.model_version, ab.chosen_model_version) == ("v2", "v1")
    assert ab.conversation_id == str(b.conversation_id)
    assert ab.created_at is not None


def test_latest_comparison_of_a_user_wins(conn: psycopg.Connection) -> None:
    a, b = message("alice", "Q?", "A"), message("alice", "Q?", "B")
    write_batch(conn, [a, b, compare(a, b, "a", occurred_at=T0)])
    write_batch(conn, [compare(b, a, "tie", occurred_at=T0 + timedelta(minutes=1))])
    assert load_pairs(conn, None, names=[]) == []


def test_comparison_of_replies_to_different_prompts_is_skipped(conn: psycopg.Connection) -> None:
    a, b = message("alice", "Q1?", "A"), message("alice", "Q2?", "B")
    write_batch(conn, [a, b, compare(a, b, "a")])
    assert load_pairs(conn, None, names=[]) == []


def test_corrections_prefer_the_correction_over_the_reply(conn: psycopg.Connection) -> None:
    m = message("bob", "Capital of France?", "Lyon.", version="v3")
    write_batch(conn, [m, correct(m, "Paris.")])
    [pair] = load_pairs(conn, None, names=[])
    assert (pair.chosen, pair.rejected, pair.source) == ("Paris.", "Lyon.", "correction")
    assert pair.chosen_message_id is None
    assert (pair.rejected_message_id, pair.model_version) == (m.message_id, "v3")
    [sft] = load_sft_examples(conn, None, names=[])
    assert (sft.completion, sft.source, sft.message_id) == ("Paris.", "correction", m.message_id)


def test_ratings_pair_replies_to_the_same_prompt_by_score(conn: psycopg.Connection) -> None:
    good, bad = message("alice", "Q?", "good"), message("bob", "Q?", "bad")
    five, three = message("alice", "R?", "five"), message("alice", "R?", "three")
    tie1, tie2 = message("alice", "S?", "s1"), message("alice", "S?", "s2")
    other = message("alice", "T?", "lonely")
    write_batch(
        conn,
        [good, bad, five, three, tie1, tie2, other]
        + [thumbs(good), thumbs(bad, up=False), stars(five, 5), stars(three, 3)]
        + [thumbs(tie1), thumbs(tie2), thumbs(other, up=False)],
    )
    pairs = load_pairs(conn, None, names=[])
    assert sorted((p.chosen, p.rejected) for p in pairs) == [("five", "three"), ("good", "bad")]
    assert {p.source for p in pairs} == {"rating"}
    gb = next(p for p in pairs if p.chosen == "good")
    assert (gb.chosen_message_id, gb.rejected_message_id) == (good.message_id, bad.message_id)


def test_rating_scores_are_averaged_over_raters(conn: psycopg.Connection) -> None:
    a, b = message("alice", "Q?", "A"), message("alice", "Q?", "B")
    # A: 5 and 1 stars (mean 0.5); B: 3 stars (0.5): equal, no pair. Then carol likes B.
    write_batch(conn, [a, b, stars(a, 5), stars(a, 1, user="bob"), stars(b, 3)])
    assert load_pairs(conn, None, names=[]) == []
    write_batch(conn, [stars(b, 5, user="carol")])
    assert [(p.chosen, p.rejected) for p in load_pairs(conn, None, names=[])] == [("B", "A")]


def test_a_thumb_pairs_with_stars_only_where_every_reading_orders_them(
    conn: psycopg.Connection,
) -> None:
    # Up is 4 or 5 stars and down 1 or 2: a thumb and stars pair only where the
    # thumb's whole range lies above or below the stars.
    cases = {  # prompt: (thumbs up?, stars, the reply chosen)
        "P?": (True, 4, None),  # up vs 4 stars: unordered
        "Q?": (True, 5, None),  # up vs 5 stars: unordered
        "R?": (True, 3, "thumb"),  # up over 3 stars
        "S?": (False, 2, None),  # down vs 2 stars: unordered
        "T?": (False, 3, "stars"),  # 3 stars over down
    }
    events: list = []
    for prompt, (up, n, _) in cases.items():
        by_thumb, by_stars = message("alice", prompt, "thumb"), message("bob", prompt, "stars")
        events += [by_thumb, by_stars, thumbs(by_thumb, up=up), stars(by_stars, n)]
    write_batch(conn, events)
    got = {p.prompt[0]["content"]: p.chosen for p in load_pairs(conn, None, names=[])}
    assert got == {prompt: want for prompt, (_, _, want) in cases.items() if want is not None}


def test_mixed_raters_give_a_range_that_must_clear_the_other(conn: psycopg.Connection) -> None:
    a, b = message("alice", "Q?", "A"), message("alice", "Q?", "B")
    # A: up and 4 stars (0.75 to 0.875); B: 3 stars (0.5). A is above B.
    write_batch(conn, [a, b, thumbs(a), stars(a, 4, user="bob"), stars(b, 3)])
    assert [(p.chosen, p.rejected) for p in load_pairs(conn, None, names=[])] == [("A", "B")]
    # carol's 5 stars lift B to 0.75: A's range (from 0.75) no longer clears it.
    write_batch(conn, [stars(b, 5, user="carol")])
    assert load_pairs(conn, None, names=[]) == []


def test_latest_rating_wins_before_pairing(conn: psycopg.Connection) -> None:
    a, b = message("alice", "Q?", "A"), message("alice", "Q?", "B")
    later = T0 + timedelta(minutes=5)
    write_batch(conn, [a, b, thumbs(a, occurred_at=T0), thumbs(b, up=False, occurred_at=T0)])
    assert [(p.chosen, p.rejected) for p in load_pairs(conn, None, names=[])] == [("A", "B")]
    # alice changes her mind on both; an older event arriving late changes nothing.
    write_batch(
        conn,
        [
            thumbs(a, up=False, occurred_at=later),
            thumbs(b, occurred_at=later),
            thumbs(b, up=False, occurred_at=T0 + timedelta(minutes=1)),
        ],
    )
    assert [(p.chosen, p.rejected) for p in load_pairs(conn, None, names=[])] == [("B", "A")]


def test_rating_pairs_per_prompt_are_capped_largest_gap_first(conn: psycopg.Connection) -> None:
    msgs = [message("alice", "Q?", f"r{i}") for i in range(5)]
    write_batch(conn, [*msgs, *(stars(m, i + 1) for i, m in enumerate(msgs))])
    assert len(load_pairs(conn, None, names=[], max_pairs_per_prompt=None)) == 10
    [top] = load_pairs(conn, None, names=[], max_pairs_per_prompt=1)
    assert (top.chosen, top.rejected) == ("r4", "r0")


def test_feedback_on_unknown_messages_waits_for_the_message(conn: psycopg.Connection) -> None:
    a, b = message("alice", "Q?", "A"), message("alice", "Q?", "B")
    fixed = message("alice", "Z?", "wrong")
    # Feedback is stored before its messages (they travel on another topic).
    write_batch(conn, [a, compare(a, b, "a"), thumbs(a), thumbs(b, up=False)])
    write_batch(conn, [correct(fixed, "right")])
    assert load_pairs(conn, None, names=[]) == []
    assert load_sft_examples(conn, None, names=[]) != []  # a's thumbs up: a is stored
    watermark = max(s.created_at for s in load_sft_examples(conn, None, names=[]))
    write_batch(conn, [b, fixed])
    # The pairs count as new once buildable, even though the feedback is older.
    new = load_pairs(conn, watermark, names=[])
    assert sorted((p.source, p.chosen, p.rejected) for p in new) == [
        ("comparison", "A", "B"),
        ("correction", "right", "wrong"),
        ("rating", "A", "B"),
    ]


def test_since_filters_on_store_time_and_created_at_is_a_watermark(
    conn: psycopg.Connection,
) -> None:
    a, b = message("alice", "Q?", "A"), message("alice", "Q?", "B")
    write_batch(conn, [a, b, compare(a, b, "a")])
    cut = now(conn)
    c, d = message("bob", "R?", "C"), message("bob", "R?", "D")
    # Happened long ago (say, spooled while the broker was down), stored now: it counts.
    write_batch(conn, [c, d, compare(c, d, "b", occurred_at=T0 - timedelta(days=30))])
    assert len(load_pairs(conn, None, names=[])) == 2
    [late] = load_pairs(conn, cut, names=[])
    assert (late.chosen, late.rejected) == ("D", "C")
    assert late.created_at > cut
    watermark = max(p.created_at for p in load_pairs(conn, None, names=[]))
    assert load_pairs(conn, watermark, names=[]) == []
    # A changed rating is new feedback: its pairs come back after the watermark.
    write_batch(conn, [thumbs(a), thumbs(b, up=False)])
    assert [(p.source, p.chosen) for p in load_pairs(conn, watermark, names=[])] == [
        ("rating", "A")
    ]


def test_sft_takes_corrections_and_unanimous_top_ratings(conn: psycopg.Connection) -> None:
    up, five, four = message("a", "Q1", "up"), message("a", "Q2", "five"), message("a", "Q3", "4")
    mixed, fixed = message("a", "Q4", "mixed"), message("a", "Q5", "fixed")
    write_batch(
        conn,
        [up, five, four, mixed, fixed]
        + [thumbs(up), stars(five, 5), stars(four, 4), thumbs(mixed)]
        + [thumbs(mixed, up=False, user="b"), thumbs(fixed), correct(fixed, "better")],
    )
    got = sorted((s.source, s.completion) for s in load_sft_examples(conn, None, names=[]))
    assert got == [("correction", "better"), ("rating", "five"), ("rating", "up")]


def test_kto_examples_are_thumbs_verdicts(conn: psycopg.Connection) -> None:
    up, down = message("a", "Q1", "up"), message("a", "Q2", "down")
    mixed, starred = message("a", "Q3", "mixed"), message("a", "Q4", "starred")
    write_batch(
        conn,
        [up, down, mixed, starred, thumbs(up), thumbs(up, user="b"), thumbs(down, up=False)]
        + [thumbs(mixed), thumbs(mixed, up=False, user="b"), stars(starred, 5)],
    )
    kto = load_kto_examples(conn, None, names=[])
    assert sorted((k.completion, k.label) for k in kto) == [("down", False), ("up", True)]
    assert {k.message_id for k in kto} == {up.message_id, down.message_id}
    assert kto[0].prompt[0]["role"] == "user"


def test_text_leaving_the_store_is_redacted(conn: psycopg.Connection) -> None:
    secret = "sk-" + "a1B2c3D4e5F6g7H8i9J0"
    m = message(
        "alice",
        "Name: Ada Lovelace. Mail ada@example.com or call +44 20 7946 0958.",
        f"Your key is {secret}; Grace Hopper says hi.",
    )
    write_batch(conn, [m, correct(m, "Ask ada@example.com, not Grace Hopper."), thumbs(m)])
    [pair] = load_pairs(conn, None, names=["Grace Hopper"])
    [sft] = load_sft_examples(conn, None, names=["Grace Hopper"])
    kto = load_kto_examples(conn, None, names=["Grace Hopper"])
    assert len(kto) == 1 and kto[0].label is True  # the thumbs-up: its text is checked too
    assert kto[0].completion == pair.rejected and "[SECRET]" in kto[0].completion
    texts = [pair.prompt[0]["content"], pair.chosen, pair.rejected, sft.prompt[0]["content"]]
    texts += [sft.completion, *(k.completion for k in kto), *(k.prompt[0]["content"] for k in kto)]
    joined = "\n".join(texts)
    for raw in ("Ada Lovelace", "ada@example.com", "7946", secret, "Grace Hopper"):
        assert raw not in joined
    assert "[NAME]" in pair.prompt[0]["content"] and "[EMAIL]" in pair.chosen
    assert "[SECRET]" in pair.rejected and "[PHONE]" in pair.prompt[0]["content"]
    raw_reply = conn.execute("SELECT reply, prompt FROM messages").fetchone()
    assert secret in raw_reply[0] and "Ada Lovelace" in raw_reply[1][0]["content"]  # type: ignore[index]


def test_every_turn_of_a_multi_turn_prompt_is_redacted(conn: psycopg.Connection) -> None:
    """PII in earlier turns (the user's, the assistant's, the system's) is redacted as
    well as in the last one, in pairs, SFT and KTO examples alike."""
    m = MessageLogged(
        user_id="alice",
        message_id=new_message_id("alice", "test-secret"),
        conversation_id=uuid.uuid4(),
        model_version="v1",
        prompt=[
            ChatMessage(role="system", content="Operator on call: Grace Hopper."),
            ChatMessage(role="user", content="I am Ada Lovelace, ada@example.com."),
            ChatMessage(role="assistant", content="Noted, I will call +44 20 7946 0958."),
            ChatMessage(role="user", content="My token is sk-a1B2c3D4e5F6g7H8i9J0. Thanks!"),
        ],
        reply="You are welcome.",
    )
    write_batch(conn, [m, correct(m, "Glad to help."), thumbs(m)])
    names = ["Grace Hopper"]
    [pair] = load_pairs(conn, None, names=names)
    [sft] = load_sft_examples(conn, None, names=names)
    [kto] = load_kto_examples(conn, None, names=names)
    for prompt in (pair.prompt, sft.prompt, kto.prompt):
        assert [t["role"] for t in prompt] == ["system", "user", "assistant", "user"]
        joined = "\n".join(t["content"] for t in prompt)
        for raw in ("Grace Hopper", "Ada Lovelace", "ada@example.com", "7946", "sk-a1B2"):
            assert raw not in joined, (raw, joined)
        for tag in ("[NAME]", "[EMAIL]", "[PHONE]", "[SECRET]"):
            assert tag in joined, (tag, joined)
        assert prompt[3]["content"].endswith("Thanks!")  # the rest of a turn is kept


def test_the_store_source_redacts_the_settings_names(conn: psycopg.Connection, monkeypatch) -> None:
    monkeypatch.setenv("RATCHET_PII_NAMES", '["Grace Hopper"]')
    m = message("alice", "Hi", "Grace Hopper was here.")
    write_batch(conn, [m, correct(m, "Hello.")])
    [pair] = StoreSource().load_pairs(conn, None)
    assert pair.rejected == "[NAME] was here."
    [pair] = load_pairs(conn, None, names=[])  # the library redacts only what it is given
    assert pair.rejected == "Grace Hopper was here."


def test_records_fit_the_trainers_snapshot(conn: psycopg.Connection) -> None:
    msgs = [message("alice", f"Q{i}?", f"A{i}") for i in range(6)]
    others = [message("bob", f"Q{i}?", f"B{i}") for i in range(6)]
    events: list = [*msgs, *others]
    events += [compare(m, o, "a") for m, o in zip(msgs[:2], others[:2], strict=True)]
    events += [thumbs(m) for m in msgs[2:4]] + [thumbs(o, up=False) for o in others[2:4]]
    events += [correct(o, f"fixed {i}") for i, o in enumerate(others[4:])]
    events += [compare(msgs[0], others[0], "a", user="bob")]  # a duplicate pair
    write_batch(conn, events)
    snapshot = build_snapshot(StoreSource(), conn, since=None)
    assert snapshot.stats["pairs_loaded"] == 7
    assert snapshot.n_pairs == 6
    # thumbs up on msgs[2:4], and the two corrections, less those on held-out questions
    # (SFT trains the policy; it never sees a question the gates ask)
    sft_questions = [[{"role": "user", "content": f"Q{i}?"}] for i in (2, 3, 4, 5)]
    kept = [q for q in sft_questions if prompt_slice(q, 0.2, 0.3) != "heldout"]
    assert len(snapshot.sft_examples) == len(kept) < 4
    assert snapshot.watermark == max(p.created_at for p in load_pairs(conn, None, names=[]))
    assert build_snapshot(StoreSource(), conn, since=snapshot.watermark).n_pairs == 0
    pair = to_pair(load_pairs(conn, None, names=[])[0])
    assert pair.prompt[0]["role"] == "user" and pair.conversation_id
    assert to_sft(load_sft_examples(conn, None, names=[])[0]).completion


def test_a_batch_committing_during_a_snapshot_comes_in_the_next_one(
    conn: psycopg.Connection, database_url: str
) -> None:
    """The consumer stamps ``stored_at`` with its transaction's *start*: a batch that
    began before a snapshot and commits after it is older than records the snapshot
    saw. The next snapshot (since the first one's watermark) must still bring it."""
    a, b = message("alice", "Q1?", "A"), message("alice", "Q1?", "B")
    write_batch(conn, [a, b, compare(a, b, "a")])  # committed before the writer starts
    with psycopg.connect(database_url) as writer:  # not autocommit: one open transaction
        writer.execute("SELECT 1")  # its transaction starts: now() is this moment
        slow_start = writer.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        c, d = message("bob", "Q2?", "C"), message("bob", "Q2?", "D")
        write_batch(writer, [c, d, compare(c, d, "a")])  # written, not yet committed
        e, f = message("carol", "Q3?", "E"), message("carol", "Q3?", "F")
        write_batch(conn, [e, f, compare(e, f, "a")])  # started later, committed first
        first = build_snapshot(StoreSource(), conn, since=None)
        writer.commit()
    second = build_snapshot(StoreSource(), conn, since=first.watermark)

    def chosen(snapshot: Snapshot) -> list[str]:
        parts = (snapshot.train_pairs, snapshot.judge_pairs, snapshot.heldout_pairs)
        return sorted(p.chosen for part in parts for p in part)

    stored = {p.chosen: p.created_at for p in load_pairs(conn, None, names=[])}
    assert stored["C"] == slow_start < stored["E"]  # the slow batch is stamped earlier
    assert "C" in chosen(second)  # the slow batch is not skipped
    assert chosen(first) + chosen(second) == ["A", "C", "E"]  # nor anything read twice
    # E waited for the next snapshot: the slow batch could still commit below it.
    assert first.watermark is not None and first.watermark < slow_start
    assert build_snapshot(StoreSource(), conn, since=second.watermark).n_pairs == 0


def test_committed_through_stays_below_open_transactions(
    conn: psycopg.Connection, database_url: str
) -> None:
    with psycopg.connect(database_url) as writer:
        writer.execute("SELECT 1")
        started = writer.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        assert committed_through(conn) < started
        writer.rollback()
    assert committed_through(conn) > started
    with psycopg.connect(database_url) as reader:
        reader.execute("SET default_transaction_isolation = 'repeatable read'")
        reader.commit()
        with pytest.raises(FeedbackError, match="READ COMMITTED"):
            committed_through(reader)


def test_a_rated_replys_message_id_reaches_the_training_record(
    conn: psycopg.Connection, tmp_path
) -> None:
    """Provenance end to end: store -> pairs -> snapshot -> the run's provenance file."""
    import json

    from training.snapshot import write_provenance

    good = [message("alice", f"Q{i}?", f"A{i}", version="v7") for i in range(8)]
    bad = [message("bob", f"Q{i}?", f"B{i}", version="v8") for i in range(8)]
    events: list = [*good, *bad, *(compare(g, b, "a") for g, b in zip(good, bad, strict=True))]
    write_batch(conn, events)
    snapshot = build_snapshot(StoreSource(), conn, since=None)
    pairs = snapshot.train_pairs + snapshot.judge_pairs + snapshot.heldout_pairs
    assert len(pairs) == 8
    by_chosen = {p.chosen: p for p in pairs}
    for g, b in zip(good, bad, strict=True):
        prov = by_chosen[g.reply].provenance
        assert prov.source == "comparison"
        assert prov.message_ids == (g.message_id, b.message_id)
        assert prov.model_versions == ("v7", "v8")
    summary = write_provenance(snapshot, tmp_path / "provenance.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "provenance.jsonl").read_text().splitlines()]
    assert {m for line in lines for m in line["message_ids"]} == {m.message_id for m in good + bad}
    assert summary["by_source"] == {"pair:comparison": 8}
    assert summary["model_versions"] == ["v7", "v8"]
