"""One training cycle: snapshot -> (SFT) -> reward model -> PPO or DPO -> gates
-> registry. The demo driver and ``ratchet train`` call :func:`run_cycle`.

Crash safety: the new policy is written under ``models/.tmp-<run>``; only at
the end, in one transaction, is it renamed to ``models/vNNNN``, registered and
the run marked succeeded. A run killed before that stays ``running`` until the
next cycle takes the lock and marks it failed; no version is half-registered.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from feedback.db import migrate
from training import distributed, registry, runs
from training.base_model import cast_weights, weights_digest
from training.cycle_config import TrainCycleConfig
from training.errors import TrainingError
from training.settings import TrainingSettings, default_actor  # noqa: F401 - re-exported
from training.snapshot import (
    FeedbackSource,
    Snapshot,
    StoreSource,
    build_snapshot,
    write_provenance,
)

if TYPE_CHECKING:
    from training import stages
    from training.cycle_stages import RewardInit, RewardModels
    from training.device import Placement

logger = logging.getLogger(__name__)


def algos() -> tuple[str, ...]:
    """The registered algorithms (final stages) of ``--algo``."""
    from training import stages

    return stages.algos()


@dataclass
class CycleResult:
    status: str  # "candidate", "rejected", "promoted", "skipped" or "follower" (rank > 0)
    run_id: uuid.UUID | None = None
    candidate_version: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    gate_report: dict[str, Any] | None = None
    plot_path: Path | None = None
    message: str = ""
    canary: bool = False  # the candidate is now the canary (users' A/B picks decide)


def run_cycle(
    settings: TrainingSettings,
    *,
    algo: str = "ppo",
    size: str | None = None,
    config: TrainCycleConfig | None = None,
    source: FeedbackSource | None = None,
    min_new_pairs: int = 0,
    wait: bool = False,
    progress: bool = True,
) -> CycleResult:
    """Run one cycle under the cycle lock.

    Raises ``LockBusy`` if another cycle holds the lock (unless ``wait``)."""
    config = config or TrainCycleConfig.for_size(size or settings.train_size)
    from training import stages

    stages.plan(config, algo)  # an unknown algorithm or stage fails before any work
    if not distributed.is_main():
        return _follow(settings, config, algo, progress)
    with distributed.followers_released():
        return _lead(settings, config, algo, source, min_new_pairs, wait, progress)


def _lead(
    settings: TrainingSettings,
    config: TrainCycleConfig,
    algo: str,
    source: FeedbackSource | None,
    min_new_pairs: int,
    wait: bool,
    progress: bool,
) -> CycleResult:
    """Rank 0 (or the only process): the lock, the snapshot, the registry and the run."""
    source = source or StoreSource()
    migrate(settings.database_url)
    with runs.cycle_lock(settings.database_url, wait=wait):
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            for stale in runs.fail_stale_runs(conn):
                # A run killed between saving its policy and registering it left this behind.
                shutil.rmtree(settings.models_dir / f".tmp-{stale}", ignore_errors=True)
            production = registry.get_production(conn)
            if production is None:
                base = settings.base_model_dir
                if not (base / "config.json").exists():
                    raise TrainingError(
                        f"no production model and no base model at {base};"
                        " run `ratchet model bootstrap`"
                    )
                production = registry.ensure_base(conn, str(base.resolve()), weights_digest(base))
            last = runs.last_watermark(conn)
            t0 = time.monotonic()
            snapshot = build_snapshot(
                source,
                conn,
                since=config.window_start(),
                new_since=last,
                heldout_fraction=config.heldout_fraction,
                judge_fraction=config.judge_fraction,
            )
            needed = max(min_new_pairs, config.min_pairs)
            new = snapshot.stats["pairs_new"]
            if (
                new < needed
                or not snapshot.heldout_pairs
                or not snapshot.train_pairs
                or not snapshot.judge_pairs
            ):
                msg = (
                    f"skipped: {new} new preference pairs since {last or 'the start'}"
                    f" ({snapshot.n_pairs} in the window; need {needed} new, with policy,"
                    " judge and held-out prompts)"
                )
                logger.info(msg)
                return CycleResult(status="skipped", metrics=snapshot.stats, message=msg)
            snapshot_s = time.monotonic() - t0
            distributed.broadcast((snapshot, production))  # the followers' plan
            return _train(settings, conn, config, algo, snapshot, production, progress, snapshot_s)


def _follow(
    settings: TrainingSettings, config: TrainCycleConfig, algo: str, progress: bool
) -> CycleResult:
    """Ranks above 0: train on rank 0's snapshot beside it; write nothing shared."""
    plan = distributed.broadcast(None)
    if plan is None:
        return CycleResult(status="skipped", message="rank 0 started no run")
    snapshot, production = plan
    return _stages(settings, None, config, algo, snapshot, production, None, progress)


def _train(
    settings: TrainingSettings,
    conn: psycopg.Connection,
    config: TrainCycleConfig,
    algo: str,
    snapshot: Snapshot,
    production: registry.ModelVersion,
    progress: bool,
    snapshot_s: float = 0.0,
) -> CycleResult:
    run_id = uuid.uuid4()
    run_dir = (settings.home / "runs" / str(run_id)).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "train.log"
    runs.start_run(
        conn, run_id=run_id, algo=algo, config=config.model_dump(), logs_path=str(log_path)
    )
    handler = logging.FileHandler(log_path)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    training_logger = logging.getLogger("training")
    training_logger.addHandler(handler)
    # The run's log records INFO even where nothing configured logging (library use).
    previous_level = training_logger.level
    if training_logger.getEffectiveLevel() > logging.INFO:
        training_logger.setLevel(logging.INFO)
    models_dir = settings.models_dir.resolve()
    tmp_dir = models_dir / f".tmp-{run_id}"
    try:
        from training.cycle_stages import reward_inits

        inits = reward_inits(conn, config, Path(production.path))
        paths = RunPaths(run_id, run_dir, tmp_dir, inits)
        result = _stages(
            settings, conn, config, algo, snapshot, production, paths, progress,
            timings={"snapshot_s": snapshot_s},
        )  # fmt: skip
        if result.status == "candidate" and result.candidate_version:
            from training.cycle_stages import to_canary

            version = result.candidate_version
            result.canary = True
            result.message = f"{version} registered as candidate and serving as the canary"
            if to_canary(settings, conn, version):
                result.status = "promoted"
        return result
    except BaseException as exc:
        runs.fail_run(conn, run_id, f"{type(exc).__name__}: {exc}")
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if isinstance(exc, TrainingError | KeyboardInterrupt):
            raise
        if isinstance(exc, Exception):
            logger.exception("training run %s failed", run_id)
            raise TrainingError(f"training run {run_id} failed: {exc} (log: {log_path})") from exc
        raise
    finally:
        training_logger.removeHandler(handler)
        training_logger.setLevel(previous_level)
        handler.close()


@dataclass(frozen=True)
class RunPaths:
    """Where a run writes: its id, its directory, and the candidate's temporary home;
    and where its reward models start (decided by rank 0, which reads the runs)."""

    run_id: uuid.UUID
    run_dir: Path
    tmp_dir: Path
    reward_inits: dict[str, RewardInit]


@dataclass
class Trained:
    """What the stages produced, ready for registration."""

    out_dir: Path
    digest: str
    metrics: dict[str, Any]
    report: dict[str, Any]
    timings: dict[str, float]
    plot_path: Path


def _stages(
    settings: TrainingSettings,
    conn: psycopg.Connection | None,  # None on the ranks that follow rank 0
    config: TrainCycleConfig,
    algo: str,
    snapshot: Snapshot,
    production: registry.ModelVersion,
    paths: RunPaths | None,
    progress: bool,
    timings: dict[str, float] | None = None,  # seconds per stage, so far
) -> CycleResult:
    import torch

    from training import cycle_stages, stages
    from training.device import Placement
    from training.gates import load_thresholds
    from training.plots import plot_run

    paths = distributed.broadcast(paths)
    assert paths is not None
    progress = progress and distributed.is_main()
    torch.manual_seed(config.seed)
    placement = Placement.resolve(settings.train_device, settings.train_precision)
    thresholds = load_thresholds(settings.gates_config)
    plan = stages.plan(config, algo)
    timings = dict(timings or {})
    metrics = _run_metrics(algo, plan, snapshot, production, paths, placement)
    parent_dir = Path(production.path)

    def rewards() -> RewardModels:  # trained once, when first needed (before PPO, after SFT)
        return cycle_stages.train_reward_models(
            parent_dir, snapshot, paths.run_dir, config, metrics, timings, progress, placement,
            paths.reward_inits,
        )  # fmt: skip

    ctx = stages.StageContext(snapshot, config, placement, paths.run_dir, progress)
    out_dir = paths.tmp_dir / "policy"
    ctx, history = cycle_stages.train_policy(
        plan, ctx, rewards, parent_dir, out_dir, metrics, timings
    )
    if distributed.is_main() and not (out_dir / "config.json").exists():
        raise TrainingError(f"the {algo} stage trained no candidate: {metrics[algo]}")
    reward_models = ctx.rewards or rewards()  # the gates' judge, always
    if distributed.is_distributed():
        metrics["ranks"] = cycle_stages.rank_metrics(algo, placement, metrics, reward_models)
        if not distributed.is_main():
            return CycleResult(status="follower", run_id=paths.run_id, metrics=metrics)
    assert conn is not None
    t0 = time.monotonic()
    cast_weights(out_dir, settings.save_dtype)  # the gates judge the weights that are served
    timings["cast_s"] = time.monotonic() - t0
    t0 = time.monotonic()
    report = cycle_stages.gate_candidate(
        settings, conn, ctx, reward_models, out_dir, parent_dir, thresholds
    )
    timings["gates_s"] = time.monotonic() - t0
    plot_path = plot_run(
        paths.run_dir / "report.png",
        title=f"run {str(paths.run_id)[:8]} ({algo}, parent {production.id})",
        history=history,
        reward_losses=reward_models.policy.train_metrics.get("loss_curve", []),
        gate_report=report,
    )
    trained = Trained(out_dir, weights_digest(out_dir), metrics, report, timings, plot_path)
    return _register(settings, conn, paths, trained, production, snapshot)


def _run_metrics(
    algo: str,
    plan: list[stages.Stage],
    snapshot: Snapshot,
    production: registry.ModelVersion,
    paths: RunPaths,
    placement: Placement,
) -> dict[str, Any]:
    """The run's metrics before any stage: what it trains, on what, from which parent,
    where and in which precision; on rank 0 also the provenance file (each record
    traceable to the replies users rated)."""
    metrics: dict[str, Any] = {
        "algo": algo,
        "stages": [s.name for s in plan],
        "snapshot": snapshot.stats,
        "parent": production.id,
        "placement": placement.describe(),
    }
    if distributed.is_main():
        metrics["provenance"] = write_provenance(snapshot, paths.run_dir / "provenance.jsonl")
    return metrics


def _register(
    settings: TrainingSettings,
    conn: psycopg.Connection,
    paths: RunPaths,
    trained: Trained,
    production: registry.ModelVersion,
    snapshot: Snapshot,
) -> CycleResult:
    """Move the model into place and register it, the run's success in the same transaction."""
    actor = default_actor(settings)
    run_id, out_dir, report = paths.run_id, trained.out_dir, trained.report
    final_dir: Path | None = None
    try:
        with conn.transaction():
            registry.lock_registry(conn)
            version_id = registry.next_version_id(conn)
            final_dir = settings.models_dir.resolve() / version_id
            if final_dir.exists():
                raise TrainingError(f"{final_dir} already exists; move it away and retry")
            out_dir.rename(final_dir)
            version = registry.register_version(
                conn,
                version_id=version_id,
                path=str(final_dir),
                weights_sha256=trained.digest,
                parent_id=production.id,
                training_run_id=run_id,
                metrics=_summary(trained.metrics),
                gate_report=report,
                gates_passed=bool(report["passed"]),
                actor=actor,
            )
            runs.update_run(
                conn,
                run_id,
                status="succeeded",
                finished_at=datetime.now().astimezone(),
                watermark=snapshot.watermark,
                metrics=trained.metrics,
                timings=trained.timings,
                plot_path=str(trained.plot_path),
                candidate_version=version_id,
            )
    except BaseException:
        if final_dir is not None and final_dir.exists() and not out_dir.exists():
            final_dir.rename(out_dir)
        raise
    shutil.rmtree(paths.tmp_dir, ignore_errors=True)
    logger.info("registered %s as %s (run %s)", version.id, version.status, run_id)
    return CycleResult(
        status=version.status,
        run_id=run_id,
        candidate_version=version.id,
        metrics=trained.metrics,
        gate_report=report,
        plot_path=trained.plot_path,
        message=f"{version.id} registered as {version.status}",
    )


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics without per-step histories, for the version row."""
    out = {}
    for key, value in metrics.items():
        out[key] = (
            {k: v for k, v in value.items() if k != "history"} if isinstance(value, dict) else value
        )
    return out
