"""The reward model's mean readout: the score head's mean over the reply's tokens,
read the same way packed and alone (training/readout.py). Training under it, packed
and as two sequences, and the readout saved with the weights:
``test_shared_prompt.py::test_a_reward_model_trained_on_packed_pairs_is_trls``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from tests.training.reward_models import FP32, reward_model_with_a_wide_head
from tests.training.synthetic import pairs_and_one_whose_replies_begin_alike
from training.errors import TrainingError
from training.readout import CONFIG_KEY, reply_marker, reply_start
from training.reward import RewardScorer, conversation_ids


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
    model, tokenizer = reward_model_with_a_wide_head(tiny_model_dir)
    setattr(model.config, CONFIG_KEY, "mean")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    pairs = pairs_and_one_whose_replies_begin_alike(5)
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


def test_the_mean_readout_needs_an_assistant_turn_to_find(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    marker = reply_marker(tokenizer)
    assert reply_start([5, *marker, 7, 8, *marker, 9], marker) == 2 * len(marker) + 3
    with pytest.raises(TrainingError, match="no assistant turn"):
        reply_start([5, 6, 7], marker)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    with pytest.raises(TrainingError, match="opens no assistant turn"):
        reply_marker(tokenizer)
