"""Direct preference optimisation on the pairs (``--algo dpo``, TRL DPOTrainer)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from training import distributed
from training.device import Placement, trl_arguments
from training.dpo_config import DpoStageConfig
from training.errors import TrainingError
from training.lengths import cut_pairs_to_fit
from training.snapshot import Pair

logger = logging.getLogger(__name__)


def train_dpo(
    policy_dir: Path,
    pairs: Sequence[Pair],
    out_dir: Path,
    config: DpoStageConfig,
    *,
    seed: int = 0,
    progress: bool = True,
    placement: Placement | None = None,
) -> list[dict[str, float]]:
    """DPO on ``pairs`` from ``policy_dir`` (the reference is its starting weights).

    A pair longer than ``max_length`` has its prompt cut by whole messages so that both
    replies stay whole (TRL would cut the replies' ends); one that still does not fit
    is left out."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from training.shared_prompt import SharedPromptDPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    fitted = cut_pairs_to_fit(tokenizer, pairs, config.max_length)
    logger.info(
        "DPO: %d of %d pairs fit max_length %d, %d of them with their prompts cut; %d left out",
        len(fitted.kept),
        len(pairs),
        config.max_length,
        fitted.truncated,
        fitted.too_long,
    )
    if not fitted.kept:
        raise TrainingError(f"DPO: none of {len(pairs)} pairs fits max_length {config.max_length}")
    placement = placement or Placement.resolve()
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=placement.train_dtype)
    rows = [
        {
            "prompt": p.prompt,
            "chosen": [{"role": "assistant", "content": p.chosen}],
            "rejected": [{"role": "assistant", "content": p.rejected}],
        }
        for p in fitted.kept
    ]
    args = trl_arguments(
        DPOConfig,
        placement,
        output_dir=out_dir.parent / "dpo-trainer",
        step=config,
        epochs=config.epochs,
        learning_rate=config.learning_rate,
        max_length=config.max_length,
        seed=seed,
        progress=progress,
        beta=config.beta,
    )
    trainer_class = SharedPromptDPOTrainer if config.pack_pairs else DPOTrainer
    trainer = trainer_class(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    trainer.train()
    trainer.save_model(str(out_dir))  # rank 0 alone writes
    if distributed.is_main():
        tokenizer.save_pretrained(out_dir)
    distributed.barrier()
    history = [
        {
            "step": h.get("step", i),
            "loss": h["loss"],
            "mean_score": h.get("rewards/margins", float("nan")),
            "mean_kl": float("nan"),
        }
        for i, h in enumerate(trainer.state.log_history)
        if "loss" in h
    ]
    logger.info("DPO on %d pairs: %d steps", len(rows), len(history))
    return history
