"""Small inline-SVG plots for the dashboard: line plots, histograms, stacked bars. No dependencies;
every piece of text goes through ``html.escape``. Non-finite values are skipped, never drawn."""

from __future__ import annotations

import math
from html import escape
from typing import Iterable, List, Optional, Sequence, Tuple

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
FONT = 'font-family="system-ui,sans-serif" font-size="11"'


def _finite(v) -> bool:
    try:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    except OverflowError:  # an int too large for a float
        return False


MAX_TICKS = 50


def nice_ticks(lo: float, hi: float, n: int = 5) -> List[float]:
    """Round tick values from ``lo`` to ``hi`` (about ``n``, never more than MAX_TICKS). A range that
    is not finite gives none; one narrower than the float spacing at its ends (steps would not move
    a float) gives just its ends."""
    if not (_finite(lo) and _finite(hi)):
        return []
    if hi <= lo:
        hi = lo + 1.0
    n = max(1, int(n))
    span = hi - lo
    if not math.isfinite(span):
        return []
    if span <= math.ulp(max(abs(lo), abs(hi))) * n:
        return [lo, hi] if hi > lo else [lo]
    raw = span / n
    mag = 10.0 ** math.floor(math.log10(raw))
    if not (math.isfinite(mag) and mag > 0):
        return [lo, hi]
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    out, t = [], start
    while t <= hi + 1e-9 * step and len(out) < MAX_TICKS:
        out.append(round(t, 10))
        t += step
    return out


def fmt(v, digits: int = 3) -> str:
    """A number for an axis or a tooltip: whole numbers in full with thousands separators ("5,000",
    never "5e+03"), others to ``digits`` significant digits (at least to the unit); an exponent
    only outside [1e-3, 1e6)."""
    if not _finite(v):
        return "–"
    a = abs(v)
    if v != 0 and (a >= 1e6 or a < 1e-3):
        return f"{v:.2e}"
    if float(v).is_integer():
        return f"{int(v):,}"
    s = f"{v:.{digits}g}"
    return f"{v:,.0f}" if "e" in s else s


def _widen(lo: float, hi: float) -> Tuple[float, float]:
    """``(lo, hi)`` with ``hi > lo``: an empty range gets a width a float can hold at ``lo``."""
    return (lo, hi) if hi > lo else (lo, lo + max(1.0, abs(lo) * 1e-9))


def _plottable(*v) -> bool:
    """Ranges whose ends and widths are finite (a width of ±1e308 values overflows to inf)."""
    return all(math.isfinite(x) for x in v) and math.isfinite(v[1] - v[0]) and math.isfinite(v[3] - v[2])


class _Frame:
    """Plot area, scales and axes."""

    def __init__(self, width, height, xlo, xhi, ylo, yhi, left=46, right=10, top=22, bottom=32):
        self.w, self.h = width, height
        self.l, self.r, self.t, self.b = left, right, top, bottom
        self.xlo, self.xhi = _widen(xlo, xhi)
        self.ylo, self.yhi = _widen(ylo, yhi)

    def x(self, v):
        return self.l + (v - self.xlo) / (self.xhi - self.xlo) * (self.w - self.l - self.r)

    def y(self, v):
        return self.h - self.b - (v - self.ylo) / (self.yhi - self.ylo) * (self.h - self.t - self.b)

    def axes(self, title: str, xlabel: str, ylabel: str, xticks=None, yticks=None) -> List[str]:
        out = [f'<text x="{self.l}" y="14" {FONT} font-weight="600">{escape(title)}</text>']
        x0, x1, y0, y1 = self.l, self.w - self.r, self.t, self.h - self.b
        out.append(f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" fill="#fff" stroke="#ccc"/>')
        for t in (yticks if yticks is not None else nice_ticks(self.ylo, self.yhi, 4)):
            if self.ylo - 1e-12 <= t <= self.yhi + 1e-12:
                yy = self.y(t)
                out.append(f'<line x1="{x0}" x2="{x1}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#eee"/>')
                out.append(f'<text x="{x0 - 4}" y="{yy + 3.5:.1f}" text-anchor="end" {FONT}>{escape(fmt(t))}</text>')
        for t in (xticks if xticks is not None else nice_ticks(self.xlo, self.xhi, 5)):
            if self.xlo - 1e-12 <= t <= self.xhi + 1e-12:
                xx = self.x(t)
                out.append(f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{y1}" y2="{y1 + 4}" stroke="#999"/>')
                out.append(f'<text x="{xx:.1f}" y="{y1 + 15}" text-anchor="middle" {FONT}>{escape(fmt(t))}</text>')
        out.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{self.h - 3}" text-anchor="middle" {FONT} fill="#555">'
                   f'{escape(xlabel)}</text>')
        if ylabel:
            out.append(f'<text transform="translate(11,{(y0 + y1) / 2:.1f}) rotate(-90)" text-anchor="middle" '
                       f'{FONT} fill="#555">{escape(ylabel)}</text>')
        return out


def _svg(width, height, parts: Iterable[str], cls: str, label: str) -> str:
    return (f'<svg class="plot {escape(cls)}" role="img" aria-label="{escape(label)}" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
            + "".join(parts) + "</svg>")


def empty_plot(title: str, message: str, width: int = 320, height: int = 200, cls: str = "") -> str:
    return _svg(width, height, [f'<text x="10" y="14" {FONT} font-weight="600">{escape(title)}</text>',
                                f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" {FONT} fill="#888">'
                                f'{escape(message)}</text>'], f"empty {cls}", title)


Series = Tuple[str, Sequence, Sequence]  # (name, xs, ys)


def line_plot(series: Sequence[Series], title: str, xlabel: str = "", ylabel: str = "", width: int = 320,
              height: int = 200, y_range: Optional[Tuple[float, float]] = None,
              vlines: Sequence[Tuple[float, str]] = (), hlines: Sequence[Tuple[float, str]] = (),
              bands: Sequence[Tuple[Sequence, Sequence, Sequence]] = (), integer_x: bool = False,
              cls: str = "", tooltips: Optional[Sequence[Sequence[str]]] = None) -> str:
    """Lines with points; ``bands``: (xs, lows, highs) shaded intervals (drawn as error bars)."""
    # each point keeps its index in its series: a tooltip belongs to its point, not to the j-th one
    # drawn (found by review: one point without x shifted every later tooltip by one)
    pts = [[(x, y, j) for j, (x, y) in enumerate(zip(xs, ys)) if _finite(x) and _finite(y)] for _, xs, ys in series]
    allp = [p for s in pts for p in s]
    if not allp:
        return empty_plot(title, "no data yet", width, height, cls)
    xs = [p[0] for p in allp]
    ys = [p[1] for p in allp] + [v for b in bands for v in list(b[1]) + list(b[2]) if _finite(v)]
    ylo, yhi = y_range if y_range else (min(ys), max(ys))
    if not y_range:
        pad = (yhi - ylo) * 0.08 or abs(yhi) * 0.1 or 1.0
        ylo, yhi = ylo - pad, yhi + pad
    xlo, xhi = min(xs), max(xs)
    if xhi == xlo:
        xlo, xhi = xlo - 1, xhi + 1
    xlo, xhi = _widen(xlo, xhi)
    if not _plottable(xlo, xhi, ylo, yhi):
        return empty_plot(title, "values too large to plot", width, height, cls)
    legend = len(series) > 1
    f = _Frame(width, height, xlo, xhi, ylo, yhi, top=22 + (14 if legend else 0))
    xt = nice_ticks(xlo, xhi, 5)
    if integer_x:
        xt = [t for t in xt if abs(t - round(t)) < 1e-9] or sorted(set(int(x) for x in xs))
    out = f.axes(title, xlabel, ylabel, xticks=xt)
    for v, lab in hlines:
        if _finite(v) and ylo <= v <= yhi:
            yy = f.y(v)
            out.append(f'<line x1="{f.l}" x2="{width - f.r}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#999" '
                       f'stroke-dasharray="4 3"><title>{escape(lab)}</title></line>')
    for v, lab in vlines:
        if _finite(v) and xlo <= v <= xhi:
            xx = f.x(v)
            out.append(f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{f.t}" y2="{height - f.b}" stroke="#2ca02c" '
                       f'stroke-dasharray="3 3"/><text x="{xx + 3:.1f}" y="{f.t + 10}" {FONT} fill="#2ca02c">'
                       f'{escape(lab)}</text>')
    for bx, blo, bhi in bands:
        for x, lo, hi in zip(bx, blo, bhi):
            if _finite(x) and _finite(lo) and _finite(hi):
                xx = f.x(x)
                out.append(f'<line class="errbar" x1="{xx:.1f}" x2="{xx:.1f}" y1="{f.y(lo):.1f}" y2="{f.y(hi):.1f}" '
                           f'stroke="#1f77b4" stroke-opacity="0.45" stroke-width="6"/>')
    for i, ((name, _, _), p) in enumerate(zip(series, pts)):
        color = PALETTE[i % len(PALETTE)]
        if len(p) > 1:
            path = " ".join(f"{f.x(x):.1f},{f.y(y):.1f}" for x, y, _ in p)
            out.append(f'<polyline class="series" points="{path}" fill="none" stroke="{color}" stroke-width="1.8"/>')
        for x, y, j in p:
            tip = (tooltips[i][j] if tooltips and i < len(tooltips) and j < len(tooltips[i])
                   else f"{name}: {fmt(y)} at {fmt(x)}")
            out.append(f'<circle class="pt" cx="{f.x(x):.1f}" cy="{f.y(y):.1f}" r="2.6" fill="{color}">'
                       f'<title>{escape(tip)}</title></circle>')
        if legend:
            lx = f.l + 4 + i * ((width - f.l - f.r) / len(series))
            out.append(f'<rect x="{lx:.1f}" y="20" width="10" height="3" fill="{color}"/>'
                       f'<text x="{lx + 13:.1f}" y="25" {FONT}>{escape(name)}</text>')
    return _svg(width, height, out, cls, title)


def histogram(edges: Sequence[float], counts: Sequence[int], title: str, xlabel: str = "", width: int = 320,
              height: int = 200, cls: str = "", color: str = PALETTE[0], integer: bool = False) -> str:
    if (not isinstance(counts, (list, tuple)) or not isinstance(edges, (list, tuple)) or not counts
            or len(edges) != len(counts) + 1 or not all(_finite(v) for v in list(edges) + list(counts))
            or sum(counts) <= 0):
        return empty_plot(title, "no data", width, height, cls)
    if not _plottable(edges[0], edges[-1], 0, max(counts) * 1.08):
        return empty_plot(title, "values too large to plot", width, height, cls)
    f = _Frame(width, height, edges[0], edges[-1], 0, max(counts) * 1.08)
    xt = [e + 0.5 for e in edges[:-1]] if integer and len(counts) <= 12 else None
    out = f.axes(title, xlabel, "tasks", xticks=xt)
    for lo, hi, c in zip(edges[:-1], edges[1:], counts):
        if c <= 0:
            continue
        x0, x1 = f.x(lo), f.x(hi)
        y = f.y(c)
        out.append(f'<rect class="bar" x="{x0 + 0.5:.1f}" y="{y:.1f}" width="{max(1.0, x1 - x0 - 1):.1f}" '
                   f'height="{f.y(0) - y:.1f}" fill="{color}"><title>{escape(f"{fmt(lo)} to {fmt(hi)}: {c}")}'
                   f'</title></rect>')
    return _svg(width, height, out, cls, title)


def stacked_bar(segments: Sequence[Tuple[str, float, str]], total: Optional[float] = None, width: int = 240,
                height: int = 14, cls: str = "split") -> str:
    """A horizontal bar split into named segments (e.g. seconds per stage); scaled to ``total``."""
    vals = [(n, v, c) for n, v, c in segments if _finite(v) and v > 0]
    tot = total if _finite(total) and total and total > 0 else sum(v for _, v, _ in vals)
    if not vals or tot <= 0:
        return ""
    out, x = [], 0.0
    for name, v, color in vals:
        w = v / tot * width
        out.append(f'<rect x="{x:.1f}" y="0" width="{max(0.5, w):.1f}" height="{height}" fill="{color}">'
                   f'<title>{escape(f"{name}: {v:.2f} s")}</title></rect>')
        x += w
    return _svg(width, height, out, cls, "time split by stage")
