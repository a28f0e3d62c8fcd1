"""SVG snapshots of the console on a hand-made audit (watch mode: no training, no clock).

Update after an intended change: pytest tests/test_snapshots.py --snapshot-update
"""
from __future__ import annotations

from pathlib import Path

import pytest

from engine.audit import Audit
from faeval_tui.app import FaevalApp
from tests.test_console_fixtures import write_fixture_audit


@pytest.fixture
def fixture_app(tmp_path: Path) -> FaevalApp:
    # a fixed directory name: the header shows it
    audit = Audit.open(write_fixture_audit(tmp_path / "fixture-audit"))
    return FaevalApp(watch=audit, bell=False, poll_s=3600)


async def select(pilot, run_id: str) -> None:
    pilot.app.select_run(run_id)
    pilot.app.flush()
    await pilot.pause()


SIZES = {"80x24": (80, 24), "160x48": (160, 48)}


@pytest.mark.parametrize("size", SIZES)
def test_main_screen(snap_compare, fixture_app: FaevalApp, size: str) -> None:
    async def before(pilot):
        await select(pilot, "dfa-s42")
    assert snap_compare(fixture_app, terminal_size=SIZES[size], run_before=before)


@pytest.mark.parametrize("size", SIZES)
def test_main_screen_growth_chart(snap_compare, fixture_app: FaevalApp, size: str) -> None:
    async def before(pilot):
        await select(pilot, "fa-s42")
        await pilot.press("h")  # the first chart shows growth and its (a) line
        pilot.app.flush()
        await pilot.pause()
    assert snap_compare(fixture_app, terminal_size=SIZES[size], run_before=before)


@pytest.mark.parametrize("size", SIZES)
def test_inspector_degenerate_epoch(snap_compare, fixture_app: FaevalApp, size: str) -> None:
    async def before(pilot):
        await select(pilot, "dfa-s42")
        await pilot.press("i")
        await pilot.pause()
    assert snap_compare(fixture_app, terminal_size=SIZES[size], run_before=before)


@pytest.mark.parametrize("size", SIZES)
def test_verdict_view(snap_compare, fixture_app: FaevalApp, size: str) -> None:
    async def before(pilot):
        await pilot.press("v")
        await pilot.pause()
    assert snap_compare(fixture_app, terminal_size=SIZES[size], run_before=before)


def test_verdict_view_scrolled_right_80x24(snap_compare, fixture_app: FaevalApp) -> None:
    async def before(pilot):
        await pilot.press("v")
        await pilot.pause()
        await pilot.press(*["right"] * 6)
        await pilot.pause()
    assert snap_compare(fixture_app, terminal_size=(80, 24), run_before=before)


def test_help_80x24(snap_compare, fixture_app: FaevalApp) -> None:
    async def before(pilot):
        await pilot.press("question_mark")
        await pilot.pause()
    assert snap_compare(fixture_app, terminal_size=(80, 24), run_before=before)
