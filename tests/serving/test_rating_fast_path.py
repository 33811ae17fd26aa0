"""The single-rating fast path (``serving.feedback.fast_path``) answers as the
FastAPI route does. A ``+json`` content type is JSON to FastAPI but not taken by
the fast path, so each request below is sent both ways and the answers compared."""

from __future__ import annotations

from collections import Counter

import httpx

from feedback.message_ids import new_message_id
from tests.feedback.test_operator_metrics import samples
from tests.servers import ApiServer

SECRET = "test-secret"
PATH = "/v1/feedback/ratings"
FAST = "application/json"
FASTAPI = "application/vnd.ratchet+json"  # JSON to FastAPI; the fast path hands it on


def _post(url: str, body: bytes, content_type: str, key: str | None) -> httpx.Response:
    headers = {"Content-Type": content_type}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(url + PATH, content=body, headers=headers, timeout=30)


def _delta(before: str, after: str, name: str, **labels: str) -> float:
    k = tuple(sorted(labels.items()))
    return samples(after, name).get(k, 0.0) - samples(before, name).get(k, 0.0)


def _answer(r: httpx.Response) -> tuple[int, object, str | None, str | None]:
    return (
        r.status_code,
        r.json(),
        r.headers.get("www-authenticate"),
        r.headers.get("content-type"),
    )


def test_fast_path_errors_match_the_fastapi_route(live_server: ApiServer) -> None:
    url, key = live_server.base_url, live_server.keys.user
    mine = new_message_id("alice", SECRET)
    bobs = new_message_id("bob", SECRET)
    forged = mine[:-1] + ("0" if mine[-1] != "0" else "1")
    cases = [
        (b'{"message_id": "%s", "thumbs": "up"}' % bobs.encode(), key),  # 403
        (b'{"message_id": "%s", "thumbs": "up"}' % forged.encode(), key),  # 404
        (b'{"message_id": "msg_nope", "stars": 2}', key),  # 422 malformed id
        (b'{"message_id": "%s", "thumbs": "up"}' % mine.encode(), None),  # 401 no key
        (b'{"message_id": "%s", "thumbs": "up"}' % mine.encode(), "rk_not-a-key"),  # 401
        (b'{"message_id": "%s", "thumbs": "up", "stars": 3}' % mine.encode(), key),  # 422
        (b'{"message_id": "%s", "thumbs": "up"' % mine.encode(), key),  # 400 invalid JSON
        (b"[1, 2]", key),  # 422
    ]
    codes: Counter[str] = Counter()
    before = httpx.get(url + "/metrics").text
    for body, k in cases:
        fast, slow = _post(url, body, FAST, k), _post(url, body, FASTAPI, k)
        assert fast.status_code >= 400, (body, fast.text)
        assert _answer(fast) == _answer(slow), (body, fast.text, slow.text)
        codes[str(fast.status_code)] += 2
    after = httpx.get(url + "/metrics").text
    # each request counted once, on the route, though a refusal met on the fast
    # path is raised again from the route (the key and the service saw it once)
    for code, n in codes.items():
        assert _delta(before, after, "ratchet_http_requests_total", route=PATH, code=code) == n
        assert _delta(before, after, "ratchet_http_errors_total", code=code) == n
    assert _delta(before, after, "ratchet_feedback_refused_total", reason="foreign_message_id") == 2
    assert _delta(before, after, "ratchet_feedback_refused_total", reason="unknown_message_id") == 2


def test_fast_path_accepts_as_the_fastapi_route(live_server: ApiServer) -> None:
    url, key = live_server.base_url, live_server.keys.user
    before = httpx.get(url + "/metrics").text
    body = b'{"message_id": "%s", "stars": 4, "tags": [" a "]}' % (
        new_message_id("alice", SECRET).encode()
    )
    first = _post(url, body, FAST + "; charset=utf-8", key)
    assert first.status_code == 202, first.text
    assert first.headers["content-type"] == "application/json"
    assert set(first.json()) == {"event_id", "status"}
    # the same rating again, through FastAPI: a duplicate of the first (same gate,
    # same canonical content), answered with the first event's id
    again = _post(url, body, FASTAPI, key)
    assert _answer(again) == _answer(first)
    after = httpx.get(url + "/metrics").text
    assert _delta(before, after, "ratchet_http_requests_total", route=PATH, code="202") == 2
    for duplicate in ("false", "true"):
        n = _delta(
            before, after, "ratchet_feedback_accepted_total", kind="rating", duplicate=duplicate
        )
        assert n == 1, duplicate
