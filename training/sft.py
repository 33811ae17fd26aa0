"""Supervised fine-tuning on corrections and top-rated replies (TRL SFTTrainer)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training import distributed
from training.device import Placement, trl_arguments
from training.lengths import cut_to_fit
from training.sft_config import SftStageConfig
from training.snapshot import SftExample

logger = logging.getLogger(__name__)


def train_sft(
    policy_dir: Path,
    examples: Sequence[SftExample],
    out_dir: Path,
    config: SftStageConfig,
    *,
    seed: int = 0,
    progress: bool = True,
    placement: Placement | None = None,
) -> dict[str, Any]:
    """Fine-tune ``policy_dir`` on ``examples`` (loss on the reply only); save to ``out_dir``.

    An example longer than ``max_length`` has its prompt cut by whole messages (the
    least relevant sources first; the system header and the question stay) and is
    left out only if it still does not fit; with fewer than ``min_examples`` left the
    stage is skipped (``sft_examples`` is 0 and nothing is saved). ``sft_truncated``
    and ``sft_too_long`` count the examples cut and left out. It trains on
    ``placement``, in fp32 when ``config.precision`` says so (``sft_precision``)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    fitted = cut_to_fit(tokenizer, examples, config.max_length)
    counts = {"sft_truncated": fitted.truncated, "sft_too_long": fitted.too_long}
    logger.info(
        "SFT: %d of %d examples fit max_length %d, %d of them with their prompts cut"
        " (older turns, then the least relevant sources, dropped); %d left out, too long even so",
        len(fitted.kept),
        len(examples),
        config.max_length,
        fitted.truncated,
        fitted.too_long,
    )
    if len(fitted.kept) < config.min_examples:
        logger.warning(
            "SFT skipped: %d of %d examples fit max_length %d (need %d)",
            len(fitted.kept),
            len(examples),
            config.max_length,
            config.min_examples,
        )
        return {"sft_examples": 0, **counts}
    examples = fitted.kept
    placement = placement or Placement.resolve()
    if config.precision == "fp32":
        placement = placement.in_precision("fp32")
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=placement.train_dtype)
    rows = [
        {"prompt": e.prompt, "completion": [{"role": "assistant", "content": e.completion}]}
        for e in examples
    ]
    args = trl_arguments(
        SFTConfig,
        placement,
        output_dir=out_dir.parent / "sft-trainer",
        step=config,
        epochs=config.epochs,
        learning_rate=config.learning_rate,
        max_length=config.max_length,
        seed=seed,
        progress=progress,
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    result = trainer.train()
    trainer.save_model(str(out_dir))  # rank 0 alone writes
    if distributed.is_main():
        tokenizer.save_pretrained(out_dir)
    distributed.barrier()
    logger.info("SFT on %d examples: loss %.4f", len(rows), result.training_loss)
    return {
        "sft_examples": len(rows),
        **counts,
        "sft_loss": result.training_loss,
        "sft_precision": "bf16" if args.bf16 else "fp32",
    }
