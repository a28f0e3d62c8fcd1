"""One run: train a method epoch by epoch, measure, record, checkpoint.

Per epoch the host syncs once (the epoch's summed loss); batches are index gathers
into resident tensors. The record is appended and fsynced first, then the
checkpoint is written atomically, then the listener hears of it: after a crash the
checkpoint is never ahead of the records, and a re-run epoch re-appends its line.
An epoch that ``keep_checkpoints`` names also gets a copy of it in
``<run>/checkpoints/epoch-0001.pt``, written just before the rolling checkpoint.pt (a crash
between the two re-runs that epoch, which writes the copy again).

Before a run (re)starts, ``engine.checkpoint.resume_state`` checks what it would
continue from.
"""
from __future__ import annotations

import io
import math
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from .audit import Audit
from .checkpoint import (
    check_owner,
    keeps_epoch,
    kept_path,
    load_checkpoint,
    remove_stale_checkpoint_temps,
    resume_state,
)
from .config import AuditConfig
from .data import TaskData, derive_seed
from .device import release_freed_memory
from .diagnostics import DiagnosticSettings
from .diagnostics import epoch_record as measured_record
from .errors import FaevalError, StoreError
from .events import BatchProgress, EpochDone, Listener, RunEnded, RunStarted
from .methods import Method, Probe, build_method
from .models import build_model, model_args
from .optim import AdamW
from .plan import RunSpec, make_header
from .records import SCHEMA_VERSION, End, Epoch, Start, now_iso
from .runstore import CHECKPOINT, RECORDS, RecordWriter, atomic_write_bytes
from .verdicts import new_alerts


class RunParts:
    """The trainable state of a run, built identically for a fresh start and a resume."""

    def __init__(self, cfg: AuditConfig, spec: RunSpec, task: TaskData, device: torch.device) -> None:
        self.cfg = cfg
        net = cfg.variant(spec.model)
        # what the model is built from, saved beside its weights (as nanoGPT saves its model_args)
        self.model_args = model_args(net, int(task.in_dim), int(task.n_classes), task.image_shape)
        self.model = build_model(net, int(task.in_dim), int(task.n_classes), task.image_shape,
                                 torch.Generator().manual_seed(derive_seed(spec.seed, "init"))).to(device)
        self.method: Method = build_method(spec.method, self.model, task.n_classes,
                                           torch.Generator().manual_seed(derive_seed(spec.seed, "feedback")), cfg)
        self.steps_per_epoch = math.ceil(task.x_train.shape[0] / cfg.batch_size)
        total = cfg.epochs * self.steps_per_epoch
        # fused: one kernel for every parameter (the per-tensor loop cost ~40% of a CPU step)
        self.optimizer = AdamW(self.method.trainable_parameters(self.model), lr=cfg.lr,
                                           weight_decay=cfg.weight_decay, fused=device.type in ("cpu", "cuda"))
        cosine = cfg.schedule == "cosine"
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, (lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))) if cosine
            else (lambda step: 1.0))
        self.shuffle = torch.Generator().manual_seed(derive_seed(spec.seed, "shuffle"))
        # what ``faeval-tui measure`` checks a checkpoint against: who trained it, on which data
        self.identity = {"method_name": spec.method, "seed": spec.seed,
                         "task_fingerprint": task.loaded_from[1] if task.loaded_from else None}
        # bf16: the steps' products in bfloat16 (weights, optimizer and every measurement stay float32)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
        self.epoch = 0

    def state(self, spec: RunSpec) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, "run_id": spec.run_id, "epoch": self.epoch,
                "config": self.cfg.dump(), "model_args": dict(self.model_args),
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng_shuffle": self.shuffle.get_state(),
                "method": self.method.state_dict(), **self.identity}

    def save(self, path, spec: RunSpec) -> None:
        atomic_write_bytes(Path(path), self._serialized(spec))

    def save_kept(self, run_dir: Path, spec: RunSpec) -> None:
        """This epoch's kept checkpoint (``checkpoint.kept_path``: what ``save`` writes, in a file
        of its own that nothing deletes); written before the rolling one."""
        kept = kept_path(run_dir, self.epoch)
        try:
            kept.parent.mkdir(exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create {kept.parent}: {err.strerror or err}",
                             "check the disk has space and the audit directory is writable") from None
        atomic_write_bytes(kept, self._serialized(spec))

    def _serialized(self, spec: RunSpec) -> bytes:
        buf = io.BytesIO()
        torch.save(self.state(spec), buf)
        return buf.getvalue()

    def load(self, path, spec: RunSpec) -> None:
        state = load_checkpoint(path)
        check_owner(state, path, spec)
        self.load_state(state, path)

    def load_state(self, state: dict[str, Any], path) -> None:
        """Continue from a checkpoint's state (``load_checkpoint``, checked by ``resume_state``)."""
        saved = state.get("model_args")
        if isinstance(saved, dict) and saved != self.model_args:
            diff = ", ".join(f"{k} {saved.get(k)!r} → {v!r}" for k, v in self.model_args.items() if saved.get(k) != v)
            raise StoreError(f"checkpoint {path} holds another model than this run builds ({diff})",
                             "the audit's config or data changed since it was written; restore them, "
                             "or start a new audit")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.shuffle.set_state(state["rng_shuffle"])
            self.method.load_state_dict(state["method"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise StoreError(f"checkpoint {path} does not match this run's model: {err}",
                             "the audit's config changed since it was written; start a new audit") from None
        self.epoch = int(state["epoch"])


# sentences of torch's load errors that are advice, not the reason: the first of them is to
# retry with weights_only=False, which runs whatever code the file holds
def diagnostic_settings(cfg: AuditConfig, epoch: int) -> DiagnosticSettings:
    dc = cfg.diagnostics
    last = epoch == cfg.epochs
    return DiagnosticSettings(stability_batches=dc.stability_batches, rho_samples=dc.rho_samples,
                              rho_directions=dc.rho_directions, rho_eps=dc.rho_eps, null_draws=dc.null_draws,
                              measure_rho=last or epoch % dc.rho_every == 0,
                              measure_null=last or epoch % dc.null_every == 0)


def train_epoch(parts: RunParts, task: TaskData, batch_size: int, penalty: float, stop: threading.Event,
                progress=None) -> float | None:
    """One pass over the training set; the mean loss, or None when stopped mid-epoch."""
    model, method, opt, sched = parts.model, parts.method, parts.optimizer, parts.scheduler
    model.train()
    n = task.x_train.shape[0]
    perm = torch.randperm(n, generator=parts.shuffle).to(task.device, non_blocking=True)
    total = torch.zeros((), device=task.device)
    for b in range(parts.steps_per_epoch):
        if stop.is_set():
            return None
        idx = perm[b * batch_size:(b + 1) * batch_size]
        opt.zero_grad(set_to_none=True)
        with parts.autocast:
            # index_select, not x[idx]: the same rows, gathered ~5× faster on CPU
            loss = method.step(model, task.prepare(task.x_train.index_select(0, idx)),
                               task.y_train.index_select(0, idx), penalty)
        opt.step()
        sched.step()
        total += loss
        if progress is not None:
            progress(b + 1)
    return total.item() / parts.steps_per_epoch  # the epoch's one host sync


def diagnostic_set(cfg: AuditConfig, task: TaskData) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's fixed diagnostic set (x, y)."""
    return task.diagnostic_set(cfg.diagnostics.n_samples, cfg.diagnostics.stability_batches)


def epoch_record(parts: RunParts, cfg: AuditConfig, task: TaskData, train_loss: float | None, epoch: int, seed: int,
                 baseline_acc: float | None = None, train_s: float | None = None,
                 settings: DiagnosticSettings | None = None, probe: Probe | None = None
                 ) -> tuple[Epoch, dict[str, float]]:
    """The run's record for ``epoch`` and the seconds each diagnostic took. The measurement's
    generator is always ``derive_seed(seed, "diagnostics", epoch)``'s, so a re-measurement of a
    checkpoint (``engine.remeasure``: other ``settings``, its own ``probe`` of ``diagnostic_set``)
    draws what training drew."""
    settings = settings or diagnostic_settings(cfg, epoch)
    x, y = (probe.x, probe.y) if probe is not None else diagnostic_set(cfg, task)
    gen = torch.Generator().manual_seed(derive_seed(seed, "diagnostics", epoch))
    # the diagnostic set is the first n test samples: the probe's forward pass counts for them
    rec = measured_record(parts.model, parts.method, task.test_batches(start=x.shape[0]), x, y, settings, gen,
                          cfg.thresholds, epoch=epoch, baseline_acc=baseline_acc, train_loss=train_loss,
                          lr=parts.scheduler.get_last_lr()[0], train_s=train_s, diagnostic_set_in_test=True,
                          probe=probe)
    return rec, settings.timings


def _nonfinite(rec: Epoch) -> list[str]:
    bad = []
    for key in ("train_loss", "test_loss", "h_norm", "g_norm", "a_norm"):
        vals = getattr(rec, key)
        vals = vals if isinstance(vals, list) else [vals]
        if any(v is not None and not math.isfinite(v) for v in vals):
            bad.append(key)
    return bad


def _guarded(listener: Listener) -> Listener:
    """A listener that cannot kill training: a display bug is reported once, the run goes on."""
    failed = []

    def call(event) -> None:
        try:
            listener(event)
        except Exception:  # noqa: BLE001 - the records on disk stay the source of truth
            if not failed:
                failed.append(True)
                traceback.print_exc()

    return call


def train_run(audit: Audit, spec: RunSpec, task: TaskData, device: torch.device, listener: Listener,
              stop: threading.Event) -> str:
    """Train ``spec`` to the end (or resume it); returns its final status."""
    listener = _guarded(listener)
    cfg = audit.cfg
    run_dir = audit.run_dir(spec.run_id)
    records_path, ckpt_path = run_dir / RECORDS, run_dir / CHECKPOINT
    try:  # refused before anything is written: the run's files stay as they are
        previous, state = resume_state(audit, spec)  # the scheduler's preflight checked this too
        try:
            run_dir.mkdir(exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create {run_dir}: {err.strerror or err}",
                             "check the disk has space and the audit directory is writable") from None
        remove_stale_checkpoint_temps(run_dir)
        parts = RunParts(cfg, spec, task, device)
        if state is not None:
            parts.load_state(state, ckpt_path)
            state = None  # its tensors were copied into the model and the optimizer
        writer = RecordWriter(records_path)
    except StoreError as err:
        listener(RunEnded(spec.run_id, "failed", str(err)))
        return "failed"
    try:
        if previous is None or previous.header is None:
            header = make_header(cfg, spec)
            writer.append(header)
        else:
            header = previous.header  # written earlier by this trainer, or by Audit.add_run when queued
        # every (re)start says so: readers tell a queued run from a running one, and see resumes
        writer.append(Start(epoch=parts.epoch))
        history = [e for e in (previous.epochs if previous else []) if e.epoch <= parts.epoch]
        listener(RunStarted(spec.run_id, header, parts.epoch))
        while parts.epoch < cfg.epochs:
            epoch = parts.epoch + 1
            t0 = time.perf_counter()
            every = max(1, parts.steps_per_epoch // 20)
            progress = (lambda b: listener(BatchProgress(spec.run_id, epoch, b, parts.steps_per_epoch))
                        if b % every == 0 else None)
            train_loss = train_epoch(parts, task, cfg.batch_size, spec.penalty, stop, progress)
            if train_loss is None:
                writer.append(End(status="stopped", epoch=parts.epoch,
                                  message=f"stopped during epoch {epoch}; the checkpoint of epoch {parts.epoch} "
                                          "is kept"))
                listener(RunEnded(spec.run_id, "stopped"))
                return "stopped"
            train_s = time.perf_counter() - t0
            rec, _ = epoch_record(parts, cfg, task, train_loss, epoch, spec.seed,
                                  baseline_acc=audit.baseline_acc(spec, epoch), train_s=train_s)
            release_freed_memory()  # the diagnostics' temporaries, which malloc would keep
            alerts = new_alerts(spec.run_id, history, rec, cfg.thresholds)
            rec = rec.model_copy(update={"time": now_iso()})  # when written: watch orders alerts by it
            writer.append(rec)
            parts.epoch = epoch
            bad = _nonfinite(rec)
            if not bad:
                if keeps_epoch(cfg.keep_checkpoints, history, rec):
                    parts.save_kept(run_dir, spec)  # first: a crash before checkpoint.pt re-runs the epoch
                parts.save(ckpt_path, spec)
            history.append(rec)
            listener(EpochDone(spec.run_id, rec, alerts))
            if bad:
                msg = f"non-finite values in {', '.join(bad)} at epoch {epoch}: training diverged"
                writer.append(End(status="diverged", epoch=epoch, message=msg))
                listener(RunEnded(spec.run_id, "diverged", msg))
                return "diverged"
        writer.append(End(status="finished", epoch=parts.epoch))
        listener(RunEnded(spec.run_id, "finished"))
        return "finished"
    except Exception as err:  # a failed run must not take the audit down: record why and go on
        msg = str(err) if isinstance(err, FaevalError) else f"{type(err).__name__}: {err}"
        try:
            writer.append(End(status="failed", epoch=parts.epoch, message=msg,
                              traceback=traceback.format_exc(limit=8)))
        except StoreError:
            pass  # the disk refused even that: the missing end line reads as "stopped", resumable
        listener(RunEnded(spec.run_id, "failed", msg))
        return "failed"
    finally:
        writer.close()
