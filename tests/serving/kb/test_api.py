"""The knowledge-base API and knowledge-bot chat through a real server: the app's
lifespan opens the knowledge base (RATCHET_KNOWLEDGE_BOT on), answers cite the
retrieved sources, and the inspection endpoints need the operator role.

The model is the tiny random Llama on the vLLM engine (as in production): its
replies are noise, but the prompt, the citations and the wiring are real."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from serving.kb.retriever import KnowledgeBase
from serving.settings import ServingSettings
from tests.servers import ApiServer, running_api


class KBServer(ApiServer):
    def get(self, path: str, key: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.get(self.base_url + path, headers=headers, timeout=60)

    def post(self, path: str, key: str | None, body: dict) -> httpx.Response:  # type: ignore[type-arg]
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.post(self.base_url + path, headers=headers, json=body, timeout=60)


@pytest.fixture(scope="module")
def kb_server(
    sample_kb_url: str,
    kafka_bootstrap: str,
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[KBServer]:
    settings = ServingSettings(
        database_url=sample_kb_url,
        kafka_bootstrap_servers=kafka_bootstrap,
        home=tmp_path_factory.mktemp("kb-serving-home"),
        model=tiny_model_dir,
        backend="vllm",
        max_model_len=2048,
        dtype="float32",
        default_max_tokens=4,
        follow_registry=False,
        knowledge_bot=True,
        retrieval_k=2,
        message_id_secret="test-secret",
    )
    with running_api(settings, kind=KBServer) as server:
        yield server


def test_lifespan_opens_the_knowledge_base(kb_server: KBServer) -> None:
    state = kb_server.thread.app.state.ratchet
    assert isinstance(state.retriever, KnowledgeBase)
    assert state.chat.retriever is state.retriever
    assert state.retriever.size > 0


def test_knowledge_bot_answer_cites_the_source(kb_server: KBServer) -> None:
    client = OpenAI(base_url=kb_server.base_url + "/v1", api_key=kb_server.keys.user)
    reply = client.chat.completions.create(
        model="ratchet",
        messages=[{"role": "user", "content": "How much is the on-call allowance?"}],
        max_tokens=4,
    )
    citations = reply.model_extra["citations"]
    assert citations, "a knowledge-bot answer must carry citations"
    assert citations[0]["source_path"] == "engineering/on-call.html"
    assert citations[0]["title"] == "On-call rota and paging"
    assert citations[0]["chunk_id"].isdigit()


def test_off_topic_question_gets_no_citations(kb_server: KBServer) -> None:
    client = OpenAI(base_url=kb_server.base_url + "/v1", api_key=kb_server.keys.user)
    reply = client.chat.completions.create(
        model="ratchet",
        messages=[{"role": "user", "content": "What is the capital of Australia?"}],
        max_tokens=4,
    )
    assert reply.model_extra["citations"] == []


def test_plain_users_may_not_inspect_the_knowledge_base(kb_server: KBServer) -> None:
    for response in (
        kb_server.get("/v1/kb/sources", kb_server.keys.user),
        kb_server.post("/v1/kb/search", kb_server.keys.user, {"query": "VPN"}),
    ):
        assert response.status_code == 403
        assert response.json()["error"]["type"] == "permission_error"
    assert kb_server.get("/v1/kb/sources", None).status_code == 401


def test_sources(kb_server: KBServer) -> None:
    response = kb_server.get("/v1/kb/sources", kb_server.keys.operator)
    assert response.status_code == 200
    data = {s["path"]: s for s in response.json()["data"]}
    assert "policies/travel.html" in data and "howto/onboarding.txt" in data
    travel = data["policies/travel.html"]
    assert travel["title"] == "Business travel policy" and travel["kind"] == "html"
    assert travel["chunks"] >= 1 and len(travel["sha256"]) == 64


def test_search(kb_server: KBServer) -> None:
    response = kb_server.post(
        "/v1/kb/search", kb_server.keys.operator, {"query": "Which UDP port does the VPN use?"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["data"][0]["source_path"] == "howto/vpn-setup.md"
    assert any("51820" in hit["text"] for hit in body["data"][:3])
    assert body["index"] == "numpy" and body["chunks_indexed"] > 0
    off = kb_server.post(
        "/v1/kb/search", kb_server.keys.operator, {"query": "Write a haiku about autumn leaves."}
    )
    assert off.json()["data"] == []
    everything = kb_server.post(
        "/v1/kb/search", kb_server.keys.operator, {"query": "haiku", "k": 3, "min_score": -1}
    )
    assert len(everything.json()["data"]) == 3


@pytest.mark.parametrize("body", [{"query": ""}, {"query": "x", "k": 0}, {"k": 3}])
def test_search_rejects_bad_bodies(kb_server: KBServer, body: dict) -> None:  # type: ignore[type-arg]
    response = kb_server.post("/v1/kb/search", kb_server.keys.operator, body)
    assert response.status_code == 422
    assert response.json()["error"]["type"] == "invalid_request_error"
