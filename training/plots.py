"""One PNG per training run: reward curve, KL, and win rate with its confidence interval."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def plot_run(
    path: Path,
    *,
    title: str,
    history: list[dict[str, float]],
    reward_losses: list[float],
    gate_report: dict[str, Any] | None,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = gate_report or {}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    steps = [h.get("step", i) for i, h in enumerate(history)]
    _reward_panel(axes[0], steps, history, reward_losses)
    _kl_panel(axes[1], steps, history, report)
    _win_rate_panel(axes[2], report)
    verdict = "gates passed" if report.get("passed") else "gates FAILED"
    fig.suptitle(f"{title} — {verdict}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _reward_panel(
    ax: Any, steps: list[float], history: list[dict[str, float]], reward_losses: list[float]
) -> None:
    """The policy's mean reward per step, and the reward model's loss on a second axis."""
    scores = [h.get("mean_score", math.nan) for h in history]
    ax.plot(steps, scores, marker=".", label="policy: mean reward")
    ax.set_xlabel("step")
    ax.set_ylabel("reward")
    ax.set_title("Reward")
    if reward_losses:
        twin = ax.twinx()
        twin.plot(
            range(len(reward_losses)), reward_losses, color="tab:gray", alpha=0.5, label="RM loss"
        )
        twin.set_ylabel("reward-model loss", color="tab:gray")
    ax.legend(loc="upper left", fontsize=8)


def _kl_panel(
    ax: Any, steps: list[float], history: list[dict[str, float]], report: dict[str, Any]
) -> None:
    """KL to the reference per step, against the gate's budget and the evaluated KL."""
    kls = [h.get("mean_kl", math.nan) for h in history]
    ax.plot(steps, kls, marker=".", color="tab:orange")
    gates = report.get("gates", {})
    kl_max = report.get("thresholds", {}).get("kl_max")
    if kl_max is not None:
        ax.axhline(kl_max, color="tab:red", linestyle="--", label=f"budget {kl_max}")
    if gates.get("kl", {}).get("value") is not None:
        ax.axhline(gates["kl"]["value"], color="tab:green", linestyle=":", label="eval KL")
    ax.set_xlabel("step")
    ax.set_title("KL to reference (nats/reply)")
    ax.legend(fontsize=8)


def _win_rate_panel(ax: Any, report: dict[str, Any]) -> None:
    """The judge's and the policy reward model's win rates with their intervals."""
    gates = report.get("gates", {})
    bars = [
        (label, g)
        for label, g in (
            ("judge", gates.get("win_rate", {})),
            ("policy RM", gates.get("policy_rm_win_rate", {})),
        )
        if (g.get("detail") or {}).get("win_rate") is not None and g.get("interval")
    ]
    for i, (label, g) in enumerate(bars):
        mean, (lo, hi) = g["detail"]["win_rate"], g["interval"]
        ax.bar([i], [mean], yerr=[[mean - lo], [hi - mean]], capsize=10, width=0.5, label=label)
    if bars:
        threshold = report.get("thresholds", {}).get("win_rate_lower_min")
        if threshold is not None:
            ax.axhline(threshold, color="tab:red", linestyle="--", label=f"gate {threshold}")
        ax.legend(fontsize=8)
    ax.set_xlim(-1, 2)
    ax.set_ylim(0, 1)
    ax.set_xticks([0, 1], ["judge", "policy RM"])
    ax.set_title("Win rate vs production (95% CI)")
