"""Probe a policy recipe on the demo's stored feedback, without the API.

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
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from rich.console import Console

from infra.demo.employees import Evaluation, Reply
from infra.demo.questions import Question, judge, load_questions, split
from infra.demo.settings import DemoSettings
from infra.demo.yardstick import compare
from ratchet.db import connect
from serving.backends.machine import bind_engine_threads, machine_dtype
from training.cycle_config import TrainCycleConfig
from training.evaluate import Policy, mean_kl, unique_prompts
from training.gates import load_thresholds
from training.kb_reader import kb_grounder
from training.settings import TrainingSettings
from training.sft import train_sft
from training.sft_config import SftStageConfig
from training.snapshot import StoreSource, build_snapshot
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.demo.probe", description=__doc__)
    parser.add_argument("--sft-epochs", type=float, default=3.0)
    parser.add_argument("--sft-lr", type=float, default=1e-4)
    parser.add_argument("--sft-batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=None, help="reply length (the demo's)")
    parser.add_argument("--kl", action="store_true", help="also measure the KL gate's figure")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
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
            limit = load_thresholds().kl_max
            console.print(f"KL(tuned || base) per reply: {kl:.1f} nats (the gate allows {limit})")
    for change in compare(before, after):
        console.print(f"{change.criterion:>12}: {change.line()}")
    for (q, b), (_, a) in list(zip(before.rows, after.rows, strict=True))[:3]:
        console.print(
            f"[bold]{q.question}[/]\n  before: {b.text[:160]!r}\n  after:  {a.text[:160]!r}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
