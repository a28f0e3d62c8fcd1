"""An audit: its directory, its planned runs, and the scheduler that trains them.

Runs of one seed compare against the frozen-blocks run of the same seed at the same
epoch, so the scheduler trains ``frozen-s<seed>`` before the runs that need it.
"""
from __future__ import annotations

import fcntl
import os
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from .config import AuditConfig, validate
from .data import TaskData, load_task
from .errors import ConfigError, StoreError
from .events import Listener, ignore
from .runstore import (RECORDS, SCHEMA_VERSION, RecordWriter, RunLog, list_runs, now_iso, read_config,
                       read_run, safe_child, write_config)


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    method: str
    seed: int
    penalty: float = 0.0
    parent: str | None = None

    def header_fields(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "method": self.method, "seed": self.seed,
                "penalty": self.penalty, "parent": self.parent}


def make_header(cfg: AuditConfig, spec: RunSpec) -> dict[str, Any]:
    """The first line of a run's records: who it is and the whole config it trains under."""
    return {"type": "header", "schema": SCHEMA_VERSION, **spec.header_fields(), "epochs": cfg.epochs,
            "dataset": cfg.dataset + ("+random-targets" if cfg.random_targets else ""), "created": now_iso(),
            "config": cfg.dump()}


def run_id(method: str, seed: int, penalty: float = 0.0) -> str:
    return f"{method}-s{seed}" if not penalty else f"{method}-lam{penalty:g}-s{seed}"


def plan_runs(cfg: AuditConfig) -> list[RunSpec]:
    """frozen first (it is every other run's baseline), then methods × seeds, then penalty reruns."""
    methods = sorted(cfg.methods, key=lambda m: m != "frozen")
    specs = [RunSpec(run_id(m, s), m, s) for m in methods for s in cfg.seeds]
    for m in cfg.penalty_methods:
        for lam in cfg.penalties:
            for s in cfg.seeds:
                specs.append(RunSpec(run_id(m, s, lam), m, s, lam, run_id(m, s) if m in cfg.methods else None))
    return specs


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device = 'cuda' but CUDA is not available on this machine",
                              "use --device cpu (or auto), or install a CUDA build of PyTorch")
        return torch.device("cuda")
    return torch.device("cpu")


class AuditLock:
    """An exclusive ``flock`` on ``audit.lock``: one training process per audit directory.

    The kernel drops the lock when its process dies, so a lock left by ``kill -9`` is
    simply free again; the pid inside is only for the message.
    """

    def __init__(self, audit_dir: Path) -> None:
        self.path = audit_dir / "audit.lock"
        self._fd: int | None = None

    def acquire(self) -> "AuditLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = self.path.read_text().strip() or "?"
            raise StoreError(f"{self.path.parent} is being trained by another process (pid {pid})",
                             f"follow it with `faeval-tui watch {self.path.parent}`, or stop that process first") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "AuditLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    @staticmethod
    def is_held(audit_dir: Path) -> bool:
        """True while some process (this one included) trains the audit."""
        path = audit_dir / "audit.lock"
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops the probe's shared lock
        return False


class Audit:
    """An audit directory with its resolved configuration."""

    def __init__(self, path: Path, cfg: AuditConfig) -> None:
        self.path = path
        self.cfg = cfg

    @classmethod
    def create(cls, cfg: AuditConfig, runs_dir: Path | str) -> "Audit":
        runs_dir = Path(runs_dir)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        try:
            runs_dir.mkdir(parents=True, exist_ok=True)
            path = safe_child(runs_dir, f"{cfg.name}-{stamp}")
            n = 1
            while path.exists():
                n += 1
                path = safe_child(runs_dir, f"{cfg.name}-{stamp}-{n}")
            path.mkdir()
        except OSError as err:
            raise StoreError(f"cannot create an audit directory in {runs_dir}: {err.strerror}",
                             "choose a writable --runs-dir") from None
        write_config(path, cfg.dump())
        return cls(path, cfg)

    @classmethod
    def open(cls, path: Path | str) -> "Audit":
        path = Path(path)
        if not path.is_dir():
            raise StoreError(f"{path} is not a directory", "give an audit directory that `faeval-tui run` printed")
        return cls(path, validate(read_config(path), str(path / "config.yaml")))

    def planned(self) -> list[RunSpec]:
        """The config's plan plus runs added later (penalty reruns from the console)."""
        specs = {s.run_id: s for s in plan_runs(self.cfg)}
        for run_dir in list_runs(self.path):
            h = read_run(run_dir / RECORDS).header
            if h and h["run_id"] not in specs:
                specs[h["run_id"]] = RunSpec(h["run_id"], h["method"], h["seed"], h.get("penalty", 0.0),
                                             h.get("parent"))
        return list(specs.values())

    def add_run(self, spec: RunSpec) -> None:
        """Put a run outside the config's plan (a penalty rerun) on disk at once, so a
        queued rerun survives a quit and ``planned`` and ``watch`` see it."""
        if spec.run_id in {s.run_id for s in plan_runs(self.cfg)}:
            return
        run_dir = self.run_dir(spec.run_id)
        path = run_dir / RECORDS
        if path.exists():
            return
        try:
            run_dir.mkdir(exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create {run_dir}: {err.strerror}", "check the disk and permissions") from None
        writer = RecordWriter(path)
        try:
            writer.append(make_header(self.cfg, spec))
        finally:
            writer.close()

    def run_dir(self, rid: str) -> Path:
        return safe_child(self.path, rid)

    def log(self, rid: str) -> RunLog:
        path = self.run_dir(rid) / RECORDS
        return read_run(path) if path.exists() else RunLog(rid)

    def logs(self) -> list[RunLog]:
        return [self.log(s.run_id) for s in self.planned()]

    def is_live(self) -> bool:
        return AuditLock.is_held(self.path)

    def baseline_run(self, spec: RunSpec) -> str | None:
        if spec.method == "frozen" or "frozen" not in self.cfg.methods:
            return None
        return run_id("frozen", spec.seed)

    def baseline_acc(self, spec: RunSpec, epoch: int) -> float | None:
        rid = self.baseline_run(spec)
        if rid is None:
            return None
        for rec in self.log(rid).epochs:
            if rec["epoch"] == epoch:
                return rec["test_acc"]
        return None


class AuditRunner:
    """Trains an audit's runs, ``workers`` at a time, frozen baselines first.

    With one worker the run trains in the calling thread; with more, each worker thread
    hands its run to a child process (``engine.worker``) and relays its events. ``nice``
    lowers the children's CPU priority: the console passes 10 so that its event loop wins
    the cores whenever it has work (p99 lag 31 ms instead of 96 ms measured with two runs).

    ``submit`` may add runs while it works (penalty reruns); ``stop`` asks every run to
    end at its next batch, keeping its last checkpoint.
    """

    def __init__(self, audit: Audit, listener: Listener = ignore, workers: int | None = None,
                 task: TaskData | None = None, nice: int = 0) -> None:
        self.audit = audit
        self.listener = listener
        self.workers = workers or audit.cfg.workers
        self.stop_event = threading.Event()
        self._child_stop: Any = None  # the multiprocessing twin of stop_event, once children exist
        self.device = resolve_device(audit.cfg.device)
        if audit.cfg.precision == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("precision = 'bf16' but this GPU has no bfloat16 support",
                              "use --set precision=fp32 (bfloat16 needs an Ampere or newer GPU)")
        self._task = task
        self.nice = nice
        self._cond = threading.Condition()
        self._pending: list[RunSpec] = []
        self._active: set[str] = set()
        self._done: set[str] = set()
        self.statuses: dict[str, str] = {}
        self._keep_alive = False

    @property
    def task(self) -> TaskData:
        with self._cond:
            if self._task is None:
                task = load_task(self.audit.cfg)
                # children take the images from shared memory and move them to the device themselves
                self._task = task if self.workers > 1 else task.to(self.device)
            return self._task

    def submit(self, spec: RunSpec) -> None:
        self.audit.add_run(spec)
        with self._cond:
            if spec.run_id not in self._active and spec not in self._pending:
                self._pending.append(spec)
            self._cond.notify_all()

    def submit_unfinished(self) -> list[RunSpec]:
        """Queue every planned run that has not ended (fresh, stopped, failed or killed)."""
        specs = [s for s in self.audit.planned() if self.audit.log(s.run_id).unfinished]
        for s in specs:
            self.submit(s)
        for s in self.audit.planned():
            if s not in specs:
                self._done.add(s.run_id)
        return specs

    def preflight(self) -> None:
        """Fail before any thread starts, with nothing written: the data must load and
        every checkpoint a pending run will resume from must be readable."""
        from .trainer import load_checkpoint

        _ = self.task
        with self._cond:
            pending = list(self._pending)
        for spec in pending:
            ckpt = self.audit.run_dir(spec.run_id) / "checkpoint.pt"
            if ckpt.exists() and load_checkpoint(ckpt).get("run_id") != spec.run_id:
                raise StoreError(f"checkpoint {ckpt} belongs to another run, not {spec.run_id!r}",
                                 "move the foreign checkpoint away (the run then restarts from scratch)")

    def stop(self) -> None:
        self.stop_event.set()
        if self._child_stop is not None:
            self._child_stop.set()
        with self._cond:
            self._cond.notify_all()

    def _ready(self, spec: RunSpec) -> bool:
        base = self.audit.baseline_run(spec)
        if base is None or base in self._done:
            return True
        # the baseline is neither queued nor running (e.g. it ended before this process started)
        return base not in self._active and all(p.run_id != base for p in self._pending)

    def _next(self) -> RunSpec | None:
        with self._cond:
            while True:
                if self.stop_event.is_set():
                    return None
                for spec in self._pending:
                    if self._ready(spec):
                        self._pending.remove(spec)
                        self._active.add(spec.run_id)
                        return spec
                if not self._pending and not self._active and not self._keep_alive:
                    return None
                self._cond.wait(timeout=0.5)

    def _worker(self) -> None:
        from .methods import get_method
        from .trainer import train_run
        from .worker import ChildTrainer

        while (spec := self._next()) is not None:
            status = "failed"
            try:
                if self.workers > 1:
                    status = ChildTrainer(self.audit, spec, self.task, get_method(spec.method), self.device,
                                          torch.get_num_threads(), self.listener, self._child_stop,
                                          self.nice).run(self.stop_event)
                else:
                    status = train_run(self.audit, spec, self.task, self.device, self.listener, self.stop_event)
            finally:
                with self._cond:
                    self._active.discard(spec.run_id)
                    self._done.add(spec.run_id)
                    self.statuses[spec.run_id] = status
                    self._cond.notify_all()

    def run(self, keep_alive: bool = False) -> dict[str, str]:
        """Train until nothing is pending (or ``stop``); returns run_id → final status.

        With ``keep_alive`` the workers wait for more ``submit`` calls until ``stop``
        (the console, where penalty reruns arrive at any time).
        """
        self._keep_alive = keep_alive
        threads_before = torch.get_num_threads()
        if self.device.type == "cpu" and self.workers > 1:
            # one intra-op team per run: two-thread teams on a shared 2-core machine stall at
            # OpenMP barriers, and side-by-side single-thread runs measured 7-18% more throughput
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.workers))
        try:
            with AuditLock(self.audit.path):
                self.preflight()
                if self.workers == 1:
                    # train in the calling thread: a second OpenMP team (this thread's, from loading
                    # the data, beside a worker's) oversubscribes the cores and slowed small models 4x
                    self._worker()
                else:
                    from .worker import ChildTrainer, start_resource_tracker

                    task = self.task
                    for t in (task.x_train, task.y_train, task.x_test, task.y_test, task.scale, task.shift):
                        if t is not None:
                            t.share_memory_()  # once, here, not raced by two workers pickling it
                    start_resource_tracker()  # before the first semaphore (the Event) registers with it
                    self._child_stop = ChildTrainer.context.Event()
                    if self.stop_event.is_set():
                        self._child_stop.set()
                    threads = [threading.Thread(target=self._worker, name=f"faeval-worker-{i}", daemon=True)
                               for i in range(self.workers)]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
        finally:
            torch.set_num_threads(threads_before)
        return dict(self.statuses)

