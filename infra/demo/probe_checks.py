"""What the probes (``infra.demo.probe``, ``infra.demo.ppo_probe``) measure of a tuned
model: the employees' yardstick on the held-out questions, the KL gate's figure and
the golden-regression and safety gates, each against the base."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from rich.console import Console

from infra.demo.employees import Evaluation, Reply
from infra.demo.questions import Question, judge
from ratchet.db import connect
from serving.backends.machine import bind_engine_threads, machine_dtype
from training.base_model import cast_weights
from training.cycle_config import TrainCycleConfig
from training.evaluate import Policy, unique_prompts
from training.gate_results import GateResult
from training.gates import golden_regression, load_thresholds, safety_refusals, sampled_kl_gate
from training.settings import TrainingSettings
from training.snapshot import Snapshot, StoreSource, build_snapshot
from training.suites_io import Grounder, resolve_suite


def held_out_evaluation(
    model_dir: Path, prompts: list[list[dict[str, str]]], questions: list[Question], tokens: int
) -> Evaluation:
    """The yardstick's rows for ``model_dir``: one greedy reply per held-out question,
    from vLLM's engine (as the API serves) in its own process, gone when this returns.
    A tuned model is first saved as the cycle saves a version (``cast_weights`` to
    ``RATCHET_SAVE_DTYPE``, on a copy): the engine, loading fp32 weights in bf16, would
    round them to nearest, and lose much of what SFT changed (RECIPES.md, "Saving in
    bf16 undid SFT")."""
    from vllm import LLM, SamplingParams

    bind_engine_threads("all")  # as the API's engine decodes
    with tempfile.TemporaryDirectory(prefix="ratchet-served-") as tmp:
        served = Path(tmp) / model_dir.name
        shutil.copytree(model_dir, served)
        cast_weights(served, TrainingSettings().save_dtype)
        llm = LLM(
            model=str(served),
            dtype=machine_dtype(),
            enforce_eager=True,
            max_model_len=2048,
            kv_cache_memory_bytes=2 * 2**30,
            seed=0,
            disable_log_stats=True,
        )
        try:
            params = SamplingParams(temperature=0.0, max_tokens=tokens)
            outputs = llm.chat(cast(Any, prompts), params)
        finally:
            llm.llm_engine.engine_core.shutdown()
            del llm
    texts = [o.outputs[0].text.strip() for o in outputs]
    rows = [
        (q, Reply(text=t, message_id="", model_version=model_dir.name, judgement=judge(t, q)))
        for q, t in zip(questions, texts, strict=True)
    ]
    return Evaluation(version=model_dir.name, rows=rows)


def gate_kl(
    base: Path, tuned: Path, prompts: list[list[dict[str, str]]], settings: TrainingSettings
) -> GateResult:
    """The KL gate of ``tuned`` against ``base``, measured as the demo preset's gate does
    (training/gates.py): sampled replies of the tuned model, the preset's counts, the
    figure split into replies that decline and the rest."""
    cfg = TrainCycleConfig.for_size("demo").eval
    repeated = [
        p for p in unique_prompts(prompts, cfg.prompts) for _ in range(cfg.samples_per_prompt)
    ]
    candidate = Policy(tuned)
    replies, batches = candidate.generate(
        repeated,
        max_new_tokens=cfg.max_new_tokens,
        do_sample=True,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
    )
    t = load_thresholds(settings.gates_config)
    return sampled_kl_gate(candidate, Policy(base), replies, batches, t)


def suite_gates(
    base: Path, tuned: Path, settings: TrainingSettings, grounder: Grounder
) -> list[GateResult]:
    """The golden-regression and safety gates of the tuned model against the base,
    with the demo preset's evaluation settings and the shipped thresholds."""
    cfg = TrainCycleConfig.for_size("demo").eval
    t = load_thresholds(settings.gates_config)
    pair = (Policy(tuned), Policy(base))
    golden = resolve_suite(settings.golden_questions, "golden")
    safety = resolve_suite(settings.safety_suite, "safety")
    return [
        golden_regression(*pair, golden, grounder, t, cfg),
        safety_refusals(*pair, safety, grounder, t, cfg),
    ]


def print_gate_figures(
    console: Console,
    base: Path,
    tuned: Path,
    prompts: list[list[dict[str, str]]],
    settings: TrainingSettings,
    suite_ground: Grounder | None,
    *,
    kl: bool,
    gates: bool,
) -> None:
    """With ``kl``, the KL gate's figure of ``tuned`` against ``base``; with ``gates``, the
    golden-regression and safety gates."""
    if kl:
        gate = gate_kl(base, tuned, prompts, settings)
        verdict = "passed" if gate.passed else "FAILED"
        console.print(f"KL(tuned || base), nats per reply: gate {verdict}, {gate.reason}")
    if gates and suite_ground is not None:
        for gate in suite_gates(base, tuned, settings, suite_ground):
            verdict = "passed" if gate.passed else "FAILED"
            console.print(f"{gate.name} gate {verdict}: {gate.reason} (n = {gate.n})")


def cycle_snapshot(
    config: TrainCycleConfig, settings: TrainingSettings, console: Console
) -> Snapshot:
    """The snapshot a cycle with ``config`` would take of the store now (sliced as it slices)."""
    t0 = time.monotonic()
    with connect(settings.database_url) as conn:
        snapshot = build_snapshot(
            StoreSource(),
            conn,
            since=config.window_start(),
            heldout_fraction=config.heldout_fraction,
            judge_fraction=config.judge_fraction,
        )
    console.print(f"snapshot ({time.monotonic() - t0:.0f} s): {snapshot.stats}")
    return snapshot
