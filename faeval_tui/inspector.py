"""The layer inspector: every per-layer measurement of one run at one epoch.

Scale (‖h_l‖, ‖g_l‖, ‖a_l‖ with log bars) and alignment (cos_l ± std against its null
band, ρ_l). While (b) fires the record is marked degenerate and every cosine and ρ
here says so: they are not evidence of credit quality then.
"""
from __future__ import annotations

import math

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from engine.fmt import nonfinite
from engine.fmt import num as fmt
from engine.fmt import pct as fmt_pct
from engine.records import Epoch, at_layer
from engine.verdicts import DIAGNOSTICS, WALK_BACK

from .state import AuditState, RunView

BLOCKS = " ▏▎▍▌▋▊▉█"


def pct(v: float | None) -> str:
    """An accuracy as the tables give it (``engine.fmt.pct``), with its unit."""
    return "n/m" if v is None else fmt_pct(v) + ("%" if math.isfinite(v) else "")


def num(v: float | None, signed: bool = False) -> Text:
    """A value as text; non-finite values stand out instead of hiding."""
    if v is None:
        return Text("n/m", style="dim")  # not measured at this epoch (a cadence)
    if not math.isfinite(v):
        return Text(nonfinite(v), style="bold red")
    if signed:
        return Text(f"{v:+.3f}")
    return Text(fmt(v), style="bold red" if v == 0 else "")


def log_bar(v: float, lo: float, hi: float, width: int = 6) -> Text:
    """A bar whose length is log10(v) within [lo, hi] (the run's range at this epoch)."""
    if v is None or not math.isfinite(v) or v <= 0:
        return Text("✕".ljust(width), style="bold red")
    frac = 1.0 if hi <= lo else (math.log10(v) - lo) / (hi - lo)
    cells = max(0.0, min(1.0, frac)) * width
    full = int(cells)
    bar = "█" * full + (BLOCKS[int((cells - full) * 8)] if full < width else "")
    return Text(bar.ljust(width), style="cyan")


def cos_strip(cos: float | None, band: tuple[float, float] | None, width: int = 17) -> Text:
    """[-1, 1] as a strip: ░ the null band (mean ± std), │ zero, ┃ the training-B cosine."""
    cells = [" "] * width
    pos = (lambda c: max(0, min(width - 1, round((c + 1) / 2 * (width - 1)))))
    if band is not None and all(math.isfinite(b) for b in band):
        for i in range(pos(band[0]), pos(band[1]) + 1):
            cells[i] = "░"
    if cells[pos(0.0)] == " ":
        cells[pos(0.0)] = "│"
    has_cos = cos is not None and math.isfinite(cos)
    if has_cos:
        cells[pos(cos)] = "┃"
    text = Text("".join(cells), style="dim")
    if has_cos:
        text.stylize("bold yellow not dim", pos(cos), pos(cos) + 1)
    return text


def scale_table(rec: Epoch) -> Table:
    t = Table(title="scale", title_justify="left", expand=False, padding=(0, 1))
    t.add_column("l", justify="right")
    for name in ("‖h_l‖", "‖g_l‖", "‖a_l‖"):
        t.add_column(name, no_wrap=True)
    ranges = {}
    for key in ("h_norm", "g_norm", "a_norm"):
        logs = [math.log10(v) for v in getattr(rec, key) if v is not None and math.isfinite(v) and v > 0]
        ranges[key] = (min(logs) - 0.5, max(logs)) if logs else (0.0, 1.0)
    for i in range(len(rec.h_norm)):
        cells = []
        for key in ("h_norm", "g_norm", "a_norm"):
            v = at_layer(getattr(rec, key), i)
            val = num(v)
            val.pad_right(max(0, 9 - len(val)))
            cells.append(Text.assemble(val, " ", log_bar(v, *ranges[key])))
        t.add_row(str(i), *cells)
    return t


def alignment_table(rec: Epoch) -> Table:
    degenerate = bool(rec.degenerate)
    t = Table(title="alignment" + ("  (DEGENERATE)" if degenerate else ""), title_justify="left",
              title_style="bold magenta" if degenerate else "", padding=(0, 1))
    t.add_column("l", justify="right")
    t.add_column("cos ± std", no_wrap=True)
    t.add_column("null band", no_wrap=True)
    t.add_column("-1 ··· 0 ··· +1", no_wrap=True)
    t.add_column("ρ", no_wrap=True)
    for i in range(len(rec.cos)):
        cos, std = at_layer(rec.cos, i), at_layer(rec.cos_std, i)
        nm, ns = at_layer(rec.null_mean, i), at_layer(rec.null_std, i)
        cos_cell = Text.assemble(num(cos, True), "±", num(std) if std is not None else "")
        excluded = at_layer(rec.cos_excluded, i)
        if excluded:
            cos_cell.append(f" ({excluded} excl.)", style="yellow")
        band = None if nm is None or ns is None else (nm - ns, nm + ns)
        band_cell = Text("—", style="dim") if band is None else Text.assemble(num(nm, True), "±", num(ns))
        rho_cell = num(at_layer(rec.rho, i), True)
        if degenerate:
            cos_cell.stylize("dim")
            rho_cell.stylize("dim")
            cos_cell.append(" DEGEN", style="bold magenta")
            rho_cell.append(" DEGEN", style="bold magenta")
        t.add_row(str(i), cos_cell, band_cell, cos_strip(cos, band), rho_cell)
    return t


def summary(view: RunView, rec: Epoch, state: AuditState) -> Text:
    th = state.cfg.thresholds
    total = view.log.total_epochs or state.cfg.epochs
    text = Text()
    text.append(f"{view.run_id}", style=f"bold color({view.color})")
    text.append(f"  epoch {rec.epoch}/{total}  (←/→ epoch, home/end first/last, [/] run)\n", style="")
    base = rec.baseline_acc
    text.append(f"acc {pct(rec.test_acc)}" + (f" vs frozen {pct(base)}" if base is not None else ""))
    text.append(f"  growth {fmt(rec.growth)} (a>{fmt(DIAGNOSTICS['a'].threshold(th))})")
    text.append(f"  ‖g_L‖ {fmt(rec.g_L)} (b<{fmt(DIAGNOSTICS['b'].threshold(th))})\n")
    text.append(f"stability {fmt(rec.stability)} {rec.stability_mode}  ")
    text.append(f"Γ {fmt(rec.gamma)}  deep cos {fmt(rec.deep_cos)}  deep ρ {fmt(rec.deep_rho)}  ")
    fired = rec.fired
    text.append("fired: " + (" ".join(f"({k})" for k in fired) if fired else "none"),
                style="bold red" if any(k in fired for k in WALK_BACK) else "green")
    return text


def degenerate_banner(rec: Epoch) -> Text:
    if not rec.degenerate:
        return Text("")
    return Text(f"DEGENERATE at this epoch: (b) fired, {DIAGNOSTICS['b'].meaning}. cos and ρ are shown "
                "for completeness only.", style="bold magenta")


class InspectorScreen(Screen):
    """Per-layer values of the selected run; follows the newest epoch until you step back."""

    # priority: the page's scroll container would take ←/→/home/end for itself
    BINDINGS = [Binding("left", "epoch(-1)", "Epoch", key_display="←→", priority=True,
                        tooltip="the epoch before"),
                Binding("right", "epoch(1)", "Later", show=False, priority=True, tooltip="the epoch after"),
                Binding("home", "epoch_to(0)", "First", show=False, priority=True, tooltip="the first epoch"),
                Binding("end", "epoch_to(-1)", "Last", show=False, priority=True,
                        tooltip="the latest epoch, and follow new ones"),
                Binding("left_square_bracket", "run(-1)", "Run", key_display="[]", tooltip="the run before"),
                Binding("right_square_bracket", "run(1)", "Next run", show=False, tooltip="the run after"),
                Binding("escape,i", "app.pop_screen", "Back", tooltip="back to the charts")]
    # the two tables side by side need about 150 columns; below that they stack
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (150, "-wide")]

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id
        self.index: int | None = None  # None: follow the newest epoch

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="inspector"):
            yield Static(id="summary")
            yield Static(id="banner")
            with Horizontal(id="layer-tables"):
                yield Static(id="scale")
                yield Static(id="alignment")
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        self.refresh_data()

    @property
    def state(self) -> AuditState:
        return self.app.state  # type: ignore[attr-defined]

    def refresh_data(self) -> None:
        view = self.state.runs.get(self.run_id)
        epochs = view.log.epochs if view else []
        if not epochs:
            self.query_one("#summary", Static).update(Text(f"{self.run_id}: no epoch recorded yet"))
            for wid in ("#banner", "#scale", "#alignment"):
                self.query_one(wid, Static).update("")
            return
        i = len(epochs) - 1 if self.index is None else max(0, min(self.index, len(epochs) - 1))
        rec = epochs[i]
        self.query_one("#summary", Static).update(summary(view, rec, self.state))
        banner = self.query_one("#banner", Static)
        banner.update(degenerate_banner(rec))
        banner.display = bool(rec.degenerate)
        self.query_one("#scale", Static).update(scale_table(rec))
        self.query_one("#alignment", Static).update(alignment_table(rec))

    def _epochs(self) -> int:
        view = self.state.runs.get(self.run_id)
        return len(view.log.epochs) if view else 0

    def _index_of(self, epoch: int) -> int | None:
        """This run's list index of ``epoch``, or of the latest epoch before it; None (follow
        the newest) when that is this run's newest."""
        view = self.state.runs.get(self.run_id)
        epochs = [r.epoch for r in view.log.epochs] if view else []
        before = [i for i, e in enumerate(epochs) if e <= epoch]
        i = before[-1] if before else 0
        return None if not epochs or i == len(epochs) - 1 else i

    def action_epoch(self, step: int) -> None:
        n = self._epochs()
        if n:
            current = n - 1 if self.index is None else self.index
            new = max(0, min(n - 1, current + step))
            self.index = None if new == n - 1 else new
            self.refresh_data()

    def action_epoch_to(self, where: int) -> None:
        self.index = None if where < 0 else 0
        self.refresh_data()

    def action_run(self, step: int) -> None:
        ids = [v.run_id for v in self.state.ordered()]
        if self.run_id in ids:
            view = self.state.runs.get(self.run_id)
            # stepped back to an epoch: the next run opens at the same epoch (or its nearest), to compare them
            shown = (view.log.epochs[min(self.index, len(view.log.epochs) - 1)].epoch
                     if self.index is not None and view and view.log.epochs else None)
            self.run_id = ids[(ids.index(self.run_id) + step) % len(ids)]
            self.index = None if shown is None else self._index_of(shown)
            self.app.select_run(self.run_id)  # type: ignore[attr-defined]
            self.refresh_data()
