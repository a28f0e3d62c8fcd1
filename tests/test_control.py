"""Controls through the audit directory (engine.control), and training that outlives the console."""
from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest

from engine.audit import Audit
from engine.config import load_config
from engine.control import CONTROL, Inbox, request_run, request_stop, requested_runs
from engine.errors import ConfigError
from engine.plan import RunSpec
from engine.runstore import RECORDS, read_run
from tests.conftest import WAIT_S, tiny


def test_a_run_request_is_taken_once_and_a_bad_one_is_refused_with_why(tmp_path: Path) -> None:
    good = RunSpec("dfa-lam0.01-s42", "dfa", 42, 0.01, "dfa-s42")
    request_run(tmp_path, good)
    assert requested_runs(tmp_path) == [good]
    (tmp_path / CONTROL / "run-bp-lam1-s1.json").write_text(json.dumps(
        {"run_id": "bp-lam1-s1", "method": "bp", "seed": 1, "penalty": 1.0, "parent": None, "model": None}))
    (tmp_path / CONTROL / "run-junk.json").write_text("{not json")
    inbox = Inbox(tmp_path, methods=["dfa", "frozen"])
    taken: list[RunSpec] = []
    assert inbox.take_runs(taken.append) == [good] and taken == [good]
    assert inbox.take_runs(taken.append) == [] and taken == [good]  # taken once
    assert requested_runs(tmp_path) == []
    refused = sorted(p.name for p in (tmp_path / CONTROL).glob("*.refused"))
    assert refused == ["run-bp-lam1-s1.refused", "run-junk.refused"]
    assert "method 'bp' is not one of this audit's (dfa, frozen)" in (tmp_path / CONTROL / refused[0]).read_text()
    assert len(inbox.refused) == 2


def test_a_request_must_name_itself_as_its_run_id_does(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not name its method"):
        request_run(tmp_path, RunSpec("dfa-s42", "dfa", 42, 0.01))
    with pytest.raises(ConfigError, match="finite"):
        request_run(tmp_path, RunSpec("dfa-laminf-s42", "dfa", 42, float("inf")))
    assert not (tmp_path / CONTROL).exists() or not list((tmp_path / CONTROL).iterdir())


def test_a_stop_request_older_than_the_trainer_is_not_for_it(tmp_path: Path) -> None:
    request_stop(tmp_path)
    stale = json.loads((tmp_path / CONTROL / "stop.json").read_text())
    stale["at"] -= 3600
    (tmp_path / CONTROL / "stop.json").write_text(json.dumps(stale))
    inbox = Inbox(tmp_path, methods=["bp"])
    assert not inbox.stop_requested() and not (tmp_path / CONTROL / "stop.json").exists()
    request_stop(tmp_path)
    assert inbox.stop_requested() and not inbox.stop_requested()  # honoured once


def test_a_headless_trainer_takes_reruns_and_stops_through_the_audit_directory(tmp_path: Path) -> None:
    from faeval_tui.headless import run_headless

    cfg = load_config(None, tiny("methods=[dfa]", "epochs=400", "synthetic.n_train=2048", "penalty_methods=[dfa]"))
    audit = Audit.create(cfg, tmp_path)
    rerun = RunSpec("dfa-lam0.01-s42", "dfa", 42, 0.01, "dfa-s42")
    request_run(audit.path, rerun)  # asked for before the trainer starts: it takes it at start

    def steer() -> None:
        deadline = time.monotonic() + WAIT_S
        while not read_run(audit.path / "dfa-s42" / RECORDS).epochs:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        request_stop(audit.path)

    t = threading.Thread(target=steer, daemon=True)
    t.start()
    statuses = run_headless(audit)
    t.join()
    assert statuses == {"dfa-s42": "stopped"}  # stopped at its next batch; the rerun waits its turn
    log = read_run(audit.path / rerun.run_id / RECORDS)  # taken: on disk, so the next trainer has it
    assert log.header.penalty == 0.01 and log.header.parent == "dfa-s42" and not log.started
    assert rerun in audit.planned() and audit.log(rerun.run_id).unfinished
    assert not list((audit.path / CONTROL).glob("*.json"))  # every request taken


@pytest.mark.slow
@pytest.mark.asyncio
async def test_training_outlives_the_console_and_a_new_console_attaches_and_stops_it(tmp_path: Path) -> None:
    from faeval_tui.app import FaevalApp
    from faeval_tui.dialogs import DetachedQuitDialog, ResumeDialog

    cfg = load_config(None, tiny("methods=[frozen]", "epochs=100000", "synthetic.n_train=4096"))
    first = FaevalApp(cfg=cfg, runs_dir=tmp_path, bell=False, detach=True, poll_s=0.2)

    def epochs(audit: Audit) -> int:
        log = read_run(audit.path / "frozen-s42" / RECORDS)
        return log.epochs[-1].epoch if log.epochs else 0

    async def until(cond, what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not cond():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.1)

    async with first.run_test(size=(100, 32)) as pilot:
        await until(lambda: first.audit is not None and epochs(first.audit) >= 1, "the trainer trains")
        trainer = first.trainer
        assert trainer is not None and trainer.poll() is None
        # the console goes without a word (a dropped connection): nothing asks the trainer to stop
        first.exit()
        await pilot.pause()
    audit = first.audit
    seen = epochs(audit)
    await until(lambda: epochs(audit) > seen, "training goes on without the console")
    assert audit.is_live() and trainer.poll() is None

    second = FaevalApp(cfg=cfg, runs_dir=tmp_path, bell=False, detach=True, poll_s=0.2)
    async with second.run_test(size=(100, 32)) as pilot:
        await until(lambda: isinstance(second.screen, ResumeDialog), "the console offers to attach")
        await pilot.press("enter")  # attach to the live audit
        await until(lambda: second.mode == "attached" and second.state.runs, "attached")
        assert second.trainer is None and second.audit.path == audit.path and len(list(tmp_path.iterdir())) == 1
        await until(lambda: second.state.runs["frozen-s42"].last_epoch > seen, "it follows the records")
        await pilot.press("q")
        await until(lambda: isinstance(second.screen, DetachedQuitDialog), "quit asks")
        await pilot.press("s")  # stop training and quit
        await until(lambda: not second.is_running, "the console quits once the trainer stopped")
    trainer.wait(timeout=60)
    log = read_run(audit.path / "frozen-s42" / RECORDS)
    assert log.end.status == "stopped" and (audit.path / "frozen-s42" / "checkpoint.pt").is_file()
    assert [e.epoch for e in log.epochs] == list(range(1, len(log.epochs) + 1))  # complete, in order
    assert not audit.is_live()


def test_a_stop_that_came_as_the_last_epoch_ended_does_not_ask_for_a_resume(new_audit) -> None:
    from faeval_tui.headless import run_headless, stopped_line

    audit = new_audit("methods=[frozen]", "epochs=1")
    assert stopped_line(audit) == f"stopped; continue with: faeval-tui resume {audit.path}"  # nothing trained yet
    assert run_headless(audit) == {"frozen-s42": "finished"}
    assert stopped_line(audit) == "stopped after every run had finished: nothing to resume"
