"""An audit: its directory, its resolved configuration and its runs' records.

``engine.plan`` says which runs an audit has, ``engine.runstore`` how their files
are laid out, and ``engine.scheduler`` trains them.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

from .config import AuditConfig, validate
from .errors import StoreError
from .plan import RunSpec, baseline_run, make_header, plan_runs
from .runstore import (
    RECORDS,
    AuditLock,
    RunLog,
    append_line,
    list_runs,
    read_config,
    read_run,
    safe_child,
    write_config,
)


class Audit:
    """An audit directory with its resolved configuration."""

    def __init__(self, path: Path, cfg: AuditConfig) -> None:
        self.path = path
        self.cfg = cfg

    @classmethod
    def create(cls, cfg: AuditConfig, runs_dir: Path | str) -> Audit:
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
    def open(cls, path: Path | str) -> Audit:
        path = Path(path)
        if not path.is_dir():
            raise StoreError(f"{path} is not a directory", "give an audit directory that `faeval-tui run` printed")
        return cls(path, validate(read_config(path), str(path / "config.yaml")))

    def planned(self) -> list[RunSpec]:
        """The config's plan plus runs added later (penalty reruns from the console)."""
        specs = {s.run_id: s for s in plan_runs(self.cfg)}
        for run_dir in list_runs(self.path):
            h = read_run(run_dir / RECORDS).header
            if h and h.run_id not in specs:
                specs[h.run_id] = RunSpec.of(h)
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
        append_line(path, make_header(self.cfg, spec))

    def run_dir(self, rid: str) -> Path:
        return safe_child(self.path, rid)

    def log(self, rid: str) -> RunLog:
        path = self.run_dir(rid) / RECORDS
        return read_run(path, self.cfg.thresholds) if path.exists() else RunLog(rid, thresholds=self.cfg.thresholds)

    def logs(self) -> list[RunLog]:
        return [self.log(s.run_id) for s in self.planned()]

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
