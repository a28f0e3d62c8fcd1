"""Training a run in its own process, for audits with ``workers`` > 1.

Several runs on worker *threads* share one interpreter lock: every op's Python-side
dispatch waits its turn, and side-by-side fa and frozen runs measured ~15% slower as
threads than as processes (and the console's event loop waited with them). So each
run of a multi-worker audit trains in a spawned child process:

- the task's tensors go to the child through shared memory (``torch.multiprocessing``),
  not as a copy, so two workers hold the images once;
- the child reports the engine's events on a queue, which the parent's worker thread
  hands to the listener unchanged: a listener cannot tell a child from a thread;
- the child never reacts to terminal signals itself (Ctrl-C reaches the whole process
  group): the parent's ``stop`` reaches it through an event, and it also stops at its
  next batch if the parent dies, so an orphan never trains on unseen;
- the child's stdout and stderr go to ``worker.log`` in its run directory, so nothing it
  prints can garble the console;
- a child that dies without a word (killed, out of memory) gets a ``failed`` end line
  written by the parent, with its exit code, and resumes like any failed run.
"""
from __future__ import annotations

import os
import queue
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any

import torch
import torch.multiprocessing as tmp

from .audit import Audit
from .events import Listener, RunEnded
from .methods import get_method, register_method
from .records import End
from .runstore import RECORDS, append_line, read_run
from .trainer import train_run

WORKER_LOG = "worker.log"


@dataclass(frozen=True)
class _Finished:
    status: str


class _Stop:
    """What ``train_run`` polls each batch in the child: the parent's stop event, a
    SIGTERM/SIGHUP sent to the child itself, or the parent's death."""

    def __init__(self, event: Any, parent_pid: int) -> None:
        self.event = event
        self.parent_pid = parent_pid
        self.signalled = False

    def is_set(self) -> bool:
        return self.signalled or self.event.is_set() or os.getppid() != self.parent_pid

    def set(self) -> None:
        self.signalled = True


def _child_main(audit_path: str, spec: Any, task: Any, method_cls: type, device: str, threads: int, nice: int,
                events: Any, stop_event: Any, parent_pid: int) -> None:
    stop = _Stop(stop_event, parent_pid)
    if nice:
        os.nice(nice)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it tells us through stop_event
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    status = "failed"
    log_path = None
    try:
        try:  # before the config is read: it names the method
            get_method(spec.method)
        except KeyError:  # registered at runtime in the parent (register_method in a script)
            register_method(method_cls)
        audit = Audit.open(audit_path)
        run_dir = audit.run_dir(spec.run_id)
        run_dir.mkdir(exist_ok=True)
        log_path = run_dir / WORKER_LOG
        with open(log_path, "a", encoding="utf-8") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
        torch.set_num_threads(threads)
        status = train_run(audit, spec, task.to(device), torch.device(device), events.put, stop)
    except BaseException as err:  # noqa: BLE001 - anything before train_run took over
        events.put(RunEnded(spec.run_id, "failed", f"worker process: {type(err).__name__}: {err}"))
    finally:
        events.put(_Finished(status))
        sys.stdout.flush()
        sys.stderr.flush()
        if log_path is not None and log_path.exists() and log_path.stat().st_size == 0:
            log_path.unlink()  # nothing to say: keep the run directory to its usual files


_tracker_lock = threading.Lock()


def start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker with a real file as its stderr. It passes
    ``sys.stderr.fileno()`` to its process, and a running Textual app's stderr stand-in
    answers -1 ("bad value(s) in fds_to_keep"); devnull then keeps its rare warnings off
    the console's screen."""
    from multiprocessing import resource_tracker

    with _tracker_lock:
        try:
            usable = sys.stderr is not None and sys.stderr.fileno() >= 0
        except (AttributeError, OSError, ValueError):
            usable = False
        if usable:
            resource_tracker.ensure_running()
            return
        saved = sys.stderr
        with open(os.devnull, "w") as devnull:
            sys.stderr = devnull
            try:
                resource_tracker.ensure_running()
            finally:
                sys.stderr = saved


class ChildTrainer:
    """Runs one spec in a spawned process and relays its events; ``run`` blocks until it ends."""

    context = tmp.get_context("spawn")  # fork would copy OpenMP's and the console's threads' state

    def __init__(self, audit: Any, spec: Any, task: Any, method_cls: type, device: torch.device,
                 threads: int, listener: Listener, stop_event: Any, nice: int = 0) -> None:
        self.spec = spec
        self.listener = listener
        self.events = self.context.Queue()
        self.process = self.context.Process(
            target=_child_main, name=f"faeval-run-{spec.run_id}", daemon=True,
            args=(str(audit.path), spec, task, method_cls, str(device), threads, nice, self.events, stop_event,
                  os.getpid()))
        self.records = audit.run_dir(spec.run_id) / RECORDS

    def run(self, stopping: threading.Event) -> str:
        start_resource_tracker()
        self.process.start()
        try:
            while True:
                try:
                    event = self.events.get(timeout=0.25)
                except queue.Empty:
                    if self.process.is_alive():
                        continue
                    try:  # it may have put its last events just before exiting
                        event = self.events.get(timeout=1.0)
                    except queue.Empty:
                        return self._died(stopping)
                if isinstance(event, _Finished):
                    return event.status
                self.listener(event)
        finally:
            self.process.join(timeout=10)
            self.events.close()

    def _died(self, stopping: threading.Event) -> str:
        code = self.process.exitcode
        if stopping.is_set():  # no end line: reads as stopped, and resumes from its checkpoint
            self.listener(RunEnded(self.spec.run_id, "stopped"))
            return "stopped"
        msg = f"worker process exited with code {code} without finishing the run"
        if self.records.exists():
            try:
                done = read_run(self.records).epochs
                append_line(self.records, End(status="failed", epoch=done[-1].epoch if done else 0, message=msg))
            except Exception:  # noqa: BLE001 - the missing end line still reads as resumable
                pass
        self.listener(RunEnded(self.spec.run_id, "failed", msg))
        return "failed"
