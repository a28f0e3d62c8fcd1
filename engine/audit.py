"""An audit: its directory, its resolved configuration and its runs' records.

``engine.plan`` says which runs an audit has, ``engine.runstore`` how their files
are laid out, and ``engine.scheduler`` trains them. A *tracked* audit (``engine.tracker``)
was measured in the user's own training loop: its runs are the ones on disk, not a plan's.
"""
from __future__ import annotations

import dataclasses
from datetime import datetime
from pathlib import Path

from .config import AuditConfig, config_changes, validate
from .errors import StoreError
from .fmt import pct
from .plan import RunSpec, baseline_run, identity_mismatch, make_header, parse_run_id, plan_runs
from .records import Header
from .runstore import (
    CHECKPOINT,
    RECORDS,
    TRACKED,
    AuditLock,
    RunLog,
    append_line,
    list_runs,
    read_config,
    read_run,
    safe_child,
    write_config,
)
from .verdicts import evaluate, needs_baseline


def fill_baselines(logs: dict[str, RunLog], cfg: AuditConfig, streaming: bool = False) -> None:
    """Set each epoch's ``baseline_acc`` from the frozen run of its seed at that epoch, as the
    records hold it now, and derive (d) again: the one place a baseline is looked up for
    reading. A run whose baseline has no record at an epoch gets None there (UNVERIFIED).

    ``streaming``: the logs are still being read (the console follows files line by line),
    so a baseline epoch not seen yet leaves the stored value as it is."""
    for log in logs.values():
        if log.header is None:
            continue
        base = baseline_run(cfg, RunSpec.of(log.header))
        if base is None:
            continue
        acc = {e.epoch: e.test_acc for e in logs[base].epochs} if base in logs else {}
        # training stored the baseline it compared with: a frozen record that says otherwise now
        # was edited (or this one was) after the fact, and (d) may read differently: say so
        differ = [e for e in log.epochs if e.baseline_acc is not None and acc.get(e.epoch) is not None
                  and e.baseline_acc != acc[e.epoch]]
        if differ:
            e = differ[0]
            more = f" (and at {len(differ) - 1} more epoch(s))" if len(differ) > 1 else ""
            note = (f"epoch {e.epoch}: trained against a frozen baseline of {pct(e.baseline_acc)}%, but {base}'s "
                    f"records now say {pct(acc[e.epoch])}%{more}: one of the two files was edited after training; "
                    f"(d) is read against {base}'s records")
            # a log read line by line (the console) comes here again: one note, the latest count
            log.problems[:] = [p for p in log.problems if "edited after training; (d) is read against" not in p]
            log.problems.append(note)
        log.epochs = [e if e.baseline_acc == acc.get(e.epoch) or (streaming and e.epoch not in acc) else
                      evaluate(e.model_copy(update={"baseline_acc": acc.get(e.epoch)}), cfg.thresholds,
                               needs_baseline(log.method))
                      for e in log.epochs]


def new_audit_dir(runs_dir: Path | str, name: str) -> Path:
    """A new, empty ``<runs_dir>/<name>-<date>-<time>`` (``-2``, ``-3`` … when taken)."""
    runs_dir = Path(runs_dir)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        path = safe_child(runs_dir, f"{name}-{stamp}")
        n = 1
        while path.exists():
            n += 1
            path = safe_child(runs_dir, f"{name}-{stamp}-{n}")
        path.mkdir()
    except OSError as err:
        raise StoreError(f"cannot create an audit directory in {runs_dir}: {err.strerror}",
                         "choose a writable --runs-dir") from None
    return path


class Audit:
    """An audit directory with its resolved configuration."""

    def __init__(self, path: Path, cfg: AuditConfig) -> None:
        self.path = path
        self.cfg = cfg

    @classmethod
    def create(cls, cfg: AuditConfig, runs_dir: Path | str) -> Audit:
        path = new_audit_dir(runs_dir, cfg.name)
        write_config(path, cfg.dump())
        return cls(path, cfg)

    @classmethod
    def open(cls, path: Path | str) -> Audit:
        path = Path(path)
        if not path.is_dir():
            raise StoreError(f"{path} is not a directory", "give an audit directory that `faeval-tui run` printed")
        return cls(path, validate(read_config(path), str(path / "config.yaml")))

    @property
    def tracked(self) -> bool:
        """Measured in the user's own training loop (``engine.tracker``): its runs are those on
        disk, and the engine never trains them."""
        return (self.path / TRACKED).is_file()

    def planned(self) -> list[RunSpec]:
        """The config's plan plus runs added later (penalty reruns from the console); a tracked
        audit's runs are the ones on disk, frozen baselines first."""
        if self.tracked:
            return sorted(self._on_disk({}).values(), key=lambda s: s.method != "frozen")
        return list(self._on_disk({s.run_id: s for s in plan_runs(self.cfg)}).values())

    def _on_disk(self, specs: dict[str, RunSpec]) -> dict[str, RunSpec]:
        """``specs`` plus every run directory with records that is not among them."""
        for run_dir in list_runs(self.path):
            if run_dir.name in specs:
                continue
            # its name says who it is (a header may be lost, torn or hand-edited); a name that
            # is not a run id falls back on the header, under the directory's name
            spec = parse_run_id(run_dir.name)
            h = read_run(run_dir / RECORDS).header
            if h is not None and (spec is None or identity_mismatch(h, spec) is None):
                spec = dataclasses.replace(RunSpec.of(h), run_id=run_dir.name)  # the header's exact λ
            if spec is not None:
                specs[spec.run_id] = spec
        return specs

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
        append_line(path, make_header(self.cfg, spec))

    def run_dir(self, rid: str) -> Path:
        return safe_child(self.path, rid)

    def log(self, rid: str) -> RunLog:
        """One run's records, with its baseline's accuracies (see ``logs``)."""
        logs = {rid: self._read(rid)}
        spec, header = self._spec(rid, logs[rid]), logs[rid].header
        if header is not None and header.baseline is not None:  # the baseline its header names
            spec = dataclasses.replace(spec, baseline=header.baseline)
        base = baseline_run(self.cfg, spec)
        if base is not None:
            try:
                logs[base] = self._read(base)
            except StoreError:  # a hand-edited header naming no valid run: (d) is not measured
                pass
        fill_baselines(logs, self.cfg)
        return logs[rid]

    def logs(self) -> list[RunLog]:
        """Every planned run's records. ``baseline_acc`` and (d) are derived again from the
        frozen runs' records as they are now, not as they were when a line was written (a
        baseline that failed and was resumed later still counts)."""
        logs = {s.run_id: self._read(s.run_id) for s in self.planned()}
        fill_baselines(logs, self.cfg)
        return list(logs.values())

    def _spec(self, rid: str, log: RunLog) -> RunSpec:
        """Who run ``rid`` is: the plan's spec, else what its name says, else its header."""
        named = next((s for s in plan_runs(self.cfg) if s.run_id == rid), None) or parse_run_id(rid)
        if named is not None:
            return named
        if log.header is not None:
            return dataclasses.replace(RunSpec.of(log.header), run_id=rid)
        return RunSpec(rid, "?", 0)

    def planned_header(self, rid: str, log: RunLog) -> Header:
        """The header a run without a usable one is reported under: its name's and the config's
        (``created`` empty: nothing on disk wrote it)."""
        return make_header(self.cfg, self._spec(rid, log)).model_copy(update={"created": ""})

    def _read(self, rid: str) -> RunLog:
        path = self.run_dir(rid) / RECORDS
        if not path.exists():
            log = RunLog(rid, thresholds=self.cfg.thresholds)
            if (self.run_dir(rid) / CHECKPOINT).exists():  # trained once, then its records were lost
                log.header = self.planned_header(rid, log)
                log.problems.append(f"{path} is missing, but the run has a checkpoint: it trained, and its "
                                    "records are lost")
            return log
        log = read_run(path, self.cfg.thresholds)
        if log.header is not None and (changes := config_changes(log.header.config, self.cfg.dump())):
            # resume refuses these edits; a report read from the files must not pass them silently
            listed = "; ".join(f"{k}: {was!r} when it trained, {now!r} in config.yaml" for k, was, now in changes)
            log.problems.append(f"config.yaml no longer says what this run trained under ({listed}): the report's "
                                "settings are config.yaml's, the run's numbers are not")
        if log.header is None and log.has_lines:
            # records without a readable header (deleted, or torn by a crash): report the run,
            # never leave it out, with the header its name and the audit's config give it
            log.header = self.planned_header(rid, log)
            log.problems.append(f"{path}: no readable header line; the run is reported with the header "
                                "its name and the audit's config give it")
        elif log.header is not None:
            wrong = identity_mismatch(log.header, self._spec(rid, log))
            if wrong:  # a hand-edited header never moves a run into another method's row
                spec = self._spec(rid, log)
                log.header = log.header.model_copy(update={"run_id": rid, "method": spec.method, "seed": spec.seed,
                                                           "penalty": spec.penalty, "parent": spec.parent})
                log.problems.append(f"{path}: its header says {wrong}; the run is reported as its name says")
            else:
                return log
        log.epochs = [evaluate(e, self.cfg.thresholds, needs_baseline(log.method)) for e in log.epochs]
        return log

    def is_live(self) -> bool:
        return AuditLock.is_held(self.path)

    def baseline_run(self, spec: RunSpec) -> str | None:
        return baseline_run(self.cfg, spec)

    def baseline_acc(self, spec: RunSpec, epoch: int) -> float | None:
        rid = self.baseline_run(spec)
        if rid is None:
            return None
        for rec in self.log(rid).epochs:
            if rec.epoch == epoch:
                return rec.test_acc
        return None
