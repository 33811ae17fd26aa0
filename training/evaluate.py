"""Evaluation pieces used by the gates: generation, reward-model judging with a
bootstrap confidence interval, KL to the reference, and golden-fact hits (refusal
detection is training/refusals.py)."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from training.device import Placement
from training.ppo import reply_logits, reply_logprobs, sample_replies
from training.snapshot import Messages
from training.suites_io import GoldenQuestion

logger = logging.getLogger(__name__)


def fact_hit_rate(replies: Sequence[str], golden: Sequence[GoldenQuestion]) -> float:
    """Mean over questions of the fraction of required facts present (case-insensitive)."""
    if not golden:
        return float("nan")
    rates = []
    for reply, q in zip(replies, golden, strict=True):
        text = reply.lower()
        rates.append(sum(f.lower() in text for f in q.facts) / max(len(q.facts), 1))
    return sum(rates) / len(rates)


def bootstrap_ci(
    values: Sequence[float], *, samples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, lower, upper) of a percentile bootstrap over ``values``."""
    if not values:
        return float("nan"), float("nan"), float("nan")
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(samples))
    alpha = (1.0 - confidence) / 2
    lower = means[int(alpha * (samples - 1))]
    upper = means[int((1 - alpha) * (samples - 1))]
    return sum(values) / n, lower, upper


class Policy:
    """A causal LM loaded for evaluation, on ``placement``'s device in its frozen dtype
    (bf16 on a GPU, the checkpoint's own on the CPU)."""

    def __init__(self, model_dir: Path | str, *, placement: Placement | None = None) -> None:
        from transformers import AutoTokenizer

        self.model_dir = Path(model_dir)
        self.placement = placement or Placement.resolve()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = self.placement.load_causal_lm(model_dir, trainable=False)
        self.model.eval().requires_grad_(False)

    def generate(
        self,
        prompts: Sequence[Messages],
        *,
        max_new_tokens: int,
        do_sample: bool,
        seed: int = 0,
        batch_size: int = 8,
        max_prompt_length: int = 256,
    ) -> tuple[list[str], list[tuple[torch.Tensor, torch.Tensor, int]]]:
        """Replies, and per batch (sequences, attention mask, prompt length) for scoring."""
        torch.manual_seed(seed)
        texts: list[str] = []
        batches = []
        for start in range(0, len(prompts), batch_size):
            seqs, attn, plen, out = sample_replies(
                self.model,
                self.tokenizer,
                prompts[start : start + batch_size],
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                max_prompt_length=max_prompt_length,
            )
            texts.extend(out)
            batches.append((seqs, attn, plen))
        return texts, batches

    @torch.no_grad()
    def reply_logprob_sums(
        self, seqs: torch.Tensor, attn: torch.Tensor, prompt_len: int
    ) -> torch.Tensor:
        seqs, attn = seqs.to(self.placement.device), attn.to(self.placement.device)
        logits, _ = reply_logits(self.model, seqs, attn, prompt_len)
        mask = attn[:, prompt_len:].float()
        return (reply_logprobs(logits, seqs, prompt_len, 1.0) * mask).sum(1)


def reply_kls(
    candidate: Policy, reference: Policy, batches: Sequence[tuple[torch.Tensor, torch.Tensor, int]]
) -> list[float]:
    """Per reply sampled from the candidate, log p_candidate - log p_reference: each a
    one-sample Monte-Carlo estimate of KL(candidate || reference) for its prompt."""
    kls: list[float] = []
    for seqs, attn, plen in batches:
        diff = candidate.reply_logprob_sums(seqs, attn, plen) - reference.reply_logprob_sums(
            seqs, attn, plen
        )
        kls.extend(diff.tolist())
    return kls


def mean_kl(
    candidate: Policy, reference: Policy, batches: Sequence[tuple[torch.Tensor, torch.Tensor, int]]
) -> float:
    """Monte-Carlo KL(candidate || reference) per reply, over replies sampled from the candidate."""
    return summary(reply_kls(candidate, reference, batches))


def win_rates(
    cand_scores: Sequence[float], prod_scores: Sequence[float], per_prompt: int
) -> list[float]:
    """Per prompt: the fraction of its samples where the candidate scored higher (ties 0.5)."""
    out: list[float] = []
    for start in range(0, len(cand_scores), per_prompt):
        c = cand_scores[start : start + per_prompt]
        p = prod_scores[start : start + per_prompt]
        out.append(
            sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(c, p, strict=True))
            / len(c)
        )
    return out


def unique_prompts(prompts: Sequence[Messages], limit: int) -> list[Messages]:
    seen: set[str] = set()
    out: list[Messages] = []
    for p in prompts:
        key = repr(p)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out[:limit]


def summary(values: Sequence[Any]) -> float:
    return sum(values) / len(values) if values else float("nan")
