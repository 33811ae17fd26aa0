"""The demo report's plots, as base64 PNGs: the feedback given, the held-out
yardstick (before and after, and across versions when several cycles ran), the
judge's win rate with its interval, and the training runs' own plots."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from infra.demo.employees import Evaluation
from infra.demo.results import DemoResult


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def plots(result: DemoResult) -> list[tuple[str, str]]:
    """(title, base64 PNG) for each plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: list[tuple[str, str]] = []
    tally = result.tally
    if tally is not None:
        fig, axes = plt.subplots(1, 3, figsize=(11, 3))
        axes[0].bar(
            ["up", "down"],
            [tally.thumbs.get("up", 0), tally.thumbs.get("down", 0)],
            color=["#3a3", "#c33"],
        )
        axes[0].set_title("thumbs")
        axes[1].bar([str(s) for s in range(1, 6)], [tally.stars.get(s, 0) for s in range(1, 6)])
        axes[1].set_title("stars")
        axes[2].bar(["a", "b", "tie"], [tally.winners.get(k, 0) for k in ("a", "b", "tie")])
        axes[2].set_title("A/B picks")
        out.append(("Feedback the employees gave", _png(fig)))
    if result.before is not None:
        evals = [("before", result.before)] + ([("after", result.after)] if result.after else [])
        out.append(("Held-out questions, before and after (95% Wilson)", _heldout_plot(evals)))
    for number, run in enumerate(result.runs, 1):
        if run.replay is not None:
            title = "Held-out questions replayed offline: served vs the refused candidate"
            evals = [("served", run.replay.served), ("refused", run.replay.candidate)]
            prefix = f"Cycle {number}: " if len(result.runs) > 1 else ""
            out.append((f"{prefix}{title} (95% Wilson)", _heldout_plot(evals)))
    if len(result.runs) > 1 and result.before is not None:
        out.append(("Held-out yardstick across versions (95% Wilson)", _versions_plot(result)))
    report = result.cycle.gate_report if result.cycle else {}
    gates = report.get("gates", {})
    win = gates.get("win_rate")
    if win and (win.get("detail") or {}).get("win_rate") is not None and win.get("interval"):
        fig, ax = plt.subplots(figsize=(6, 1.8))
        (lo, hi), mid = win["interval"], win["detail"]["win_rate"]
        ax.errorbar([mid], [0], xerr=[[mid - lo], [hi - mid]], fmt="o", capsize=6)
        threshold = (report.get("thresholds") or {}).get("win_rate_lower_min", 0.5)
        ax.axvline(threshold, color="#c33", linestyle="--", label=f"gate: lower >= {threshold}")
        ax.set_xlim(0, 1)
        ax.set_yticks([])
        ax.set_xlabel("candidate win rate vs production (independent judge)")
        ax.legend(loc="upper left")
        out.append(("Win rate with confidence interval", _png(fig)))
    for path in result.cycle.plots if result.cycle else []:
        if Path(path).exists():
            out.append(
                (
                    f"Training run: {Path(path).name}",
                    base64.b64encode(Path(path).read_bytes()).decode(),
                )
            )
    return out


def _heldout_plot(evals: list[tuple[str, Evaluation]]) -> str:
    """The yardstick's rates of one or two evaluations (label, rows) with Wilson
    intervals, and the paired test's p-values of the second against the first."""
    import matplotlib.pyplot as plt

    from infra.demo.yardstick import compare
    from training.stats import wilson_interval

    pvalues = compare(evals[0][1], evals[1][1]) if len(evals) > 1 else []
    fig, ax = plt.subplots(figsize=(6, 3))
    width = 0.35
    for i, (label, ev) in enumerate(evals):
        n = len(ev.rows)
        rates = [ev.fact_rate, ev.cite_rate]
        cis = [wilson_interval(round(r * n), n) for r in rates]
        xs = [j + i * width for j in range(2)]
        err = [[max(0.0, r - lo) for r, (lo, _) in zip(rates, cis, strict=True)],
               [max(0.0, hi - r) for r, (_, hi) in zip(rates, cis, strict=True)]]  # fmt: skip
        ax.bar(xs, rates, width, yerr=err, capsize=4, label=f"{label} ({ev.version}, n={n})")
    names = ["exact figure", "cites"]
    if pvalues:
        names = [f"{c.criterion}\nMcNemar p={c.p_value:.3g}" for c in pvalues]
    ax.set_xticks([j + width / 2 for j in range(2)], names)
    ax.set_ylim(0, 1)
    ax.legend()
    return _png(fig)


def _versions_plot(result: DemoResult) -> str:
    """Exact-figure and cites rates of the held-out answers, version by version."""
    import matplotlib.pyplot as plt

    from training.stats import wilson_interval

    series = result.yardstick()
    fig, ax = plt.subplots(figsize=(6, 3))
    xs = list(range(len(series)))
    for name, attr in (("exact figure", "fact_rate"), ("cites", "cite_rate")):
        rates = [getattr(ev, attr) for _, ev in series]
        cis = [wilson_interval(round(r * len(ev.rows)), len(ev.rows)) for r, (_, ev) in
               zip(rates, series, strict=True)]  # fmt: skip
        err = [[max(0.0, r - lo) for r, (lo, _) in zip(rates, cis, strict=True)],
               [max(0.0, hi - r) for r, (_, hi) in zip(rates, cis, strict=True)]]  # fmt: skip
        ax.errorbar(xs, rates, yerr=err, marker="o", capsize=4, label=name)
    ax.set_xticks(xs, [f"{label}\n{ev.version}" for label, ev in series])
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out rate")
    ax.legend()
    return _png(fig)
