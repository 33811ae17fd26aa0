"""``POST /v1/feedback/batch`` end to end: many pieces of feedback in one request,
accepted or refused as a whole, through the real broker and consumer."""

from __future__ import annotations

from feedback.events import TOPIC_RATINGS, decode
from tests.feedback.conftest import (
    FEEDBACK_RATE_CAP,
    Stack,
    count,
    error_body,
    mint,
    rating_ids,
    read_topic,
    user,
    wait_for,
)


def test_batch_end_to_end_all_or_nothing(stack: Stack) -> None:
    name, intruder = user(), user()
    http = stack.api.client(name)
    ids = mint(name, 12)
    (theirs,) = mint(intruder, 1)
    batch = {
        "ratings": [
            {"message_id": m, "thumbs": "up" if i % 2 else "down"} for i, m in enumerate(ids[:10])
        ]
        + [{"message_id": ids[0], "thumbs": "down"}],  # the same as item 0: a duplicate
        "comparisons": [{"message_id_a": ids[10], "message_id_b": ids[11], "winner": "b"}],
        "corrections": [{"message_id": ids[10], "corrected_reply": "The better answer."}],
    }
    # One id given to someone else: 403 naming the item, and nothing of it is kept.
    bad = {**batch, "ratings": [*batch["ratings"][:3], {"message_id": theirs, "stars": 1}]}
    err = error_body(http.post("/v1/feedback/batch", json=bad), 403, "permission_error")
    assert err["message"].startswith("ratings[3]: "), err
    assert err["code"] == "foreign_message_id"

    resp = http.post("/v1/feedback/batch", json=batch)
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert [len(body[k]) for k in ("ratings", "comparisons", "corrections")] == [11, 1, 1]
    rating_events = [r["event_id"] for r in body["ratings"]]
    assert rating_events[10] == rating_events[0]  # the in-batch duplicate is the first event
    assert len(set(rating_events)) == 10
    where = f"user_id = '{name}'"
    wait_for(lambda: count(stack.url, "ratings", where) == 10, 60, "batched ratings")
    wait_for(lambda: count(stack.url, "corrections", where) == 1, 60, "batched correction")
    wait_for(lambda: count(stack.url, "comparisons", where) == 1, 60, "batched comparison")
    assert rating_ids(stack.url, name) == set(rating_events)
    assert count(stack.url, "ratings", where + " AND thumbs = 'down'") == 5
    # Nothing from the refused batch was published: the topic holds this batch only.
    records = read_topic(stack.api.settings.kafka_bootstrap_servers, TOPIC_RATINGS)
    on_topic = [e for e in map(decode, (r.value for r in records)) if e.user_id == name]
    assert sorted(str(e.event_id) for e in on_topic) == sorted(set(rating_events))
    http.close()


def test_batch_limits(stack: Stack) -> None:
    name = user()
    http = stack.api.client(name)
    empty = error_body(http.post("/v1/feedback/batch", json={}), 422, "invalid_request_error")
    assert "empty" in empty["message"]
    (m,) = mint(name, 1)
    many = {"ratings": [{"message_id": m, "thumbs": "up"}] * 1001}
    assert error_body(http.post("/v1/feedback/batch", json=many), 422, "invalid_request_error")
    # More new feedback than the per-minute cap: refused outright, it could never fit.
    ids = mint(name, FEEDBACK_RATE_CAP + 1)
    over = {"ratings": [{"message_id": x, "thumbs": "up"} for x in ids]}
    err = error_body(http.post("/v1/feedback/batch", json=over), 400, "invalid_request_error")
    assert err["code"] == "batch_too_large"
    # A batch that fits the cap but not what is left of this minute: 429, nothing taken.
    first = {"ratings": [{"message_id": x, "thumbs": "up"} for x in ids[:100]]}
    assert http.post("/v1/feedback/batch", json=first).status_code == 202
    second = {"ratings": [{"message_id": x, "thumbs": "down"} for x in ids[100:]]}
    resp = http.post("/v1/feedback/batch", json=second)
    assert error_body(resp, 429, "rate_limit_error")["code"] == "feedback_rate_limited"
    assert int(resp.headers["Retry-After"]) >= 1
    # What is left of the window is still free: the refused batch took none of it.
    fits = {"ratings": [{"message_id": x, "thumbs": "down"} for x in ids[100:FEEDBACK_RATE_CAP]]}
    assert http.post("/v1/feedback/batch", json=fits).status_code == 202
    wait_for(
        lambda: count(stack.url, "ratings", f"user_id = '{name}'") == FEEDBACK_RATE_CAP,
        60,
        "batches",
    )
    http.close()
