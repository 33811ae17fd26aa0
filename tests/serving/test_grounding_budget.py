"""Knowledge mode never costs the user an answer: sources that do not fit the
context window are dropped, least relevant first (real vLLM engine, tiny model)."""

from __future__ import annotations

import pytest

from serving.chat.grounding import RetrievedChunk
from serving.chat.protocol import ChatCompletionRequest
from serving.chat.service import ChatService
from serving.errors import PromptTooLong


class LongSources:
    """A retriever whose sources are each about half of the test server's 512-token window."""

    async def retrieve(self, query: str, k: int) -> list[RetrievedChunk]:
        text = " ".join(f"fact{i} about {query}" for i in range(12))
        return [
            RetrievedChunk(f"c{i}", f"doc{i}.md", f"Doc {i}", text, 1.0 - i / 10) for i in range(k)
        ]


def ask(live_server, content: str):  # type: ignore[no-untyped-def]
    state = live_server.state
    chat = ChatService(state.settings, state.models, state.producer, retriever=LongSources())
    request = ChatCompletionRequest.model_validate(
        {
            "model": "ratchet",
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 4,
            "knowledge": True,
        }
    )

    async def run():  # type: ignore[no-untyped-def]
        prep = await chat.prepare(request, user_id="alice")
        return await chat.complete(prep)

    return live_server.thread.call(run())


def test_sources_that_do_not_fit_are_dropped_least_relevant_first(live_server) -> None:  # type: ignore[no-untyped-def]
    reply = ask(live_server, "What is the travel policy?")
    cited = [c["source_path"] for c in reply.citations]
    assert 0 < len(cited) < live_server.settings.retrieval_k
    assert cited == [f"doc{i}.md" for i in range(len(cited))]
    assert reply.choices[0].message.content is not None


def test_a_question_too_long_by_itself_is_still_a_400(live_server) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PromptTooLong):
        ask(live_server, "word " * 5000)
