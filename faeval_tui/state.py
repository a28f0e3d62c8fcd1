"""The console's one state model: what every widget reads.

Two feeds fill it the same way: live training hands it engine events
(``apply``), ``watch`` hands it the lines it reads from records.jsonl files
(``ingest_line``), which become the same events. No Textual here, so it is tested
without a screen. Verdicts and alerts come from ``engine.verdicts``; nothing is
diagnosed here.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from engine.audit import fill_baselines
from engine.config import AuditConfig
from engine.events import BatchProgress, EpochDone, Event, RunEnded, RunStarted
from engine.plan import RunSpec, parse_run_id
from engine.records import End, Epoch, Header, Record, Start
from engine.runstore import RunLog
from engine.userdata import diagnostic_n_for
from engine.verdicts import Alert, Verdict, evaluate, needs_baseline, new_alerts, verdict

# (256-colour index, marker) per run, in order of appearance: the marker keeps series
# apart when NO_COLOR turns the colours grey
PALETTE: tuple[tuple[int, str], ...] = (
    (39, "•"), (208, "x"), (41, "+"), (199, "o"), (226, "*"), (45, "#"),
    (171, "%"), (118, "@"), (214, "&"), (105, "$"), (203, "="), (87, "~"),
)
ACTIVE = ("running", "queued")
ENDED = ("finished", "diverged")  # runs that need nothing more (a diverged run ends its training)


@dataclass
class RunView:
    """One run as the console shows it: its records plus what only the console knows."""

    spec: RunSpec
    index: int  # order of appearance: picks the colour and marker
    log: RunLog
    queued: bool = False  # submitted to the runner, not started yet
    progress: tuple[int, int, int] | None = None  # epoch, batch, batches of the epoch in training
    alerts: list[Alert] = field(default_factory=list)
    _verdict: tuple[tuple[int, int | None], Verdict] | None = None

    @property
    def run_id(self) -> str:
        return self.spec.run_id

    @property
    def color(self) -> int:
        return PALETTE[self.index % len(PALETTE)][0]

    @property
    def marker(self) -> str:
        return PALETTE[self.index % len(PALETTE)][1]

    @property
    def verdict(self) -> Verdict:
        n = (len(self.log.epochs), self.log.reached)
        if self._verdict is None or self._verdict[0] != n:
            self._verdict = (n, verdict(self.log.epochs, reached=self.log.reached))
        return self._verdict[1]

    @property
    def last_epoch(self) -> int:
        return self.log.epochs[-1].epoch if self.log.epochs else 0

    def status(self, live: bool) -> str:
        return "queued" if self.queued else self.log.status(live)


class AuditState:
    """Runs, records and alerts of one audit, fed by live events or by files."""

    def __init__(self, path: Path, cfg: AuditConfig, read_only: bool = False) -> None:
        self.path = path
        self.cfg = cfg
        self.read_only = read_only
        self.live = False
        self.runs: dict[str, RunView] = {}
        self.alerts: list[Alert] = []
        self.version = 0  # bumped on any change: the run list and alert log redraw
        self.epoch_version = 0  # bumped on new epoch records: the charts and inspector redraw

    # ---- building the run list -------------------------------------------------------
    def add_spec(self, spec: RunSpec, queued: bool = False) -> RunView:
        view = self.runs.get(spec.run_id)
        if view is None:
            view = RunView(spec, len(self.runs), RunLog(spec.run_id, thresholds=self.cfg.thresholds))
            self.runs[spec.run_id] = view
        view.queued = view.queued or queued
        self.version += 1
        return view

    def _view(self, run_id: str, header: Header | None = None) -> RunView:
        if run_id not in self.runs:
            spec = RunSpec.of(header) if header is not None else parse_run_id(run_id) or RunSpec(run_id, "?", 0)
            self.add_spec(spec)
        return self.runs[run_id]

    def ordered(self) -> list[RunView]:
        """Planned order, each penalty rerun right after its parent (its family)."""
        roots = [v for v in self.runs.values() if v.spec.parent not in self.runs]
        out: list[RunView] = []

        def visit(v: RunView) -> None:
            out.append(v)
            for child in self.runs.values():
                if child.spec.parent == v.run_id:
                    visit(child)

        for root in roots:
            visit(root)
        return out

    def depth(self, view: RunView) -> int:
        d, parent = 0, view.spec.parent
        while parent in self.runs and d < 8:
            d, parent = d + 1, self.runs[parent].spec.parent
        return d

    # ---- the two feeds ---------------------------------------------------------------
    def apply(self, event: Event) -> list[Alert]:
        """Apply one engine event; returns the walk-back alerts it raised."""
        if isinstance(event, BatchProgress):
            view = self._view(event.run_id)
            view.progress = (event.epoch, event.batch, event.batches)
            self.version += 1
            return []
        if isinstance(event, RunStarted):
            view = self._view(event.run_id, event.header)
            view.log.add(event.header)
            view.log.add(Start(epoch=event.resumed_from))  # the line the trainer wrote
            view.queued = False
            view.progress = (event.resumed_from + 1, 0, 1)
        elif isinstance(event, EpochDone):
            view = self._view(event.run_id)
            view.log.add(event.record)
            # (d) against the baseline's records as they are now, as every engine reader does
            fill_baselines({rid: v.log for rid, v in self.runs.items()}, self.cfg, streaming=True)
            view.progress = None
            self.epoch_version += 1
            fresh = [a for a in event.alerts if (a.diagnostic, a.epoch) not in
                     {(b.diagnostic, b.epoch) for b in view.alerts}]
            view.alerts.extend(fresh)
            self.alerts.extend(fresh)
            self.version += 1
            return fresh
        elif isinstance(event, RunEnded):
            view = self._view(event.run_id)
            if view.log.end is None or view.log.end.status != event.status:
                view.log.add(End(status=event.status, message=event.message, epoch=view.last_epoch))
            view.progress = None
            view.queued = False
        self.version += 1
        return []

    def ingest_line(self, run_id: str, rec: Record) -> list[Alert]:
        """One line of a run's records.jsonl, turned into the event training would have sent."""
        view = self._view(run_id, rec if isinstance(rec, Header) else None)
        if isinstance(rec, Epoch):
            # derived fields are never taken from the file
            rec = evaluate(rec, self.cfg.thresholds, needs_baseline(view.spec.method))
            earlier = [e for e in view.log.epochs if e.epoch < rec.epoch]
            return self.apply(EpochDone(run_id, rec, new_alerts(run_id, earlier, rec, self.cfg.thresholds)))
        view.log.add(rec)  # header, start, end
        if isinstance(rec, Start):
            view.queued = False  # a requested rerun's trainer took it (the live feed's RunStarted)
        if isinstance(rec, End):
            view.progress = None
        self.version += 1
        return []

    def set_live(self, live: bool) -> None:
        if live != self.live:
            self.live = live
            self.version += 1

    # ---- questions widgets ask -------------------------------------------------------
    @functools.cached_property
    def diagnostic_n(self) -> int:
        """The diagnostic set's size: n_samples, or a smaller test split whole (without loading it)."""
        return diagnostic_n_for(self.cfg)

    def outcome(self) -> str:
        """The header's word for the audit: ``live`` while it trains, ``finished`` when every
        run has ended (finished or diverged), else how many runs are left to resume."""
        if self.live:
            return "live"
        views = list(self.runs.values())
        left = [v for v in views if v.status(False) not in ENDED]
        if not left:
            return "finished"
        failed = sum(v.status(False) == "failed" for v in left)
        return f"stopped: {len(left)} of {len(views)} runs unfinished" + (f", {failed} failed" if failed else "")

    def active(self) -> list[RunView]:
        return [v for v in self.runs.values() if v.status(self.live) in ACTIVE]

    def total_epochs(self) -> int:
        return max([self.cfg.epochs] + [v.log.total_epochs for v in self.runs.values()])
