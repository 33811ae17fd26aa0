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
    from transformers import AutoTokenizer

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
    trainer, training_loss = _fit(
        policy_dir, tokenizer, _rows(kept), out_dir, config, seed, progress, placement
    )
    trainer.save_model(str(out_dir))  # rank 0 alone writes
    if distributed.is_main():
        tokenizer.save_pretrained(out_dir)
    distributed.barrier()
    desirable = sum(e.label for e in kept)
    logger.info("KTO on %d verdicts (%d desirable)", len(kept), desirable)
    return {
        "kto_examples": len(kept),
        "kto_desirable": desirable,
        "kto_loss": training_loss,
        "history": _history(trainer.state.log_history),
    }


def _rows(examples: Sequence[KtoExample]) -> list[dict[str, Any]]:
    """KTOTrainer's conversational rows: the prompt, the reply, the verdict."""
    return [
        {
            "prompt": e.prompt,
            "completion": [{"role": "assistant", "content": e.completion}],
            "label": e.label,
        }
        for e in examples
    ]


def _fit(
    policy_dir: Path,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    out_dir: Path,
    config: KtoStageConfig,
    seed: int,
    progress: bool,
    placement: Placement,
) -> tuple[Any, float]:
    """TRL's KTOTrainer from ``policy_dir`` (the reference is the starting policy): the
    trainer and its training loss."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import KTOConfig, KTOTrainer

    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=placement.train_dtype)
    args = trl_arguments(
        KTOConfig,
        placement,
        output_dir=out_dir.parent / "kto-trainer",
        step=config,
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
    return trainer, float(result.training_loss)


def _history(log_history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Per logged step: the loss, the reward margin and the KL (the run page's curves)."""
    return [
        {
            "step": h.get("step", i),
            "loss": h["loss"],
            "mean_score": h.get("rewards/margins", float("nan")),
            "mean_kl": h.get("kl", float("nan")),
        }
        for i, h in enumerate(log_history)
        if "loss" in h
    ]
