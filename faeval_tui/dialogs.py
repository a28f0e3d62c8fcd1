"""Modal dialogs: help, quit, resume, penalty reruns, errors."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, SelectionList, Static
from textual.widgets.option_list import Option

from engine.audit import Audit
from engine.config import STANDARD_PENALTIES, Thresholds
from engine.errors import FaevalError
from engine.verdicts import DIAGNOSTICS, WALK_BACK


def key_name(key: str) -> str:
    return {"question_mark": "?", "escape": "esc", "left_square_bracket": "[", "right_square_bracket": "]",
            "enter": "enter", "left": "←", "right": "→", "home": "home", "end": "end"}.get(key, key)


def binding_rows(bindings: list[BindingType]) -> list[tuple[str, str]]:
    rows = []
    for b in bindings:
        if isinstance(b, Binding):
            keys, desc = b.key, b.tooltip or b.description
        else:
            keys, desc = b[0], b[2] if len(b) > 2 else b[1]
        rows.append((" ".join(key_name(k.strip()) for k in keys.split(",")), desc))
    return rows


def legend_rows(th: Thresholds) -> list[tuple[str, list[tuple[str, str]]]]:
    """What the run list's badges and the diagnostics (a)–(d) mean, with this audit's
    thresholds and alert rule (``engine.verdicts``, the same text the alerts carry)."""
    persist = th.persist
    diags = []
    for key, diag in DIAGNOSTICS.items():
        side = ">" if diag.comparison == "above" else "<"
        limit = ("the frozen baseline's accuracy" + (f" + {100 * th.depth_margin:g} pp" if th.depth_margin else "")
                 if key == "d" else f"{getattr(th, diag.threshold_key):g}")
        rule = (f"; alerts after {getattr(persist, key)} epoch(s) in a row" if key in WALK_BACK
                else "; labels the verdict drift or noise, never walks back alone")
        diags.append((f"({key})", f"{diag.name}: {diag.field} {side} {limit}{rule}. When it fires, "
                                  f"{diag.meaning}."))
    badges = [
        ("TRUSTWORTHY", "no walk-back diagnostic fires at the run's latest epoch"),
        ("(alert eN)", "after TRUSTWORTHY: an alert was raised at epoch N, and the run recovered since"),
        ("WALKED BACK (x)", "(x) fires at the latest epoch: the headline accuracy and cosine of this run "
                            "must not be reported as evidence for the method"),
        ("firing (x) n/k", "while the run can still train: (x) fires at the latest epoch, n epochs in a row, "
                           "short of the k the alert rule needs; no alert yet. A run that ends so is WALKED BACK"),
        ("UNVERIFIED (d)", "nothing fires, but there is no frozen baseline to measure (d) against yet"),
        ("UNVERIFIED: records end…", "the run reached a later epoch than its readable records: no verdict "
                                     "from an older epoch"),
        ("NO DATA", "no epoch recorded yet (queued, or not started)"),
    ]
    return [("verdict badges", badges), ("diagnostics", diags)]


class HelpScreen(ModalScreen[None]):
    """Every key of the console, read from the bindings themselves so it cannot drift, and
    what the badges and the diagnostics mean."""

    BINDINGS = [("escape,question_mark,q", "dismiss", "Close")]

    def __init__(self, sections: list[tuple[str, list[BindingType]]],
                 legend: list[tuple[str, list[tuple[str, str]]]] | None = None) -> None:
        super().__init__()
        self.sections = sections
        self.legend = legend or []

    def compose(self) -> ComposeResult:
        def grid(title: str, rows: list[tuple[str, str]]) -> Table:
            # one grid per section: a long badge name must not widen the key column of the others
            table = Table.grid(padding=(0, 2))
            table.add_column(style="bold", no_wrap=True)
            table.add_column()
            table.add_row(Text(title, style="underline"), "")
            for name, desc in rows:
                table.add_row(name, desc)
            return table

        tables = [grid(title, binding_rows(bindings)) for title, bindings in self.sections]
        tables += [grid(title, rows) for title, rows in self.legend]
        with VerticalScroll(id="dialog"):
            yield Label("faeval-tui keys, badges and diagnostics  (esc closes)", classes="title")
            for i, table in enumerate(tables):
                yield Static(table, id="keys" if i == 0 else None)


class _CountingDialog:
    """A quit dialog's title counts the runs still training and queued, re-counted while it is
    open (a run that ends under the dialog is not still reported training)."""

    TAIL = ""

    def __init__(self, counts: Callable[[], tuple[int, int]]) -> None:
        super().__init__()  # type: ignore[call-arg]
        self.counts = counts

    def title_text(self) -> str:
        training, queued = self.counts()
        return f"{training} run(s) training, {queued} queued{self.TAIL}"

    def on_mount(self) -> None:
        self.set_interval(0.5, self._recount)  # type: ignore[attr-defined]

    def _recount(self) -> None:
        self.query_one("#quit-title", Label).update(self.title_text())  # type: ignore[attr-defined]


class AlertsScreen(ModalScreen[None]):
    """Every walk-back alert in full: the log under the charts cuts what each means to a
    line, so this is where it is read whole (key a, or a click on the log)."""

    BINDINGS = [("escape,a,q", "dismiss", "Close")]

    def __init__(self, alerts: list) -> None:
        super().__init__()
        self.alerts = alerts

    def compose(self) -> ComposeResult:
        body = Text()
        for alert in self.alerts:
            diag = DIAGNOSTICS[alert.diagnostic]
            body.append(f"epoch {alert.epoch}  {alert.run_id}\n", style="bold")
            body.append(f"{alert.headline}.\n")
            body.append(f"{diag.name}. Walk back: {alert.meaning}.\n\n", style="dim")
        if not self.alerts:
            body.append("No walk-back alert so far.")
        with VerticalScroll(id="dialog"):
            yield Label(f"walk-back alerts ({len(self.alerts)}), oldest first  (esc closes)", classes="title")
            yield Static(body, id="alerts-full")


class QuitDialog(_CountingDialog, ModalScreen[bool]):
    BINDINGS = [("y", "answer(True)", "Stop and quit"), ("n,escape", "answer(False)", "Cancel")]
    TAIL = ". Stop them and quit?"

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.title_text(), classes="title", id="quit-title")
            yield Static("Each stopped run keeps its last checkpoint; launching again with the same preset "
                         "and --runs-dir offers to resume them.")
            with Horizontal(classes="buttons"):
                yield Button("y  stop and quit", id="yes", variant="error")
                yield Button("n  cancel", id="no")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class DetachedQuitDialog(_CountingDialog, ModalScreen["str | None"]):
    """Quitting while the audit's own trainer process runs: stop it, or leave it training."""

    BINDINGS = [("s", "answer('stop')", "Stop training and quit"), ("l", "answer('leave')", "Leave it training"),
                ("escape,n", "answer(None)", "Cancel")]
    TAIL = ", in a process of their own."

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.title_text(), classes="title", id="quit-title")
            yield Static("s stops them (each keeps its last checkpoint) and quits; l quits and leaves them "
                         "training: open the console with the same preset, or faeval-tui watch DIR, to follow "
                         "and steer them again; esc cancels.")
            with Horizontal(classes="buttons"):
                yield Button("s  stop and quit", id="stop", variant="error")
                yield Button("l  leave it training", id="leave", variant="primary")
                yield Button("esc  cancel", id="cancel")

    def action_answer(self, answer: str | None) -> None:
        self.dismiss(answer)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None if event.button.id == "cancel" else event.button.id)


class ResumeDialog(ModalScreen["Audit | None"]):
    """Offers unfinished audits of the same preset; None starts a new audit."""

    BINDINGS = [("escape,n", "new", "New audit")]

    def __init__(self, candidates: list[tuple[Audit, list[str]]]) -> None:
        super().__init__()
        self.candidates = candidates

    def compose(self) -> ComposeResult:
        options = [Option(f"{'attach to' if a.is_live() else 'resume'} {a.path.name}: {len(runs)} unfinished"
                          f"{', training now' if a.is_live() else ''} ({', '.join(runs[:4])}"
                          f"{', …' if len(runs) > 4 else ''})", id=str(i))
                   for i, (a, runs) in enumerate(self.candidates)]
        options.append(Option("start a new audit", id="new"))
        with Vertical(id="dialog"):
            yield Label("Unfinished audits of this preset were found", classes="title")
            yield OptionList(*options, id="choices")
            yield Static("attach: follow and steer the process training it · resume: train it again\n"
                         "↑↓ choose · enter confirm · n/esc new audit", classes="hint")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        oid = event.option.id
        self.dismiss(None if oid == "new" else self.candidates[int(oid)][0])

    def action_new(self) -> None:
        self.dismiss(None)


@dataclass(frozen=True)
class RerunRequest:
    penalties: list[float]
    seeds: list[int]


def parse_penalties(text: str) -> list[float]:
    """Typed λ values, comma or space separated; each finite and > 0."""
    out = []
    for part in text.replace(",", " ").split():
        try:
            lam = float(part)
        except ValueError:
            raise ValueError(f"{part!r} is not a number") from None
        if not (math.isfinite(lam) and lam > 0):
            raise ValueError(f"λ = {part} must be finite and > 0")
        out.append(lam)
    return out


class MarkedSelectionList(SelectionList):
    """A SelectionList whose chosen entries also read "✓" in their text: Textual's box tells
    them apart by colour only, which a monochrome terminal, a colour-blind user or a
    screen capture loses."""

    def __init__(self, *choices: tuple[str, object, bool], **kwargs) -> None:
        self.labels = [label for label, _, _ in choices]
        super().__init__(*[(self._marked(label, on), value, on) for label, value, on in choices], **kwargs)

    @staticmethod
    def _marked(label: str, on: bool) -> str:
        return f"{'✓' if on else ' '} {label}"

    def on_selection_list_selected_changed(self, event: SelectionList.SelectedChanged) -> None:
        chosen = set(self.selected)
        for i, label in enumerate(self.labels):
            self.replace_option_prompt_at_index(i, self._marked(label, self.get_option_at_index(i).value in chosen))


class RerunDialog(ModalScreen[RerunRequest | None]):
    """Choose λ (the standard sweep or typed) and seeds for penalty reruns of a run."""

    BINDINGS = [("escape", "cancel", "Cancel"), ("ctrl+s", "submit", "Start reruns")]

    def __init__(self, run_id: str, method: str, seed: int, seeds: list[int]) -> None:
        super().__init__()
        self.run_id, self.method, self.seed, self.seeds = run_id, method, seed, seeds

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(f"Penalty reruns of {self.run_id}: {self.method} + λ·Σ‖f_l‖²", classes="title")
            yield MarkedSelectionList(*[(f"λ = {lam:g}", lam, lam == 1e-3) for lam in STANDARD_PENALTIES], id="lams")
            yield Input(placeholder="or type λ values, e.g. 3e-3 5e-2", id="typed")
            yield MarkedSelectionList(*[(f"seed {s}", s, s == self.seed) for s in self.seeds], id="seeds")
            yield Static("", id="problem")
            yield Static("space toggles · tab next · ctrl+s (or enter in the λ field) starts · esc cancels",
                         classes="hint")
            with Horizontal(classes="buttons"):
                yield Button("start", id="start", variant="primary")
                yield Button("cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#lams").border_title = "λ"
        self.query_one("#seeds").border_title = "seeds"

    def request(self) -> RerunRequest:
        lams = list(self.query_one("#lams", SelectionList).selected)
        lams += [x for x in parse_penalties(self.query_one("#typed", Input).value) if x not in lams]
        seeds = list(self.query_one("#seeds", SelectionList).selected)
        if not lams:
            raise ValueError("choose or type at least one λ")
        if not seeds:
            raise ValueError("choose at least one seed")
        return RerunRequest(sorted(lams), seeds)

    def action_submit(self) -> None:
        try:
            self.dismiss(self.request())
        except ValueError as err:
            self.query_one("#problem", Static).update(Text(str(err), style="bold red"))

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_input_submitted(self) -> None:
        self.action_submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.action_submit() if event.button.id == "start" else self.dismiss(None)


class ErrorScreen(ModalScreen[None]):
    """A problem the user can fix: what is wrong and what to do, not a traceback."""

    # app.quit, not exit: with runs still training it asks first, as q does on the console
    BINDINGS = [("q", "app.quit", "Quit"), ("escape", "dismiss", "Back to the console")]

    def __init__(self, title: str, err: FaevalError | str) -> None:
        super().__init__()
        self.title_text = title
        self.err = err

    def compose(self) -> ComposeResult:
        problem = self.err.problem if isinstance(self.err, FaevalError) else str(self.err)
        hint = self.err.hint if isinstance(self.err, FaevalError) else ""
        with Vertical(id="dialog", classes="error"):
            yield Label(self.title_text, classes="title")
            yield Static(Text(problem), id="problem")
            if hint:
                yield Static(Text("→ " + hint, style="bold"), id="hint")
            yield Static("q quits · esc returns to the console", classes="hint")
