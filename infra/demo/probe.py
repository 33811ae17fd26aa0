"""Probe a policy or reward-model recipe on the demo's stored feedback, without the API.

``python -m infra.demo.probe --sft-epochs 3 --sft-lr 1e-4`` fine-tunes the base
model on the SFT examples a finished feedback phase left in Postgres (corrections
and top-rated replies), then asks the held-out questions of the base and of the
tuned model, greedily, and prints the employees' yardstick (exact figure, cites)
before and after with Wilson intervals and the exact McNemar test, and the KL of
the tuned model to the base as the KL gate measures it (``--kl``), and the
golden-regression and safety gates of the tuned model against the base (``--gates``).

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
(``training/gates.yaml``), its pair counts and its wall time.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

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
from training.gate_results import GateResult
from training.gates import accuracy_gate, golden_regression, load_thresholds, safety_refusals
from training.kb_reader import kb_grounder
from training.reward_config import RewardStageConfig
from training.settings import TrainingSettings
from training.sft import train_sft
from training.sft_config import SftStageConfig
from training.snapshot import StoreSource, build_snapshot
from training.suites_io import Grounder, resolve_suite, suite_prompts

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
        outputs = llm.chat(prompts, SamplingParams(temperature=0.0, max_tokens=tokens))
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


def _count(value: str) -> int | None:
    return None if value == "all" else int(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.demo.probe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--stage", choices=("sft", "reward"), default="sft")
    parser.add_argument("--sft-epochs", type=float, default=3.0)
    parser.add_argument("--sft-lr", type=float, default=1e-4)
    parser.add_argument("--sft-batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=None, help="reply length (the demo's)")
    parser.add_argument("--kl", action="store_true", help="also measure the KL gate's figure")
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.stage == "reward":
        return probe_reward(args, Console(), TrainingSettings())
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
        suite_ground = kb_grounder(conn, k=settings.retrieval_k)  # as the cycle's gates
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
        if args.gates and suite_ground is not None:
            for gate in suite_gates(base, out, settings, suite_ground):
                verdict = "passed" if gate.passed else "FAILED"
                console.print(f"{gate.name} gate {verdict}: {gate.reason} (n = {gate.n})")
    for change in compare(before, after):
        console.print(f"{change.criterion:>12}: {change.line()}")
    for (q, b), (_, a) in list(zip(before.rows, after.rows, strict=True))[:3]:
        console.print(
            f"[bold]{q.question}[/]\n  before: {b.text[:160]!r}\n  after:  {a.text[:160]!r}"
        )
    return 0


def probe_reward(args: argparse.Namespace, console: Console, settings: TrainingSettings) -> int:
    """Train the cycle's reward models (``args.kinds``) on the stored feedback and print
    what the accuracy gates would read of them."""
    config = TrainCycleConfig.for_size(args.size)
    changed = {k: v for k, v in vars(args).items() if k in RewardStageConfig.model_fields}
    config = config.model_copy(
        update={
            kind: RewardStageConfig.model_validate(
                {**getattr(config, kind).model_dump(), **changed}
            )
            for kind in args.kinds
        }
    )
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
    if not snapshot.heldout_pairs:
        console.print("[red]no held-out preference pairs in the store[/]: run `make demo` first")
        return 2
    base = (DemoSettings().model or Path("models/base")).resolve()
    placement = Placement.resolve(settings.train_device, settings.train_precision)
    thresholds = load_thresholds(settings.gates_config)
    floors = {
        "reward": thresholds.reward_accuracy_lower_min,
        "judge": thresholds.judge_accuracy_lower_min,
    }
    with tempfile.TemporaryDirectory(prefix="ratchet-probe-") as tmp:
        for kind in args.kinds:
            console.print(f"{kind}: {getattr(config, kind)}")
            t0 = time.monotonic()
            result = train_reward_kind(
                kind, base, snapshot, Path(tmp), config, progress=False, placement=placement
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
