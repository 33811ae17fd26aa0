"""The canary on the vLLM engine: two engines in one API process (production and
canary), an A/B request answered by both, streamed and not. The transformers
tests (``test_canary.py``) cover the registry's moves; this one covers the
engine the product serves with."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.serving.test_canary import ASK, CanaryServer, canary_server, ids_of, wait_until
from training import registry


@pytest.fixture(scope="module")
def vllm_server(
    pg_cluster,  # type: ignore[no-untyped-def]
    template_db,
    kafka_bootstrap,
    tiny_model_dir,
    tmp_path_factory,
) -> Iterator[CanaryServer]:
    root = tmp_path_factory.mktemp("canary-vllm")
    with canary_server(pg_cluster, template_db, tiny_model_dir, root, kafka_bootstrap) as running:
        assert running.settings.backend == "vllm"
        yield running


def test_two_vllm_engines_answer_an_ab_request(vllm_server: CanaryServer) -> None:
    server = vllm_server
    path = server.root / "v0002-weights"
    shutil.copytree(server.tiny, path)
    candidate = server.add_candidate(path)
    server.registry(lambda c: registry.set_canary(c, candidate, actor="olga", reason="A/B"))
    wait_until(lambda: server.models.canary_version == candidate, "the canary engine is up", 300)

    resp = server.ab()
    assert resp.model_extra["ab"] == "canary"
    assert all(c.finish_reason in ("stop", "length") for c in resp.choices)
    streamed = list(
        server.client().chat.completions.create(
            model="ratchet", messages=ASK, max_tokens=6, stream=True, extra_body={"ab": True}
        )
    )
    stream_ids = [c.model_extra["message_id"] for c in streamed[0].choices]
    for ids in (ids_of(resp), stream_ids):
        assert sorted(server.versions(ids).values()) == ["v0001", candidate]
    # Clearing frees the canary's engine; production keeps answering.
    server.registry(lambda c: registry.clear_canary(c, actor="olga", reason="done"))
    wait_until(lambda: server.models.canary_version is None, "the canary engine is freed")
    assert server.ab().model_extra["ab"] == "drafts"
