"""The demo's summary (rich tables in the terminal), its HTML report with the
plots embedded as base64 PNGs, and the instructions printed at the end."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from infra.demo.plots import plots
from infra.demo.results import DemoResult
from infra.demo.settings import DemoSettings
from infra.demo.training_step import CycleOutcome
from training.gate_results import point_estimate


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _interval(pair: Any) -> str:
    return f"[{_fmt(pair[0])}, {_fmt(pair[1])}]" if pair else "—"


def gate_rows(cycle: CycleOutcome | None) -> list[tuple[str, bool, str, str, str, str, str]]:
    """(gate, passed, n, estimate, gated value, interval, threshold) for every gate
    of the report (the interval gates are decided on a bound, not the estimate)."""
    gates = (cycle.gate_report if cycle else {}).get("gates", {})
    return [
        (
            name,
            bool(g.get("passed")),
            f"{g.get('n', '—')} (min {g.get('min_n', '—')})",
            _fmt(point_estimate(g)),
            _fmt(g.get("value")),
            _interval(g.get("interval")),
            str(g.get("threshold", "")) + (f" — {g['reason']}" if g.get("reason") else ""),
        )
        for name, g in gates.items()
    ]


def _accuracy(gate: dict[str, Any]) -> str:
    """A held-out accuracy with its Wilson interval and count, from a gate of the report."""
    if not gate:
        return "—"
    interval = _interval(gate.get("interval"))
    return f"{_fmt(point_estimate(gate))} {interval}, n={gate.get('n')} pairs"


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


def _grounding_row(rm: dict[str, Any]) -> list[tuple[str, str]]:
    """The policy RM's learned score alone, when its score adds the grounding term."""
    if "grounding_weight" not in rm:
        return []
    return [
        (
            "reward model: learned score alone (held-out), grounding weight",
            f"{_fmt(rm.get('model_heldout_accuracy'))}, w = {rm['grounding_weight']}",
        )
    ]


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
        ("reward model held-out accuracy (Wilson)", _accuracy(gates.get("reward_accuracy", {}))),
        *_grounding_row(cycle.metrics.get("reward", {}) if cycle else {}),
        ("judge held-out accuracy (Wilson)", _accuracy(gates.get("judge_accuracy", {}))),
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
    for number, run in enumerate(result.runs[1:], 2):
        cycle = run.cycle
        rows.append(
            (
                f"cycle {number}: candidate, promotion",
                (
                    f"{cycle.version} ({'gates passed' if cycle.gates_passed else 'gates failed'})"
                    if cycle and cycle.version
                    else "—"
                )
                + f", {run.promotion or 'not promoted'}",
            )
        )
    rows += [(f"cycle {n}: held-out yardstick", line) for n, line, _ in regressions(result)]
    rows += replay_rows(result)
    return rows


def replay_rows(result: DemoResult) -> list[tuple[str, str]]:
    """Each refused candidate's held-out answers, asked offline (``infra.demo.replay``),
    against the served version replayed the same way, and how faithful the replay was."""
    from infra.demo.yardstick import compare

    rows = []
    for number, run in enumerate(result.runs, 1):
        replay = run.replay
        if replay is None:
            continue
        prefix = f"cycle {number}: " if len(result.runs) > 1 else ""
        served, candidate = replay.served.version, replay.candidate.version
        for change in compare(replay.served, replay.candidate):
            rows.append(
                (
                    f"{prefix}held-out {change.criterion}, replayed offline:"
                    f" {served} -> refused {candidate} (95% Wilson)",
                    change.line(),
                )
            )
        rows.append(
            (
                f"{prefix}replay check: {served}'s replayed replies as the API gave them",
                f"{replay.identical} of {len(replay.served.rows)}, token for token",
            )
        )
    return rows


def regressions(result: DemoResult) -> list[tuple[int, str, bool]]:
    """Each cycle after the first against the version served before it, on the held-out
    yardstick: (cycle, line, regressed). A cycle regressed when a rate fell (the exact
    McNemar p-value says how surely); one that promoted nothing changed nothing."""
    from infra.demo.yardstick import compare

    out: list[tuple[int, str, bool]] = []
    previous = result.runs[0].after or result.before
    for number, run in enumerate(result.runs[1:], 2):
        if run.after is None or previous is None:
            out.append((number, "promoted nothing: the served version is unchanged", False))
            continue
        changes = compare(previous, run.after)
        regressed = any(c.after < c.before for c in changes)
        verdict = "REGRESSED" if regressed else "no regression"
        out.append(
            (
                number,
                f"{previous.version} -> {run.after.version}: {verdict}; "
                + "; ".join(f"{c.criterion} {c.line()}" for c in changes),
                regressed,
            )
        )
        previous = run.after
    return out


def summarize(console: Console, result: DemoResult, settings: DemoSettings) -> None:
    table = Table(title="Ratchet demo: summary", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in headline(result):
        table.add_row(key, value)
    console.print(table)
    gates = Table(title="evaluation gates")
    for col in ("gate", "result", "n", "estimate", "gated value", "interval", "threshold"):
        gates.add_column(col)
    for name, passed, n, estimate, value, interval, threshold in gate_rows(result.cycle):
        result_cell = "[green]pass[/]" if passed else "[red]FAIL[/]"
        gates.add_row(name, result_cell, n, estimate, value, interval, threshold)
    if gate_rows(result.cycle):
        console.print(gates)
    for number, line, regressed in regressions(result):
        colour = "red" if regressed else "green"
        console.print(f"[{colour}]cycle {number} on the held-out yardstick:[/] {line}")
    if result.cycle and not result.cycle.gates_passed and result.promotion is None:
        failed = [n for n, ok, *_ in gate_rows(result.cycle) if not ok]
        console.print(
            f"[yellow]{result.cycle.version} was not promoted: {', '.join(failed)} failed.[/] "
            "Inspect it with `ratchet models show "
            f"{result.cycle.version}`; an operator may still `ratchet models promote "
            f"{result.cycle.version} --force --reason ...` (audited)."
        )


_CSS = """body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
.ok{color:#080}.bad{color:#c00;font-weight:bold}img{max-width:100%}"""


def write_html(result: DemoResult, settings: DemoSettings) -> Path:
    esc = html.escape
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in headline(result))
    gates = "".join(
        f"<tr><td>{esc(n)}</td><td class={'ok' if ok else 'bad'}>{'pass' if ok else 'FAIL'}</td>"
        f"<td>{esc(k)}</td><td>{esc(e)}</td><td>{esc(v)}</td><td>{esc(i)}</td><td>{esc(t)}</td>"
        "</tr>"
        for n, ok, k, e, v, i, t in gate_rows(result.cycle)
    )
    figures = "".join(
        f"<h2>{esc(title)}</h2><img alt='{esc(title)}' src='data:image/png;base64,{data}'>"
        for title, data in plots(result)
    )
    answers = ""
    replayed = [
        ("refused candidate, replayed offline (not served)", r.replay.candidate)
        for r in result.runs
        if r.replay is not None
    ]
    for label, ev in [*result.yardstick(), *replayed]:
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
        "<tr><th>gate</th><th>result</th><th>n</th><th>estimate</th><th>gated value</th>"
        "<th>interval</th><th>threshold</th></tr>"
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
