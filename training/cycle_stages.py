"""Stages of a training cycle that :mod:`training.cycle` composes: the policy's
reward model and the independent judge, the gates, and the hand-over of a
candidate to the canary stage."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from training import registry
from training.cycle_config import TrainCycleConfig
from training.gates import GateInputs, GateThresholds, load_thresholds, run_gates
from training.promotion import promote_if_ready
from training.settings import TrainingSettings, default_actor
from training.snapshot import Snapshot
from training.suites_io import resolve_suite

if TYPE_CHECKING:
    from training.device import Placement
    from training.reward import RewardResult, RewardScorer

logger = logging.getLogger(__name__)


@dataclass
class RewardModels:
    policy: RewardResult  # the reward the policy is optimised against
    policy_scorer: RewardScorer
    judge: RewardResult  # trained on the judge's prompt slice only
    judge_scorer: RewardScorer


def train_reward_models(
    parent_dir: Path,
    snapshot: Snapshot,
    run_dir: Path,
    config: TrainCycleConfig,
    metrics: dict[str, Any],
    timings: dict[str, float],
    progress: bool,
    placement: Placement,
) -> RewardModels:
    """The policy's reward model (policy slice) and the independent judge (judge slice:
    prompts that neither the policy's reward model nor PPO ever sees); both report
    their accuracy on the held-out slice."""
    from training.reward import RewardScorer, train_reward_model
    from training.source_weights import weighted

    out: dict[str, Any] = {}
    for name, pairs, cfg, seed in (
        ("reward", snapshot.train_pairs, config.reward, config.seed),
        ("judge", snapshot.judge_pairs, config.judge, config.seed + 1),
    ):
        t0 = time.monotonic()
        rm = train_reward_model(
            parent_dir,
            weighted(pairs, cfg.source_weights, seed=seed),
            snapshot.heldout_pairs,
            run_dir / name,
            cfg,
            seed=seed,
            progress=progress,
            placement=placement,
        )
        timings[f"{name}_s"] = time.monotonic() - t0
        metrics[name] = rm_metrics(rm)
        scorer = RewardScorer(
            rm.model_dir,
            batch_size=cfg.score_batch_size,
            max_length=cfg.max_length,
            placement=placement,
        )
        out[name] = (rm, scorer)
    return RewardModels(out["reward"][0], out["reward"][1], out["judge"][0], out["judge"][1])


def gate_stage(
    settings: TrainingSettings,
    conn: psycopg.Connection,
    rms: RewardModels,
    out_dir: Path,
    parent_dir: Path,
    snapshot: Snapshot,
    config: TrainCycleConfig,
    thresholds: GateThresholds,
    progress: bool,
    placement: Placement,
) -> dict[str, Any]:
    """The gate report (stored form) of the candidate in ``out_dir`` against its parent."""
    from training.evaluate import Policy
    from training.kb_reader import kb_grounder

    candidate = Policy(out_dir, placement=placement)
    reference = Policy(parent_dir, placement=placement)
    inputs = GateInputs(
        candidate=candidate,
        production=reference,
        reference=reference,
        policy_scorer=rms.policy_scorer,
        judge=rms.judge_scorer,
        reward_correct=round(rms.policy.heldout_accuracy * rms.policy.heldout_pairs),
        reward_n=rms.policy.heldout_pairs,
        judge_correct=round(rms.judge.heldout_accuracy * rms.judge.heldout_pairs),
        judge_n=rms.judge.heldout_pairs,
        heldout_prompts=[p.prompt for p in snapshot.heldout_pairs],
        golden_path=resolve_suite(settings.golden_questions, "golden"),
        safety_path=resolve_suite(settings.safety_suite, "safety"),
        grounder=kb_grounder(conn, k=settings.retrieval_k),
    )
    return run_gates(inputs, thresholds, config.eval, progress=progress).as_dict()


def to_canary(settings: TrainingSettings, conn: psycopg.Connection, version: str) -> bool:
    """A candidate that passed its offline gates becomes the canary; the auto-promote
    policy then goes through the same canary stage as an operator. True when that
    policy promoted it at once."""
    registry.set_canary(conn, version, actor=default_actor(settings), reason="offline gates passed")
    if not settings.auto_promote:
        return False
    promoted = promote_if_ready(
        conn,
        actor="auto-promote",
        thresholds=load_thresholds(settings.gates_config),
        require_canary=settings.require_canary,
    )
    return promoted is not None


def rm_metrics(rm: Any) -> dict[str, Any]:
    return {
        "heldout_accuracy": rm.heldout_accuracy,
        "heldout_pairs": rm.heldout_pairs,
        "model_dir": str(rm.model_dir),
        **{k: v for k, v in rm.train_metrics.items() if k != "loss_curve"},
    }
