"""A rule-based term beside the policy's learned reward: how much of a reply is
found in the sources it was given.

The term is the share of the reply's words that occur in the prompt's system
messages (the header and the retrieved handbook sources), as the reward model
reads the prompt. A reward model can add ``w`` times it to its score
(``RewardStageConfig.grounding``); ``w`` is fixed in the config or fitted on the
model's own training slice (:func:`fit_weight`, never on held-out pairs) and kept
beside the weights (:func:`save_weight`), so that every reader of the model (PPO,
the gates, the probe) scores the same sum.

Why: on the demo's feedback a 135M reward model trained in the demo's budget
orders the draft-vs-draft pairs at chance, while this term alone orders 49 of 60
held-out pairs right (training/RECIPES.md, "Reward model and judge"). It belongs
in the policy's reward only: the judge stays a learned model of the users'
ratings, so that a policy that games the term (copying whole sources) is caught
by the judge's gates and the length gate, not rewarded by both.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from training.snapshot import Messages

_WORD = re.compile(r"\w+")

# The weights :func:`fit_weight` chooses from.
WEIGHTS = (0.0, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 100.0)

WEIGHT_FILE = "ratchet_grounding.json"


def grounding(prompt: Messages, reply: str) -> float:
    """Share of ``reply``'s words that occur in ``prompt``'s system messages (0 for an
    empty reply)."""
    seen = {
        w
        for msg in prompt
        if msg["role"] == "system"
        for w in _WORD.findall(msg["content"].lower())
    }
    words = _WORD.findall(reply.lower())
    return sum(w in seen for w in words) / max(1, len(words))


def fit_weight(rm_margins: Sequence[float], ground_margins: Sequence[float]) -> float:
    """The weight ``w`` (from :data:`WEIGHTS`, the smallest of the best) with which
    ``rm + w * grounding`` orders the most pairs right; the margins are chosen minus
    rejected, one per pair."""

    def right(w: float) -> int:
        return sum(r + w * g > 0 for r, g in zip(rm_margins, ground_margins, strict=True))

    return max(WEIGHTS, key=lambda w: (right(w), -w))


def save_weight(model_dir: Path, weight: float) -> None:
    (model_dir / WEIGHT_FILE).write_text(json.dumps({"weight": weight}) + "\n")


def load_weight(model_dir: Path) -> float:
    """The grounding weight saved beside the reward model in ``model_dir`` (0: none)."""
    path = model_dir / WEIGHT_FILE
    if not path.exists():
        return 0.0
    return float(json.loads(path.read_text())["weight"])
