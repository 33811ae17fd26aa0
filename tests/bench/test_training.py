"""Training speed: reward-model throughput (pairs/s) and PPO step time, Ratchet's
stages against TRL's trainers invoked directly in the same run.

- Reward model: ``training.reward.train_reward_model`` (load, train, save,
  held-out scoring) against ``trl.RewardTrainer`` with the same arguments
  (load, train, save; ``train()`` alone also shown); two rounds in alternating
  order, the fastest of each kept.
- PPO: ``training.ppo.PpoTrainer`` (rollout + update per step) against
  ``trl.experimental.ppo.PPOTrainer`` with the same batch (8 prompts),
  minibatches (2 of 4), epochs (2), reply length and reward model. TRL's PPO
  trains a separate value model (a second backbone); Ratchet puts a value head
  on the policy, so TRL does more work per step by design.

The first PPO step of each trainer is a warm-up and is left out."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from tests.bench.conftest import on_base_model, print_table, ratio, save_json
from tests.training.synthetic import make_pairs
from training.ppo import PpoTrainer
from training.ppo_config import PpoStageConfig
from training.reward import RewardScorer, train_reward_model
from training.reward_config import RewardStageConfig
from training.snapshot import Pair

pytestmark = pytest.mark.bench

REWARD_PAIRS = 32 if on_base_model() else 128
HELDOUT_PAIRS = 16
REWARD_ROUNDS = 2
PPO_STEPS = 3 if on_base_model() else 6  # plus one warm-up step each
REWARD = RewardStageConfig(epochs=1, batch_size=8, max_length=256)
PPO = PpoStageConfig(
    steps=PPO_STEPS,
    batch_size=8,
    minibatch_size=4,
    ppo_epochs=2,
    max_new_tokens=32,
    temperature=1.0,
    init_kl_coef=0.1,
    adaptive_kl=False,
)


def reward_rows(pairs: list[Pair]) -> list[dict[str, Any]]:
    """TRL's conversational preference format."""
    return [
        {
            "prompt": p.prompt,
            "chosen": [{"role": "assistant", "content": p.chosen}],
            "rejected": [{"role": "assistant", "content": p.rejected}],
        }
        for p in pairs
    ]


def trl_reward(model_dir: Path, pairs: list[Pair], out_dir: Path) -> tuple[float, float]:
    """TRL's RewardTrainer used directly; returns (end-to-end s, train() s)."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = RewardConfig(
        output_dir=str(out_dir / "trainer"),
        per_device_train_batch_size=REWARD.batch_size,
        num_train_epochs=REWARD.epochs,
        learning_rate=REWARD.learning_rate,
        max_length=REWARD.max_length,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(reward_rows(pairs)),
        processing_class=tokenizer,
    )
    train_started = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - train_started
    trainer.save_model(str(out_dir / "model"))
    return time.perf_counter() - started, train_s


def ratchet_ppo_steps(model_dir: Path, reward_dir: Path, prompts: list[Any]) -> list[dict]:
    """Ratchet's PPO: per step, rollout and update times (what ``train()`` loops over)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    scorer = RewardScorer(reward_dir, batch_size=REWARD.score_batch_size, max_length=256)
    trainer = PpoTrainer(
        AutoModelForCausalLM.from_pretrained(model_dir),
        AutoModelForCausalLM.from_pretrained(model_dir),
        tokenizer,
        scorer.score,
        PPO,
    )
    torch.manual_seed(PPO.seed)
    steps = []
    for step in range(PPO.steps + 1):
        batch = [prompts[(step * PPO.batch_size + i) % len(prompts)] for i in range(PPO.batch_size)]
        started = time.perf_counter()
        rollout = trainer.rollout(batch)
        rolled = time.perf_counter()
        trainer.step(rollout)
        done = time.perf_counter()
        steps.append(
            {"rollout_s": rolled - started, "update_s": done - rolled, "s": done - started}
        )
    return steps


def trl_ppo_steps(
    model_dir: Path, reward_dir: Path, prompts: list[Any], out_dir: Path
) -> list[float]:
    """TRL's experimental PPOTrainer with the same shapes; seconds per step."""
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[float] = []

        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            self.marks.append(time.perf_counter())

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            self.marks.append(time.perf_counter())

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    texts = [
        tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]  # as Ratchet encodes them
    reward_model = AutoModelForSequenceClassification.from_pretrained(reward_dir, num_labels=1)
    value_model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    for m in (reward_model, value_model):
        m.config.pad_token_id = tokenizer.pad_token_id
    args = PPOConfig(
        output_dir=str(out_dir),
        per_device_train_batch_size=PPO.batch_size,
        gradient_accumulation_steps=1,
        num_mini_batches=PPO.batch_size // PPO.minibatch_size,
        num_ppo_epochs=PPO.ppo_epochs,
        total_episodes=PPO.batch_size * (PPO.steps + 1),
        response_length=PPO.max_new_tokens,
        temperature=PPO.temperature,
        kl_coef=PPO.init_kl_coef,
        cliprange=PPO.cliprange,
        cliprange_value=PPO.cliprange_value,
        vf_coef=PPO.vf_coef,
        gamma=PPO.gamma,
        lam=PPO.lam,
        learning_rate=PPO.learning_rate,
        max_grad_norm=PPO.max_grad_norm,
        stop_token="eos",
        num_sample_generations=0,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1000,  # quiet: Ratchet's loop prints nothing either
        disable_tqdm=True,
        seed=PPO.seed,
    )
    clock = StepClock()
    trainer = PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        ref_model=AutoModelForCausalLM.from_pretrained(model_dir),
        reward_model=reward_model,
        train_dataset=Dataset.from_dict({"input_ids": ids}),
        value_model=value_model,
        callbacks=[clock],
    )
    trainer.train()
    return [b - a for a, b in zip(clock.marks, clock.marks[1:], strict=False)]


def test_reward_and_ppo_against_trl(bench_model: Path, tmp_path: Path) -> None:
    pairs = make_pairs(REWARD_PAIRS, seed=0)
    heldout = make_pairs(HELDOUT_PAIRS, seed=1)

    # Reward model. A short TRL run first pays the one-off import and set-up costs; then
    # rounds in alternating order, keeping each trainer's fastest (the machine is shared).
    trl_reward(bench_model, pairs[:16], tmp_path / "warm-up")
    trl_runs: list[tuple[float, float]] = []
    ratchet_runs: list[float] = []
    for round_ in range(REWARD_ROUNDS):
        for who in ("trl", "ratchet") if round_ % 2 == 0 else ("ratchet", "trl"):
            out = tmp_path / f"{who}-reward-{round_}"
            if who == "trl":
                trl_runs.append(trl_reward(bench_model, pairs, out))
                continue
            started = time.perf_counter()
            rm = train_reward_model(bench_model, pairs, heldout, out, REWARD, progress=False)
            ratchet_runs.append(time.perf_counter() - started)
            assert rm.model_dir.is_dir() and rm.heldout_pairs == HELDOUT_PAIRS
    trl_e2e_s, trl_train_s = min(trl_runs)
    ratchet_e2e_s = min(ratchet_runs)

    # PPO, both scored by the reward model trained above.
    prompts = [p.prompt for p in make_pairs(64, seed=2)]
    ratchet_steps = ratchet_ppo_steps(bench_model, rm.model_dir, prompts)
    trl_steps = trl_ppo_steps(bench_model, rm.model_dir, prompts, tmp_path / "trl-ppo")
    assert len(ratchet_steps) == len(trl_steps) == PPO.steps + 1  # every step ran

    ratchet_s = statistics.median(s["s"] for s in ratchet_steps[1:])
    rollout_s = statistics.median(s["rollout_s"] for s in ratchet_steps[1:])
    update_s = statistics.median(s["update_s"] for s in ratchet_steps[1:])
    trl_s = statistics.median(trl_steps[1:])
    reward = {
        "pairs": REWARD_PAIRS,
        "rounds": REWARD_ROUNDS,
        "ratchet_runs_s": ratchet_runs,
        "trl_runs_s": [t[0] for t in trl_runs],
        "ratchet_end_to_end_s": ratchet_e2e_s,
        "ratchet_pairs_per_s": REWARD_PAIRS / ratchet_e2e_s,
        "trl_end_to_end_s": trl_e2e_s,
        "trl_pairs_per_s": REWARD_PAIRS / trl_e2e_s,
        "trl_train_only_s": trl_train_s,
        "trl_train_only_pairs_per_s": REWARD_PAIRS / trl_train_s,
        "ratchet_over_trl_pairs_per_s": ratio(trl_e2e_s, ratchet_e2e_s),
        "heldout_accuracy": rm.heldout_accuracy,
    }
    ppo = {
        "steps_timed": PPO.steps,
        "batch_size": PPO.batch_size,
        "max_new_tokens": PPO.max_new_tokens,
        "ratchet_step_s_median": ratchet_s,
        "ratchet_rollout_s_median": rollout_s,
        "ratchet_update_s_median": update_s,
        "ratchet_steps": ratchet_steps,
        "trl_step_s_median": trl_s,
        "trl_steps_s": trl_steps,
        "ratchet_over_trl_step_time": ratio(ratchet_s, trl_s),
    }
    print()
    print_table(
        f"Reward model ({REWARD_PAIRS} pairs, batch {REWARD.batch_size}, {bench_model.name}; "
        f"fastest of {REWARD_ROUNDS})",
        ["trainer", "seconds", "pairs/s", "vs TRL end to end"],
        [
            ("TRL RewardTrainer: train() only", trl_train_s, REWARD_PAIRS / trl_train_s,
             ratio(trl_e2e_s, trl_train_s)),
            ("TRL RewardTrainer: load+train+save", trl_e2e_s, REWARD_PAIRS / trl_e2e_s, 1.0),
            ("Ratchet train_reward_model (+held-out)", ratchet_e2e_s,
             REWARD_PAIRS / ratchet_e2e_s, reward["ratchet_over_trl_pairs_per_s"]),
        ],
    )  # fmt: skip
    print_table(
        f"PPO step ({PPO.batch_size} prompts, {PPO.max_new_tokens} new tokens, "
        f"{PPO.ppo_epochs} epochs x {PPO.batch_size // PPO.minibatch_size} minibatches; "
        f"median of {PPO.steps})",
        ["trainer", "step s", "rollout s", "update s", "step time / TRL"],
        [
            ("TRL experimental PPOTrainer", trl_s, float("nan"), float("nan"), 1.0),
            ("Ratchet PpoTrainer", ratchet_s, rollout_s, update_s,
             ppo["ratchet_over_trl_step_time"]),
        ],
    )  # fmt: skip
    save_json("training", {"model": str(bench_model), "reward": reward, "ppo": ppo})
