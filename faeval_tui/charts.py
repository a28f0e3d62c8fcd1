"""The four live charts: ‖h_L‖, ‖g_L‖, stability and test accuracy, one series per run.

Log charts plot log10 of the values with labelled ticks (plotext's ``yscale("log")``
crashes on re-render). A value a chart cannot place (NaN, ±inf, zero or negative on
a log axis) is drawn as a marker on the chart's edge and named in its title, never
dropped. Reference lines come from ``engine.verdicts.DIAGNOSTICS`` and the audit's
declared thresholds, the same ones the alerts use.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.cells import cell_len
from textual.app import ComposeResult
from textual.containers import Container
from textual.widgets import Static
from textual_plotext import PlotextPlot

from engine.fmt import nonfinite
from engine.fmt import num as fmt
from engine.tables import n_classes
from engine.verdicts import DIAGNOSTICS

from .state import AuditState, RunView

REF_COLOR = 160  # reference lines: thresholds, floors, chance
BASE_COLOR = 250  # the selected run's frozen baseline


@dataclass(frozen=True)
class ChartSpec:
    key: str
    title: str
    log: bool
    value: Callable[[dict[str, Any]], float]
    diagnostic: str | None = None  # whose first fire the chart marks for the selected run
    percent: bool = False  # ticks read as percentages (the tables' unit for accuracy)


CHARTS = (
    ChartSpec("h_L", "‖h_L‖", True, lambda r: r.h_L, "a"),
    ChartSpec("g_L", "‖g_L‖", True, lambda r: r.g_L, "b"),
    ChartSpec("stability", "stability", False, lambda r: r.stability, "c"),
    ChartSpec("acc", "test accuracy", False, lambda r: r.test_acc, "d", percent=True),
)
# (a) is a threshold on growth, not on ‖h_L‖: ``h`` puts this chart in the first slot and back
GROWTH = ChartSpec("growth", "growth max ‖h_l‖/‖h_l−1‖", True, lambda r: r.growth, "a")


@dataclass
class Series:
    label: str
    points: list[tuple[int, float]]
    color: int
    marker: str
    selected: bool = False


@dataclass
class RefLine:
    """A horizontal line (``y``) or a per-epoch line (``points``), with a label."""

    label: str
    y: float | None = None
    points: list[tuple[int, float]] = field(default_factory=list)
    color: int = REF_COLOR
    x: int | None = None  # a vertical line at this epoch (a first fire)


def unplottable(v: float, log: bool) -> str | None:
    """Why a value has no place on the axis, or None when it has one."""
    if v is None:
        return None
    odd = nonfinite(v)
    if odd is not None:
        return odd
    if log and v <= 0:
        return "0" if v == 0 else "<0"
    return None


def _keep_clear(ticks: list[float], pinned: list[float], gap: float) -> list[float]:
    """Ticks at least ``gap`` from every pinned value (a threshold gets its own label)."""
    return [t for t in ticks if all(abs(t - p) >= gap for p in pinned)]


def log_ticks(lo: int, hi: int, rows: int, pinned: tuple[float, ...] = ()) -> tuple[list[float], list[str]]:
    """Decades between lo and hi (log10), evenly spaced, plus the pinned values (log10 of a
    threshold) labelled with themselves; a decade within a row of a pinned one is left out."""
    step = max(1, math.ceil((hi - lo + 1) / max(2, rows // 2)))
    ticks = [float(t) for t in range(lo, hi + 1, step)]
    row = (hi - lo) / max(1, rows - 1)
    pins = [p for p in pinned if lo <= p <= hi]
    ticks = sorted(_keep_clear(ticks, pins, row) + pins)
    return ticks, [f"1e{round(t)}" if abs(t - round(t)) < 1e-9 else f"{10 ** t:.3g}" for t in ticks]


def linear_ticks(lo: float, hi: float, rows: int, pinned: tuple[float, ...] = (),
                 percent: bool = False) -> tuple[list[float], list[str]]:
    """Evenly spaced round ticks (a step of 1, 2 or 5 × 10^k) about every third row, all
    with the same decimals, plus the pinned values (thresholds) with the decimals they need;
    a round tick within a row and a half of a pinned one is left out so labels never touch.
    ``percent`` labels 0.62 as 62%."""
    span = max(hi - lo, 1e-12)
    target = max(2, rows // 3)
    raw = span / target
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]
    scale = 100.0 if percent else 1.0
    decimals = max(0, -math.floor(math.log10(step * scale) + 1e-12))
    pins = [p for p in pinned if lo <= p <= hi]
    row = span / max(1, rows - 1)
    ticks = sorted(_keep_clear(ticks, pins, 1.5 * row) + pins)

    def label(v: float) -> str:
        d = decimals
        while d < 6 and abs(round(v * scale, d) - v * scale) > 1e-9 * max(1.0, abs(v * scale)):
            d += 1  # a pinned value such as 0.25 on a 0.1 grid keeps its digits
        return f"{v * scale:.{d}f}" + ("%" if percent else "")

    return ticks, [label(t) for t in ticks]


def axis_range(values: list[float], fixed: list[float], log: bool, percent: bool) -> tuple[float, float]:
    """The y range of a chart (log10 units on a log chart): the runs and the lines that follow
    them (a baseline). A fixed line widens a linear axis only when it is near the data, so a
    62% against 71% gap is not squeezed into a row by a chance line at 10%; a log axis always
    shows its thresholds (the (b) floor, the (a) growth limit: how far the runs are from
    them is the point). A log axis spans whole decades; an accuracy axis stays within 0–100%."""
    lo, hi = (min(values), max(values)) if values else (min(fixed, default=0.0), max(fixed, default=1.0))
    near = math.inf if log else 0.35 * (hi - lo)
    for y in fixed:
        if lo - near <= y <= hi + near:
            lo, hi = min(lo, y), max(hi, y)
    if log:
        lo, hi = math.floor(lo), math.ceil(hi)
        return (lo - 1, hi + 1) if lo == hi else (lo, hi)
    pad = (hi - lo) * 0.08 or 0.05
    if percent:
        return max(0.0, lo - pad), min(1.0, hi + pad) if hi <= 1.0 else hi + pad
    return lo - pad, hi + pad



def fit_title(parts: list[str], width: int) -> str:
    """The chart's name and as many of its notes, in order, as fit ``width`` cells, ending in
    "…" when some are left out: plotext draws no title at all when it is wider than the plot."""
    title = parts[0][:width]
    for part in parts[1:]:
        if cell_len(f"{title}  {part}") > width:
            return title + " …" if cell_len(title) + 2 <= width else title
        title = f"{title}  {part}"
    return title

class MetricChart(PlotextPlot):
    """One metric for every run; ``show`` stores the data and redraws."""

    def __init__(self, spec: ChartSpec, **kwargs: Any) -> None:
        super().__init__(id=f"chart-{spec.key}", **kwargs)
        self.spec = spec
        self.series: list[Series] = []
        self.lines: list[RefLine] = []
        self.note = ""
        self.xmax = 2
        self.no_color = False

    def show(self, series: list[Series], lines: list[RefLine], note: str, xmax: int, no_color: bool) -> None:
        self.series, self.lines, self.note, self.xmax, self.no_color = series, lines, note, xmax, no_color
        self.refresh()

    def render(self):  # build the figure at the size it is drawn at
        self._draw()
        return super().render()

    def _y(self, v: float) -> float:
        return math.log10(v) if self.spec.log else v

    def _draw(self) -> None:
        plt, log = self.plt, self.spec.log
        plt.clear_figure()
        finite: list[float] = []
        odd: list[tuple[Series, int, str]] = []
        for s in self.series:
            for x, v in s.points:
                why = unplottable(v, log)
                if why is None:
                    finite.append(self._y(v))
                else:
                    odd.append((s, x, why))
        follow = [self._y(v) for r in self.lines for _, v in r.points if unplottable(v, log) is None]
        fixed = [self._y(r.y) for r in self.lines if r.y is not None and unplottable(r.y, log) is None]
        lo, hi = axis_range(finite + follow, fixed, log, self.spec.percent)
        # reference lines first: the runs, the selected one last, are drawn over them. A
        # line's value is a tick label of its own and its name is in the title, so no label
        # is written over the plot or beside another tick
        pinned = []
        for line in self.lines:
            if line.x is not None:  # a first fire of the selected run, labelled at the top
                plt.vline(line.x, color=line.color)
                plt.text(line.label, line.x, hi, color=line.color, alignment="left")
            if line.y is not None and unplottable(line.y, log) is None and lo <= self._y(line.y) <= hi:
                plt.hline(self._y(line.y), color=line.color)
                pinned.append(self._y(line.y))
            pts = [(x, self._y(v)) for x, v in line.points if unplottable(v, log) is None]
            if pts:
                plt.plot([p[0] for p in pts], [p[1] for p in pts], marker="-" if not self.no_color else ":",
                         color=line.color)
        for s in sorted(self.series, key=lambda s: s.selected):
            pts = [(x, self._y(v)) for x, v in s.points if unplottable(v, log) is None]
            if not pts:
                continue
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            marker = "hd" if s.selected else (s.marker if self.no_color else "braille")
            draw = plt.scatter if len(pts) == 1 else plt.plot
            draw(xs, ys, marker=marker if len(pts) > 1 or s.selected else s.marker, color=s.color)
        for s, x, why in odd:
            top = why == "inf"
            plt.scatter([x], [hi if top else lo], marker={"nan": "?", "inf": "▲"}.get(why, "▼"), color=s.color)
        plt.xlim(1, max(2, self.xmax))
        plt.ylim(lo, hi)
        rows = max(2, self.size.height - 4)  # the title, the frame and the x labels take four
        ticks, labels = (log_ticks(lo, hi, rows, tuple(pinned)) if log
                         else linear_ticks(lo, hi, rows, tuple(pinned), self.spec.percent))
        plt.yticks(ticks, labels)
        step = max(1, math.ceil(self.xmax / 8))
        plt.xticks(list(range(1, self.xmax + 1, step)))
        parts = [f"{self.spec.title}{' (log)' if log else ''}"]
        named = [line.label for line in self.lines if line.x is None and (line.points or (
            line.y is not None and unplottable(line.y, log) is None and lo <= self._y(line.y) <= hi))]
        if named:
            parts.append("── " + " · ".join(named))
        if odd:
            s, x, why = odd[-1]
            more = f" +{len(odd) - 1}" if len(odd) > 1 else ""
            parts.append(f"! {s.label} e{x} = {why}{more}")
        if self.note:
            parts.append(self.note)
        # the title spans the plot beside the tick labels and the frame
        plt.title(fit_title(parts, self.size.width - max(map(cell_len, labels), default=0) - 2))


def chart_data(spec: ChartSpec, state: AuditState, selected: str | None) -> tuple[list[Series], list[RefLine], str]:
    """The series, reference lines and title note of one chart, from the state alone."""
    th = state.cfg.thresholds
    series = [Series(v.run_id, [(r.epoch, spec.value(r)) for r in v.log.epochs], v.color, v.marker,
                     v.run_id == selected) for v in state.ordered()]
    lines: list[RefLine] = []
    note = ""
    sel: RunView | None = state.runs.get(selected) if selected else None
    last = sel.log.epochs[-1] if sel and sel.log.epochs else None
    if spec.key == "h_L":  # (a) is on growth: say where the selected run stands and how to see it
        limit = DIAGNOSTICS["a"].threshold(th)
        note = (f"growth {fmt(last.growth)}, (a) > {fmt(limit)}" if last
                else f"(a): growth > {fmt(limit)}") + " · h charts it"
    elif spec.key == "growth":
        limit = DIAGNOSTICS["a"].threshold(th)
        lines.append(RefLine(f"(a) growth > {fmt(limit)}", y=limit))
    elif spec.key == "g_L":
        limit = DIAGNOSTICS["b"].threshold(th)
        lines.append(RefLine(f"(b) floor {limit:.0e}", y=limit))
        n = state.diagnostic_n
        if n != state.cfg.diagnostics.n_samples:  # ‖g_L‖ scales as 1/n: the floor assumes n_samples
            note = f"diagnostic n = {n}, floor set for {state.cfg.diagnostics.n_samples}"  # short: it must fit
    elif spec.key == "stability":
        limit = DIAGNOSTICS["c"].threshold(th)
        lines.append(RefLine(f"(c) drift > {limit:.2f}", y=limit))
    elif spec.key == "acc":
        chance = 1.0 / n_classes(state.cfg)
        lines.append(RefLine(f"chance {100 * chance:.3g}%", y=chance))
        if sel is not None:
            pts = [(r.epoch, DIAGNOSTICS["d"].threshold(th, r)) for r in sel.log.epochs]
            pts = [(x, y) for x, y in pts if y is not None]
            if pts:
                lines.append(RefLine(f"(d) frozen s{sel.spec.seed}", points=pts, color=BASE_COLOR))
    if sel is not None and spec.diagnostic is not None:  # where the selected run's diagnostic first fired
        first = sel.verdict.first_fire.get(spec.diagnostic)
        if first is not None:
            lines.append(RefLine(f"({spec.diagnostic}) e{first}", x=first, color=sel.color))
    return series, lines, note


class ChartGrid(Container):
    """The four charts: a 2×2 grid when there is room, else one at a time (``c`` cycles)."""

    def compose(self) -> ComposeResult:
        for i, spec in enumerate(CHARTS):
            yield MetricChart(spec, classes="" if i == 0 else "-inactive")

    @property
    def charts(self) -> list[MetricChart]:
        return list(self.query(MetricChart))

    def toggle_growth(self) -> str:
        """The first chart between ‖h_L‖ and growth, the quantity (a) fires on."""
        first = self.charts[0]
        first.spec = GROWTH if first.spec is CHARTS[0] else CHARTS[0]
        return first.spec.title

    def cycle(self) -> str:
        charts = self.charts
        current = next(i for i, c in enumerate(charts) if not c.has_class("-inactive"))
        for i, c in enumerate(charts):
            c.set_class(i != (current + 1) % len(charts), "-inactive")
        return charts[(current + 1) % len(charts)].spec.title

    def update_from(self, state: AuditState, selected: str | None, no_color: bool) -> None:
        xmax = state.total_epochs()
        with self.app.batch_update():
            for chart in self.charts:
                chart.show(*chart_data(chart.spec, state, selected), xmax=xmax, no_color=no_color)


class Legend(Static):
    """Which colour and marker is which run; the selected run is shown reversed."""

    def update_from(self, state: AuditState, selected: str | None) -> None:
        from rich.text import Text

        text = Text(no_wrap=False, overflow="fold")
        for v in state.ordered():
            style = f"color({v.color})" + (" reverse bold" if v.run_id == selected else "")
            text.append(f"{v.marker}━{v.run_id}", style=style)  # no space inside: a label never wraps
            text.append("  ")
        self.update(text)
