"""Configuration of the reward-model stage."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from training.readout import Readout
from training.source_weights import SourceWeights
from training.step_config import PairStepShape


class RewardStageConfig(PairStepShape):
    init: Literal["parent", "previous"] = Field(
        default="parent",
        description="Weights to start from: the parent policy's, under a new score head"
        " ('parent'), or the reward model of the same kind (policy RM or judge) that the"
        " latest succeeded run trained ('previous'). 'previous' falls back to the parent,"
        " with a warning and the reason in the run's metrics, when there is none, when its"
        " run sliced the prompts otherwise (heldout_fraction, judge_fraction), or when its"
        " base or tokenizer differ from the parent's. See training/cycle_stages.py.",
    )
    epochs: float = Field(default=1.0, gt=0, description="Passes over the training pairs.")
    learning_rate: float = Field(default=1e-5, gt=0, description="AdamW learning rate.")
    batch_size: int = Field(default=8, ge=1, description="Pairs per optimizer step.")
    max_length: int = Field(
        default=512, ge=16, description="Longer pairs are cut from the left (replies kept)."
    )
    max_train_pairs: int | None = Field(
        default=None,
        ge=1,
        description="Train on at most this many pairs (a seeded sample) so a cycle's time stays "
        "bounded as feedback accumulates; None trains on all.",
    )
    train_layers: int | None = Field(
        default=None,
        ge=1,
        description="Train only the top N transformer blocks, the final norm and the score head;"
        " the embeddings and the lower blocks stay frozen and gradient checkpointing is off, so"
        " the backward pass stops below the lowest trained block (the forward pass stays whole)."
        " None trains every layer. A model"
        " with fewer blocks, or whose blocks are not found, is a TrainingError.",
    )
    grounding: Annotated[float, Field(ge=0)] | Literal["fit"] | None = Field(
        default=None,
        description="Add this weight times the grounding term (the share of a reply's words"
        " found in the sources it was given, training/grounding.py) to the model's score;"
        " 'fit' chooses the weight that orders the most training-slice pairs right. None:"
        " the learned score alone. The policy's reward model only: the judge must leave it"
        " unset.",
    )
    readout: Readout = Field(
        default="last",
        description="Where the model reads a reply's score: at the conversation's last token"
        " ('last', transformers' sequence classification), or as the mean of the score head"
        " over the reply's tokens ('mean'), so that a phrase anywhere in the reply moves the"
        " score through its own positions. Saved in the model's config, so every reader of"
        " the model reads it the same way. See training/readout.py.",
    )
    score_batch_size: int = Field(default=16, ge=1, description="Batch size when scoring replies.")
    source_weights: SourceWeights = Field(
        default_factory=dict,
        description="Weight of each feedback source's training pairs (comparison, correction,"
        " rating; applied by repetition, 0 leaves a source out; unnamed sources count 1). See"
        " training/source_weights.py.",
    )
