"""Where a cycle's reward models start (``init``): a second cycle with ``init:
previous`` starts its policy RM from the first cycle's policy RM and its judge from
the first judge, and says so in the run record; it falls back to the parent policy,
with the reason, when there is no earlier run, when the earlier run sliced the
prompts otherwise, or when the earlier reward model sits on another base.

Two cheap cycles on the tiny model (no SFT, DPO, a few evaluation prompts). The
second trains its reward models at a learning rate of 1e-9, so their weights are
the ones they started from: that tells which model they were loaded from."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import torch

from tests.training.isolated import make_settings
from tests.training.synthetic import ListSource, make_pairs
from training import runs
from training.cycle import run_cycle
from training.cycle_config import TrainCycleConfig
from training.cycle_stages import reward_inits

pytestmark = pytest.mark.timeout(1800)


def cheap(*, init: str, learning_rate: float) -> TrainCycleConfig:
    tiny = TrainCycleConfig.for_size("tiny")
    rm = {"init": init, "learning_rate": learning_rate, "epochs": 1}
    return tiny.model_copy(
        update={
            "stages": [],
            "reward": tiny.reward.model_copy(update=rm),
            "judge": tiny.judge.model_copy(update=rm),
            "dpo": tiny.dpo.model_copy(update={"epochs": 1}),
            "eval": tiny.eval.model_copy(
                update={
                    "prompts": 4,
                    "samples_per_prompt": 1,
                    "golden_limit": 2,
                    "safety_limit": 2,
                    "bootstrap_samples": 100,
                }
            ),
        }
    )


def weights(model_dir: str) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    return {k: v.float() for k, v in model.state_dict().items()}


def max_change(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str = "") -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a if k.startswith(prefix))


def test_a_second_cycle_starts_its_reward_models_from_the_first_ones(
    database_url: str, tmp_path: Path, tiny_model_dir: Path, tiny_model_b_dir: Path
) -> None:
    settings = make_settings(database_url, tmp_path, tiny_model_dir)
    first_pairs = make_pairs(60)
    first = run_cycle(
        settings,
        algo="dpo",
        config=cheap(init="previous", learning_rate=1e-3),
        source=ListSource(first_pairs),
        progress=False,
    )
    parent = str(tiny_model_dir.resolve())
    for kind in ("reward", "judge"):  # nothing to start from: the parent, and why
        rm = first.metrics[kind]
        assert (rm["init"], rm["init_dir"]) == ("parent", parent), rm
        assert rm["init_fallback"] == "no earlier run succeeded"

    later = make_pairs(40, seed=3, start=datetime(2026, 11, 3, tzinfo=UTC))
    second = run_cycle(
        settings,
        algo="dpo",
        config=cheap(init="previous", learning_rate=1e-9),
        source=ListSource(first_pairs + later),
        progress=False,
    )
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        record = runs.get_run(conn, second.run_id)
    assert record is not None
    base = weights(parent)
    for kind in ("reward", "judge"):
        rm = record["metrics"][kind]
        assert (rm["init"], rm["init_dir"]) == ("previous", first.metrics[kind]["model_dir"])
        assert "init_fallback" not in rm
        before, after = weights(first.metrics[kind]["model_dir"]), weights(rm["model_dir"])
        assert max_change(before, after) < 1e-5  # loaded from the first cycle's model
        assert max_change(base, before, "model.") > 1e-4  # which had moved from the parent
    assert (
        max_change(
            weights(first.metrics["reward"]["model_dir"]),
            weights(first.metrics["judge"]["model_dir"]),
        )
        > 1e-4
    )  # the judge and the policy RM are two models, each continued on its own

    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        config = cheap(init="previous", learning_rate=1e-3)
        other_base = reward_inits(conn, config, tiny_model_b_dir)  # another vocabulary
        resliced = reward_inits(
            conn, config.model_copy(update={"heldout_fraction": 0.25}), tiny_model_dir
        )
        as_before = reward_inits(conn, cheap(init="parent", learning_rate=1e-3), tiny_model_dir)
    for kind in ("reward", "judge"):
        assert other_base[kind].origin == "parent" and other_base[kind].model_dir == (
            tiny_model_b_dir
        )
        assert "differs from the parent's" in other_base[kind].fallback
        assert resliced[kind].origin == "parent"
        assert "sliced the prompts otherwise" in resliced[kind].fallback
        assert as_before[kind].as_metrics() == {"init": "parent", "init_dir": str(tiny_model_dir)}
