"""The console: one app for a live audit (training in threads) and for ``watch`` (files).

Both feeds change ``AuditState``; a timer redraws what changed a few times a second,
so a burst of training events costs one redraw, not one per event.
"""
from __future__ import annotations

import asyncio
import subprocess
import time
from functools import partial
from pathlib import Path

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header
from textual.worker import Worker

from engine.audit import Audit
from engine.config import AuditConfig
from engine.control import request_run, request_stop
from engine.errors import FaevalError
from engine.eta import time_left
from engine.hooks import AlertHook
from engine.markdown import render_markdown
from engine.plan import RunSpec, run_id
from engine.runstore import atomic_write_bytes

from .charts import ChartGrid, Legend
from .dialogs import (
    AlertsScreen,
    DetachedQuitDialog,
    ErrorScreen,
    HelpScreen,
    QuitDialog,
    RerunDialog,
    RerunRequest,
    ResumeDialog,
    legend_rows,
)
from .feeds import FileFeed, LiveFeed, resumable_audits
from .inspector import InspectorScreen
from .live import LiveMixin
from .runlist import AlertLog, RunTable
from .state import ENDED, AuditState

REPORT = "report.md"
STOP_WAIT_S = 120.0  # how long quitting with "stop" waits for the trainer to stop


class FaevalApp(LiveMixin, App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "faeval-tui"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (34, "-tall")]
    # tooltip: what the help screen says of a key (the footer has room for a word only)
    BINDINGS = [
        Binding("i", "inspect", "Inspect", tooltip="layer inspector: every per-layer value of the selected run"),
        Binding("p", "rerun", "Rerun λ", tooltip="penalty reruns of the selected run (λ·Σ‖f_l‖²); "
                "in watch, only while a process trains the audit (it picks them up)"),
        Binding("v", "verdicts", "Verdicts", tooltip="the audit's tables, as the markdown export has them"),
        Binding("e", "export", "Export", tooltip="write report.md into the audit directory and copy it"),
        Binding("c", "next_chart", "Chart", tooltip="next chart, when one is shown at a time"),
        Binding("g", "toggle_grid", "Grid", tooltip="the four charts as a 2×2 grid or one at a time"),
        Binding("h", "toggle_growth", "Growth", show=False,
                tooltip="first chart: ‖h_L‖ or growth max ‖h_l‖/‖h_l−1‖, the value (a) fires on"),
        Binding("a", "alerts", "Alerts", show=False,
                tooltip="every walk-back alert in full (the log cuts what each means to a line); or click the log"),
        Binding("question_mark", "help", "Help", tooltip="this screen"),
        Binding("s", "stop_training", "Stop", show=False,
                tooltip="stop the process training this audit (each run keeps its checkpoint; resume continues)"),
        Binding("q", "quit", "Quit", tooltip="quit; while runs train it asks whether to stop them or, when they "
                "train in a process of their own, to leave them training"),
        Binding("ctrl+q", "quit", "Quit", show=False),
    ]
    NAVIGATION = [("up,down", "", "select a run: it is highlighted in every chart"),
                  ("tab", "", "move focus between the run list and the alert log"),
                  ("ctrl+p", "", "command palette")]

    def __init__(self, *, cfg: AuditConfig | None = None, runs_dir: Path | None = None,
                 watch: Audit | None = None, bell: bool = True, refresh_s: float = 0.25,
                 poll_s: float = 0.5, on_alert: list[str] | None = None, detach: bool = False) -> None:
        super().__init__()
        if (cfg is None) == (watch is None):
            raise ValueError("give cfg (train) or watch (follow files)")
        self.cfg = cfg if cfg is not None else watch.cfg
        self.runs_dir = Path(runs_dir or "runs")
        self.watching = watch
        self.bell_on = bell
        self.on_alert = on_alert  # --on-alert's argument list: run on every alert while this console trains
        self.alert_hook: AlertHook | None = None
        # detach: training runs in a process of its own (trainer_process) that outlives the console
        self.detach = detach
        self.trainer: subprocess.Popen | None = None  # that process, when this console started it
        self.left_training = False  # quit with "leave it training"
        self.refresh_s, self.poll_s = refresh_s, poll_s
        self.audit: Audit | None = watch
        self.state = AuditState(watch.path if watch else self.runs_dir, self.cfg, read_only=watch is not None)
        self.live_feed: LiveFeed | None = None
        self.file_feed: FileFeed | None = None
        self.training: Worker | None = None
        self.selected: str | None = None
        # the subtitle's first word: loading the <dataset> data, live, resumed, watch (read-only), not training
        self.mode = "starting"
        self._quitting = False  # set by shutdown: data loaded after it creates no audit
        self.checker: subprocess.Popen | None = None  # the data check's process (live.py), while it runs
        self.failure: FaevalError | None = None  # why training could not start, if it could not
        self._seen = (-1, -1, None)  # state version, epoch version, selection last drawn
        self._alerts_shown = 0

    # ---- layout ------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header(icon="◆")
        yield RunTable(id="runs")
        yield Legend(id="legend")
        yield ChartGrid(id="charts")
        log = AlertLog(id="alerts", wrap=True, markup=False)
        log.border_title = "walk-back alerts"
        yield log
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        self.query_one(RunTable).focus()
        if self.watching is not None:
            self.mode = "watch"
            self.file_feed = FileFeed(self.watching, self.state)
            self.file_feed.poll()  # the history: into the alert log, no toasts
            self.set_interval(self.poll_s, self._poll_files)
        else:
            candidates = resumable_audits(self.runs_dir, self.cfg)
            if candidates:
                self.push_screen(ResumeDialog(candidates), callback=self._begin_live)
            else:
                self._begin_live(None)
        self.set_interval(self.refresh_s, self.flush)
        self.flush()

    # ---- redraw ------------------------------------------------------------------
    def flush(self) -> None:
        """Redraw what changed since the last call (called on a timer)."""
        if not self.is_running:
            # the timer can tick while shutdown is pruning the screens: nothing left to draw
            return
        st = self.state
        seen_version, seen_epochs, seen_sel = self._seen
        if st.version != seen_version:
            table = self.query_one(RunTable)
            table.sync(st)
            if self.selected is None or self.selected not in st.runs:
                self.selected = table.selected
            log = self.query_one(AlertLog)
            for alert in st.alerts[self._alerts_shown:]:
                log.add(alert)
            self._alerts_shown = len(st.alerts)
            log.border_title = f"walk-back alerts ({len(st.alerts)}) · a: in full"
        if st.version != seen_version or self.selected != seen_sel:
            self.query_one(Legend).update_from(st, self.selected)
        if st.epoch_version != seen_epochs or self.selected != seen_sel:
            self.query_one(ChartGrid).update_from(st, self.selected, self.no_color)
            refresh = getattr(self.screen, "refresh_data", None)
            if refresh is not None and self.screen is not self.screen_stack[0]:
                refresh()
        if st.version != seen_version:
            self.sub_title = self._subtitle()
        self._seen = (st.version, st.epoch_version, self.selected)

    def format_title(self, title: str, sub_title: str):
        """Below 100 columns the header is the subtitle alone: the audit's name must not be cut."""
        if sub_title and self.size.width < 100:
            return super().format_title(sub_title, "")
        return super().format_title(title, sub_title)

    def _subtitle(self) -> str:
        """What training is doing (live, finished, stopped), the audit, and while runs train,
        when the last verdict should be in."""
        st = self.state
        text = self.mode
        if self.mode in ("live", "resumed", "attached", "watch") and st.runs:
            text = ("watch · " if self.mode == "watch" else "") + st.outcome()
        if st.live:
            runs = [(v.spec.method, v.log, v.status(True)) for v in st.ordered()]
            left = time_left(runs, st.cfg.workers, st.cfg.epochs)
            if left:
                text += f" · {left}"  # before the name: 80 columns cut the end
        if self.audit is not None and self.audit.tracked:  # the config's model keys are not the user's network
            return f"{text} · {st.path.name} · your own loop (tracked)"
        nets = st.cfg.variants()
        model = nets[0].model if len(nets) == 1 else f"{len(nets)} models"
        return f"{text} · {st.path.name} · {model} on {st.cfg.dataset}"

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is not None:
            self.selected = event.row_key.value

    def select_run(self, rid: str) -> None:
        table = self.query_one(RunTable)
        keys = [r.key.value for r in table.ordered_rows]
        if rid in keys:
            table.move_cursor(row=keys.index(rid))
        self.selected = rid

    # ---- actions -----------------------------------------------------------------
    MAIN_ONLY = ("inspect", "rerun", "verdicts", "next_chart", "toggle_grid")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Main-screen keys are hidden while another screen is up (the inspector has its own)."""
        if action in self.MAIN_ONLY and len(self.screen_stack) > 1:
            return False
        return True

    def action_inspect(self) -> None:
        if self.selected is None:
            self.notify("no run selected", severity="warning")
            return
        self.push_screen(InspectorScreen(self.selected))

    def action_alerts(self) -> None:
        self.push_screen(AlertsScreen(list(self.state.alerts)))

    def action_toggle_growth(self) -> None:
        self.notify(f"first chart: {self.query_one(ChartGrid).toggle_growth()}", timeout=2)
        self._seen = (self._seen[0], -1, self._seen[2])  # redraw the charts now
        self.flush()

    def action_next_chart(self) -> None:
        self.notify(f"chart: {self.query_one(ChartGrid).cycle()}", timeout=2)

    def action_toggle_grid(self) -> None:
        grid = self.query_one(ChartGrid)
        grid.toggle_class("-single")
        if self.screen.has_class("-narrow") or self.screen.has_class("-short"):
            self.notify("too small for the 2×2 grid: one chart at a time (c cycles)", timeout=3)

    def action_help(self) -> None:
        from .verdict_view import VerdictScreen

        self.push_screen(HelpScreen([("console", self.NAVIGATION + self.BINDINGS),
                                     ("layer inspector (i)", InspectorScreen.BINDINGS),
                                     ("penalty reruns (p)", RerunDialog.BINDINGS),
                                     ("verdicts (v)", VerdictScreen.BINDINGS)],
                                    legend_rows(self.cfg.thresholds)))

    def action_verdicts(self) -> None:
        from .verdict_view import VerdictScreen

        if self.audit is None:
            self.notify("no audit yet", severity="warning")
            return
        self.push_screen(VerdictScreen())

    def action_export(self) -> None:
        if self.audit is None:
            self.notify("no audit yet", severity="warning")
            return
        try:
            text = render_markdown(self.audit)
            path = self.audit.path / REPORT
            atomic_write_bytes(path, text.encode())
        except FaevalError as err:
            self.push_screen(ErrorScreen("Export failed", err))
            return
        self.copy_to_clipboard(text)
        self.notify(f"wrote {path} and copied it to the clipboard", title="export", timeout=8)

    def steerable(self) -> bool:
        """Requests through the audit directory reach a trainer: this console's own (it starts
        one again for a rerun), or another process's that is training now (attach, watch)."""
        if self.audit is None or self.file_feed is None:
            return False
        return (self.watching is None and self.failure is None) or self.trainer_live()

    def action_rerun(self) -> None:
        view = self.state.runs.get(self.selected or "")
        if self.live_feed is None and not self.steerable():
            why = ("nothing trains this audit now, and watch does not start training: open the console with its "
                   f"preset (it offers to resume it), or `faeval-tui resume {self.state.path}`"
                   if self.watching is not None else "nothing trains here now (training could not start)")
            self.notify(why, severity="warning", timeout=8)
            return
        if view is None:
            self.notify("no run selected", severity="warning")
            return
        if view.spec.method == "frozen":
            self.notify("frozen runs train no blocks: a block penalty would change nothing", severity="warning")
            return
        base = self.state.runs.get(view.spec.parent or "", view) if view.spec.penalty else view
        self.push_screen(RerunDialog(base.run_id, base.spec.method, base.spec.seed, list(self.cfg.seeds)),
                         callback=partial(self.start_reruns, base.spec.method, base.spec.model))

    def start_reruns(self, method: str, model: str | None, request: RerunRequest | None) -> list[str]:
        if request is None:
            return []
        started, skipped = [], []
        for lam in request.penalties:
            for seed in request.seeds:
                rid = run_id(method, seed, lam, model)
                if rid in self.state.runs:
                    skipped.append(rid)
                    continue
                parent = run_id(method, seed, model=model)
                spec = RunSpec(rid, method, seed, lam, parent if parent in self.state.runs else None, model)
                self.state.add_spec(spec, queued=True)
                if self.live_feed is not None:
                    self.live_feed.submit(spec)
                else:
                    request_run(self.audit.path, spec)  # the trainer takes it within half a second
                started.append(rid)
        if started and self.live_feed is None and self.watching is None and not self.trainer_live():
            self._spawn_trainer()  # every run had ended: a new trainer takes the requests
        msg = f"queued {len(started)} rerun(s): {', '.join(started)}" if started else "no new reruns"
        if skipped:
            msg += f"; already in the audit: {', '.join(skipped)}"
        self.notify(msg, title="penalty reruns", timeout=6)
        self.flush()
        return started

    def action_stop_training(self) -> None:
        if self.live_feed is not None:
            self.live_feed.stop()
        elif self.audit is not None and self.trainer_live():
            request_stop(self.audit.path)
        else:
            self.notify("nothing trains this audit now", severity="warning")
            return
        self.notify("stopping every run at its next batch (each keeps its checkpoint)", timeout=6)

    def on_unmount(self) -> None:
        # however the app ends (quit, ctrl+c, a test leaving run_test), in-process training stops
        # with it; a trainer of its own goes on (a dropped connection must not stop it)
        if self.live_feed is not None:
            self.live_feed.stop()
        if self.alert_hook is not None:
            self.alert_hook.close()  # each call ends within the hook's timeout

    async def action_quit(self) -> None:
        if self.live_feed is None and self.watching is None and self.audit is not None and self.trainer_live():
            self.push_screen(DetachedQuitDialog(self._active_counts), callback=self._detached_answer)
            return
        if self.live_feed is not None and self.state.live and self.state.active():
            self.push_screen(QuitDialog(self._active_counts), callback=self._quit_answer)
        else:
            await self.shutdown()

    def _active_counts(self) -> tuple[int, int]:
        """(training, queued) among the runs not yet ended, counted now."""
        active = self.state.active()
        queued = sum(v.status(True) == "queued" for v in active)
        return len(active) - queued, queued

    async def _detached_answer(self, answer: str | None) -> None:
        if answer == "leave":
            self.left_training = True
            self.exit()
        elif answer == "stop":
            request_stop(self.audit.path)
            self.notify("stopping runs at their next batch…", timeout=30)
            deadline = time.monotonic() + STOP_WAIT_S
            while self.trainer_live() and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            self.exit()

    async def _quit_answer(self, yes: bool | None) -> None:
        if yes:
            await self.shutdown()

    async def shutdown(self) -> None:
        """Stop training (each run keeps its last checkpoint), wait for the threads, exit."""
        self._quitting = True
        if self.checker is not None and self.checker.poll() is None:
            self.checker.kill()  # quit while the data is checked: no audit will be created
        if self.live_feed is not None:
            self.live_feed.stop()
            if self.training is not None and not self.training.is_finished:
                self.notify("stopping runs at their next batch…", timeout=30)
                try:
                    await self.training.wait()
                except Exception:
                    pass  # its error was shown already; the checkpoints are what matters now
        self.exit()


def resume_hint(state: AuditState, path: Path) -> str | None:
    """What to run to finish the audit, when runs are left unfinished (None when none are)."""
    return unfinished_line(sum(v.status(False) not in ENDED for v in state.runs.values()), path)


def unfinished_line(n: int, path: Path) -> str | None:
    return f"{n} run(s) unfinished; continue with: faeval-tui resume {path}" if n else None


def launch(cfg: AuditConfig, runs_dir: Path | str, bell: bool = True, on_alert: list[str] | None = None,
           detach: bool = True) -> int:
    """Open the console on a new (or resumed) audit of ``cfg``, trained in a process of its own
    (``detach``) or in this one; ``on_alert`` is run on every walk-back alert of its training
    (``engine.hooks``)."""
    app = FaevalApp(cfg=cfg, runs_dir=Path(runs_dir), bell=bell, on_alert=on_alert, detach=detach)
    app.run()
    if app.audit is not None:
        print(f"audit directory: {app.audit.path}")
        if app.left_training and app.trainer_live():
            pid = f" (process {app.trainer.pid})" if app.trainer is not None else ""
            print(f"training goes on{pid}; follow it: faeval-tui watch {app.audit.path} (or this console with "
                  f"the same preset); stop it: faeval-tui stop {app.audit.path}")
        else:
            hint = resume_hint(app.state, app.audit.path)
            if hint and app.failure is None:  # as `faeval-tui run` says when stopped
                print(hint)
    if app.failure is not None:
        raise app.failure  # the CLI prints it again below the closed console and exits 2
    return app.return_code or 0


def watch(audit_dir: Path | str, bell: bool = True) -> int:
    """Open the console read-only on an audit another process trains (or trained); returns
    the app's exit code (non-zero when it crashed: the command must not report success)."""
    audit = Audit.open(audit_dir)
    app = FaevalApp(watch=audit, bell=bell)
    app.run()
    if app.return_code in (None, 0):  # as the console says on quitting: where training stands
        if audit.is_live():
            print(f"{audit.path} is still training in another process; stop it: faeval-tui stop {audit.path}")
        elif hint := unfinished_line(sum(audit.log(s.run_id).unfinished for s in audit.planned()), audit.path):
            print(hint)  # read from the files: the watched state may not have polled them all
    return app.return_code or 0
