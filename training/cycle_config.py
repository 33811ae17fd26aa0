"""How big a training cycle is: one :class:`TrainCycleConfig`, with named sizes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, Field, model_validator

from training.contrast_config import ContrastStageConfig
from training.dpo_config import DpoStageConfig
from training.errors import TrainingError
from training.gates import EvalConfig
from training.kto_config import KtoStageConfig
from training.ppo_config import PpoStageConfig
from training.reward_config import RewardStageConfig
from training.sft_config import SftStageConfig


class TrainCycleConfig(BaseModel):
    min_pairs: int = Field(default=16, ge=2, description="Skip the cycle with fewer new pairs.")
    heldout_fraction: float = Field(
        default=0.2, gt=0, lt=1, description="Share of prompts held out for the gates."
    )
    judge_fraction: float = Field(
        default=0.3, gt=0, lt=1, description="Share of prompts that train only the judge."
    )
    window_days: float | None = Field(
        default=None,
        gt=0,
        description="Train on the feedback of the last N days (None: all of it, cumulative).",
    )
    seed: int = Field(default=0, description="Seed of every stage.")
    stages: list[str] = Field(
        default_factory=lambda: ["sft"],
        description="Policy stages run before the algorithm (see training/stages.py), in order; "
        "each is skipped when it has too little data.",
    )
    sft: SftStageConfig = Field(default_factory=SftStageConfig)
    reward: RewardStageConfig = Field(default_factory=RewardStageConfig)
    judge: RewardStageConfig = Field(
        default_factory=RewardStageConfig, description="The independent judge reward model."
    )
    ppo: PpoStageConfig = Field(default_factory=PpoStageConfig)
    dpo: DpoStageConfig = Field(default_factory=DpoStageConfig)
    contrast: ContrastStageConfig = Field(
        default_factory=ContrastStageConfig,
        description="DPO on refusal-contrast pairs (training/contrast.py), as a preset stage.",
    )
    kto: KtoStageConfig = Field(default_factory=KtoStageConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _judge_is_learned_only(self) -> TrainCycleConfig:
        if self.judge.grounding is not None:
            raise ValueError(
                "judge.grounding must be unset: the judge is a learned model of the users'"
                " ratings, so that a policy gaming the grounding term is not rewarded by the"
                " gates too (set reward.grounding for the policy's reward model)"
            )
        return self

    def window_start(self) -> datetime | None:
        """Where the training window starts (None: the beginning of the feedback)."""
        if self.window_days is None:
            return None
        return datetime.now(UTC) - timedelta(days=self.window_days)

    @classmethod
    def for_size(cls, size: str) -> TrainCycleConfig:
        try:
            return cls.model_validate(SIZES[size])
        except KeyError as exc:
            raise TrainingError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}") from exc


# The `demo` preset's policy reward model and judge: one setting for both (their comments
# in SIZES["demo"] say why).
_DEMO_REWARD_MODEL: dict = {
    "epochs": 1,
    "learning_rate": 1e-4,
    "batch_size": 4,
    "max_length": 384,
    # ~100 s per step of 8 on 2 busy cores: a rerun of the demo (its pairs plus
    # the ones pairing replies across runs) would otherwise take half an hour here.
    "max_train_pairs": 64,
    # One pair a pass, activations kept: 27% less time a step than the whole batch
    # with checkpointing, and less memory (4.6 GB against 6.4; RECIPES.md).
    "micro_batch_size": 1,
    "gradient_checkpointing": False,
    # The score head's mean over the reply's tokens, not its value at the last token
    # (training/readout.py). On two demos' stores, in four draws: the reward model
    # 182 of 247 held-out pairs right against 151, and 177 of 269 on the judge's slice
    # against 164; the judge 165 against 147, but 476 of 701 on the policy's slice
    # against 489, no better over both (RECIPES.md, "The mean readout"). One setting
    # for both. Measured on this preset only: the other presets read the last token.
    "readout": "mean",
}

# "tiny": the random test model, seconds. "demo": SmolLM2-135M on CPU, a few minutes.
# "full": a GPU-sized cycle.
SIZES: dict[str, dict] = {
    "tiny": {
        "min_pairs": 16,
        "sft": {
            "min_examples": 8,
            "epochs": 1,
            "learning_rate": 1e-3,
            "batch_size": 8,
            "max_length": 1024,
        },
        "reward": {"epochs": 2, "learning_rate": 1e-3, "batch_size": 16, "max_length": 1024},
        "judge": {"epochs": 2, "learning_rate": 1e-3, "batch_size": 16, "max_length": 1024},
        "ppo": {
            "steps": 30,
            "batch_size": 16,
            "minibatch_size": 8,
            "ppo_epochs": 2,
            "learning_rate": 5e-4,
            "max_new_tokens": 16,
            # The reward model of a tiny cycle is saturated: random replies all score about
            # the same, so only whitened scores stand out from the per-token KL penalty.
            "whiten_rewards": True,
            # A horizon short enough for the controller to act within 30 steps.
            "init_kl_coef": 0.1,
            "target_kl": 6.0,
            "kl_horizon": 200,
            "max_prompt_length": 64,
            # Kept on transformers: the tiny cycle's tests were calibrated on its samples,
            # and a vLLM engine's start-up (~20 s here) is a large share of a tiny cycle.
            "rollout_engine": "hf",
        },
        "dpo": {
            "epochs": 2,
            "learning_rate": 5e-4,
            "batch_size": 16,
            "beta": 0.1,
            "max_length": 1024,
        },
        "kto": {
            "min_examples": 8,
            "epochs": 2,
            "learning_rate": 5e-4,
            "batch_size": 16,
            "beta": 0.1,
            "max_length": 1024,
        },
        "eval": {
            "prompts": 24,
            "samples_per_prompt": 2,
            "max_new_tokens": 16,
            "bootstrap_samples": 500,
            "golden_limit": 8,
            "safety_limit": 8,
            "batch_size": 16,
        },
    },
    "demo": {
        "min_pairs": 16,
        # Measured with `python -m infra.demo.probe --kl` on a demo's stored feedback
        # (RECIPES.md, "SFT learning rate against the KL gate"): one epoch over all 90
        # examples at 4e-5 moved the held-out cites rate 15% -> 55% (p = 0.0004) and the
        # exact figure 25% -> 38% (p = 0.23) for 16 nats of the KL gate's 25; 5e-5 used
        # 24.2 (no margin), and 1e-4 (the preset before) 49-57, which the gate refused.
        "sft": {
            "min_examples": 8,
            "epochs": 1,
            "learning_rate": 5e-5,
            "batch_size": 4,
            # Same step, less time (RECIPES.md, "Micro-batches without checkpointing"):
            # two examples a pass, activations kept, 14% less time a step.
            "micro_batch_size": 2,
            "gradient_checkpointing": False,
            "max_length": 384,
            # The refusal corrections once (RECIPES.md, "Where the KL gate's nats go"): with
            # the employees citing a source by its number ("According to [2], ..."), a
            # probe on a demo's feedback read the KL gate at 19.3 and safety 5/8 at 5e-5;
            # at 4e-5 with the refusals twice, 33.5 and 8/8, 6 of its 32 replies declining a
            # handbook question. With the corrections' earlier opening ("According to the
            # handbook (path):", ~22 nats a reply) no rate or weight passed the KL gate.
            # With one refusal for all 40 requests, 3-8 of the gate's 32 replies declined
            # a handbook question at 77-89 nats each, and the gate read 26.9-36.3 in four
            # demos; with each request's own refusal a probe read 21.6 on the same
            # feedback and the next two demos 20.8 and 25.9, a decline costing 29-43 nats
            # (RECIPES.md, "Refusals that name the request").
            "refusal_weight": 1.0,
            # SFT in fp32 where the cycle trains under bf16 autocast (a GPU, or a CPU with
            # bf16 instructions): on one demo's feedback this SFT under autocast
            # kept 3 of the safety gate's 8 refusals and declined no held-out question; in
            # fp32, 8 of 8 and 4 (RECIPES.md, "Training under bf16 autocast on a CPU with bf16
            # instructions"). A no-op in fp32 precision (a CPU without bf16 instructions).
            "precision": "fp32",
        },
        # The reward model and the judge start from the parent policy (`init` left at
        # "parent"): starting from the previous cycle's (`init: previous`) is not measured.
        # Every layer trains (`train_layers` unset): in a probe on a demo's 144 policy pairs
        # (RECIPES.md), the top 4 or 8 blocks alone made a step 3-4x cheaper (12-15 s vs
        # 43 s) but held-out accuracy fell to 0.385-0.519 on 52 pairs, against 0.654-0.692.
        # The grounding term (`grounding`, training/grounding.py) stays off: beside run D's
        # reward model it passed the accuracy gate (48/60), beside run E's it ordered fewer
        # held-out pairs right than the model alone (38/53 against 40/53; RECIPES.md).
        # Five times the rate, half the batch (16 steps of 4, the same pairs and time): on
        # two demos' stores the reward model ordered 54 and 55 held-out pairs right where
        # lr 2e-5 and batch 8 ordered 45 of 73 and 49 of 75 (RECIPES.md, "One engine for
        # the offline replay, and excerpts on the bf16 EPYC"). The judge the same, on up to
        # 64 of its pairs (all of them in these stores): at 2e-5, batch 8, on 32 pairs (4
        # steps) its loss stayed at chance (0.69-0.71), and on three demos' stores this
        # setting ordered 45 of 58, 45 of 54 and 42 of 70 held-out pairs right against 42,
        # 36 and 38, for 23-39 s more (RECIPES.md, "The AMX Xeon with excerpts, and PPO's
        # logits from an fp32 head").
        "reward": _DEMO_REWARD_MODEL,
        "judge": _DEMO_REWARD_MODEL,
        # PPO at 1e-5 and 2e-5 (probe on run E's models, RECIPES.md) raised its reward but
        # not the held-out yardstick, and at 2e-5 cut the cites rate SFT taught (62% -> 40%).
        "ppo": {
            "steps": 8,
            "batch_size": 8,
            "minibatch_size": 4,
            "ppo_epochs": 1,
            "learning_rate": 2e-6,
            "max_new_tokens": 40,
            "init_kl_coef": 0.1,
            "target_kl": 4.0,
            "kl_horizon": 1000,
            "max_prompt_length": 256,
        },
        "dpo": {
            "epochs": 1,
            "learning_rate": 5e-6,
            "batch_size": 4,
            "beta": 0.1,
            "max_length": 384,
        },
        # Not in `stages`: in a probe on one demo's feedback (RECIPES.md, "Refusals that
        # stay off handbook questions") this setting cut the SFT model's replies that
        # declined from 4 of 32 to 1 and its KL from 28.0 to 24.9 (safety 7/8), but a whole
        # demo with it read the KL gate at 32.5, and on another demo's feedback it raised
        # the declines from 7 to 10 (RECIPES.md, "Packed pairs, and a demo with the
        # contrast stage"). With the named refusals, three whole demos with it passed the
        # KL gate (23.1, 23.0, 22.1) and declined 0-1 held-out questions, but safety read
        # 6/8, 4/8 and 4/8 (the floor), the offline exact figure 42%, 57% and 35%, against
        # 42%, 35% and 35% and safety 8/8 in three demos without it, for 140-190 s more
        # (RECIPES.md, "The contrast stage in three whole demos"). `"stages": ["sft",
        # "contrast"]` runs it.
        "contrast": {
            "epochs": 1,
            "learning_rate": 2e-5,
            "batch_size": 4,
            "beta": 0.1,
            "max_length": 384,
            "max_pairs": 48,
        },
        "kto": {
            "min_examples": 16,
            "epochs": 1,
            "learning_rate": 5e-6,
            "batch_size": 4,
            "beta": 0.1,
            "max_length": 384,
        },
        "eval": {
            "prompts": 16,
            "samples_per_prompt": 2,
            "max_new_tokens": 40,
            "bootstrap_samples": 1000,
            "golden_limit": 8,
            "safety_limit": 8,
            "batch_size": 8,
        },
    },
    "full": {
        "min_pairs": 200,
        "ppo": {
            "steps": 200,
            "batch_size": 64,
            "minibatch_size": 16,
            "ppo_epochs": 4,
            "max_new_tokens": 128,
        },
        "reward": {"epochs": 1},
        "judge": {"epochs": 1},
        "eval": {"prompts": 200, "samples_per_prompt": 4, "max_new_tokens": 128},
    },
}
