"""The gates' arithmetic, with numbers checked by hand: the bootstrap interval,
the Wilson interval, per-prompt win rates, the Monte-Carlo KL, refusal
detection, the fail-closed rules (minimum counts, NaN, missing suites), and the
token alignment of ``sample_replies`` with ``reply_logprobs`` on the tiny model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from feedback.pairs import normalised_prompt_hash
from feedback.prompting import GROUNDING_INSTRUCTIONS, grounded_messages
from training.evaluate import Policy, bootstrap_ci, mean_kl, reply_kls, win_rates
from training.gate_results import decide, enough
from training.gates import GateThresholds, accuracy_gate, hacking_gap_gate, load_thresholds
from training.ppo import reply_logprobs, sample_replies
from training.refusals import is_refusal
from training.snapshot import prompt_slice
from training.stats import wilson_interval, z_for
from training.suites_io import (
    SuiteError,
    load_golden,
    load_safety,
    packaged_suite,
    resolve_suite,
    suite_prompts,
)


def test_bootstrap_ci_by_hand() -> None:
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0, 1.0)
    # Two values: a quarter of the resamples are (0, 0) and a quarter (1, 1), so the
    # 2.5% and 97.5% percentiles are the extremes; the mean is the sample's.
    assert bootstrap_ci([0.0, 1.0], samples=1000, seed=3) == (0.5, 0.0, 1.0)
    mean, low, high = bootstrap_ci([])
    assert math.isnan(mean) and math.isnan(low) and math.isnan(high)


def test_wilson_interval_by_hand() -> None:
    assert z_for(0.95) == pytest.approx(1.959964, abs=1e-6)
    # p = 0.8, n = 10, z = 1.96: centre (0.8 + 0.19208) / 1.38416 = 0.71674,
    # half-width 1.96 * sqrt(0.016 + 0.009604) / 1.38416 = 0.22659.
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.49016, 0.94333), abs=2e-4)
    # The example: 10 of 15 held-out pairs right is [0.417, 0.848], not "0.667 > 0.65".
    assert wilson_interval(10, 15) == pytest.approx((0.4171, 0.8482), abs=2e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(5, 5)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 5)[0] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        wilson_interval(6, 5)


def test_win_rates_by_hand() -> None:
    # Prompt 1: 1 > 0 wins, 2 < 5 loses -> 0.5; prompt 2: a tie (0.5) and 3 > 1 -> 0.75.
    assert win_rates([1, 2, 3, 3], [0, 5, 3, 1], 2) == [0.5, 0.75]
    assert win_rates([2.0], [1.0], 1) == [1.0]


class _Sums:
    """Per-reply log-probability sums, as ``Policy.reply_logprob_sums`` returns them."""

    def __init__(self, rows: list[list[float]]) -> None:
        self.rows = iter(rows)

    def reply_logprob_sums(self, seqs, attn, plen):  # type: ignore[no-untyped-def]
        return torch.tensor(next(self.rows))


def test_mean_kl_by_hand() -> None:
    batches = [(torch.zeros(2, 1), torch.ones(2, 1), 0), (torch.zeros(1, 1), torch.ones(1, 1), 0)]
    cand = _Sums([[-1.0, -2.0], [1.0]])
    ref = _Sums([[-3.0, -2.5], [1.5]])
    # Differences 2.0, 0.5 and -0.5 over three replies: 2.0 / 3.
    assert mean_kl(cand, ref, batches) == pytest.approx(2.0 / 3)  # type: ignore[arg-type]
    cand, ref = _Sums([[-1.0, -2.0], [1.0]]), _Sums([[-3.0, -2.5], [1.5]])
    assert reply_kls(cand, ref, batches) == pytest.approx([2.0, 0.5, -0.5])  # type: ignore[arg-type]
    assert math.isnan(mean_kl(cand, ref, []))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("I can't help with that.", True),
        ("I cannot share passwords.", True),
        ("Sorry, but I won't write that email.", True),
        ("I must decline this request.", True),
        ("That would violate our policy.", True),
        ("You get 27 days of annual leave.", False),
        ("I can help: the VPN guide is in the handbook.", False),
        ("x" * 250 + " I cannot", False),  # only the opening counts
    ],
)
def test_is_refusal(reply: str, expected: bool) -> None:
    assert is_refusal(reply) is expected


def test_the_minimum_count_rule_and_nan_fail_closed() -> None:
    assert not enough(0, 0) and not enough(29, 30) and enough(30, 30)
    below = decide("g", value=0.9, ok=True, threshold=">= 0.5", n=29, min_n=30)
    assert not below.passed and "only 29 samples" in below.reason and "30" in below.reason
    at = decide("g", value=0.9, ok=True, threshold=">= 0.5", n=30, min_n=30)
    assert at.passed
    nan = decide("g", value=float("nan"), ok=True, threshold=">= 0.5", n=30, min_n=30)
    assert not nan.passed and "NaN" in nan.reason
    bad_interval = decide(
        "g", value=0.7, ok=True, threshold="x", n=30, min_n=1, interval=(float("nan"), 1.0)
    )
    assert not bad_interval.passed


def test_reward_accuracy_is_gated_on_its_lower_bound() -> None:
    # 0.667 on 15 pairs passed the old 0.65 floor; its Wilson lower bound is 0.417.
    gate = accuracy_gate("reward_accuracy", correct=10, n=15, floor=0.65, min_n=1, confidence=0.95)
    assert not gate.passed and gate.value == pytest.approx(0.4171, abs=2e-4)
    assert gate.detail["accuracy"] == pytest.approx(10 / 15)
    assert gate.interval == pytest.approx((0.4171, 0.8482), abs=2e-4)
    strong = accuracy_gate(
        "reward_accuracy", correct=38, n=40, floor=0.65, min_n=30, confidence=0.95
    )
    assert strong.passed and strong.n == 40
    few = accuracy_gate("reward_accuracy", correct=15, n=15, floor=0.65, min_n=30, confidence=0.95)
    assert not few.passed and "only 15" in few.reason


def test_hacking_gap_gate() -> None:
    t = GateThresholds()
    hacked = hacking_gap_gate(policy_rm_win=0.95, judge_win=0.5, n=20, t=t)
    assert not hacked.passed and hacked.value == pytest.approx(0.45)
    honest = hacking_gap_gate(policy_rm_win=0.8, judge_win=0.75, n=20, t=t)
    assert honest.passed


def test_shipped_thresholds_fail_closed() -> None:
    t = load_thresholds()
    assert t.safety_min_refusal_rate > 0
    assert min(t.min_heldout_pairs, t.min_prompts, t.min_golden, t.min_safety) > 1
    assert t.canary_min_picks > 1 and t.canary_win_lower_min >= 0.5


def test_suites_resolve_from_the_package_and_fail_closed(tmp_path: Path) -> None:
    assert resolve_suite(None, "safety") == packaged_suite("safety")
    assert len(load_safety(packaged_suite("safety"))) >= 16
    golden = load_golden(packaged_suite("golden"))
    assert len(golden) >= 8 and all(q.facts for q in golden)
    with pytest.raises(SuiteError, match="relative"):
        resolve_suite(Path("suites/safety.yaml"), "safety")
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SuiteError, match=str(missing)):
        load_safety(missing)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    with pytest.raises(SuiteError, match="empty"):
        load_golden(empty)


def test_suites_use_the_serving_prompt_builder() -> None:
    class Chunk:
        title, source_path, text = "Leave", "policies/annual-leave.md", "27 days of leave."

    prompts = suite_prompts(["How much leave?"], lambda q: [Chunk()])
    assert prompts == [
        grounded_messages([{"role": "user", "content": "How much leave?"}], [Chunk()])
    ]
    assert prompts[0][0]["role"] == "system" and GROUNDING_INSTRUCTIONS in prompts[0][0]["content"]
    assert "[1] Leave (policies/annual-leave.md)" in prompts[0][0]["content"]
    assert suite_prompts(["q"], None) == [[{"role": "user", "content": "q"}]]


def test_the_split_is_by_normalised_prompt() -> None:
    a = [{"role": "user", "content": "How many  days of LEAVE?"}]
    b = [{"role": "system", "content": "x"}, {"role": "user", "content": "how many days of leave?"}]
    assert normalised_prompt_hash(a) == normalised_prompt_hash(b)
    assert prompt_slice(a, 0.2, 0.3) == prompt_slice(b, 0.2, 0.3)
    slices = [prompt_slice([{"role": "user", "content": f"q{i}"}], 0.2, 0.3) for i in range(2000)]
    shares = {s: slices.count(s) / len(slices) for s in ("heldout", "judge", "policy")}
    assert shares == pytest.approx({"heldout": 0.2, "judge": 0.3, "policy": 0.5}, abs=0.04)


def test_sample_replies_and_reply_logprobs_are_token_aligned(tiny_model_dir: Path) -> None:
    policy = Policy(tiny_model_dir)
    prompts = [[{"role": "user", "content": "hello there"}], [{"role": "user", "content": "a"}]]
    seqs, attn, plen, texts = sample_replies(
        policy.model, policy.tokenizer, prompts, max_new_tokens=6, do_sample=False
    )
    with torch.no_grad():
        logits = policy.model(input_ids=seqs, attention_mask=attn).logits
    lp = reply_logprobs(logits, seqs, plen, 1.0)
    assert lp.shape == (2, seqs.shape[1] - plen)
    # Greedy decoding picks the argmax, so each reply token's log-probability is the
    # largest at the position that predicted it: off by one, this would not hold.
    best = torch.log_softmax(logits[:, plen - 1 : -1, :].float(), -1).max(-1).values
    mask = attn[:, plen:].bool()
    assert torch.allclose(lp[mask], best[mask], atol=1e-4)
    decoded = [
        policy.tokenizer.decode(row[m], skip_special_tokens=True)
        for row, m in zip(seqs[:, plen:], mask, strict=True)
    ]
    assert [d.strip() for d in decoded] == [t.strip() for t in texts]
