"""The reward-model side of the demo's probe (``python -m infra.demo.probe --stage
reward`` and ``--stage pairs``; see ``infra.demo.probe``): train or score the cycle's
policy reward model and judge on the stored feedback, and audit the pairs."""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

from rich.console import Console

from infra.demo.probe_checks import cycle_snapshot
from infra.demo.questions import load_questions
from infra.demo.settings import DemoSettings
from training.cycle_config import TrainCycleConfig
from training.cycle_stages import train_reward_kind
from training.device import Placement
from training.gates import accuracy_gate, load_thresholds
from training.reward_config import RewardStageConfig
from training.settings import TrainingSettings
from training.snapshot import Pair, Snapshot


def _probe_config(args: argparse.Namespace) -> TrainCycleConfig:
    """The size's cycle settings, changed by the options given."""
    config = TrainCycleConfig.for_size(args.size)
    changed = {k: v for k, v in vars(args).items() if k in RewardStageConfig.model_fields}
    slicing = {
        k: v for k, v in vars(args).items() if k in ("heldout_fraction", "judge_fraction", "seed")
    }
    return config.model_copy(
        update={
            **slicing,
            **{
                kind: RewardStageConfig.model_validate(
                    {**getattr(config, kind).model_dump(), **changed}
                )
                for kind in args.kinds
            },
        }
    )


def probe_pairs(args: argparse.Namespace, console: Console, settings: TrainingSettings) -> int:
    """The employees' rule on every slice's pairs, by source (``infra.demo.pair_audit``)."""
    from transformers import AutoTokenizer

    from infra.demo.pair_audit import audit
    from infra.demo.questions import load_out_of_policy

    config = _probe_config(args)
    snapshot = cycle_snapshot(config, settings, console)
    demo = DemoSettings()
    questions = [*load_questions(demo.kb_dir), *load_out_of_policy(demo.kb_dir)]
    tokenizer = AutoTokenizer.from_pretrained(demo.model or Path("models/base"))
    max_length = config.reward.max_length
    slices = {
        "policy": snapshot.train_pairs,
        "judge": snapshot.judge_pairs,
        "heldout": snapshot.heldout_pairs,
    }
    for name, pairs in slices.items():
        console.print(f"[bold]{name}[/] (max_length {max_length}): ", end="")
        console.print(audit(pairs, questions, tokenizer, max_length).line())
        for source in sorted({p.provenance.source for p in pairs}):
            some = [p for p in pairs if p.provenance.source == source]
            console.print(f"  {source}: {audit(some, questions, tokenizer, max_length).line()}")
    return 0


def probe_reward(args: argparse.Namespace, console: Console, settings: TrainingSettings) -> int:
    """Train the cycle's reward models (``args.kinds``) on the stored feedback and print
    what the accuracy gates would read of them."""
    config = _probe_config(args)
    snapshot = cycle_snapshot(config, settings, console)
    if not snapshot.heldout_pairs:
        console.print("[red]no held-out preference pairs in the store[/]: run `make demo` first")
        return 2
    base = (DemoSettings().model or Path("models/base")).resolve()
    placement = Placement.resolve(settings.train_device, settings.train_precision)
    if args.score_dir is not None:
        for kind in args.kinds:
            _print_by_source(console, kind, args.score_dir, snapshot, config, placement)
            if args.grounding:
                _print_with_grounding(console, kind, args.score_dir, snapshot, config, placement)
        return 0
    thresholds = load_thresholds(settings.gates_config)
    floors = {
        "reward": thresholds.reward_accuracy_lower_min,
        "judge": thresholds.judge_accuracy_lower_min,
    }
    with tempfile.TemporaryDirectory(prefix="ratchet-probe-") as tmp:
        for kind in args.kinds:
            console.print(f"{kind}: {getattr(config, kind)}")
            t0 = time.monotonic()
            if args.init_dir is not None:
                console.print(f"{kind}: starts from {args.init_dir}")
            result = train_reward_kind(
                kind,
                base,
                snapshot,
                Path(tmp),
                config,
                progress=False,
                placement=placement,
                init_dir=args.init_dir,
            )
            seconds = time.monotonic() - t0
            gate = accuracy_gate(
                f"{kind}_accuracy",
                correct=round(result.heldout_accuracy * result.heldout_pairs),
                n=result.heldout_pairs,
                floor=floors[kind],
                min_n=thresholds.min_heldout_pairs,
                confidence=thresholds.confidence,
            )
            low, high = gate.interval or (float("nan"), float("nan"))
            m = result.train_metrics
            console.print(
                f"{kind}: held-out accuracy {result.heldout_accuracy:.3f} on"
                f" {result.heldout_pairs} pairs, Wilson [{low:.3f}, {high:.3f}];"
                f" gate {'passed' if gate.passed else 'FAILED'} ({gate.reason});"
                f" {m['train_pairs']} training pairs, {m['trainable_params']:,} trainable"
                f" parameters, loss {m['train_loss']:.3f}; {seconds:.0f} s"
                " (training and held-out scoring)"
            )
            console.print(f"{kind}: loss curve {[round(x, 3) for x in m['loss_curve']]}")
            _print_by_source(console, kind, result.model_dir, snapshot, config, placement)
    return 0


def _print_by_source(
    console: Console,
    kind: str,
    model_dir: Path,
    snapshot: Snapshot,
    config: TrainCycleConfig,
    placement: Placement,
) -> None:
    # The other kind's training slice is prompt-disjoint from this one's too: a second,
    # larger sample to compare recipes on (not what the gate reads).
    other = snapshot.judge_pairs if kind == "reward" else snapshot.train_pairs
    for name, pairs in (("held-out", snapshot.heldout_pairs), ("other slice", other)):
        by_source = accuracy_by_source(model_dir, pairs, getattr(config, kind), placement)
        console.print(f"{kind}: {name} by source: {by_source}")


def _print_with_grounding(
    console: Console,
    kind: str,
    model_dir: Path,
    snapshot: Snapshot,
    config: TrainCycleConfig,
    placement: Placement,
) -> None:
    """The saved reward model's learned score plus ``w`` times the grounding term
    (``training.grounding``), ``w`` fitted as ``RewardStageConfig.grounding: fit`` does
    (on the slice's pairs the model did not train on, ``grounding_fit_pairs``), and its
    accuracy on the held-out slice beside each part alone."""
    from training.cycle_stages import reward_pairs
    from training.grounding import fit_weight
    from training.reward import RewardScorer, grounding_fit_pairs, sample_pairs

    cfg = getattr(config, kind)
    scorer = RewardScorer.for_stage(model_dir, cfg, placement)
    pairs, seed = reward_pairs(kind, snapshot, config)
    train = grounding_fit_pairs(pairs, sample_pairs(pairs, cfg.max_train_pairs, seed))
    w = fit_weight(scorer.model_margins(train), scorer.margins(train, scorer.grounding_terms))
    held_out = snapshot.heldout_pairs
    rm = scorer.model_margins(held_out)
    ground = scorer.margins(held_out, scorer.grounding_terms)

    def right(weight_rm: float, weight_g: float) -> int:
        return sum(weight_rm * r + weight_g * g > 0 for r, g in zip(rm, ground, strict=True))

    n = len(rm)
    console.print(
        f"{kind}: held-out, the model alone {right(1, 0)}/{n}, the grounding term alone"
        f" {right(0, 1)}/{n}, the model + {w} x grounding (w fitted on {len(train)} pairs of"
        f" its slice) {right(1, w)}/{n}"
    )


def accuracy_by_source(
    model_dir: Path, pairs: list[Pair], cfg: RewardStageConfig, placement: Placement
) -> str:
    """Accuracy of the reward model in ``model_dir`` on ``pairs``, in all and by the
    pairs' source (comparison, correction, rating), scored as the cycle scores them."""
    from training.reward import RewardScorer

    scorer = RewardScorer.for_stage(model_dir, cfg, placement)
    prompts = [p.prompt for p in pairs]
    chosen, rejected = scorer.score_pairs(
        prompts, [p.chosen for p in pairs], [p.rejected for p in pairs]
    )
    right: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for p, c, r in zip(pairs, chosen, rejected, strict=True):
        total[p.provenance.source] += 1
        right[p.provenance.source] += c > r
    parts = [f"{s} {right[s]}/{n}" for s, n in sorted(total.items())]
    return f"{sum(right.values())}/{len(pairs)} ({', '.join(parts)})"
