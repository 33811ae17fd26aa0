"""A packed pair (the prompt once, both replies after it) gives what the trainer's two
sequences give: the reward model's scores, the policy's logits, and their gradients;
and a reward model or a DPO policy trained on packed pairs is the one TRL makes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from trl.trainer.dpo_trainer import DataCollatorForPreference as DpoCollator
from trl.trainer.reward_trainer import DataCollatorForPreference as RewardCollator

from tests.training.reward_models import FP32, reward_model_with_a_wide_head
from tests.training.synthetic import make_pairs, pairs_and_one_whose_replies_begin_alike
from training.device import Placement
from training.dpo import train_dpo
from training.dpo_config import DpoStageConfig
from training.errors import TrainingError
from training.readout import CONFIG_KEY as READOUT_KEY
from training.reward import RewardScorer, conversation_ids, train_reward_model
from training.reward_config import RewardStageConfig
from training.shared_prompt import PackedPairs, pack_pair


def test_a_pair_packs_its_shared_beginning_once() -> None:
    packed = pack_pair([1, 2, 3, 4, 5], [1, 2, 3, 9])
    assert packed.input_ids == [1, 2, 3, 4, 5, 9]
    assert packed.position_ids == [0, 1, 2, 3, 4, 3]
    assert packed.segments == [0, 0, 0, 1, 1, 2]
    assert packed.ends == (4, 5)
    assert packed.places(4, rejected=True) == [0, 1, 2, 5]
    # One conversation the start of the other: each still ends on a token of its own.
    packed = pack_pair([1, 2, 3], [1, 2, 3, 4])
    assert packed.input_ids == [1, 2, 3, 3, 4]
    assert packed.position_ids == [0, 1, 2, 2, 3]
    assert packed.ends == (2, 4)
    assert packed.places(4, rejected=True) == [0, 1, 3, 4]


def _conversations(tokenizer, n: int) -> list[tuple[list[int], list[int]]]:
    pairs = make_pairs(n)  # of different lengths: the batch is padded
    return [
        (
            conversation_ids(tokenizer, p.prompt, p.chosen),
            conversation_ids(tokenizer, p.prompt, p.rejected),
        )
        for p in pairs
    ]


def _gradients(model, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_same_gradients(packed: dict, unpacked: dict) -> None:
    assert any(g.abs().sum() > 0 for g in unpacked.values())
    for name, grad in unpacked.items():
        torch.testing.assert_close(packed[name], grad, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_scores_and_gradients_are_the_two_sequences(tiny_model_dir: Path, attn: str) -> None:
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, num_labels=1, attn_implementation=attn
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model.config.pad_token_id = tokenizer.pad_token_id
    nn.init.normal_(model.score.weight, std=1.0)  # scores far enough apart to compare
    rows = [{"chosen_ids": c, "rejected_ids": r} for c, r in _conversations(tokenizer, 3)]
    batch = RewardCollator(tokenizer.pad_token_id)(rows)
    for pair, row in zip(make_pairs(3), rows, strict=True):  # the prompt is packed once
        text = tokenizer.apply_chat_template(
            pair.prompt, tokenize=False, add_generation_prompt=True
        )
        prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert pack_pair(row["chosen_ids"], row["rejected_ids"]).shared >= len(prompt) > 8

    def loss(scores: torch.Tensor) -> torch.Tensor:
        chosen, rejected = scores.squeeze(-1).chunk(2)
        return -nn.functional.logsigmoid(chosen - rejected).mean()

    packed = PackedPairs(model, "scores")(**batch).logits
    packed_grads = _gradients(model, loss(packed))
    unpacked = model(**batch).logits
    unpacked_grads = _gradients(model, loss(unpacked))

    assert packed.shape == unpacked.shape == (6, 1)
    assert torch.cdist(unpacked, unpacked).max() > 1e-2  # the scores differ
    torch.testing.assert_close(packed, unpacked, atol=1e-5, rtol=1e-4)
    _assert_same_gradients(packed_grads, unpacked_grads)


def test_the_scorer_reads_two_replies_to_a_prompt_as_one_sequence(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The gates and the held-out accuracy score pairs packed: each reply gets the score
    it gets read alone, over batches of pairs of different lengths, and the margins and
    the accuracy follow; ``pack_pairs=False`` reads them one at a time."""
    model, tokenizer = reward_model_with_a_wide_head(tiny_model_dir)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    pairs = pairs_and_one_whose_replies_begin_alike(6)
    prompts = [p.prompt for p in pairs]
    chosen, rejected = [p.chosen for p in pairs], [p.rejected for p in pairs]
    placement = Placement.resolve("cpu", "fp32")

    scorer = RewardScorer(tmp_path, batch_size=4, placement=placement)  # 2 pairs a batch
    assert scorer.packed is not None
    alone = scorer.model_scores(prompts, chosen), scorer.model_scores(prompts, rejected)
    packed = scorer.model_scores_pairs(prompts, chosen, rejected)
    assert max(alone[0] + alone[1]) - min(alone[0] + alone[1]) > 1e-2  # the scores differ
    for got, want in zip(packed, alone, strict=True):
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=1e-5, rtol=1e-4)
    margins = [c - r for c, r in zip(*alone, strict=True)]
    assert scorer.model_margins(pairs) == pytest.approx(margins, abs=1e-4)
    assert scorer.accuracy(pairs) == sum(m > 0 for m in margins) / len(pairs)

    scorer.grounding_weight = 0.5  # a saved grounding term is added to each score
    with_term = scorer.score_pairs(prompts, chosen, rejected)
    expected = scorer.score(prompts, chosen), scorer.score(prompts, rejected)
    for got, want in zip(with_term, expected, strict=True):
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=1e-5, rtol=1e-4)

    one_at_a_time = RewardScorer(tmp_path, batch_size=4, placement=placement, pack_pairs=False)
    assert one_at_a_time.packed is None
    assert one_at_a_time.model_margins(pairs) == pytest.approx(margins, abs=1e-6)


def test_packed_logits_and_gradients_are_the_two_sequences(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = []
    for chosen, rejected in _conversations(tokenizer, 3):
        split = max(i for i in range(len(chosen)) if chosen[:i] == rejected[:i])
        rows.append(
            {
                "prompt_ids": chosen[:split],
                "chosen_ids": chosen[split:],
                "rejected_ids": rejected[split:],
            }
        )
    batch = DpoCollator(tokenizer.pad_token_id)(rows)
    real = batch["attention_mask"].bool()
    completion = batch["completion_mask"][:, 1:].bool()

    def reply_logps(logits: torch.Tensor) -> torch.Tensor:  # what DPO sums
        logps = logits[:, :-1].log_softmax(-1).gather(2, batch["input_ids"][:, 1:, None])[..., 0]
        return (logps * completion).sum(1)

    model_inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    packed = PackedPairs(model, "logits")(**model_inputs).logits
    packed_grads = _gradients(model, reply_logps(packed).sum())
    unpacked = model(**model_inputs).logits
    unpacked_grads = _gradients(model, reply_logps(unpacked).sum())

    assert packed.shape == unpacked.shape
    torch.testing.assert_close(packed[real], unpacked[real], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(reply_logps(packed), reply_logps(unpacked))
    _assert_same_gradients(packed_grads, unpacked_grads)


def _assert_same_training(start: dict, packed: dict, unpacked: dict) -> None:
    """Adam turns float noise in near-zero gradients into steps of up to the learning
    rate, so the two runs' weights are compared by how far training moved them: they
    differ by a hundredth of that or less, tensor by tensor."""
    moved = 0
    for name, weight in unpacked.items():
        travelled = (weight - start[name]).norm()
        moved += bool(travelled > 0)
        assert (packed[name] - weight).norm() <= 0.01 * travelled, name
    assert moved > 10


@pytest.mark.parametrize("readout", ["last", "mean"])
def test_a_reward_model_trained_on_packed_pairs_is_trls(
    tiny_model_dir: Path, tmp_path: Path, readout: str
) -> None:
    """Packed or as two sequences, the same training, under either readout
    (training/readout.py); the readout is saved with the weights, and the held-out
    accuracy is the saved model's, read with it."""
    results, weights = [], []
    for pack in (True, False):
        config = RewardStageConfig.model_validate(
            {
                "epochs": 1,
                "learning_rate": 1e-3,
                "batch_size": 4,
                "max_length": 1024,
                "pack_pairs": pack,
                "readout": readout,
            }
        )
        result = train_reward_model(
            tiny_model_dir,
            make_pairs(8),
            make_pairs(6),
            tmp_path / str(pack),
            config,
            progress=False,
            placement=FP32,
        )
        rm = AutoModelForSequenceClassification.from_pretrained(result.model_dir, num_labels=1)
        assert getattr(rm.config, READOUT_KEY) == readout
        results.append(result)
        weights.append(rm.model.state_dict())
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir).model.state_dict()
    _assert_same_training(start, *weights)
    packed, trl = results
    assert packed.train_metrics["train_loss"] == pytest.approx(
        trl.train_metrics["train_loss"], rel=1e-3
    )
    assert packed.heldout_accuracy == trl.heldout_accuracy
    scorer = RewardScorer(packed.model_dir, placement=FP32)
    assert (scorer.reply_marker is not None) == (readout == "mean")
    assert scorer.accuracy(make_pairs(6)) == packed.heldout_accuracy


def test_dpo_on_packed_pairs_is_trls(tiny_model_dir: Path, tmp_path: Path) -> None:
    weights, histories = [], []
    for pack in (True, False):
        config = DpoStageConfig(
            epochs=1, learning_rate=1e-3, batch_size=4, max_length=1024, pack_pairs=pack
        )
        out = tmp_path / str(pack)
        histories.append(
            train_dpo(tiny_model_dir, make_pairs(8), out, config, progress=False, placement=FP32)
        )
        weights.append(AutoModelForCausalLM.from_pretrained(out).state_dict())
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    _assert_same_training(start, *weights)
    packed, trl = histories
    assert [h["loss"] for h in packed] == pytest.approx([h["loss"] for h in trl], rel=1e-3)


def test_an_attention_that_ignores_the_mask_is_refused(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.config._attn_implementation = "flash_attention_2"  # set by hand: no kernel here
    with pytest.raises(TrainingError, match="4D mask .* uses 'flash_attention_2': set pack_pairs"):
        PackedPairs(model, "logits")
    with pytest.raises(TrainingError, match="LlamaForCausalLM has no score head"):
        PackedPairs(AutoModelForCausalLM.from_pretrained(tiny_model_dir), "scores")
