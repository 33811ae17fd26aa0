"""Several processes: ``accelerate launch -m serving.cli train`` runs one cycle with
data parallelism (2 CPU processes, gloo). Both ranks train; rank 0 alone writes
the registry, the run record and the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg

from tests.training.isolated import REPO, env_for, make_settings
from tests.training.synthetic import make_pairs
from training import registry, runs


def write_pairs(path: Path, n: int) -> None:
    with path.open("w") as fh:
        for p in make_pairs(n):
            fh.write(
                json.dumps(
                    {
                        "prompt": p.prompt,
                        "chosen": p.chosen,
                        "rejected": p.rejected,
                        "conversation_id": p.conversation_id,
                        "created_at": p.created_at.isoformat(),
                    }
                )
                + "\n"
            )


def test_two_processes_train_one_cycle_and_register_one_version(
    module_db: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    settings = make_settings(module_db, tmp_path, tiny_model_dir)
    pairs = tmp_path / "pairs.jsonl"
    write_pairs(pairs, 200)
    env = {
        **os.environ,
        **env_for(settings),
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    launch = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "serving.cli", "train", "--size", "tiny", "--pairs-file", str(pairs), "-q",
    ]  # fmt: skip
    env["RATCHET_TRAIN_DEVICE"] = "cpu"
    done = subprocess.run(launch, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "trained beside rank 0" in done.stdout  # rank 1 finished its part

    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        versions = [v.id for v in registry.list_versions(conn)]
        assert sorted(versions) == ["v0001", "v0002"], versions  # the base + one candidate
        run_id = registry.get_version(conn, "v0002").training_run_id  # type: ignore[union-attr]
        run = runs.get_run(conn, run_id)
    assert run is not None and run["status"] == "succeeded"
    ranks = run["metrics"]["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["ppo_steps"] == 30 for r in ranks), ranks  # the "tiny" preset's steps
    assert all(r["reward_train_loss"] is not None for r in ranks), ranks
    assert sorted(p.name for p in settings.models_dir.iterdir()) == ["v0002"]


def test_the_accelerate_configs_in_infra_deploy_load() -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    folder = REPO / "infra" / "deploy" / "accelerate"
    ddp = load_config_from_file(str(folder / "ddp.yaml"))
    zero = load_config_from_file(str(folder / "deepspeed-zero3.yaml"))
    assert ddp.distributed_type.value == "MULTI_GPU" and ddp.num_processes > 1
    assert zero.distributed_type.value == "DEEPSPEED"
    assert zero.deepspeed_config["zero_stage"] == 3
    assert zero.mixed_precision == "bf16"
