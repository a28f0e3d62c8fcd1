"""The scheduler: trains an audit's runs, ``workers`` at a time, frozen baselines first, and
reuses a finished identical run of another audit instead of training it (``engine.reuse``)."""
from __future__ import annotations

import threading
import traceback
from typing import Any

import torch

from .audit import Audit
from .checkpoint import check_audit_config, resume_state
from .data import TaskData, check_diagnostic_size, load_task, loaded_from_config, task_fingerprint
from .device import apply_threads, drop_shared_pages, precision_warning, release_freed_memory, training_device
from .errors import DataError, StoreError
from .events import EpochDone, Listener, RunEnded, RunStarted, ignore
from .plan import RunSpec
from .records import Epoch, Header
from .reuse import (
    NotReusable,
    Warn,
    candidates,
    copy_run,
    fresh,
    key_contents,
    key_of,
    remember,
    stderr_warning,
    verify,
)
from .runstore import AuditLock, list_runs, write_config
from .sizing import check_fits
from .trainer import train_run
from .userdata import short
from .verdicts import new_alerts
from .worker import ChildTrainer, start_resource_tracker


class AuditRunner:
    """Trains an audit's runs, ``workers`` at a time, frozen baselines first.

    With one worker the run trains in the calling thread; with more, each worker thread
    hands its run to a child process (``engine.worker``) and relays its events. ``nice``
    lowers the children's CPU priority: the console passes 10 so that its event loop wins
    the cores whenever it has work (p99 lag 31 ms instead of 96 ms measured with two runs).

    ``submit`` may add runs while it works (penalty reruns); ``stop`` asks every run to
    end at its next batch, keeping its last checkpoint.

    ``task``: data handed in from Python. Unless it is ``load_task(audit.cfg)``'s, unchanged,
    its fingerprint (``data.task_fingerprint``) pins the audit to it: written into config.yaml
    as ``data_sha256`` here, before anything trains, when the audit has none yet; compared
    with it when it has one (a different TaskData is refused). Such an audit cannot load its
    data from its config: ``faeval-tui resume`` refuses it, and it resumes from Python with
    the same TaskData. An npz audit's ``data_sha256`` is its file's digest (``load_task``
    checks it); one created without it gets it on its first training.

    Reuse (config ``reuse``, ``engine.reuse``): before a fresh run trains, a finished run with
    the same key in an audit of the same runs dir is verified and copied instead, in this
    process (before any child is spawned); the listener hears the events training would send.
    ``reused`` maps each such run to its source directory; ``not_reused`` lists, per run, why
    a candidate was refused, each also passed to ``warn`` (default: a line on stderr). A run
    that ends finished here goes into the audit's index (``reuse.json``) for later audits.
    """

    def __init__(self, audit: Audit, listener: Listener = ignore, workers: int | None = None,
                 task: TaskData | None = None, nice: int = 0, warn: Warn | None = None) -> None:
        if audit.tracked:  # its runs are the user's models, trained in the user's loop
            raise StoreError(f"{audit.path} was measured in your own training loop (engine.tracker): the engine "
                             "cannot train or resume its runs",
                             f"rerun your script to track new runs; follow or report this one with "
                             f"`faeval-tui watch {audit.path}` or `faeval-tui export {audit.path}`")
        self.audit = audit
        self.listener = listener
        self.workers = workers or audit.cfg.workers
        self.stop_event = threading.Event()
        self._child_stop: Any = None  # the multiprocessing twin of stop_event, once children exist
        self.device = training_device(audit.cfg)
        if task is not None:
            self._adopt(task)
        self._task = None if task is None else self._placed(task)
        self.nice = nice
        self._cond = threading.Condition()
        self._pending: list[RunSpec] = []
        self._active: set[str] = set()
        self._done: set[str] = set()
        self.statuses: dict[str, str] = {}
        self._keep_alive = False
        self.warn: Warn = warn or stderr_warning
        if (slow := precision_warning(audit.cfg, self.device)) is not None:
            self.warn(slow)
        self.reused: dict[str, str] = {}  # run_id → the run directory it was copied from
        self.not_reused: dict[str, list[str]] = {}  # run_id → why each candidate source was refused
        self._keys: dict[str, tuple[str | None, dict[str, Any] | None]] = {}
        self._fingerprint: str | None = None

    @property
    def task(self) -> TaskData:
        with self._cond:
            if self._task is None:
                self._task = self._placed(load_task(self.audit.cfg))
            return self._task

    def _trained(self) -> bool:
        """Some run of the audit has records (so it trained, or started to, under config.yaml)."""
        return bool(list_runs(self.audit.path)) if self.audit.path.is_dir() else False

    def _pin(self, digest: str, locked: bool) -> None:
        """config.yaml gets ``data_sha256: digest``, atomically, under the audit's lock."""
        cfg = self.audit.cfg
        if locked:
            cfg.data_sha256 = digest
            write_config(self.audit.path, cfg.dump())
            return
        with AuditLock(self.audit.path):  # another process training it is refused, as ``run`` would be
            cfg.data_sha256 = digest
            write_config(self.audit.path, cfg.dump())

    def _adopt(self, task: TaskData) -> None:
        """Check a handed-in task against the audit and pin the audit to it (see the class)."""
        cfg = self.audit.cfg
        if loaded_from_config(cfg, task):  # load_task checked it against data_sha256 already
            if cfg.dataset == "npz" and cfg.data_sha256 is None and task.file_sha256 and not self._trained():
                self._pin(task.file_sha256, locked=False)
            return
        check_diagnostic_size(cfg, task.x_test.shape[0])
        fingerprint = task_fingerprint(task)
        if cfg.data_sha256 is not None:
            if fingerprint != cfg.data_sha256:
                raise DataError(f"the TaskData handed in is not the data {self.audit.path} trained on: its "
                                f"fingerprint is {short(fingerprint)}, the audit's data_sha256 "
                                f"{short(cfg.data_sha256)}",
                                "hand in the TaskData the audit was created with (AuditRunner(audit, task=…)), "
                                "or start a new audit for this data")
            return
        if self._trained():
            # its runs trained on the data its config names: go on only if this is the same data
            try:
                same = task_fingerprint(load_task(cfg)) == fingerprint
            except DataError:
                same = False
            if not same:
                raise DataError(f"{self.audit.path} trained on the {cfg.dataset} data its config names; the "
                                f"TaskData handed in (fingerprint {short(fingerprint)}) is other data",
                                "resume it without task= (faeval-tui resume DIR), or start a new audit for this data")
            return
        self._pin(fingerprint, locked=False)

    def _placed(self, task: TaskData) -> TaskData:
        # children take the images from shared memory and move them to the device themselves
        return task if self.workers > 1 else task.to(self.device)

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

    def pending(self) -> list[RunSpec]:
        """Runs submitted and not started yet."""
        with self._cond:
            return list(self._pending)

    def preflight(self) -> None:
        """Fail before any thread starts, with nothing written (``StoreError``): every pending
        run's checkpoint must load, be its own and not be ahead of its records, config.yaml must
        still say what every run was trained under (``trainer.resume_state`` and
        ``check_audit_config``), the runs must fit in this machine's memory (``sizing.check_fits``)
        and the data must load."""
        with self._cond:
            pending = list(self._pending)
        for spec in pending:
            resume_state(self.audit, spec)
        check_audit_config(self.audit)
        if pending:
            check_fits(self.audit.cfg, resuming=True)  # a resume may run on another, smaller machine than the start
        _ = self.task

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

    # ------------------------------------------------------------------ reuse (engine.reuse)

    def run_key(self, spec: RunSpec) -> str | None:
        """``spec``'s reuse key in this audit (``engine.reuse``); None when its method's code
        cannot be read, or its baseline has no key."""
        return self._key(spec)[0]

    def _key(self, spec: RunSpec) -> tuple[str | None, dict[str, Any] | None]:
        if spec.run_id in self._keys:
            return self._keys[spec.run_id]
        base_key = None
        base = self.audit.baseline_run(spec)
        if base is not None:
            base_spec = next((s for s in self.audit.planned() if s.run_id == base), None)
            base_key = None if base_spec is None else self._key(base_spec)[0]
        if base is not None and base_key is None:
            out: tuple[str | None, dict[str, Any] | None] = (None, None)
        else:
            if self._fingerprint is None:
                self._fingerprint = task_fingerprint(self.task)
            contents = key_contents(self.audit.cfg, spec, self._fingerprint, self.device.type, base_key)
            out = (None, None) if contents["code"] is None else (key_of(contents), contents)
        self._keys[spec.run_id] = out
        return out

    def _reuse(self, spec: RunSpec) -> bool:
        """Copy a verified identical finished run into ``spec`` instead of training it (True),
        or leave it to train (False); each refused candidate is reported (``not_reused``,
        ``warn``). Never raises."""
        refused: list[str] = []
        reused = None
        try:
            cfg = self.audit.cfg
            if not cfg.reuse or not fresh(self.audit, spec):
                return False
            key, contents = self._key(spec)
            if key is None or contents is None:
                return False
            base = self.audit.baseline_run(spec)
            base_acc = None if base is None else {e.epoch: e.test_acc for e in self.audit.log(base).epochs}
            target = self.audit.run_dir(spec.run_id)
            for run_dir, entry in candidates(self.audit.path.parent, key, exclude=target):
                try:
                    source = verify(run_dir, entry, cfg, spec, contents, base_acc)
                except NotReusable as err:
                    refused.append(f"not reused from {run_dir}: {err}")
                    continue
                header, epochs = copy_run(self.audit, spec, source)
                reused = self.reused[spec.run_id] = str(run_dir)
                self._remember(spec, key, reused_from=reused)
                self._replay(spec, header, epochs, run_dir)
                return True
        except Exception as err:  # noqa: BLE001 - reuse is an optimisation: the run trains instead
            refused.append(f"not reused: {type(err).__name__}: {err}")
        finally:
            outcome = f" (reused from {reused} instead)" if reused else "; it trains"
            for reason in refused:
                self.not_reused.setdefault(spec.run_id, []).append(reason + outcome)
                self.warn(f"{spec.run_id}: {reason}{outcome}")
        return False

    def _remember(self, spec: RunSpec, key: str | None = None, reused_from: str | None = None) -> None:
        """Index a run that ended finished (``engine.reuse.remember``); a failure is only reported."""
        try:
            if not self.audit.cfg.reuse:
                return
            key = key or self._key(spec)[0]
            if key is not None:
                remember(self.audit, spec, key, reused_from)
        except Exception as err:  # noqa: BLE001 - the run is finished either way
            self.warn(f"{spec.run_id}: finished, but not offered for reuse: {type(err).__name__}: {err}")

    def _replay(self, spec: RunSpec, header: Header, epochs: list[Epoch], source: Any) -> None:
        """The events training ``spec`` would have sent, for a reused run."""
        failed: list[bool] = []

        def hear(event: Any) -> None:
            try:
                self.listener(event)
            except Exception:  # noqa: BLE001 - the records on disk stay the source of truth
                if not failed:
                    failed.append(True)
                    traceback.print_exc()

        th, history = self.audit.cfg.thresholds, []
        hear(RunStarted(spec.run_id, header, 0))
        for rec in epochs:
            alerts = new_alerts(spec.run_id, history, rec, th)
            history.append(rec)
            hear(EpochDone(spec.run_id, rec, alerts))
        hear(RunEnded(spec.run_id, "finished", f"reused from {source}"))

    # ------------------------------------------------------------------ training

    def _worker(self) -> None:
        from .methods import get_method

        while (spec := self._next()) is not None:
            status = "failed"
            try:
                if self._reuse(spec):
                    status = "finished"
                else:
                    if self.workers > 1:
                        status = ChildTrainer(self.audit, spec, self.task, get_method(spec.method), self.device,
                                              self.audit.cfg.threads, self.listener, self._child_stop,
                                              self.nice).run(self.stop_event)
                    else:
                        status = train_run(self.audit, spec, self.task, self.device, self.listener,
                                           self.stop_event)
                    if status == "finished":
                        self._remember(spec)
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
        try:
            with AuditLock(self.audit.path):
                apply_threads(self.audit.cfg.threads)  # the thread policy: engine/device.py
                self.preflight()
                task, cfg = self.task, self.audit.cfg
                if cfg.dataset == "npz" and cfg.data_sha256 is None and task.file_sha256 and not self._trained():
                    self._pin(task.file_sha256, locked=True)  # an npz audit created without it (from Python)
                if self.workers == 1:
                    # train in the calling thread: a second OpenMP team (this thread's, from loading
                    # the data, beside a worker's) oversubscribes the cores and slowed small models 4x
                    self._worker()
                else:
                    task = self.task
                    for t in (task.x_train, task.y_train, task.x_test, task.y_test, task.scale, task.shift):
                        if t is not None:
                            t.share_memory_()  # once, here, not raced by two workers pickling it
                            drop_shared_pages(t)  # the children read it; this process no longer needs it mapped
                    release_freed_memory()  # the private copies just freed: 150 MiB of CIFAR's heap
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
            apply_threads(threads_before)
        return dict(self.statuses)
