"""The run list and the alert log of the main screen."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable, RichLog

from engine.config import Thresholds
from engine.fmt import num, pct
from engine.verdicts import DIAGNOSTICS, Alert, live_label

from .state import AuditState, RunView

COLUMNS = (("", "mark"), ("method", "method"), ("seed", "seed"), ("λ", "lam"), ("status", "status"),
           ("epoch", "epoch"), ("verdict", "verdict"))
STATUS_STYLE = {"running": "bold", "finished": "", "queued": "dim", "not started": "dim", "stopped": "yellow",
                "failed": "red", "diverged": "red"}


# statuses of a run whose records may still grow: its badge follows the alert rule
OPEN = ("running", "stopped", "queued", "not started")


def badge(view: RunView, th: Thresholds, status: str = "finished") -> Text:
    """The live verdict badge: the engine's label for the records so far. While the run can
    still train, a walk-back diagnostic that has not yet fired on the alert rule's number of
    consecutive epochs reads ``firing (d) 1/4`` (no alert has been raised), not WALKED BACK."""
    v = view.verdict
    label = v.label
    if v.walked_back and status in OPEN and (waiting := live_label(view.log.epochs, th)):
        return Text(waiting, style="yellow")
    if v.walked_back:
        # "WALKED BACK (a)(b)(d)": the engine's label without "via" and "+", so the table fits 80 columns
        return Text("WALKED BACK " + "".join(f"({k})" for k in v.fired), style="bold red")
    if v.unmeasured:  # nothing fired, but (d) had no baseline to compare with
        return Text("UNVERIFIED (d)", style="yellow")
    if label == "TRUSTWORTHY":
        text = Text(label, style="green")
        if view.alerts:  # it was walked back at some epoch; the final verdict reads the last one
            text.append(f" (alert e{view.alerts[0].epoch})", style="yellow")
        return text
    return Text(label, style="dim")


def epoch_cell(view: RunView, epochs: int) -> str:
    total = view.log.total_epochs or epochs  # a run not started yet has no header: the audit's length
    cell = f"{view.last_epoch}/{total}"
    if view.progress and view.progress[2]:
        cell += f" {100 * view.progress[1] // view.progress[2]:>2}%"
    return cell


def row(state: AuditState, view: RunView) -> list[Text | str]:
    status = view.status(state.live)
    indent = "  " * state.depth(view) + ("↳ " if view.spec.parent else "")
    # in an audit of several networks the method cell names the network too, as the run id does
    method = f"{view.spec.model}.{view.spec.method}" if view.spec.model else view.spec.method
    return [Text(view.marker, style=f"bold color({view.color})"), indent + method, str(view.spec.seed),
            f"{view.spec.penalty:g}" if view.spec.penalty else "—", Text(status, style=STATUS_STYLE.get(status, "")),
            epoch_cell(view, state.cfg.epochs), badge(view, state.cfg.thresholds, status)]


class RunTable(DataTable):
    """One row per run; the cursor row is the selected run."""

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = False
        for label, key in COLUMNS:
            self.add_column(label, key=key)

    @property
    def selected(self) -> str | None:
        if not self.row_count:
            return None
        return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value

    def sync(self, state: AuditState) -> None:
        """Add new runs, update changed cells; the cursor stays on its run."""
        views = state.ordered()
        keys = [v.run_id for v in views]
        current = [r.key.value for r in self.ordered_rows]
        if keys != current:
            chosen = self.selected
            self.clear()
            for v in views:
                self.add_row(*row(state, v), key=v.run_id)
            if chosen in keys:
                self.move_cursor(row=keys.index(chosen))
            return
        for v in views:
            for (_, col), value in zip(COLUMNS, row(state, v)):
                if str(self.get_cell(v.run_id, col)) != str(value):
                    self.update_cell(v.run_id, col, value, update_width=True)


class AlertLog(RichLog):
    """Every walk-back alert, oldest first; it stays after the toast has gone.

    Each alert is its headline (epoch, run, diagnostic, value against threshold) on a line
    of its own, then what it means, indented: a log three lines tall still shows the latest
    headline. The lines are laid out again when the log is resized (RichLog keeps them at
    the width they were written at)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.shown: list[Alert] = []

    def add(self, alert: Alert) -> None:
        self.shown.append(alert)
        self._write(alert)

    def _write(self, alert: Alert) -> None:
        diag = DIAGNOSTICS[alert.diagnostic]
        side = ">" if diag.comparison == "above" else "<"
        head = Text()
        head.append(f"e{alert.epoch:<3} ", style="bold")
        head.append("WALK BACK ", style="bold red")
        head.append(f"{alert.run_id} ", style="bold")
        # compact, so it fits one line at 80 columns: the full headline is in the toast and the export
        if alert.diagnostic == "d":  # accuracy in % as in the tables; the threshold is the baseline (+ margin)
            head.append(f"(d) acc {pct(alert.value)}% {side} frozen {pct(alert.threshold)}%")
        else:
            head.append(f"({alert.diagnostic}) {diag.field} {num(alert.value)} {side} {num(alert.threshold)}")
        if alert.since is not None:
            head.append(f" (since e{alert.since})")
        self.write(head)
        # what it means on one line cut to the log's width (a wider line would add a scroll bar)
        width = max(20, self.scrollable_content_region.width - 1)
        meaning = f"     {diag.name}: {alert.meaning}."
        self.write(Text(meaning if len(meaning) <= width else meaning[:width - 1] + "…", style="dim"))

    def on_click(self) -> None:
        self.app.action_alerts()  # type: ignore[attr-defined]  # each alert in full

    def on_resize(self) -> None:
        if self.shown:
            self.clear()
            for alert in self.shown:
                self._write(alert)
