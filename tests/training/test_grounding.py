"""The grounding term beside the policy's learned reward (``training.grounding``):
what it measures, how its weight is chosen (on the training slice, never the
held-out one), that it travels with the saved reward model to every reader of
it, and that the judge may not use it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from pydantic import ValidationError

from training.cycle_config import TrainCycleConfig
from training.grounding import WEIGHT_FILE, fit_weight, grounding
from training.reward import RewardScorer, grounding_fit_pairs, sample_pairs, train_reward_model
from training.reward_config import RewardStageConfig
from training.snapshot import Pair

SOURCE_WORDS = "annual leave is twenty five working days per calendar year".split()
OTHER_WORDS = "fox dog lazy brown quick jumps over maybe".split()


def test_the_term_is_the_share_of_reply_words_found_in_the_system_messages() -> None:
    prompt = [
        {"role": "system", "content": "Answer from the sources.\n[1] Leave is 25 days."},
        {"role": "user", "content": "How long is the fox's leave?"},
    ]
    assert grounding(prompt, "Leave is 25 days") == 1.0
    assert grounding(prompt, "leave is MAYBE 30 days") == 3 / 5  # case-blind; 30 not there
    assert grounding(prompt, "a fox") == 0.0  # the user's words are not sources
    assert grounding(prompt, "") == 0.0


def test_the_weight_is_the_smallest_that_orders_the_most_pairs() -> None:
    # The model alone orders the first pair; the grounding term the other two, from
    # w = 5 on (-1 + 2 x 0.5 is a tie, not a win).
    assert fit_weight([1.0, -1.0, -1.0], [0.0, 0.5, 0.5]) == 5.0
    assert fit_weight([1.0, 1.0], [-0.1, 0.2]) == 0.0


def grounded_pairs(n: int, *, seed: int, grounded_wins: bool = True) -> list[Pair]:
    """Pairs whose prompt carries a source; one reply copies it, the other does not.
    The grounded reply is the chosen one, or with ``grounded_wins`` False the rejected."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        prompt = [
            {"role": "system", "content": "[1] " + " ".join(SOURCE_WORDS) + " (leave.md)"},
            {"role": "user", "content": f"question {i}: how long is leave?"},
        ]
        copied = " ".join(rng.choice(SOURCE_WORDS) for _ in range(rng.randint(4, 8)))
        other = " ".join(rng.choice(OTHER_WORDS) for _ in range(rng.randint(4, 8)))
        chosen, rejected = (copied, other) if grounded_wins else (other, copied)
        pairs.append(Pair(prompt, chosen, rejected, f"conv-{seed}-{i}"))
    return pairs


# A learning rate this small leaves the tiny reward model where its seeded head
# started: its own scores cannot have learned the pairs, so what orders them is the term.
BARELY = {"epochs": 1, "learning_rate": 1e-9, "batch_size": 4, "max_length": 256}


def test_a_fitted_term_orders_the_held_out_pairs_the_model_alone_cannot(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    config = RewardStageConfig(**BARELY, grounding="fit")
    held_out = grounded_pairs(12, seed=1)
    result = train_reward_model(
        tiny_model_dir, grounded_pairs(16, seed=0), held_out, tmp_path, config, progress=False
    )
    weight = result.train_metrics["grounding_weight"]
    assert weight > 0
    assert result.train_metrics["grounding_fit_pairs"] == 16  # it trained on all of them
    assert result.heldout_accuracy == 1.0
    assert result.train_metrics["model_heldout_accuracy"] < 1.0
    # Every reader of the saved model (PPO's reward, the gates) scores the same sum.
    assert (result.model_dir / WEIGHT_FILE).exists()
    scorer = RewardScorer(result.model_dir, max_length=256)
    assert scorer.grounding_weight == weight
    prompts = [p.prompt for p in held_out]
    replies = [p.chosen for p in held_out]
    learned = scorer.model_scores(prompts, replies)
    terms = scorer.grounding_terms(prompts, replies)
    expected = [s + weight * g for s, g in zip(learned, terms, strict=True)]
    assert scorer.score(prompts, replies) == pytest.approx(expected)
    assert scorer.accuracy(held_out) == 1.0


def test_the_weight_is_fitted_on_the_training_slice_never_the_held_out_one(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The training slice prefers the ungrounded reply, the held-out slice the grounded
    one: the fit follows the training slice (no term), though the held-out slice would
    reward a large weight."""
    config = RewardStageConfig(**BARELY, grounding="fit")
    result = train_reward_model(
        tiny_model_dir,
        grounded_pairs(16, seed=0, grounded_wins=False),
        grounded_pairs(12, seed=1),
        tmp_path,
        config,
        progress=False,
    )
    assert result.train_metrics["grounding_weight"] == 0.0
    assert result.heldout_accuracy == result.train_metrics["model_heldout_accuracy"]


def test_the_weight_is_fitted_where_the_models_margins_are_out_of_sample() -> None:
    """With ``max_train_pairs`` the fit uses the slice's pairs the model did not train on
    (its margins on its own training pairs are overconfident); when too few were left
    out, the whole slice."""
    pairs = grounded_pairs(40, seed=0)
    trained = sample_pairs(pairs, 20, seed=0)
    fit_on = grounding_fit_pairs(pairs, trained)
    assert len(fit_on) == 20 and not {id(p) for p in fit_on} & {id(p) for p in trained}
    assert grounding_fit_pairs(pairs, sample_pairs(pairs, 30, seed=0)) == pairs  # 10 < 16


def test_a_fixed_weight_is_kept_and_no_setting_means_no_term(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    pairs = grounded_pairs(8, seed=0)
    fixed = train_reward_model(
        tiny_model_dir,
        pairs,
        pairs[:4],
        tmp_path / "fixed",
        RewardStageConfig(**BARELY, grounding=2.5),
        progress=False,
    )
    assert RewardScorer(fixed.model_dir).grounding_weight == 2.5
    plain = train_reward_model(
        tiny_model_dir,
        pairs,
        pairs[:4],
        tmp_path / "plain",
        RewardStageConfig(**BARELY),
        progress=False,
    )
    assert not (plain.model_dir / WEIGHT_FILE).exists()
    assert "grounding_weight" not in plain.train_metrics
    assert RewardScorer(plain.model_dir).grounding_weight == 0.0


def test_the_judge_may_not_use_the_term() -> None:
    assert TrainCycleConfig.model_validate({"reward": {"grounding": "fit"}}).reward.grounding
    with pytest.raises(ValidationError, match="judge.grounding must be unset"):
        TrainCycleConfig.model_validate({"judge": {"grounding": "fit"}})
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        TrainCycleConfig.model_validate({"reward": {"grounding": -1.0}})
