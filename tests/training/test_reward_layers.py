"""A reward model is the same on a rerun (its new score head is seeded), and with
``train_layers`` only its top blocks (with the final norm and the score head) train:
the embeddings and the lower blocks stay bit for bit as they were, it says how many
parameters it trained, and a model with fewer blocks, or whose blocks it cannot
find, is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
)

from tests.training.synthetic import make_pairs
from training.errors import TrainingError
from training.reward import freeze_lower_layers, train_reward_model
from training.reward_config import RewardStageConfig


def test_only_the_top_blocks_train(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = RewardStageConfig(
        train_layers=1, epochs=1, learning_rate=1e-3, batch_size=4, max_length=1024
    )
    result = train_reward_model(
        tiny_model_dir, make_pairs(8), make_pairs(2), tmp_path, config, progress=False
    )
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).model.state_dict()
    rm = AutoModelForSequenceClassification.from_pretrained(result.model_dir, num_labels=1)
    trained = rm.model.state_dict()
    top = [k for k in base if k.startswith("layers.1.") or k == "norm.weight"]
    frozen = [k for k in base if k not in top]
    assert "embed_tokens.weight" in frozen and any(k.startswith("layers.0.") for k in frozen)
    for k in frozen:
        assert torch.equal(trained[k], base[k]), k
    for k in top:
        assert not torch.equal(trained[k], base[k]), k
    expected = sum(base[k].numel() for k in top) + rm.score.weight.numel()
    assert result.train_metrics["trainable_params"] == expected


def test_train_layers_refuses_what_it_cannot_do(tiny_model_dir: Path) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    with pytest.raises(TrainingError, match="train_layers is 3, but .* only 2 transformer blocks"):
        freeze_lower_layers(model, 3)
    bert = BertForSequenceClassification(  # its blocks are in encoder.layer
        BertConfig(
            vocab_size=32,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=1,
            intermediate_size=16,
            num_labels=1,
        )
    )
    with pytest.raises(TrainingError, match="BertForSequenceClassification has no transformer"):
        freeze_lower_layers(bert, 1)


def test_a_reward_model_is_the_same_on_a_rerun(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The new score head is seeded, so the same pairs and seed give the same model
    whatever the process's random state was (a different draw changes every score)."""
    config = RewardStageConfig(epochs=1, learning_rate=1e-3, batch_size=4, max_length=1024)
    heads = []
    for run, noise in enumerate((1, 2)):
        torch.manual_seed(noise)  # what else ran in the process before
        result = train_reward_model(
            tiny_model_dir,
            make_pairs(8),
            make_pairs(2),
            tmp_path / str(run),
            config,
            progress=False,
        )
        rm = AutoModelForSequenceClassification.from_pretrained(result.model_dir, num_labels=1)
        heads.append(rm.score.weight.detach().clone())
    assert torch.equal(heads[0], heads[1])
