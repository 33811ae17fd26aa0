"""Probe a policy or reward-model recipe on the demo's stored feedback, without the API.

``python -m infra.demo.probe --sft-epochs 3 --sft-lr 1e-4`` fine-tunes the base
model on the SFT examples a finished feedback phase left in Postgres (corrections
and top-rated replies), then asks the held-out questions of the base and of the
tuned model, greedily, and prints the employees' yardstick (exact figure, cites)
before and after with Wilson intervals and the exact McNemar test, and the KL of
the tuned model to the base as the KL gate measures it (``--kl``), and the
golden-regression and safety gates of the tuned model against the base (``--gates``).
``--contrast-lr 5e-6`` then runs the refusal-contrast stage on the SFT model
(``training.contrast``: an answer beats a refusal where SFT answered, a refusal
beats compliance where it declined) and measures that instead.

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

``python -m infra.demo.probe --stage ppo --policy-dir RUN/sft --reward-dir
RUN/reward/model`` runs the cycle's PPO stage alone from a run's models
(``infra.demo.ppo_probe``) and prints the yardstick before and after it.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from rich.console import Console

from infra.demo.probe_checks import held_out_evaluation, print_gate_figures
from infra.demo.questions import load_questions, split
from infra.demo.settings import DemoSettings
from infra.demo.yardstick import compare
from ratchet.cli import report_service_problem
from ratchet.db import connect
from training.contrast import contrast_pairs
from training.contrast_config import ContrastStageConfig
from training.cycle_config import TrainCycleConfig
from training.cycle_stages import REWARD_KINDS
from training.device import Placement
from training.dpo import train_dpo
from training.kb_reader import kb_grounder
from training.refusals import is_refusal
from training.settings import TrainingSettings
from training.sft import train_sft
from training.sft_config import SftStageConfig
from training.snapshot import Snapshot, StoreSource, build_snapshot
from training.suites_io import suite_prompts

logger = logging.getLogger(__name__)


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
    parser.add_argument("--stage", choices=("sft", "reward", "pairs", "ppo"), default="sft")
    parser.add_argument("--sft-epochs", type=float, default=3.0)
    parser.add_argument("--sft-lr", type=float, default=1e-4)
    parser.add_argument("--sft-batch", type=int, default=4)
    parser.add_argument(
        "--refusal-weight", type=float, default=1.0, help="repeat the declining examples"
    )
    parser.add_argument(
        "--contrast-lr", type=float, default=None, help="run the contrast stage after SFT"
    )
    parser.add_argument("--contrast-epochs", type=float, default=None)
    parser.add_argument("--contrast-beta", type=float, default=None)
    parser.add_argument("--contrast-max-pairs", type=int, default=None)
    parser.add_argument(
        "--no-pack-pairs",
        dest="pack_pairs",
        action="store_false",
        default=argparse.SUPPRESS,
        help="the reward model's and contrast's pairs as TRL's two sequences, not packed",
    )
    parser.add_argument("--tokens", type=int, default=None, help="reply length (the demo's)")
    parser.add_argument("--kl", action="store_true", help="also measure the KL gate's figure")
    parser.add_argument(
        "--kl-prompts",
        choices=("golden", "feedback"),
        default="golden",
        help="the KL's prompts: the held-out golden questions, grounded by training's reader"
        " (golden), or the held-out slice's feedback prompts as served, which the cycle's"
        " KL gate samples (feedback)",
    )
    parser.add_argument(
        "--gates", action="store_true", help="also run the golden-regression and safety gates"
    )
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
        "--readout",
        dest="readout",
        choices=("last", "mean"),
        default=argparse.SUPPRESS,
        help="where the reward model reads a reply's score (training/readout.py)",
    )
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
    rm.add_argument(
        "--seed",
        type=int,
        default=argparse.SUPPRESS,
        help="the cycle's seed (the sample of training pairs, the new score head; not the slicing)",
    )
    for flag, dest in (
        ("--heldout-fraction", "heldout_fraction"),
        ("--judge-fraction", "judge_fraction"),
    ):
        rm.add_argument(flag, dest=dest, type=float, default=argparse.SUPPRESS)
    ppo = parser.add_argument_group("--stage ppo (unset: the demo preset's own setting)")
    ppo.add_argument("--policy-dir", type=Path, default=None, help="the policy PPO starts from")
    ppo.add_argument("--reward-dir", type=Path, default=None, help="the reward model it uses")
    ppo.add_argument(
        "--ppo-grounding",
        default=None,
        help="the grounding term's weight (a number, or fit); unset: the"
        " weight saved with the reward model, if any",
    )
    ppo.add_argument("--ppo-lr", type=float, default=None)
    ppo.add_argument("--ppo-steps", type=int, default=None)
    ppo.add_argument("--ppo-epochs", type=int, default=None)
    ppo.add_argument("--ppo-kl-coef", type=float, default=None, help="init_kl_coef")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        return _probe(args)
    except Exception as exc:
        return report_service_problem("probe", exc)


def _probe(args: argparse.Namespace) -> int:
    if args.stage == "ppo":
        from infra.demo.ppo_probe import probe_ppo

        return probe_ppo(args, Console(), TrainingSettings())
    if args.stage in ("reward", "pairs"):
        from infra.demo.reward_probe import probe_pairs, probe_reward

        probe = probe_reward if args.stage == "reward" else probe_pairs
        return probe(args, Console(), TrainingSettings())
    console = Console()
    demo = DemoSettings()
    settings = TrainingSettings()
    placement = Placement.resolve(settings.train_device, settings.train_precision)
    base = (demo.model or Path("models/base")).resolve()
    tokens = args.tokens or demo.reply_tokens()
    _, held_out = split(
        load_questions(demo.kb_dir), asked=demo.n_asked(), held_out=demo.n_held_out()
    )
    with connect(settings.database_url) as conn:
        snapshot = build_snapshot(StoreSource(), conn, since=None)
        ground = kb_grounder(conn)
        suite_ground = kb_grounder(conn, k=settings.retrieval_k)  # as the cycle's gates
    if ground is None:
        console.print("[red]the knowledge base is empty[/]: run `make demo` up to its feedback")
        return 2
    if not snapshot.sft_examples:
        console.print("[red]no SFT examples in the feedback store[/]: run `make demo` first")
        return 2
    prompts = suite_prompts([q.question for q in held_out], ground)
    config = SftStageConfig.model_validate(
        TrainCycleConfig.for_size("demo").sft.model_dump()
        | {
            "min_examples": 1,
            "epochs": args.sft_epochs,
            "learning_rate": args.sft_lr,
            "batch_size": args.sft_batch,
            "refusal_weight": args.refusal_weight,
        }
    )
    examples = config.training_examples(snapshot.sft_examples)
    declining = sum(is_refusal(e.completion) for e in snapshot.sft_examples)
    console.print(
        f"SFT on {len(examples)} examples ({len(snapshot.sft_examples)} stored, {declining}"
        f" declining): {config}; {len(held_out)} held-out"
    )
    before = held_out_evaluation(base, prompts, held_out, tokens)
    with tempfile.TemporaryDirectory(prefix="ratchet-probe-") as tmp:
        out = Path(tmp) / "sft"
        metrics = train_sft(base, examples, out, config, placement=placement)
        console.print(f"SFT: {metrics}")
        if args.contrast_lr is not None:
            out = contrast(args, snapshot, out, Path(tmp) / "contrast", console, placement)
        after = held_out_evaluation(out, prompts, held_out, tokens)
        kl_prompts = (
            [p.prompt for p in snapshot.heldout_pairs] if args.kl_prompts == "feedback" else prompts
        )
        print_gate_figures(
            console,
            base,
            out,
            kl_prompts,
            settings,
            suite_ground,
            placement,
            kl=args.kl,
            gates=args.gates,
        )
    for change in compare(before, after):
        console.print(f"{change.criterion:>12}: {change.line()}")
    declined = [sum(is_refusal(r.text) for _, r in m.rows) for m in (before, after)]
    console.print(f"held-out questions declined: {declined[0]} -> {declined[1]}")
    for (q, b), (_, a) in list(zip(before.rows, after.rows, strict=True))[:3]:
        console.print(
            f"[bold]{q.question}[/]\n  before: {b.text[:160]!r}\n  after:  {a.text[:160]!r}"
        )
    return 0


def contrast(
    args: argparse.Namespace,
    snapshot: Snapshot,
    sft_dir: Path,
    out: Path,
    console: Console,
    placement: Placement,
) -> Path:
    """The contrast stage on the SFT model ``sft_dir``, as the cycle runs it (the demo
    preset's settings, changed by the options given, on ``placement``); the model it
    trained."""
    changes = {
        "learning_rate": args.contrast_lr,
        "epochs": args.contrast_epochs,
        "beta": args.contrast_beta,
        "max_pairs": args.contrast_max_pairs,
        "pack_pairs": getattr(args, "pack_pairs", None),
    }
    config = ContrastStageConfig.model_validate(
        TrainCycleConfig.for_size("demo").contrast.model_dump()
        | {k: v for k, v in changes.items() if v is not None}
    )
    pairs = contrast_pairs(snapshot.sft_examples, snapshot.train_pairs, max_pairs=config.max_pairs)
    declines = sum(is_refusal(p.chosen) for p in pairs)
    t0 = time.monotonic()
    history = train_dpo(sft_dir, pairs, out, config, placement=placement)
    console.print(
        f"contrast: {len(pairs)} pairs ({declines} where the refusal wins), {config};"
        f" loss {history[0]['loss']:.3f} -> {history[-1]['loss']:.3f},"
        f" {time.monotonic() - t0:.0f} s"
    )
    return out


if __name__ == "__main__":
    raise SystemExit(main())
