"""``faeval-tui run`` / ``resume``: train an audit with a Rich progress display, or plain
lines when stdout is not a terminal (nohup, CI, pipes)."""
from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from engine.audit import Audit
from engine.control import Inbox
from engine.data import TaskData
from engine.eta import time_left
from engine.events import BatchProgress, EpochDone, Event, RunEnded, RunStarted
from engine.fmt import pct
from engine.records import Epoch
from engine.scheduler import AuditRunner
from engine.slurm import SlurmRunner
from engine.verdicts import Alert, live_label, verdict


def _line(run_id: str, rec: Epoch) -> str:
    fired = ",".join(rec.fired) or "-"
    return (f"{run_id:<22} epoch {rec.epoch:>3}  acc {pct(rec.test_acc)}%  growth {rec.growth:.3g}  "
            f"g_L {rec.g_L:.2e}  stab {rec.stability:+.2f}  Γ {rec.gamma:+.3f}  fired {fired}")


def _time_left(audit: Audit) -> str:
    """'5 of 12 runs ended · about 31 min left', from the records on disk (this process
    holds the audit's lock, so a run without an end line is running or queued)."""
    runs = [(spec.method, audit.log(spec.run_id)) for spec in audit.planned()]
    ended = sum(log.end is not None for _, log in runs)
    left = time_left([(m, log, log.status(True)) for m, log in runs], audit.cfg.workers, audit.cfg.epochs)
    if not left:
        return ""
    return f"{ended} of {len(runs)} runs ended · {left}"


def _follow_controls(inbox: Inbox, runner: AuditRunner, done: threading.Event, every_s: float = 0.5) -> None:
    """The control folder, every half second: a stop request stops the runs, a run request
    is queued (``engine.control``), until ``done``."""
    while not done.wait(every_s):
        if inbox.stop_requested():
            print("stop requested through the audit directory", file=sys.stderr, flush=True)
            runner.stop()
            return
        for spec in inbox.take_runs(runner.submit):
            print(f"{spec.run_id:<22} queued (requested through the audit directory)", file=sys.stderr, flush=True)


def run_headless(audit: Audit, task: TaskData | None = None,
                 on_alert: Callable[[Alert], None] | None = None) -> dict[str, str]:
    """Train every unfinished run of ``audit``; run_id → final status. ``on_alert`` is called
    with each walk-back alert as it is raised (``--on-alert``'s ``AlertHook``: it returns at
    once), from the training threads."""
    console = Console(stderr=True)
    tty = console.is_terminal
    lock = threading.Lock()
    history: dict[str, list[Epoch]] = {}
    progress = Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console,
                        transient=False) if tty else None
    tasks: dict[str, Any] = {}

    def listener(event: Event) -> None:
        with lock:
            if isinstance(event, RunStarted):
                # a resumed run's streaks began before the resume: its earlier records count
                history[event.run_id] = [rec for rec in audit.log(event.run_id).epochs
                                         if rec.epoch <= event.resumed_from] if event.resumed_from else []
                if progress is not None:
                    tasks[event.run_id] = progress.add_task(event.run_id, total=event.header.epochs,
                                                            completed=event.resumed_from, status="running")
                else:
                    print(f"{event.run_id:<22} started" + (f" (resumed after epoch {event.resumed_from})"
                                                           if event.resumed_from else ""),
                          file=sys.stderr, flush=True)
            elif isinstance(event, EpochDone):
                history[event.run_id].append(event.record)
                # a fire short of the alert rule reads "firing (d) 1/4" while the run trains
                label = live_label(history[event.run_id], audit.cfg.thresholds) or verdict(history[event.run_id]).label
                if progress is not None:
                    progress.update(tasks[event.run_id], completed=event.record.epoch, status=label)
                    for alert in event.alerts:
                        progress.console.print(f"[bold red]WALK BACK[/] {alert.text}")
                else:
                    print(_line(event.run_id, event.record), file=sys.stderr, flush=True)
                    for alert in event.alerts:
                        print(f"WALK BACK {alert.text}", file=sys.stderr, flush=True)
                if on_alert is not None:
                    for alert in event.alerts:
                        try:
                            on_alert(alert)
                        except Exception as err:  # noqa: BLE001 - a hook never stops training
                            print(f"warning: --on-alert: {err}", file=sys.stderr, flush=True)
            elif isinstance(event, RunEnded):
                msg = f"{event.run_id:<22} {event.status}" + (f": {event.message}" if event.message else "")
                left = _time_left(audit)
                if progress is not None:
                    progress.update(tasks[event.run_id], status=event.status)
                    if event.status != "finished":
                        progress.console.print(msg)
                    if left:
                        progress.console.print(left)
                else:
                    print(msg, file=sys.stderr, flush=True)
                    if left:
                        print(left, file=sys.stderr, flush=True)
            elif isinstance(event, BatchProgress) and progress is not None:
                progress.update(tasks[event.run_id], completed=event.epoch - 1 + event.batch / event.batches)

    # executor slurm: one job per run (its data is loaded in the job); local: this machine
    runner = SlurmRunner(audit, listener) if audit.cfg.executor == "slurm" else AuditRunner(audit, listener, task=task)
    inbox = Inbox(audit.path, list(audit.cfg.methods) + list(audit.cfg.penalty_methods))
    runner.submit_unfinished()
    inbox.take_runs(runner.submit)  # reruns a console asked for while nothing trained
    # Ctrl-C or a closed terminal stops the runs at their next batch; their checkpoints stay
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    for sig in previous:
        signal.signal(sig, lambda *_: runner.stop())
    print(f"audit directory: {audit.path}", file=sys.stderr, flush=True)
    polling = threading.Event()

    def follow() -> threading.Thread:
        thread = threading.Thread(target=_follow_controls, args=(inbox, runner, polling), name="faeval-control",
                                  daemon=True)
        thread.start()
        return thread

    poller = follow()
    statuses: dict[str, str] = {}
    try:
        while True:
            if progress is not None:
                with progress:
                    statuses.update(runner.run())
            else:
                statuses.update(runner.run())
            polling.set()  # no more requests taken: what is queued now is trained below or by a later trainer
            poller.join()
            if runner.stop_event.is_set() or not runner.pending():
                break
            polling.clear()  # a request taken as the last run ended: train it too
            poller = follow()
    finally:
        polling.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for why in inbox.refused:
        print(f"refused: {why}", file=sys.stderr, flush=True)
    if runner.stop_event.is_set():
        print(stopped_line(audit), file=sys.stderr, flush=True)
    return statuses


def stopped_line(audit: Audit) -> str:
    """What a trainer says when it was stopped: how to go on, or, when the stop came as the
    last epoch ended (its diagnostics), that nothing is left."""
    if any(audit.log(s.run_id).unfinished for s in audit.planned()):
        return f"stopped; continue with: faeval-tui resume {audit.path}"
    return "stopped after every run had finished: nothing to resume"
