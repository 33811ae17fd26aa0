"""Probe a policy or reward-model recipe on the demo's stored feedback, without the API.

``python -m infra.demo.probe --sft-epochs 3 --sft-lr 1e-4`` fine-tunes the base
model on the SFT examples a finished feedback phase left in Postgres (corrections
and top-rated replies), then asks the held-out questions of the base and of the
tuned model, greedily, and prints the employees' yardstick (exact figure, cites)
before and after with Wilson intervals and the exact McNemar test, and the KL of
the tuned model to the base as the KL gate measures it (``--kl``).

It is how the demo preset's SFT settings were chosen (training/RECIPES.md): one
probe takes minutes, a whole `make demo` twenty. Its prompts are grounded by
training's word-overlap reader of the stored knowledge base
(``training.kb_reader``), not by serving's dense retriever, so its figures are
close to the demo's but not the same; compare probes with probes.

``python -m infra.demo.probe --stage reward --train-layers 4 --rm-lr 1e-4`` trains
the cycle's policy reward model (``--kinds reward judge``: and its judge) on the
pairs a cycle would snapshot from the store now, sliced as the cycle slices them
(the demo size's settings, changed by the options given), from the base model as
a first cycle does, and prints each one's
held-out accuracy with its Wilson interval and the accuracy gate's verdict
(``training/gates.yaml``), its pair counts and its wall time, its loss curve, and
its accuracy by source (comparison, correction, rating) on the held-out slice and
on the other kind's slice (also prompt-disjoint from its training: a second sample
to compare recipes on). ``--init-dir`` starts it from another policy (e.g. a run's
SFT model), ``--source-weights`` weighs the sources, ``--heldout-fraction`` and
``--judge-fraction`` slice the prompts otherwise, and ``--score-dir`` trains
nothing and scores a reward model a run left.

``python -m infra.demo.probe --stage pairs`` trains nothing: it applies the
employees' own rule to both replies of every pair of each slice
(``infra.demo.pair_audit``: agrees, ties, contradicts, the held-out ceiling), says
how many sources the reward model reads at its ``max_length``, and how two
model-free baselines (the shorter reply wins; the reply that copies more of the
sources wins) order the pairs.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, cast

from rich.console import Console

from infra.demo.employees import Evaluation, Reply
from infra.demo.questions import Question, judge, load_questions, split
from infra.demo.settings import DemoSettings
from infra.demo.yardstick import compare
from ratchet.db import connect
from serving.backends.machine import bind_engine_threads, machine_dtype
from training.cycle_config import TrainCycleConfig
from training.cycle_stages import REWARD_KINDS, train_reward_kind
from training.device import Placement
from training.evaluate import Policy, mean_kl, unique_prompts
from training.gates import accuracy_gate, load_thresholds
from training.kb_reader import kb_grounder
from training.reward_config import RewardStageConfig
from training.settings import TrainingSettings
from training.sft import train_sft
from training.sft_config import SftStageConfig
from training.snapshot import Pair, Snapshot, StoreSource, build_snapshot
from training.suites_io import suite_prompts

logger = logging.getLogger(__name__)


def held_out_evaluation(
    model_dir: Path, prompts: list[list[dict[str, str]]], questions: list[Question], tokens: int
) -> Evaluation:
    """The yardstick's rows for ``model_dir``: one greedy reply per held-out question,
    from vLLM's engine (as the API serves) in its own process, gone when this returns."""
    from vllm import LLM, SamplingParams

    bind_engine_threads("all")  # as the API's engine decodes
    llm = LLM(
        model=str(model_dir),
        dtype=machine_dtype(),
        enforce_eager=True,
        max_model_len=2048,
        kv_cache_memory_bytes=2 * 2**30,
        seed=0,
        disable_log_stats=True,
    )
    try:
        outputs = llm.chat(cast(Any, prompts), SamplingParams(temperature=0.0, max_tokens=tokens))
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
    texts = [o.outputs[0].text.strip() for o in outputs]
    rows = [
        (q, Reply(text=t, message_id="", model_version=model_dir.name, judgement=judge(t, q)))
        for q, t in zip(questions, texts, strict=True)
    ]
    return Evaluation(version=model_dir.name, rows=rows)


def gate_kl(base: Path, tuned: Path, prompts: list[list[dict[str, str]]]) -> float:
    """Mean KL(tuned || base) per reply, measured as the demo preset's KL gate does
    (training/gates.py): sampled replies of the tuned model, the preset's counts."""
    cfg = TrainCycleConfig.for_size("demo").eval
    repeated = [
        p for p in unique_prompts(prompts, cfg.prompts) for _ in range(cfg.samples_per_prompt)
    ]
    candidate = Policy(tuned)
    _, batches = candidate.generate(
        repeated,
        max_new_tokens=cfg.max_new_tokens,
        do_sample=True,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
    )
    return mean_kl(candidate, Policy(base), batches)


def _count(value: str) -> int | None:
    return None if value == "all" else int(value)


def _weights(value: str) -> dict[str, float]:
    """``comparison=1,rating=0.5`` as a dict."""
    return {k.strip(): float(v) for k, v in (item.split("=") for item in value.split(","))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.demo.probe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--stage", choices=("sft", "reward", "pairs"), default="sft")
    parser.add_argument("--sft-epochs", type=float, default=3.0)
    parser.add_argument("--sft-lr", type=float, default=1e-4)
    parser.add_argument("--sft-batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=None, help="reply length (the demo's)")
    parser.add_argument("--kl", action="store_true", help="also measure the KL gate's figure")
    rm = parser.add_argument_group("--stage reward (unset: the size's own setting)")
    rm.add_argument("--size", default="demo", help="the cycle size whose settings start")
    rm.add_argument("--kinds", nargs="+", choices=REWARD_KINDS, default=["reward"])
    for flag, dest, kind, what in (
        ("--rm-epochs", "epochs", float, ""),
        ("--rm-lr", "learning_rate", float, ""),
        ("--rm-batch", "batch_size", int, ""),
        ("--rm-max-length", "max_length", int, ""),
        ("--max-train-pairs", "max_train_pairs", _count, "a count, or 'all'"),
        ("--train-layers", "train_layers", _count, "top blocks trained, or 'all'"),
    ):
        rm.add_argument(flag, dest=dest, type=kind, default=argparse.SUPPRESS, help=what)
    rm.add_argument(
        "--source-weights",
        dest="source_weights",
        type=_weights,
        default=argparse.SUPPRESS,
        help="per-source weights, e.g. comparison=1,correction=1,rating=0",
    )
    rm.add_argument(
        "--score-dir",
        type=Path,
        default=None,
        help="train nothing: score this trained reward model (e.g. a run's reward/model)"
        " on the held-out and the other slices, by source",
    )
    rm.add_argument(
        "--grounding",
        action="store_true",
        help="with --score-dir: also the reward model's score plus a word-overlap grounding"
        " term, its weight fitted on the model's own training slice, on the held-out slice",
    )
    rm.add_argument(
        "--init-dir",
        type=Path,
        default=None,
        help="start each reward model from this policy (e.g. a run's SFT model) under a new"
        " score head, instead of the base",
    )
    for flag, dest in (
        ("--heldout-fraction", "heldout_fraction"),
        ("--judge-fraction", "judge_fraction"),
    ):
        rm.add_argument(flag, dest=dest, type=float, default=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.stage == "reward":
        return probe_reward(args, Console(), TrainingSettings())
    if args.stage == "pairs":
        return probe_pairs(args, Console(), TrainingSettings())
    console = Console()
    demo = DemoSettings()
    settings = TrainingSettings()
    base = (demo.model or Path("models/base")).resolve()
    tokens = args.tokens or demo.reply_tokens()
    _, held_out = split(
        load_questions(demo.kb_dir), asked=demo.n_asked(), held_out=demo.n_held_out()
    )
    with connect(settings.database_url) as conn:
        snapshot = build_snapshot(StoreSource(), conn, since=None)
        ground = kb_grounder(conn)
    if ground is None:
        console.print("[red]the knowledge base is empty[/]: run `make demo` up to its feedback")
        return 2
    if not snapshot.sft_examples:
        console.print("[red]no SFT examples in the feedback store[/]: run `make demo` first")
        return 2
    prompts = suite_prompts([q.question for q in held_out], ground)
    config = SftStageConfig(
        min_examples=1,
        epochs=args.sft_epochs,
        learning_rate=args.sft_lr,
        batch_size=args.sft_batch,
        max_length=384,
    )
    console.print(
        f"SFT on {len(snapshot.sft_examples)} examples: {config}; {len(held_out)} held-out"
    )
    before = held_out_evaluation(base, prompts, held_out, tokens)
    with tempfile.TemporaryDirectory(prefix="ratchet-probe-") as tmp:
        out = Path(tmp) / "sft"
        metrics = train_sft(base, snapshot.sft_examples, out, config)
        console.print(f"SFT: {metrics}")
        after = held_out_evaluation(out, prompts, held_out, tokens)
        if args.kl:
            kl = gate_kl(base, out, prompts)
            limit = load_thresholds(settings.gates_config).kl_max
            console.print(f"KL(tuned || base) per reply: {kl:.1f} nats (the gate allows {limit})")
    for change in compare(before, after):
        console.print(f"{change.criterion:>12}: {change.line()}")
    for (q, b), (_, a) in list(zip(before.rows, after.rows, strict=True))[:3]:
        console.print(
            f"[bold]{q.question}[/]\n  before: {b.text[:160]!r}\n  after:  {a.text[:160]!r}"
        )
    return 0


def _probe_config(args: argparse.Namespace) -> TrainCycleConfig:
    """The size's cycle settings, changed by the options given."""
    config = TrainCycleConfig.for_size(args.size)
    changed = {k: v for k, v in vars(args).items() if k in RewardStageConfig.model_fields}
    slicing = {k: v for k, v in vars(args).items() if k in ("heldout_fraction", "judge_fraction")}
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


def _snapshot(config: TrainCycleConfig, settings: TrainingSettings, console: Console) -> Snapshot:
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


def probe_pairs(args: argparse.Namespace, console: Console, settings: TrainingSettings) -> int:
    """The employees' rule on every slice's pairs, by source (``infra.demo.pair_audit``)."""
    from transformers import AutoTokenizer

    from infra.demo.pair_audit import audit
    from infra.demo.questions import load_out_of_policy

    config = _probe_config(args)
    snapshot = _snapshot(config, settings, console)
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
    snapshot = _snapshot(config, settings, console)
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
    """The reward model's score plus ``w`` times the grounding term
    (``infra.demo.pair_audit.grounding_margins``), ``w`` fitted on the model's own
    training slice, and its accuracy on the held-out slice beside each part alone."""
    from transformers import AutoTokenizer

    from infra.demo.pair_audit import fit_weight, grounding_margins
    from training.reward import RewardScorer

    cfg = getattr(config, kind)
    scorer = RewardScorer(
        model_dir, batch_size=cfg.score_batch_size, max_length=cfg.max_length, placement=placement
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def margins(pairs: list[Pair]) -> tuple[list[float], list[float]]:
        prompts = [p.prompt for p in pairs]
        chosen = scorer.score(prompts, [p.chosen for p in pairs])
        rejected = scorer.score(prompts, [p.rejected for p in pairs])
        rm = [c - r for c, r in zip(chosen, rejected, strict=True)]
        return rm, grounding_margins(pairs, tokenizer, cfg.max_length)

    train = snapshot.train_pairs if kind == "reward" else snapshot.judge_pairs
    w = fit_weight(*margins(train))
    rm, ground = margins(snapshot.heldout_pairs)

    def right(weight_rm: float, weight_g: float) -> int:
        return sum(weight_rm * r + weight_g * g > 0 for r, g in zip(rm, ground, strict=True))

    n = len(rm)
    console.print(
        f"{kind}: held-out, the model alone {right(1, 0)}/{n}, the grounding term alone"
        f" {right(0, 1)}/{n}, the model + {w} x grounding (w fitted on {len(train)} training"
        f" pairs) {right(1, w)}/{n}"
    )


def accuracy_by_source(
    model_dir: Path, pairs: list[Pair], cfg: RewardStageConfig, placement: Placement
) -> str:
    """Accuracy of the reward model in ``model_dir`` on ``pairs``, in all and by the
    pairs' source (comparison, correction, rating), scored as the cycle scores them."""
    from training.reward import RewardScorer

    scorer = RewardScorer(
        model_dir, batch_size=cfg.score_batch_size, max_length=cfg.max_length, placement=placement
    )
    prompts = [p.prompt for p in pairs]
    chosen = scorer.score(prompts, [p.chosen for p in pairs])
    rejected = scorer.score(prompts, [p.rejected for p in pairs])
    right: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for p, c, r in zip(pairs, chosen, rejected, strict=True):
        total[p.provenance.source] += 1
        right[p.provenance.source] += c > r
    parts = [f"{s} {right[s]}/{n}" for s, n in sorted(total.items())]
    return f"{sum(right.values())}/{len(pairs)} ({', '.join(parts)})"


if __name__ == "__main__":
    raise SystemExit(main())
