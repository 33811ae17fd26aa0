"""PPO's practical details on the tiny model: the reference is the model PPO starts
from, the missing-EOS penalty, running reward normalisation, dropout off, pinned
sampling settings, and prompts cut by whole messages before templating."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from feedback.prompting import GROUNDING_INSTRUCTIONS
from tests.training.synthetic import grounded, make_pairs
from training import stages
from training.cycle_config import TrainCycleConfig
from training.device import Placement
from training.ppo import (
    PolicyWithValueHead,
    PpoTrainer,
    load_models,
    position_ids,
    reply_logits,
    reply_logits_to_keep,
    reply_logprobs,
    sample_replies,
)
from training.ppo_config import PpoStageConfig
from training.ppo_shaping import RunningMoments, ended_with_eos, rollout_generation_config
from training.reward import RewardScorer, encode
from training.snapshot import Snapshot
from training.truncation import fit_messages, prompt_tokens

PPO = PpoStageConfig(
    steps=2,
    batch_size=4,
    minibatch_size=2,
    ppo_epochs=1,
    max_new_tokens=4,
    max_prompt_length=64,
    rollout_engine="hf",
)


@pytest.fixture(scope="module")
def reward_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reward model (untrained head) on the tiny model."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("rm")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    rm.config.pad_token_id = tokenizer.pad_token_id
    rm.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def prompts(n: int) -> list:
    return [p.prompt for p in make_pairs(n, seed=5)]


def test_running_moments_equal_the_moments_of_everything_seen() -> None:
    moments = RunningMoments()
    moments.update(torch.tensor([1.0, 2.0, 3.0]))
    moments.update(torch.tensor([4.0, 5.0]))
    # mean of 1..5 = 3, population variance = (4 + 1 + 0 + 1 + 4) / 5 = 2
    assert moments.count == 5
    assert moments.mean == pytest.approx(3.0)
    assert moments.var == pytest.approx(2.0)
    normalised = moments.normalize(torch.tensor([3.0, 3.0 + 2.0**0.5]))
    torch.testing.assert_close(normalised, torch.tensor([0.0, 1.0]))


def test_ended_with_eos_looks_at_the_last_kept_token() -> None:
    eos = 9
    replies = torch.tensor([[1, 2, 9, 0], [1, 2, 3, 4], [9, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]).float()
    assert ended_with_eos(replies, mask, [eos]).tolist() == [True, False, True]


def test_replies_cut_off_pay_the_missing_eos_penalty(tiny_model_dir: Path) -> None:
    placement = Placement.resolve("cpu")
    policy, reference, tokenizer = load_models(tiny_model_dir, tiny_model_dir, placement)
    cfg = PPO.model_copy(update={"missing_eos_penalty": 1.5, "max_new_tokens": 3})
    trainer = PpoTrainer(policy, reference, tokenizer, lambda p, r: [0.25] * len(r), cfg)
    torch.manual_seed(0)
    ro = trainer.rollout(prompts(8))
    ended = ended_with_eos(ro.sequences[:, ro.prompt_len :], ro.mask, tokenizer.eos_token_id)
    assert (~ended).any(), "the tiny model should run out of tokens in 3"
    expected = torch.where(ended, torch.tensor(0.25), torch.tensor(0.25 - 1.5))
    torch.testing.assert_close(ro.scores, expected)


def test_rewards_are_normalised_by_running_moments(tiny_model_dir: Path) -> None:
    placement = Placement.resolve("cpu")
    policy, reference, tokenizer = load_models(tiny_model_dir, tiny_model_dir, placement)
    calls = iter([10.0, 30.0])
    trainer = PpoTrainer(
        policy, reference, tokenizer, lambda p, r: [next(calls)] * len(r), PPO
    )  # each batch scores alike, so a batch alone has no scale; the running moments do
    history = trainer.train(prompts(8), progress=False)
    assert [h["mean_score"] for h in history] == [10.0, 30.0]
    assert trainer.moments.count == 8
    assert trainer.moments.mean == pytest.approx(20.0)
    assert trainer.moments.std == pytest.approx(10.0)


def test_dropout_is_off_during_ppo(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attention_dropout=0.5)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[1, 5, 7, 9, 11, 13]])
    attn = torch.ones_like(ids)
    policy.train()
    torch.manual_seed(0)
    a = policy(input_ids=ids, attention_mask=attn).logits
    b = policy(input_ids=ids, attention_mask=attn).logits
    assert not torch.allclose(a, b), "the checkpoint's dropout should make two passes differ"
    trainer = PpoTrainer(policy, reference, tokenizer, lambda p, r: [0.0] * len(r), PPO)
    trainer.model.train()
    a, _ = trainer.model(ids, attn, 1)
    b, _ = trainer.model(ids, attn, 1)
    torch.testing.assert_close(a, b)


def test_rollouts_ignore_the_checkpoints_sampling_settings(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model.generation_config = GenerationConfig(repetition_penalty=50.0, no_repeat_ngram_size=1)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    policy = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    asked = prompts(4)
    with_checkpoint = sample_replies(
        AutoModelForCausalLM.from_pretrained(tmp_path).eval(), tokenizer, asked,
        max_new_tokens=12, do_sample=False, repetition_penalty=50.0,
    )[3]  # fmt: skip
    pinned = sample_replies(policy, tokenizer, asked, max_new_tokens=12, do_sample=False)[3]
    plain = sample_replies(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), tokenizer, asked,
        max_new_tokens=12, do_sample=False,
    )[3]  # fmt: skip
    assert pinned == plain  # the checkpoint's repetition penalty and n-gram ban are not used
    assert with_checkpoint != plain  # and they would have changed the replies
    config = rollout_generation_config(tokenizer, max_new_tokens=4)
    assert (config.repetition_penalty, config.top_k, config.top_p) == (1.0, 0, 1.0)


def test_prompts_are_cut_by_whole_messages_keeping_header_and_question(
    tiny_model_dir: Path,
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = grounded("How many days of leave do I get?", n_sources=3, turns=2)
    full = prompt_tokens(tokenizer, messages)
    no_turns = prompt_tokens(tokenizer, [messages[0], messages[-1]])
    # A budget that fits the header, the question and the first two sources only.
    budget = no_turns - 20
    fitted = fit_messages(tokenizer, messages, budget)
    assert full > no_turns > budget
    assert prompt_tokens(tokenizer, fitted) <= budget
    assert [m["role"] for m in fitted] == ["system", "user"]  # the old turns went first
    assert fitted[-1]["content"] == "How many days of leave do I get?"
    system = fitted[0]["content"]
    assert system.startswith(GROUNDING_INSTRUCTIONS)
    assert "[1] Doc 1" in system and "[3] Doc 3" not in system  # the least relevant went
    # Nothing left to drop: the header and question are kept whole, not cut.
    tight = fit_messages(tokenizer, messages, 8)
    assert tight[0]["content"].startswith(GROUNDING_INSTRUCTIONS)
    assert tight[-1]["content"] == "How many days of leave do I get?"


def test_the_reward_model_reads_long_prompts_cut_by_whole_sources(tiny_model_dir: Path) -> None:
    """Cut from the left, a grounded prompt would lose its header and its best sources
    first; the reward model's reader drops the least relevant sources instead."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = grounded("How many days of leave do I get?", n_sources=3, turns=0)
    reply = "25 days, says the handbook [1]."
    full = encode(tokenizer, messages, reply)
    read = encode(tokenizer, messages, reply, len(full) - 20)
    text = tokenizer.decode(read)
    assert len(read) <= len(full) - 20
    assert GROUNDING_INSTRUCTIONS[:40] in text and "How many days of leave" in text
    assert "[1] Doc 1" in text and "[3] Doc 3" not in text
    assert reply in text
    assert encode(tokenizer, messages, reply, len(full)) == full  # fits: read whole


def test_ppo_reference_is_the_model_ppo_starts_from(
    tiny_model_dir: Path, tiny_model_b_dir: Path, reward_dir: Path, tmp_path: Path
) -> None:
    """Started from a policy other than the parent (as after SFT), the first step's KL
    is 0: the penalty measures the distance from the starting point, not the parent."""
    placement = Placement.resolve("cpu")
    config = TrainCycleConfig.for_size("tiny").model_copy(update={"ppo": PPO})
    pairs = make_pairs(8, seed=1)
    snapshot = Snapshot(train_pairs=pairs, heldout_pairs=[], sft_examples=[], watermark=None)
    scorer = RewardScorer(reward_dir, batch_size=8, max_length=128, placement=placement)
    ctx = stages.StageContext(
        snapshot, config, placement, tmp_path, False, SimpleNamespace(policy_scorer=scorer)
    )  # type: ignore[arg-type]
    outcome = stages.get("ppo").run(ctx, tiny_model_b_dir, tmp_path / "out")
    assert outcome.metrics["reference"] == str(tiny_model_b_dir)
    assert abs(outcome.history[0]["mean_kl"]) < 1e-4
    assert (tmp_path / "out" / "config.json").exists()


def test_unknown_stages_and_algorithms_are_named() -> None:
    from training.errors import TrainingError

    config = TrainCycleConfig.for_size("tiny")
    assert [s.name for s in stages.plan(config, "ppo")] == ["sft", "ppo"]
    with pytest.raises(TrainingError, match="unknown algorithm 'sft'"):
        stages.plan(config, "sft")
    with pytest.raises(TrainingError, match="unknown training stage 'nope'"):
        stages.plan(config.model_copy(update={"stages": ["nope"]}), "dpo")


def test_only_the_replys_logits_are_computed_and_they_are_the_same(
    tiny_model_dir: Path,
) -> None:
    """The policy, its value head and the reference compute logits for the reply's
    positions only (``logits_to_keep``); the reply's log-probabilities are those of the
    whole-sequence logits, and the values still cover every position."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    sequences = torch.randint(3, 100, (3, 12))
    attention = torch.ones_like(sequences)
    attention[0, :4] = 0  # a left-padded prompt
    prompt_len = 8
    full = policy(
        input_ids=sequences, attention_mask=attention, position_ids=position_ids(attention)
    ).logits
    with_value = PolicyWithValueHead(policy)
    kept, values = with_value(sequences, attention, prompt_len)
    assert kept.shape[1] == reply_logits_to_keep(sequences, prompt_len) == 5 < full.shape[1]
    assert values.shape == sequences.shape
    torch.testing.assert_close(
        reply_logprobs(kept, sequences, prompt_len, 0.7),
        reply_logprobs(full, sequences, prompt_len, 0.7),
    )


def test_under_bf16_autocast_the_replys_logits_come_from_an_fp32_head(
    tiny_model_dir: Path,
) -> None:
    """Under autocast the model's own head rounds its logits to bf16; the policy's, the
    reference's and the KL gate's come from an fp32 head (``reply_logits``), so a reply's
    log-probabilities stay close to fp32's. Logits of ~20, as a trained model's."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        policy.get_output_embeddings().weight.mul_(8)
    sequences = torch.randint(3, 100, (3, 12))
    attention = torch.ones_like(sequences)
    prompt_len = 6
    with torch.no_grad():
        fp32 = policy(input_ids=sequences, attention_mask=attention).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            own = policy(input_ids=sequences, attention_mask=attention).logits
            kept, _ = PolicyWithValueHead(policy)(sequences, attention, prompt_len)
            reference, _ = reply_logits(policy, sequences, attention, prompt_len)
    assert 10 < fp32.abs().amax(-1).mean() < 40
    assert own.dtype == torch.bfloat16 and kept.dtype == reference.dtype == torch.float32
    torch.testing.assert_close(kept, reference)

    def error(logits: torch.Tensor) -> float:
        return float(
            (
                reply_logprobs(logits, sequences, prompt_len, 1.0)
                - reply_logprobs(fp32, sequences, prompt_len, 1.0)
            )
            .abs()
            .mean()
        )

    assert error(kept) < error(own) / 2
