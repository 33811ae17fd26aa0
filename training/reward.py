"""The reward model: TRL's RewardTrainer on a sequence-classification head
(``num_labels=1``) over the policy's base, and a scorer for replies."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from training.errors import TrainingError
from training.lengths import fitting
from training.reward_config import RewardStageConfig
from training.snapshot import Messages, Pair

logger = logging.getLogger(__name__)


@dataclass
class RewardResult:
    model_dir: Path
    heldout_accuracy: float
    heldout_pairs: int
    train_metrics: dict[str, Any]


class RewardScorer:
    """Scores (prompt, reply) pairs with a trained reward model."""

    def __init__(self, model_dir: Path, *, batch_size: int = 16, max_length: int = 512) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
        self.model.eval().requires_grad_(False)
        self.batch_size = batch_size
        self.max_length = max_length

    @torch.no_grad()
    def score(self, prompts: Sequence[Messages], replies: Sequence[str]) -> list[float]:
        texts = [
            self.tokenizer.apply_chat_template(
                [*p, {"role": "assistant", "content": r}], tokenize=False
            )
            for p, r in zip(prompts, replies, strict=True)
        ]
        self.tokenizer.padding_side = "right"
        self.tokenizer.truncation_side = "left"
        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
                add_special_tokens=False,
            )
            out.extend(self.model(**enc).logits[:, 0].float().tolist())
        return out

    def accuracy(self, pairs: Sequence[Pair]) -> float:
        """Fraction of pairs whose chosen reply scores above the rejected one."""
        if not pairs:
            return float("nan")
        prompts = [p.prompt for p in pairs]
        chosen = self.score(prompts, [p.chosen for p in pairs])
        rejected = self.score(prompts, [p.rejected for p in pairs])
        return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(pairs)


def _rows(pairs: Sequence[Pair]) -> list[dict[str, Any]]:
    return [
        {
            "prompt": p.prompt,
            "chosen": [{"role": "assistant", "content": p.chosen}],
            "rejected": [{"role": "assistant", "content": p.rejected}],
        }
        for p in pairs
    ]


def train_reward_model(
    base_dir: Path,
    train_pairs: Sequence[Pair],
    heldout_pairs: Sequence[Pair],
    out_dir: Path,
    config: RewardStageConfig,
    *,
    seed: int = 0,
    progress: bool = True,
) -> RewardResult:
    """Train a reward model on ``train_pairs``; report pairwise accuracy on ``heldout_pairs``."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    kept = fitting(tokenizer, train_pairs, config.max_length, lambda p: [p.chosen, p.rejected])
    if not kept:
        raise TrainingError(
            f"none of the {len(train_pairs)} training pairs fits the reward model's max_length"
            f" ({config.max_length} tokens); use a larger size preset or shorter prompts"
        )
    if len(kept) < len(train_pairs):
        logger.warning(
            "reward model: %d of %d pairs are longer than %d tokens and left out",
            len(train_pairs) - len(kept),
            len(train_pairs),
            config.max_length,
        )
    if config.max_train_pairs is not None and len(kept) > config.max_train_pairs:
        # A seeded sample, kept in the snapshot's order.
        chosen = sorted(random.Random(seed).sample(range(len(kept)), config.max_train_pairs))
        logger.info(
            "reward model: training on a sample of %d of %d pairs (max_train_pairs)",
            len(chosen),
            len(kept),
        )
        kept = [kept[i] for i in chosen]
    train_pairs = kept
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = RewardConfig(
        output_dir=str(out_dir / "trainer"),
        per_device_train_batch_size=config.batch_size,
        num_train_epochs=config.epochs,
        learning_rate=config.learning_rate,
        max_length=config.max_length,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=seed,
        disable_tqdm=not progress,
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(_rows(train_pairs)),
        processing_class=tokenizer,
    )
    result = trainer.train()
    model_dir = out_dir / "model"
    trainer.save_model(str(model_dir))
    tokenizer.save_pretrained(model_dir)
    scorer = RewardScorer(
        model_dir, batch_size=config.score_batch_size, max_length=config.max_length
    )
    accuracy = scorer.accuracy(heldout_pairs)
    logger.info("reward model: held-out accuracy %.3f on %d pairs", accuracy, len(heldout_pairs))
    history = [h for h in trainer.state.log_history if "loss" in h]
    return RewardResult(
        model_dir=model_dir,
        heldout_accuracy=accuracy,
        heldout_pairs=len(heldout_pairs),
        train_metrics={
            "train_pairs": len(train_pairs),
            "train_loss": result.training_loss,
            "train_accuracy": history[-1].get("accuracy") if history else None,
            "loss_curve": [h["loss"] for h in history],
        },
    )
