"""The canary on the vLLM engine: two engines in one API process (production and
canary), an A/B request answered by both, streamed and not. The transformers
tests (``test_canary.py``) cover the registry's moves; this one covers the
engine the product serves with."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import ApiServer, registry_server, wait_until
from tests.serving.test_canary import ASK, ab, check_choices, greedy_by_version, ids_of
from training import registry


@pytest.fixture(scope="module")
def vllm_server(
    pg_cluster,  # type: ignore[no-untyped-def]
    template_db,
    kafka_bootstrap,
    tiny_model_dir,
    tmp_path_factory,
) -> Iterator[ApiServer]:
    root = tmp_path_factory.mktemp("canary-vllm")
    with registry_server(
        pg_cluster, template_db, tiny_model_dir, root, kafka_bootstrap, consume=True
    ) as running:
        assert running.settings.backend == "vllm"
        yield running


def test_two_vllm_engines_answer_an_ab_request(
    vllm_server: ApiServer, tiny_model_b_dir: Path
) -> None:
    server = vllm_server
    path = server.root / "v0002-weights"
    shutil.copytree(tiny_model_b_dir, path)
    candidate = server.add_candidate(path)
    server.in_database(lambda c: registry.set_canary(c, candidate, actor="olga", reason="A/B"))
    wait_until(lambda: server.models.canary_version == candidate, "the canary engine is up", 300)

    resp = ab(server, temperature=0)
    assert resp.model_extra["ab"] == "canary"
    assert all(c.finish_reason in ("stop", "length") for c in resp.choices)
    texts = [c.message.content for c in resp.choices]
    check_choices(server, ids_of(resp), texts, greedy_by_version(server, candidate, 4))
    streamed = list(
        server.openai_client().chat.completions.create(
            model="ratchet",
            messages=ASK,
            max_tokens=6,
            temperature=0,
            stream=True,
            extra_body={"ab": True},
        )
    )
    stream_ids = [c.model_extra["message_id"] for c in streamed[0].choices]
    streamed_texts = ["", ""]
    for c in streamed[1:]:
        streamed_texts[c.choices[0].index] += c.choices[0].delta.content or ""
    check_choices(server, stream_ids, streamed_texts, greedy_by_version(server, candidate, 6))
    for ids in (ids_of(resp), stream_ids):
        assert sorted(server.stored_versions(ids).values()) == ["v0001", candidate]
    # Clearing frees the canary's engine; production keeps answering.
    server.in_database(lambda c: registry.clear_canary(c, actor="olga", reason="done"))
    wait_until(lambda: server.models.canary_version is None, "the canary engine is freed")
    assert ab(server).model_extra["ab"] == "drafts"
