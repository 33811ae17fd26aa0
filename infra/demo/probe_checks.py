"""What the probes (``infra.demo.probe``, ``infra.demo.ppo_probe``) measure of a tuned
model: the employees' yardstick on the held-out questions, the KL gate's figure and
the golden-regression and safety gates, each against the base."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console

from infra.demo.employees import Evaluation
from infra.demo.questions import Question
from infra.demo.replay import greedy_replies, judged
from ratchet.db import connect
from training.base_model import cast_weights
from training.cycle_config import TrainCycleConfig
from training.device import Placement
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
    from vLLM's engine (as the API serves, ``infra.demo.replay.greedy_replies``).
    A tuned model is first saved as the cycle saves a version (``cast_weights`` to
    ``RATCHET_SAVE_DTYPE``, on a copy): the engine, loading fp32 weights in bf16, would
    round them to nearest, and lose much of what SFT changed (RECIPES.md, "Saving in
    bf16 undid SFT")."""
    with tempfile.TemporaryDirectory(prefix="ratchet-served-") as tmp:
        served = Path(tmp) / model_dir.name
        shutil.copytree(model_dir, served)
        cast_weights(served, TrainingSettings().save_dtype)
        replies = greedy_replies(served, prompts, tokens)
    return judged(model_dir.name, questions, [text for text, _ in replies])


def gate_kl(
    base: Path,
    tuned: Path,
    prompts: list[list[dict[str, str]]],
    settings: TrainingSettings,
    placement: Placement,
) -> GateResult:
    """The KL gate of ``tuned`` against ``base``, measured as the demo preset's gate does
    (training/gates.py): sampled replies of the tuned model, the preset's counts, the
    figure split into replies that decline and the rest; both models on ``placement``
    (the probe's, from ``RATCHET_TRAIN_DEVICE`` and ``RATCHET_TRAIN_PRECISION``)."""
    cfg = TrainCycleConfig.for_size("demo").eval
    repeated = [
        p for p in unique_prompts(prompts, cfg.prompts) for _ in range(cfg.samples_per_prompt)
    ]
    candidate = Policy(tuned, placement=placement)
    replies, batches = candidate.generate(
        repeated,
        max_new_tokens=cfg.max_new_tokens,
        do_sample=True,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
    )
    t = load_thresholds(settings.gates_config)
    return sampled_kl_gate(candidate, Policy(base, placement=placement), replies, batches, t)


def suite_gates(
    base: Path, tuned: Path, settings: TrainingSettings, grounder: Grounder, placement: Placement
) -> list[GateResult]:
    """The golden-regression and safety gates of the tuned model against the base,
    with the demo preset's evaluation settings and the shipped thresholds, both models
    on ``placement``."""
    cfg = TrainCycleConfig.for_size("demo").eval
    t = load_thresholds(settings.gates_config)
    pair = (Policy(tuned, placement=placement), Policy(base, placement=placement))
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
    placement: Placement,
    *,
    kl: bool,
    gates: bool,
) -> None:
    """With ``kl``, the KL gate's figure of ``tuned`` against ``base``; with ``gates``, the
    golden-regression and safety gates; both models on ``placement``."""
    if kl:
        gate = gate_kl(base, tuned, prompts, settings, placement)
        verdict = "passed" if gate.passed else "FAILED"
        console.print(f"KL(tuned || base), nats per reply: gate {verdict}, {gate.reason}")
    if gates and suite_ground is not None:
        for gate in suite_gates(base, tuned, settings, suite_ground, placement):
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
