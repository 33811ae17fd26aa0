"""A/B drafts, candidate vs production: with a canary marked in the registry, the
API loads it beside production (transformers backend, tiny models) and answers an
``"ab": true`` request with one choice from each version in random order; each
reply is logged with its own version, the user's pick is a comparison, and the
canary report counts it. Without a canary (never set, cleared, or failed to load)
such a request gets two production drafts, and production never stops serving.

The feedback runs through the real broker and consumer into Postgres."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from infra.local.tansu import Broker, free_port
from tests.conftest import CACHE
from tests.fixtures.tiny_model import greedy_reply
from tests.servers import ApiServer, registry_server, wait_until
from training import registry
from training.canary_report import canary_report

ASK = [{"role": "user", "content": "How many days of paid leave do I get?"}]


def ab(server: ApiServer, *, max_tokens: int = 4, **kw: Any) -> Any:
    """One A/B request as the ``openai`` client sends it (``stream=True``: its chunks)."""
    return server.openai_client().chat.completions.create(
        model="ratchet", messages=ASK, max_tokens=max_tokens, extra_body={"ab": True}, **kw
    )


def ids_of(resp: Any) -> list[str]:
    return [c.model_extra["message_id"] for c in resp.choices]


@pytest.fixture(scope="module")
def server(
    pg_cluster,  # type: ignore[no-untyped-def]
    template_db,
    tiny_model_dir,
    tmp_path_factory,
) -> Iterator[ApiServer]:
    root = tmp_path_factory.mktemp("canary")
    broker = Broker(CACHE / "bin", free_port(), root / "tansu.log")
    broker.start()
    try:
        with registry_server(
            pg_cluster,
            template_db,
            tiny_model_dir,
            root,
            broker.bootstrap,
            consume=True,
            backend="transformers",
        ) as running:
            yield running
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def candidate(server: ApiServer, tiny_model_b_dir: Path) -> str:
    """v0002: the second tiny model (other weights) in a directory of its own, a candidate."""
    path = server.root / "v0002-weights"
    shutil.copytree(tiny_model_b_dir, path)
    return server.add_candidate(path)


def greedy_by_version(server: ApiServer, candidate: str, max_tokens: int) -> dict[str, str]:
    """What each version's weights answer to ``ASK`` with ``temperature: 0``."""
    expected = {
        "v0001": greedy_reply(server.settings.model, ASK, max_tokens),
        candidate: greedy_reply(server.root / "v0002-weights", ASK, max_tokens),
    }
    assert len(set(expected.values())) == 2, "the two versions' weights must tell apart"
    return expected


def check_choices(
    server: ApiServer, ids: list[str], texts: list[str], expected: dict[str, str]
) -> dict[str, str]:
    """Each choice's text is what the weights of the version it was logged under answer."""
    versions = server.stored_versions(ids)
    for message_id, text in zip(ids, texts, strict=True):
        assert text == expected[versions[message_id]], (versions[message_id], text)
    return versions


def test_without_a_canary_an_ab_request_gets_two_production_drafts(
    server: ApiServer, candidate: str
) -> None:
    assert server.models.canary_version is None
    raw = server.openai_client().chat.completions.with_raw_response.create(
        model="ratchet", messages=ASK, max_tokens=4, extra_body={"ab": True}
    )
    resp = raw.parse()
    assert resp.model_extra["ab"] == "drafts"
    assert [c.index for c in resp.choices] == [0, 1]
    ids = ids_of(resp)
    assert len(set(ids)) == 2 and raw.headers["X-Ratchet-Message-Id"] == ids[0]
    assert set(server.stored_versions(ids).values()) == {"v0001"}
    # An A/B request is two choices: any other n is refused before any output.
    bad = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {server.keys.user}"},
        json={"model": "ratchet", "messages": ASK, "ab": True, "n": 3},
        timeout=60,
    )
    assert bad.status_code == 400 and "A/B" in bad.json()["error"]["message"]
    # A plain request is unchanged: one choice, no "ab".
    plain = server.openai_client().chat.completions.create(
        model="ratchet", messages=ASK, max_tokens=4
    )
    assert len(plain.choices) == 1 and plain.model_extra.get("ab") is None


def test_with_a_canary_each_version_answers_one_choice_in_random_order(
    server: ApiServer, candidate: str
) -> None:
    server.in_database(lambda c: registry.set_canary(c, candidate, actor="olga", reason="A/B"))
    wait_until(lambda: server.models.canary_version == candidate, "the canary is loaded")
    assert server.models.version == "v0001"  # production did not move
    expected = greedy_by_version(server, candidate, 4)
    canary_at: list[int] = []
    all_ids: list[str] = []
    for _ in range(16):
        resp = ab(server, temperature=0)
        assert resp.model_extra["ab"] == "canary"
        # The response names production only: the canary's place is not given away.
        assert resp.model_extra["model_version"] == "v0001" == resp.model
        assert [c.index for c in resp.choices] == [0, 1]
        assert all(c.finish_reason in ("stop", "length") for c in resp.choices)
        check_choices(server, ids_of(resp), [c.message.content for c in resp.choices], expected)
        all_ids.extend(ids_of(resp))
    versions = server.stored_versions(all_ids)
    for i in range(0, len(all_ids), 2):
        pair = [versions[all_ids[i]], versions[all_ids[i + 1]]]
        assert sorted(pair) == ["v0001", candidate], pair
        canary_at.append(pair.index(candidate))
    assert set(canary_at) == {0, 1}, f"the canary was always choice {canary_at[0]}"
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    assert f'ratchet_canary_version_served{{version="{candidate}"}} 1.0' in metrics
    assert 'ratchet_ab_requests_total{mode="canary"} 16.0' in metrics
    ready = httpx.get(f"{server.base_url}/readyz", timeout=30).json()
    assert ready["canary_version"] == candidate and ready["model_version"] == "v0001"


def test_a_streamed_ab_request_interleaves_both_versions(server: ApiServer, candidate: str) -> None:
    assert server.models.canary_version == candidate
    chunks = list(ab(server, max_tokens=6, temperature=0, stream=True))
    first = chunks[0]
    assert first.model_extra["ab"] == "canary"
    ids = [c.model_extra["message_id"] for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1] and len(set(ids)) == 2
    finished = {c.choices[0].index: c.choices[0] for c in chunks[1:] if c.choices[0].finish_reason}
    assert sorted(finished) == [0, 1]
    assert [finished[i].model_extra["message_id"] for i in (0, 1)] == ids
    texts = ["", ""]
    for c in chunks[1:]:
        texts[c.choices[0].index] += c.choices[0].delta.content or ""
    versions = check_choices(server, ids, texts, greedy_by_version(server, candidate, 6))
    assert sorted(versions.values()) == ["v0001", candidate]
    with psycopg.connect(server.database_url) as conn:
        stored = dict(conn.execute("SELECT id, reply FROM messages WHERE id = ANY(%s)", (ids,)))
    assert [stored[i] for i in ids] == texts


def test_the_users_picks_become_comparisons_and_the_canary_report_counts_them(
    server: ApiServer, candidate: str
) -> None:
    picks = ["canary", "canary", "canary", "production", "tie"]
    expected_ids: list[str] = []
    for pick in picks:
        resp = ab(server)
        ids = ids_of(resp)
        versions = server.stored_versions(ids)
        canary_letter = "a" if versions[ids[0]] == candidate else "b"
        winner = {"canary": canary_letter, "tie": "tie"}.get(
            pick, "b" if canary_letter == "a" else "a"
        )
        posted = httpx.post(
            f"{server.base_url}/v1/feedback/comparisons",
            headers={"Authorization": f"Bearer {server.keys.user}"},
            json={"message_id_a": ids[0], "message_id_b": ids[1], "winner": winner},
            timeout=30,
        )
        assert posted.status_code == 202, posted.text
        expected_ids.append(ids[0])
    with psycopg.connect(server.database_url, autocommit=True) as conn:
        wait_until(
            lambda: (
                conn.execute(
                    "SELECT count(*) FROM comparisons WHERE message_id_a = ANY(%s)", (expected_ids,)
                ).fetchone()[0]  # type: ignore[index]
                == len(picks)
            ),
            "the comparisons are stored",
            timeout=60,
        )
        report = canary_report(conn)
    assert (report.canary, report.baseline) == (candidate, "v0001")
    assert (report.wins, report.losses, report.ties) == (3, 1, 1)
    assert report.win_rate == pytest.approx(3.5 / 5)


def test_a_canary_that_fails_to_load_leaves_production_serving(
    server: ApiServer, candidate: str
) -> None:
    broken = server.root / f"broken-{uuid.uuid4().hex[:6]}"
    broken.mkdir()
    (broken / "config.json").write_text("{}")  # no weights, no tokenizer
    version = server.add_candidate(broken)
    server.in_database(lambda c: registry.set_canary(c, version, actor="olga"))
    wait_until(lambda: server.models.last_canary_error is not None, "the failure is reported")
    assert server.models.last_canary_error.version == version
    assert server.models.canary_version is None  # the previous canary was freed
    assert server.models.version == "v0001" and server.models.last_error is None
    resp = ab(server)
    assert resp.model_extra["ab"] == "drafts"
    assert set(server.stored_versions(ids_of(resp)).values()) == {"v0001"}
    ready = httpx.get(f"{server.base_url}/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["last_canary_error"]["version"] == version
    assert ready.json()["last_swap_error"] is None
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    assert f'ratchet_canary_load_failures_total{{version="{version}"}} 1.0' in metrics
    assert "ratchet_model_swap_failures_total{" not in metrics
    # Marking a loadable canary again brings A/B back.
    server.in_database(lambda c: registry.set_canary(c, candidate, actor="olga"))
    wait_until(lambda: server.models.canary_version == candidate, "the canary is back")
    assert server.models.last_canary_error is None
    assert ab(server).model_extra["ab"] == "canary"


def test_a_cleared_canary_is_freed_and_ab_falls_back_to_drafts(
    server: ApiServer, candidate: str
) -> None:
    assert server.models.canary_version == candidate
    # A client that hangs up mid-stream gives both leases back, and both replies are logged.
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {server.keys.user}"},
        json={"model": "ratchet", "messages": ASK, "max_tokens": 400, "stream": True, "ab": True},
        timeout=60,
    ) as r:
        first = next(line for line in r.iter_lines() if line.startswith("data: "))
    hung_up = [c["message_id"] for c in json.loads(first[len("data: ") :])["choices"]]
    assert sorted(server.stored_versions(hung_up).values()) == ["v0001", candidate]
    freed_before = [v for v, _ in server.models.retired].count(candidate)
    server.in_database(lambda c: registry.clear_canary(c, actor="olga", reason="enough"))
    wait_until(lambda: server.models.canary_version is None, "the canary is unloaded")
    wait_until(  # well before swap_drain_seconds: no lease was left behind
        lambda: [v for v, _ in server.models.retired].count(candidate) > freed_before,
        "the canary backend is freed",
        timeout=60,
    )
    resp = ab(server)
    assert resp.model_extra["ab"] == "drafts"
    assert set(server.stored_versions(ids_of(resp)).values()) == {"v0001"}


def test_promoting_the_canary_serves_it_without_loading_it_again(
    server: ApiServer, candidate: str
) -> None:
    server.in_database(lambda c: registry.set_canary(c, candidate, actor="olga"))
    wait_until(lambda: server.models.canary_version == candidate, "the canary is loaded")

    async def canary_backend():  # type: ignore[no-untyped-def]
        async with server.models.lease_canary() as backend:
            return backend

    loaded = server.thread.call(canary_backend())
    server.in_database(lambda c: registry.promote(c, candidate, actor="olga", reason="won"))
    wait_until(lambda: server.models.version == candidate, "the canary is production")
    assert server.models.current is loaded
    assert server.models.canary_version is None
    resp = ab(server)
    assert resp.model_extra["ab"] == "drafts" and resp.model_extra["model_version"] == candidate
    assert set(server.stored_versions(ids_of(resp)).values()) == {candidate}
