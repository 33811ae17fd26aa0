"""Feedback metrics operators alert on (issue 17): accepted (and duplicates) and
refused by reason, on the API's /metrics."""

from __future__ import annotations

import httpx

from feedback.message_ids import new_message_id
from tests.feedback.test_operator_metrics import samples
from tests.servers import ApiServer

SECRET = "test-secret"


def test_feedback_accepted_and_refused_by_reason(live_server: ApiServer) -> None:
    url = live_server.base_url
    alice = {"Authorization": f"Bearer {live_server.keys.user}"}
    mine = new_message_id("alice", SECRET)
    bobs = new_message_id("bob", SECRET)
    forged = mine[:-1] + ("0" if mine[-1] != "0" else "1")
    before = httpx.get(url + "/metrics").text
    posts = [
        ({"message_id": mine, "thumbs": "up"}, 202),
        ({"message_id": mine, "thumbs": "up"}, 202),  # the same again: a duplicate
        ({"message_id": bobs, "thumbs": "up"}, 403),
        ({"message_id": forged, "thumbs": "up"}, 404),
        ({"message_id": "msg_nope", "thumbs": "up"}, 422),
    ]
    for body, status in posts:
        r = httpx.post(url + "/v1/feedback/ratings", json=body, headers=alice, timeout=30)
        assert r.status_code == status, r.text
    after = httpx.get(url + "/metrics").text

    def delta(name: str, **labels: str) -> float:
        key = tuple(sorted(labels.items()))
        return samples(after, name).get(key, 0.0) - samples(before, name).get(key, 0.0)

    accepted = "ratchet_feedback_accepted_total"
    assert delta(accepted, kind="rating", duplicate="false") == 1
    assert delta(accepted, kind="rating", duplicate="true") == 1
    refused = "ratchet_feedback_refused_total"
    for reason in ("foreign_message_id", "unknown_message_id", "malformed_message_id"):
        assert delta(refused, reason=reason) == 1, reason
    assert delta(refused, reason="feedback_rate_limited") == 0
    assert "ratchet_feedback_spool_depth" in after
