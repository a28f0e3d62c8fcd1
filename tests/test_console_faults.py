"""Console faults: the error dialog's keys, and a new audit that cannot start leaves nothing behind.

The data of a new audit loads on a thread before its directory exists; a stand-in
loader holds it there until the test lets go, to look at the console meanwhile.
"""
from __future__ import annotations

import asyncio
import io
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console
from textual.widgets import Static

import engine.data
from engine.config import load_config
from engine.data import load_task
from engine.errors import DataError
from faeval_tui.app import FaevalApp
from faeval_tui.dialogs import ErrorScreen, HelpScreen
from faeval_tui.runlist import RunTable
from tests.conftest import WAIT_S
from tests.test_console import until
from tests.test_console_fixtures import TINY

pytestmark = pytest.mark.asyncio
SIZE = (100, 32)


def finished(app: FaevalApp) -> bool:
    return bool(app.state.runs) and not app.state.active()


def shown(screen, selector: str) -> str:
    """A Static's text as the user reads it."""
    console = Console(width=2000, record=True, file=io.StringIO())  # wide: one line per paragraph
    console.print(screen.query_one(selector, Static).content)
    return console.export_text().strip()


def no_cifar(tmp_path: Path):
    return load_config("cifar10_d256_L4", [f"data_dir={tmp_path / 'nodata'}", "download=false"])


async def stopped(app: FaevalApp, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while app.is_running:
        assert time.monotonic() < deadline, "the app is still running"
        await asyncio.sleep(0.05)


async def test_q_on_the_cannot_start_dialog_quits_the_app(tmp_path: Path) -> None:
    app = FaevalApp(cfg=no_cifar(tmp_path), runs_dir=tmp_path / "runs", bell=False)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ErrorScreen))
        assert str(app.screen.query_one(".title").render()) == "Training cannot start"
        await pilot.press("q")
        await stopped(app)
        assert app.return_code == 0  # exit() ran: the run_test teardown alone leaves it None
    assert isinstance(app.failure, DataError) and "CIFAR-10 not found" in app.failure.problem


async def test_esc_on_the_error_dialog_returns_to_the_console(tmp_path: Path) -> None:
    app = FaevalApp(cfg=no_cifar(tmp_path), runs_dir=tmp_path / "runs", bell=False)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ErrorScreen))
        await pilot.press("escape")
        await pilot.pause()
        assert app.is_running and app.screen is app.screen_stack[0] and len(app.screen_stack) == 1
        assert app.mode == "not training" and app.sub_title == "not training · runs · resmlp on cifar10"


async def test_a_new_audit_whose_data_cannot_load_creates_nothing(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    app = FaevalApp(cfg=no_cifar(tmp_path), runs_dir=runs_dir, bell=False)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ErrorScreen))
        problem, hint = shown(app.screen, "#problem"), shown(app.screen, "#hint")
        assert problem == f"CIFAR-10 not found in {tmp_path / 'nodata'}"
        assert "--data-dir DIR" in hint and "cifar-10-python.tar.gz" in hint
        assert app.audit is None and app.live_feed is None and not app.state.live
        statuses = {rid: str(app.query_one(RunTable).get_cell(rid, "status")) for rid in app.state.runs}
        assert len(statuses) == 12 and set(statuses.values()) == {"not started"}  # the plan, none queued
    assert not runs_dir.exists() or list(runs_dir.iterdir()) == []


async def test_a_device_that_is_not_there_is_shown_and_creates_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    runs_dir = tmp_path / "runs"
    app = FaevalApp(cfg=load_config(None, TINY + ["device=cuda"]), runs_dir=runs_dir, bell=False)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ErrorScreen))
        assert shown(app.screen, "#problem") == "device = 'cuda' but CUDA is not available on this machine"
    assert not runs_dir.exists()


class SlowLoader:
    """Stands in for ``load_task``: returns the real task once the test says so."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.calls: list[str] = []
        self.loaded = None

    def __call__(self, cfg):
        self.calls.append(threading.current_thread().name)
        assert self.go.wait(WAIT_S), "the test never let the data load"
        self.loaded = load_task(cfg)
        return self.loaded


async def test_data_loads_off_the_event_loop_then_the_audit_is_created(tmp_path: Path, monkeypatch) -> None:
    loader = SlowLoader()
    monkeypatch.setattr(engine.data, "load_task", loader)
    runs_dir = tmp_path / "runs"
    app = FaevalApp(cfg=load_config(None, TINY), runs_dir=runs_dir, bell=False)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: loader.calls)
            assert loader.calls[0] != threading.current_thread().name  # a thread, not the event loop
            assert app.mode == "loading the synthetic data" and app.sub_title.startswith("loading the synthetic data")
            assert not runs_dir.exists()  # nothing on disk while the data loads
            table = app.query_one(RunTable)
            assert {rid: str(table.get_cell(rid, "status")) for rid in ("frozen-s42", "dfa-s42")} == \
                {"frozen-s42": "queued", "dfa-s42": "queued"}  # the plan shows meanwhile
            await pilot.press("question_mark")  # the console answers keys meanwhile
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            loader.go.set()
            await until(pilot, lambda: finished(app))
            assert [p.parent for p in runs_dir.glob("*/config.yaml")] == [app.audit.path]
            assert app.mode == "live" and set(app.state.runs) == {"frozen-s42", "dfa-s42"}
            assert len(loader.calls) == 1  # the runner trained on the task loaded here, not a second copy
            assert app.live_feed.runner.task.x_train is loader.loaded.x_train
    finally:
        loader.go.set()


async def test_quitting_while_the_data_loads_creates_nothing(tmp_path: Path, monkeypatch) -> None:
    loader = SlowLoader()
    monkeypatch.setattr(engine.data, "load_task", loader)
    runs_dir = tmp_path / "runs"
    app = FaevalApp(cfg=load_config(None, TINY), runs_dir=runs_dir, bell=False)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: loader.calls)
            await pilot.press("q")  # nothing trains yet: quits without asking
            await stopped(app)
            loader.go.set()  # the load ends after the app did
            await asyncio.sleep(0.5)
    finally:
        loader.go.set()
    assert app.return_code == 0 and app.audit is None
    assert not runs_dir.exists()


async def test_bf16_on_a_cpu_that_emulates_it_is_said_in_a_toast_and_training_goes_on(tmp_path: Path,
                                                                                      monkeypatch) -> None:
    import engine.device

    monkeypatch.setattr(engine.device, "native_cpu_bf16", lambda: False)
    app = FaevalApp(cfg=load_config(None, TINY + ["precision=bf16", "methods=[frozen]", "epochs=1"]),
                    runs_dir=tmp_path / "runs", bell=False)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: finished(app))
        said = [n for n in app._notifications if n.title == "precision"]
        assert len(said) == 1 and said[0].severity == "warning"
        assert said[0].message.startswith("precision = 'bf16' but this CPU has no native bfloat16")
    assert app.failure is None
