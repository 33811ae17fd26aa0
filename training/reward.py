"""The reward model: TRL's RewardTrainer on a sequence-classification head
(``num_labels=1``) over the policy's base, and a scorer for replies."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch.nn import ModuleList

from training import distributed
from training.device import Placement, trl_arguments
from training.errors import TrainingError
from training.grounding import fit_weight, grounding, load_weight, save_weight
from training.readout import CONFIG_KEY as READOUT_KEY
from training.readout import RepliesMean, reply_marker, saved_readout
from training.reward_config import RewardStageConfig
from training.snapshot import Messages, Pair
from training.truncation import cut_messages, prompt_tokens

logger = logging.getLogger(__name__)

Scoring = Callable[[Sequence[Messages], Sequence[str]], list[float]]
# Two replies to each prompt scored together (``RewardScorer.score_pairs``).
PairScoring = Callable[
    [Sequence[Messages], Sequence[str], Sequence[str]], tuple[list[float], list[float]]
]


@dataclass
class RewardResult:
    model_dir: Path
    heldout_accuracy: float
    heldout_pairs: int
    train_metrics: dict[str, Any]


class RewardScorer:
    """Scores (prompt, reply) pairs with a trained reward model, on ``placement``'s
    device, in fp32 (:attr:`~training.device.Placement.score_dtype`)."""

    def __init__(
        self,
        model_dir: Path,
        *,
        batch_size: int = 16,
        max_length: int = 512,
        placement: Placement | None = None,
        pack_pairs: bool = True,
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from training.shared_prompt import PackedPairs

        self.placement = placement or Placement.resolve()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=1, dtype=self.placement.score_dtype
        ).to(self.placement.device)
        self.model.eval().requires_grad_(False)
        # Where the model reads a reply's score, as it was trained (training.readout).
        self.reply_marker = (
            reply_marker(self.tokenizer) if saved_readout(self.model) == "mean" else None
        )
        self.read = (
            self.model if self.reply_marker is None else RepliesMean(self.model, self.reply_marker)
        )
        self.batch_size = batch_size
        self.max_length = max_length
        self.grounding_weight = load_weight(model_dir)
        # Two replies to one prompt are read as one sequence, the prompt once, as the
        # reward model trained (``pack_pairs``); an attention that cannot take the mask
        # reads them one at a time.
        self.packed: PackedPairs | None = None
        if pack_pairs:
            try:
                self.packed = PackedPairs(self.model, "scores", self.reply_marker)
            except TrainingError as e:
                logger.info("reward scorer reads pairs unpacked: %s", e)

    @classmethod
    def for_stage(
        cls, model_dir: Path, config: RewardStageConfig, placement: Placement | None = None
    ) -> RewardScorer:
        """A scorer that reads replies as the stage of ``config`` trained the model: its
        ``max_length`` and ``pack_pairs``, and its ``score_batch_size``."""
        return cls(
            model_dir,
            batch_size=config.score_batch_size,
            max_length=config.max_length,
            placement=placement,
            pack_pairs=config.pack_pairs,
        )

    @torch.no_grad()
    def score(self, prompts: Sequence[Messages], replies: Sequence[str]) -> list[float]:
        """The model's score of each reply, plus the grounding term times its weight when
        one was saved with the model (``training.grounding``)."""
        return self._plus_grounding(prompts, replies, self.model_scores(prompts, replies))

    def _plus_grounding(
        self, prompts: Sequence[Messages], replies: Sequence[str], scores: list[float]
    ) -> list[float]:
        """``scores`` plus the grounding term times its weight, when one was saved."""
        if not self.grounding_weight:
            return scores
        terms = self.grounding_terms(prompts, replies)
        return [s + self.grounding_weight * g for s, g in zip(scores, terms, strict=True)]

    def _ids(self, prompt: Messages, reply: str) -> list[int]:
        return encode(self.tokenizer, prompt, reply, self.max_length)

    @torch.no_grad()
    def model_scores(self, prompts: Sequence[Messages], replies: Sequence[str]) -> list[float]:
        """The learned model's score alone."""
        ids = [self._ids(p, r) for p, r in zip(prompts, replies, strict=True)]
        self.tokenizer.padding_side = "right"
        out: list[float] = []
        for start in range(0, len(ids), self.batch_size):
            batch = self.tokenizer.pad(
                {"input_ids": ids[start : start + self.batch_size]}, return_tensors="pt"
            ).to(self.placement.device)
            out.extend(self.read(**batch).logits[:, 0].float().tolist())
        return out

    @torch.no_grad()
    def score_pairs(
        self, prompts: Sequence[Messages], first: Sequence[str], second: Sequence[str]
    ) -> tuple[list[float], list[float]]:
        """:meth:`score` of two replies to each prompt (``first[i]`` and ``second[i]``
        to ``prompts[i]``)."""
        a, b = self.model_scores_pairs(prompts, first, second)
        return self._plus_grounding(prompts, first, a), self._plus_grounding(prompts, second, b)

    @torch.no_grad()
    def model_scores_pairs(
        self, prompts: Sequence[Messages], first: Sequence[str], second: Sequence[str]
    ) -> tuple[list[float], list[float]]:
        """The learned model's scores of two replies to each prompt, as
        :meth:`model_scores` gives them to float rounding. Packed, each pair is one
        sequence, their shared beginning (the prompt) read once
        (``training.shared_prompt``): on the demo's pairs about 0.6x the tokens. Pairs
        are batched shortest first, so that a batch pads little."""
        if self.packed is None:
            return self.model_scores(prompts, first), self.model_scores(prompts, second)
        together = zip(prompts, first, second, strict=True)
        rows = [(self._ids(p, a), self._ids(p, b)) for p, a, b in together]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
        scores: dict[int, tuple[float, float]] = {}
        self.tokenizer.padding_side = "right"  # PackedPairs reads lengths off the mask
        step = max(1, self.batch_size // 2)  # a pair is two conversations
        for start in range(0, len(order), step):
            batch_of = order[start : start + step]
            batch = self.tokenizer.pad(
                {"input_ids": [rows[i][0] for i in batch_of] + [rows[i][1] for i in batch_of]},
                return_tensors="pt",
            ).to(self.placement.device)
            out = self.packed(batch["input_ids"], batch["attention_mask"]).logits[:, 0]
            values = out.float().tolist()
            for j, i in enumerate(batch_of):
                scores[i] = (values[j], values[len(batch_of) + j])
        return [scores[i][0] for i in range(len(rows))], [scores[i][1] for i in range(len(rows))]

    def grounding_terms(self, prompts: Sequence[Messages], replies: Sequence[str]) -> list[float]:
        """The grounding term of each reply, on the prompt as the model reads it."""
        return [
            grounding(read_messages(self.tokenizer, p, r, self.max_length), r)
            for p, r in zip(prompts, replies, strict=True)
        ]

    def accuracy(self, pairs: Sequence[Pair]) -> float:
        """Fraction of pairs whose chosen reply scores above the rejected one."""
        return share_right(_pair_margins(pairs, self.score_pairs))

    def model_margins(self, pairs: Sequence[Pair]) -> list[float]:
        """The learned model's chosen minus rejected score, one per pair, each pair read
        as one sequence (:meth:`model_scores_pairs`)."""
        return _pair_margins(pairs, self.model_scores_pairs)

    @staticmethod
    def margins(pairs: Sequence[Pair], score: Scoring) -> list[float]:
        """Chosen minus rejected, by ``score`` (the scorer's ``score``, ``model_scores`` or
        ``grounding_terms``), one per pair, each reply read alone."""
        prompts = [p.prompt for p in pairs]
        chosen = score(prompts, [p.chosen for p in pairs])
        rejected = score(prompts, [p.rejected for p in pairs])
        return [c - r for c, r in zip(chosen, rejected, strict=True)]


def _pair_margins(pairs: Sequence[Pair], score_pairs: PairScoring) -> list[float]:
    chosen, rejected = score_pairs(
        [p.prompt for p in pairs], [p.chosen for p in pairs], [p.rejected for p in pairs]
    )
    return [c - r for c, r in zip(chosen, rejected, strict=True)]


def share_right(margins: Sequence[float]) -> float:
    """Fraction of pairs whose margin (chosen minus rejected) is positive (nan: none)."""
    return sum(m > 0 for m in margins) / len(margins) if margins else float("nan")


def encode(
    tokenizer: Any, prompt: Messages, reply: str, max_length: int | None = None
) -> list[int]:
    """The token ids the reward model reads for ``prompt`` and ``reply``, at most
    ``max_length``. A long prompt is cut by whole messages first
    (``training.truncation.fit_messages``: older turns, then the least relevant
    sources), so the system header, the question, the best sources and the reply
    stay; only a prompt that still does not fit is cut from the left. Training and
    scoring both read pairs this way."""
    return _read(tokenizer, prompt, reply, max_length)[1]


def read_messages(
    tokenizer: Any, prompt: Messages, reply: str, max_length: int | None = None
) -> Messages:
    """The messages of ``prompt`` that the reward model reads beside ``reply`` at
    ``max_length`` (see :func:`encode`): all of them when the conversation fits."""
    return _read(tokenizer, prompt, reply, max_length)[0]


def _read(
    tokenizer: Any, prompt: Messages, reply: str, max_length: int | None
) -> tuple[Messages, list[int]]:
    ids = conversation_ids(tokenizer, prompt, reply)
    if max_length is None or len(ids) <= max_length:
        return prompt, ids
    reply_cost = len(ids) - prompt_tokens(tokenizer, prompt)
    cut, _ = cut_messages(tokenizer, prompt, max(max_length - reply_cost, 1))
    return cut, conversation_ids(tokenizer, cut, reply)[-max_length:]  # left cut if still long


def conversation_ids(tokenizer: Any, prompt: Messages, reply: str) -> list[int]:
    """The token ids of ``prompt`` and ``reply`` in the chat template, uncut."""
    text = tokenizer.apply_chat_template(
        [*prompt, {"role": "assistant", "content": reply}], tokenize=False
    )
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids


def train_reward_model(
    base_dir: Path,
    train_pairs: Sequence[Pair],
    heldout_pairs: Sequence[Pair],
    out_dir: Path,
    config: RewardStageConfig,
    *,
    seed: int = 0,
    progress: bool = True,
    placement: Placement | None = None,
    init_dir: Path | None = None,
) -> RewardResult:
    """Train a reward model on ``train_pairs``; report pairwise accuracy on ``heldout_pairs``.

    It reads with ``base_dir``'s tokenizer and starts from ``init_dir``'s weights (a
    reward model over the same base, :func:`base_mismatch`) or, by default, from
    ``base_dir``'s under a new score head. Under ``accelerate launch`` every rank
    trains (data parallel); rank 0 saves."""
    from transformers import AutoTokenizer

    placement = placement or Placement.resolve()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if not train_pairs:
        raise TrainingError("no training pairs for the reward model")
    slice_pairs = train_pairs
    train_pairs = sample_pairs(train_pairs, config.max_train_pairs, seed)
    rows = _token_rows(tokenizer, train_pairs, config.max_length)
    model_dir = out_dir / "model"
    trainer, training_loss = _fit(
        init_dir or base_dir,
        tokenizer,
        rows,
        out_dir,
        config,
        seed=seed,
        progress=progress,
        placement=placement,
    )
    trainer.save_model(str(model_dir))  # rank 0 alone writes
    if distributed.is_main():
        tokenizer.save_pretrained(model_dir)
    distributed.barrier()
    scorer = RewardScorer.for_stage(model_dir, config, placement)
    learned = scorer.model_margins(heldout_pairs)
    terms = [0.0] * len(learned)
    grounding_metrics: dict[str, Any] = {}
    if config.grounding is not None:
        fit_on = grounding_fit_pairs(slice_pairs, train_pairs)
        scorer.grounding_weight = _grounding_weight(scorer, fit_on, config.grounding)
        if distributed.is_main():
            save_weight(model_dir, scorer.grounding_weight)
        distributed.barrier()
        terms = scorer.margins(heldout_pairs, scorer.grounding_terms)
        grounding_metrics = {
            "grounding_weight": scorer.grounding_weight,
            "grounding_fit_pairs": len(fit_on) if config.grounding == "fit" else 0,
            "model_heldout_accuracy": share_right(learned),
        }
        logger.info(
            "reward model: the learned score alone orders %.3f of the held-out pairs right;"
            " the sum adds %s x the grounding term (%s)",
            share_right(learned),
            scorer.grounding_weight,
            "fixed" if config.grounding != "fit" else f"fitted on {len(fit_on)} pairs",
        )
    w = scorer.grounding_weight
    accuracy = share_right([m + w * g for m, g in zip(learned, terms, strict=True)])
    logger.info("reward model: held-out accuracy %.3f on %d pairs", accuracy, len(heldout_pairs))
    history = [h for h in trainer.state.log_history if "loss" in h]
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return RewardResult(
        model_dir=model_dir,
        heldout_accuracy=accuracy,
        heldout_pairs=len(heldout_pairs),
        train_metrics={
            "train_pairs": len(train_pairs),
            "trainable_params": trainable,
            "train_loss": training_loss,
            "train_accuracy": history[-1].get("accuracy") if history else None,
            "loss_curve": [h["loss"] for h in history],
            **grounding_metrics,
        },
    )


MIN_FIT_PAIRS = 16


def grounding_fit_pairs(slice_pairs: Sequence[Pair], trained: Sequence[Pair]) -> list[Pair]:
    """The pairs the grounding weight is fitted on: those of the training slice that the
    model did not train on (``max_train_pairs`` left them out), where its margins are out
    of sample, not the overconfident ones of its own training pairs; the whole slice when
    fewer than :data:`MIN_FIT_PAIRS` were left out. Never a held-out pair."""
    seen = {id(p) for p in trained}
    unseen = [p for p in slice_pairs if id(p) not in seen]
    return unseen if len(unseen) >= MIN_FIT_PAIRS else list(slice_pairs)


def _grounding_weight(
    scorer: RewardScorer, pairs: Sequence[Pair], setting: float | Literal["fit"]
) -> float:
    """The weight of the grounding term: ``setting``, or with "fit" the one that orders
    the most of ``pairs`` (:func:`grounding_fit_pairs`) right."""
    if setting != "fit":
        return float(setting)
    return fit_weight(scorer.model_margins(pairs), scorer.margins(pairs, scorer.grounding_terms))


# Where a model's base keeps its transformer blocks: ``layers`` in Llama-style models
# (SmolLM2, the tiny test model), ``h`` in GPT-2-style ones.
_BLOCK_LISTS = ("layers", "h")

_SHAPE = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def base_mismatch(model_dir: Path, parent_dir: Path) -> str | None:
    """Why the reward model in ``model_dir`` cannot start a reward model over the policy
    in ``parent_dir`` (None: it can): not a one-label reward model, another architecture
    or shape, or another tokenizer (vocabulary or chat template)."""
    from transformers import AutoConfig, AutoTokenizer

    rm, parent = AutoConfig.from_pretrained(model_dir), AutoConfig.from_pretrained(parent_dir)
    if rm.num_labels != 1 or not any(
        a.endswith("ForSequenceClassification") for a in rm.architectures or []
    ):
        return f"{model_dir} is not a one-label reward model"
    shape = [k for k in _SHAPE if getattr(rm, k, None) != getattr(parent, k, None)]
    if shape:
        return f"its base differs from the parent's ({', '.join(shape)})"
    rm_tok, parent_tok = (
        AutoTokenizer.from_pretrained(model_dir),
        AutoTokenizer.from_pretrained(parent_dir),
    )
    if rm_tok.get_vocab() != parent_tok.get_vocab():
        return "its tokenizer's vocabulary differs from the parent's"
    if rm_tok.chat_template != parent_tok.chat_template:
        return "its chat template differs from the parent's"
    return None


def sample_pairs(pairs: Sequence[Pair], limit: int | None, seed: int) -> Sequence[Pair]:
    """At most ``limit`` pairs: a seeded sample, kept in the snapshot's order."""
    if limit is None or len(pairs) <= limit:
        return pairs
    picked = sorted(random.Random(seed).sample(range(len(pairs)), limit))
    logger.info(
        "reward model: training on a sample of %d of %d pairs (max_train_pairs)",
        len(picked),
        len(pairs),
    )
    return [pairs[i] for i in picked]


def _token_rows(tokenizer: Any, pairs: Sequence[Pair], max_length: int) -> list[dict[str, Any]]:
    """RewardTrainer's rows (``chosen_ids``, ``rejected_ids``), each cut to ``max_length``
    (see ``encode``)."""
    rows, cut = [], 0
    for p in pairs:
        chosen, rejected = (
            conversation_ids(tokenizer, p.prompt, p.chosen),
            conversation_ids(tokenizer, p.prompt, p.rejected),
        )
        if max(len(chosen), len(rejected)) > max_length:
            cut += 1
            chosen = encode(tokenizer, p.prompt, p.chosen, max_length)
            rejected = encode(tokenizer, p.prompt, p.rejected, max_length)
        rows.append({"chosen_ids": chosen, "rejected_ids": rejected})
    if cut:
        logger.info(
            "reward model: %d of %d pairs are longer than %d tokens; their prompts are cut"
            " by whole messages (least relevant sources first; the replies are kept)",
            cut,
            len(pairs),
            max_length,
        )
    return rows


def _fit(
    init_dir: Path,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    out_dir: Path,
    config: RewardStageConfig,
    *,
    seed: int,
    progress: bool,
    placement: Placement,
) -> tuple[Any, float]:
    """TRL's RewardTrainer on a one-label head over ``init_dir`` (a new head on a
    policy, or a reward model's own): the trainer (its model and log history) and the
    training loss."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, set_seed
    from trl import RewardConfig, RewardTrainer

    from training.shared_prompt import MeanReadoutRewardTrainer, SharedPromptRewardTrainer

    # The new score head is drawn as the model loads, before the trainer seeds anything:
    # seeded here, a cycle's reward model is the same on a rerun, not partly luck.
    set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        init_dir, num_labels=1, dtype=placement.train_dtype
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    setattr(model.config, READOUT_KEY, config.readout)  # saved with the weights
    extra: dict[str, Any] = {}
    if config.train_layers is not None:
        freeze_lower_layers(model, config.train_layers)
        # RewardConfig checkpoints by default, and checkpointing makes transformers ask for
        # gradients at the embeddings' output, which would carry the backward pass through
        # every frozen block; without it the frozen blocks keep no activations anyway.
        extra["gradient_checkpointing"] = False
    args = trl_arguments(
        RewardConfig,
        placement,
        output_dir=out_dir / "trainer",
        step=config,
        epochs=config.epochs,
        learning_rate=config.learning_rate,
        max_length=config.max_length,
        seed=seed,
        progress=progress,
        **extra,
    )
    marker = reply_marker(tokenizer) if config.readout == "mean" else None
    common = {
        "model": model,
        "args": args,
        "train_dataset": Dataset.from_list(rows),
        "processing_class": tokenizer,
    }
    if config.pack_pairs:
        trainer: RewardTrainer = SharedPromptRewardTrainer(**common, reply_marker=marker)
    elif marker is not None:
        trainer = MeanReadoutRewardTrainer(**common, reply_marker=marker)
    else:
        trainer = RewardTrainer(**common)
    result = trainer.train()
    return trainer, float(result.training_loss)


def freeze_lower_layers(model: Any, train_layers: int) -> int:
    """Leave only the top ``train_layers`` transformer blocks of ``model`` (a
    ``...ForSequenceClassification``), its final norm and its score head trainable: the
    embeddings and the lower blocks get ``requires_grad`` False. Returns the number of
    trainable parameters."""
    base = model.base_model
    blocks = next(
        (b for b in (getattr(base, n, None) for n in _BLOCK_LISTS) if isinstance(b, ModuleList)),
        None,
    )
    if blocks is None:
        raise TrainingError(
            f"train_layers: {type(model).__name__} has no transformer block list"
            f" ({' or '.join(f'{type(base).__name__}.{n}' for n in _BLOCK_LISTS)});"
            " leave train_layers unset to train every layer"
        )
    if train_layers > len(blocks):
        raise TrainingError(
            f"train_layers is {train_layers}, but {type(model).__name__} has only"
            f" {len(blocks)} transformer blocks"
        )
    in_blocks = {id(p) for p in blocks.parameters()}
    embeddings = {
        id(p) for m in base.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()
    }
    for p in base.parameters():  # the final norm (whatever is neither a block nor an embedding)
        p.requires_grad_(id(p) not in in_blocks and id(p) not in embeddings)
    blocks[len(blocks) - train_layers :].requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        "reward model: training the top %d of %d blocks (%d parameters)",
        train_layers,
        len(blocks),
        trainable,
    )
    return trainable
