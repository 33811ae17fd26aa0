"""Settings of the demo driver: ``RATCHET_DEMO_*`` variables (and the shared
``RATCHET_HOME``). ``RATCHET_DEMO_SIZE=tiny`` runs the same loop on the tiny
test model with a handful of questions (the e2e test uses it)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ratchet.settings import RatchetSettings

# How the demo splits and retrieves the handbook for SmolLM2-135M (the API's and
# the KB's own defaults, 800-character chunks and 4 of them, make prompts of 374
# tokens in the median and up to 941). The demo's stages train on 384 tokens (256
# for PPO's prompts), so the reward model kept one source or none and SFT cut a
# third of its examples. 400-character chunks, 2 of them: the median prompt is 257
# tokens (at most 331), the source holding the figure is ranked first for 115 of
# the 124 questions (108 at 800) and is in the prompt for 117 (116 with 4 of 800);
# SFT cut 1 of 89 examples in a demo. Measured in whole demos (training/RECIPES.md,
# "Sources the size of the training window"). RATCHET_KB_CHUNK_SIZE,
# RATCHET_KB_CHUNK_OVERLAP and RATCHET_RETRIEVAL_K override them.
CHUNK_SIZE = 400
CHUNK_OVERLAP = 50
RETRIEVAL_K = 2
# Each of the 2 sources cut to its 2 sentences closest to the question, the closest
# first (serving/kb/excerpts.py; RATCHET_KB_EXCERPT_SENTENCES overrides it). Whole,
# a source's first sentence held the figure for 32 of the 124 questions; cut, for
# 110, and the prompt's sources hold it for 116 against 118 (training/RECIPES.md,
# "Excerpts of the sources").
EXCERPT_SENTENCES = 2

# The simulated employees, in the order they join (`RATCHET_DEMO_EMPLOYEES` takes the first N).
EMPLOYEE_NAMES = ["ana", "bruno", "carla", "diogo", "eva", "filipe", "gita", "hugo"]


class DemoSettings(RatchetSettings):
    """How big the demo is and where it runs. Unset sizes follow ``size``. The shared
    fields (``RATCHET_HOME``: the demo keeps its files in demo/ below it) keep their names."""

    model_config = SettingsConfigDict(env_prefix="RATCHET_DEMO_")

    size: Literal["full", "tiny"] = Field(
        default="full", description="full: SmolLM2-135M, all questions; tiny: the tiny test model."
    )
    host: str = Field(default="127.0.0.1", description="Address the demo API listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port of the demo API.")
    model: Path | None = Field(
        default=None,
        description="Base model directory (default: models/base, or the tiny model for tiny).",
    )
    kb_dir: Path = Field(
        default=Path(__file__).parent / "kb", description="Knowledge base to ingest."
    )
    asked: int | None = Field(
        default=None,
        ge=1,
        description="Questions the employees ask (default 84: all those not held out; tiny"
        " 15), spread over those not held out; caps the feedback phase's length.",
    )
    refusals: int | None = Field(
        default=None,
        ge=0,
        description="Out-of-policy requests the employees make and want declined (default 40,"
        " all of kb/out_of_policy.yaml; tiny 0).",
    )
    held_out: int | None = Field(
        default=None,
        ge=1,
        description="Questions kept out of feedback, asked before and after (default 40, tiny 3).",
    )
    employees: int | None = Field(
        default=None,
        ge=1,
        le=len(EMPLOYEE_NAMES),
        description="Simulated employees, each with one chat at a time (default 8, tiny 2): the"
        " engine batches their drafts, and each key stays within the API's rate limit.",
    )
    rounds: int | None = Field(
        default=None, ge=1, description="Times each employee asks each of their questions."
    )
    max_tokens: int | None = Field(default=None, ge=1, description="Reply length of the API.")
    correct_every: int | None = Field(
        default=None,
        ge=1,
        description="Employees suggest a correction for every Nth question whose drafts both"
        " miss the figure (tiny: every one, since the random model's drafts always tie).",
    )
    canary_picks: int | None = Field(
        default=None,
        ge=1,
        description="A/B picks the employees give in the canary stage (default: the promotion"
        " policy's minimum, canary_min_picks in gates.yaml).",
    )
    cycles: int = Field(
        default=1,
        ge=1,
        le=5,
        description="Training cycles in a row (2: a second round of feedback on the version the"
        " first promoted, then training, gates, canary stage and promotion on top of it).",
    )
    force_promote: bool = Field(
        default=False,
        description="Promote the candidate even if its gates or its canary stage refuse it"
        " (audited as force_promote).",
    )
    start_timeout_s: float = Field(default=600.0, gt=0, description="Wait for the API to be ready.")
    swap_timeout_s: float = Field(default=600.0, gt=0, description="Wait for the hot swap.")
    settle_timeout_s: float = Field(
        default=120.0, gt=0, description="Wait for the consumer to store every rating."
    )
    fresh: bool = Field(default=False, description="Ignore what an earlier demo run left.")

    @property
    def tiny(self) -> bool:
        return self.size == "tiny"

    @property
    def demo_dir(self) -> Path:
        return self.home / "demo"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def n_asked(self) -> int:
        return self.asked or (15 if self.tiny else 84)

    def n_refusals(self) -> int:
        return self.refusals if self.refusals is not None else (0 if self.tiny else 40)

    def n_held_out(self) -> int:
        return self.held_out or (3 if self.tiny else 40)

    def n_employees(self) -> int:
        return self.employees or (2 if self.tiny else 8)

    def n_rounds(self) -> int:
        return self.rounds or 2

    def n_correct_every(self) -> int:
        return self.correct_every or (1 if self.tiny else 2)

    def n_canary_picks(self) -> int:
        if self.canary_picks:
            return self.canary_picks
        from training.gates import load_thresholds
        from training.settings import TrainingSettings

        return load_thresholds(TrainingSettings().gates_config).canary_min_picks

    def reply_tokens(self) -> int:
        return self.max_tokens or (16 if self.tiny else 80)
