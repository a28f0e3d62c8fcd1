"""The verdict view: the audit's tables from ``engine.tables``, on the runs in memory.

The cells are the engine's text; this screen only lays them out (one DataTable per
table, its notes below) so the console and the markdown export never disagree.
"""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label, Static

from engine import tables

from .state import AuditState


def current_tables(state: AuditState) -> list[tables.Table]:
    runs = [tables.RunView.of(v.log, v.status(state.live), state.cfg.thresholds)
            for v in state.ordered() if v.log.header is not None]
    return tables.audit_tables(runs, state.cfg)


# headers that name a row: they stay on screen while a wide table scrolls sideways (←/→)
ROW_KEYS = ("method", "run", "λ", "layer", "diagnostic")


def key_columns(headers: list[str]) -> int:
    n = 0
    while n < len(headers) and headers[n] in ROW_KEYS:
        n += 1
    return n


def cell(text: str) -> Text:
    style = "bold red" if text.startswith("WALKED BACK") else ("green" if text.startswith("TRUSTWORTHY") else "")
    return Text(text, style=style)


class VerdictScreen(Screen):
    """Audit table, per-layer table, penalty sweep, strategies and threshold sensitivity."""

    BINDINGS = [("e", "app.export", "Export markdown"), ("escape,v", "app.pop_screen", "Back"),
                # priority: the page's scroll container would take ←/→ for itself and has nothing to scroll
                Binding("right", "sideways(1)", "Columns", key_display="←→", priority=True),
                Binding("left", "sideways(-1)", "Columns back", show=False, priority=True)]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="verdicts"):
            for t in current_tables(self.app.state):  # type: ignore[attr-defined]
                yield Label(t.title, classes="table-title")
                yield DataTable(id=f"table-{t.key}", cursor_type="row", show_cursor=False, zebra_stripes=True)
                yield Static(id=f"notes-{t.key}", classes="notes")
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        self.refresh_data()

    def on_resize(self) -> None:
        for grid in self.query(DataTable):
            self._pad(grid)
            self._whole_columns(grid)

    def _room(self) -> int:
        return self.query_one("#verdicts", VerticalScroll).scrollable_content_region.width

    def _pad(self, grid: DataTable) -> None:
        """Widen the trailing blank column so every column can be scrolled to sit right after
        the fixed ones: without it the last steps stop short, leaving half a column beside them."""
        columns = grid.ordered_columns
        if len(columns) < 2 or columns[-1].key.value != "_pad":
            return
        widths = [c.get_render_width(grid) for c in columns[:-1]]
        fixed = sum(widths[:grid.fixed_columns])
        view = self._room()
        pad = max(0, view - fixed - widths[-1] - 2) if sum(widths) > view else 0
        if columns[-1].width != pad:
            grid.remove_column("_pad")
            grid.add_column("", key="_pad", width=pad, default="")

    def _whole_columns(self, grid: DataTable) -> None:
        """Make a table that does not fit exactly as wide as its fixed columns and the whole
        scrolled-to columns beside them: a column cut at the screen's edge would read as
        another value (0.53 cut to "0", "(d) 6, 3" to "(d) 6")."""
        widths = [c.get_render_width(grid) for c in grid.ordered_columns if c.key.value != "_pad"]
        room = self._room()
        if sum(widths) <= room:
            grid.styles.width = None
            return
        fixed = sum(widths[:grid.fixed_columns])
        shown, k, offset = fixed, grid.fixed_columns, 0
        while k < len(widths) and offset + widths[k] <= grid.scroll_x:  # the columns scrolled away
            offset += widths[k]
            k += 1
        gutter = grid.scrollbar_size_vertical if grid.show_vertical_scrollbar else 0
        first = k
        while k < len(widths) and shown + widths[k] + gutter <= room:
            shown += widths[k]
            k += 1
        # a column wider than the room beside the row names can only be shown cut
        grid.styles.width = shown + gutter if k > first else None

    def action_sideways(self, direction: int) -> None:
        """Scroll every table sideways by one column; each keeps its row-naming columns in
        place and shows whole columns beside them."""
        for grid in self.query(DataTable):
            self._pad(grid)
            widths = [c.get_render_width(grid) for c in grid.ordered_columns]
            fixed = sum(widths[:grid.fixed_columns])
            # scroll offsets that put a column's left edge right after the fixed ones
            last = len(widths) - (1 if grid.ordered_columns[-1].key.value == "_pad" else 0)
            stops = [sum(widths[:j]) - fixed for j in range(grid.fixed_columns, last)]
            x = grid.scroll_x
            if direction > 0:
                x = next((s for s in stops if s > x), x)
            else:
                x = max((s for s in stops if s < x), default=0)
            grid.scroll_to(x=min(x, grid.max_scroll_x), animate=False)
            self.call_after_refresh(self._whole_columns, grid)

    def refresh_data(self) -> None:
        for t in current_tables(self.app.state):  # type: ignore[attr-defined]
            grid = self.query_one(f"#table-{t.key}", DataTable)
            grid.clear(columns=True)
            grid.add_columns(*t.headers)
            grid.add_column("", key="_pad", width=0)  # sized by _pad once the screen is laid out
            grid.fixed_columns = key_columns(t.headers)
            for row in t.rows:
                grid.add_row(*(cell(c) for c in row), "")
            self.call_after_refresh(self._pad, grid)
            self.call_after_refresh(self._whole_columns, grid)
            if t.rows:
                notes = "\n".join(t.notes)
            elif t.key == "penalty":  # the engine's own word for it, and how to start some
                notes = " ".join(t.notes) + " Select a run on the main screen and press p to queue some."
            else:
                notes = "no run has an epoch record yet"
            self.query_one(f"#notes-{t.key}", Static).update(Text(notes))
