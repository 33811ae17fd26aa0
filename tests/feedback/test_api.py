"""The feedback API end to end: real API server -> tansu -> consumer -> Postgres.

One server, broker, database and consumer for the module; each test is its own
user, so counts are exact per user.
"""

from __future__ import annotations

import httpx
import openai
import psycopg
import pytest

from feedback.errors import ForeignMessageId, MalformedMessageId, UnknownMessageId
from feedback.events import TOPIC_RATINGS, Event, decode
from feedback.message_ids import new_message_id
from serving.errors import FeedbackRateLimited
from serving.feedback.protocol import ComparisonRequest, CorrectionRequest, RatingRequest
from serving.feedback.service import FeedbackService
from tests.feedback.conftest import (
    FEEDBACK_RATE_CAP,
    Stack,
    count,
    error_body,
    mint,
    post_all,
    rating_ids,
    read_topic,
    user,
    wait_for,
)


def choice_ids(resp: object) -> list[str]:
    out = []
    for c in resp.choices:  # type: ignore[attr-defined]
        mid = (c.model_extra or {}).get("message_id")
        assert mid, "the API reply carries no message_id"
        out.append(str(mid))
    return out


def test_chat_replies_rated_compared_corrected(stack: Stack) -> None:
    name = user()
    key = stack.api.key(name)
    client = openai.OpenAI(base_url=stack.api.base_url + "/v1", api_key=key, max_retries=0)
    pairs: list[list[str]] = []
    for i in range(25):
        resp = client.chat.completions.create(
            model="ratchet",
            messages=[{"role": "user", "content": f"question {i}: what is the leave policy?"}],
            n=2,
            max_tokens=6,
            temperature=0.9,
        )
        pairs.append(choice_ids(resp))
    replies = [m for pair in pairs for m in pair]
    assert len(set(replies)) == 50

    http = httpx.Client(
        base_url=stack.api.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60
    )
    ratings = [
        {"message_id": m, "thumbs": "up"}
        if i % 3 == 0
        else {"message_id": m, "thumbs": "down", "comment": "too vague", "tags": ["vague"]}
        if i % 3 == 1
        else {"message_id": m, "stars": 1 + i % 5}
        for i, m in enumerate(replies)
    ]
    rated = post_all(http, "/v1/feedback/ratings", ratings)
    compared = post_all(
        http,
        "/v1/feedback/comparisons",
        [
            {"message_id_a": a, "message_id_b": b, "winner": "ab"[i % 2]}
            for i, (a, b) in enumerate(pairs)
        ],
    )
    corrected = post_all(
        http,
        "/v1/feedback/corrections",
        [
            {"message_id": m, "corrected_reply": f"The right answer {i}."}
            for i, m in enumerate(replies[:10])
        ],
    )
    assert len(set(rated + compared + corrected)) == 85

    where = f"user_id = '{name}'"
    tables = ("messages", "ratings", "comparisons", "corrections")

    def nul_replies() -> int:
        # The tiny model's byte-level vocabulary can emit NUL, which the consumer
        # dead-letters (Postgres text cannot hold it): such a reply never becomes a row.
        with psycopg.connect(stack.url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM dead_letters WHERE reason LIKE 'NUL%%'"
                " AND position(%s::bytea in value) > 0",
                (f'"user_id":"{name}"'.encode(),),
            ).fetchone()
        return int(row[0]) if row else 0

    wait_for(
        lambda: (
            count(stack.url, "ratings", where) == 50
            and count(stack.url, "comparisons", where) == 25
            and count(stack.url, "corrections", where) == 10
            and count(stack.url, "messages", where) + nul_replies() == 50
        ),
        240,
        "every reply, rating, comparison and correction stored",
        lambda: {t: count(stack.url, t, where) for t in tables},
    )
    assert rating_ids(stack.url, name) == set(rated)
    assert count(stack.url, "ratings", where + " AND thumbs = 'up'") == 17
    assert count(stack.url, "ratings", where + " AND thumbs = 'down'") == 17
    assert count(stack.url, "ratings", where + " AND stars IS NOT NULL") == 16
    assert count(stack.url, "ratings", where + " AND comment = 'too vague'") == 17
    with psycopg.connect(stack.url) as conn:
        stored = {
            str(r[0]): (r[1], r[2], r[3])
            for r in conn.execute(
                "SELECT event_id, message_id_a, message_id_b, winner FROM comparisons"
                " WHERE user_id = %s",
                (name,),
            )
        }
        fixed = dict(
            conn.execute(
                "SELECT message_id, corrected_reply FROM corrections WHERE user_id = %s", (name,)
            ).fetchall()
        )
    assert set(stored) == set(compared)
    assert sorted(v[:2] for v in stored.values()) == sorted(tuple(p) for p in pairs)
    assert fixed == {m: f"The right answer {i}." for i, m in enumerate(replies[:10])}

    # Re-rating replaces: the latest wins, the row count stays.
    again = post_all(
        http, "/v1/feedback/ratings", [{"message_id": m, "stars": 5} for m in replies[:10]]
    )
    wait_for(
        lambda: count(stack.url, "ratings", where + " AND stars = 5 AND revisions = 2") == 10,
        60,
        "re-ratings stored",
    )
    assert count(stack.url, "ratings", where) == 50
    assert set(again) <= rating_ids(stack.url, name)
    http.close()
    client.close()


def test_duplicates_and_changes_of_mind(stack: Stack) -> None:
    name = user()
    http = stack.api.client(name)
    m, other = mint(name, 2)

    def rate(body: dict) -> str:
        resp = http.post("/v1/feedback/ratings", json={"message_id": m, **body})
        assert resp.status_code == 202, resp.text
        return str(resp.json()["event_id"])

    first = rate({"thumbs": "up"})
    assert rate({"thumbs": "up"}) == first  # exact duplicate: the first event, nothing new
    down = rate({"thumbs": "down"})
    assert down != first
    back_up = rate({"thumbs": "up"})  # a change of mind back is not a duplicate
    assert back_up not in (first, down)
    assert rate({"thumbs": "up"}) == back_up
    # A sentinel on another reply: once it is stored, everything before it is too.
    sentinel = post_all(http, "/v1/feedback/ratings", [{"message_id": other, "stars": 3}])[0]
    wait_for(lambda: sentinel in rating_ids(stack.url, name), 60, "the sentinel rating")
    with psycopg.connect(stack.url) as conn:
        row = conn.execute(
            "SELECT event_id, thumbs FROM ratings WHERE message_id = %s", (m,)
        ).fetchone()
    assert row is not None
    assert (str(row[0]), row[1]) == (back_up, "up")
    # Duplicates were never published: the topic holds up, down, up for this reply.
    records = read_topic(stack.api.settings.kafka_bootstrap_servers, TOPIC_RATINGS)
    on_topic = [e for e in map(decode, (r.value for r in records)) if e.message_id == m]
    assert [str(e.event_id) for e in on_topic] == [first, down, back_up]
    http.close()


def test_bad_requests_get_4xx_with_error_body(stack: Stack) -> None:
    name, intruder = user(), user()
    http, other = stack.api.client(name), stack.api.client(intruder)
    (mine,) = mint(name, 1)
    theirs = new_message_id(intruder, "test-secret")
    uid, owner, _mac = mine.removeprefix("msg_").split("_")
    forged = f"msg_{uid}_{owner}_{'0' * 16}"
    post = http.post

    err = error_body(
        other.post("/v1/feedback/ratings", json={"message_id": mine, "thumbs": "up"}),
        403,
        "permission_error",
    )
    assert err["code"] == "foreign_message_id"
    error_body(
        other.post(
            "/v1/feedback/comparisons",
            json={"message_id_a": theirs, "message_id_b": mine, "winner": "a"},
        ),
        403,
        "permission_error",
    )
    error_body(
        other.post("/v1/feedback/corrections", json={"message_id": mine, "corrected_reply": "x"}),
        403,
        "permission_error",
    )
    no_key = httpx.post(
        stack.api.base_url + "/v1/feedback/ratings", json={"message_id": mine, "thumbs": "up"}
    )
    error_body(no_key, 401, "authentication_error")
    bad_key = httpx.post(
        stack.api.base_url + "/v1/feedback/ratings",
        json={"message_id": mine, "thumbs": "up"},
        headers={"Authorization": "Bearer rk_not-a-key"},
    )
    error_body(bad_key, 401, "authentication_error")
    err = error_body(
        post("/v1/feedback/ratings", json={"message_id": "msg_nope", "thumbs": "up"}),
        422,
        "invalid_request_error",
    )
    assert err["code"] == "malformed_message_id"
    err = error_body(
        post("/v1/feedback/ratings", json={"message_id": forged, "thumbs": "up"}),
        404,
        "not_found_error",
    )
    assert err["code"] == "unknown_message_id"
    for body in (
        {"message_id": mine, "thumbs": "up", "stars": 4},  # both
        {"message_id": mine},  # neither
        {"message_id": mine, "stars": 7},
        {"message_id": mine, "stars": 0},
        {"message_id": mine, "thumbs": "sideways"},
        {"message_id": mine, "thumbs": "up", "comment": "x" * 4001},
        {"message_id": mine, "thumbs": "up", "comment": "nul \x00 here"},
        {"message_id": mine, "thumbs": "up", "tags": ["t"] * 21},
        {"message_id": mine, "thumbs": "up", "tags": "not-a-list"},
        {"message_id": 42, "thumbs": "up"},
        {"thumbs": "up"},
    ):
        err = error_body(post("/v1/feedback/ratings", json=body), 422, "invalid_request_error")
        assert err["code"] == "validation_error", (body, err)
    for body in (
        {"message_id_a": mine, "message_id_b": mine, "winner": "a"},
        {"message_id_a": mine, "message_id_b": theirs, "winner": "c"},
        {"message_id_a": mine, "winner": "a"},
    ):
        error_body(post("/v1/feedback/comparisons", json=body), 422, "invalid_request_error")
    for body in (
        {"message_id": mine, "corrected_reply": ""},
        {"message_id": mine, "corrected_reply": "   "},
        {"message_id": mine, "corrected_reply": "y" * 20001},
        {"message_id": mine},
    ):
        error_body(post("/v1/feedback/corrections", json=body), 422, "invalid_request_error")
    error_body(
        post(
            "/v1/feedback/ratings",
            content=b"{not json",
            headers={"Content-Type": "application/json"},
        ),
        400,  # an unparseable body: 400 invalid_json on every route
        "invalid_request_error",
    )
    error_body(post("/v1/feedback/ratings", json=[1, 2]), 422, "invalid_request_error")

    # None of that published anything: after a valid rating is stored, it is the only row.
    (ok,) = post_all(http, "/v1/feedback/ratings", [{"message_id": mine, "thumbs": "down"}])
    wait_for(lambda: rating_ids(stack.url, name) == {ok}, 60, "the one valid rating")
    assert count(stack.url, "ratings", f"user_id = '{intruder}'") == 0
    assert count(stack.url, "comparisons", f"user_id IN ('{name}', '{intruder}')") == 0
    assert count(stack.url, "corrections", f"user_id IN ('{name}', '{intruder}')") == 0
    http.close()
    other.close()


def test_feedback_rate_cap_per_user(stack: Stack) -> None:
    name = user()
    http = stack.api.client(name)
    ids = mint(name, FEEDBACK_RATE_CAP + 1)
    post_all(http, "/v1/feedback/ratings", [{"message_id": m, "thumbs": "up"} for m in ids[:-1]])
    resp = http.post("/v1/feedback/ratings", json={"message_id": ids[-1], "thumbs": "up"})
    err = error_body(resp, 429, "rate_limit_error")
    assert err["code"] == "feedback_rate_limited"
    assert resp.headers["Retry-After"] == "60"  # the window's clock has not moved
    # A repeat of feedback already given is answered (same event), not counted.
    again = http.post("/v1/feedback/ratings", json={"message_id": ids[0], "thumbs": "up"})
    assert again.status_code == 202
    # Another user is not affected.
    other = user()
    (m,) = mint(other, 1)
    with stack.api.client(other) as c:
        assert c.post("/v1/feedback/ratings", json={"message_id": m, "stars": 2}).status_code == 202
    wait_for(
        lambda: count(stack.url, "ratings", f"user_id = '{name}'") == FEEDBACK_RATE_CAP,
        60,
        "capped ratings",
    )
    # 59 s on, the window is still full; at 60 s it has slid past every earlier post.
    stack.api.clock.advance(59)
    resp = http.post("/v1/feedback/ratings", json={"message_id": ids[-1], "thumbs": "up"})
    assert error_body(resp, 429, "rate_limit_error")["code"] == "feedback_rate_limited"
    assert resp.headers["Retry-After"] == "1"
    stack.api.clock.advance(1)
    resp = http.post("/v1/feedback/ratings", json={"message_id": ids[-1], "thumbs": "up"})
    assert resp.status_code == 202, resp.text
    wait_for(
        lambda: count(stack.url, "ratings", f"user_id = '{name}'") == FEEDBACK_RATE_CAP + 1,
        60,
        "the rating after the window slid",
    )
    http.close()


def test_service_directly_without_http() -> None:
    """The service has no FastAPI in it: errors are the feedback/serving exceptions."""
    published: list[Event] = []

    class Collect:
        def publish(self, event: Event) -> None:
            published.append(event)

    service = FeedbackService(Collect(), message_id_secret="test-secret", per_minute=4)
    m, n = mint("ann", 2)
    up = service.rate(RatingRequest(message_id=m, thumbs="up"), user_id="ann")
    assert service.rate(RatingRequest(message_id=m, thumbs="up"), user_id="ann") == up
    service.rate(RatingRequest(message_id=m, thumbs="down"), user_id="ann")
    pick = ComparisonRequest(message_id_a=m, message_id_b=n, winner="tie")
    service.compare(pick, user_id="ann")
    assert [type(e).__name__ for e in published] == ["RatingGiven"] * 2 + ["ComparisonGiven"]
    with pytest.raises(ForeignMessageId):
        service.rate(RatingRequest(message_id=m, stars=1), user_id="bea")
    with pytest.raises(UnknownMessageId):
        forged = m[:-1] + ("0" if m[-1] != "0" else "1")
        service.rate(RatingRequest(message_id=forged, stars=1), user_id="ann")
    with pytest.raises(MalformedMessageId):
        service.correct(CorrectionRequest(message_id="nope", corrected_reply="x"), user_id="ann")
    service.correct(CorrectionRequest(message_id=n, corrected_reply="better"), user_id="ann")
    with pytest.raises(FeedbackRateLimited) as caught:  # the fifth event within a minute
        service.rate(RatingRequest(message_id=n, thumbs="up"), user_id="ann")
    assert caught.value.status == 429 and caught.value.headers["Retry-After"]
    assert len(published) == 4
