"""Supervised fine-tuning on corrections and top-rated replies (TRL SFTTrainer)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training import distributed
from training.device import Placement, trl_arguments
from training.lengths import fitting
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

    Examples longer than ``max_length`` are left out; with fewer than ``min_examples``
    left the stage is skipped (``sft_examples`` is 0 and nothing is saved)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    kept = fitting(tokenizer, examples, config.max_length, lambda e: [e.completion])
    if len(kept) < config.min_examples:
        logger.warning(
            "SFT skipped: %d of %d examples fit max_length %d (need %d)",
            len(kept),
            len(examples),
            config.max_length,
            config.min_examples,
        )
        return {"sft_examples": 0, "sft_too_long": len(examples) - len(kept)}
    examples = kept
    placement = placement or Placement.resolve()
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=placement.train_dtype)
    rows = [
        {"prompt": e.prompt, "completion": [{"role": "assistant", "content": e.completion}]}
        for e in examples
    ]
    args = trl_arguments(
        SFTConfig,
        placement,
        output_dir=out_dir.parent / "sft-trainer",
        batch_size=config.batch_size,
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
    return {"sft_examples": len(rows), "sft_loss": result.training_loss}
