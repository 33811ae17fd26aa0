"""Knowledge-bot retrieval: what grounding adds to a chat request at 10,000 chunks.

The knowledge base lives in Postgres like in production: the sample handbook
is ingested for real (embedded with all-MiniLM-L6-v2), and filler sources
bring it to 10,000 chunks. Filler chunks reuse the handbook's texts with
random unit vectors (embedding 10k chunks would dominate the run; the search
costs the same). The in-process ``MatrixIndex`` is built with ``load_matrix``.

Measured per golden question: embedding the query, the matrix search, and
``KnowledgeBase.retrieve`` + the grounded prompt (what ``ChatService`` adds);
the baseline is a plain chat request (transformers backend, greedy, short
reply) measured in the same run, and the same request grounded end to end.
The issue's target: < 50 ms p50 added at 10k chunks."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg
import pytest
import yaml

from feedback.db import open_pool
from serving.backends.base import SamplingOptions
from serving.backends.transformers_backend import TransformersBackend
from serving.chat.grounding import grounded_messages
from serving.kb import store
from serving.kb.embeddings import Embedder
from serving.kb.index import MatrixIndex
from serving.kb.ingest import Ingestor
from serving.kb.retriever import KnowledgeBase
from serving.kb.settings import KBSettings
from serving.settings import ServingSettings
from tests.bench.conftest import REPO, on_base_model, percentile, print_table, ratio, save_json

pytestmark = pytest.mark.bench

SAMPLE_KB = REPO / "infra" / "demo" / "kb"
CHUNKS = 10_000
FILLER_PER_SOURCE = 500
K = 4  # ServingSettings.retrieval_k's default
# The tiny model's byte-level tokenizer (512 tokens) needs ~2,200 tokens for 4 chunks,
# more than its 2,048-token context: its grounded requests carry 2 chunks.
K_CHAT = K if on_base_model() else 2
RETRIEVALS = 200
CHAT_REQUESTS = 24
REPLY_TOKENS = 16
TARGET_MS = 50.0


def fill_to(conn: psycopg.Connection, total: int, dim: int, *, seed: int = 0) -> int:
    """Add filler sources until the knowledge base holds ``total`` chunks."""
    texts = [r[0] for r in conn.execute("SELECT text FROM kb_chunks ORDER BY id")]
    have = len(texts)
    rng = np.random.default_rng(seed)
    source = 0
    while have < total:
        n = min(FILLER_PER_SOURCE, total - have)
        vectors = rng.standard_normal((n, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        chunks = [
            store.NewChunk(text=texts[(have + i) % len(texts)], embedding=vectors[i])
            for i in range(n)
        ]
        store.replace_source(
            conn,
            location=f"bench://filler/{source}",
            path=f"filler/{source}.md",
            title=f"Filler {source}",
            kind="markdown",
            sha256=hashlib.sha256(str(source).encode()).hexdigest(),
            size=sum(len(c.text) for c in chunks),
            embedding_model="random",
            chunking="filler",
            chunks=chunks,
        )
        have += n
        source += 1
    return have


def ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


async def chat_request(backend: TransformersBackend, messages: list[dict[str, str]]) -> int:
    options = SamplingOptions(max_tokens=REPLY_TOKENS, temperature=0.0)
    generation = await backend.generate(messages, options, f"bench-{uuid.uuid4().hex}")
    async for _ in generation.deltas:
        pass
    return generation.prompt_tokens


async def chat_phase(
    kb: KnowledgeBase, model: Path, questions: list[str]
) -> tuple[list[float], list[float], list[int], list[int]]:
    """Plain and grounded requests, interleaved so drift in load hits both alike."""
    settings = ServingSettings(model=model, max_model_len=2048, default_max_tokens=REPLY_TOKENS)
    backend = TransformersBackend(settings, path=model, version="base")
    await backend.start()
    plain_ms: list[float] = []
    grounded_ms: list[float] = []
    plain_tokens: list[int] = []
    grounded_tokens: list[int] = []
    try:
        await chat_request(backend, [{"role": "user", "content": questions[0]}])  # warm-up
        for i in range(CHAT_REQUESTS):
            messages = [{"role": "user", "content": questions[i % len(questions)]}]
            started = time.perf_counter()
            plain_tokens.append(await chat_request(backend, messages))
            plain_ms.append(ms(started))
            started = time.perf_counter()
            chunks = await kb.retrieve(messages[0]["content"], K_CHAT)
            grounded_tokens.append(await chat_request(backend, grounded_messages(messages, chunks)))
            grounded_ms.append(ms(started))
    finally:
        await backend.shutdown()
    return plain_ms, grounded_ms, plain_tokens, grounded_tokens


def test_retrieval_overhead_at_10k_chunks(database_url: str, bench_model: Path) -> None:
    embedder = Embedder()
    kb_settings = KBSettings(database_url=database_url)
    started = time.perf_counter()
    with psycopg.connect(database_url) as conn:
        report = Ingestor(conn, embedder, kb_settings).ingest([SAMPLE_KB], progress=False)
        assert not report.failed, report.failed
        real = len(conn.execute("SELECT id FROM kb_chunks").fetchall())
        total = fill_to(conn, CHUNKS, embedder.dim)
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    with psycopg.connect(database_url) as conn:
        index = MatrixIndex(store.load_matrix(conn))
    load_ms = ms(started)
    assert len(index) == total == CHUNKS

    questions = [q["question"] for q in yaml.safe_load((SAMPLE_KB / "questions.yaml").read_text())]
    embed_ms: list[float] = []
    search_ms: list[float] = []
    retrieve_ms: list[float] = []
    found: dict[str, int] = {}  # chunks retrieved per question
    pool = open_pool(database_url, max_size=2)
    try:
        kb = KnowledgeBase(pool, embedder, kb_settings)
        assert kb.size == CHUNKS and kb.backend == "numpy"

        async def retrievals() -> None:
            """Each step in turn per question, so drift in the machine's load hits all alike."""
            for i in range(RETRIEVALS + 5):  # the first 5 warm up
                q = questions[i % len(questions)]
                started = time.perf_counter()
                vector = embedder.embed([q])[0]
                embed = ms(started)
                started = time.perf_counter()
                index.search(vector, K, kb_settings.min_score)
                search = ms(started)
                started = time.perf_counter()
                chunks = await kb.retrieve(q, K)
                grounded_messages([{"role": "user", "content": q}], chunks)
                retrieve = ms(started)
                assert len(chunks) <= K, q
                found[q] = len(chunks)
                if i >= 5:
                    embed_ms.append(embed)
                    search_ms.append(search)
                    retrieve_ms.append(retrieve)

        asyncio.run(retrievals())
        # Some of the 124 questions match no chunk above `min_score` (off-topic -> nothing):
        # at least the recall test's 90% must find chunks (tests/serving/kb/test_recall.py).
        empty = sorted(q for q, n in found.items() if n == 0)
        assert len(empty) <= 0.1 * len(found), empty
        plain_ms, grounded_ms, plain_tok, grounded_tok = asyncio.run(
            chat_phase(kb, bench_model, questions)
        )
    finally:
        pool.close()

    added_p50 = percentile(retrieve_ms, 50)
    plain_p50 = percentile(plain_ms, 50)
    grounded_p50 = percentile(grounded_ms, 50)
    rows = [
        ("embed query (MiniLM)", embed_ms),
        (f"MatrixIndex.search over {CHUNKS:,}", search_ms),
        ("retrieve + grounded prompt (added)", retrieve_ms),
        (f"chat request, no retrieval ({REPLY_TOKENS} tok)", plain_ms),
        (f"chat request with retrieval (k={K_CHAT})", grounded_ms),
    ]
    print()
    print(
        f"knowledge base: {real} handbook chunks + {CHUNKS - real} filler; "
        f"built in {build_s:.1f} s, load_matrix {load_ms:.0f} ms; "
        f"prompt tokens p50 {percentile(plain_tok, 50):.0f} plain, "
        f"{percentile(grounded_tok, 50):.0f} grounded; {len(found) - len(empty)} of "
        f"{len(found)} questions retrieved chunks above min_score {kb_settings.min_score}"
    )
    print_table(
        f"Retrieval at {CHUNKS:,} chunks (k={K}), model {bench_model.name}",
        ["step", "n", "p50 ms", "p99 ms", "mean ms"],
        [
            (name, len(v), percentile(v, 50), percentile(v, 99), float(np.mean(v)))
            for name, v in rows
        ],
    )
    summary = {
        "added_p50_ms": added_p50,
        "added_p99_ms": percentile(retrieve_ms, 99),
        "target_p50_ms": TARGET_MS,
        "added_over_target": ratio(added_p50, TARGET_MS),
        "added_over_plain_request_p50": ratio(added_p50, plain_p50),
        "end_to_end_added_p50_ms": grounded_p50 - plain_p50,
        "grounded_over_plain_request_p50": ratio(grounded_p50, plain_p50),
    }
    print_table(
        "Retrieval overhead vs a plain request (same run)",
        ["measure", "value"],
        [
            ("added by retrieval, p50 ms (target < 50)", added_p50),
            ("added by retrieval, p99 ms", summary["added_p99_ms"]),
            ("added p50 / target", summary["added_over_target"]),
            ("added p50 / plain request p50", summary["added_over_plain_request_p50"]),
            ("end to end: grounded - plain, p50 ms", summary["end_to_end_added_p50_ms"]),
            ("end to end: grounded / plain, p50", summary["grounded_over_plain_request_p50"]),
        ],
    )
    save_json(
        "retrieval",
        {
            "model": str(bench_model),
            "chunks": CHUNKS,
            "handbook_chunks": real,
            "k": K,
            "k_chat": K_CHAT,
            "build_s": build_s,
            "load_matrix_ms": load_ms,
            "steps": {
                name: {
                    "n": len(v),
                    "p50_ms": percentile(v, 50),
                    "p99_ms": percentile(v, 99),
                    "mean_ms": float(np.mean(v)),
                }
                for name, v in rows
            },
            "prompt_tokens_p50": {
                "plain": percentile(plain_tok, 50),
                "grounded": percentile(grounded_tok, 50),
            },
            "summary": summary,
        },
    )
