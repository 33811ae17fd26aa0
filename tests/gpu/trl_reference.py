"""TRL's reference trainers for the GPU check (``tests/gpu/check.py``): the same
shapes, device and precision as the project's stages, so the two sit side by side."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any


def trl_reward(check: Any, model_dir: Path, pairs: list[Any]) -> dict:
    """TRL's RewardTrainer with the same arguments, on the same device and precision."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from training.device import trainer_device_args

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=1, dtype=check.placement.train_dtype
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    args = RewardConfig(
        output_dir=str(check.root / "rm-trl"),
        per_device_train_batch_size=check.shape["reward_batch"],
        num_train_epochs=1,
        learning_rate=1e-5,
        max_length=check.shape["max_length"],
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=0,
        disable_tqdm=True,
        **trainer_device_args(check.placement),
    )
    rows = [
        {
            "prompt": p.prompt,
            "chosen": [{"role": "assistant", "content": p.chosen}],
            "rejected": [{"role": "assistant", "content": p.rejected}],
        }
        for p in pairs
    ]
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    check.sync()
    started = time.perf_counter()
    trainer.train()
    check.sync()
    train_s = time.perf_counter() - started
    tokens = check.reward_tokens(model_dir, pairs)
    p = next(trainer.model.parameters())
    return {
        "train_s": round(train_s, 3),
        "tokens_per_s": round(tokens / train_s, 1),
        "model_device": str(p.device),
        "bf16_autocast": args.bf16,
    }


def trl_ppo(check: Any, model_dir: Path, prompts: list[Any]) -> dict:
    """trl.experimental.ppo.PPOTrainer on the same shapes (a value model of its own)."""
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from training.device import trainer_device_args

    config, sync = check.ppo_config("hf"), check.sync
    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            sync()
            marks.append(time.perf_counter())

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            sync()
            marks.append(time.perf_counter())

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    texts = [
        tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    dtype = check.placement.train_dtype
    reward = AutoModelForSequenceClassification.from_pretrained(check.reward_dir, num_labels=1)
    value = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=dtype)
    for m in (reward, value):
        m.config.pad_token_id = tokenizer.pad_token_id
    args = PPOConfig(
        output_dir=str(check.root / "ppo-trl"),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=1,
        num_mini_batches=config.batch_size // config.minibatch_size,
        num_ppo_epochs=config.ppo_epochs,
        total_episodes=config.batch_size * (config.steps + 1),
        response_length=config.max_new_tokens,
        temperature=config.temperature,
        kl_coef=config.init_kl_coef,
        learning_rate=config.learning_rate,
        stop_token="eos",
        num_sample_generations=0,
        report_to=[],
        save_strategy="no",
        logging_steps=1000,
        disable_tqdm=True,
        seed=0,
        **trainer_device_args(check.placement),
    )
    trainer = PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype),
        ref_model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype),
        reward_model=reward,
        train_dataset=Dataset.from_dict({"input_ids": ids}),
        value_model=value,
        callbacks=[Clock()],
    )
    trainer.train()
    secs = [b - a for a, b in zip(marks, marks[1:], strict=False)][1:]
    step_s = statistics.median(secs)
    return {
        "step_s": round(step_s, 3),
        "nominal_tokens_per_s": round(config.batch_size * config.max_new_tokens / step_s, 1),
    }
