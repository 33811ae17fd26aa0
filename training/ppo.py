"""PPO with a KL penalty to a frozen reference policy, scored by a reward model.

This is the one adapter between Ratchet and PPO. TRL's PPOTrainer lives only
in ``trl.experimental`` (gone from TRL 1.13), so the algorithm is written here
on plain transformers pieces, following Ziegler et al. (2019) and TRL's
implementation: per-token reward ``-beta * (log pi - log pi_ref)`` plus the
reward model's score on the last reply token, GAE advantages, the clipped
surrogate objective, a clipped value loss, and an adaptive KL coefficient.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from feedback.events import Messages
from training import distributed
from training.device import Placement
from training.ppo_config import PpoStageConfig
from training.ppo_shaping import (
    RunningMoments,
    disable_dropout,
    ended_with_eos,
    rollout_generation_config,
)

logger = logging.getLogger(__name__)

RewardFn = Callable[[Sequence[Messages], Sequence[str]], list[float]]


# --- the pieces, each tested against hand-computed values -------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns, shape ``[batch, tokens]``.

    ``mask`` marks the reply tokens (a prefix of each row); the value after the
    last reply token is 0 (the episode ends)."""
    rewards = rewards * mask
    values = values * mask
    advantages = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    steps = rewards.shape[1]
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] if t + 1 < steps else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    cliprange: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate loss (to minimise) and the fraction of clipped tokens."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clipfrac


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    cliprange_value: float,
) -> torch.Tensor:
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


class AdaptiveKLController:
    """Ziegler et al.: move the KL coefficient so the observed KL approaches ``target``."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


class FixedKLController:
    def __init__(self, kl_coef: float) -> None:
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        return None


# --- models -------------------------------------------------------------------------------


class PolicyWithValueHead(nn.Module):
    """A causal LM plus a scalar value head on its last hidden state (on the policy's
    device, in its dtype)."""

    def __init__(self, policy: Any) -> None:  # a transformers PreTrainedModel
        super().__init__()
        self.policy = policy
        hidden = int(policy.config.hidden_size)
        weight = next(policy.parameters())
        self.value_head = nn.Linear(hidden, 1, device=weight.device, dtype=weight.dtype)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits that predict the reply (from position ``prompt_len - 1`` on: see
        :func:`reply_logits_to_keep`) and a value for every position."""
        logits, hidden = reply_logits(self.policy, input_ids, attention_mask, prompt_len)
        values = self.value_head(hidden).squeeze(-1)
        return logits, values.float()


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions for left-padded rows (padding gets position 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def reply_logits_to_keep(sequences: torch.Tensor, prompt_len: int) -> int:
    """How many final positions' logits the reply's log-probabilities need (transformers'
    ``logits_to_keep``): the last prompt token's and every reply token's. The prompt's
    other positions would cost a vocabulary-sized projection each (49,152 x 576 for
    SmolLM2) and predict nothing PPO uses."""
    return sequences.size(1) - prompt_len + 1


def reply_logits(
    policy: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits that predict the reply (:func:`reply_logits_to_keep`), and the final
    hidden state of every position. The output layer runs in fp32 outside autocast.

    Under bf16 autocast the model's own forward rounds its logits to bf16: a logit of 16-32
    moves by up to 0.06, noise in every token's log-probability, and so in PPO's ratio and
    its KL to the reference. The hidden state reaches the head in fp32 (the residual stream
    of fp32 weights stays fp32 under autocast), so only the head's product is rounded; here
    it is not. Without autocast and with fp32 weights this is the model's own head."""
    out = policy.get_decoder()(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
    )
    hidden = out.last_hidden_state
    kept = hidden[:, -reply_logits_to_keep(input_ids, prompt_len) :]
    head = policy.get_output_embeddings()
    bias = None if head.bias is None else head.bias.float()
    with torch.autocast(hidden.device.type, enabled=False):
        logits = nn.functional.linear(kept.float(), head.weight.float(), bias)
    cap = getattr(policy.config, "final_logit_softcapping", None)
    if cap:  # Gemma's heads squash their logits; Llama's (Ratchet's bases) do not
        logits = torch.tanh(logits / cap) * cap
    return logits, hidden


def reply_logprobs(
    logits: torch.Tensor, sequences: torch.Tensor, prompt_len: int, temperature: float
) -> torch.Tensor:
    """Log-probabilities of the reply tokens ``sequences[:, prompt_len:]``, from the
    logits of every position or of the last ones only (:func:`reply_logits_to_keep`)."""
    kept_from = sequences.size(1) - logits.size(1)  # 0 when every position has its logits
    logits = logits[:, prompt_len - 1 - kept_from : -1, :] / temperature
    targets = sequences[:, prompt_len:]
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def reply_mask(replies: torch.Tensor, eos_token_id: int | list[int] | None) -> torch.Tensor:
    """1 for reply tokens up to and including the first end-of-sequence token."""
    eos_ids = eos_token_id if isinstance(eos_token_id, list) else [eos_token_id]
    is_eos = torch.zeros_like(replies, dtype=torch.bool)
    for eos in eos_ids:
        if eos is not None:
            is_eos |= replies == eos
    after = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    return (~after).float()


@dataclass
class Rollout:
    prompts: list[Messages]
    replies: list[str]
    sequences: torch.Tensor
    attention_mask: torch.Tensor
    prompt_len: int
    mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor


def encode_prompts(
    tokenizer: Any,
    prompts: Sequence[Messages],
    max_length: int,
    device: torch.device | str = "cpu",
) -> Any:  # a transformers BatchEncoding of tensors on ``device``
    """Left-padded prompt ids, each prompt first cut to ``max_length`` by whole messages
    (:func:`training.truncation.fit_messages`: the system header and question stay)."""
    from training.truncation import fit_messages

    texts = [
        tokenizer.apply_chat_template(
            fit_messages(tokenizer, p, max_length), tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]
    tokenizer.padding_side = "left"
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)


@torch.no_grad()
def sample_replies(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Messages],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    do_sample: bool = True,
    max_prompt_length: int = 256,
    repetition_penalty: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, int, list[str]]:
    """Generate replies; return (sequences, attention_mask, prompt_len, reply texts)."""
    enc = encode_prompts(tokenizer, prompts, max_prompt_length, model_device(model))
    config = rollout_generation_config(
        tokenizer,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        do_sample=do_sample,
        repetition_penalty=repetition_penalty,
    )
    # The checkpoint's own generation_config would fill in every value left at its
    # default here (transformers merges them): pin the model's to this one.
    model.generation_config = config  # type: ignore[assignment]
    sequences = model.generate(**enc, generation_config=config)  # type: ignore[operator]
    prompt_len = enc["input_ids"].shape[1]
    replies = sequences[:, prompt_len:]
    mask = reply_mask(replies, tokenizer.eos_token_id)
    replies = torch.where(mask.bool(), replies, torch.full_like(replies, tokenizer.pad_token_id))
    sequences = torch.cat([enc["input_ids"], replies], dim=1)
    attention = torch.cat([enc["attention_mask"], mask.long()], dim=1)
    texts = [
        tokenizer.decode(row[m.bool()], skip_special_tokens=True).strip()
        for row, m in zip(replies, mask, strict=True)
    ]
    return sequences, attention, prompt_len, texts


# --- the trainer --------------------------------------------------------------------------


class HfRollouts:
    """Replies from the policy's ``generate``: always current, nothing to sync."""

    name = "hf"

    def __init__(self, tokenizer: Any, config: PpoStageConfig) -> None:
        self.tokenizer = tokenizer
        self.config = config

    def generate(
        self, policy: nn.Module, prompts: Sequence[Messages]
    ) -> tuple[torch.Tensor, torch.Tensor, int, list[str]]:
        cfg = self.config
        return sample_replies(
            policy,
            self.tokenizer,
            prompts,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            max_prompt_length=cfg.max_prompt_length,
            repetition_penalty=cfg.repetition_penalty,
        )

    def sync(self, policy: nn.Module) -> None:
        return None

    def close(self) -> None:
        return None


class PpoTrainer:
    """Runs PPO iterations: rollout, score, KL-shaped rewards, GAE, clipped updates."""

    def __init__(
        self,
        policy: nn.Module,
        ref_policy: nn.Module,
        tokenizer: Any,
        reward_fn: RewardFn,
        config: PpoStageConfig,
        *,
        placement: Placement | None = None,
        rollouts: Any = None,  # a training.rollouts.RolloutEngine
    ) -> None:
        """``policy`` and ``ref_policy`` already sit on ``placement``'s device (see
        :func:`load_models`); without a placement, the policy's device, no autocast.
        ``rollouts`` generates the replies (default: the policy's own ``generate``)."""
        self.config = config
        self.tokenizer = tokenizer
        self.rollouts = rollouts or HfRollouts(tokenizer, config)
        self.placement = placement or Placement(model_device(policy), "fp32")
        if config.disable_dropout:
            disable_dropout(policy)
        self.model = PolicyWithValueHead(policy)
        self.moments = RunningMoments()
        # Under several processes the updates go through DDP (gradients averaged);
        # rollouts and no-grad passes use the bare module.
        self.trained = distributed.wrap_ddp(self.model)
        self.ref_policy = ref_policy.eval().requires_grad_(False)
        self.reward_fn = reward_fn
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.learning_rate)
        self.kl_ctl: AdaptiveKLController | FixedKLController = (
            AdaptiveKLController(config.init_kl_coef, config.target_kl, config.kl_horizon)
            if config.adaptive_kl
            else FixedKLController(config.init_kl_coef)
        )
        self.rng = random.Random(config.seed + distributed.rank())

    @torch.no_grad()
    def rollout(self, prompts: list[Messages]) -> Rollout:
        cfg = self.config
        self.model.eval()
        with self.placement.autocast():
            sequences, attention, prompt_len, texts = self.rollouts.generate(
                self.model.policy, prompts
            )
            mask = attention[:, prompt_len:].float()
            logits, values = self.model(sequences, attention, prompt_len)
            logprobs = reply_logprobs(logits, sequences, prompt_len, cfg.temperature)
            ref_logits, _ = reply_logits(self.ref_policy, sequences, attention, prompt_len)
            ref_logprobs = reply_logprobs(ref_logits, sequences, prompt_len, cfg.temperature)
        scores = torch.tensor(
            self.reward_fn(prompts, texts), dtype=torch.float32, device=sequences.device
        )
        if cfg.missing_eos_penalty is not None:
            ended = ended_with_eos(sequences[:, prompt_len:], mask, self.tokenizer.eos_token_id)
            scores = scores - cfg.missing_eos_penalty * (~ended).float()
        return Rollout(
            prompts,
            texts,
            sequences,
            attention,
            prompt_len,
            mask,
            logprobs * mask,
            ref_logprobs * mask,
            values[:, prompt_len - 1 : -1] * mask,
            scores,
        )

    def step(self, ro: Rollout) -> dict[str, float]:
        cfg = self.config
        kl = (ro.logprobs - ro.ref_logprobs) * ro.mask
        scores = ro.scores
        if cfg.normalize_rewards:
            self.moments.update(scores)
            scores = self.moments.normalize(scores)
        if cfg.whiten_rewards and len(scores) > 1:
            scores = (scores - scores.mean()) / (scores.std() + 1e-8)
        rewards = -self.kl_ctl.value * kl
        last = (ro.mask.sum(1).long() - 1).clamp(min=0)
        rewards[torch.arange(len(scores), device=scores.device), last] += scores
        advantages, returns = compute_gae(rewards, ro.values, ro.mask, gamma=cfg.gamma, lam=cfg.lam)
        advantages = masked_whiten(advantages, ro.mask)
        stats: dict[str, list[float]] = {"pg_loss": [], "vf_loss": [], "clipfrac": []}
        self.model.train()
        indices = list(range(len(ro.prompts)))
        device = ro.mask.device
        for _ in range(cfg.ppo_epochs):
            self.rng.shuffle(indices)
            for start in range(0, len(indices), cfg.minibatch_size):
                mb = torch.tensor(indices[start : start + cfg.minibatch_size], device=device)
                with self.placement.autocast():
                    logits, values = self.trained(
                        ro.sequences[mb], ro.attention_mask[mb], ro.prompt_len
                    )
                logprobs = reply_logprobs(logits, ro.sequences[mb], ro.prompt_len, cfg.temperature)
                values = values.float()[:, ro.prompt_len - 1 : -1]
                mask = ro.mask[mb]
                pg_loss, clipfrac = clipped_policy_loss(
                    logprobs, ro.logprobs[mb], advantages[mb], mask, cliprange=cfg.cliprange
                )
                vf_loss = clipped_value_loss(
                    values, ro.values[mb], returns[mb], mask, cliprange_value=cfg.cliprange_value
                )
                loss = pg_loss + cfg.vf_coef * vf_loss
                self.optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                stats["pg_loss"].append(pg_loss.item())
                stats["vf_loss"].append(vf_loss.item())
                stats["clipfrac"].append(clipfrac.item())
        mean_kl = distributed.mean(kl.sum(1).mean().item())  # every rank's KL controller alike
        result = {
            "mean_score": distributed.mean(ro.scores.mean().item()),
            "mean_kl": mean_kl,
            "kl_coef": self.kl_ctl.value,
            "mean_reply_tokens": ro.mask.sum(1).mean().item(),
            **{k: sum(v) / max(len(v), 1) for k, v in stats.items()},
        }
        self.kl_ctl.update(mean_kl, len(ro.prompts))
        self.rollouts.sync(self.model.policy)  # the next rollout samples the new policy
        return result

    def train(
        self, prompts: Sequence[Messages], *, progress: bool = True
    ) -> list[dict[str, float]]:
        """Run ``config.steps`` iterations on batches drawn from ``prompts``; return step stats."""
        if not prompts:
            raise ValueError("PPO needs at least one prompt")
        history: list[dict[str, float]] = []
        torch.manual_seed(self.config.seed + distributed.rank())
        pool = list(prompts)
        bar = tqdm(range(self.config.steps), desc="PPO", disable=not progress, unit="step")
        for step in bar:
            batch = [pool[self.rng.randrange(len(pool))] for _ in range(self.config.batch_size)]
            stats = self.step(self.rollout(batch))
            stats["step"] = step
            history.append(stats)
            bar.set_postfix(score=f"{stats['mean_score']:.3f}", kl=f"{stats['mean_kl']:.3f}")
            logger.debug("ppo step %d: %s", step, stats)
        return history


def load_models(
    policy_dir: Path, ref_dir: Path, placement: Placement
) -> tuple[nn.Module, nn.Module, Any]:
    """The policy (fp32 master weights), the frozen reference and the tokenizer, on
    ``placement``'s device."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    policy = placement.load_causal_lm(policy_dir, trainable=True)
    reference = placement.load_causal_lm(ref_dir, trainable=False)
    return policy, reference, tokenizer
