"""Auth (401), rate limits (429 + Retry-After), roles (403) and bad input
(400/422), each with its exact status code and the OpenAI error body."""

from __future__ import annotations

from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI

from serving.auth import User
from serving.deps import CurrentUser, require_role
from tests.fixtures.clock import ManualClock
from tests.servers import new_database, running_api, serving_settings

HELLO = [{"role": "user", "content": "hello"}]


def post(live_server, body, key="user", headers=None, raw=None):  # type: ignore[no-untyped-def]
    h = {} if key is None else {"Authorization": f"Bearer {getattr(live_server.keys, key)}"}
    h.update(headers or {})
    url = live_server.base_url + "/v1/chat/completions"
    if raw is not None:
        return httpx.post(
            url, content=raw, headers={**h, "Content-Type": "application/json"}, timeout=60
        )
    return httpx.post(url, json=body, headers=h, timeout=60)


def assert_error(resp: httpx.Response, status: int, type_: str, code: str | None = None) -> str:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "code"}
    assert err["type"] == type_
    if code is not None:
        assert err["code"] == code
    assert err["message"]
    return str(err["message"])


def test_missing_invalid_and_malformed_keys_get_401(live_server) -> None:  # type: ignore[no-untyped-def]
    body = {"model": "ratchet", "messages": HELLO}
    r = post(live_server, body, key=None)
    assert_error(r, 401, "authentication_error", "invalid_api_key")
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = post(live_server, body, key=None, headers={"Authorization": "Bearer rk_not-a-real-key"})
    assert_error(r, 401, "authentication_error")
    r = post(live_server, body, key=None, headers={"Authorization": "Basic abc"})
    assert_error(r, 401, "authentication_error")
    r = httpx.get(live_server.base_url + "/v1/models")
    assert_error(r, 401, "authentication_error")


def test_rate_limit_from_settings_gives_429_with_retry_after_and_refills(
    pg_cluster,  # type: ignore[no-untyped-def]
    template_db,
    kafka_bootstrap,
    tiny_model_dir,
    tmp_path,
) -> None:
    """The limits come from the settings (6 a minute, bursts of 2) through build_app,
    and the bucket refills with the (manual) clock, never past the burst."""
    db = new_database(pg_cluster, template_db)
    settings = serving_settings(
        db,
        kafka_bootstrap,
        tmp_path / "home",
        tiny_model_dir,
        backend="transformers",
        rate_limit_per_minute=6,
        rate_limit_burst=2,
    )
    clock = ManualClock()
    with running_api(settings, clock=clock) as server:
        keys = server.keys
        models = server.base_url + "/v1/models"

        def status(key: str) -> httpx.Response:
            return httpx.get(models, headers={"Authorization": f"Bearer {key}"}, timeout=30)

        assert [status(keys.user).status_code for _ in range(2)] == [200, 200]
        r = status(keys.user)
        assert_error(r, 429, "rate_limit_error", "rate_limit_exceeded")
        assert r.headers["Retry-After"] == "10"  # one token every 10 s at 6 a minute
        # Limits are per key: another key still gets through.
        assert status(keys.user2).status_code == 200
        clock.advance(5)
        assert status(keys.user).headers.get("Retry-After") == "5"
        clock.advance(5)
        assert [status(keys.user).status_code for _ in range(2)] == [200, 429]
        clock.advance(600)  # a long pause refills the bucket to the burst, not beyond
        assert [status(keys.user).status_code for _ in range(3)] == [200, 200, 429]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"model": "ratchet", "messages": []}, 400, "at least one message"),
        ({"model": "ratchet"}, 422, "messages"),
        ({"model": "ratchet", "messages": [{"role": "wizard", "content": "hi"}]}, 422, "role"),
        ({"model": "ratchet", "messages": HELLO, "temperature": -0.5}, 422, "temperature"),
        ({"model": "ratchet", "messages": HELLO, "temperature": 3}, 422, "temperature"),
        ({"model": "ratchet", "messages": HELLO, "top_p": 1.5}, 422, "top_p"),
        ({"model": "ratchet", "messages": HELLO, "top_p": 0}, 422, "top_p"),
        ({"model": "ratchet", "messages": HELLO, "max_tokens": 0}, 422, "max_tokens"),
        ({"model": "ratchet", "messages": HELLO, "n": 0}, 422, "n"),
        ({"model": "ratchet", "messages": HELLO, "n": 50}, 400, "n=50"),
        ({"model": "ratchet", "messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, 422, "stop"),
        (
            {"model": "ratchet", "messages": HELLO, "conversation_id": "nope"},
            422,
            "conversation_id",
        ),
        ({"model": "ratchet", "messages": HELLO, "knowledge": True}, 400, "knowledge"),
    ],
)
def test_bad_input_gets_a_clear_4xx(live_server, body, status, fragment) -> None:  # type: ignore[no-untyped-def]
    message = assert_error(post(live_server, body), status, "invalid_request_error")
    assert fragment in message


def test_prompt_longer_than_the_context_window_is_400(live_server) -> None:  # type: ignore[no-untyped-def]
    long = " ".join(["keyword"] * 2000)
    for stream in (False, True):
        body = {
            "model": "ratchet",
            "messages": [{"role": "user", "content": long}],
            "stream": stream,
        }
        message = assert_error(
            post(live_server, body), 400, "invalid_request_error", "context_length_exceeded"
        )
        assert "512" in message


def test_malformed_json_and_bad_conversation_header(live_server) -> None:  # type: ignore[no-untyped-def]
    assert_error(
        post(live_server, None, raw=b"{not json"), 400, "invalid_request_error", "invalid_json"
    )
    r = post(
        live_server,
        {"model": "ratchet", "messages": HELLO},
        headers={"X-Ratchet-Conversation-Id": "not-a-uuid"},
    )
    assert_error(r, 400, "invalid_request_error")
    r = httpx.get(live_server.base_url + "/no/such/route")
    assert_error(r, 404, "not_found_error")


def test_require_role_lets_higher_roles_through_and_forbids_lower(live_server) -> None:  # type: ignore[no-untyped-def]
    """require_role on a route of the real app (as the feedback/KB routers use it)."""
    app: FastAPI = live_server.thread.app
    path = "/_test/operator-only"
    if not any(getattr(r, "path", None) == path for r in app.routes):

        @app.get(path)
        def operator_only(user: Annotated[User, Depends(require_role("operator"))]) -> dict:
            return {"user": user.id, "role": user.role}

        @app.get("/_test/whoami")
        def whoami(user: CurrentUser) -> dict:
            return {"user": user.id, "role": user.role}

    base = live_server.base_url
    keys = live_server.keys
    r = httpx.get(base + path, headers={"Authorization": f"Bearer {keys.user}"})
    assert_error(r, 403, "permission_error")
    r = httpx.get(base + path, headers={"Authorization": f"Bearer {keys.operator}"})
    assert r.status_code == 200 and r.json() == {"user": "olga", "role": "operator"}
    r = httpx.get(base + "/_test/whoami", headers={"Authorization": f"Bearer {keys.user2}"})
    assert r.json() == {"user": "bob", "role": "user"}
