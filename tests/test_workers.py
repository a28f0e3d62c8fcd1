"""Audits with workers > 1 train each run in a child process: the same records, the same
events, stop and resume, a killed child, and a method registered only in the parent."""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading

import pytest
import torch.nn.functional as F

from engine import Audit, AuditRunner, load_config
from engine.events import EpochDone, RunEnded, RunStarted
from engine.methods.base import Method, Probe
from engine.records import stable
from tests.conftest import tiny, train

# every test here spawns training child processes that run whole (tiny) audits
pytestmark = pytest.mark.slow


def audit_of(tmp_path, *sets):
    return Audit.create(load_config(None, tiny("epochs=3", "synthetic.n_train=1024", *sets)), tmp_path)


def test_process_workers_write_the_records_a_single_thread_writes(tmp_path):
    sets = ["methods=[fa,frozen]", "seeds=[42,7]", "thresholds.persist.d=1"]  # alert on each first fire
    events = []
    lock = threading.Lock()

    def listener(event):
        with lock:
            events.append(event)

    multi = audit_of(tmp_path / "multi", *sets)
    statuses = train(multi, 2, listener)
    assert statuses == dict.fromkeys(["frozen-s42", "frozen-s7", "fa-s42", "fa-s7"], "finished")

    single = audit_of(tmp_path / "single", *sets)  # threads = 1 here as in each child (the config's)
    assert train(single, 1) == statuses
    for rid in statuses:
        assert stable(multi.log(rid).epochs) == stable(single.log(rid).epochs), rid
        assert [r.epoch for r in multi.log(rid).epochs] == [1, 2, 3]
        assert not (multi.run_dir(rid) / "worker.log").exists()  # the children printed nothing

    # the listener heard every run start, every epoch (with its record and alerts) and every end
    for rid in statuses:
        mine = [e for e in events if e.run_id == rid]
        assert isinstance(mine[0], RunStarted) and mine[0].header.run_id == rid
        done = [e for e in mine if isinstance(e, EpochDone)]
        assert [e.record.epoch for e in done] == [1, 2, 3]
        assert stable([e.record for e in done]) == stable(multi.log(rid).epochs)
        assert isinstance(mine[-1], RunEnded) and mine[-1].status == "finished"
    fa_alerts = [a for e in events if isinstance(e, EpochDone) and e.run_id == "fa-s42" for a in e.alerts]
    fired = {d for r in multi.log("fa-s42").epochs for d in r.fired if d in "abd"}
    assert fired and {a.diagnostic for a in fa_alerts} == fired


def test_stop_reaches_the_children_and_resume_finishes_their_runs(tmp_path):
    audit = audit_of(tmp_path, "methods=[bp,frozen]", "epochs=6", "synthetic.n_train=8192")
    box = {}

    def listener(event):
        if isinstance(event, EpochDone) and event.record.epoch == 2:
            box["runner"].stop()

    runner = AuditRunner(audit, listener, workers=2)
    box["runner"] = runner
    runner.submit_unfinished()
    statuses = runner.run()
    assert statuses["frozen-s42"] == "stopped"
    log = audit.log("frozen-s42")
    assert log.end.status == "stopped" and log.unfinished
    assert 2 <= len(log.epochs) < 6
    assert "bp-s42" not in statuses  # it waits for its baseline, which never finished

    statuses = train(Audit.open(audit.path), 2)
    assert statuses == {"frozen-s42": "finished", "bp-s42": "finished"}
    assert [r.epoch for r in audit.log("frozen-s42").epochs] == [1, 2, 3, 4, 5, 6]


def test_a_killed_child_gets_a_failed_end_line_with_its_exit_code(tmp_path):
    audit = audit_of(tmp_path, "methods=[dfa]", "epochs=50", "synthetic.n_train=8192")
    ended = []

    def listener(event):
        if isinstance(event, EpochDone) and event.record.epoch == 1:
            (child,) = [p for p in multiprocessing.active_children() if p.name == "faeval-run-dfa-s42"]
            os.kill(child.pid, signal.SIGKILL)
        if isinstance(event, RunEnded):
            ended.append(event)

    runner = AuditRunner(audit, listener, workers=2)
    runner.submit_unfinished()
    assert runner.run() == {"dfa-s42": "failed"}
    log = audit.log("dfa-s42")
    assert log.end.status == "failed" and "code -9" in log.end.message
    assert log.end.epoch == log.epochs[-1].epoch >= 1
    assert ended[-1].status == "failed" and "code -9" in ended[-1].message
    assert log.unfinished  # resume picks it up like any failed run


class _ScaledBackprop(Method):
    """Registered at runtime, as a researcher's script would: the child knows it only
    through the class the parent hands over."""

    name = "scaled_bp_runtime_only"

    def credit(self, probe: Probe):
        return [0.5 * g for g in probe.grads]

    def step(self, model, x, y, penalty):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss.detach()


def test_a_method_registered_only_in_the_parent_trains_in_a_child(tmp_path, registered):
    registered(_ScaledBackprop)
    audit = audit_of(tmp_path, f"methods=[{_ScaledBackprop.name}]", "epochs=1")
    statuses = train(audit, 2)
    assert statuses == {f"{_ScaledBackprop.name}-s42": "finished"}
    rec = audit.log(f"{_ScaledBackprop.name}-s42").epochs[0]
    assert all(abs(c - 1.0) < 1e-6 for c in rec.cos)  # a scaled gradient: cosine 1 at every layer
    assert rec.a_norm == pytest.approx([0.5 * 1024 * g for g in rec.g_norm], rel=1e-4)  # its own 0.5 scale
