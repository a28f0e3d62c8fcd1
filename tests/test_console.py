"""Pilot tests: each console flow against the real engine on a tiny preset.

Training runs in the app's threads exactly as for a user; the tests wait on the
state (polling, with a deadline only a hang reaches) and assert on what the screen
and the files hold.
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from textual.widgets import DataTable, Static

from engine.audit import Audit
from engine.config import load_config
from engine.fmt import num
from engine.plan import RunSpec
from engine.records import Start
from engine.runstore import RECORDS, AuditLock, append_line, read_run
from faeval_tui.app import REPORT, FaevalApp
from faeval_tui.dialogs import ErrorScreen, QuitDialog, RerunDialog, ResumeDialog
from faeval_tui.feeds import FileFeed
from faeval_tui.inspector import InspectorScreen
from faeval_tui.runlist import AlertLog, RunTable, row
from faeval_tui.state import AuditState
from faeval_tui.verdict_view import VerdictScreen
from tests.conftest import WAIT_S, tiny
from tests.test_console_fixtures import write_fixture_audit

SIZE = (100, 32)
TINY = tiny("methods=[dfa,frozen]")  # the console tests' audit: one local method and its baseline


async def until(pilot, cond, timeout: float = WAIT_S, step: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if not pilot.app.is_running:  # crashed or quit: nothing more will change
            raise AssertionError(f"the app exited (return code {pilot.app.return_code}) while waiting for {cond}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {cond}")
        await pilot.pause(step)
    pilot.app.flush()
    await pilot.pause()


def cell(app: FaevalApp, run_id: str, column: str) -> str:
    return str(app.query_one(RunTable).get_cell(run_id, column))


def last_epoch(app: FaevalApp, run_id: str) -> int:
    """The run's last recorded epoch; 0 while the console has not listed it yet."""
    view = app.state.runs.get(run_id)
    return 0 if view is None else view.last_epoch


def finished(app: FaevalApp) -> bool:
    return bool(app.state.runs) and not app.state.active()


@pytest.mark.asyncio
async def test_launch_trains_every_run_and_an_alert_walks_a_run_back(tmp_path: Path) -> None:
    cfg = load_config(None, TINY + ["thresholds.growth=1.0001"])
    got = tmp_path / "hook-stdin.jsonl"  # --on-alert: the console runs it on each alert, the alert on stdin
    hook = [sys.executable, "-c", f"import sys; open({str(got)!r}, 'a').write(sys.stdin.read())"]
    app = FaevalApp(cfg=cfg, runs_dir=tmp_path, bell=True, on_alert=hook)
    bells = []
    app.bell = lambda: bells.append(1)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: finished(app))
        assert {rid: v.status(app.state.live) for rid, v in app.state.runs.items()} == \
            {"frozen-s42": "finished", "dfa-s42": "finished"}
        # (a) fires at epoch 1 for every run: one alert each, from the engine's text
        first = {a.run_id: a for a in app.state.alerts if a.diagnostic == "a"}
        assert set(first) == {"frozen-s42", "dfa-s42"} and all(a.epoch == 1 for a in first.values())
        assert cell(app, "dfa-s42", "verdict").startswith("WALKED BACK (a)")
        assert cell(app, "dfa-s42", "epoch") == "2/2"
        log_text = "\n".join(str(line.text) for line in app.query_one(AlertLog).lines)
        # the headline first, on its own line; the meaning after it
        assert "e1   WALK BACK dfa-s42 (a) growth " in log_text and " > 1.00\n" in log_text
        assert "     scale stability: the hidden states are exploding" in log_text
        assert bells, "the bell rings on a walk-back alert"
        assert any("WALK BACK" in (n.title or "") for n in app._notifications)
        records = read_run(app.audit.path / "dfa-s42" / RECORDS)
        assert [r.epoch for r in records.epochs] == [1, 2] and records.end.status == "finished"
        assert app.is_running and app.return_code is None
        await pilot.press("q")  # nothing active: quits without asking
        deadline = time.monotonic() + WAIT_S
        while app.is_running:
            assert time.monotonic() < deadline, "q did not exit the app"
            await asyncio.sleep(0.05)
    assert app.return_code == 0 and not app.is_running
    calls = [json.loads(line) for line in got.read_text().splitlines()]  # the hook's calls ended at quit
    assert sorted((c["run_id"], c["diagnostic"], c["epoch"]) for c in calls) == sorted(
        (a.run_id, a.diagnostic, a.epoch) for a in app.state.alerts)
    assert (app.audit.path / "hooks.log").read_text().count("--- ") == 2 * len(calls)


@pytest.mark.asyncio
async def test_no_bell_keeps_quiet(tmp_path: Path) -> None:
    app = FaevalApp(cfg=load_config(None, TINY + ["thresholds.growth=1.0001", "methods=[frozen]"]),
                    runs_dir=tmp_path, bell=False)
    bells = []
    app.bell = lambda: bells.append(1)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: finished(app) and app.state.alerts)
        assert bells == []


@pytest.mark.asyncio
async def test_rerun_export_and_verdicts_on_a_trained_audit(tmp_path: Path) -> None:
    app = FaevalApp(cfg=load_config(None, TINY), runs_dir=tmp_path, bell=False)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: finished(app))
        app.select_run("dfa-s42")
        await pilot.press("p")
        await pilot.pause()
        assert isinstance(app.screen, RerunDialog)
        await pilot.click("#typed")
        await pilot.press(*"0.05")
        await pilot.press("ctrl+s")  # λ = 1e-3 (preselected) and the typed 0.05, seed 42
        await pilot.pause()
        assert set(app.state.runs) >= {"dfa-lam0.001-s42", "dfa-lam0.05-s42"}
        await until(pilot, lambda: finished(app))
        order = [v.run_id for v in app.state.ordered()]
        assert order.index("dfa-lam0.001-s42") == order.index("dfa-s42") + 1  # listed under its parent
        assert cell(app, "dfa-lam0.001-s42", "method") == "  ↳ dfa"
        header = read_run(app.audit.path / "dfa-lam0.05-s42" / RECORDS).header
        assert (header.parent, header.penalty) == ("dfa-s42", 0.05)
        # reruns join the charts
        chart = app.query_one("#chart-acc")
        assert "dfa-lam0.05-s42" in [s.label for s in chart.series]

        await pilot.press("v")
        await pilot.pause()
        assert isinstance(app.screen, VerdictScreen)
        sweep = app.screen.query_one("#table-penalty", DataTable)
        assert [str(sweep.get_row_at(i)[1]) for i in range(sweep.row_count)] == ["0", "0.001", "0.05"]
        await pilot.press("e")  # export from the verdict view
        await pilot.pause()
        report = app.audit.path / REPORT
        assert report.is_file() and "0.05" in report.read_text()
        assert app.clipboard == report.read_text()
        assert any(str(report) in str(n.message) for n in app._notifications)


@pytest.mark.asyncio
async def test_inspector_marks_degenerate_values_and_steps_epochs(tmp_path: Path) -> None:
    app = FaevalApp(watch=Audit.open(write_fixture_audit(tmp_path / "a")), bell=False, poll_s=3600)
    async with app.run_test(size=SIZE) as pilot:
        app.select_run("dfa-s42")
        await pilot.press("i")
        await pilot.pause()
        assert isinstance(app.screen, InspectorScreen)
        text = lambda wid: _plain(app.screen.query_one(wid, Static)).strip()  # noqa: E731
        assert "epoch 5/5" in text("#summary") and "DEGENERATE" in text("#banner")
        await pilot.press("home")  # the first epoch, not the top of the page (the scroll container's home)
        assert "epoch 1/5" in text("#summary") and not app.screen.query_one("#banner").display
        await pilot.press("end")
        assert "epoch 5/5" in text("#summary")
        await pilot.press("home")
        await pilot.press("right", "right", "right")
        assert "epoch 4/5" in text("#summary")
        assert "n/m" in _plain(app.screen.query_one("#alignment", Static))  # ρ not measured that epoch
        await pilot.press("right_square_bracket")  # next run: the penalty rerun
        assert app.screen.run_id == "dfa-lam0.01-s42" and app.selected == "dfa-lam0.01-s42"
        assert "epoch 3/5" in text("#summary")  # epoch 4 asked for; the rerun's latest is 3
        await pilot.press("home", "left_square_bracket")  # epoch 1 of the rerun, then back to its parent
        assert app.screen.run_id == "dfa-s42" and "epoch 1/5" in text("#summary")  # the same epoch, compared
        await pilot.press("end", "right_square_bracket")
        assert "epoch 3/5" in text("#summary")  # following the newest stays following


@pytest.mark.asyncio
async def test_a_and_a_click_on_the_log_show_every_alert_uncut(tmp_path: Path) -> None:
    from faeval_tui.dialogs import AlertsScreen
    from faeval_tui.runlist import AlertLog

    app = FaevalApp(watch=Audit.open(write_fixture_audit(tmp_path / "a")), bell=False, poll_s=3600)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: len(app.state.alerts) > 0)
        assert app.query_one(AlertLog).border_title.endswith("· a: in full")
        await pilot.press("a")
        await pilot.pause()
        assert isinstance(app.screen, AlertsScreen)
        full = _plain(app.screen.query_one("#alerts-full", Static))
        for alert in app.state.alerts:  # each headline and meaning whole, however narrow the log is
            assert alert.headline in " ".join(full.split()) and alert.meaning in " ".join(full.split())
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, AlertsScreen)
        await pilot.click(AlertLog)
        await pilot.pause()
        assert isinstance(app.screen, AlertsScreen)


def _plain(widget: Static) -> str:
    from rich.console import Console

    console = Console(width=200, record=True, file=open(os.devnull, "w"))
    console.print(widget.content)
    return console.export_text()


@pytest.mark.asyncio
async def test_unplottable_values_are_marked_not_dropped(tmp_path: Path) -> None:
    app = FaevalApp(watch=Audit.open(write_fixture_audit(tmp_path / "a")), bell=False, poll_s=3600)
    async with app.run_test(size=(160, 48)) as pilot:
        app.flush()
        await pilot.pause()
        g_chart, h_chart = app.query_one("#chart-g_L"), app.query_one("#chart-h_L")
        assert ("dfa-s42", 5, 0.0) in [(s.label, x, v) for s in g_chart.series for x, v in s.points]
        rendered = g_chart.plt.build()
        assert "dfa-s42 e5 = 0" in rendered and "▼" in rendered
        assert f"fa-s42 e3 = {num(math.nan)}" in h_chart.plt.build()  # spelled as every table spells it
        assert "(b) floor 1e-07" in rendered  # the declared threshold, drawn


@pytest.mark.asyncio
async def test_an_empty_penalty_sweep_says_there_are_no_reruns_and_how_to_queue_some(tmp_path: Path) -> None:
    import shutil

    path = write_fixture_audit(tmp_path / "a")
    shutil.rmtree(path / "dfa-lam0.01-s42")  # the fixture's one penalty rerun
    app = FaevalApp(watch=Audit.open(path), bell=False, poll_s=3600)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("v")
        await pilot.pause()
        notes = str(app.screen.query_one("#notes-penalty", Static).render())
        assert notes == "no penalty reruns in this audit. Select a run on the main screen and press p to queue some."
        assert str(app.screen.query_one("#notes-audit", Static).render()).startswith("mean ± std over seeds")


@pytest.mark.asyncio
async def test_the_badge_of_a_run_still_training_follows_the_alert_rule(tmp_path: Path) -> None:
    """A fire short of the alert rule (no alert raised yet) reads "firing (a) n/k" in the
    run list while the run can still train; a finished run shows the protocol's verdict."""
    from engine.config import Thresholds
    from faeval_tui.runlist import badge

    app = FaevalApp(watch=Audit.open(write_fixture_audit(tmp_path / "a")), bell=False, poll_s=3600)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        view = app.state.runs["dfa-s42"]  # (a) and (b) fire on its last epoch
        th = app.state.cfg.thresholds
        assert badge(view, th, "finished").plain == "WALKED BACK (a)(b)"
        assert badge(view, th, "running").plain == "WALKED BACK (a)(b)"  # (a) and (b) alert at once
        slow = Thresholds(persist={"a": 10, "b": 10, "d": 4})
        shown = badge(view, slow, "running")
        assert shown.plain.startswith("firing (a) ") and "/10 (b) " in shown.plain and shown.style == "yellow"
        assert badge(view, slow, "finished").plain == "WALKED BACK (a)(b)"


@pytest.mark.asyncio
async def test_a_chart_title_too_wide_for_the_chart_is_shortened_not_dropped(tmp_path: Path) -> None:
    """plotext draws no title when it is wider than the plot: the ‖g_L‖ chart at 80 columns
    with a long note lost its name and its threshold's name."""
    from faeval_tui.charts import fit_title

    parts = ["‖g_L‖ (log)", "── (b) floor 1e-07", "! dfa-s42 e5 = 0"]
    assert fit_title(parts, 80) == "‖g_L‖ (log)  ── (b) floor 1e-07  ! dfa-s42 e5 = 0"
    assert fit_title(parts, 40) == "‖g_L‖ (log)  ── (b) floor 1e-07 …"
    assert fit_title(parts, 8) == "‖g_L‖ (l"
    app = FaevalApp(watch=Audit.open(write_fixture_audit(tmp_path / "a")), bell=False, poll_s=3600)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("c")
        app.flush()
        await pilot.pause()
        chart = app.query_one("#chart-g_L")
        chart.note = "a note long enough to push the title past the chart's width: " + "x" * 40
        chart.refresh()
        await pilot.pause()
        first = re.sub(r"\x1b\[[0-9;]*m", "", chart.plt.build().splitlines()[0]).strip()
        assert first == "‖g_L‖ (log)  ── (b) floor 1e-07  ! dfa-s42 e5 = 0 …"


@pytest.mark.slow
@pytest.mark.asyncio
async def test_watch_follows_an_audit_another_process_trains(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    exe = Path(sys.executable).parent / "faeval-tui"
    sets = [a for s in TINY + ["thresholds.growth=1.0001"] for a in ("--set", s)]
    proc = subprocess.Popen([str(exe), "run", "--runs-dir", str(runs_dir), *sets], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + WAIT_S
        while not (runs_dir.is_dir() and any(runs_dir.glob("*/config.yaml"))):
            assert time.monotonic() < deadline and proc.poll() is None
            await asyncio.sleep(0.1)
        audit_dir = next(runs_dir.glob("*/config.yaml")).parent
        app = FaevalApp(watch=Audit.open(audit_dir), bell=False, poll_s=0.3)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.state.live or proc.poll() is not None)
            await until(pilot, lambda: proc.poll() is not None and not app.state.live
                        and all(v.log.end for v in app.state.runs.values()))
            app.flush()
            assert set(app.state.runs) == {"frozen-s42", "dfa-s42"}
            for rid, view in app.state.runs.items():
                on_disk = read_run(audit_dir / rid / RECORDS)
                assert [e.epoch for e in view.log.epochs] == [e.epoch for e in on_disk.epochs] == [1, 2]
                assert cell(app, rid, "status") == "finished"
            assert cell(app, "dfa-s42", "verdict").startswith("WALKED BACK")
            assert {(a.run_id, a.diagnostic) for a in app.state.alerts} >= {("dfa-s42", "a"), ("frozen-s42", "a")}
            await pilot.press("p")  # read-only: no rerun dialog
            await pilot.pause()
            assert not isinstance(app.screen, RerunDialog)
    finally:
        proc.kill() if proc.poll() is None else None
        proc.wait()
    assert proc.returncode == 0


@pytest.mark.asyncio
async def test_the_quit_dialogs_count_the_runs_again_while_they_are_open() -> None:
    from textual.app import App
    from textual.widgets import Label

    from faeval_tui.dialogs import DetachedQuitDialog

    counts = [(2, 1)]
    for dialog, tail in ((QuitDialog, ". Stop them and quit?"), (DetachedQuitDialog, ", in a process of their own.")):
        counts[0] = (2, 1)
        app = App()
        async with app.run_test(size=(80, 24)) as pilot:
            app.push_screen(dialog(lambda: counts[0]))
            await pilot.pause()
            title = app.screen.query_one("#quit-title", Label)
            assert str(title.render()) == "2 run(s) training, 1 queued" + tail
            counts[0] = (1, 0)  # one run ended and the queued one started while the dialog was open
            for _ in range(50):  # re-counted every 0.5 s
                if str(title.render()) == "1 run(s) training, 0 queued" + tail:
                    break
                await pilot.pause(0.1)
            assert str(title.render()) == "1 run(s) training, 0 queued" + tail


@pytest.mark.asyncio
async def test_the_rerun_dialogs_chosen_lambdas_and_seeds_read_as_chosen_without_colour() -> None:
    from textual.app import App
    from textual.widgets import SelectionList

    def texts(widget: SelectionList) -> list[str]:
        return [str(widget.get_option_at_index(i).prompt) for i in range(widget.option_count)]

    app = App()
    async with app.run_test(size=(80, 24)) as pilot:
        app.push_screen(RerunDialog("dfa-s42", "dfa", 42, [42, 123]))
        await pilot.pause()
        lams, seeds = app.screen.query_one("#lams", SelectionList), app.screen.query_one("#seeds", SelectionList)
        assert texts(lams)[:3] == ["  λ = 0.0001", "✓ λ = 0.001", "  λ = 0.01"]
        assert texts(seeds) == ["✓ seed 42", "  seed 123"]
        lams.focus()
        lams.highlighted = 0
        await pilot.press("space")  # choose λ = 1e-4
        await pilot.pause()
        assert texts(lams)[:2] == ["✓ λ = 0.0001", "✓ λ = 0.001"]
        assert sorted(lams.selected) == [1e-4, 1e-3]
        lams.highlighted = 1
        await pilot.press("space")  # and drop 1e-3
        await pilot.pause()
        assert texts(lams)[:2] == ["✓ λ = 0.0001", "  λ = 0.001"] and lams.selected == [1e-4]


@pytest.mark.asyncio
async def test_quit_asks_stops_runs_and_a_later_launch_resumes_them(tmp_path: Path) -> None:
    cfg = load_config(None, TINY + ["epochs=1000", "synthetic.n_train=4096", "methods=[frozen]"])
    app = FaevalApp(cfg=cfg, runs_dir=tmp_path, bell=False)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: last_epoch(app, "frozen-s42") >= 1)
        await pilot.press("q")
        await pilot.pause()
        assert isinstance(app.screen, QuitDialog)
        await pilot.press("n")  # cancel: still training
        await pilot.pause()
        assert not isinstance(app.screen, QuitDialog) and app.state.live
        await pilot.press("q", "y")
        await until(pilot, lambda: app.training.is_finished)
    audit_dir = app.audit.path
    stopped = read_run(audit_dir / "frozen-s42" / RECORDS)
    assert stopped.end.status == "stopped" and (audit_dir / "frozen-s42" / "checkpoint.pt").is_file()
    kept = stopped.epochs[-1].epoch

    again = FaevalApp(cfg=cfg, runs_dir=tmp_path, bell=False)
    async with again.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert isinstance(again.screen, ResumeDialog)
        assert again.screen.candidates[0][0].path == audit_dir
        await pilot.press("enter")  # the first option: resume that audit
        await until(pilot, lambda: last_epoch(again, "frozen-s42") > kept)
        assert again.audit.path == audit_dir and len(list(tmp_path.iterdir())) == 1  # no new audit
        assert cell(again, "frozen-s42", "status") == "running"
        await pilot.press("q", "y")
        await until(pilot, lambda: again.training.is_finished)
    resumed = [json.loads(line) for line in (audit_dir / "frozen-s42" / RECORDS).read_text().splitlines()]
    starts = [r["epoch"] for r in resumed if r["type"] == "start"]
    assert starts == [0, kept]  # the first start, then the resume from the kept checkpoint


@pytest.mark.asyncio
async def test_missing_dataset_is_explained_not_a_traceback(tmp_path: Path) -> None:
    cfg = load_config(None, TINY + ["dataset=cifar10", f"data_dir={tmp_path / 'nodata'}", "download=false"])
    app = FaevalApp(cfg=cfg, runs_dir=tmp_path / "runs", bell=False)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ErrorScreen))
        shown = _plain(app.screen.query_one("#problem", Static)) + _plain(app.screen.query_one("#hint", Static))
        assert "CIFAR-10 not found" in shown and "cifar-10-python.tar.gz" in shown and "--data-dir" in shown
        await pilot.press("q")
        await pilot.pause()
    assert not app.state.live


@pytest.mark.asyncio
async def test_help_lists_every_key(tmp_path: Path) -> None:
    app = FaevalApp(watch=Audit.open(write_fixture_audit(tmp_path / "a")), bell=False, poll_s=3600)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        text = "\n".join(_plain(s) for s in app.screen.query(Static))
        for key, what in [("i", "layer inspector"), ("p", "penalty reruns"), ("v", "the audit's tables"),
                          ("e", "report.md"), ("q", "quit"), ("h", "growth"), ("←", "the epoch before"),
                          ("home", "the first epoch"), ("end", "the latest epoch"), ("[", "the run before"),
                          ("ctrl+s", "Start reruns"), ("→", "Columns")]:
            assert any(line.split()[:1] == [key] and what in line for line in text.splitlines()), (key, what)
        # what the badges and the diagnostics mean, with this audit's thresholds and alert rule
        th = app.cfg.thresholds
        for badge in ("TRUSTWORTHY", "WALKED BACK (x)", "UNVERIFIED (d)", "NO DATA", "(alert eN)"):
            assert any(line.split("  ")[0].strip() == badge for line in text.splitlines()), badge
        flat = " ".join(text.split())
        assert f"(a) scale stability: growth > {th.growth:g}; alerts after {th.persist.a} epoch(s) in a row" in flat
        assert f"(d) depth utility: test_acc < the frozen baseline's accuracy; alerts after {th.persist.d}" in flat
        assert "(c) cross-batch stability" in flat and "never walks back alone" in flat


@pytest.mark.asyncio
async def test_a_redraw_tick_during_shutdown_draws_nothing(tmp_path: Path) -> None:
    """The redraw timer can fire while shutdown prunes the screens (seen in CI as NoMatches: RunTable)."""
    ticks: list[int] = []

    class TickDuringShutdown(FaevalApp):
        CSS_PATH = Path(sys.modules[FaevalApp.__module__].__file__).with_name(FaevalApp.CSS_PATH)

        async def _close_all(self) -> None:
            await super()._close_all()  # every screen and widget is gone now
            self.state.version += 1  # something changed since the last redraw
            self.flush()
            ticks.append(self.state.version)

    app = TickDuringShutdown(watch=Audit.open(write_fixture_audit(tmp_path / "a")), bell=False, poll_s=3600)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert len(app.query_one(RunTable).rows) > 0
    assert app.return_code in (0, None) and len(ticks) == 1


def _watched(audit: Audit) -> AuditState:
    state = AuditState(audit.path, audit.cfg, read_only=True)
    FileFeed(audit, state).poll()
    return state


def test_watch_shows_a_queued_rerun_as_queued_until_its_start_line(tmp_path: Path) -> None:
    audit = Audit.open(write_fixture_audit(tmp_path / "a"))
    audit.add_run(RunSpec("fa-lam0.1-s42", "fa", 42, 0.1, "fa-s42"))  # what the console's rerun key does
    with AuditLock(audit.path):  # another process trains the audit
        state = _watched(audit)
        assert row(state, state.runs["fa-lam0.1-s42"])[4].plain == "queued"  # the status column
        assert row(state, state.runs["fa-lam0.1-s42"])[5] == "0/5"
        planned = state.add_spec(RunSpec("bp-s7", "bp", 7, 0.0, None), queued=True)  # no run directory yet
        assert row(state, planned)[4].plain == "queued" and row(state, planned)[5] == "0/5"
        append_line(audit.run_dir("fa-lam0.1-s42") / RECORDS, Start(epoch=0, time="2026-11-22T03:00:00+00:00"))
        state = _watched(audit)
        assert row(state, state.runs["fa-lam0.1-s42"])[4].plain == "running"
    state = _watched(audit)  # nobody trains it any more
    assert row(state, state.runs["fa-lam0.1-s42"])[4].plain == "stopped"


def test_watch_lists_a_finished_audits_alerts_in_the_order_they_fired(tmp_path: Path) -> None:
    path = write_fixture_audit(tmp_path / "a")
    runs_of = lambda alerts: [a.run_id for a in alerts if a.run_id in ("dfa-s42", "fa-s42")]  # noqa: E731
    before = runs_of(_watched(Audit.open(path)).alerts)
    assert before[0] == "dfa-s42" and "fa-s42" in before  # epoch lines without times: directory order
    # the fa run trained first, the dfa run an hour later, as their epoch lines' times say
    for rid, hour in (("fa-s42", 0), ("dfa-s42", 1)):
        f = path / rid / RECORDS
        lines = [json.loads(x) for x in f.read_text().splitlines()]
        for rec in lines:
            if rec["type"] == "epoch":
                rec["time"] = f"2026-01-01T0{hour}:0{rec['epoch']}:00+00:00"
        f.write_text("".join(json.dumps(rec) + "\n" for rec in lines))
    after = runs_of(_watched(Audit.open(path)).alerts)
    assert sorted(after) == sorted(before) and after == sorted(after, key=lambda rid: rid != "fa-s42")
    assert after[0] == "fa-s42"


def test_only_an_audit_of_the_same_settings_is_offered_for_resuming(tmp_path: Path) -> None:
    """The console offers an unfinished audit of its preset only when resuming it trains what
    was asked: another --set value (seeds) is another audit; where and how fast it trains
    (workers, threads, data_dir) is not."""
    from engine.config import settings_differ
    from faeval_tui.feeds import resumable_audits

    audit = Audit.open(write_fixture_audit(tmp_path / "a"))  # one run of it stopped at epoch 3 of 5
    cfg = audit.cfg
    assert [a.path for a, _ in resumable_audits(tmp_path, cfg)] == [audit.path]
    faster = cfg.model_copy(update={"workers": 2, "threads": 2, "data_dir": "/elsewhere"})
    assert settings_differ(cfg, faster) == []
    assert [a.path for a, _ in resumable_audits(tmp_path, faster)] == [audit.path]
    other = cfg.model_copy(update={"seeds": [7]})
    assert settings_differ(cfg, other) == ["seeds"]
    assert resumable_audits(tmp_path, other) == []
    judged = cfg.model_copy(update={"epochs": 9, "thresholds": cfg.thresholds.model_copy(update={"growth": 1e3})})
    assert settings_differ(cfg, judged) == ["epochs", "thresholds"]
    assert resumable_audits(tmp_path, judged) == []


@pytest.mark.asyncio
async def test_wide_verdict_tables_scroll_sideways_a_column_at_a_time_keeping_their_row_names(tmp_path: Path) -> None:
    app = FaevalApp(watch=Audit.open(write_fixture_audit(tmp_path / "a")), bell=False, poll_s=3600)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("v")
        await pilot.pause()
        grid = app.screen.query_one("#table-audit", DataTable)
        layers = app.screen.query_one("#table-layers", DataTable)
        assert (grid.fixed_columns, layers.fixed_columns) == (2, 3)  # method, λ (and layer) stay in view
        assert grid.max_scroll_x > 0  # 15 columns do not fit 80
        widths = [c.get_render_width(grid) for c in grid.ordered_columns]
        await pilot.press("right")
        await pilot.pause()
        assert grid.scroll_x == widths[2]  # "n" scrolled away whole: "status" now sits beside "λ"
        await pilot.press("right", "right")
        await pilot.pause()
        assert grid.scroll_x == sum(widths[2:5])
        await pilot.press("left")
        await pilot.pause()
        assert grid.scroll_x == sum(widths[2:4])
        await pilot.press("left", "left")
        await pilot.pause()
        assert grid.scroll_x == 0 and layers.scroll_x == 0
        # all the way right: every table still sits on a column's left edge, never half a column
        await pilot.press(*["right"] * 30)
        await pilot.pause()
        for table in app.screen.query(DataTable):
            cols = [c for c in table.ordered_columns if c.key.value != "_pad"]
            w = [c.get_render_width(table) for c in cols]
            stops = {sum(w[:j]) - sum(w[:table.fixed_columns]) for j in range(table.fixed_columns, len(w))}
            assert table.scroll_x in stops | {0}, (table.id, table.scroll_x, sorted(stops))
        columns = len(widths) - 1  # the trailing blank column is not a stop
        assert grid.scroll_x == max(s for s in [sum(widths[:j]) - sum(widths[:2]) for j in range(2, columns)]
                                    if s <= grid.max_scroll_x)


def _shown_columns(grid: DataTable) -> list[int]:
    """Widths of the columns whose cells the table's region shows, and asserts none is cut."""
    cols = [c.get_render_width(grid) for c in grid.ordered_columns if c.key.value != "_pad"]
    fixed = cols[:grid.fixed_columns]
    x, k = 0, grid.fixed_columns
    while k < len(cols) and x + cols[k] <= grid.scroll_x:
        x += cols[k]
        k += 1
    assert x == grid.scroll_x, "scrolled to a column's left edge"
    room = grid.scrollable_content_region.width
    shown = list(fixed)
    while k < len(cols) and sum(shown) + cols[k] <= room:
        shown.append(cols[k])
        k += 1
    if len(shown) == len(fixed):  # the next column is wider than the room beside the row names: shown cut
        assert grid.size.width == grid.parent.scrollable_content_region.width, grid.id
        return shown + [cols[k]]
    # the table ends where its last whole column ends: no column is cut at the edge
    assert sum(shown) == room, (grid.id, shown, room)
    return shown


@pytest.mark.asyncio
async def test_a_wide_verdict_table_never_shows_a_column_cut_at_the_edge(tmp_path: Path) -> None:
    """A cell cut at the screen's edge reads as another value (ρ 0.53 as "0"): a table that does
    not fit ends at its last whole column, wherever it is scrolled to."""
    app = FaevalApp(watch=Audit.open(write_fixture_audit(tmp_path / "a")), bell=False, poll_s=3600)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("v")
        await pilot.pause()
        grids = [g for g in app.screen.query(DataTable) if g.max_scroll_x > 0]
        assert {g.id for g in grids} >= {"table-audit", "table-layers"}
        for _ in range(8):
            for grid in grids:
                shown = _shown_columns(grid)
                assert len(shown) > grid.fixed_columns, grid.id  # at least one column beside the row names
            await pilot.press("right")
            await pilot.pause()
    app = FaevalApp(watch=Audit.open(tmp_path / "a"), bell=False, poll_s=3600)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("v")
        await pilot.pause()
        for grid in app.screen.query(DataTable):
            if grid.max_scroll_x > 0:
                _shown_columns(grid)


@pytest.mark.asyncio
async def test_the_subtitle_says_how_long_the_audit_has_left_while_it_trains(tmp_path: Path) -> None:
    path = write_fixture_audit(tmp_path / "a")
    # the unended rerun (3 of 5 epochs) took 100 s per epoch; dfa-s42's 5 epochs took 0.1 s each
    f = path / "dfa-lam0.01-s42" / RECORDS
    lines = [json.loads(x) for x in f.read_text().splitlines()]
    f.write_text("".join(json.dumps({**r, "train_s": 100.0} if r["type"] == "epoch" else r) + "\n" for r in lines))
    with AuditLock(path):  # another process trains it: the rerun is running
        app = FaevalApp(watch=Audit.open(path), bell=False, poll_s=3600)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            left = 2 * (5 * 0.1 + 3 * 100) / 8  # 2 epochs left at dfa's mean epoch: 75 s
            assert left == pytest.approx(75.125)
            assert app.sub_title == "watch · live · about 1 min left · a · resmlp on synthetic"
    app = FaevalApp(watch=Audit.open(path), bell=False, poll_s=3600)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        # nobody trains it: nothing is left to wait for, and the header says what is left to resume
        left = [v.run_id for v in app.state.runs.values() if v.status(False) not in ("finished", "diverged")]
        assert left == ["dfa-lam0.01-s42"]
        assert app.sub_title == f"watch · stopped: 1 of {len(app.state.runs)} runs unfinished · a · resmlp on synthetic"


@pytest.mark.asyncio
async def test_watching_an_audit_of_several_networks_names_each_runs_network(new_audit):
    from tests.conftest import train

    audit = new_audit("methods=[dfa,frozen]", "epochs=1", "synthetic.in_dim=16",
                      "models=[{name: res, model: resmlp}, {name: cnn, model: cnn, d: 8}]")
    assert set(train(audit).values()) == {"finished"}
    app = FaevalApp(watch=Audit.open(audit.path), bell=False, poll_s=3600)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        table = app.query_one(RunTable)
        assert [str(table.get_cell(rid, "method")) for rid in ("res.frozen-s42", "cnn.dfa-s42")] == [
            "res.frozen", "cnn.dfa"]
        assert app.sub_title.endswith("· 2 models on synthetic")


def test_the_reference_chart_says_when_the_diagnostic_set_is_a_whole_small_test_split(tmp_path: Path) -> None:
    from faeval_tui.charts import CHARTS, chart_data

    g_chart = next(c for c in CHARTS if c.key == "g_L")
    digits = AuditState(tmp_path, load_config(None, ["dataset=digits"]))
    assert digits.diagnostic_n == 360
    assert chart_data(g_chart, digits, None)[2] == "diagnostic n = 360, floor set for 1024"
    assert chart_data(g_chart, AuditState(tmp_path, load_config(None, TINY)), None)[2] == ""


def test_linear_ticks_are_round_even_and_give_a_threshold_its_own_label() -> None:
    from faeval_tui.charts import linear_ticks

    ticks, labels = linear_ticks(-0.09, 0.53, 12, pinned=(0.30,))
    assert 0.30 in ticks and labels[ticks.index(0.30)] == "0.3"
    round_ticks = [t for t in ticks if t != 0.30]
    steps = {round(b - a, 9) for a, b in zip(round_ticks, round_ticks[1:]) if 0.30 not in (a, b)}
    assert len(steps) == 1 and steps.pop() in (0.1, 0.2)  # evenly spaced by a round step
    row = (0.53 + 0.09) / 11
    assert all(abs(t - 0.30) >= 1.5 * row for t in round_ticks)  # no round label beside the threshold's
    assert len({len(lab.split(".")[1]) for lab in labels}) == 1  # one number of decimals
    ticks, labels = linear_ticks(0.55, 0.80, 8, percent=True)
    assert labels == [f"{round(100 * t)}%" for t in ticks] and all(0.55 <= t <= 0.80 for t in ticks)


def test_log_ticks_label_a_threshold_that_is_not_a_decade_with_its_value() -> None:
    from faeval_tui.charts import log_ticks

    ticks, labels = log_ticks(0, 2, 8, pinned=(math.log10(50),))
    assert labels == ["1e0", "1e1", "50", "1e2"] or labels == ["1e0", "50", "1e2"]
    assert "50" in labels and "1e2" in labels


def test_the_accuracy_axis_fits_the_runs_not_chance() -> None:
    from faeval_tui.charts import axis_range

    lo, hi = axis_range([0.62, 0.71, 0.68], fixed=[0.10], log=False, percent=True)
    assert 0.55 < lo < 0.62 and 0.71 < hi <= 0.78  # chance at 10% would squeeze the 9-point gap
    lo, hi = axis_range([0.12, 0.30], fixed=[0.10], log=False, percent=True)
    assert lo <= 0.10  # near the data: chance is on the axis
    assert axis_range([0.97, 0.999], fixed=[], log=False, percent=True)[1] == 1.0  # never past 100%
    lo, hi = axis_range([0.0, 0.1], fixed=[math.log10(50)], log=True, percent=False)
    assert (lo, hi) == (0, 2)  # a log chart always shows its threshold


@pytest.mark.asyncio
async def test_h_charts_growth_with_the_a_line_and_back(tmp_path: Path) -> None:
    from faeval_tui.charts import ChartGrid

    app = FaevalApp(watch=Audit.open(write_fixture_audit(tmp_path / "a")), bell=False, poll_s=3600)
    async with app.run_test(size=(160, 48)) as pilot:
        app.select_run("fa-s42")
        await pilot.pause()
        first = app.query_one(ChartGrid).charts[0]
        assert first.spec.key == "h_L" and "h charts it" in first.note
        await pilot.press("h")
        await pilot.pause()
        assert first.spec.key == "growth"
        growth = [r.growth for r in app.state.runs["fa-s42"].log.epochs]
        assert [v for s in first.series if s.label == "fa-s42" for _, v in s.points] == growth
        limit = app.cfg.thresholds.growth
        assert [(line.label, line.y) for line in first.lines if line.y is not None] == [
            (f"(a) growth > {num(limit)}", limit)]
        await pilot.press("h")
        await pilot.pause()
        assert first.spec.key == "h_L"


@pytest.mark.asyncio
async def test_p_in_watch_says_why_it_does_nothing(tmp_path: Path) -> None:
    app = FaevalApp(watch=Audit.open(write_fixture_audit(tmp_path / "a")), bell=False, poll_s=3600)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("p")
        await pilot.pause()
        assert not isinstance(app.screen, RerunDialog)
        assert any("nothing trains this audit now" in str(n.message) and "faeval-tui resume" in str(n.message)
                   for n in app._notifications)


@pytest.mark.asyncio
async def test_80x24_shows_every_run_of_the_default_audit_and_the_whole_audit_name(tmp_path: Path) -> None:
    app = FaevalApp(watch=Audit.open(write_fixture_audit(tmp_path / "a")), bell=False, poll_s=3600)
    async with app.run_test(size=(80, 24)) as pilot:
        for seed in (7, 8, 9):  # 8 runs, as the default audit has
            app.state.add_spec(RunSpec(f"bp-s{seed}", "bp", seed, 0.0, None))
        app.flush()
        await pilot.pause()
        table = app.query_one(RunTable)
        assert table.row_count == 8 and table.size.height >= 9  # the header and every run
        assert not app.query_one("#legend").display  # the run list's coloured markers are the legend here
        title = str(app.format_title(app.title, app.sub_title))
        assert not title.startswith("faeval-tui") and app.state.path.name in title
        assert len(title) <= 80 - 4  # the icon and a margin: the header does not cut it


def test_quitting_with_unfinished_runs_prints_the_resume_command(tmp_path: Path) -> None:
    from faeval_tui.app import resume_hint

    path = write_fixture_audit(tmp_path / "a")
    state = AuditState(path, Audit.open(path).cfg)
    FileFeed(Audit.open(path), state).poll()
    assert resume_hint(state, path) == f"1 run(s) unfinished; continue with: faeval-tui resume {path}"
    from engine.records import End

    state.runs["dfa-lam0.01-s42"].log.end = End(status="finished", epoch=5)
    assert resume_hint(state, path) is None
