"""Charts as inline SVG text, drawn in Python, for the run report (`report_html`): no script, no library.

Two shapes cover the report: `time_chart` (stacked bars or lines over a shared `TimeScale`, with event
markers on the timeline) and `bar_rows` (horizontal stacked bars, one row per name). Every chart is an
`<svg class="chart" data-chart=NAME>` with a viewBox and no fixed size, so CSS scales it to its column;
every text that comes from data is escaped here, so a caller may pass a model name or a message as is.
Each bar, point and marker carries a `<title>`: the browser shows it as a tooltip.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

WIDTH = 800
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 30, 36
#: a text's width in the viewBox, estimated (font-size 12): enough to lay out legends and labels
CHAR_WIDTH = 7.2
#: time-axis tick steps (seconds) a chart may use: the smallest that gives at most `MAX_TICKS` ticks
TICK_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
              172800, 604800)
MAX_TICKS = 8
#: a chart with more markers than this draws them without their numbers (they would only overlap)
MAX_NUMBERED_MARKERS = 40

Format = Callable[[float], str]


def compact(value: float) -> str:
    """A tick or bar value: `0.5`, `120`, `12k`, `3.5M`."""
    if abs(value) >= 1e6:
        return f"{value / 1e6:.3g}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.3g}k"
    return f"{value:.4g}"


@dataclass(frozen=True, slots=True)
class Series:
    """One coloured series of a time chart: (bucket start, value) points; a bucket without a point is a
    gap (a line breaks there; a bar is not drawn)."""

    label: str
    color: str
    points: Sequence[tuple[float, float]]


@dataclass(frozen=True, slots=True)
class Marker:
    """An event on a time chart's timeline: a vertical line, its `number` at the top, `title` on hover."""

    at: float
    kind: str  # the legend entry, e.g. "state change"
    color: str
    title: str
    number: int | None = None


@dataclass(frozen=True, slots=True)
class Part:
    """One coloured part of every row of a `bar_rows` chart (e.g. prompt tokens), one value a row."""

    label: str
    color: str
    values: Sequence[float]


@dataclass(frozen=True, slots=True)
class TimeScale:
    """The time span every time chart of a report shares, so that their timelines line up."""

    start: float
    end: float

    @property
    def span(self) -> float:
        return max(self.end - self.start, 1.0)

    @property
    def step(self) -> int:
        for step in TICK_STEPS:
            if self.span / step <= MAX_TICKS:
                return step
        return TICK_STEPS[-1]

    def ticks(self) -> list[float]:
        step = self.step
        first = math.ceil(self.start / step) * step
        return [float(t) for t in range(int(first), int(self.start + self.span) + 1, step)]

    def label(self, epoch: float) -> str:
        """A tick's label in UTC: HH:MM:SS when ticks are seconds apart, HH:MM for longer runs, with the
        day when the span is more than a day."""
        if self.span > 86400:
            pattern = "%d %b %H:%M"
        elif self.step < 60:
            pattern = "%H:%M:%S"
        else:
            pattern = "%H:%M"
        return time.strftime(pattern, time.gmtime(epoch))

    def x(self, epoch: float) -> float:
        return LEFT + (epoch - self.start) / self.span * (WIDTH - LEFT - RIGHT)


def nice_top(value: float, ticks: int = 4) -> tuple[float, float]:
    """The top of a value axis that starts at 0 and shows `value`, and its tick step (1, 2, 2.5 or 5 × 10ⁿ)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0, 0.25
    raw = value / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return math.ceil(value / step - 1e-9) * step, step


def _svg(name: str, height: float, label: str, body: list[str]) -> str:
    return (f'<svg class="chart" data-chart="{escape(name)}" viewBox="0 0 {WIDTH} {height:.0f}" width="100%" '
            f'role="img" aria-label="{escape(label)}" font-size="12" fill="#222">'
            f'<title>{escape(label)}</title>' + "".join(body) + "</svg>")


def _legend(entries: Sequence[tuple[str, str]], y_title: str) -> list[str]:
    """The y-axis title at the top left, the legend right-aligned on the same row."""
    out = [f'<text x="{LEFT}" y="14" font-weight="600">{escape(y_title)}</text>']
    x: float = WIDTH - RIGHT
    for label, color in reversed(entries):
        x -= len(label) * CHAR_WIDTH + 26
        out.append(f'<rect x="{x:.1f}" y="5" width="11" height="11" fill="{color}"/>'
                   f'<text x="{x + 15:.1f}" y="14">{escape(label)}</text>')
    return out


def _value_axis(top: float, step: float, height: float, fmt: Format) -> tuple[list[str], Callable[[float], float]]:
    bottom = height - BOTTOM

    def y(value: float) -> float:
        return bottom - value / top * (bottom - TOP)

    out = []
    for i in range(int(round(top / step)) + 1):
        value = i * step
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
                   f'stroke="{"#888" if i == 0 else "#e3e3e3"}"/>'
                   f'<text x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{escape(fmt(value))}</text>')
    return out, y


def _time_axis(scale: TimeScale, height: float) -> list[str]:
    bottom = height - BOTTOM
    out = []
    for tick in scale.ticks():
        x = scale.x(tick)
        label = scale.label(tick)
        # a label that would stick out of the right edge ends at its tick instead of centring on it
        anchor = "end" if x + len(label) * CHAR_WIDTH / 2 > WIDTH else "middle"
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{bottom}" y2="{bottom + 4}" stroke="#888"/>'
                   f'<text x="{x:.1f}" y="{bottom + 17}" text-anchor="{anchor}">{label}</text>')
    out.append(f'<text x="{WIDTH - RIGHT}" y="{height - 4}" text-anchor="end" fill="#555">time (UTC)</text>')
    return out


def _markers(markers: Sequence[Marker], scale: TimeScale, height: float) -> list[str]:
    bottom = height - BOTTOM
    numbered = len(markers) <= MAX_NUMBERED_MARKERS
    out = []
    for marker in markers:
        x = scale.x(marker.at)
        number = (f'<text x="{x:.1f}" y="{TOP - 3}" text-anchor="middle" font-size="10" fill="{marker.color}">'
                  f'{marker.number}</text>') if numbered and marker.number is not None else ""
        # a wide transparent stroke under the thin line, so the tooltip is easy to hover
        out.append(f'<g class="marker"><title>{escape(marker.title)}</title>'
                   f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{bottom}" stroke="{marker.color}" '
                   f'stroke-width="1.5" stroke-dasharray="4 3"/>'
                   f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP - 12}" y2="{bottom}" stroke="#000" '
                   f'stroke-opacity="0" stroke-width="9" pointer-events="stroke"/>{number}</g>')
    return out


def time_chart(name: str, scale: TimeScale, bucket_seconds: float, series: Sequence[Series], *,
               y_title: str, fmt: Format = compact, lines: bool = False, markers: Sequence[Marker] = (),
               y_max: float | None = None, height: float = 240) -> str:
    """Series over time: stacked bars (one bar a bucket, series in order from the bottom) or, with
    `lines`, one line each through the middle of the buckets. `y_max` fixes the value axis (e.g. the
    same for every key's chart); markers are drawn over the plot and listed once each kind in the legend."""
    if lines:
        peak = max((value for s in series for _, value in s.points), default=0.0)
    else:
        totals: dict[float, float] = {}
        for s in series:
            for start, value in s.points:
                totals[start] = totals.get(start, 0.0) + value
        peak = max(totals.values(), default=0.0)
    top, step = nice_top(y_max if y_max is not None else peak)
    axis, y = _value_axis(top, step, height, fmt)
    kinds = {marker.kind: marker.color for marker in markers}
    body = _legend([(s.label, s.color) for s in series] + list(kinds.items()), y_title) + axis
    body += _time_axis(scale, height)
    plot = _lines(series, scale, bucket_seconds, y, fmt) if lines else _bars(series, scale, bucket_seconds, y, fmt)
    body += plot + _markers(markers, scale, height)
    return _svg(name, height, y_title, body)


def _bars(series: Sequence[Series], scale: TimeScale, bucket_seconds: float, y: Callable[[float], float],
          fmt: Format) -> list[str]:
    out = []
    base: dict[float, float] = {}
    for s in series:
        for start, value in s.points:
            if value <= 0:
                continue
            below = base.get(start, 0.0)
            base[start] = below + value
            x0, x1 = scale.x(start), scale.x(start + bucket_seconds)
            gap = min(1.0, (x1 - x0) * 0.15)
            out.append(f'<rect x="{x0 + gap / 2:.2f}" y="{y(below + value):.2f}" width="{max(x1 - x0 - gap, 0.5):.2f}" '
                       f'height="{y(below) - y(below + value):.2f}" fill="{s.color}">'
                       f'<title>{scale.label(start)} {escape(s.label)}: {escape(fmt(value))}</title></rect>')
    return out


def _lines(series: Sequence[Series], scale: TimeScale, bucket_seconds: float, y: Callable[[float], float],
           fmt: Format) -> list[str]:
    out = []
    for s in series:
        runs: list[list[tuple[float, float]]] = []
        last: float | None = None
        for start, value in sorted(s.points):
            if last is None or start - last > bucket_seconds * 1.5:
                runs.append([])
            runs[-1].append((scale.x(start + bucket_seconds / 2), y(value)))
            last = start
            # a dot for each point: visible where a run has a single point, and a tooltip for every one
            out.append(f'<circle cx="{runs[-1][-1][0]:.1f}" cy="{runs[-1][-1][1]:.1f}" r="2.2" fill="{s.color}">'
                       f'<title>{scale.label(start)} {escape(s.label)}: {escape(fmt(value))}</title></circle>')
        for run in runs:
            if len(run) > 1:
                points = " ".join(f"{px:.1f},{py:.1f}" for px, py in run)
                out.insert(0, f'<polyline points="{points}" fill="none" stroke="{s.color}" stroke-width="2"/>')
    return out


def bar_rows(name: str, rows: Sequence[str], parts: Sequence[Part], *, x_title: str, fmt: Format = compact,
             notes: Sequence[str] = (), row_height: float = 26) -> str:
    """Horizontal stacked bars, one row per name (e.g. a model), parts in order from the left; `notes`
    (one a row, e.g. its cost) are written after each bar."""
    label_chars = min(max((len(row) for row in rows), default=4), 32)
    left = 12 + label_chars * CHAR_WIDTH
    right = WIDTH - RIGHT - 140  # room for the total and the note after the longest bar
    height = TOP + len(rows) * row_height + 10
    totals = [sum(part.values[i] for part in parts) for i in range(len(rows))]
    top = max(totals, default=0.0) or 1.0
    body = _legend([(part.label, part.color) for part in parts], x_title)
    for i, row in enumerate(rows):
        y = TOP + i * row_height
        shown = row if len(row) <= label_chars else row[: label_chars - 1] + "…"
        body.append(f'<text x="{left - 8:.1f}" y="{y + row_height * 0.62:.1f}" text-anchor="end">'
                    f'<title>{escape(row)}</title>{escape(shown)}</text>')
        x = left
        for part in parts:
            width = part.values[i] / top * (right - left)
            if width > 0:
                body.append(f'<rect x="{x:.2f}" y="{y + 4:.1f}" width="{width:.2f}" height="{row_height - 8:.1f}" '
                            f'fill="{part.color}"><title>{escape(row)} {escape(part.label)}: '
                            f'{escape(fmt(part.values[i]))}</title></rect>')
            x += width
        note = f" · {notes[i]}" if i < len(notes) else ""
        body.append(f'<text x="{x + 6:.1f}" y="{y + row_height * 0.62:.1f}">{escape(fmt(totals[i]) + note)}</text>')
    return _svg(name, height, x_title, body)
