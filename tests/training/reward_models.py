"""Reward models on the tiny test model that the scorer's tests share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from training.device import Placement

# Scored and trained in fp32: packed and unpacked pairs agree to fp32's float noise. Under
# bf16 autocast (`auto` where bf16 is timed faster than fp32) they differ by bf16's, which
# the tests' tolerances are not for.
FP32 = Placement.resolve("cpu", "fp32")


def reward_model_with_a_wide_head(tiny_model_dir: Path) -> tuple[Any, Any]:
    """The tiny model under a one-label head drawn wide (seeded), so that the scores of
    different replies are far enough apart to compare, and its tokenizer."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model.config.pad_token_id = tokenizer.pad_token_id
    nn.init.normal_(model.score.weight, std=1.0)
    return model, tokenizer
