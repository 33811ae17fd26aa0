"""Small charts drawn on the server as SVG (no JavaScript, no CDN).

Labels are escaped here; templates mark the result safe."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from markupsafe import Markup

W, H = 560, 180
PAD_L, PAD_R, PAD_T, PAD_B = 48, 12, 22, 28


def _ticks(low: float, high: float) -> tuple[float, float]:
    if not math.isfinite(low) or not math.isfinite(high):
        return 0.0, 1.0
    if high - low < 1e-12:
        return low - 1.0, high + 1.0
    return low, high


def _frame(title: str, low: float, high: float) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" role="img"'
        f' aria-label="{escape(title)}" class="chart">',
        f"<title>{escape(title)}</title>",
        f'<text x="{PAD_L}" y="14" class="chart-title">{escape(title)}</text>',
        f'<line x1="{PAD_L}" y1="{H - PAD_B}" x2="{W - PAD_R}" y2="{H - PAD_B}" class="axis"/>',
        f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{H - PAD_B}" class="axis"/>',
        f'<text x="{PAD_L - 4}" y="{PAD_T + 4}" class="tick" text-anchor="end">{high:.3g}</text>',
        f'<text x="{PAD_L - 4}" y="{H - PAD_B}" class="tick" text-anchor="end">{low:.3g}</text>',
    ]


def line_chart(title: str, values: Sequence[float]) -> Markup:
    """One series against its step index."""
    finite = [v for v in values if math.isfinite(v)]
    low, high = _ticks(min(finite, default=0.0), max(finite, default=1.0))
    parts = _frame(title, low, high)
    n = len(values)
    span_x = W - PAD_L - PAD_R
    span_y = H - PAD_T - PAD_B
    points = []
    for i, v in enumerate(values):
        if not math.isfinite(v):
            continue
        x = PAD_L + (span_x * i / (n - 1) if n > 1 else span_x / 2)
        y = PAD_T + span_y * (1 - (v - low) / (high - low))
        points.append(f"{x:.1f},{y:.1f}")
    if points:
        parts.append(f'<polyline points="{" ".join(points)}" class="series"/>')
    parts.append(
        f'<text x="{W - PAD_R}" y="{H - 8}" class="tick" text-anchor="end">step {max(n - 1, 0)}'
        "</text></svg>"
    )
    return Markup("".join(parts))


def bar_chart(title: str, labels: Sequence[str], values: Sequence[float]) -> Markup:
    """Bars with a label under every fourth one."""
    high = max([*values, 1.0])
    parts = _frame(title, 0.0, high)
    n = max(len(values), 1)
    slot = (W - PAD_L - PAD_R) / n
    span_y = H - PAD_T - PAD_B
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        h = span_y * v / high
        x = PAD_L + i * slot
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{H - PAD_B - h:.1f}" width="{max(slot - 2, 1):.1f}"'
            f' height="{h:.1f}" class="bar"><title>{escape(label)}: {v:g}</title></rect>'
        )
        if i % 4 == 0:
            parts.append(
                f'<text x="{x + slot / 2:.1f}" y="{H - 10}" class="tick"'
                f' text-anchor="middle">{escape(label)}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))
