"""The registry of a cycle's policy stages.

A stage turns a policy directory into a new one (SFT, PPO, DPO, KTO): an
``XConfig`` (a pydantic model, a field of :class:`~training.cycle_config.TrainCycleConfig`
named after the stage) and a ``train_x``-calling runner, registered here under
the stage's name. The cycle runs the preset's ``stages`` in order, then the
chosen algorithm (a stage registered with ``final=True``), each starting from
the previous one's output. Adding a stage means a ``training/x_config.py``, a
``training/x.py``, a config field and one :func:`register` call below.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.errors import TrainingError
from training.refusals import is_refusal

if TYPE_CHECKING:
    from training.cycle_config import TrainCycleConfig
    from training.device import Placement
    from training.snapshot import Snapshot

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageContext:
    """What every stage may read: the cycle's data, its config and where to write."""

    snapshot: Snapshot
    config: TrainCycleConfig
    placement: Placement
    run_dir: Path
    progress: bool
    # training.cycle_stages.RewardModels (not imported: cycle_stages imports this module)
    rewards: Any = None  # the policy's reward model (PPO needs it)


@dataclass
class StageOutcome:
    """A stage's result: the new policy (None: the stage was skipped), its metrics and
    per-step history (for the plot)."""

    policy_dir: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)


Runner = Callable[[StageContext, Path, Path], StageOutcome]  # (ctx, policy_dir, out_dir)


@dataclass(frozen=True)
class Stage:
    name: str
    run: Runner
    final: bool = False  # may end a cycle (``--algo``)
    needs_rewards: bool = False


STAGES: dict[str, Stage] = {}


def register(name: str, *, final: bool = False, needs_rewards: bool = False) -> Callable:
    def wrap(run: Runner) -> Runner:
        if name in STAGES:
            raise TrainingError(f"stage {name!r} registered twice")
        STAGES[name] = Stage(name, run, final=final, needs_rewards=needs_rewards)
        return run

    return wrap


def algos() -> tuple[str, ...]:
    return tuple(name for name, stage in STAGES.items() if stage.final)


def get(name: str) -> Stage:
    try:
        return STAGES[name]
    except KeyError as exc:
        raise TrainingError(
            f"unknown training stage {name!r}; choose one of {', '.join(STAGES)}"
        ) from exc


def plan(config: TrainCycleConfig, algo: str) -> list[Stage]:
    """The stages of a cycle: the preset's ``stages`` then ``algo``."""
    if algo not in algos():
        raise TrainingError(f"unknown algorithm {algo!r}; choose one of {', '.join(algos())}")
    return [get(name) for name in config.stages] + [get(algo)]


# --- the registered stages ------------------------------------------------------------


@register("sft")
def _sft(ctx: StageContext, policy_dir: Path, out_dir: Path) -> StageOutcome:
    cfg = ctx.config.sft
    examples = cfg.training_examples(ctx.snapshot.sft_examples, seed=ctx.config.seed)
    if len(examples) < cfg.min_examples:
        return StageOutcome(None, {"sft_examples": 0})
    from training.sft import train_sft

    metrics = train_sft(
        policy_dir,
        examples,
        out_dir,
        cfg,
        seed=ctx.config.seed,
        progress=ctx.progress,
        placement=ctx.placement,
    )
    metrics["sft_refusals"] = sum(is_refusal(e.completion) for e in examples)  # repeats counted
    return StageOutcome(out_dir if metrics["sft_examples"] else None, metrics)


@register("ppo", final=True, needs_rewards=True)
def _ppo(ctx: StageContext, policy_dir: Path, out_dir: Path) -> StageOutcome:
    from training import distributed
    from training.ppo import PpoTrainer, load_models
    from training.rollouts import make_rollouts

    assert ctx.rewards is not None
    cfg = ctx.config.ppo
    # The reference is the model PPO starts from (post-SFT when SFT ran): the KL
    # penalty keeps the policy near it, not near the parent SFT moved away from.
    policy, reference, tokenizer = load_models(policy_dir, policy_dir, ctx.placement)
    rollouts = make_rollouts(cfg, policy_dir, tokenizer, ctx.placement)
    trainer = PpoTrainer(
        policy, reference, tokenizer, ctx.rewards.policy_scorer.score, cfg,
        placement=ctx.placement, rollouts=rollouts,
    )  # fmt: skip
    try:
        history = trainer.train([p.prompt for p in ctx.snapshot.train_pairs], progress=ctx.progress)
    finally:
        rollouts.close()
    if distributed.is_main():
        trainer.model.policy.save_pretrained(out_dir)  # type: ignore[operator]
        tokenizer.save_pretrained(out_dir)
    metrics: dict[str, Any] = {"reference": str(policy_dir)}
    if history:
        k = max(1, len(history) // 4)
        metrics["first_mean_score"] = sum(h["mean_score"] for h in history[:k]) / k
        metrics["last_mean_score"] = sum(h["mean_score"] for h in history[-k:]) / k
        metrics["final_kl"] = history[-1]["mean_kl"]
    return StageOutcome(out_dir, metrics, history)


@register("dpo", final=True)
def _dpo(ctx: StageContext, policy_dir: Path, out_dir: Path) -> StageOutcome:
    from training.dpo import train_dpo
    from training.source_weights import weighted

    cfg = ctx.config.dpo
    history = train_dpo(
        policy_dir,
        weighted(ctx.snapshot.train_pairs, cfg.source_weights, seed=ctx.config.seed),
        out_dir,
        cfg,
        seed=ctx.config.seed,
        progress=ctx.progress,
        placement=ctx.placement,
    )
    return StageOutcome(out_dir, {}, history)


@register("contrast")
def _contrast(ctx: StageContext, policy_dir: Path, out_dir: Path) -> StageOutcome:
    """DPO on the refusal-contrast pairs (training/contrast.py): after SFT, an answer
    beats a refusal on the prompts SFT answered, a refusal beats compliance on the
    requests it declined. Skipped with too few pairs (no refusal to contrast)."""
    from training.contrast import contrast_pairs
    from training.dpo import train_dpo

    cfg = ctx.config.contrast
    pairs = contrast_pairs(
        ctx.snapshot.sft_examples,
        ctx.snapshot.train_pairs,
        max_pairs=cfg.max_pairs,
        seed=ctx.config.seed,
    )
    declines = sum(is_refusal(p.chosen) for p in pairs)
    metrics: dict[str, Any] = {"contrast_pairs": len(pairs), "contrast_declines": declines}
    if len(pairs) < cfg.min_pairs:
        return StageOutcome(None, metrics)
    history = train_dpo(
        policy_dir, pairs, out_dir, cfg, seed=ctx.config.seed, progress=ctx.progress,
        placement=ctx.placement,
    )  # fmt: skip
    return StageOutcome(out_dir, metrics, history)


@register("kto", final=True)
def _kto(ctx: StageContext, policy_dir: Path, out_dir: Path) -> StageOutcome:
    """KTO on unpaired thumbs (skipped with too few verdicts; as ``--algo`` the cycle then
    fails with the reason, since there is no candidate)."""
    from training.kto import train_kto

    cfg = ctx.config.kto
    metrics = train_kto(
        policy_dir,
        ctx.snapshot.kto_examples,
        out_dir,
        cfg,
        seed=ctx.config.seed,
        progress=ctx.progress,
        placement=ctx.placement,
    )
    history = metrics.pop("history", [])
    if not metrics["kto_examples"]:
        return StageOutcome(None, metrics)
    return StageOutcome(out_dir, metrics, history)
