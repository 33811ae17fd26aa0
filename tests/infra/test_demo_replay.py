"""The demo's offline replay of the held-out questions (``infra/demo/replay.py``): the
real vLLM engine on the tiny models, the served replies stored in a real Postgres as
the API stores them, with the token ids it rendered and returned."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import psycopg
import pytest
from transformers import AutoTokenizer

from feedback.events import ChatMessage, MessageLogged
from feedback.message_ids import new_message_id
from feedback.store import write_batch
from infra.demo.employees import Evaluation, Reply
from infra.demo.questions import Question, judge
from infra.demo.replay import (
    greedy_replies_each,
    model_shape,
    replay_held_out,
    stored_exchanges,
)
from serving.backends.base import render_chat
from tests.fixtures.tiny_model import build_tiny_model

TOKENS = 8
QUESTIONS = [
    Question("How many days of annual leave do I get?", "leave.md", ("25 days",)),
    Question("What is the hotel limit per night?", "travel.md", ("150",)),
    Question("Who approves overtime?", "overtime.md", ("your manager",)),
]


def served_message(question: Question, prompt_ids: list[int], reply: str, reply_ids: list[int]):
    """A held-out reply as the API logs it (``MessageLogged`` with its token ids)."""
    return MessageLogged(
        user_id="you",
        message_id=new_message_id("you", "test-secret"),
        conversation_id=uuid.uuid4(),
        model_version="v0001",
        prompt=[ChatMessage(role="user", content=question.question)],
        reply=reply,
        prompt_token_ids=prompt_ids,
        reply_token_ids=reply_ids,
    )


def test_a_replay_asks_the_stored_prompts_and_counts_the_replies_it_reproduces(
    database_url: str, tmp_path: Path
) -> None:
    # Two tiny models of one shape and tokenizer, other weights; spread wide enough
    # that their greedy replies are visible text (the default's strip to nothing).
    production = build_tiny_model(tmp_path / "production", seed=2, init_std=0.1)
    candidate = build_tiny_model(tmp_path / "candidate", seed=1, init_std=0.1)
    tokenizer = AutoTokenizer.from_pretrained(production)
    prompts = [render_chat(tokenizer, [{"role": "user", "content": q.question}]) for q in QUESTIONS]
    # One engine: started on the candidate, then the production weights loaded into it.
    # The replay below does the reverse, so each model is asked both ways.
    alone, served = greedy_replies_each([candidate, production], prompts, TOKENS, dtype="float32")
    assert all(text and ids for text, ids in served)
    # What the API returned: the first two as the replay decodes them, the third not.
    returned = [ids for _, ids in served]
    returned[2] = [*returned[2], returned[2][0]]
    messages = [
        served_message(q, p, text, ids)
        for q, p, (text, _), ids in zip(QUESTIONS, prompts, served, returned, strict=True)
    ]
    with psycopg.connect(database_url) as conn:
        write_batch(conn, messages)
    asked = Evaluation(
        version="v0001",
        rows=[
            (q, Reply(m.reply, m.message_id, "v0001", judge(m.reply, q)))
            for q, m in zip(QUESTIONS, messages, strict=True)
        ],
    )

    replay = replay_held_out(
        database_url,
        asked,
        production,
        ("v0002", candidate),
        tokens=TOKENS,
        dtype="float32",
    )

    # The production weights loaded in place gave the replies a fresh engine gives.
    assert replay.identical == 2
    assert (replay.served.version, replay.candidate.version) == ("v0001", "v0002")
    assert [r.text for _, r in replay.served.rows] == [text for text, _ in served]
    assert [q for q, _ in replay.candidate.rows] == QUESTIONS
    # The candidate is another model: its greedy replies to the same prompts differ.
    assert [r.text for _, r in replay.candidate.rows] != [text for text, _ in served]
    # ... and are the ones it gave from an engine started on it.
    assert [r.text for _, r in replay.candidate.rows] == [text for text, _ in alone]
    for q, r in [*replay.served.rows, *replay.candidate.rows]:
        assert r.judgement == judge(r.text, q)  # the employees' rule, as through the API


def test_a_reply_stored_without_its_prompt_ids_cannot_be_replayed(database_url: str) -> None:
    logged = served_message(QUESTIONS[0], [1, 2, 3], "25 days.", [4])
    bare = logged.model_copy(
        update={"message_id": new_message_id("you", "test-secret"), "prompt_token_ids": None}
    )
    with psycopg.connect(database_url) as conn:
        write_batch(conn, [logged, bare])
    assert stored_exchanges(database_url, [logged.message_id]) == [([1, 2, 3], [4])]
    with pytest.raises(RuntimeError, match=f"first: {bare.message_id}"):
        stored_exchanges(database_url, [logged.message_id, bare.message_id])
    with pytest.raises(RuntimeError, match="not stored"):
        stored_exchanges(database_url, [new_message_id("you", "test-secret")])


def test_a_trained_version_shares_its_parents_engine_and_another_config_does_not(
    tmp_path: Path,
) -> None:
    first = build_tiny_model(tmp_path / "first", seed=2, init_std=0.1)
    second = build_tiny_model(tmp_path / "second", seed=1, init_std=0.1)
    assert model_shape(first) == model_shape(second)  # other weights, one shape
    # What the cycle's trainers leave in a version they save: not the engine's business.
    config = json.loads((second / "config.json").read_text())
    (second / "config.json").write_text(json.dumps({**config, "use_cache": False}))
    tokenizer = json.loads((second / "tokenizer.json").read_text())
    padding = {"strategy": "BatchLongest", "direction": "Left", "pad_id": 2}
    (second / "tokenizer.json").write_text(json.dumps({**tokenizer, "padding": padding}))
    assert model_shape(first) == model_shape(second)
    (second / "config.json").write_text(
        json.dumps({**config, "num_hidden_layers": config["num_hidden_layers"] + 1})
    )
    assert model_shape(first) != model_shape(second)
