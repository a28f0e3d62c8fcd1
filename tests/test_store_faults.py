"""Store faults: empty, ahead or foreign checkpoints, an edited config.yaml, read-only and
full file systems, stale temporary files, and the lock's message.

Every refusal is a ``StoreError`` (exit 2 through the CLI, no traceback) that leaves the
audit's files as they were; every fault that is not refused ends with correct records.
"""
from __future__ import annotations

import errno
import fcntl
import io
import os
import pickle
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

import engine.runstore as runstore
from engine.checkpoint import load_checkpoint
from engine.errors import StoreError
from engine.records import stable
from engine.runstore import AuditLock, RecordWriter, atomic_write_bytes
from engine.trainer import RunParts
from faeval_tui.cli import app
from tests.conftest import train

cli = CliRunner()
RUN = "bp-s42"


def _refused(res, *words):
    assert res.exit_code == 2, res.output + repr(res.exception)
    assert "Traceback" not in res.output
    for w in words:
        assert w in res.output, res.output
    return res.output


def _files(audit) -> dict[str, bytes]:
    """Every file of the audit but the lock (which holds the pid of whoever took it last)."""
    return {str(p.relative_to(audit.path)): p.read_bytes() for p in sorted(audit.path.rglob("*"))
            if p.is_file() and p.name != "audit.lock"}


def _drop_lines(audit, keep: int, rid: str = RUN) -> None:
    """Keep the first ``keep`` lines of a run's records (as a kill at that point leaves them)."""
    path = audit.path / rid / "records.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:keep]))


def _stopped(new_audit, *sets):
    """A bp run of two epochs stopped during epoch 2: header, start, epoch 1, end (stopped),
    and the checkpoint of epoch 1."""
    from engine import AuditRunner
    from engine.events import EpochDone

    audit = new_audit("methods=[bp]", "epochs=2", *sets)
    runner = AuditRunner(audit, lambda ev: runner.stop() if isinstance(ev, EpochDone) else None)
    runner.submit_unfinished()
    assert runner.run() == {RUN: "stopped"}
    assert torch.load(audit.path / RUN / "checkpoint.pt", weights_only=True)["epoch"] == 1
    return audit


def _edit_config(audit, old: str, new: str) -> None:
    path = audit.path / "config.yaml"
    text = path.read_text()
    assert f"\n{old}\n" in text, old
    path.write_text(text.replace(f"\n{old}\n", f"\n{new}\n"))


# ---------------------------------------------------------------- F5: empty or truncated checkpoint

def test_an_empty_checkpoint_is_refused_as_empty_and_left_untouched(new_audit):
    audit = _stopped(new_audit)
    ckpt = audit.path / RUN / "checkpoint.pt"
    ckpt.write_bytes(b"")
    before = _files(audit)
    out = _refused(cli.invoke(app, ["resume", str(audit.path)]), "is empty or truncated", "delete it")
    assert str(ckpt) in out.replace("\n", "")
    assert _files(audit) == before


def test_a_truncated_checkpoint_is_refused_as_truncated(new_audit):
    audit = _stopped(new_audit)
    ckpt = audit.path / RUN / "checkpoint.pt"
    data = ckpt.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 30):
        ckpt.write_bytes(data[:cut])
        with pytest.raises(StoreError) as err:
            load_checkpoint(ckpt)
        problem = err.value.problem.replace(str(ckpt), "CKPT")  # the test's own name holds the word
        assert "CKPT is truncated or damaged" in problem and "delete it" in err.value.hint
        assert ckpt.read_bytes() == data[:cut]


class _Payload:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_refused_checkpoint_never_suggests_the_unsafe_weights_only_false(tmp_path, protocol):
    path = tmp_path / "checkpoint.pt"
    with open(path, "wb") as fh:
        pickle.dump({"model": _Payload()}, fh, protocol=protocol)
    with pytest.raises(StoreError) as err:
        load_checkpoint(path)
    text = str(err.value).replace(str(path), "CKPT")
    assert "CKPT cannot be loaded" in text and "delete it" in text
    for unsafe in ("weights_only", "safe_globals", "trusted source"):
        assert unsafe not in text, text


# ---------------------------------------------------------------- F6: checkpoint against the records

def test_a_checkpoint_ahead_of_the_records_is_refused_naming_both_epochs(new_audit):
    audit = new_audit("methods=[bp]", "epochs=3")
    assert train(audit) == {RUN: "finished"}
    _drop_lines(audit, 3)  # records end at epoch 1; the checkpoint is of epoch 3
    before = _files(audit)
    out = _refused(cli.invoke(app, ["resume", str(audit.path)]), "epoch 3", "epoch 1", "delete")
    assert "checkpoint" in out
    assert _files(audit) == before


def test_a_checkpoint_without_its_records_is_refused_and_no_records_are_started(new_audit):
    audit = new_audit("methods=[bp]", "epochs=3")
    assert train(audit) == {RUN: "finished"}
    (audit.path / RUN / "records.jsonl").unlink()
    before = _files(audit)
    _refused(cli.invoke(app, ["resume", str(audit.path)]), "epoch 3", "delete")
    assert _files(audit) == before
    assert not (audit.path / RUN / "records.jsonl").exists()


def test_a_checkpoint_behind_the_records_resumes_from_it_and_equals_an_uninterrupted_run(
        tmp_path, new_audit, monkeypatch):
    audit = new_audit("methods=[bp]", "epochs=3", runs_dir=tmp_path / "a")
    real_save = RunParts.save

    def save(self, path, spec):  # the process dies between epoch 2's line and its checkpoint
        if self.epoch == 2:
            raise StoreError("simulated crash before the checkpoint of epoch 2")
        real_save(self, path, spec)

    monkeypatch.setattr(RunParts, "save", save)
    assert train(audit) == {RUN: "failed"}
    monkeypatch.setattr(RunParts, "save", real_save)
    assert [e.epoch for e in audit.log(RUN).epochs] == [1, 2]
    assert torch.load(audit.path / RUN / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert train(audit) == {RUN: "finished"}
    reference = new_audit("methods=[bp]", "epochs=3", runs_dir=tmp_path / "ref")
    train(reference)
    log = audit.log(RUN)
    assert [e.epoch for e in log.epochs] == [1, 2, 3] and log.end.status == "finished"
    assert stable(log.epochs) == stable(reference.log(RUN).epochs)


# ---------------------------------------------------------------- F7: config.yaml against the runs

def test_checkpoints_carry_their_config_and_model_arguments(new_audit):
    audit = new_audit("methods=[bp]", "epochs=1")
    train(audit)
    state = torch.load(audit.path / RUN / "checkpoint.pt", weights_only=True)
    assert state["config"] == audit.cfg.dump()
    assert state["model_args"] == {"in_dim": 16, "n_classes": 10, "d": 16, "L": 4, "r": 1.0, "terminal_ln": True}


def test_config_changes_names_the_keys_that_change_training_only():
    from engine.checkpoint import config_changes

    old = {"d": 16, "epochs": 3, "workers": 1, "threads": 1, "device": "auto", "description": "a",
           "synthetic": {"n_train": 512, "seed": 0}, "diagnostics": {"rho_every": 1}}
    new = {**old, "workers": 2, "threads": 4, "device": "cpu", "description": "b"}
    assert config_changes(old, new) == []
    new = {**old, "d": 32, "epochs": 5, "synthetic": {"n_train": 1024, "seed": 0}}
    assert config_changes(old, new) == [("d", 16, 32), ("epochs", 3, 5), ("synthetic.n_train", 512, 1024)]
    assert config_changes({}, new) == []  # a header without a config (older files) has nothing to compare


def test_editing_d_in_config_yaml_refuses_resume_naming_the_key_and_both_values(new_audit):
    audit = _stopped(new_audit)
    _edit_config(audit, "d: 16", "d: 32")
    before = _files(audit)
    out = _refused(cli.invoke(app, ["resume", str(audit.path)]), "d: 16", "32", "config.yaml", "new audit")
    assert RUN in out
    assert _files(audit) == before


def test_editing_epochs_refuses_resume_naming_the_key_and_both_values(new_audit):
    audit = _stopped(new_audit)
    _edit_config(audit, "epochs: 2", "epochs: 3")
    before = _files(audit)
    _refused(cli.invoke(app, ["resume", str(audit.path)]), "epochs: 2", "3 in config.yaml", "restore config.yaml")
    assert _files(audit) == before


def test_editing_epochs_is_refused_even_when_only_a_finished_run_trained_under_the_old_value(new_audit):
    import shutil

    audit = new_audit("methods=[bp,frozen]", "epochs=2")
    assert train(audit) == {"frozen-s42": "finished", RUN: "finished"}
    shutil.rmtree(audit.path / RUN)  # bp never started; the frozen baseline finished two epochs
    _edit_config(audit, "epochs: 2", "epochs: 3")
    before = _files(audit)
    out = _refused(cli.invoke(app, ["resume", str(audit.path)]), "frozen-s42", "epochs: 2", "restore config.yaml")
    assert "new audit" in out
    assert _files(audit) == before and not (audit.path / RUN).exists()


def test_a_checkpoint_trained_under_another_config_is_refused(new_audit):
    audit = _stopped(new_audit)
    ckpt = audit.path / RUN / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    state["config"] = {**state["config"], "lr": 0.5}
    torch.save(state, ckpt)
    before = _files(audit)
    _refused(cli.invoke(app, ["resume", str(audit.path)]), "lr", "0.5", "checkpoint")
    assert _files(audit) == before


def test_editing_workers_threads_device_or_description_still_resumes(new_audit):
    audit = _stopped(new_audit)
    _edit_config(audit, "threads: 1", "threads: 2")
    _edit_config(audit, "device: auto", "device: cpu")
    res = cli.invoke(app, ["resume", str(audit.path)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    log = audit.log(RUN)
    assert [e.epoch for e in log.epochs] == [1, 2] and log.end.status == "finished"


# ---------------------------------------------------------------- F12: read-only file system

def _erofs(*_a, **_k):
    raise OSError(errno.EROFS, "Read-only file system")


def test_atomic_write_on_a_read_only_fs_is_a_store_error_even_when_cleanup_fails(tmp_path, monkeypatch):
    target = tmp_path / "report.md"
    target.write_bytes(b"old")
    monkeypatch.setattr(runstore.os, "replace", _erofs)
    monkeypatch.setattr(runstore.os, "unlink", _erofs)  # Path.unlink of the temporary file fails too
    with pytest.raises(StoreError) as err:
        atomic_write_bytes(target, b"new")
    assert "Read-only file system" in err.value.problem
    monkeypatch.undo()
    assert target.read_bytes() == b"old"


def test_export_out_on_a_read_only_fs_is_refused_without_a_traceback(new_audit, monkeypatch):
    audit = new_audit("methods=[bp]", "epochs=1")
    train(audit)
    real_open = open

    def ro_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            raise OSError(errno.EROFS, "Read-only file system", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(runstore, "open", ro_open, raising=False)
    monkeypatch.setattr(runstore.os, "unlink", _erofs)
    out = audit.path / "report.md"
    _refused(cli.invoke(app, ["export", str(audit.path), "--out", str(out)]), "cannot write",
             "Read-only file system")
    assert not out.exists()


def test_taking_the_lock_on_a_read_only_audit_directory_is_a_store_error(new_audit, monkeypatch):
    audit = _stopped(new_audit)
    before = _files(audit)
    real_open = os.open

    def ro_os_open(path, flags, *args, **kwargs):
        if str(path).endswith("audit.lock") and flags & (os.O_RDWR | os.O_WRONLY | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(runstore.os, "open", ro_os_open)
    with pytest.raises(StoreError) as err:
        AuditLock(audit.path).acquire()
    assert "cannot take the lock" in err.value.problem and "read-only file system" in err.value.problem.lower()
    assert "watch" in err.value.hint and "writable" in err.value.hint
    _refused(cli.invoke(app, ["resume", str(audit.path)]), "cannot take the lock")
    monkeypatch.undo()
    assert _files(audit) == before


# ---------------------------------------------------------------- F13: full disk on append and close

class _FullDiskFile:
    """A records file whose disk fills up after ``ok`` writes: write and flush fail with
    ENOSPC, and so does close (which flushes what the buffer still holds)."""

    def __init__(self, fh, ok: int) -> None:
        self._fh, self._ok = fh, ok

    def write(self, text):
        if self._ok <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._ok -= 1
        return self._fh.write(text)

    def flush(self):
        if self._ok <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._fh.flush()

    def close(self):
        self._fh.close()
        if self._ok <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self._fh, name)


def test_a_full_disk_in_one_run_does_not_stop_the_next_run(new_audit, monkeypatch):
    audit = new_audit("methods=[bp]", "seeds=[1,2]", "epochs=2")
    real_open = open

    def full_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        if mode.startswith("a") and str(file).endswith(os.path.join("bp-s1", "records.jsonl")):
            return _FullDiskFile(fh, ok=3)  # header, start, epoch 1; then the disk is full
        return fh

    monkeypatch.setattr(runstore, "open", full_open, raising=False)
    assert train(audit) == {"bp-s1": "failed", "bp-s2": "finished"}
    monkeypatch.undo()
    assert [e.epoch for e in audit.log("bp-s1").epochs] == [1]
    assert audit.log("bp-s2").end.status == "finished"
    assert train(audit) == {"bp-s1": "finished"}  # and resume finishes the one that failed
    assert [e.epoch for e in audit.log("bp-s1").epochs] == [1, 2]


def test_record_writer_close_reports_a_failed_close_once_and_never_raises(tmp_path, capsys):
    writer = RecordWriter(tmp_path / "records.jsonl")
    real = writer._fh

    class Failing(io.StringIO):
        def close(self):
            real.close()
            raise OSError(errno.ENOSPC, "No space left on device")

    writer._fh = Failing()
    writer.close()
    writer.close()
    err = capsys.readouterr().err
    assert err.count("No space left on device") == 1 and "records.jsonl" in err


# ---------------------------------------------------------------- stale temporary checkpoints, the lock's message

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_checkpoint_temp_files_of_dead_processes_are_removed_when_the_run_starts(new_audit):
    audit = new_audit("methods=[bp]", "epochs=1")
    run_dir = audit.path / RUN
    run_dir.mkdir()
    dead, alive = _dead_pid(), os.getppid()
    stale = run_dir / f".checkpoint.pt.tmp{dead}"
    kept = [run_dir / f".checkpoint.pt.tmp{alive}",  # a live process's: not ours to remove
            run_dir / ".checkpoint.pt.tmpabc", run_dir / f"x.checkpoint.pt.tmp{dead}",
            run_dir / f".records.jsonl.tmp{dead}", audit.path / f".checkpoint.pt.tmp{dead}"]
    for p in [stale, *kept]:
        p.write_bytes(b"partial")
    assert train(audit) == {RUN: "finished"}
    assert not stale.exists()
    assert all(p.exists() for p in kept)


def test_the_lock_message_names_no_pid_when_the_pid_file_is_empty(new_audit):
    audit = new_audit("methods=[bp]", "epochs=1")
    fd = os.open(audit.path / "audit.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held, but its pid not written yet
        with pytest.raises(StoreError) as err:
            AuditLock(audit.path).acquire()
        assert "being trained by another process" in err.value.problem
        assert "pid" not in err.value.problem and "?" not in err.value.problem
        os.write(fd, b"4242\n")
        with pytest.raises(StoreError, match=r"another process \(pid 4242\)"):
            AuditLock(audit.path).acquire()
    finally:
        os.close(fd)


def test_resume_on_a_machine_without_the_memory_is_refused_before_anything_is_written(new_audit, monkeypatch):
    import engine.sizing as sizing

    audit = _stopped(new_audit)
    before = _files(audit)
    monkeypatch.setattr(sizing, "available_bytes", lambda: 64 * sizing.MiB)  # a smaller machine than the start
    res = cli.invoke(app, ["resume", str(audit.path)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "available on this machine" in res.output and "resume on a machine with more memory" in res.output
    assert _files(audit) == before
