"""Steps of a training cycle that :mod:`training.cycle` composes: the policy's
reward model and the independent judge (and where each starts: the parent policy,
or the reward model of its kind that the latest succeeded run trained), the
registered stages run in order
(``train_policy``), what each rank of a distributed run did, the gates, and the
hand-over of a candidate to the canary stage."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from training import distributed, registry, runs
from training.cycle_config import TrainCycleConfig
from training.gates import GateInputs, GateThresholds, load_thresholds, run_gates
from training.promotion import promote_if_ready
from training.settings import TrainingSettings, default_actor
from training.snapshot import Pair, Snapshot
from training.suites_io import resolve_suite

if TYPE_CHECKING:
    from collections.abc import Callable

    from training import stages
    from training.device import Placement
    from training.reward import RewardResult, RewardScorer

logger = logging.getLogger(__name__)


REWARD_KINDS = ("reward", "judge")  # the policy's reward model, the independent judge


@dataclass(frozen=True)
class RewardInit:
    """Where a reward model starts: ``origin`` "parent" (the parent policy under a new
    score head) or "previous" (the reward model of its kind that the latest succeeded
    run trained), from ``model_dir``; ``fallback`` says why a requested "previous"
    started from the parent instead."""

    origin: str
    model_dir: Path
    fallback: str = ""

    def as_metrics(self) -> dict[str, str]:
        out = {"init": self.origin, "init_dir": str(self.model_dir)}
        if self.fallback:
            out["init_fallback"] = self.fallback
        return out


def reward_inits(
    conn: psycopg.Connection, config: TrainCycleConfig, parent_dir: Path
) -> dict[str, RewardInit]:
    """Where the policy's reward model and the judge start (their configs' ``init``).
    A judge only ever starts from a judge, a policy RM from a policy RM, so the judge
    stays independent of the policy's prompts."""
    wanted = any(getattr(config, kind).init == "previous" for kind in REWARD_KINDS)
    last = runs.last_succeeded(conn) if wanted else None
    return {kind: _reward_init(kind, config, last, parent_dir) for kind in REWARD_KINDS}


def _reward_init(
    kind: str, config: TrainCycleConfig, last: dict[str, Any] | None, parent_dir: Path
) -> RewardInit:
    if getattr(config, kind).init == "parent":
        logger.info("%s model: starts from the parent policy %s (init: parent)", kind, parent_dir)
        return RewardInit("parent", parent_dir)
    previous, why = _previous_model(kind, config, last, parent_dir)
    if previous is None:
        logger.warning(
            "%s model: init 'previous', but %s; it starts from the parent policy %s instead",
            kind,
            why,
            parent_dir,
        )
        return RewardInit("parent", parent_dir, why)
    assert last is not None
    logger.info(
        "%s model: starts from the previous cycle's %s (run %s; init: previous)",
        kind,
        previous,
        last["id"],
    )
    return RewardInit("previous", previous)


def _previous_model(
    kind: str, config: TrainCycleConfig, last: dict[str, Any] | None, parent_dir: Path
) -> tuple[Path | None, str]:
    """The latest succeeded run's ``kind`` model, if a new one may start from it; else
    None and why not."""
    from training.reward import base_mismatch

    if last is None:
        return None, "no earlier run succeeded"
    recorded = ((last["metrics"] or {}).get(kind) or {}).get("model_dir")
    if not recorded or not (Path(recorded) / "config.json").exists():
        return None, f"run {last['id']} left no {kind} model ({recorded or 'none recorded'})"
    slicing = ("heldout_fraction", "judge_fraction")
    theirs = {k: (last["config"] or {}).get(k) for k in slicing}
    if theirs != {k: getattr(config, k) for k in slicing}:
        # Its training slice may hold prompts that are held out now: the accuracy gates
        # would read an inflated held-out accuracy.
        return None, f"run {last['id']} sliced the prompts otherwise ({theirs})"
    try:
        mismatch = base_mismatch(Path(recorded), parent_dir)
    except (OSError, ValueError) as exc:  # transformers' errors for an unreadable checkpoint
        mismatch = f"unreadable ({exc})"
    if mismatch is not None:
        return None, f"{recorded}: {mismatch}"
    return Path(recorded), ""


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
    inits: dict[str, RewardInit],
) -> RewardModels:
    """The policy's reward model (policy slice) and the independent judge (judge slice:
    prompts that neither the policy's reward model nor PPO ever sees), each started
    where ``inits`` says (:func:`reward_inits`); both report their accuracy on the
    held-out slice, and the run's metrics say where each started."""
    from training.reward import RewardScorer

    trained: dict[str, Any] = {}
    for name in REWARD_KINDS:
        init = inits[name]
        t0 = time.monotonic()
        result = train_reward_kind(
            name,
            parent_dir,
            snapshot,
            run_dir,
            config,
            progress=progress,
            placement=placement,
            init_dir=init.model_dir if init.origin == "previous" else None,
        )
        timings[f"{name}_s"] = time.monotonic() - t0
        metrics[name] = {**rm_metrics(result), **init.as_metrics()}
        cfg = getattr(config, name)
        scorer = RewardScorer.for_stage(result.model_dir, cfg, placement)
        trained[name] = (result, scorer)
    return RewardModels(*trained["reward"], *trained["judge"])


def train_reward_kind(
    kind: str,
    parent_dir: Path,
    snapshot: Snapshot,
    run_dir: Path,
    config: TrainCycleConfig,
    *,
    progress: bool,
    placement: Placement,
    init_dir: Path | None = None,
) -> RewardResult:
    """Train the policy's reward model (``kind`` "reward": the policy slice's pairs) or
    the judge ("judge": the judge slice's) into ``run_dir / kind``, as a cycle does (its
    settings, source weights and seed), and measure it on the held-out slice."""
    from training.reward import train_reward_model

    pairs, seed = reward_pairs(kind, snapshot, config)
    return train_reward_model(
        parent_dir,
        pairs,
        snapshot.heldout_pairs,
        run_dir / kind,
        getattr(config, kind),
        seed=seed,
        progress=progress,
        placement=placement,
        init_dir=init_dir,
    )


def reward_pairs(kind: str, snapshot: Snapshot, config: TrainCycleConfig) -> tuple[list[Pair], int]:
    """The pairs the policy's reward model (``kind`` "reward": the policy slice) or the
    judge ("judge": the judge slice) is given, weighted by source, and its seed."""
    from training.source_weights import weighted

    pairs, seed = {
        "reward": (snapshot.train_pairs, config.seed),
        "judge": (snapshot.judge_pairs, config.seed + 1),
    }[kind]
    return weighted(pairs, getattr(config, kind).source_weights, seed=seed), seed


def gate_stage(
    settings: TrainingSettings,
    conn: psycopg.Connection,
    reward_models: RewardModels,
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
    policy_rm, judge_rm = reward_models.policy, reward_models.judge
    inputs = GateInputs(
        candidate=candidate,
        production=reference,
        reference=reference,
        policy_scorer=reward_models.policy_scorer,
        judge=reward_models.judge_scorer,
        reward_correct=round(policy_rm.heldout_accuracy * policy_rm.heldout_pairs),
        reward_n=policy_rm.heldout_pairs,
        judge_correct=round(judge_rm.heldout_accuracy * judge_rm.heldout_pairs),
        judge_n=judge_rm.heldout_pairs,
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


def train_policy(
    plan: list[stages.Stage],
    ctx: stages.StageContext,
    rewards: Callable[[], RewardModels],
    parent_dir: Path,
    out_dir: Path,
    metrics: dict[str, Any],
    timings: dict[str, float],
) -> tuple[stages.StageContext, list[dict[str, float]]]:
    """Run the plan's stages in order, each from the policy the last one left (the
    final one writes ``out_dir``); the context (with the reward models, if a stage
    needed them) and the per-step history of the last stage that trained."""
    policy_dir = parent_dir
    history: list[dict[str, float]] = []
    for stage in plan:
        if stage.needs_rewards and ctx.rewards is None:
            ctx = replace(ctx, rewards=rewards())
        t0 = time.monotonic()
        target = out_dir if stage.final else ctx.run_dir / stage.name
        outcome = stage.run(ctx, policy_dir, target)
        timings[f"{stage.name}_s"] = time.monotonic() - t0
        metrics[stage.name] = {**outcome.metrics, "history": outcome.history}
        if outcome.policy_dir is not None:
            policy_dir = outcome.policy_dir
        history = outcome.history or history
    return ctx, history


def rank_metrics(
    algo: str, placement: Placement, metrics: dict[str, Any], reward_models: RewardModels
) -> list[dict[str, Any]]:
    """What each rank of a distributed run trained on and how far (every rank calls it)."""
    return distributed.all_gather(
        {
            "rank": distributed.rank(),
            "device": str(placement.device),
            f"{algo}_steps": len(metrics[algo]["history"]),
            "reward_train_loss": reward_models.policy.train_metrics.get("train_loss"),
        }
    )


def gate_candidate(
    settings: TrainingSettings,
    conn: psycopg.Connection,
    ctx: stages.StageContext,
    reward_models: RewardModels,
    out_dir: Path,
    parent_dir: Path,
    thresholds: GateThresholds,
) -> dict[str, Any]:
    """The offline gates on the candidate (already cast to the served dtype)."""
    return gate_stage(
        settings,
        conn,
        reward_models,
        out_dir,
        parent_dir,
        ctx.snapshot,
        ctx.config,
        thresholds,
        ctx.progress,
        ctx.placement,
    )
