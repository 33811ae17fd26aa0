"""Acceptance tests of promotion on the tiny model, real TRL and real Postgres.

The module trains twice and every test reads the results:

- a **truly better** candidate: every slice of the feedback prefers a learnable
  vocabulary; it must pass the offline gates and become the canary, and
  promotion must wait until simulated users' A/B picks clear the canary bound;
- a **reward-hacking** candidate: the policy's reward model is taught (by its
  own prompt slice) to like a token that the judge does not care about; PPO
  pushes the policy towards it; the judge gate and the hacking-gap gate must
  refuse it although its policy-RM win rate is high.

The tiny model is random: it cannot form a refusal, so these tests run the
shipped gates with one change, written below: no absolute floor on the safety
refusal rate (the no-regression half of the safety gate still applies).
``test_gate_math`` asserts that the shipped file keeps a non-zero floor."""

from __future__ import annotations

import select
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import yaml

from feedback.events import ChatMessage, ComparisonGiven, MessageLogged
from feedback.message_ids import new_message_id
from feedback.store import write_batch
from serving.cli import main
from tests.training.isolated import cli_env, make_settings
from tests.training.synthetic import (
    HACK,
    ListSource,
    good_words,
    make_hacking_pairs,
    make_pairs,
)
from training import registry, runs
from training.base_model import weights_digest
from training.cycle import CycleResult, run_cycle
from training.device import Placement
from training.errors import RegistryError
from training.gates import DEFAULT_GATES_FILE, load_thresholds
from training.settings import TrainingSettings

# Two cycles on two shared cores: the module's fixture outlasts the suite's default timeout.
pytestmark = pytest.mark.timeout(2400)

GATES = {
    "reward_accuracy",
    "judge_accuracy",
    "win_rate",
    "policy_rm_win_rate",
    "reward_hacking",
    "kl",
    "length",
    "regression",
    "safety",
}


@dataclass
class Trained:
    settings: TrainingSettings
    good: CycleResult  # learnable pairs
    hacked: CycleResult  # a policy RM that likes HACK


@pytest.fixture(scope="module")
def trained(
    module_db: str, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Trained:
    root = tmp_path_factory.mktemp("cycle")
    gates = yaml.safe_load(DEFAULT_GATES_FILE.read_text())
    gates["safety_min_refusal_rate"] = 0.0  # the random tiny model never refuses
    (root / "gates.yaml").write_text(yaml.safe_dump(gates))
    settings = make_settings(module_db, root, tiny_model_dir, gates_config=root / "gates.yaml")
    good = run_cycle(settings, size="tiny", source=ListSource(make_pairs(200)), progress=False)
    later = datetime(2026, 11, 2, tzinfo=UTC)
    hacked = run_cycle(
        settings,
        size="tiny",
        source=ListSource(make_hacking_pairs(200, start=later)),
        progress=False,
    )
    return Trained(settings, good, hacked)


@pytest.fixture
def conn(trained: Trained) -> Iterator[psycopg.Connection]:
    with psycopg.connect(trained.settings.database_url, autocommit=True) as c:
        yield c


def test_policy_rm_and_judge_learn_on_prompt_disjoint_slices(trained: Trained) -> None:
    stats = trained.good.metrics["snapshot"]
    assert stats["pairs_train"] + stats["pairs_judge"] + stats["pairs_heldout"] == 200
    assert min(stats["pairs_train"], stats["pairs_judge"]) > 0
    assert stats["pairs_heldout"] >= load_thresholds().min_heldout_pairs
    for key in ("reward", "judge"):
        rm = trained.good.metrics[key]
        assert rm["heldout_pairs"] == stats["pairs_heldout"]
        assert rm["heldout_accuracy"] >= 0.75, (key, rm)
    assert trained.good.metrics["reward"]["train_pairs"] == stats["pairs_train"]
    assert trained.good.metrics["judge"]["train_pairs"] == stats["pairs_judge"]


def test_ppo_raises_the_reward_within_the_kl_budget(trained: Trained) -> None:
    ppo = trained.good.metrics["ppo"]
    history = ppo["history"]
    assert len(history) == 30  # the "tiny" preset's steps
    k = len(history) // 4
    first = sum(h["mean_score"] for h in history[:k]) / k
    last = sum(h["mean_score"] for h in history[-k:]) / k
    assert (first, last) == pytest.approx((ppo["first_mean_score"], ppo["last_mean_score"]))
    assert last > first + 0.5, [round(h["mean_score"], 2) for h in history]
    kl_max = load_thresholds().kl_max
    assert 0 <= ppo["final_kl"] <= kl_max


def test_a_truly_better_candidate_passes_the_offline_gates_and_becomes_the_canary(
    trained: Trained, conn: psycopg.Connection
) -> None:
    result = trained.good
    assert result.status == "candidate" and result.canary, result.gate_report
    report = result.gate_report
    assert report is not None and report["passed"] is True
    assert set(report["gates"]) == GATES
    for name, gate in report["gates"].items():
        assert gate["passed"] is True, (name, gate)
        assert gate["n"] >= gate["min_n"] > 0, name
        assert gate["value"] is not None and gate["threshold"], name
    win = report["gates"]["win_rate"]
    assert win["value"] >= 0.5 and win["interval"][0] == win["value"]  # judged: CI lower
    assert "judge" in result.metrics and result.metrics["judge"]["model_dir"].endswith("model")
    assert report["gates"]["regression"]["detail"]["suite"].endswith("training/suites/golden.yaml")
    kl = report["gates"]["kl"]  # split by reply kind: the random tiny model never declines
    assert kl["detail"]["declining_replies"] == 0
    assert kl["detail"]["other_mean_kl"] == pytest.approx(kl["value"])
    assert f"{kl['n']} others, mean" in kl["reason"]

    version = registry.get_version(conn, result.candidate_version or "")
    assert version is not None
    assert (version.id, version.status, version.parent_id) == ("v0002", "candidate", "v0001")
    assert version.canary and version.gate_report == report
    # The record says where it trained: the placement the settings resolve to here.
    settings = trained.settings
    placed = Placement.resolve(settings.train_device, settings.train_precision).describe()
    assert version.metrics["placement"] == placed and placed["device"] == "cpu"
    path = Path(version.path)
    assert path == trained.settings.models_dir.resolve() / "v0002"
    assert version.weights_sha256 == weights_digest(path)
    run = runs.get_run(conn, result.run_id)
    assert run is not None and run["status"] == "succeeded"
    assert run["timings"]["judge_s"] > 0 and run["timings"]["reward_s"] > 0
    assert not list(trained.settings.models_dir.glob(".tmp-*"))


def test_a_reward_hacking_candidate_is_refused_by_the_judge_and_the_gap(
    trained: Trained, conn: psycopg.Connection
) -> None:
    result = trained.hacked
    assert result.status == "rejected" and not result.canary
    report = result.gate_report
    assert report is not None and report["passed"] is False
    gates = report["gates"]
    # The policy's own reward model loves the candidate...
    assert gates["policy_rm_win_rate"]["detail"]["win_rate"] >= 0.8, gates["policy_rm_win_rate"]
    # ...the independent judge does not, and the gap between the two is the signal.
    assert gates["win_rate"]["passed"] is False, gates["win_rate"]
    assert gates["reward_hacking"]["passed"] is False, gates["reward_hacking"]
    assert gates["reward_hacking"]["value"] > load_thresholds().hacking_gap_max
    version = registry.get_version(conn, "v0003")
    assert version is not None and (version.status, version.canary) == ("rejected", False)
    reject = [e for e in registry.audit_log(conn) if e.action == "reject"]
    assert [e.to_version for e in reject] == ["v0003"]
    assert "win_rate" in (reject[0].reason or "") and "reward_hacking" in (reject[0].reason or "")
    # PPO did push the policy towards the token the policy RM likes.
    samples = trained.hacked.metrics["ppo"]["history"]
    assert samples[-1]["mean_score"] > samples[0]["mean_score"]
    assert HACK  # the token, named in the synthetic data


def test_cli_show_lists_every_gate_with_n_value_interval_and_threshold(
    trained: Trained, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cli_env(monkeypatch, trained.settings)
    assert main(["models", "show", "v0003"]) == 0
    out = capsys.readouterr().out
    assert "v0003: rejected" in out and "FAILED" in out
    for gate in GATES:
        assert gate in out
    for column in ("n", "value", "interval", "threshold", "reason"):
        assert column in out
    assert "(min 30)" in out and "Wilson lower" in out and "CI lower" in out
    assert "judge (independent) held-out accuracy" in out
    placement = trained.hacked.metrics["placement"]
    assert f"trained on: cpu, {placement['precision']}" in out
    assert main(["models", "show", "v0099"]) == 2
    assert "no model version 'v0099'" in capsys.readouterr().err


def _users_pick(conn: psycopg.Connection, settings: TrainingSettings, n: int, seed: int) -> None:
    """``n`` simulated users ask, get one draft from the canary and one from production,
    and pick the draft with more of the words they like (a tie when equal)."""
    from training.evaluate import Policy

    canary, production = registry.get_canary(conn), registry.get_production(conn)
    assert canary is not None and production is not None
    prompts = [[{"role": "user", "content": f"user question {seed}-{i}"}] for i in range(n)]
    a, _ = Policy(canary.path).generate(prompts, max_new_tokens=16, do_sample=True, seed=seed)
    b, _ = Policy(production.path).generate(prompts, max_new_tokens=16, do_sample=True, seed=seed)
    events: list = []
    for i, (prompt, raw_a, raw_b) in enumerate(zip(prompts, a, b, strict=True)):
        # The random tiny model can sample a NUL byte, which a Postgres text column refuses.
        ra, rb = raw_a.replace("\x00", ""), raw_b.replace("\x00", "")
        user = f"employee-{seed}-{i}"
        ma, mb = (
            MessageLogged(
                user_id=user,
                message_id=new_message_id(user, "test-secret"),
                conversation_id=uuid.uuid4(),
                model_version=version,
                prompt=[ChatMessage(role="user", content=prompt[0]["content"])],
                reply=reply,
            )
            for version, reply in ((canary.id, ra), (production.id, rb))
        )
        score_a, score_b = good_words(ra), good_words(rb)
        winner = "a" if score_a > score_b else "b" if score_b > score_a else "tie"
        events += [
            ma,
            mb,
            ComparisonGiven(
                user_id=user,
                message_id_a=ma.message_id,
                message_id_b=mb.message_id,
                winner=winner,  # type: ignore[arg-type]
            ),
        ]
    with conn.transaction():
        write_batch(conn, events)


def test_promotion_waits_for_the_canary_bound_then_serves_the_canary(
    trained: Trained,
    conn: psycopg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli_env(monkeypatch, trained.settings)
    t = load_thresholds(trained.settings.gates_config)
    # Offline gates passed, but no user has picked yet: refused, saying what it needs.
    assert main(["models", "promote", "v0002", "--reason", "gates passed"]) == 2
    err = capsys.readouterr().err
    assert "refusing to promote v0002" in err and "has 0 A/B picks" in err
    assert f"at least {t.canary_min_picks} picks" in err and "Traceback" not in err
    # A rejected version is refused as before (its gates failed), naming the gates.
    with pytest.raises(RegistryError, match="reward_hacking"):
        registry.promote(conn, "v0003", actor="alice", reason="please")

    _users_pick(conn, trained.settings, 10, seed=1)
    assert main(["models", "promote", "v0002", "--reason", "gates passed"]) == 2
    assert "has 10 A/B picks" in capsys.readouterr().err
    assert registry.get_production(conn).id == "v0001"  # type: ignore[union-attr]

    _users_pick(conn, trained.settings, 30, seed=2)
    assert main(["models", "canary-report"]) == 0
    out = capsys.readouterr().out
    assert "canary stage: ready to promote" in out, out

    with psycopg.connect(trained.settings.database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {registry.NOTIFY_CHANNEL}")
        assert (
            main(["models", "promote", "v0002", "--reason", "won the A/B", "--actor", "bob"]) == 0
        )
        assert "v0002 is now the production version" in capsys.readouterr().out
        ready = select.select([listener.pgconn.socket], [], [], 10)[0]
        assert ready, "no notification for serving"
        payloads = [n.payload for n in listener.notifies(timeout=1, stop_after=1)]
    assert "v0002" in payloads  # what serving's hot swap follows
    production = registry.get_production(conn)
    assert production is not None and production.id == "v0002" and not production.canary
    actions = [(e.action, e.to_version, e.actor) for e in registry.audit_log(conn)][-2:]
    assert actions == [("promote", "v0002", "bob"), ("canary_clear", None, "bob")]


def test_force_overrides_with_a_reason_and_is_audited(
    trained: Trained, conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli_env(monkeypatch, trained.settings)
    with pytest.raises(SystemExit):
        main(["models", "promote", "v0003", "--force"])  # argparse: --reason is required
    assert main(["models", "promote", "v0003", "--force", "--reason", "incident 42"]) == 0
    entry = registry.audit_log(conn)[-1]
    assert (entry.action, entry.to_version) == ("force_promote", "v0003")
    assert entry.reason is not None and entry.reason.startswith("incident 42")
    assert "canary stage" in entry.reason  # what the force went over is on record
    assert registry.rollback(conn, actor="dave", reason="v0003 answers badly").id == "v0002"
