"""Nothing lost: crashes, resume, locks, non-finite values, bad input and safe loading."""
from __future__ import annotations

import errno
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

import engine.runstore as runstore
from engine import Audit
from engine.errors import ConfigError, StoreError
from engine.methods.bp import Backprop
from engine.records import stable
from engine.report import export_json
from engine.runstore import AuditLock, atomic_write_bytes
from faeval_tui.cli import app
from tests.conftest import WAIT_S, tiny, train

SETS = tiny("epochs=3")  # every audit here trains three epochs unless a test says otherwise
cli = CliRunner()


@pytest.fixture
def make(new_audit):
    """``make("methods=[bp]", runs_dir=...)``: a fresh audit of SETS plus the given keys."""
    return lambda *sets, runs_dir=None: new_audit("epochs=3", *sets, runs_dir=runs_dir)


# ---------------------------------------------------------------- resume after kill -9

def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "faeval_tui", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
def test_resume_after_kill_9_mid_epoch_equals_an_uninterrupted_run(tmp_path):
    sets = ["epochs=5", "d=32", "synthetic.n_train=16384", "synthetic.n_test=1024", "diagnostics.rho_directions=2",
            "seeds=[5]", "methods=[dfa]"]
    flags = ["--preset", "synthetic_default", *sum((["--set", s] for s in sets), [])]  # long enough to kill
    killed_dir = tmp_path / "killed"
    proc = _cli("run", "--runs-dir", str(killed_dir), *flags)
    records = None
    deadline = time.monotonic() + WAIT_S
    while records is None:
        assert proc.poll() is None, "the audit ended before epoch 2: " + proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "the run never reached epoch 2"
        found = list(killed_dir.glob("*/dfa-s5/records.jsonl"))
        if found and found[0].read_text().count('"type":"epoch"') >= 2:
            records = found[0]
        time.sleep(0.05)
    time.sleep(0.4)  # into epoch 3's training
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    audit_dir = records.parent.parent
    before = Audit.open(audit_dir).log("dfa-s5")
    assert before.end is None and len(before.epochs) < 5  # killed, not finished
    res = subprocess.run([sys.executable, "-m", "faeval_tui", "resume", str(audit_dir)], capture_output=True,
                         text=True, timeout=WAIT_S)
    assert res.returncode == 0, res.stderr
    clean = subprocess.run([sys.executable, "-m", "faeval_tui", "run", "--runs-dir", str(tmp_path / "clean"),
                            *flags], capture_output=True, text=True, timeout=WAIT_S)
    assert clean.returncode == 0, clean.stderr
    resumed = Audit.open(audit_dir).log("dfa-s5")
    reference = Audit.open(clean.stdout.strip().splitlines()[-1]).log("dfa-s5")
    assert resumed.end.status == "finished"
    assert [r.epoch for r in resumed.epochs] == [1, 2, 3, 4, 5]
    assert stable(resumed.epochs) == stable(reference.epochs)


# ---------------------------------------------------------------- locking

def test_a_second_trainer_is_refused_with_a_clear_message(make):
    audit = make("methods=[bp]")
    with AuditLock(audit.path):
        assert audit.is_live()
        res = cli.invoke(app, ["resume", str(audit.path)])
        assert res.exit_code == 2
        assert "being trained by another process" in res.output and "watch" in res.output
    assert not audit.is_live()


def test_a_stale_lock_from_a_dead_process_is_taken_over(make):
    audit = make("methods=[bp]", "epochs=1")
    (audit.path / "audit.lock").write_text("999999\n")  # pid of a process that no longer exists
    assert not audit.is_live()
    assert train(audit) == {"bp-s42": "finished"}
    assert (audit.path / "audit.lock").read_text().strip() == str(os.getpid())


# ---------------------------------------------------------------- non-finite values

class Explode(Backprop):
    """bp that overflows its embedding at epoch 2: a divergence on demand."""

    name = "test_explode"
    calls = 0

    def step(self, model, x, y, penalty):
        loss = super().step(model, x, y, penalty)
        Explode.calls += 1
        if Explode.calls > 4:  # the 512-sample set has 4 batches: blow up during epoch 2
            model.embed.weight.data.fill_(math.inf)
        return loss


def test_non_finite_values_are_recorded_fire_diagnostics_and_end_as_diverged(tmp_path, make, registered):
    registered(Explode)
    Explode.calls = 0
    audit = make("methods=[test_explode]")
    assert train(audit) == {"test_explode-s42": "diverged"}
    log = audit.log("test_explode-s42")
    assert [r.epoch for r in log.epochs] == [1, 2]
    last = log.epochs[-1]
    assert any(not math.isfinite(v) for v in last.h_norm)
    assert {"a", "b"} <= set(last.fired) and last.degenerate is True
    assert log.end.status == "diverged" and "non-finite" in log.end.message
    raw = (audit.path / "test_explode-s42" / "records.jsonl").read_text()
    for line in raw.splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    doc = export_json(audit)
    json.dumps(doc, allow_nan=False)  # the export is strict JSON too
    run = doc["runs"][0]
    assert run["status"] == "diverged" and run["verdict"].startswith("WALKED BACK")


# ---------------------------------------------------------------- full disk

def test_full_disk_fails_the_run_cleanly_and_resume_finishes_it(tmp_path, monkeypatch, make):
    audit = make("methods=[bp]")
    real_fsync = os.fsync
    calls = {"n": 0}

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] > 4:  # header, start line, epoch 1, checkpoint 1 succeed; then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(runstore.os, "fsync", fsync)
    assert train(audit) == {"bp-s42": "failed"}
    monkeypatch.setattr(runstore.os, "fsync", real_fsync)
    assert (audit.path / "bp-s42" / "checkpoint.pt").exists()
    assert train(audit) == {"bp-s42": "finished"}
    reference = make("methods=[bp]", runs_dir=tmp_path / "ref")
    train(reference)
    assert stable(audit.log("bp-s42").epochs) == stable(reference.log("bp-s42").epochs)


def test_atomic_write_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"old")

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runstore.os, "fsync", fsync)
    with pytest.raises(StoreError) as err:
        atomic_write_bytes(target, b"new")
    assert "space" in str(err.value)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


# ---------------------------------------------------------------- bad input through the CLI

def _stopped_audit(make):
    """An audit whose bp run has a checkpoint and no end line (as after a kill)."""
    audit = make("methods=[bp]", "epochs=1")
    train(audit)
    path = audit.path / "bp-s42" / "records.jsonl"
    path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")  # drop the end line
    cfg = (audit.path / "config.yaml").read_text().replace("epochs: 1", "epochs: 2")
    (audit.path / "config.yaml").write_text(cfg)
    return audit


def _assert_refused(res, *words):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    for w in words:
        assert w in res.output


def test_corrupt_checkpoint_is_refused_and_left_untouched(make):
    audit = _stopped_audit(make)
    ckpt = audit.path / "bp-s42" / "checkpoint.pt"
    ckpt.write_bytes(b"\x00garbage" * 10)
    records_before = (audit.path / "bp-s42" / "records.jsonl").read_bytes()
    _assert_refused(cli.invoke(app, ["resume", str(audit.path)]), "cannot be loaded", "delete it")
    assert ckpt.read_bytes() == b"\x00garbage" * 10
    assert (audit.path / "bp-s42" / "records.jsonl").read_bytes() == records_before


def test_foreign_checkpoint_is_refused(make):
    audit = _stopped_audit(make)
    ckpt = audit.path / "bp-s42" / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    state["run_id"] = "fa-s7"
    torch.save(state, ckpt)
    _assert_refused(cli.invoke(app, ["resume", str(audit.path)]), "belongs to another run")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# torch warns about the raw pickle it is handed: that file is the point of the test
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_checkpoint_that_would_run_code_is_refused(tmp_path, make):
    audit = _stopped_audit(make)
    marker = tmp_path / "pwned"
    with open(audit.path / "bp-s42" / "checkpoint.pt", "wb") as fh:
        pickle.dump({"model": _Payload(marker)}, fh)
    _assert_refused(cli.invoke(app, ["resume", str(audit.path)]), "cannot be loaded")
    assert not marker.exists()


def test_newer_schema_audit_is_refused(make):
    audit = make("methods=[bp]")
    cfg = audit.path / "config.yaml"
    cfg.write_text(cfg.read_text().replace("schema: 1", "schema: 99"))
    _assert_refused(cli.invoke(app, ["export", str(audit.path)]), "schema version 99", "upgrade")
    _assert_refused(cli.invoke(app, ["resume", str(audit.path)]), "schema version 99")


def test_not_an_audit_directory(tmp_path):
    _assert_refused(cli.invoke(app, ["export", str(tmp_path)]), "not an audit directory")
    _assert_refused(cli.invoke(app, ["resume", str(tmp_path / "missing")]), "not a directory")


def test_unwritable_runs_dir_is_refused_and_nothing_is_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    res = cli.invoke(app, ["run", "--runs-dir", str(blocker / "runs")] + sum((["--set", s] for s in SETS), []))
    _assert_refused(res, "cannot create an audit directory", "--runs-dir")
    assert blocker.read_text() == "not a directory"


def test_cuda_without_cuda_is_refused_before_anything_is_written(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    res = cli.invoke(app, ["run", "--runs-dir", str(tmp_path), "--device", "cuda"])
    _assert_refused(res, "CUDA is not available", "--device cpu")
    assert list(tmp_path.iterdir()) == []


def test_missing_cifar_without_download_says_where_to_put_it(tmp_path):
    res = cli.invoke(app, ["run", "--preset", "cifar10_d256_L4", "--runs-dir", str(tmp_path / "runs"),
                           "--set", f"data_dir={tmp_path / 'data'}", "--set", "download=false"])
    _assert_refused(res, "cifar-10-python.tar.gz", str(tmp_path / "data"))
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


def test_debug_shows_the_traceback(tmp_path):
    res = cli.invoke(app, ["run", "--debug", "--runs-dir", str(tmp_path), "--set", "epochs=0"])
    assert res.exit_code != 0
    # the engine's own error escapes (a traceback), not a wrapped or unrelated one
    assert type(res.exception) is ConfigError, repr(res.exception)
    assert "epochs = 0" in res.exception.problem and res.exception.hint
    assert list(tmp_path.iterdir()) == []
    # without --debug the same mistake is one line and exit 2 (--debug does not stick)
    plain = cli.invoke(app, ["run", "--runs-dir", str(tmp_path), "--set", "epochs=0"])
    assert plain.exit_code == 2 and plain.exception.__class__ is SystemExit and "epochs = 0" in plain.output


@pytest.mark.slow
def test_ctrl_c_stops_runs_keeps_checkpoints_and_says_how_to_resume(tmp_path):
    sets = ["epochs=50", "d=16", "synthetic.n_train=4096", "synthetic.n_test=1024", "diagnostics.rho_directions=2",
            "seeds=[3]", "methods=[bp]"]
    proc = _cli("run", "--preset", "synthetic_default", "--runs-dir", str(tmp_path), *sum((["--set", s] for s in sets), []))
    deadline = time.monotonic() + WAIT_S
    while not list(tmp_path.glob("*/bp-s3/checkpoint.pt")):
        assert proc.poll() is None, "the audit ended before its first checkpoint: " + proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 1
    assert "faeval-tui resume" in err
    audit = Audit.open(next(tmp_path.iterdir()))
    log = audit.log("bp-s3")
    assert log.end.status == "stopped" and 1 <= len(log.epochs) < 50
    assert (audit.path / "bp-s3" / "checkpoint.pt").exists() and not audit.is_live()
