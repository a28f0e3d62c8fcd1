"""``executor: slurm``: one SLURM job per run, submitted with submitit, into the shared runs dir.

The submitting process (``faeval-tui run --executor slurm``, ``resume``, or the console's
trainer) checks the audit as a local run would (``resume_state``, ``check_audit_config``:
nothing is submitted for an audit that cannot be trusted), then submits each run as a job
once its frozen baseline has finished (a run's epoch lines store the baseline's accuracy
at the same epoch, so a method run never starts before its baseline's records exist). It
follows the runs through their records, as ``watch`` does, and sends the same events a
local runner sends, so the progress display, the alerts and ``--on-alert`` are unchanged.

In a job (``train_job``) the run trains with ``trainer.train_run``, which always continues
from the run's checkpoint: a job that SLURM preempts or requeues (``scontrol requeue``, a
time limit: submitit's ``Checkpointable`` requeues it on USR2) starts again and resumes
where the run's records and checkpoint say, so its records come out as a local run's. The
job holds the audit's lock shared (so a local ``run``/``resume`` of the same audit is
refused) and the run's own ``run.lock`` (one writer per run). Each start line records the
job id and its restart count (``records.Start.job``). ``stop`` sends running jobs USR1 (the
run stops at its next batch with a ``stopped`` end line and keeps its checkpoint) and
cancels pending ones. ``<audit>/slurm/jobs.json`` lists every job submitted for each run.

Without an accounting database submitit cannot tell a cancelled job from a pending one, so
jobs are followed with ``squeue`` (a job it no longer lists has ended); with submitit's
local backend (``slurm.cluster: local``, for tests without a cluster) by the job itself.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from .audit import Audit
from .checkpoint import check_audit_config, resume_state
from .config import AuditConfig
from .errors import ConfigError, StoreError
from .events import EpochDone, Listener, RunEnded, RunStarted, ignore
from .plan import RunSpec
from .records import End, Epoch, Header, Start
from .runstore import RECORDS, AuditLock, RecordReader, RunLock, atomic_write_bytes
from .verdicts import new_alerts

SLURM_DIR = "slurm"
JOBS = "jobs.json"
POLL_S = 1.0


def check_slurm(cfg: AuditConfig) -> None:
    """Refuse, before anything is submitted, what SLURM cannot run (ConfigError, exit 2)."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise ConfigError("executor: slurm needs submitit, which is not installed",
                          "pip install 'faeval-tui[slurm]' (or pip install submitit)") from None
    if cfg.slurm.cluster == "slurm":
        missing = [tool for tool in ("sbatch", "squeue", "scancel") if shutil.which(tool) is None]
        if missing:
            raise ConfigError(f"executor: slurm, but {', '.join(missing)} is not on PATH: this machine is not a "
                              "SLURM login node", "submit from a machine of the cluster, or use --executor local")
        if cfg.slurm.partition:
            proc = subprocess.run(["sinfo", "-h", "-o", "%P", "-p", cfg.slurm.partition], capture_output=True,
                                  text=True)
            if proc.returncode == 0 and not proc.stdout.strip():
                known = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True).stdout.split()
                raise ConfigError(f"slurm.partition: SLURM has no partition {cfg.slurm.partition!r} (it has: "
                                  f"{', '.join(p.rstrip('*') for p in known) or 'none listed'})",
                                  "set slurm.partition to one of them, or leave it unset for the default")


# ---- in the job ----------------------------------------------------------------------
def train_job(audit_dir: str, run_id: str) -> str:
    """Train (or continue) one run of the audit; returns its status. What each job runs."""
    from .data import load_task
    from .device import apply_threads, training_device
    from .trainer import train_run

    audit = Audit.open(audit_dir)
    spec = next((s for s in audit.planned() if s.run_id == run_id), None)
    if spec is None:
        raise ConfigError(f"{audit_dir} plans no run {run_id!r}", "submit runs of the audit's own plan")
    stop = threading.Event()
    # stop(): end at the next batch, keep the checkpoint. SIGTERM too, which submitit would
    # ignore: scancel and scontrol requeue send it, then SIGKILL after KillWait; stopping at
    # once leaves a `stopped` line and the checkpoint of the last epoch, and a requeued job
    # starts again from it
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    marker = stop_marker(audit.path, run_id)  # the same through the shared filesystem (no signal needed)
    watcher = threading.Thread(target=_watch_marker, args=(marker, stop), daemon=True)
    watcher.start()
    run_dir = audit.run_dir(run_id)
    run_dir.mkdir(exist_ok=True)
    # one writer per run: a duplicate job fails at the run's lock, writing nothing
    with AuditLock(audit.path, shared=True), RunLock(run_dir):
        cfg = audit.cfg
        apply_threads(cfg.threads)
        device = training_device(cfg)
        task = load_task(cfg).to(device)
        return train_run(audit, spec, task, device, ignore, stop)


def stop_marker(audit_dir: Path | str, run_id: str) -> Path:
    return Path(audit_dir) / SLURM_DIR / f"stop-{run_id}"


def _watch_marker(marker: Path, stop: threading.Event, every_s: float = 0.5) -> None:
    while not stop.wait(every_s):
        if marker.exists():
            stop.set()


def _checkpointable():
    """submitit's Checkpointable around ``train_job``: on USR2 (time limit, preemption) the
    job is requeued with the same arguments, and ``train_run`` resumes from the checkpoint."""
    import submitit

    class TrainJob(submitit.helpers.Checkpointable):
        def __call__(self, audit_dir: str, run_id: str) -> str:
            return train_job(audit_dir, run_id)

    return TrainJob()


# ---- the submitting side --------------------------------------------------------------
def _sbatch_extra(lines: list[str]) -> dict[str, Any]:
    """'--account=ml', '--qos low', 'exclusive' → submitit's slurm_additional_parameters."""
    out: dict[str, Any] = {}
    for line in lines:
        text = line.strip().removeprefix("#SBATCH").strip().lstrip("-")
        key, sep, value = text.replace(" ", "=", 1).partition("=")
        if not key:
            raise ConfigError(f"slurm.extra: {line!r} is not an sbatch option", "write it as '--key=value'")
        out[key.replace("-", "_")] = value if sep else True
    return out


class SlurmRunner:
    """The local runner's interface (``submit``, ``submit_unfinished``, ``run``, ``stop``,
    ``pending``, ``stop_event``), with one SLURM job per run."""

    def __init__(self, audit: Audit, listener: Listener = ignore) -> None:
        check_slurm(audit.cfg)
        self.audit = audit
        self.listener = listener
        self.stop_event = threading.Event()
        self._lock = threading.RLock()  # _alive asks squeue under it, and squeue reads the jobs under it too
        self._pending: list[RunSpec] = []
        self._jobs: dict[str, Any] = {}  # run_id → its submitit job (the latest)
        self._readers: dict[str, RecordReader] = {}
        self._seen: dict[str, list[Epoch]] = {}
        self._headers: dict[str, Header] = {}
        self._squeue: tuple[float, set[str]] | None = None
        self.statuses: dict[str, str] = {}
        self.folder = Path(audit.cfg.slurm.folder or audit.path / SLURM_DIR)

    # the runner interface
    def submit(self, spec: RunSpec) -> None:
        self.audit.add_run(spec)
        with self._lock:
            if spec.run_id not in self._jobs and spec not in self._pending:
                self._pending.append(spec)

    def submit_unfinished(self) -> list[RunSpec]:
        specs = [s for s in self.audit.planned() if self.audit.log(s.run_id).unfinished]
        for s in specs:
            self.submit(s)
        return specs

    def pending(self) -> list[RunSpec]:
        with self._lock:
            return list(self._pending)

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> dict[str, str]:
        """Submit every pending run as its baseline allows, follow them until each has ended
        (or ``stop``: running jobs get USR1, pending ones are cancelled); run_id → status."""
        with AuditLock(self.audit.path, shared=True):  # a local run/resume of this audit is refused meanwhile
            self.folder.mkdir(parents=True, exist_ok=True)
            submitter = RunLock(self.folder)
            try:
                submitter.acquire()
            except StoreError:
                raise StoreError(f"another process submits and follows {self.audit.path}'s SLURM jobs",
                                 f"follow it with `faeval-tui watch {self.audit.path}`, or stop it first") from None
            try:
                return self._run()
            finally:
                submitter.release()

    def _run(self) -> dict[str, str]:
        for spec in self.pending():
            resume_state(self.audit, spec)
            stop_marker(self.audit.path, spec.run_id).unlink(missing_ok=True)  # an earlier stop's, not this one's
        check_audit_config(self.audit)
        executor = self._executor()
        while True:
            self._submit_ready(executor)
            self._follow()
            if self.stop_event.is_set():
                self._stop_jobs()
                self._follow_until_gone()
                break
            with self._lock:
                running = [rid for rid, job in self._jobs.items() if self._alive(job)]
                waiting = bool(self._pending)
            if not running and not waiting:
                self._follow()
                break
            time.sleep(POLL_S)
        for rid in self._jobs:
            log = self.audit.log(rid)
            self.statuses[rid] = log.end.status if log.end is not None else "stopped"
        return dict(self.statuses)

    # submitting
    def _executor(self):
        import submitit

        cfg, s = self.audit.cfg, self.audit.cfg.slurm
        self.folder.mkdir(parents=True, exist_ok=True)
        executor = submitit.AutoExecutor(folder=str(self.folder / "%j"), cluster=s.cluster)
        params: dict[str, Any] = {"timeout_min": s.time_min, "cpus_per_task": s.cpus_per_run, "mem_gb": s.mem_gb,
                                  "name": f"faeval-{cfg.name}"}
        if s.gpus_per_run:
            params["gpus_per_node"] = s.gpus_per_run
        if s.cluster == "slurm":
            if s.partition:
                params["slurm_partition"] = s.partition
            extra = _sbatch_extra(s.extra)
            if extra:
                params["slurm_additional_parameters"] = extra
        executor.update_parameters(**params)
        return executor

    def _ready(self, spec: RunSpec) -> bool:
        base = self.audit.baseline_run(spec)
        if base is None:
            return True
        with self._lock:
            job = self._jobs.get(base)
            queued = any(p.run_id == base for p in self._pending)
        if job is not None and self._alive(job):
            return False
        return not queued  # its baseline ended (or is not part of this submission)

    def _submit_ready(self, executor) -> None:
        if self.stop_event.is_set():
            return
        for spec in self.pending():
            if not self._ready(spec):
                continue
            try:
                job = executor.submit(_checkpointable(), str(self.audit.path), spec.run_id)
            except Exception as err:  # sbatch refused it (a partition SLURM does not know, too much memory)
                self._stop_jobs()  # what was submitted before goes too: the audit stops here, resumable
                why = " ".join(str(err).split())[-400:]
                raise ConfigError(f"SLURM refused the job of {spec.run_id}: {why}",
                                  "check the slurm.* keys (partition, mem_gb, time_min, extra) against `sinfo` "
                                  "and your site's limits, then `faeval-tui resume DIR`") from None
            with self._lock:
                self._pending.remove(spec)
                self._jobs[spec.run_id] = job
                self._squeue = None  # ask squeue again: the cached answer predates this job
            self._write_jobs(spec.run_id, str(job.job_id))

    def _write_jobs(self, run_id: str, job_id: str) -> None:
        path = self.folder / JOBS
        try:
            jobs = json.loads(path.read_text())
        except (OSError, ValueError):
            jobs = {}
        jobs.setdefault(run_id, []).append(job_id)
        atomic_write_bytes(path, (json.dumps(jobs, indent=1) + "\n").encode())

    # following
    def _alive(self, job) -> bool:
        if self.audit.cfg.slurm.cluster == "local":
            return not job.done()
        return str(job.job_id) in self._queued_ids()

    def _queued_ids(self) -> set[str]:
        """Job ids squeue still lists (pending, running, completing, requeued)."""
        now = time.monotonic()
        cached = self._squeue
        if cached is not None and now - cached[0] < POLL_S / 2:
            return cached[1]
        with self._lock:
            ids = [str(j.job_id) for j in self._jobs.values()]
        if not ids:
            return set()
        proc = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(ids)], capture_output=True, text=True)
        listed = set(proc.stdout.split()) if proc.returncode == 0 else set()
        if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
            listed = set(ids)  # squeue itself failed: assume nothing ended rather than lose a job
        self._squeue = (now, listed)
        return listed

    def _follow(self) -> None:
        """New record lines of every submitted run, as the events a local runner sends."""
        with self._lock:
            rids = list(self._jobs)
        for rid in rids:
            reader = self._readers.setdefault(rid, RecordReader(self.audit.run_dir(rid) / RECORDS))
            for rec in reader.poll():
                self._event(rid, rec)

    def _event(self, rid: str, rec: Any) -> None:
        history = self._seen.setdefault(rid, [])
        if isinstance(rec, Header):
            self._headers[rid] = rec
        elif isinstance(rec, Start):
            header = self._headers.get(rid)
            if header is not None:
                self.listener(RunStarted(rid, header, rec.epoch))
            del history[:]
            history.extend(e for e in self.audit.log(rid).epochs if e.epoch <= rec.epoch)
        elif isinstance(rec, Epoch):
            earlier = [e for e in history if e.epoch < rec.epoch]
            alerts = new_alerts(rid, earlier, rec, self.audit.cfg.thresholds)
            history[:] = earlier + [rec]
            self.listener(EpochDone(rid, rec, alerts))
        elif isinstance(rec, End):
            self.listener(RunEnded(rid, rec.status, rec.message))

    def _stop_jobs(self) -> None:
        with self._lock:
            jobs = dict(self._jobs)
            self._pending.clear()
        for rid, job in jobs.items():
            if not self._alive(job):
                continue
            stop_marker(self.audit.path, rid).touch()  # the job stops at its next batch (its marker watcher)
            if self.audit.cfg.slurm.cluster == "slurm":  # USR1 too (its steps); a pending job just goes
                subprocess.run(["scancel", "--signal=USR1", "--state=RUNNING", str(job.job_id)],
                               capture_output=True)
                subprocess.run(["scancel", "--state=PENDING", str(job.job_id)], capture_output=True)

    def _follow_until_gone(self, grace_s: float = 60.0) -> None:
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            self._follow()
            with self._lock:
                alive = [j for j in self._jobs.values() if self._alive(j)]
            if not alive:
                return
            time.sleep(POLL_S / 2)
        for job in alive:  # it did not stop in time: cancel it (its last checkpoint stays)
            job.cancel(check=False)
