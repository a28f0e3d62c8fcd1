"""Re-measure a saved checkpoint of a run: ``faeval-tui measure RUN_DIR``.

The checkpoint is a kept one (``<run>/checkpoints/epoch-0001.pt``, config ``keep_checkpoints``)
or the rolling ``checkpoint.pt``. It is measured as the trainer measured that epoch: the
training B's (the method state in the file), the run's own data (``load_task`` of the audit's
config, its fingerprint checked against the one the checkpoint was trained on) and diagnostic
set, the epoch's diagnostics generator ``derive_seed(seed, "diagnostics", epoch)``, and the
audit's thresholds and frozen baseline. With the defaults every measured field equals the
epoch's line in records.jsonl (``Remeasured.differs`` says so); ``null_draws`` and
``rho_directions`` measure more, and ``nudge`` adds the protocol's nudging test
(``diagnostics.nudge_test``). ρ and the null band are always measured, whatever the run's
cadence; when training skipped ρ at that epoch, ρ's directions are drawn after the null
band's (``DiagnosticSettings.rho_last``), so the null band is still the one training drew.

Nothing is written: records.jsonl, the checkpoints and config.yaml stay as they are, and the
audit's lock is not taken (a run may go on training meanwhile). A file is only read with
``torch.load(weights_only=True)``: tensors and plain data, never code.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .audit import Audit
from .checkpoint import KEPT_DIR, config_changes, kept_epochs, kept_path, load_checkpoint
from .config import AuditConfig
from .data import load_task
from .device import apply_threads, training_device
from .diagnostics import NUDGE_ETA, make_probe, nudge_test
from .errors import DataError, StoreError
from .fmt import DASH, num, pct
from .plan import RunSpec, make_header
from .records import _PER_LAYER, VOLATILE, End, Epoch, at_layer, encode
from .runstore import CHECKPOINT, CONFIG, RECORDS, RunLog, read_run
from .tables import ColumnGroup, Table, layer_table
from .trainer import RunParts, diagnostic_set, diagnostic_settings, epoch_record
from .userdata import short

NUDGE_HEADER = "nudge Δℓ ± std"
NUDGE_BP_HEADER = "bp Δℓ"
# what a re-measurement cannot give: nothing trains (train_loss, train_s), and the wall clock
NOT_REMEASURED = frozenset({"train_loss", *VOLATILE})


@dataclass(frozen=True)
class Remeasured:
    """One checkpoint measured again: ``record`` holds the trainer's fields for its epoch
    (``train_loss`` None: nothing trained), ``recorded`` that epoch's line in records.jsonl
    (None when it has none), ``nudge`` the nudging test's per-layer lists when asked for:
    ``nudge``, ``nudge_std``, ``nudge_excluded`` of the method's credit and ``nudge_bp``, the
    same step along the BP gradient (the first-order steepest descent, for scale)."""

    run_id: str
    path: Path  # the checkpoint measured
    kept: bool  # a kept checkpoint (checkpoints/), not the rolling checkpoint.pt
    cfg: AuditConfig  # the audit's, with the null draws and ρ directions used
    header: Any  # the run's records header (engine.records.Header)
    record: Epoch
    recorded: Epoch | None
    n_samples: int  # the diagnostic set's
    nudge: dict[str, list[Any]] | None = None
    nudge_eta: float = NUDGE_ETA

    @property
    def epoch(self) -> int:
        return self.record.epoch

    def compared(self) -> list[str]:
        """The fields both measurements have under the same settings (training's cadence may
        have skipped ρ or the null band; other null draws or ρ directions measure other values)."""
        if self.recorded is None:
            return []
        dc, trained = self.cfg.diagnostics, self.header_diagnostics()
        other_null = dc.null_draws != trained.get("null_draws", dc.null_draws)
        other_rho = dc.rho_directions != trained.get("rho_directions", dc.rho_directions)
        skip = set(NOT_REMEASURED)
        skip |= {"null_mean", "null_std"} if other_null else set()
        skip |= {"rho", "deep_rho"} if other_rho else set()
        return [k for k in Epoch.model_fields if k not in skip and getattr(self.recorded, k) is not None]

    def header_diagnostics(self) -> dict[str, Any]:
        trained = (getattr(self.header, "config", None) or {}).get("diagnostics")
        return trained if isinstance(trained, dict) else {}

    def differs(self) -> list[str]:
        """The compared fields whose values are not exactly the record's (NaN equals NaN)."""
        return [k for k in self.compared() if not _same(getattr(self.record, k), getattr(self.recorded, k))]

    def table(self) -> Table:
        """The per-layer table (``engine.tables.layer_table``, by run) of this measurement, with
        a nudging column when the test ran."""
        log = RunLog(self.run_id, header=self.header, epochs=[self.record], end=End(status="finished"))
        table = layer_table([log], self.cfg, by="run")
        if self.nudge is None:
            return table
        note = (f"{NUDGE_HEADER}: the nudging test, mean over samples (± std) of the loss change Δℓ_n when h_l "
                f"moves by −η·‖h_l[n]‖·a_l[n]/‖a_l[n]‖ (η = {self.nudge_eta:g}) and the rest of the network runs "
                "from there (float64); negative: the credit points downhill; about 0: no better than a random "
                f"direction. {NUDGE_BP_HEADER}: the same step along the BP gradient g_l, the steepest descent to "
                "first order (a bp run's two columns agree); their ratio is about the ‖h‖·‖g‖-weighted mean of "
                "the per-sample cosines.")
        rows = [row + [_nudge_cell(self.nudge, l), num(at_layer(self.nudge["nudge_bp"], l))]
                for l, row in enumerate(table.rows)]
        data = [{**d, "nudge": {"mean": at_layer(self.nudge["nudge"], l), "std": at_layer(self.nudge["nudge_std"], l),
                                "excluded": at_layer(self.nudge["nudge_excluded"], l),
                                "bp": at_layer(self.nudge["nudge_bp"], l)}}
                for l, d in enumerate(table.data)]
        added = (NUDGE_HEADER, NUDGE_BP_HEADER)
        groups = [*table.groups, ColumnGroup("nudge", "nudging test", added, (note,))]
        return dataclasses.replace(table, headers=[*table.headers, *added], rows=rows,
                                   notes=[*table.notes, note], data=data, groups=groups)

    def layers(self) -> list[dict[str, Any]]:
        """Per layer l = 0..L, every per-layer field of the record (and the nudge's), with z vs null."""
        rec, out = self.record, []
        for l in range(rec.layers):
            row: dict[str, Any] = {"layer": l, "h_norm": rec.h_norm[l]}
            row.update({k: at_layer(getattr(rec, k), l) for k in _PER_LAYER})
            mean, std = row["null_mean"], row["null_std"]
            row["z"] = (row["cos"] - mean) / std if mean is not None and std else None
            if self.nudge is not None:
                row.update({k: at_layer(v, l) for k, v in self.nudge.items()})
            out.append(row)
        return out

    def to_json(self) -> dict[str, Any]:
        dc = self.cfg.diagnostics
        scalars = {k: v for k, v in self.record.model_dump().items()
                   if k not in _PER_LAYER and k not in ("h_norm", "type", "diag_s", "time", "train_s")}
        return encode({
            "run_id": self.run_id, "epoch": self.epoch, "checkpoint": str(self.path), "kept": self.kept,
            "settings": {"n_samples": self.n_samples, "null_draws": dc.null_draws, "rho_directions": dc.rho_directions,
                         "rho_samples": min(dc.rho_samples, self.n_samples), "rho_eps": dc.rho_eps,
                         "nudge_eta": self.nudge_eta if self.nudge is not None else None},
            "scalars": scalars, "layers": self.layers(),
            "against_record": {"recorded": self.recorded is not None, "compared": self.compared(),
                               "differs": self.differs()},
        })

    def to_markdown(self) -> str:
        from .markdown import table_markdown

        rec, dc = self.record, self.cfg.diagnostics
        which = "kept" if self.kept else "the run's last"
        base = f" (frozen baseline {pct(rec.baseline_acc)}%)" if rec.baseline_acc is not None else ""
        fired = ", ".join(f"({k})" for k in rec.fired) or "none"
        null = (f"null band {dc.null_draws} draws" if self.record.null_mean is not None else
                f"no null band ({self.header.method} has no random feedback to redraw)")
        measured = (f"diagnostic set n = {self.n_samples}; {null}; ρ {dc.rho_directions} directions × "
                    f"{min(dc.rho_samples, self.n_samples)} samples (ε = {dc.rho_eps:g})"
                    + (f"; nudge η = {self.nudge_eta:g}" if self.nudge is not None else ""))
        lines = [f"# faeval measure: {self.run_id}, epoch {self.epoch}", "",
                 f"- **checkpoint**: {self.path} ({which}, epoch {self.epoch})",
                 f"- **measured**: {measured}",
                 f"- **epoch {self.epoch}**: accuracy {pct(rec.test_acc)}%{base}, growth {num(rec.growth)}, "
                 f"‖g_L‖ {num(rec.g_L)}, stability {num(rec.stability)} ({rec.stability_mode}), Γ "
                 f"{num(rec.gamma)}, deep cos {num(rec.deep_cos)}, deep ρ {num(rec.deep_rho)}; fired: {fired}",
                 f"- **against the record**: {self.verdict_line()}", ""]
        return "\n".join(lines) + "\n" + table_markdown(self.table())

    def verdict_line(self) -> str:
        if self.recorded is None:
            return f"{RECORDS} has no line for epoch {self.epoch}: nothing to compare"
        wrong = self.differs()
        skipped = [k for k in ("rho", "null_mean") if k not in self.compared() and getattr(self.record, k) is not None]
        extra = (f" ({' and '.join('ρ' if k == 'rho' else 'the null band' for k in skipped)} not compared: "
                 "measured with other settings, or not at that epoch in training)") if skipped else ""
        if wrong:
            return f"differs from {RECORDS}'s epoch {self.epoch} line in {', '.join(wrong)}{extra}"
        return f"every field measured equals {RECORDS}'s epoch {self.epoch} line{extra}"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _nudge_cell(nudge: dict[str, list[Any]], layer: int) -> str:
    mean, std = at_layer(nudge["nudge"], layer), at_layer(nudge["nudge_std"], layer)
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return DASH
    return f"{num(mean)} ± {num(std)}"


def _run(run_dir: Path) -> tuple[Audit, RunSpec]:
    """The audit ``run_dir`` belongs to and the run it is."""
    if not run_dir.is_dir():
        raise StoreError(f"{run_dir} is not a directory", "give a run directory of an audit, like runs/<audit>/dfa-s42")
    if (run_dir / CONFIG).is_file():  # the audit itself
        runs = ", ".join(s.run_id for s in Audit.open(run_dir).planned())
        raise StoreError(f"{run_dir} is an audit directory, not one of its runs ({runs})",
                         f"give a run directory, like {run_dir / (runs.split(', ')[0] or 'dfa-s42')}")
    try:
        audit = Audit.open(run_dir.parent)
    except StoreError as err:
        raise StoreError(f"{run_dir} is not a run directory of an audit: {err.problem}",
                         "give a run directory inside the audit directory `faeval-tui run` printed, like "
                         "runs/<audit>/dfa-s42") from None
    if audit.tracked:
        raise StoreError(f"{run_dir.parent} was measured in your own training loop (engine.tracker): it has no "
                         "checkpoints to measure", "re-measure your own saved model with engine.api.audit_model")
    spec = next((s for s in audit.planned() if s.run_id == run_dir.name), None)
    if spec is None:
        runs = ", ".join(s.run_id for s in audit.planned())
        raise StoreError(f"{run_dir.name} is not a run of {audit.path} (its runs: {runs})",
                         "give one of its run directories")
    return audit, spec


def _kept(run_dir: Path) -> str:
    kept = kept_epochs(run_dir)
    return (f"kept: epoch{'s' if len(kept) > 1 else ''} {', '.join(map(str, kept))} ({KEPT_DIR}/)" if kept
            else "no kept checkpoints (config keep_checkpoints was not set)")


def _kept_listing(run_dir: Path, last: int | None) -> str:
    """The kept epochs and the last checkpoint's, for a refusal."""
    return _kept(run_dir) + "; " + (f"the last checkpoint ({CHECKPOINT}) is of epoch {last}" if last is not None
                                    else f"no {CHECKPOINT}")


def _load(path: Path, run_dir: Path) -> dict[str, Any]:
    """``load_checkpoint`` (weights_only), with a hint for measuring rather than resuming."""
    try:
        return load_checkpoint(path)
    except StoreError as err:
        if "restart that run" not in err.hint:  # unreadable (permissions), or newer: its own advice stands
            raise
        raise StoreError(err.problem, "it is not a checkpoint faeval-tui wrote, or it was damaged since (nothing in "
                         f"it was run); measure another epoch ({_kept(run_dir)})"
                         ) from None


def _epoch_of(state: dict[str, Any], path: Path) -> int:
    try:
        return int(state["epoch"])
    except (KeyError, TypeError, ValueError):
        raise StoreError(f"{path} is not a faeval-tui checkpoint (it has no epoch)",
                         "measure another epoch") from None


def _recorded_epochs(run_dir: Path) -> int:
    """The last epoch records.jsonl holds (0: none, or unreadable), for a missing checkpoint's message."""
    try:
        log = read_run(run_dir / RECORDS)
        return log.epochs[-1].epoch if log.epochs else 0
    except (OSError, StoreError):
        return 0


def choose_checkpoint(run_dir: Path, epoch: int | None) -> tuple[Path, dict[str, Any], bool]:
    """The checkpoint of ``epoch`` (None: the last), loaded: (path, state, kept)."""
    if epoch is not None and epoch in kept_epochs(run_dir):
        path = kept_path(run_dir, epoch)
        state = _load(path, run_dir)
        inside = _epoch_of(state, path)
        if inside != epoch:
            raise StoreError(f"{path} holds epoch {inside}, not epoch {epoch}: it was renamed or copied from "
                             "elsewhere", "put the kept checkpoints back as training wrote them")
        return path, state, True
    path = run_dir / CHECKPOINT
    state = _load(path, run_dir) if path.is_file() else None
    last = _epoch_of(state, path) if state is not None else None
    if state is not None and (epoch is None or epoch == last):
        return path, state, False
    if epoch is None:
        recorded = _recorded_epochs(run_dir)
        raise StoreError(f"run {run_dir.name} has no {CHECKPOINT} ({_kept_listing(run_dir, last)})"
                         + (f", though its records reach epoch {recorded}: it was deleted or moved" if recorded
                            else ""),
                         "measure a kept epoch with --epoch N" if kept_epochs(run_dir) else
                         f"put {CHECKPOINT} back where training wrote it, or train the run again" if recorded else
                         "the run has not finished an epoch yet: train it first")
    listing = _kept_listing(run_dir, last)
    raise StoreError(f"run {run_dir.name} kept no checkpoint of epoch {epoch} ({listing})",
                     "measure one of those epochs, or keep this one when you train again: "
                     f"--set 'keep_checkpoints=[{epoch}]'")


def check_belongs(state: dict[str, Any], path: Path, audit: Audit, spec: RunSpec) -> None:
    """Refuse a checkpoint another run (or another audit's config) wrote."""
    said = {"run_id": state.get("run_id"), "method": state.get("method_name", spec.method),
            "seed": state.get("seed", spec.seed)}
    wrong = [f"{k} {v!r} (this run's is {getattr(spec, k)!r})" for k, v in said.items() if v != getattr(spec, k)]
    if wrong:
        raise StoreError(f"checkpoint {path} belongs to another run: its {'; '.join(wrong)}",
                         f"measure a checkpoint in its own run directory; this run's are in {path.parent}")
    changes = config_changes(state.get("config") or {}, audit.cfg.dump())
    if changes:
        listed = "; ".join(f"{k}: {was!r} in the checkpoint, {now!r} in config.yaml" for k, was, now in changes[:4])
        raise StoreError(f"checkpoint {path} was trained under another config than {audit.path}'s: {listed}",
                         "it comes from another audit, or config.yaml was edited: measure it in the audit that "
                         "trained it (or restore config.yaml)")


def remeasure(run_dir: Path | str, epoch: int | None = None, null_draws: int | None = None,
              rho_directions: int | None = None, nudge: bool = False, eta: float = NUDGE_ETA) -> Remeasured:
    """Measure the checkpoint of ``epoch`` (None: the last) of the run in ``run_dir`` again
    (see the module docstring); ``StoreError``/``DataError`` when it cannot be trusted."""
    run_dir = Path(run_dir)
    audit, spec = _run(run_dir)
    if epoch is not None and epoch > audit.cfg.epochs:
        raise StoreError(f"run {spec.run_id} trains {audit.cfg.epochs} epochs: it has no epoch {epoch}",
                         f"give an epoch from 1 to {audit.cfg.epochs} that it kept ({_kept(run_dir)})")
    path, state, kept = choose_checkpoint(run_dir, epoch)
    check_belongs(state, path, audit, spec)
    ep = _epoch_of(state, path)
    cfg = audit.cfg.model_copy(deep=True)
    if null_draws is not None:
        cfg.diagnostics.null_draws = null_draws
    if rho_directions is not None:
        cfg.diagnostics.rho_directions = rho_directions
    task = load_task(cfg)
    trained_on = state.get("task_fingerprint")
    if trained_on is not None and task.loaded_from is not None and task.loaded_from[1] != trained_on:
        raise DataError(f"the {cfg.dataset} data loaded for {audit.path} (fingerprint {short(task.loaded_from[1])}) "
                        f"is not the data checkpoint {path} was trained on ({short(trained_on)})",
                        "measure it where its data loads as it did in training (the same data files and library "
                        "versions)")
    device = training_device(cfg)
    threads_before = torch.get_num_threads()
    try:
        apply_threads(cfg.threads)  # as training measured: the same reduction order
        task = task.to(device)
        parts = RunParts(cfg, spec, task, device)
        parts.load_state(state, path)
        del state
        trained = diagnostic_settings(audit.cfg, ep)
        settings = dataclasses.replace(trained, null_draws=cfg.diagnostics.null_draws,
                                       rho_directions=cfg.diagnostics.rho_directions, measure_rho=True,
                                       measure_null=True, rho_last=not trained.measure_rho, timings={})
        x, y = diagnostic_set(cfg, task)
        probe = make_probe(parts.model, x, y)
        rec, _ = epoch_record(parts, cfg, task, None, ep, spec.seed, baseline_acc=audit.baseline_acc(spec, ep),
                              settings=settings, probe=probe)
        nudged = None
        if nudge:
            nudged = nudge_test(parts.model, probe, parts.method.credit(probe), eta)
            nudged["nudge_bp"] = nudge_test(parts.model, probe, probe.grads, eta)["nudge"]
    finally:
        apply_threads(threads_before)
    log = audit.log(spec.run_id)
    recorded = next((e for e in log.epochs if e.epoch == ep), None)
    header = log.header or make_header(audit.cfg, spec)
    return Remeasured(spec.run_id, path, kept, cfg, header, rec, recorded, int(x.shape[0]), nudged, eta)
