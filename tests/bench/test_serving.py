"""Chat serving speed: tokens/s and time to first token at concurrency 1, 4 and 16.

Runs on ``models/base`` (SmolLM2-135M-Instruct) when it exists, else on the
tiny test model (``RATCHET_BENCH_MODEL=tiny`` or ``base`` forces one). The
same prompts, greedy, the same ``max_tokens``, one path after the other so
they do not share the cores:

- ``engine``: the bare vLLM engine in process (``VLLMEngineBackend.generate``)
  with the default settings: the machine's dtype (bf16 where the CPU has bf16
  instructions) and compiled;
- ``api``: the real FastAPI app (auth, Postgres, Kafka events) on that engine,
  over HTTP, streamed (``include_usage`` on) by a lean client
  (``tests.bench.loadgen``: asyncio streams, one JSON parse per chunk), so the
  client takes little of the CPU the server needs; ``api+openai`` is the same
  with the official ``openai`` client, which costs the client several times
  more CPU per token;
- ``engine fp32``: the engine as it ran before (fp32, eager), the baseline of
  the gain;
- ``transformers``: the fallback backend (plain ``generate``, one at a time),
  in the machine's dtype and in fp32.

Ratios per concurrency: engine / transformers (targets 1.2 at 1, 10 at 16),
API / engine (target 0.95), engine / engine fp32 (the gain). Also printed: the
engines' start-up times, the memory bandwidth (a numpy copy) and single-stream
tokens/s as a fraction of its limit, bandwidth / weights bytes per token.
The API's load generator runs in a separate (spawned) process, so it does not
share the server's interpreter lock; on two cores it still shares the CPUs."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from serving.backends.base import Backend, SamplingOptions
from serving.backends.machine import engine_dtype
from serving.backends.transformers_backend import TransformersBackend
from serving.backends.vllm_engine import VLLMEngineBackend
from serving.settings import ServingSettings
from tests.bench.bandwidth import decode_limit_tokens_per_s, memory_bandwidth
from tests.bench.conftest import REPO, percentile, print_table, ratio, save_json
from tests.bench.loadgen import stream_chat
from tests.servers import new_database, start_api

pytestmark = pytest.mark.bench

CONCURRENCY = (1, 4, 16)
MAX_TOKENS = 48
PROMPTS = [
    "How many days of paid leave do employees get?",
    "When are expense reports due?",
    "What time does the office open?",
    "How do I reset my password?",
    "What is Ratchet?",
    "Summarise the travel policy in one sentence.",
    "Who do I call when production is down at night?",
    "How do I set up the VPN on a new laptop?",
    "Can I work from home on Fridays?",
    "What does the on-call rotation look like?",
    "Which benefits start on the first day?",
    "How are releases approved?",
    "Tell me about the company in two lines.",
    "What should I do in my first week?",
    "Is there a budget for conference travel?",
    "Where do I report a security incident?",
]


def requests_for(concurrency: int) -> int:
    """At least 8 requests, and two full waves at high concurrency."""
    return max(8, 2 * concurrency)


@dataclass
class Sample:
    ttft_s: float
    latency_s: float
    tokens: int


@dataclass
class LoadRun:
    path: str
    concurrency: int
    wall_s: float
    samples: list[Sample]

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.samples)

    @property
    def tokens_per_s(self) -> float:
        return ratio(self.tokens, self.wall_s)

    def ttft_ms(self, q: float) -> float:
        return percentile([s.ttft_s * 1000 for s in self.samples], q)

    def latency_ms(self, q: float) -> float:
        return percentile([s.latency_s * 1000 for s in self.samples], q)

    def record(self) -> dict[str, float | int | str]:
        return {
            "path": self.path,
            "concurrency": self.concurrency,
            "requests": len(self.samples),
            "tokens": self.tokens,
            "wall_s": self.wall_s,
            "tokens_per_s": self.tokens_per_s,
            "ttft_p50_ms": self.ttft_ms(50),
            "ttft_p99_ms": self.ttft_ms(99),
            "latency_p50_ms": self.latency_ms(50),
        }


OneRequest = Callable[[int], Awaitable[Sample]]


async def load(path: str, one: OneRequest, concurrency: int, requests: int) -> LoadRun:
    """``requests`` requests, ``concurrency`` of them in flight at any time."""
    todo = iter(range(requests))
    samples: list[Sample] = []

    async def worker() -> None:
        for i in todo:  # the workers share one iterator
            samples.append(await one(i))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadRun(path, concurrency, time.perf_counter() - started, samples)


async def sweep(path: str, one: OneRequest) -> list[LoadRun]:
    await load(path, one, 4, 4)  # warm-up
    return [await load(path, one, c, requests_for(c)) for c in CONCURRENCY]


def messages_for(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]


def backend_request(backend: Backend) -> OneRequest:
    options = SamplingOptions(max_tokens=MAX_TOKENS, temperature=0.0)

    async def one(i: int) -> Sample:
        started = time.perf_counter()
        first: float | None = None
        tokens = 0
        generation = await backend.generate(messages_for(i), options, f"bench-{uuid.uuid4().hex}")
        async for deltas in generation.deltas:
            for d in deltas:
                if first is None and (d.token_ids or d.text):
                    first = time.perf_counter()
                tokens += len(d.token_ids)
        done = time.perf_counter()
        return Sample((first or done) - started, done - started, tokens)

    return one


async def bench_backend(path: str, backend: Backend) -> tuple[list[LoadRun], float]:
    """The sweep on ``backend``, and how long it took to start."""
    started = time.perf_counter()
    await backend.start()
    start_s = time.perf_counter() - started
    try:
        return await sweep(path, backend_request(backend)), start_s
    finally:
        await backend.shutdown()


def api_request(client: openai.AsyncOpenAI) -> OneRequest:
    async def one(i: int) -> Sample:
        started = time.perf_counter()
        first: float | None = None
        tokens = 0
        stream = await client.chat.completions.create(  # type: ignore[call-overload]
            model="base",
            messages=messages_for(i),
            max_tokens=MAX_TOKENS,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter()
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        done = time.perf_counter()
        return Sample((first or done) - started, done - started, tokens)

    return one


def lean_api_request(base_url: str, api_key: str) -> OneRequest:
    async def one(i: int) -> Sample:
        body = {"model": "base", "messages": messages_for(i), "max_tokens": MAX_TOKENS}
        ttft, latency, tokens = await stream_chat(base_url, api_key, {**body, "temperature": 0})
        return Sample(ttft, latency, tokens)

    return one


async def bench_api(base_url: str, api_key: str) -> list[LoadRun]:
    lean = await sweep("api", lean_api_request(base_url, api_key))
    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key=api_key, timeout=300)
    try:
        top = CONCURRENCY[-1]
        with_openai = await load("api+openai", api_request(client), top, requests_for(top))
    finally:
        await client.close()
    return [*lean, with_openai]


def api_sweep(base_url: str, api_key: str) -> list[LoadRun]:
    """Entry point of the load-generator process."""
    return asyncio.run(bench_api(base_url, api_key))


@pytest.fixture(scope="session")
def serving_model(tiny_model_dir: Path) -> Path:
    """models/base when it exists (or RATCHET_BENCH_MODEL=base), else the tiny model."""
    choice = os.environ.get("RATCHET_BENCH_MODEL")
    base = REPO / "models" / "base"
    if choice == "tiny" or (choice is None and not (base / "config.json").is_file()):
        return tiny_model_dir
    if not (base / "config.json").is_file():
        pytest.skip("models/base is missing: run `ratchet model bootstrap` first")
    return base


def run_api(settings: ServingSettings) -> tuple[list[LoadRun], LoadRun, float]:
    """The API's sweep (lean client, then the openai client at the top concurrency)
    and how long the API took to start (its engine's start-up)."""
    started = time.perf_counter()
    server = start_api(settings, timeout=1800)
    start_s = time.perf_counter() - started
    try:
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as clients:
            *api, api_openai = clients.submit(api_sweep, server.base_url, server.keys.user).result(
                timeout=1800
            )
    finally:
        server.stop()
    return api, api_openai, start_s


@pytest.mark.timeout(3600)  # five phases on models/base: about 20 minutes on two busy cores
def test_serving_throughput_and_ttft(
    pg_cluster,  # type: ignore[no-untyped-def]
    template_db: str,
    kafka_bootstrap: str,
    serving_model: Path,
    tmp_path: Path,
) -> None:
    model = serving_model
    chosen = ServingSettings(
        database_url=new_database(pg_cluster, template_db),
        kafka_bootstrap_servers=kafka_bootstrap,
        home=REPO / ".ratchet",  # the compile cache persists across bench runs, as in serving
        model=model,
        backend="vllm",
        max_model_len=512,
        dtype="machine",
        enforce_eager=None,  # the default: compiled (tests/conftest.py sets eager for tests)
        default_max_tokens=MAX_TOKENS,
        rate_limit_per_minute=60000,
        rate_limit_burst=1000,
        message_id_secret="bench-secret",
    )
    fp32 = chosen.model_copy(update={"dtype": "float32", "enforce_eager": True})
    dtype = engine_dtype(chosen.dtype)

    # One phase at a time: each engine is shut down before the next one starts.
    engine, engine_start_s = asyncio.run(
        bench_backend("engine", VLLMEngineBackend(chosen, path=model, version="base"))
    )
    api, api_openai, api_start_s = run_api(chosen)
    old, old_start_s = asyncio.run(
        bench_backend("engine fp32", VLLMEngineBackend(fp32, path=model, version="base"))
    )
    hf, _ = asyncio.run(
        bench_backend("transformers", TransformersBackend(chosen, path=model, version="base"))
    )
    hf32, _ = asyncio.run(
        bench_backend("transformers fp32", TransformersBackend(fp32, path=model, version="base"))
    )
    runs = [*engine, *api, api_openai, *old, *hf, *hf32]
    for run in runs:  # sanity, not speed: every request finished and produced tokens
        assert len(run.samples) == requests_for(run.concurrency)
        assert run.tokens > 0, run.path

    print()
    print_table(
        f"Chat serving: {model.name}, greedy, max_tokens {MAX_TOKENS}; engine, api and "
        f"transformers in {dtype} (engine compiled); engine fp32 eager = the old default",
        ["path", "conc.", "requests", "tokens", "wall s", "tok/s", "TTFT p50 ms",
         "TTFT p99 ms", "latency p50 ms"],
        [
            [r.path, r.concurrency, len(r.samples), r.tokens, r.wall_s, r.tokens_per_s,
             r.ttft_ms(50), r.ttft_ms(99), r.latency_ms(50)]
            for r in runs
        ],
    )  # fmt: skip
    ratios = [
        {
            "concurrency": e.concurrency,
            "engine_over_transformers": ratio(e.tokens_per_s, h.tokens_per_s),
            "engine_over_transformers_fp32": ratio(o.tokens_per_s, h32.tokens_per_s),
            "api_over_engine": ratio(a.tokens_per_s, e.tokens_per_s),
            "engine_over_engine_fp32_eager": ratio(e.tokens_per_s, o.tokens_per_s),
            "api_minus_engine_ttft_p50_ms": a.ttft_ms(50) - e.ttft_ms(50),
        }
        for e, a, o, h, h32 in zip(engine, api, old, hf, hf32, strict=True)
    ]
    print_table(
        f"Ratios of tokens/s (targets: engine/transformers >= 1.2 at 1 and >= 10 at 16; "
        f"API/engine >= 0.95); {dtype} unless marked",
        ["conc.", "engine/transformers", "both fp32", "API/engine", "engine/engine fp32 eager",
         "TTFT p50 API-engine ms"],
        [list(r.values()) for r in ratios],
    )  # fmt: skip
    openai_over_engine = ratio(api_openai.tokens_per_s, engine[-1].tokens_per_s)
    print(
        f"with the openai client instead (concurrency {api_openai.concurrency}): "
        f"API/engine {openai_over_engine:.2f}; the difference is the client's CPU"
    )
    starts = {"engine": engine_start_s, "api": api_start_s, "engine_fp32_eager": old_start_s}
    print(
        "start-up s: engine {engine:.1f} (compiled; the first start on a machine compiles), "
        "API {api:.1f} (compiled, cache from the first), engine fp32 eager "
        "{engine_fp32_eager:.1f}".format(**starts)
    )
    bandwidth = memory_bandwidth()
    limit = decode_limit_tokens_per_s(model, dtype, bandwidth)
    single = engine[0].tokens_per_s
    print(
        f"memory bandwidth {bandwidth / 1e9:.1f} GB/s (numpy copy); decode limit at one stream "
        f"{limit:.1f} tok/s ({dtype} weights); the engine reaches {single:.1f} = "
        f"{ratio(single, limit):.2f} of it"
    )
    save_json(
        "serving",
        {
            "model": str(model),
            "dtype": dtype,
            "max_tokens": MAX_TOKENS,
            "runs": [r.record() for r in runs],
            "ratios": ratios,
            "api_openai_client_over_engine_tokens_per_s": openai_over_engine,
            "start_s": starts,
            "memory_bandwidth_bytes_per_s": bandwidth,
            "single_stream_decode_limit_tokens_per_s": limit,
            "single_stream_fraction_of_limit": ratio(single, limit),
        },
    )
