"""The whole loop, as ``make demo`` runs it, at the tiny size: real API (vLLM
engine) and consumer processes, real broker and Postgres, a real training
cycle, the offline gates, the canary stage, and promotion only where the
promotion policy allows it: no ``force_promote``. The test accepts the
outcome the gates give and checks that each outcome is carried through.

It runs two cycles (``RATCHET_DEMO_CYCLES=2``): the second on new feedback given
to whatever the first left serving. The tests of the first cycle read
``result.runs[0]``; the last test checks the second and the report's comparison
of the two on the held-out yardstick."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from rich.console import Console

from infra.demo.driver import OPERATOR, Demo, DemoResult
from infra.demo.employees import Evaluation
from infra.demo.report import regressions
from infra.demo.results import CycleRun
from infra.demo.settings import DemoSettings
from infra.local.tansu import Broker, free_port
from tests.conftest import CACHE

# The whole loop (two reward models, PPO, the canary stage) on two shared cores outlasts
# the suite's default timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]

GATES = {
    "reward_accuracy",
    "judge_accuracy",
    "win_rate",
    "policy_rm_win_rate",
    "reward_hacking",
    "kl",
    "regression",
    "safety",
    "length",
}


@pytest.fixture(scope="module")
def demo_run(
    pg_cluster, template_db, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[DemoResult, str, Path, str]]:
    """The demo's result, its database, its home and its API's address."""
    from tests.servers import new_database

    home = tmp_path_factory.mktemp("demo-home")
    broker = Broker(CACHE / "bin", free_port(), home / "tansu.log")
    broker.start()
    database_url = new_database(pg_cluster, template_db)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DATABASE_URL", database_url)
        mp.setenv("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap)
        mp.setenv("RATCHET_HOME", str(home))
        mp.setenv("RATCHET_MODELS_DIR", str(home / "models"))
        # Rate limits no assertion here is about (each has its own tests: test_auth_and_errors,
        # tests/feedback/test_api.py): at the defaults (2 requests/s per key, 120 feedback
        # events a minute per user) the tiny model's employees spent most of each feedback
        # phase waiting out 429s (30 s a cycle; 3 s with these).
        mp.setenv("RATCHET_RATE_LIMIT_PER_MINUTE", "6000")
        mp.setenv("RATCHET_RATE_LIMIT_BURST", "1000")
        mp.setenv("RATCHET_RATE_CAP_PER_MINUTE", "6000")
        settings = DemoSettings(size="tiny", port=free_port(), fresh=True, cycles=2)
        demo = Demo(settings, Console(width=120))
        try:
            yield demo.run(), database_url, home, settings.base_url
        finally:
            demo.api.stop()
            demo.consumer.stop()
            broker.stop()


def test_every_rating_given_is_stored(demo_run) -> None:
    result, database_url, _, _ = demo_run
    tallies = [run.tally for run in result.runs]
    assert len(tallies) == 2 and all(t is not None and t.ratings > 0 for t in tallies)
    assert not any(t.rejected for t in tallies)  # type: ignore[union-attr]
    with psycopg.connect(database_url) as conn:
        stored = conn.execute("SELECT count(*) FROM ratings").fetchone()[0]  # type: ignore[index]
        picks = conn.execute("SELECT count(*) FROM comparisons").fetchone()[0]  # type: ignore[index]
    assert [run.stored_ratings for run in result.runs] == [t.ratings for t in tallies]  # type: ignore[union-attr]
    assert stored == sum(t.ratings for t in tallies)  # type: ignore[union-attr]
    # The A/B picks of the feedback phases, and of each canary stage that ran.
    canary = sum(run.canary["total"] for run in result.runs if run.canary)
    assert picks == sum(t.comparisons for t in tallies) + canary  # type: ignore[union-attr]


def test_a_candidate_is_registered_with_a_full_gate_report(demo_run) -> None:
    result, database_url, _, _ = demo_run
    assert result.cycle is not None and result.cycle.version is not None
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT parent_id, gate_report FROM model_versions WHERE id = %s",
            (result.cycle.version,),
        ).fetchone()
    assert row is not None
    parent, report = row
    assert parent is not None
    assert GATES <= set(report["gates"])
    # The verdict is the stored gates' own, and the registry row agrees with it.
    assert report["passed"] == all(g["passed"] for g in report["gates"].values())
    assert report["passed"] == result.cycle.gates_passed
    with psycopg.connect(database_url) as conn:
        (gates_passed,) = conn.execute(
            "SELECT gates_passed FROM model_versions WHERE id = %s", (result.cycle.version,)
        ).fetchone()  # type: ignore[misc]
    assert gates_passed == report["passed"]
    for name, gate in report["gates"].items():
        assert {"n", "min_n", "value", "interval", "threshold", "reason"} <= set(gate), name


def _served(base_url: str, key: str) -> str:
    """What the running API says it serves (not what the driver recorded)."""
    models = httpx.get(
        f"{base_url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    assert models.status_code == 200, models.text
    return str(models.json()["data"][0]["id"])


def test_the_promotion_policy_decides_what_is_served(demo_run) -> None:
    result, database_url, home, base_url = demo_run
    cycle = result.cycle
    assert cycle is not None and cycle.version is not None
    assert result.before is not None and result.before.version != cycle.version
    with psycopg.connect(database_url) as conn:
        production = conn.execute(
            "SELECT id FROM model_versions WHERE status = 'production'"
        ).fetchone()
        forced = conn.execute(
            "SELECT count(*) FROM model_audit WHERE action = 'force_promote'"
        ).fetchone()
        parent = conn.execute(
            "SELECT parent_id FROM model_versions WHERE id = %s", (cycle.version,)
        ).fetchone()
    assert forced == (0,)
    assert (_served(base_url, result.keys[OPERATOR]),) == production  # the API agrees
    assert result.served == production[0]  # type: ignore[index]
    first = result.runs[0]
    page = (home / "demo" / "report.html").read_text()
    assert "independent judge" in page and "human win rate" in page
    for gate in GATES:
        assert gate in page
    if not cycle.gates_passed:
        # Refused offline: no canary stage, nothing promoted, production unchanged.
        assert result.canary is None and result.promotion is None
        assert first.served == parent[0]  # type: ignore[index]
        assert "not promoted" in page
        check_replay(first, result.before, cycle.version, page)
        return
    # Offline gates passed: employees picked between canary and production.
    assert result.canary is not None and result.canary["total"] >= result.canary["min_picks"]
    if result.canary["ready"]:
        assert result.promotion == "promote"
        assert first.served == cycle.version
        assert result.after is not None and result.after.version == cycle.version
    else:
        assert result.promotion is None and result.refusal is not None
        assert "A/B picks" in result.refusal and first.served == parent[0]  # type: ignore[index]
        check_replay(first, result.before, cycle.version, page)


def check_replay(run: CycleRun, asked: Evaluation, candidate: str, page: str) -> None:
    """A refused candidate is asked the held-out questions offline, beside the served
    version, from the prompts the API rendered for ``asked`` (infra/demo/replay.py)."""
    assert run.after is None and run.replay is not None
    assert (run.replay.served.version, run.replay.candidate.version) == (asked.version, candidate)
    questions = [q.question for q, _ in asked.rows]
    for ev in (run.replay.served, run.replay.candidate):
        assert [q.question for q, _ in ev.rows] == questions
    assert 0 <= run.replay.identical <= len(questions)
    assert f"refused {candidate}" in page and "replay check" in page


def test_a_second_cycle_trains_on_what_the_first_left_serving(demo_run) -> None:
    result, database_url, home, _ = demo_run
    first, second = result.runs
    assert first.cycle is not None and second.cycle is not None
    assert second.cycle.version is not None and second.cycle.version != first.cycle.version
    with psycopg.connect(database_url) as conn:
        (parent,) = conn.execute(
            "SELECT parent_id FROM model_versions WHERE id = %s", (second.cycle.version,)
        ).fetchone()  # type: ignore[misc]
    assert parent == first.served  # on top of the version the first cycle left serving
    # The second cycle trained on new feedback (its watermark is after the first's).
    assert second.cycle.metrics["snapshot"]["pairs_new"] > 0
    if second.promotion is not None:
        assert second.after is not None and second.after.version == second.cycle.version
        assert result.served == second.cycle.version
    else:
        assert second.after is None and result.served == first.served
        asked = first.after or result.before
        assert asked is not None
        page = (home / "demo" / "report.html").read_text()
        check_replay(second, asked, second.cycle.version, page)
    # The report compares the second cycle with what was served before it.
    [(number, line, regressed)] = regressions(result)
    assert number == 2 and ("REGRESSED" in line) == regressed
    labels = [label for label, _ in result.yardstick()]
    assert labels[0] == "base" and ("cycle 2" in labels) == (second.after is not None)
    page = (home / "demo" / "report.html").read_text()
    assert "Held-out yardstick across versions" in page and "cycle 2: held-out yardstick" in page
