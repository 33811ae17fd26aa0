"""Configuration of the PPO stage (see ``training/ppo.py``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class PpoStageConfig(BaseModel):
    steps: int = Field(default=20, ge=1, description="PPO iterations (one rollout batch each).")
    batch_size: int = Field(default=8, ge=1, description="Prompts per rollout batch.")
    minibatch_size: int = Field(default=4, ge=1, description="Rollouts per gradient step.")
    ppo_epochs: int = Field(
        default=2, ge=1, description="Optimisation passes over each rollout batch."
    )
    learning_rate: float = Field(
        default=1e-5, gt=0, description="AdamW learning rate (policy and value head)."
    )
    max_new_tokens: int = Field(default=32, ge=1, description="Reply length during rollouts.")
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature of rollouts.")
    max_prompt_length: int = Field(
        default=256,
        ge=8,
        description="Prompts are cut to this, by whole "
        "messages before templating: oldest turns, then least relevant sources.",
    )
    init_kl_coef: float = Field(default=0.1, ge=0, description="Initial KL penalty coefficient.")
    adaptive_kl: bool = Field(default=True, description="Adapt the coefficient towards target_kl.")
    target_kl: float = Field(
        default=2.0, gt=0, description="Target KL per reply (nats) of the controller."
    )
    kl_horizon: int = Field(
        default=10_000, ge=1, description="Horizon of the adaptive KL controller."
    )
    gamma: float = Field(default=1.0, ge=0, le=1, description="Discount factor.")
    lam: float = Field(default=0.95, ge=0, le=1, description="GAE lambda.")
    cliprange: float = Field(default=0.2, gt=0, description="Policy ratio clip range.")
    cliprange_value: float = Field(default=0.2, gt=0, description="Value prediction clip range.")
    vf_coef: float = Field(default=0.1, ge=0, description="Weight of the value loss.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient clipping norm.")
    whiten_rewards: bool = Field(default=False, description="Whiten scores across the batch.")
    normalize_rewards: bool = Field(
        default=True,
        description="Normalise scores by running moments (mean and std over every rollout so "
        "far), so the score's scale stays put against the KL penalty as training moves.",
    )
    missing_eos_penalty: float | None = Field(
        default=None,
        ge=0,
        description="Subtracted from the score of a reply cut off at max_new_tokens (no "
        "end-of-sequence token), so the policy learns to finish its answers.",
    )
    disable_dropout: bool = Field(
        default=True,
        description="Dropout off in the policy during PPO (log-probs of the rollout and of "
        "the update then come from the same network).",
    )
    repetition_penalty: float = Field(
        default=1.0,
        gt=0,
        description="Pinned for rollouts (a checkpoint's generation_config is not used): 1.0 "
        "samples the policy's own distribution, which the PPO ratio assumes.",
    )
    seed: int = Field(default=0, description="Seed of rollouts and shuffling.")
    rollout_engine: Literal["auto", "hf", "vllm"] = Field(
        default="auto",
        description="Who generates rollouts: hf (transformers generate), vllm (an in-process "
        "vLLM engine, weights synced after every update) or auto (vllm when installed and one "
        "process trains).",
    )
    vllm_dtype: Literal["auto", "bfloat16", "float32"] = Field(
        default="auto",
        description="Dtype of the vLLM rollout engine (auto: bf16 on GPUs and on CPUs with bf16"
        " instructions, else fp32).",
    )
    vllm_gpu_memory_utilization: float = Field(
        default=0.3,
        gt=0,
        lt=1,
        description="Share of the GPU the colocated vLLM engine may take (weights and KV cache).",
    )
    vllm_kv_cache_gib: float = Field(
        default=1.0, gt=0, description="KV cache of the vLLM rollout engine on a CPU."
    )
