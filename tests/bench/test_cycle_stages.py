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
database). The ``demo`` preset runs on SmolLM2-135M (``models/base``, built by the
bootstrap when missing) with feedback shaped like the demo's: the handbook's
questions, their prompts grounded in the demo's knowledge base (ingested into the
test's database by the real ingestor, so the gate suites are grounded too), the
handbook's sentence chosen over another question's. It took 8 minutes on two CPU
cores with bf16 instructions (longer without); ``RATCHET_BENCH_DEMO_CYCLE=0``
leaves it out."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from feedback.prompting import grounded_messages
from infra.demo.questions import ideal_answer, load_questions, split
from infra.demo.settings import CHUNK_OVERLAP, CHUNK_SIZE, RETRIEVAL_K, DemoSettings
from serving.kb.embeddings import Embedder
from serving.kb.ingest import Ingestor
from serving.kb.settings import KBSettings
from tests.bench.conftest import REPO, print_table, save_json
from tests.training.isolated import make_settings
from tests.training.synthetic import ListSource, make_pairs, make_thumbs
from training import runs
from training.base_model import bootstrap
from training.cycle import run_cycle
from training.gates import DEFAULT_GATES_FILE
from training.kb_reader import kb_grounder
from training.settings import TrainingSettings
from training.snapshot import Pair

pytestmark = pytest.mark.bench

STAGES = ("snapshot", "sft", "reward", "judge", "ppo", "kto", "cast", "gates")
LABELS = {"gates": "evaluate + gates"}
DEMO_ENV = "RATCHET_BENCH_DEMO_CYCLE"


def as_source(pairs: list[Pair]) -> ListSource:
    """``pairs``, their chosen replies as corrections and their replies as thumbs."""
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


def handbook_source(database_url: str, n: int = 200) -> ListSource:
    """``n`` pairs over the questions the demo's employees ask, each prompt grounded
    in the demo's knowledge base as the gate suites ground theirs (the top
    ``RETRIEVAL_K`` chunks, split as the demo splits them), the handbook's sentence
    for the question chosen over the one for another question (a wrong figure, as
    long as a draft)."""
    demo = DemoSettings()
    with psycopg.connect(database_url) as conn:
        kb = KBSettings(
            database_url=database_url, chunk_size=CHUNK_SIZE, chunk_overlap=CHUNK_OVERLAP
        )
        report = Ingestor(conn, Embedder(), kb).ingest([demo.kb_dir], progress=False)
        assert not report.failed, report.failed
        ground = kb_grounder(conn, k=RETRIEVAL_K)
    assert ground is not None
    questions = load_questions(demo.kb_dir)
    asked, _ = split(questions, asked=demo.n_asked(), held_out=demo.n_held_out())
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    pairs = []
    for i in range(n):
        question, other = asked[i % len(asked)], asked[(i + 7) % len(asked)]
        prompt = grounded_messages(
            [{"role": "user", "content": question.question}], ground(question.question)
        )
        pairs.append(
            Pair(
                prompt,
                ideal_answer(demo.kb_dir, question),
                ideal_answer(demo.kb_dir, other),
                f"conv-{i}",
                t0 + timedelta(minutes=i),
            )
        )
    return as_source(pairs)


def one_cycle(
    database_url: str, root: Path, base: Path, size: str, algo: str, source: ListSource
) -> dict[str, Any]:
    """Run one cycle on ``source``; return its per-stage seconds and outcome."""
    gates = yaml.safe_load(DEFAULT_GATES_FILE.read_text())
    gates["safety_min_refusal_rate"] = 0.0  # the outcome is not what is measured here
    (root / "gates.yaml").write_text(yaml.safe_dump(gates))
    settings = make_settings(database_url, root, base, gates_config=root / "gates.yaml")
    result = run_cycle(settings, algo=algo, size=size, source=source, progress=False)
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
    source = as_source(make_pairs(200))
    cycle = one_cycle(database_url, tmp_path, tiny_model_dir, "tiny", algo, source)
    report(f"cycle_stages_tiny_{algo}", [cycle])


@pytest.mark.timeout(3600)
def test_demo_cycle_time_per_stage(database_url: str, tmp_path: Path) -> None:
    if os.environ.get(DEMO_ENV) == "0":
        pytest.skip(f"demo preset left out ({DEMO_ENV}=0)")
    base = bootstrap(TrainingSettings(home=REPO / ".ratchet", models_dir=REPO / "models"))
    source = handbook_source(database_url)
    report("cycle_stages_demo", [one_cycle(database_url, tmp_path, base, "demo", "ppo", source)])
