"""The reward model's mean readout: the score head's mean over the reply's tokens,
read the same way packed and alone, trained packed and unpacked, and saved with the
model (training/readout.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from tests.training.synthetic import make_pairs
from tests.training.test_shared_prompt import FP32, _assert_same_training
from training.errors import TrainingError
from training.readout import CONFIG_KEY, reply_marker, reply_start
from training.reward import RewardScorer, conversation_ids, train_reward_model
from training.reward_config import RewardStageConfig
from training.snapshot import Pair


def _head_mean(model, tokenizer, pair_prompt, reply: str) -> float:
    """The head over the reply's tokens, averaged, computed here without the readout's
    code: the reply starts where the prompt with its generation header ends."""
    opened = tokenizer.apply_chat_template(pair_prompt, tokenize=False, add_generation_prompt=True)
    start = len(tokenizer(opened, add_special_tokens=False)["input_ids"])
    ids = conversation_ids(tokenizer, pair_prompt, reply)
    assert len(ids) > start + 2  # the reply and the turn's end
    with torch.no_grad():
        hidden = model.model(torch.tensor([ids])).last_hidden_state
        return model.score(hidden)[0, start:, 0].mean().item()


def test_the_mean_readout_is_the_heads_mean_over_the_reply(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model.config.pad_token_id = tokenizer.pad_token_id
    nn.init.normal_(model.score.weight, std=1.0)  # scores far enough apart to compare
    setattr(model.config, CONFIG_KEY, "mean")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    pairs = make_pairs(5)
    start = pairs[0]  # replies that begin alike: more than the prompt is shared
    pairs.append(Pair(start.prompt, start.chosen, start.chosen + " and more", "conv-x"))
    prompts = [p.prompt for p in pairs]
    chosen, rejected = [p.chosen for p in pairs], [p.rejected for p in pairs]
    want = (
        [_head_mean(model, tokenizer, p.prompt, p.chosen) for p in pairs],
        [_head_mean(model, tokenizer, p.prompt, p.rejected) for p in pairs],
    )

    scorer = RewardScorer(tmp_path, batch_size=4, placement=FP32)  # 2 pairs a batch packed
    assert scorer.reply_marker == tokenizer("<|im_start|>assistant\n")["input_ids"]
    alone = scorer.model_scores(prompts, chosen), scorer.model_scores(prompts, rejected)
    packed = scorer.model_scores_pairs(prompts, chosen, rejected)
    for got in (alone, packed):
        for scores, expected in zip(got, want, strict=True):
            assert scores == pytest.approx(expected, abs=1e-5)

    setattr(model.config, CONFIG_KEY, "last")  # the same weights, read at the last token
    model.save_pretrained(tmp_path)
    last = RewardScorer(tmp_path, batch_size=4, placement=FP32)
    assert last.reply_marker is None
    at_end = last.model_scores(prompts, chosen)
    assert max(abs(a - m) for a, m in zip(at_end, want[0], strict=True)) > 1e-2


def test_a_reward_model_trained_with_the_mean_readout_keeps_it(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Packed or as two sequences, the same training; the readout is saved with the
    weights, and the held-out accuracy is the saved model's, read with it."""
    results, weights = [], []
    for pack in (True, False):
        config = RewardStageConfig(
            epochs=1,
            learning_rate=1e-3,
            batch_size=4,
            max_length=1024,
            pack_pairs=pack,
            readout="mean",
        )
        result = train_reward_model(
            tiny_model_dir,
            make_pairs(8),
            make_pairs(6, seed=1),
            tmp_path / str(pack),
            config,
            progress=False,
            placement=FP32,
        )
        rm = AutoModelForSequenceClassification.from_pretrained(result.model_dir, num_labels=1)
        assert getattr(rm.config, CONFIG_KEY) == "mean"
        results.append(result)
        weights.append(rm.model.state_dict())
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir).model.state_dict()
    _assert_same_training(start, *weights)
    packed, unpacked = results
    assert packed.train_metrics["train_loss"] == pytest.approx(
        unpacked.train_metrics["train_loss"], rel=1e-3
    )
    scorer = RewardScorer(packed.model_dir, placement=FP32)
    assert scorer.reply_marker is not None
    assert scorer.accuracy(make_pairs(6, seed=1)) == packed.heldout_accuracy


def test_the_mean_readout_needs_an_assistant_turn_to_find(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    marker = reply_marker(tokenizer)
    assert reply_start([5, *marker, 7, 8, *marker, 9], marker) == 2 * len(marker) + 3
    with pytest.raises(TrainingError, match="no assistant turn"):
        reply_start([5, 6, 7], marker)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    with pytest.raises(TrainingError, match="opens no assistant turn"):
        reply_marker(tokenizer)
