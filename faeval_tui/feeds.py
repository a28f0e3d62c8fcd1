"""The two ways records reach ``AuditState``: training events, and files that grow.

``FileFeed`` follows an audit directory (``watch``, and the history of a resumed
audit); ``LiveFeed`` trains it and forwards the engine's events. Neither touches a
widget: the app posts what they produce as messages and redraws on a timer.
"""
from __future__ import annotations

import heapq
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from engine.audit import Audit
from engine.config import AuditConfig, settings_differ
from engine.errors import FaevalError
from engine.events import Event
from engine.plan import RunSpec
from engine.records import Record
from engine.runstore import RECORDS, RecordReader, list_runs
from engine.verdicts import Alert

from .state import AuditState

if TYPE_CHECKING:  # torch: imported by the training side only, so a console that follows files never loads it
    from engine.data import TaskData


class FileFeed:
    """Reads every run's records.jsonl incrementally; new run directories join as they appear."""

    def __init__(self, audit: Audit, state: AuditState, live: Callable[[], bool] | None = None) -> None:
        self.audit = audit
        self.state = state
        self.live = live or audit.is_live  # the console's own trainer is live before it takes the lock
        self.readers: dict[str, RecordReader] = {}
        self._when: dict[str, str] = {}  # per run: the time of its last line read (ISO 8601, UTC)
        for spec in audit.planned():
            state.add_spec(spec)

    def poll(self) -> list[Alert]:
        """New lines of every run since the last poll; returns the alerts they raised."""
        alerts: list[Alert] = []
        try:
            for run_dir in list_runs(self.audit.path):
                if run_dir.name not in self.readers:
                    self.readers[run_dir.name] = RecordReader(run_dir / RECORDS)
        except OSError:
            pass  # the directory is being changed under us: the next poll sees it whole
        fresh = [self._timed(run_id, reader.poll()) for run_id, reader in self.readers.items()]
        # one time line over all runs (each run's own order kept), so a history's alerts come
        # oldest first, as they would have live
        for _, run_id, rec in heapq.merge(*fresh, key=lambda item: item[0]):
            alerts += self.state.ingest_line(run_id, rec)
        self.state.set_live(self.live())
        return alerts

    def _timed(self, run_id: str, lines: list[Record]) -> list[tuple[str, str, Record]]:
        """(when, run, line): a line without a time (headers, epochs of older files) takes the
        last time its run showed, so each run's keys never decrease, as the merge needs."""
        when = self._when.get(run_id, "")
        out = []
        for rec in lines:
            when = str(getattr(rec, "time", None) or getattr(rec, "created", None) or when)
            out.append((when, run_id, rec))
        self._when[run_id] = when
        return out


class LiveFeed:
    """Trains the audit; ``listener`` hears the engine's events on the training threads."""

    def __init__(self, audit: Audit, listener: Callable[[Event], None], task: TaskData | None = None) -> None:
        self.audit = audit
        # nice: training yields the CPU to the event loop; task: the data the console loaded already
        from engine.scheduler import AuditRunner

        self.runner = AuditRunner(audit, listener, task=task, nice=10)

    def submit_unfinished(self) -> list[RunSpec]:
        return self.runner.submit_unfinished()

    def submit(self, spec: RunSpec) -> None:
        self.runner.submit(spec)

    def train(self) -> None:
        """Blocks until ``stop``: call it on a thread. Without a task the runner loads the data
        before any run starts, so a missing dataset raises its DataError here, where the console shows it."""
        self.runner.run(keep_alive=True)

    def stop(self) -> None:
        self.runner.stop()


def resumable_audits(runs_dir: Path, cfg: AuditConfig) -> list[tuple[Audit, list[str]]]:
    """Audits under ``runs_dir`` of the same preset name and settings (``settings_differ``:
    an audit of the preset with other ``--set`` values trains something else) with unfinished
    runs (stopped, failed, or no end line), newest first: ones a process trains now (to
    attach to: check ``audit.is_live()``) and ones nobody trains (to resume)."""
    found = []
    try:
        dirs = sorted((p for p in Path(runs_dir).iterdir() if (p / "config.yaml").is_file()), reverse=True)
    except OSError:
        return []
    for path in dirs:
        try:
            audit = Audit.open(path)
        except Exception:  # a damaged or foreign directory is not a resume candidate
            continue
        if audit.cfg.name != cfg.name or audit.tracked:  # a tracked audit trains in its user's loop
            continue
        if settings_differ(audit.cfg, cfg):
            continue
        try:
            logs = audit.logs()
        except FaevalError:  # e.g. a run written by a newer faeval-tui: not ours to resume
            continue
        if not any(log.header is not None for log in logs):
            continue  # never started: nothing to resume
        unfinished = [log.run_id for log in logs if log.unfinished]
        if unfinished:
            found.append((audit, unfinished))
    return found
