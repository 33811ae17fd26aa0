"""Packed preference pairs (``training/shared_prompt.py``: the prompt once, both
replies after it) against TRL's two sequences a pair, in the same run: the reward
model (``train_reward_model``: load, train, save, held-out scoring), DPO
(``train_dpo``) and the reward model's scorer (``RewardScorer.model_margins``, as the
held-out accuracy and the gates' win rates read pairs), each with ``pack_pairs`` on
and off, on pairs shaped like the demo's (the grounding system prompt with two
400-character passages of the handbook, the question, the handbook's sentence
against another question's). Two rounds in alternating order, the fastest of each
kept."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from feedback.prompting import grounded_messages
from infra.demo.questions import document_lines, ideal_answer, load_questions
from infra.demo.settings import CHUNK_SIZE, RETRIEVAL_K, DemoSettings
from tests.bench.conftest import on_base_model, print_table, ratio, save_json
from training.dpo import train_dpo
from training.dpo_config import DpoStageConfig
from training.kb_reader import KbChunk
from training.reward import RewardScorer, train_reward_model
from training.reward_config import RewardStageConfig
from training.snapshot import Pair

pytestmark = pytest.mark.bench

PAIRS = 16 if on_base_model() else 32
ROUNDS = 2


def handbook_pairs(n: int) -> list[Pair]:
    """``n`` pairs over the handbook's questions, each grounded in ``RETRIEVAL_K``
    passages of ``CHUNK_SIZE`` characters (the question's document first)."""
    kb = DemoSettings().kb_dir
    questions = load_questions(kb)
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    pairs = []
    for i in range(n):
        question, other = questions[i % len(questions)], questions[(i + 7) % len(questions)]
        passages = [
            KbChunk(q.source, q.source, " ".join(document_lines(kb, q.source))[:CHUNK_SIZE])
            for q in (question, other)[:RETRIEVAL_K]
        ]
        prompt = grounded_messages([{"role": "user", "content": question.question}], passages)
        chosen, rejected = ideal_answer(kb, question), ideal_answer(kb, other)
        pairs.append(Pair(prompt, chosen, rejected, f"conv-{i}", t0 + timedelta(minutes=i)))
    return pairs


def fastest(run: Any, tmp_path: Path, name: str) -> dict[bool, float]:
    """Seconds of ``run(out_dir, pack)``, packed and not, fastest of ``ROUNDS``."""
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for round_ in range(ROUNDS):
        for pack in (True, False) if round_ % 2 == 0 else (False, True):
            started = time.perf_counter()
            run(tmp_path / f"{name}-{pack}-{round_}", pack)
            seconds[pack].append(time.perf_counter() - started)
    return {pack: min(s) for pack, s in seconds.items()}


def test_packed_pairs_against_two_sequences(bench_model: Path, tmp_path: Path) -> None:
    pairs, heldout = handbook_pairs(PAIRS), handbook_pairs(PAIRS + 8)[PAIRS:]

    def reward(out: Path, pack: bool) -> Path:
        config = RewardStageConfig(
            epochs=1, batch_size=8, micro_batch_size=1, max_length=384, pack_pairs=pack
        )
        result = train_reward_model(bench_model, pairs, heldout, out, config, progress=False)
        assert result.heldout_pairs == len(heldout) and result.model_dir.is_dir()
        return result.model_dir

    scored = handbook_pairs(4 * PAIRS)

    def scoring(out: Path, pack: bool) -> None:  # as the held-out accuracy and the gates
        scorer = RewardScorer(trained, batch_size=16, max_length=384, pack_pairs=pack)
        assert len(scorer.model_margins(scored)) == len(scored)

    def dpo(out: Path, pack: bool) -> None:
        config = DpoStageConfig(batch_size=4, max_length=384, pack_pairs=pack)
        assert train_dpo(bench_model, pairs, out, config, progress=False)  # its steps' losses

    trained = reward(tmp_path / "warm-up", True)  # the one-off import and set-up costs
    results = {
        "reward model": fastest(reward, tmp_path, "reward"),
        "DPO": fastest(dpo, tmp_path, "dpo"),
        f"scoring {len(scored)} pairs (load included)": fastest(scoring, tmp_path, "scoring"),
    }
    print()
    print_table(
        f"Packed pairs against two sequences a pair ({PAIRS} pairs, {bench_model.name};"
        f" fastest of {ROUNDS})",
        ["stage", "two sequences s", "packed s", "packed / two sequences"],
        [(name, s[False], s[True], ratio(s[True], s[False])) for name, s in results.items()],
    )
    save_json(
        "packed_pairs",
        {
            "model": str(bench_model),
            "pairs": PAIRS,
            **{
                name: {"two_sequences_s": s[False], "packed_s": s[True]}
                for name, s in results.items()
            },
        },
    )
