"""executor: slurm (engine/slurm.py): submitit's local backend in the fast tier; the real
single-node cluster of .ci/slurm-up in the slow tier, with a job requeued and one cancelled
mid-run, and records that equal a local run's."""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from engine.audit import Audit
from engine.config import load_config
from engine.errors import ConfigError
from engine.runstore import RECORDS, read_run
from engine.scheduler import AuditRunner
from engine.slurm import JOBS, SLURM_DIR, SlurmRunner, check_slurm
from tests.conftest import WAIT_S, tiny

pytest.importorskip("submitit")

# what differs between two trainings of the same run: when, and how long it took
VOLATILE = {"time", "train_s", "diag_s"}


def epochs_of(audit: Audit, rid: str) -> list[dict]:
    return [{k: v for k, v in e.model_dump().items() if k not in VOLATILE}
            for e in read_run(audit.run_dir(rid) / RECORDS).epochs]


def local_reference(tmp_path: Path, sets: list[str]) -> Audit:
    audit = Audit.create(load_config(None, sets + ["executor=local"]), tmp_path / "local")
    runner = AuditRunner(audit)
    runner.submit_unfinished()
    assert set(runner.run().values()) == {"finished"}
    return audit


def test_the_local_backend_trains_each_run_as_a_job_baseline_first_and_equals_a_local_run(tmp_path: Path) -> None:
    sets = tiny("methods=[dfa,frozen]", "seeds=[42]", "epochs=2", "reuse=false")
    audit = Audit.create(load_config(None, sets + ["executor=slurm", "slurm.cluster=local"]), tmp_path / "jobs")
    events = []
    runner = SlurmRunner(audit, events.append)
    runner.submit_unfinished()
    assert runner.run() == {"frozen-s42": "finished", "dfa-s42": "finished"}
    # the frozen baseline's job ended before dfa's began: dfa's epochs have its accuracies
    frozen_end = read_run(audit.run_dir("frozen-s42") / RECORDS).end.time
    dfa_start = read_run(audit.run_dir("dfa-s42") / RECORDS).starts[0].time
    assert frozen_end <= dfa_start
    ref = local_reference(tmp_path, sets)
    for rid in ("frozen-s42", "dfa-s42"):
        assert epochs_of(audit, rid) == epochs_of(ref, rid)
    kinds = [(type(e).__name__, e.run_id) for e in events]
    assert kinds.count(("EpochDone", "dfa-s42")) == 2 and ("RunEnded", "frozen-s42") in kinds
    jobs = (audit.path / SLURM_DIR / JOBS).read_text()
    assert '"frozen-s42"' in jobs and '"dfa-s42"' in jobs


def test_stop_ends_a_running_job_at_its_next_batch_with_a_stopped_line(tmp_path: Path) -> None:
    sets = tiny("methods=[frozen]", "seeds=[42]", "epochs=10000", "synthetic.n_train=4096", "executor=slurm",
                "slurm.cluster=local")
    audit = Audit.create(load_config(None, sets), tmp_path)
    runner = SlurmRunner(audit)
    runner.submit_unfinished()

    def stop_after_an_epoch() -> None:
        deadline = time.monotonic() + WAIT_S
        while not read_run(audit.run_dir("frozen-s42") / RECORDS).epochs:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        runner.stop()

    threading.Thread(target=stop_after_an_epoch, daemon=True).start()
    assert runner.run() == {"frozen-s42": "stopped"}
    log = read_run(audit.run_dir("frozen-s42") / RECORDS)
    assert log.end.status == "stopped" and (audit.run_dir("frozen-s42") / "checkpoint.pt").is_file()


def test_without_sbatch_on_path_slurm_is_refused_before_anything_is_written(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda tool: None)
    with pytest.raises(ConfigError, match="sbatch, squeue, scancel is not on PATH"):
        check_slurm(load_config(None, tiny("executor=slurm")))


def test_extra_sbatch_lines_become_submitit_parameters() -> None:
    from engine.slurm import _sbatch_extra

    assert _sbatch_extra(["--account=ml", "#SBATCH --qos low", "--exclusive"]) == {
        "account": "ml", "qos": "low", "exclusive": True}
    with pytest.raises(ConfigError, match="not an sbatch option"):
        _sbatch_extra(["--"])


# ---- the real cluster -------------------------------------------------------------------
def cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return proc.returncode == 0 and any(s in proc.stdout for s in ("idle", "mix", "alloc"))


def needs_cluster() -> None:
    if cluster_up():
        return
    if os.environ.get("CI") == "true":  # .ci/run starts one: its absence is a failure there, never a skip
        pytest.fail("no SLURM cluster: .ci/run starts one with .ci/slurm-up before the slow tier")
    pytest.skip("no SLURM cluster here (run .ci/slurm-up as root)")


def job_of(audit: Audit, rid: str) -> str:
    log = read_run(audit.run_dir(rid) / RECORDS)
    return log.starts[-1].job


def wait(cond, what: str, limit_s: float = 600.0) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


@pytest.mark.slow
def test_a_requeued_and_a_cancelled_job_resume_and_the_records_equal_a_local_runs(tmp_path: Path) -> None:
    needs_cluster()
    # epochs of about a second each on one core: long enough to requeue and cancel a job mid-run
    sets = tiny("methods=[dfa,frozen]", "seeds=[42]", "epochs=8", "d=64", "synthetic.n_train=65536",
                "reuse=false")
    cfg = load_config(None, sets + ["executor=slurm", "slurm.cluster=slurm", "slurm.mem_gb=2", "slurm.time_min=30"])
    audit = Audit.create(cfg, tmp_path / "cluster")
    dfa = audit.run_dir("dfa-s42") / RECORDS

    runner = SlurmRunner(audit)
    runner.submit_unfinished()
    statuses: dict[str, str] = {}
    thread = threading.Thread(target=lambda: statuses.update(runner.run()), daemon=True)
    thread.start()
    # requeue dfa's job once it has two epochs: SIGTERM stops the run at its next batch, and
    # SLURM starts the job again, same job id, from the run's checkpoint
    wait(lambda: dfa.is_file() and len(read_run(dfa).epochs) >= 2, "dfa trains in its job")
    job = job_of(audit, "dfa-s42")
    assert read_run(dfa).end is None, "the run ended before the test could requeue it: make its epochs longer"
    subprocess.run(["scontrol", "requeue", job], check=True)
    wait(lambda: len(read_run(dfa).starts) >= 2, "the requeued job starts again")
    log = read_run(dfa)
    again = log.starts[-1]
    assert again.job == job and again.job_restarts == 1 and again.epoch >= 2  # from its checkpoint
    # then cancel it outright: the runner sees the job gone and reports the run stopped
    wait(lambda: len(read_run(dfa).epochs) > again.epoch + 1, "it trains on after the requeue")
    assert read_run(dfa).end is None, "the run ended before the test could cancel it: make its epochs longer"
    subprocess.run(["scancel", job], check=True)
    thread.join(600)
    assert statuses == {"frozen-s42": "finished", "dfa-s42": "stopped"}

    # resume submits it again: a new job continues from its checkpoint to the end
    resumed = SlurmRunner(Audit.open(audit.path))
    assert [s.run_id for s in resumed.submit_unfinished()] == ["dfa-s42"]
    assert resumed.run() == {"dfa-s42": "finished"}
    starts = read_run(dfa).starts
    assert len(starts) == 3 and starts[-1].job != job and starts[-1].job_restarts == 0

    ref = local_reference(tmp_path, sets)
    for rid in ("frozen-s42", "dfa-s42"):
        got, want = epochs_of(audit, rid), epochs_of(ref, rid)
        assert [e["epoch"] for e in got] == list(range(1, 9))  # complete, each epoch once
        assert got == want, rid
