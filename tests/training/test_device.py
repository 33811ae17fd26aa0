"""Device and precision: one Placement decides, and every stage honours it.

No GPU here, so dtype mistakes are caught with a bf16 checkpoint on the CPU: the
PPO step (value head, reference, scores), the reward scorer and the evaluator
all run on a tiny model saved in bf16."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ratchet import hardware
from tests.training.synthetic import make_pairs
from training.device import Placement, trl_arguments
from training.errors import TrainingError
from training.evaluate import Policy, mean_kl
from training.ppo import PpoTrainer, load_models
from training.ppo_config import PpoStageConfig
from training.reward import RewardScorer
from training.reward_config import RewardStageConfig
from training.sft import train_sft
from training.sft_config import SftStageConfig
from training.snapshot import SftExample

PPO = PpoStageConfig(
    steps=1, batch_size=4, minibatch_size=2, ppo_epochs=1, max_new_tokens=6, max_prompt_length=64
)


@pytest.fixture(scope="module")
def bf16_dirs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny model saved in bf16, and a bf16 reward model (untrained head) on it."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    root = tmp_path_factory.mktemp("bf16")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    policy_dir, reward_dir = root / "policy", root / "reward"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(
        policy_dir
    )
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(
        policy_dir, num_labels=1, dtype=torch.bfloat16
    )
    rm.config.pad_token_id = tokenizer.pad_token_id
    rm.save_pretrained(reward_dir)
    for d in (policy_dir, reward_dir):
        tokenizer.save_pretrained(d)
    return policy_dir, reward_dir


def prompts(n: int) -> list:
    return [p.prompt for p in make_pairs(n, seed=3)]


def test_auto_resolves_to_the_cpu_here_and_bad_values_are_named() -> None:
    placement = Placement.resolve()
    assert placement.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        assert placement.precision == ("bf16" if hardware.cpu_bf16_is_faster() else "fp32")
        with pytest.raises(TrainingError, match="no CUDA device"):
            Placement.resolve("cuda")
    with pytest.raises(TrainingError, match="unknown training precision 'fp8'"):
        Placement.resolve("cpu", "fp8")
    with pytest.raises(TrainingError, match="unknown training device 'gpu0'"):
        Placement.resolve("gpu0")


def cpu_with(monkeypatch: pytest.MonkeyPatch, *, bf16: bool, speedup: float = 2.0) -> None:
    """This CPU as one with (or without) bf16 instructions and that timed speedup."""
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: bf16)
    monkeypatch.setattr(hardware, "cpu_bf16_speedup", lambda: speedup)


def test_auto_precision_is_bf16_on_a_cpu_only_where_bf16_is_faster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without bf16 instructions autocast runs in emulation, slower than fp32; with them
    it was 1.5x faster on an EPYC and 0.76x as fast on a Xeon without AMX (RECIPES.md), so auto
    follows the timing. Either is given when asked for by name."""
    for has_bf16, speedup, auto in (
        (False, 3.0, "fp32"),  # no instructions: not trusted to any timing
        (True, 0.55, "fp32"),  # the Xeon without AMX
        (True, 1.19, "fp32"),
        (True, 1.5, "bf16"),  # the EPYC
    ):
        cpu_with(monkeypatch, bf16=has_bf16, speedup=speedup)
        assert Placement.resolve("cpu").precision == auto, (has_bf16, speedup)
        assert Placement.resolve("cpu", "bf16").precision == "bf16"
        assert Placement.resolve("cpu", "fp32").precision == "fp32"


def test_the_cpus_bf16_speedup_is_timed_once_per_process() -> None:
    hardware.cpu_bf16_speedup.cache_clear()
    speedup = hardware.cpu_bf16_speedup()
    assert math.isfinite(speedup) and speedup > 0
    assert hardware.cpu_bf16_speedup() == speedup  # the same figure: not timed again
    assert hardware.cpu_bf16_speedup.cache_info().misses == 1


def test_trl_arguments_carry_the_placement(tmp_path: Path) -> None:
    from trl import RewardConfig

    common = {
        "output_dir": tmp_path,
        "step": RewardStageConfig(batch_size=2),
        "epochs": 1,
        "learning_rate": 1e-4,
        "max_length": 64,
        "seed": 0,
        "progress": False,
    }
    fp32 = trl_arguments(RewardConfig, Placement.resolve("cpu", "fp32"), **common)
    bf16 = trl_arguments(RewardConfig, Placement.resolve("cpu", "bf16"), **common)
    assert fp32.device.type == bf16.device.type == "cpu"
    assert (fp32.bf16, bf16.bf16) == (False, True)
    assert fp32.per_device_train_batch_size == 2 and fp32.max_length == 64


def test_ppo_step_on_a_bf16_checkpoint(
    bf16_dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bf16 policy (value head in bf16) and bf16 reference, scored by a bf16 checkpoint
    in fp32: one step (as on a CPU where bf16 is faster, whatever this one is)."""
    cpu_with(monkeypatch, bf16=True)
    policy_dir, reward_dir = bf16_dirs
    placement = Placement.resolve("cpu", "fp32")
    scorer = RewardScorer(reward_dir, batch_size=4, max_length=64, placement=placement)
    assert next(scorer.model.parameters()).dtype == torch.float32  # not the checkpoint's
    policy = placement.load_causal_lm(policy_dir, trainable=False)  # bf16, as saved
    reference = placement.load_causal_lm(policy_dir, trainable=False)
    _, _, tokenizer = load_models(policy_dir, policy_dir, placement)
    trainer = PpoTrainer(policy, reference, tokenizer, scorer.score, PPO, placement=placement)
    assert trainer.model.value_head.weight.dtype == torch.bfloat16
    torch.manual_seed(0)
    rollout = trainer.rollout(prompts(PPO.batch_size))
    assert rollout.scores.dtype == torch.float32 and rollout.values.dtype == torch.float32
    stats = trainer.step(rollout)
    assert all(math.isfinite(v) for v in stats.values()), stats


def test_ppo_step_with_fp32_master_weights_under_bf16_autocast(
    bf16_dirs: tuple[Path, Path],
) -> None:
    """The GPU recipe (fp32 master weights, bf16 autocast, bf16 frozen models) on the CPU."""
    policy_dir, reward_dir = bf16_dirs
    placement = Placement.resolve("cpu", "bf16")
    policy, reference, tokenizer = load_models(policy_dir, policy_dir, placement)
    assert next(policy.parameters()).dtype == torch.float32
    assert next(reference.parameters()).dtype == torch.bfloat16
    scorer = RewardScorer(reward_dir, batch_size=4, max_length=64, placement=placement)
    trainer = PpoTrainer(policy, reference, tokenizer, scorer.score, PPO, placement=placement)
    before = trainer.model.value_head.weight.detach().clone()
    torch.manual_seed(0)
    stats = trainer.step(trainer.rollout(prompts(PPO.batch_size)))
    assert all(math.isfinite(v) for v in stats.values()), stats
    assert trainer.model.value_head.weight.dtype == torch.float32
    assert not torch.equal(before, trainer.model.value_head.weight)  # it trained


def test_scorer_and_evaluator_on_a_bf16_checkpoint(
    bf16_dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cpu_with(monkeypatch, bf16=True)
    policy_dir, reward_dir = bf16_dirs
    placement = Placement.resolve("cpu", "fp32")
    candidate = Policy(policy_dir, placement=placement)
    reference = Policy(policy_dir, placement=placement)
    assert next(candidate.model.parameters()).dtype == torch.bfloat16  # no forced fp32
    texts, batches = candidate.generate(prompts(3), max_new_tokens=5, do_sample=False)
    assert len(texts) == 3
    assert mean_kl(candidate, reference, batches) == pytest.approx(0.0, abs=1e-6)
    scores = RewardScorer(reward_dir, placement=placement).score(prompts(3), texts)
    assert len(scores) == 3 and all(math.isfinite(s) for s in scores)


def test_reward_models_score_in_fp32_under_bf16_precision(
    bf16_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    """A bf16 forward pass moves a score by more than a little-trained reward model's
    margins (RECIPES.md): the scorer computes in fp32 under bf16 precision too, and
    gives the scores of the fp32 model."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _, reward_dir = bf16_dirs
    fp32_dir = tmp_path / "rm-fp32"
    rm = AutoModelForSequenceClassification.from_pretrained(
        reward_dir, num_labels=1, dtype=torch.float32
    )
    rm.save_pretrained(fp32_dir)
    AutoTokenizer.from_pretrained(reward_dir).save_pretrained(fp32_dir)
    asked = prompts(4)
    replies = ["The deadline is 30 days.", "I am not sure.", "See [1]: 25%.", "No."]
    bf16 = Placement.resolve("cpu", "bf16")
    scorer = RewardScorer(fp32_dir, batch_size=4, max_length=64, placement=bf16)
    assert next(scorer.model.parameters()).dtype == torch.float32
    in_fp32 = RewardScorer(
        fp32_dir, batch_size=4, max_length=64, placement=Placement.resolve("cpu", "fp32")
    ).score(asked, replies)
    assert scorer.score(asked, replies) == pytest.approx(in_fp32, abs=1e-6)


def test_a_cpu_keeps_a_frozen_policys_checkpoint_dtype_under_bf16_precision(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PPO's reference is the fp32 SFT model: rounded to nearest bf16 it would lose most
    of SFT's change (RECIPES.md, "Saving in bf16 undid SFT"), so on a CPU it stays fp32
    while the policy trains under bf16 autocast."""
    cpu_with(monkeypatch, bf16=True)
    bf16 = Placement.resolve("cpu", "bf16")
    policy, reference, _ = load_models(tiny_model_dir, tiny_model_dir, bf16)
    assert next(policy.parameters()).dtype == torch.float32
    assert next(reference.parameters()).dtype == torch.float32
    assert next(Policy(tiny_model_dir, placement=bf16).model.parameters()).dtype == torch.float32


def test_an_sft_stage_in_fp32_trains_so_under_bf16_precision(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The stage's own precision wins over the cycle's, and the run record says which."""
    examples = [
        SftExample(p.prompt, p.chosen, p.conversation_id, p.created_at) for p in make_pairs(4)
    ]
    bf16 = Placement.resolve("cpu", "bf16")
    for precision, trained in (("auto", "bf16"), ("fp32", "fp32")):
        config = SftStageConfig(min_examples=1, batch_size=4, precision=precision)
        metrics = train_sft(
            tiny_model_dir, examples, tmp_path / precision, config, progress=False, placement=bf16
        )
        assert metrics["sft_examples"] == 4 and metrics["sft_precision"] == trained


@pytest.mark.parametrize(
    ("has_bf16", "speedup"), [(False, 2.0), (True, 0.55)], ids=["no-bf16", "bf16-slower"]
)
def test_frozen_models_are_fp32_on_a_cpu_where_bf16_is_not_faster(
    bf16_dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, has_bf16: bool, speedup: float
) -> None:
    """Without bf16 instructions a bf16 checkpoint would compute in emulation, and on a
    Xeon without AMX at about half fp32's speed: the evaluated policies, PPO's reference
    and the reward scorer load in fp32 instead, unless bf16 precision is asked for."""
    cpu_with(monkeypatch, bf16=has_bf16, speedup=speedup)
    policy_dir, reward_dir = bf16_dirs
    fp32 = Placement.resolve("cpu", "fp32")
    assert next(Policy(policy_dir, placement=fp32).model.parameters()).dtype == torch.float32
    _, reference, _ = load_models(policy_dir, policy_dir, fp32)
    assert next(reference.parameters()).dtype == torch.float32
    scorer = RewardScorer(reward_dir, placement=fp32)
    assert next(scorer.model.parameters()).dtype == torch.float32
    bf16 = Placement.resolve("cpu", "bf16")
    assert next(Policy(policy_dir, placement=bf16).model.parameters()).dtype == torch.bfloat16
