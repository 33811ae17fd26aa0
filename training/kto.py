"""Kahneman-Tversky optimisation on unpaired thumbs (TRL KTOTrainer).

A reply every thumbs rater liked is desirable, one every rater disliked is not
(``feedback.pairs.load_kto_examples``); the reference is the starting policy."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training import distributed
from training.device import Placement, trl_arguments
from training.kto_config import KtoStageConfig
from training.lengths import fitting
from training.snapshot import KtoExample

logger = logging.getLogger(__name__)


def train_kto(
    policy_dir: Path,
    examples: Sequence[KtoExample],
    out_dir: Path,
    config: KtoStageConfig,
    *,
    seed: int = 0,
    progress: bool = True,
    placement: Placement | None = None,
) -> dict[str, Any]:
    """KTO from ``policy_dir`` on ``examples``; save to ``out_dir``. With fewer than
    ``min_examples`` that fit (or no verdict of one kind) nothing is trained or saved
    (``kto_examples`` is 0)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import KTOConfig, KTOTrainer

    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    kept = fitting(tokenizer, examples, config.max_length, lambda e: [e.completion])
    labels = {e.label for e in kept}
    if len(kept) < config.min_examples or len(labels) < 2:
        logger.warning(
            "KTO skipped: %d of %d verdicts fit max_length %d (need %d, both kinds)",
            len(kept), len(examples), config.max_length, config.min_examples,
        )  # fmt: skip
        return {"kto_examples": 0}
    placement = placement or Placement.resolve()
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=placement.train_dtype)
    rows = [
        {
            "prompt": e.prompt,
            "completion": [{"role": "assistant", "content": e.completion}],
            "label": e.label,
        }
        for e in kept
    ]
    args = trl_arguments(
        KTOConfig,
        placement,
        output_dir=out_dir.parent / "kto-trainer",
        batch_size=config.batch_size,
        epochs=config.epochs,
        learning_rate=config.learning_rate,
        max_length=config.max_length,
        seed=seed,
        progress=progress,
        beta=config.beta,
        desirable_weight=config.desirable_weight,
        undesirable_weight=config.undesirable_weight,
    )
    trainer = KTOTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    result = trainer.train()
    trainer.save_model(str(out_dir))  # rank 0 alone writes
    if distributed.is_main():
        tokenizer.save_pretrained(out_dir)
    distributed.barrier()
    history = [
        {
            "step": h.get("step", i),
            "loss": h["loss"],
            "mean_score": h.get("rewards/margins", float("nan")),
            "mean_kl": h.get("kl", float("nan")),
        }
        for i, h in enumerate(trainer.state.log_history)
        if "loss" in h
    ]
    desirable = sum(e.label for e in kept)
    logger.info("KTO on %d verdicts (%d desirable)", len(rows), desirable)
    return {
        "kto_examples": len(rows),
        "kto_desirable": desirable,
        "kto_loss": result.training_loss,
        "history": history,
    }
