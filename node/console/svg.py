"""Server-rendered SVG plots (pure: data in, markup out; every text escaped)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from html import escape

W, H = 640, 180
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 22, 26


def _fmt(v: float) -> str:
    a = abs(v)
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= scale:
            return f"{v / scale:.3g}{suffix}"
    return f"{v:.3g}"


def _clock(t: float, span: float) -> str:
    return time.strftime("%H:%M" if span < 2 * 86400 else "%m-%d %H:%M", time.localtime(t))


def line_plot(points: Sequence[tuple[float, float]], *, title: str, unit: str = "",
              marks: Sequence[tuple[float, str, str]] = (), step: bool = False,
              width: int = W, height: int = H) -> str:
    """A line of ``points`` (time, value) with vertical ``marks`` (time, label, kind);
    ``kind`` becomes a CSS class (``add``, ``drop``...). An empty series says so."""
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" viewBox="0 0 {width} '
            f'{height}" role="img" aria-label="{escape(title)}">'
            f'<text class="title" x="{LEFT}" y="14">{escape(title)}'
            f'{" (" + escape(unit) + ")" if unit else ""}</text>')
    if not points:
        return head + (f'<text class="empty" x="{width / 2}" y="{height / 2}" '
                       f'text-anchor="middle">no samples yet</text></svg>')
    ts = [t for t, _ in points] + [t for t, _, _ in marks]
    t0, t1 = min(ts), max(ts)
    vmax = max(max(v for _, v in points), 0.0)
    vmin = min(min(v for _, v in points), 0.0)
    if vmax == vmin:
        vmax = vmin + 1.0
    span = max(t1 - t0, 1e-9)
    pw, ph = width - LEFT - RIGHT, height - TOP - BOTTOM

    def x(t: float) -> float:
        return LEFT + (t - t0) / span * pw

    def y(v: float) -> float:
        return TOP + (1 - (v - vmin) / (vmax - vmin)) * ph

    parts = [head,
             f'<line class="axis" x1="{LEFT}" y1="{TOP + ph}" x2="{LEFT + pw}" y2="{TOP + ph}"/>',
             f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + ph}"/>']
    for v in (vmin, (vmin + vmax) / 2, vmax):
        parts.append(f'<text class="tick" x="{LEFT - 4}" y="{y(v) + 4:.1f}" '
                     f'text-anchor="end">{escape(_fmt(v))}</text>')
    for t, anchor in ((t0, "start"), ((t0 + t1) / 2, "middle"), (t1, "end")):
        parts.append(f'<text class="tick" x="{x(t):.1f}" y="{height - 8}" '
                     f'text-anchor="{anchor}">{escape(_clock(t, span))}</text>')
    coords: list[str] = []
    for i, (t, v) in enumerate(points):
        if step and i:
            coords.append(f"{x(t):.1f},{y(points[i - 1][1]):.1f}")
        coords.append(f"{x(t):.1f},{y(v):.1f}")
    parts.append(f'<polyline class="series" points="{" ".join(coords)}"/>')
    if len(points) == 1:
        parts.append(f'<circle class="series" cx="{x(points[0][0]):.1f}" '
                     f'cy="{y(points[0][1]):.1f}" r="3"/>')
    for t, label, kind in marks:
        parts.append(f'<line class="mark {escape(kind)}" x1="{x(t):.1f}" y1="{TOP}" '
                     f'x2="{x(t):.1f}" y2="{TOP + ph}"><title>{escape(label)}</title></line>')
    parts.append("</svg>")
    return "".join(parts)
