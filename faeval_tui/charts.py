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


CHARTS = (
    ChartSpec("h_L", "‖h_L‖", True, lambda r: r.h_L, "a"),
    ChartSpec("g_L", "‖g_L‖", True, lambda r: r.g_L, "b"),
    ChartSpec("stability", "stability", False, lambda r: r.stability, "c"),
    ChartSpec("acc", "test accuracy", False, lambda r: r.test_acc, "d"),
)


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


def log_ticks(lo: int, hi: int, rows: int) -> tuple[list[float], list[str]]:
    step = max(1, math.ceil((hi - lo + 1) / max(2, rows // 2)))
    ticks = list(range(lo, hi + 1, step))
    return [float(t) for t in ticks], [f"1e{t}" for t in ticks]


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
        refs = [self._y(r.y) for r in self.lines if r.y is not None and unplottable(r.y, log) is None]
        refs += [self._y(v) for r in self.lines for _, v in r.points if unplottable(v, log) is None]
        values = finite + refs
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        if log:
            lo, hi = math.floor(lo), math.ceil(hi)
            if lo == hi:
                lo, hi = lo - 1, hi + 1
        else:
            pad = (hi - lo) * 0.08 or 0.05
            lo, hi = lo - pad, hi + pad
        # reference lines first: the runs, the selected one last, are drawn over them
        for line in self.lines:
            if line.x is not None:  # a first fire of the selected run, labelled at the top
                plt.vline(line.x, color=line.color)
                plt.text(line.label, line.x, hi, color=line.color, alignment="left")
            if line.y is not None and unplottable(line.y, log) is None:
                plt.hline(self._y(line.y), color=line.color)
                plt.text(line.label, 1, self._y(line.y), color=line.color, alignment="left")
            pts = [(x, self._y(v)) for x, v in line.points if unplottable(v, log) is None]
            if pts:
                plt.plot([p[0] for p in pts], [p[1] for p in pts], marker="-" if not self.no_color else ":",
                         color=line.color)
                plt.text(line.label, pts[-1][0], pts[-1][1], color=line.color, alignment="right")
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
        if log:
            plt.yticks(*log_ticks(lo, hi, self.size.height))
        step = max(1, math.ceil(self.xmax / 8))
        plt.xticks(list(range(1, self.xmax + 1, step)))
        title = f"{self.spec.title}{' (log)' if log else ''}"
        if odd:
            s, x, why = odd[-1]
            more = f" +{len(odd) - 1}" if len(odd) > 1 else ""
            title += f"  ! {s.label} e{x} = {why}{more}"
        if self.note:
            title += f"  {self.note}"
        plt.title(title)


def chart_data(spec: ChartSpec, state: AuditState, selected: str | None) -> tuple[list[Series], list[RefLine], str]:
    """The series, reference lines and title note of one chart, from the state alone."""
    th = state.cfg.thresholds
    series = [Series(v.run_id, [(r.epoch, spec.value(r)) for r in v.log.epochs], v.color, v.marker,
                     v.run_id == selected) for v in state.ordered()]
    lines: list[RefLine] = []
    note = ""
    sel: RunView | None = state.runs.get(selected) if selected else None
    last = sel.log.epochs[-1] if sel and sel.log.epochs else None
    if spec.key == "h_L":
        limit = DIAGNOSTICS["a"].threshold(th)
        note = f"(a) growth > {fmt(limit)}" + (f"; {sel.run_id} {fmt(last.growth)}" if last else "")
    elif spec.key == "g_L":
        limit = DIAGNOSTICS["b"].threshold(th)
        lines.append(RefLine(f"(b) floor {limit:.0e}", y=limit))
        n = state.diagnostic_n
        if n != state.cfg.diagnostics.n_samples:  # ‖g_L‖ scales as 1/n: the floor assumes n_samples
            note = f"diagnostic set n = {n} (whole test split), floor set for {state.cfg.diagnostics.n_samples}"
    elif spec.key == "stability":
        limit = DIAGNOSTICS["c"].threshold(th)
        lines.append(RefLine(f"(c) drift > {limit:.2f}", y=limit))
    elif spec.key == "acc":
        chance = 1.0 / n_classes(state.cfg)
        lines.append(RefLine(f"chance {chance:.2g}", y=chance))
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
            text.append(f"{v.marker}━ {v.run_id}", style=style)
            text.append("  ")
        self.update(text)
