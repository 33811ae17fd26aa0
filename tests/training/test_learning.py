"""Acceptance: one cycle on learnable feedback raises a yardstick independent of
every model in the loop; the same replies with their labels permuted do not, and
the gates refuse that candidate. Tiny model, real TRL, real Postgres.

**The yardstick** is a fixed rule on the reply text, the simulated users' own
taste (``tests/training/synthetic.py``): a reply meets it when it holds a word of
the preferred vocabulary and none of the disliked one. Neither the policy, its
reward model nor the judge takes part in it. It is measured on 40 prompts that no
feedback ever asked (two sampled replies each, fixed seeds), on the parent (the
base model) and on the candidate, paired by prompt and sample: each rate with its
Wilson interval, and the exact McNemar test of the paired verdicts (the demo's
``infra/demo/yardstick.py``).

**The feedback** is 200 preference pairs; each pair's two replies are the same in
both cycles. *Learnable*: the reply with preferred words is always chosen.
*Permuted*: the labels of exactly half the pairs, picked at random, are flipped,
so nothing about the replies predicts the verdict. The cycle runs the ``tiny``
preset (SFT is skipped: no corrections; the reward model, the judge, PPO, the
gates).

**Gates**: the shipped ``training/gates.yaml`` with one change, as in
``test_cycle.py``: no absolute floor on the safety refusal rate, because the
random tiny model cannot form a refusal (the no-regression half of the safety
gate still applies). Every other threshold is the shipped one."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import yaml

from infra.demo.yardstick import mcnemar_exact_p
from tests.training.isolated import make_settings
from tests.training.synthetic import BAD, GOOD, TOPICS, ListSource, make_pairs
from training import registry
from training.cycle import CycleResult, run_cycle
from training.evaluate import Policy
from training.gates import DEFAULT_GATES_FILE, load_thresholds
from training.snapshot import Pair
from training.stats import wilson_interval

# Two tiny cycles and three yardstick passes on two shared cores.
pytestmark = pytest.mark.timeout(2400)

# Held-out prompts: the feedback's prompts are "question 0..49: ..." (make_pairs).
YARDSTICK_PROMPTS = [
    [{"role": "user", "content": f"question {50 + i}: tell me about {TOPICS[i % len(TOPICS)]}"}]
    for i in range(40)
]
SAMPLES = 2
REPLY_TOKENS = 16  # the tiny preset's reply length


def meets_rule(reply: str) -> bool:
    """The users' rule: a preferred word, and no disliked one."""
    words = set(reply.split())
    return bool(words & set(GOOD)) and not words & set(BAD)


@dataclass(frozen=True)
class Yardstick:
    """Before/after verdicts on the same held-out items, paired."""

    before: list[bool]
    after: list[bool]

    @property
    def n(self) -> int:
        return len(self.before)

    @property
    def rates(self) -> tuple[float, float]:
        return sum(self.before) / self.n, sum(self.after) / self.n

    @property
    def gained(self) -> int:
        return sum(not b and a for b, a in zip(self.before, self.after, strict=True))

    @property
    def lost(self) -> int:
        return sum(b and not a for b, a in zip(self.before, self.after, strict=True))

    @property
    def p_value(self) -> float:
        return mcnemar_exact_p(self.gained, self.lost)

    def __str__(self) -> str:
        def rate(k: int) -> str:
            low, high = wilson_interval(k, self.n)
            return f"{k}/{self.n} [{low:.2f}, {high:.2f}]"

        return (
            f"{rate(sum(self.before))} -> {rate(sum(self.after))}"
            f" (+{self.gained} -{self.lost}, McNemar p = {self.p_value:.3g})"
        )


def verdicts(model_dir: Path | str) -> list[bool]:
    policy = Policy(model_dir)
    out: list[bool] = []
    for seed in range(SAMPLES):
        replies, _ = policy.generate(
            YARDSTICK_PROMPTS, max_new_tokens=REPLY_TOKENS, do_sample=True, seed=seed
        )
        out += [meets_rule(r) for r in replies]
    return out


def permuted(pairs: list[Pair], seed: int) -> list[Pair]:
    """The same replies, with the labels of exactly half the pairs (at random) flipped."""
    flips = [True] * (len(pairs) // 2) + [False] * (len(pairs) - len(pairs) // 2)
    random.Random(seed).shuffle(flips)
    return [
        replace(p, chosen=p.rejected, rejected=p.chosen) if flip else p
        for p, flip in zip(pairs, flips, strict=True)
    ]


@dataclass
class Cycles:
    learnable: CycleResult
    permuted: CycleResult
    learnable_yardstick: Yardstick
    permuted_yardstick: Yardstick
    learnable_pairs: list[Pair]
    permuted_pairs: list[Pair]


@pytest.fixture(scope="module")
def cycles(
    module_db: str, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Cycles:
    root = tmp_path_factory.mktemp("learning")
    gates = yaml.safe_load(DEFAULT_GATES_FILE.read_text())
    gates["safety_min_refusal_rate"] = 0.0  # the random tiny model never refuses
    (root / "gates.yaml").write_text(yaml.safe_dump(gates))
    settings = make_settings(module_db, root, tiny_model_dir, gates_config=root / "gates.yaml")
    # The permuted cycle's feedback is newer, so that its pairs count as new ones.
    learnable = make_pairs(200)
    later = [
        replace(p, created_at=datetime(2026, 11, 2, i // 60, i % 60, tzinfo=UTC))
        for i, p in enumerate(make_pairs(200))
    ]
    shuffled = permuted(later, seed=13)
    good = run_cycle(settings, size="tiny", source=ListSource(learnable), progress=False)
    bad = run_cycle(settings, size="tiny", source=ListSource(shuffled), progress=False)
    base = verdicts(tiny_model_dir)
    with psycopg.connect(module_db, autocommit=True) as conn:
        paths = {}
        for result in (good, bad):
            version = registry.get_version(conn, result.candidate_version or "")
            assert version is not None, result.message
            paths[version.id] = version.path
    out = Cycles(
        good,
        bad,
        Yardstick(base, verdicts(paths[good.candidate_version or ""])),
        Yardstick(base, verdicts(paths[bad.candidate_version or ""])),
        learnable,
        shuffled,
    )
    print(f"\nyardstick, learnable: {out.learnable_yardstick} ({good.status})")
    print(f"yardstick, permuted: {out.permuted_yardstick} ({bad.status})")
    return out


def test_both_cycles_see_the_same_replies_only_the_labels_differ(cycles: Cycles) -> None:
    def replies(pairs: list[Pair]) -> list[frozenset[str]]:
        return [frozenset((p.chosen, p.rejected)) for p in pairs]

    assert replies(cycles.learnable_pairs) == replies(cycles.permuted_pairs)
    flipped = sum(
        a.chosen != b.chosen
        for a, b in zip(cycles.learnable_pairs, cycles.permuted_pairs, strict=True)
    )
    assert flipped == len(cycles.learnable_pairs) // 2
    for result in (cycles.learnable, cycles.permuted):
        assert result.metrics["parent"] == "v0001"  # both start from the base model
        assert result.metrics["snapshot"]["pairs_new"] == 200


def test_the_yardstick_rule_is_the_users_taste() -> None:
    assert meets_rule("yes the handbook answer")
    assert not meets_rule("yes the quick fox")  # a disliked word spoils it
    assert not meets_rule("the at and days")  # no preferred word
    assert not meets_rule("handbooks")  # whole words only


def test_learnable_feedback_raises_the_independent_yardstick_and_passes_the_gates(
    cycles: Cycles,
) -> None:
    result, stick = cycles.learnable, cycles.learnable_yardstick
    before, after = stick.rates
    assert stick.n == len(YARDSTICK_PROMPTS) * SAMPLES
    # At least 25 points higher (the aim for the demo), and the paired test agrees.
    assert after - before >= 0.25, str(stick)
    assert stick.p_value < 0.05, str(stick)
    assert wilson_interval(sum(stick.after), stick.n)[0] > before, str(stick)
    assert result.status == "candidate" and result.canary, result.gate_report
    assert result.gate_report is not None and result.gate_report["passed"] is True


def test_permuted_feedback_does_not_raise_the_yardstick_and_the_gates_refuse(
    cycles: Cycles,
) -> None:
    result, stick = cycles.permuted, cycles.permuted_yardstick
    before, after = stick.rates
    # No significant rise: either no higher, or not distinguishable from no change.
    assert after <= before or stick.p_value >= 0.05, str(stick)
    assert after - before < 0.25, str(stick)
    assert result.status == "rejected" and not result.canary
    report = result.gate_report
    assert report is not None and report["passed"] is False
    gates = report["gates"]
    # Neither reward model learns a preference that the labels do not carry: the
    # held-out accuracy's Wilson lower bound stays below the shipped floor.
    t = load_thresholds()
    for name, floor in (
        ("reward_accuracy", t.reward_accuracy_lower_min),
        ("judge_accuracy", t.judge_accuracy_lower_min),
    ):
        assert gates[name]["passed"] is False, gates[name]
        assert gates[name]["interval"][0] < floor, gates[name]
