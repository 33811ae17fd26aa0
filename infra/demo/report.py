"""The demo's summary (rich tables in the terminal), its HTML report with the
plots embedded as base64 PNGs, and the instructions printed at the end."""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from infra.demo.employees import Evaluation, Reply, Tally
from infra.demo.questions import Judgement, Question
from infra.demo.settings import DemoSettings
from infra.demo.training_step import CycleOutcome


@dataclass
class DemoResult:
    """What the demo did, for the summary, the report and the e2e test."""

    model_dir: str = ""
    tally: Tally | None = None
    stored_ratings: int = 0
    before: Evaluation | None = None
    after: Evaluation | None = None
    cycle: CycleOutcome | None = None
    promotion: str | None = None  # "promote", "force_promote", or None (not promoted)
    canary: dict[str, Any] | None = None  # users' A/B picks of the canary (training.promotion)
    refusal: str | None = None  # why the promotion policy refused, if it did
    swap_seconds: float | None = None
    served: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _interval(pair: Any) -> str:
    return f"[{_fmt(pair[0])}, {_fmt(pair[1])}]" if pair else "—"


def gate_rows(cycle: CycleOutcome | None) -> list[tuple[str, bool, str, str, str, str]]:
    """(gate, passed, n, value, interval, threshold) for every gate of the report."""
    gates = (cycle.gate_report if cycle else {}).get("gates", {})
    return [
        (
            name,
            bool(g.get("passed")),
            f"{g.get('n', '—')} (min {g.get('min_n', '—')})",
            _fmt(g.get("value")),
            _interval(g.get("interval")),
            str(g.get("threshold", "")) + (f" — {g['reason']}" if g.get("reason") else ""),
        )
        for name, g in gates.items()
    ]


def _rate(gate: dict[str, Any]) -> str:
    """A win rate with its interval and count, from a gate of the report."""
    if not gate:
        return "—"
    rate = (gate.get("detail") or {}).get("win_rate")
    return f"{_fmt(rate)} {_interval(gate.get('interval'))}, n={gate.get('n')} prompts"


def _human(canary: dict[str, Any] | None) -> str:
    if not canary:
        return "— (no canary stage)"
    return (
        f"{_fmt(canary.get('win_rate'))} {_interval(canary.get('interval'))} (Wilson),"
        f" n={canary.get('total')} picks; needs >= {canary.get('lower_min')}"
        f" with >= {canary.get('min_picks')}"
    )


def headline(result: DemoResult) -> list[tuple[str, str]]:
    tally, cycle = result.tally, result.cycle
    gates = (cycle.gate_report if cycle else {}).get("gates", {})
    rows = [
        (
            "ratings collected (given / stored)",
            f"{tally.ratings if tally else 0} / {result.stored_ratings}",
        ),
        (
            "A/B picks, corrections",
            f"{tally.comparisons if tally else 0}, {tally.corrections if tally else 0}",
        ),
        ("preference pairs built", str(cycle.pairs if cycle else 0)),
        (
            "reward model held-out accuracy (Wilson)",
            _interval(gates.get("reward_accuracy", {}).get("interval")),
        ),
        ("offline win rate: independent judge (CI)", _rate(gates.get("win_rate", {}))),
        ("offline win rate: policy's own RM (CI)", _rate(gates.get("policy_rm_win_rate", {}))),
        ("human win rate: canary A/B picks", _human(result.canary)),
        ("KL to reference (nats)", _fmt(gates.get("kl", {}).get("value"))),
        (
            "candidate",
            f"{cycle.version} ({'gates passed' if cycle.gates_passed else 'gates failed'})"
            if cycle and cycle.version
            else "—",
        ),
        (
            "promotion",
            result.promotion or f"not promoted{': ' + result.refusal if result.refusal else ''}",
        ),
        ("version served now", result.served or "—"),
    ]
    if result.before is not None:
        rows.append(
            (
                "held-out before: exact figure / cites",
                f"{result.before.fact_rate:.0%} / {result.before.cite_rate:.0%}",
            )
        )
    if result.after is not None:
        rows.append(
            (
                "held-out after: exact figure / cites",
                f"{result.after.fact_rate:.0%} / {result.after.cite_rate:.0%}",
            )
        )
    if result.before is not None and result.after is not None:
        from infra.demo.yardstick import compare

        for change in compare(result.before, result.after):
            rows.append(
                (f"held-out {change.criterion}: before -> after (95% Wilson)", change.line())
            )
    return rows


def summarize(console: Console, result: DemoResult, settings: DemoSettings) -> None:
    table = Table(title="Ratchet demo: summary", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in headline(result):
        table.add_row(key, value)
    console.print(table)
    gates = Table(title="evaluation gates")
    for col in ("gate", "result", "n", "value", "interval", "threshold"):
        gates.add_column(col)
    for name, passed, n, value, interval, threshold in gate_rows(result.cycle):
        gates.add_row(
            name, "[green]pass[/]" if passed else "[red]FAIL[/]", n, value, interval, threshold
        )
    if gate_rows(result.cycle):
        console.print(gates)
    if result.cycle and not result.cycle.gates_passed and result.promotion is None:
        failed = [n for n, ok, *_ in gate_rows(result.cycle) if not ok]
        console.print(
            f"[yellow]{result.cycle.version} was not promoted: {', '.join(failed)} failed.[/] "
            "Inspect it with `ratchet models show "
            f"{result.cycle.version}`; an operator may still `ratchet models promote "
            f"{result.cycle.version} --force --reason ...` (audited)."
        )


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
        out.append(("Held-out questions, before and after (95% Wilson)", _heldout_plot(result)))
    gates = (result.cycle.gate_report if result.cycle else {}).get("gates", {})
    win = gates.get("win_rate")
    if win and (win.get("detail") or {}).get("win_rate") is not None and win.get("interval"):
        fig, ax = plt.subplots(figsize=(6, 1.8))
        (lo, hi), mid = win["interval"], win["detail"]["win_rate"]
        ax.errorbar([mid], [0], xerr=[[mid - lo], [hi - mid]], fmt="o", capsize=6)
        threshold = (result.cycle.gate_report.get("thresholds") or {}).get(
            "win_rate_lower_min", 0.5
        )
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


def _heldout_plot(result: DemoResult) -> str:
    """The yardstick's rates with Wilson intervals, and the paired test's p-values."""
    import matplotlib.pyplot as plt

    from infra.demo.yardstick import compare
    from training.stats import wilson_interval

    assert result.before is not None
    evals = [("before", result.before)] + ([("after", result.after)] if result.after else [])
    pvalues = compare(result.before, result.after) if result.after is not None else []
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


_CSS = """body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
.ok{color:#080}.bad{color:#c00;font-weight:bold}img{max-width:100%}"""


def write_html(result: DemoResult, settings: DemoSettings) -> Path:
    esc = html.escape
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in headline(result))
    gates = "".join(
        f"<tr><td>{esc(n)}</td><td class={'ok' if ok else 'bad'}>{'pass' if ok else 'FAIL'}</td>"
        f"<td>{esc(k)}</td><td>{esc(v)}</td><td>{esc(i)}</td><td>{esc(t)}</td></tr>"
        for n, ok, k, v, i, t in gate_rows(result.cycle)
    )
    figures = "".join(
        f"<h2>{esc(title)}</h2><img alt='{esc(title)}' src='data:image/png;base64,{data}'>"
        for title, data in plots(result)
    )
    answers = ""
    for label, ev in (("before", result.before), ("after", result.after)):
        if ev is None:
            continue
        answers += f"<h3>{label} ({esc(ev.version)})</h3><table>"
        answers += "<tr><th>question</th><th>reply</th><th>score</th></tr>"
        answers += "".join(
            f"<tr><td>{esc(q.question)}</td><td>{esc(r.text)}</td><td>{r.judgement.score}</td></tr>"
            for q, r in ev.rows
        )
        answers += "</table>"
    timings = "".join(
        f"<tr><td>{esc(k)}</td><td>{v:.1f} s</td></tr>" for k, v in result.timings.items()
    )
    gate_head = (
        "<tr><th>gate</th><th>result</th><th>n</th><th>value</th><th>interval</th>"
        "<th>threshold</th></tr>"
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>Ratchet demo report</title><style>{_CSS}</style></head><body>
<h1>Ratchet demo report</h1><p>size {esc(settings.size)}, model {esc(result.model_dir)}</p>
<table>{rows}</table><h2>Evaluation gates</h2><table>{gate_head}{gates}</table>
{figures}<h2>Held-out answers</h2>{answers}<h2>Timings</h2><table>{timings}</table>
</body></html>"""
    path = settings.demo_dir / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path


def instructions(console: Console, settings: DemoSettings, key: str) -> None:
    base = settings.base_url
    console.rule("[bold]The API keeps running")
    console.print(
        f"""Your operator key: [bold]{key}[/] (all demo keys: {settings.demo_dir / "keys.json"})

[bold]curl[/]
  curl -s {base}/v1/chat/completions -H "Authorization: Bearer {key}" \\
    -H 'Content-Type: application/json' \\
    -d '{{"model": "ratchet", "messages": [{{"role": "user",
          "content": "How many days of annual leave do I get?"}}]}}'
  curl -s {base}/v1/feedback/ratings -H "Authorization: Bearer {key}" \\
    -H 'Content-Type: application/json' -d '{{"message_id": "MESSAGE_ID", "thumbs": "up"}}'

[bold]Python (openai)[/]
  from openai import OpenAI
  client = OpenAI(base_url="{base}/v1", api_key="{key}")
  reply = client.chat.completions.create(model="ratchet",
      messages=[{{"role": "user", "content": "What is the hotel limit per night?"}}])
  print(reply.choices[0].message.content, reply.model_extra["message_id"])

Logs: {settings.log_dir}/ (api.log, consumer.log, demo-*.log)
Stop everything: [bold]make stack-down[/]"""
    )


# -- rebuilding results from state.json (a second `make demo`) ----------------
def evaluation_from(data: dict[str, Any] | None) -> Evaluation | None:
    if not data:
        return None
    rows = []
    for a in data.get("answers", []):
        score = int(a["score"])
        judgement = Judgement(states_fact=score >= 2, cites=score % 2 == 1)
        rows.append(
            (Question(a["question"], "", ()), Reply(a["reply"], "", data["version"], judgement))
        )
    return Evaluation(version=data["version"], rows=rows)


def tally_from(data: dict[str, Any] | None) -> Tally | None:
    if not data:
        return None
    tally = Tally(
        chats=data["chats"],
        ratings=data["ratings"],
        comparisons=data["comparisons"],
        corrections=data["corrections"],
    )
    tally.rejected = Counter(data.get("rejected", {}))
    tally.thumbs = Counter(data.get("thumbs", {}))
    tally.stars = Counter({int(k): v for k, v in data.get("stars", {}).items()})
    tally.winners = Counter(data.get("winners", {}))
    tally.ratings_by_user = Counter(data.get("ratings_by_user", {}))
    tally.scores = list(data.get("scores", []))
    return tally


def cycle_from(data: dict[str, Any] | None) -> CycleOutcome | None:
    if not data:
        return None
    return CycleOutcome(
        run_id=data.get("run_id"),
        version=data.get("version"),
        gates_passed=bool(data.get("gates_passed")),
        gate_report=data.get("gate_report") or {},
        metrics=data.get("metrics") or {},
        pairs=int(data.get("pairs") or 0),
        skipped_reason=data.get("skipped_reason"),
        plots=[Path(p) for p in data.get("plots", [])],
    )
