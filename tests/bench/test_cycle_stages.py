"""One training cycle's time per stage, as ``training.cycle.run_cycle`` records it
in the run's ``timings`` (real Postgres, real TRL):

- ``snapshot``: reading the feedback and building the slices;
- ``sft``: SFT on corrections and top-rated replies;
- ``reward`` and ``judge``: the policy's reward model and the independent judge;
- ``ppo`` or ``kto``: the final stage (``--algo``);
- ``cast``: writing the candidate in the served dtype;
- ``evaluate + gates``: sampling the candidate and its parent on the held-out
  prompts, scoring them with both reward models, the KL, the golden and safety
  suites, and the thresholds (the gates evaluate as they go, so the two are one
  figure; the thresholds themselves take microseconds).

The ``tiny`` preset runs on the tiny test model with synthetic feedback (200
pairs, their chosen replies as corrections, their replies as thumbs), once with
``--algo ppo`` and once with ``--algo kto`` (one test each, each in a fresh
database). The ``demo`` preset (SmolLM2-135M,
``models/base``) takes longer than a few minutes on two CPU cores, so it runs only
with ``RATCHET_BENCH_DEMO_CYCLE=1``; otherwise the test says so and skips."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from tests.bench.conftest import REPO, print_table, save_json
from tests.training.isolated import make_settings
from tests.training.synthetic import ListSource, make_pairs, make_thumbs
from training import runs
from training.cycle import run_cycle
from training.gates import DEFAULT_GATES_FILE

pytestmark = pytest.mark.bench

STAGES = ("snapshot", "sft", "reward", "judge", "ppo", "kto", "cast", "gates")
LABELS = {"gates": "evaluate + gates"}
DEMO_ENV = "RATCHET_BENCH_DEMO_CYCLE"


def sources(n: int = 200) -> ListSource:
    pairs = make_pairs(n)
    sft = [
        {
            "prompt": p.prompt,
            "completion": p.chosen,
            "conversation_id": p.conversation_id,
            "created_at": p.created_at,
        }
        for p in pairs
    ]
    return ListSource(pairs, sft=sft, kto=make_thumbs(pairs))


def one_cycle(database_url: str, root: Path, base: Path, size: str, algo: str) -> dict[str, Any]:
    """Run one cycle; return its per-stage seconds and outcome."""
    gates = yaml.safe_load(DEFAULT_GATES_FILE.read_text())
    gates["safety_min_refusal_rate"] = 0.0  # the outcome is not what is measured here
    (root / "gates.yaml").write_text(yaml.safe_dump(gates))
    settings = make_settings(database_url, root, base, gates_config=root / "gates.yaml")
    result = run_cycle(settings, algo=algo, size=size, source=sources(), progress=False)
    assert result.run_id is not None, result.message
    with psycopg.connect(database_url, autocommit=True) as conn:
        run = runs.get_run(conn, result.run_id)
    assert run is not None and run["status"] == "succeeded"
    timings = {k.removesuffix("_s"): float(v) for k, v in run["timings"].items()}
    assert timings[algo] > 0 and timings["gates"] > 0
    return {"size": size, "algo": algo, "status": result.status, "timings": timings}


def report(name: str, cycles: list[dict[str, Any]]) -> None:
    rows = []
    for c in cycles:
        t = c["timings"]
        row = [f"{c['size']} / {c['algo']}"] + [t.get(s, float("nan")) for s in STAGES]
        rows.append(row + [sum(t.values()), c["status"]])
    columns = ["preset / algo"] + [LABELS.get(s, s) + " s" for s in STAGES] + ["total s", "status"]
    print_table(f"One training cycle, seconds per stage ({name})", columns, rows)
    save_json(name, {"cycles": cycles})


@pytest.mark.timeout(3600)
@pytest.mark.parametrize("algo", ["ppo", "kto"])
def test_tiny_cycle_time_per_stage(
    algo: str, database_url: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    cycle = one_cycle(database_url, tmp_path, tiny_model_dir, "tiny", algo)
    report(f"cycle_stages_tiny_{algo}", [cycle])


@pytest.mark.timeout(3600)
def test_demo_cycle_time_per_stage(database_url: str, tmp_path: Path) -> None:
    base = REPO / "models" / "base"
    if os.environ.get(DEMO_ENV) != "1":
        msg = (
            "demo preset skipped: one cycle on SmolLM2-135M takes longer than a few minutes on"
            f" two CPU cores; set {DEMO_ENV}=1 to run it"
        )
        print(msg)
        pytest.skip(msg)
    if not (base / "config.json").is_file():
        pytest.skip("models/base is missing: run `make bootstrap` first")
    report("cycle_stages_demo", [one_cycle(database_url, tmp_path, base, "demo", "ppo")])
