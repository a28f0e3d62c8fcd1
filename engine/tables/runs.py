"""Runs as the tables see them: each run's records re-evaluated under the thresholds,
its status label, and the grouping of runs by method and λ over seeds."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

from ..config import AuditConfig, Thresholds, validate
from ..fmt import DASH
from ..records import Epoch
from ..runstore import RunLog
from ..verdicts import WALK_BACK, Verdict, evaluate, needs_baseline, verdict
from .cells import DEGENERATE_NOTE, STALE, Stat

if TYPE_CHECKING:
    from ..audit import Audit


@dataclass
class RunView:
    """What the tables and the JSON export need from one run: its records under ``th``,
    its status and its verdict."""

    log: RunLog
    status: str
    records: list[Epoch]
    verdict: Verdict

    @classmethod
    def of(cls, log: RunLog, status: str, th: Thresholds) -> RunView:
        records = [evaluate(r, th, needs_baseline(log.method)) for r in log.epochs]
        return cls(log, status, records, verdict(records, reached=log.reached))

    @property
    def final(self) -> Epoch | None:
        return self.records[-1] if self.records else None

    def latest(self, key: str) -> tuple[Any, bool]:
        """The final record's value, or the latest measured one; the flag says it is older."""
        for i, rec in enumerate(reversed(self.records)):
            value = getattr(rec, key)
            if value is not None:
                return value, i > 0
        return None, False

    @property
    def label(self) -> str:
        done = self.final.epoch if self.final else 0
        of = f"epoch {done}/{self.log.total_epochs}"
        if self.status == "finished":
            return "finished"
        if self.status == "running":
            return f"running, {of}"
        if self.status in ("queued", "not started"):
            return self.status
        message = self.log.end.message if self.log.end else ""
        return f"{self.status} at {of}" + (f": {message[:80]}" if self.status == "failed" and message else "")

    def to_json(self) -> dict[str, Any]:
        """The run as ``export --format json`` lists it."""
        log, final = self.log, self.final
        return {
            "run_id": log.run_id, "model": log.header.model if log.header else None, "method": log.method,
            "seed": log.seed, "penalty": log.penalty,
            "parent": log.header.parent if log.header else None, "status": self.status,
            "epochs_done": final.epoch if final else 0, "epochs": log.total_epochs,
            "message": log.end.message if log.end else "",
            "final": final.to_json() if final else None, "fired": list(final.fired) if final else [],
            "first_fire": self.verdict.first_fire, "verdict": self.verdict.label,
            "verdict_detail": self.verdict.to_json(), "problems": list(log.problems),
            # the run directory this run was copied from instead of trained (engine.reuse), else None
            "reused_from": log.header.reused_from if log.header else None,
        }


RunLike = Union[RunLog, RunView]
Source = Union["Audit", Sequence[RunLike]]


def audit_views(audit: Audit, th: Thresholds | None = None) -> list[RunView]:
    """Every planned run under ``th`` (default: the audit's thresholds); one not started yet
    is listed under the header its name and the config give it, as queued or not started."""
    live = audit.is_live()
    th = th or audit.cfg.thresholds
    logs = audit.logs()
    for log in logs:
        if log.header is None:
            log.header = audit.planned_header(log.run_id, log)
    return [RunView.of(log, log.status(live), th) for log in logs]


def config_of(source: Any) -> AuditConfig:
    """The audit's config: from an Audit, else from the first run header that carries one."""
    if hasattr(source, "cfg"):
        return source.cfg
    for run in source:
        log = run if isinstance(run, RunLog) else run.log
        if log.header and log.header.config:
            return validate(log.header.config, f"header of {log.run_id}")
    return AuditConfig()


def views(source: Source, cfg: AuditConfig) -> list[RunView]:
    """RunViews from an Audit, RunViews, or bare RunLogs (read as still running if unended)."""
    if hasattr(source, "cfg"):
        return audit_views(source, cfg.thresholds)
    return [run if isinstance(run, RunView) else RunView.of(run, run.status(live=True), cfg.thresholds)
            for run in source]


def n_classes(cfg: AuditConfig) -> int:
    """The task's class count, without loading it (an npz file's from its arrays' headers)."""
    from ..userdata import task_dims

    dims = task_dims(cfg)
    return dims[1] if dims else cfg.synthetic.classes


def has_penalties(runs: list[RunView], cfg: AuditConfig) -> bool:
    """Does the audit plan or hold penalty reruns? Without, the tables leave out their λ column."""
    return bool(cfg.penalties) or any(r.log.penalty for r in runs)


def model_of(run: RunView) -> str | None:
    """The network a run trained, by its name in an audit of several (None: the audit's only one)."""
    return run.log.header.model if run.log.header else None


def model_headers(cfg: AuditConfig) -> list[str]:
    """The leading "model" column of the tables in an audit of several networks."""
    return ["model"] if cfg.multi_model else []


def group_model(cfg: AuditConfig, group: list[RunView]) -> str | None:
    """The network of a group's runs in an audit of several (None otherwise)."""
    return (model_of(group[0]) or "?") if cfg.multi_model and group else None


def model_cells(cfg: AuditConfig, group: list[RunView]) -> list[str]:
    """The group's "model" cell, in an audit of several networks."""
    net = group_model(cfg, group)
    return [] if net is None else [net]


def groups(runs: list[RunView], cfg: AuditConfig) -> list[tuple[str, float, list[RunView]]]:
    """(method, λ, runs over seeds), methods in config order, each followed by its λ's; in an
    audit of several networks, that for each network in config order (``model_of`` of a
    group's runs says which)."""
    order = {m: i for i, m in enumerate(cfg.methods)}
    nets = {v.name: i for i, v in enumerate(cfg.variants())} if cfg.multi_model else {}
    keyed: dict[tuple[str, str, float], list[RunView]] = {}
    for r in runs:
        net = (model_of(r) or "") if cfg.multi_model else ""
        keyed.setdefault((net, r.log.method, float(r.log.penalty or 0.0)), []).append(r)
    keys = sorted(keyed, key=lambda k: (nets.get(k[0], len(nets)), k[0], order.get(k[1], len(order)), k[1], k[2]))
    return [(m, lam, keyed[(net, m, lam)]) for net, m, lam in keys]


def group_status(runs: list[RunView]) -> str:
    if all(r.status == "finished" for r in runs):
        return "finished"
    if len({r.label for r in runs}) == 1 and runs[0].status in ("queued", "not started"):
        return runs[0].label  # every seed waits alike: one word, not one per seed
    done = sum(r.status == "finished" for r in runs)
    parts = [f"{done} finished"] if done else []
    parts += [f"s{r.log.seed} {r.label}" if len(runs) > 1 else r.label for r in runs if r.status != "finished"]
    return "; ".join(parts)


def submode_cell(runs: list[RunView]) -> str:
    """(c)'s label over seeds: "drift", "noise", "unknown" (NaN stability) or "drift 1/3"."""
    live = [r for r in runs if r.final]
    if not live:
        return ""
    modes = {r.verdict.submode for r in live}
    if len(modes) == 1:
        return modes.pop()  # drift, noise, or unknown (stability was NaN)
    drift = sum(r.verdict.submode == "drift" for r in live)
    return f"drift {drift}/{len(live)}"


def group_verdict(runs: list[RunView]) -> str:
    """The seeds' verdict when they agree, else each with its count. (c)'s sub-mode is not
    part of it: the tables show it in a column of its own (``submode_cell``)."""
    live = [r for r in runs if r.final]
    labels = Counter(r.verdict.label for r in live)
    if not labels:
        return "NO DATA"
    if len(labels) == 1:
        return next(iter(labels))
    return "; ".join(f"{label} ({k}/{len(live)})" for label, k in labels.items())


def first_fire_cell(runs: list[RunView]) -> str:
    """Walk-back diagnostics' first-fire epochs, one per seed ("—" where it never fired)."""
    parts = []
    for k in WALK_BACK:
        epochs = [r.verdict.first_fire.get(k) for r in runs if r.final]
        if any(e is not None for e in epochs):
            parts.append(f"({k}) " + ", ".join(DASH if e is None else str(e) for e in epochs))
    return "; ".join(parts) or DASH


def final_stat(runs: list[RunView], get: Callable[[Epoch], float | None]) -> Stat:
    """``get`` of each run's final record, over the runs that have one."""
    return Stat.of(get(r.final) for r in runs if r.final)


@dataclass
class Footnotes:
    """What a table's † and ‡ markers flag, counted while its rows are built, for one note each."""

    what: str  # the ρ field named in the ‡ note
    runs: int = 0
    degenerate: int = 0
    stale: list[str] = field(default_factory=list)

    def group(self, live: list[RunView], key: str) -> tuple[bool, list[tuple[Any, bool]]]:
        """(any run degenerate?, each run's latest ``key`` with its is-older flag)."""
        k = sum(r.final.degenerate for r in live)
        self.runs, self.degenerate = self.runs + len(live), self.degenerate + k
        latest = [r.latest(key) for r in live]
        self.stale += [r.log.run_id for r, (_, old) in zip(live, latest) if old]
        return k > 0, latest

    def notes(self, cfg: AuditConfig) -> list[str]:
        out = [DEGENERATE_NOTE.format(k=self.degenerate, n=self.runs)] if self.degenerate else []
        if self.stale:
            out.append(f"{STALE} {self.what} of {', '.join(self.stale)} is from an earlier epoch (ρ is measured "
                       f"every {cfg.diagnostics.rho_every} epochs).")
        return out
