"""Audit your own training loop, live: your model and your loop, the engine's measurements.

    from engine.tracker import Tracker, freeze_blocks
    with Tracker(x_test, y_test, epochs=20, name="my-dfa") as tracker:   # writes runs/my-dfa-<time>/
        base = tracker.run("frozen", seed=0)           # the (d) baseline, trained in the same loop
        run = tracker.run("my-dfa", seed=0, baseline=base)
        for epoch in range(20):
            ...                                        # train both, your way
            base.log(frozen_model)                     # a frozen run's credit: the BP gradient
            run.log(model, my_credit, test_acc=acc)    # my_credit(probe) -> [a_0, ..., a_L]

Each ``log`` measures the model on the tracker's fixed diagnostic set with the engine's own
code (``diagnostics.epoch_record`` with ``trainer.diagnostic_settings``: ρ and the null band on
the audit's ``rho_every``/``null_every`` cadence, generators seeded as the trainer seeds
them) and appends the same typed ``Epoch`` record the engine writes, fsynced (``runstore``'s
``RecordWriter``). ``faeval-tui watch DIR`` follows the directory live, ``faeval-tui export DIR``
reports it.

The audit directory holds what ``watch`` and ``export`` read from any audit (config.yaml,
one records.jsonl per run) plus ``tracked.json`` (what says the runs came from the user's
loop, and the diagnostic set's fingerprint) and ``diagnostic_set.npz`` (the set itself,
which config.yaml names as the audit's data). The tracker holds the audit's lock shared
(several processes may track runs of one audit; the engine cannot train it meanwhile) and
each run's ``run.lock`` exclusively (one writer per run).

Bad use: what cannot be measured raises ``TrackingError`` at the call and writes nothing
(a model without ``hidden_states``/``forward_from``, credits of the wrong number, type or
shape, an epoch out of order); a run that cannot be declared raises ``StoreError`` (two
trackers on one run, a run id that already has records). What can be measured is recorded:
non-finite credits (or states, or losses) are written as the engine writes them and end the
run as diverged, as the engine ends it. See docs/tracker.md.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor, nn

from .api import prepare_model
from .audit import Audit, new_audit_dir
from .config import AuditConfig, DiagnosticsConfig, Thresholds, validate
from .data import MIN_DIAGNOSTIC_SAMPLES, derive_seed, diagnostic_n
from .diagnostics import epoch_record
from .errors import FaevalError, StoreError
from .methods import Method, Probe, available_methods, get_method
from .plan import GIVEN_BASELINE, RunSpec, baseline_run, parse_run_id, run_id
from .records import End, Epoch, Header, Start, now_iso
from .runstore import (
    CONFIG,
    RECORDS,
    TRACKED,
    AuditLock,
    RecordWriter,
    RunLock,
    atomic_write_bytes,
    read_config,
    read_run,
    safe_child,
    write_config,
)
from .trainer import _nonfinite, diagnostic_settings
from .verdicts import Alert, evaluate, needs_baseline, new_alerts

__all__ = ["TrackedRun", "Tracker", "TrackingError", "freeze_blocks", "print_alert"]

SOURCE = "tracker"  # Header.source of a run measured in the user's own loop
DIAGNOSTIC_SET = "diagnostic_set.npz"
INTERFACE = ("depth", "hidden_states", "forward_from")
ADAPTER_HINT = ("wrap it in engine.api.HiddenStateAdapter(module, embed=..., blocks=[...], head=...), which "
                "names the submodules (or callables) that make h_0..h_L")
_METHOD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]*")

CreditFn = Callable[[Probe], Sequence[Tensor]]
Credit = Union[str, Method, CreditFn, None]
Baseline = Union["TrackedRun", str, Sequence[float], Mapping[int, float], None]


class TrackingError(FaevalError, ValueError):
    """The tracker was asked for something it cannot measure or record; nothing was written."""


def print_alert(alert: Alert) -> None:
    """The default ``on_alert``: one line on stderr per walk-back alert."""
    print(f"faeval-tui: WALK BACK {alert.run_id}: {alert.headline}", file=sys.stderr, flush=True)


def check_model(model: Any) -> None:
    """``TrackingError`` unless ``model`` has the interface the diagnostics read (``Auditable``)."""
    missing = [name for name in INTERFACE if not hasattr(model, name)]
    if missing:
        raise TrackingError(f"{type(model).__name__} has no {', '.join(missing)}: the diagnostics read the hidden "
                            "states h_0..h_L through hidden_states and forward_from (engine.models.protocol."
                            "Auditable)", ADAPTER_HINT)


def freeze_blocks(model: nn.Module) -> list[nn.Parameter]:
    """Freeze blocks 1..L the way the engine's frozen-blocks baseline does (the constructor of
    ``engine.methods.frozen.FrozenBlocks``: ``requires_grad`` off), so the embedding and the
    readout train and the blocks stay at their initial values. Returns the parameters still
    trained: build the baseline's optimizer over them."""
    check_model(model)
    if not hasattr(model, "block_parameters"):
        raise TrackingError(f"{type(model).__name__} has no block_parameters: the tracker cannot tell its blocks "
                            "from its embedding and readout", ADAPTER_HINT)
    blocks = [p for layer in range(1, model.depth + 1) for p in model.block_parameters(layer)]
    if not blocks:
        raise TrackingError(f"the blocks of {type(model).__name__} have no parameters to freeze",
                            "name the blocks as submodules (HiddenStateAdapter(blocks=['layers.0', ...])), not as "
                            "callables, so their parameters can be found")
    get_method("frozen")(model, 0, torch.Generator())  # the engine's own freezing
    return [p for p in model.parameters() if p.requires_grad]


def _script() -> str:
    """The script that runs the user's loop: __main__'s file, else argv[0] ("-c", a notebook's kernel)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None) or (sys.argv[0] if sys.argv and sys.argv[0] else "<interactive>")
    return str(Path(path).resolve()) if path not in ("-c", "-m", "<interactive>") and Path(path).exists() else path


def _as_tensor(value: Any, what: str) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach()
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError) as err:
        raise TrackingError(f"the diagnostic set's {what} is not an array ({type(value).__name__}): {err}",
                            "give tensors or numpy arrays: x (n, ...), y (n,) integer labels") from None


def _fingerprint(x: Tensor, y: Tensor) -> str:
    digest = hashlib.sha256(b"faeval-diagnostic-set-v1\n")
    for t in (x, y):
        arr = t.cpu().contiguous().numpy()
        digest.update(f"{arr.dtype.str}{arr.shape}\n".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def _number(value: Any, what: str, low: float | None = None, high: float | None = None) -> float | None:
    if value is None:
        return None
    if isinstance(value, Tensor):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TrackingError(f"{what} must be a number, got {type(value).__name__}")
    value = float(value)
    if low is not None and not (low <= value <= high):  # NaN fails this too
        raise TrackingError(f"{what} = {value!r} is not in [{low:g}, {high:g}]",
                            "accuracies are fractions (0.93), not percentages")
    return value


class _Measured(Method):
    """A run's credit as ``diagnostics.measure`` asks for it, checked against the probe's
    hidden states (one a_l per h_l, each of h_l's shape) and detached, as
    ``engine.api.CreditFunction`` detaches; ``name`` is the run's method, so (d) is needed
    unless it is the frozen baseline (``verdicts.needs_baseline``)."""

    name = "tracked"

    def __init__(self, name: str, who: str, credit: CreditFn, null: Callable | None) -> None:
        self.name, self.who, self._credit, self._null = name, who, credit, null

    def credit(self, probe: Probe) -> list[Tensor]:
        raw = self._credit(probe)
        try:
            if isinstance(raw, (Tensor, str, bytes)):
                raise TypeError
            raw = list(raw)
        except TypeError:
            raise TrackingError(f"{self.who} returned a {type(raw).__name__}, not a list of tensors a_0..a_L",
                                "return [a_0, ..., a_L], one tensor per hidden state") from None
        n = len(probe.hs)
        if len(raw) != n:
            raise TrackingError(f"{self.who} returned {len(raw)} credits; the model has {n} hidden states "
                                f"h_0..h_{n - 1}", "return one a_l per hidden state, a_0 (the embedding's) included")
        for layer, (a, h) in enumerate(zip(raw, probe.hs)):
            if not isinstance(a, Tensor):
                raise TrackingError(f"{self.who}: a_{layer} is a {type(a).__name__}, not a tensor",
                                    "return tensors shaped like the hidden states")
            if tuple(a.shape) != tuple(h.shape):
                raise TrackingError(f"{self.who}: a_{layer} has shape {tuple(a.shape)}, h_{layer} has shape "
                                    f"{tuple(h.shape)}", "a_l holds every sample's credit for h_l: give it h_l's "
                                    "shape (n samples of the diagnostic set first)")
        return [a.detach() for a in raw]

    def null_credits(self, probe, generator, draws):
        return None if self._null is None else self._null(probe, generator, draws)

    def step(self, model, x, y, penalty):
        raise NotImplementedError("a tracked credit only measures: your loop trains")


class TrackedRun:
    """One run of a ``Tracker``: ``log`` after every epoch, ``close`` (or the tracker's) at the end."""

    def __init__(self, tracker: Tracker, spec: RunSpec, epochs: int, baseline: Baseline, credit: Credit,
                 writer: RecordWriter, lock: RunLock) -> None:
        self.tracker = tracker
        self.spec = spec
        self.epochs = epochs
        self._baseline = baseline
        self.credit = credit
        self._writer, self._lock = writer, lock
        self.records: list[Epoch] = []
        self.alerts: list[Alert] = []
        self.status: str | None = None  # the end line's status once the run has ended
        self._rules: dict[str, Method] = {}
        self._warned: set[str] = set()
        self._declared = time.perf_counter()

    @property
    def run_id(self) -> str:
        return self.spec.run_id

    @property
    def method(self) -> str:
        return self.spec.method

    @property
    def seed(self) -> int:
        return self.spec.seed

    @property
    def path(self) -> Path:
        return self.tracker.path / self.run_id / RECORDS

    @property
    def epoch(self) -> int:
        """The last epoch logged (0 before the first)."""
        return self.records[-1].epoch if self.records else 0

    def __repr__(self) -> str:
        return f"TrackedRun({self.run_id!r}, epoch {self.epoch}/{self.epochs}, {self.status or 'open'})"

    def rule(self, model: Any, name: str | None = None) -> Method:
        """The registered method ``name`` (default: this run's) for ``model``, built as the engine
        builds it for this seed (fa/dfa: B's drawn from ``derive_seed(seed, "feedback")``), once
        per run: train with its ``step`` and the tracker measures the same B's."""
        name = name or self.method
        if name not in self._rules:
            if name not in available_methods():
                raise TrackingError(f"no registered method is called {name!r} (registered: "
                                    f"{', '.join(available_methods())})",
                                    "pass your rule's credit function (probe -> [a_0..a_L]) as credit=, or "
                                    "register a Method subclass (engine.methods.register_method)")
            check_model(model)
            n_classes = prepare_model(model, self.tracker.x[:1].to(_device(model, self.tracker.x)))
            gen = torch.Generator().manual_seed(derive_seed(self.seed, "feedback"))
            self._rules[name] = get_method(name)(model, n_classes, gen)
        return self._rules[name]

    def _measured(self, model: Any, credit: Credit) -> _Measured:
        credit = credit if credit is not None else self.credit
        if credit is None:  # the run's own name: "frozen" measures the BP gradient, as FrozenBlocks does
            credit = "bp" if self.method == "frozen" else self.method
        who = f"the credit of {self.run_id}"
        if isinstance(credit, str):
            meth = self.rule(model, credit)
            return _Measured(self.method, f"{who} ({credit})", meth.credit, meth.null_credits)
        if isinstance(credit, Method):
            return _Measured(self.method, f"{who} ({type(credit).__name__})", credit.credit, credit.null_credits)
        if callable(credit):
            return _Measured(self.method, f"{who} ({getattr(credit, '__qualname__', type(credit).__name__)})",
                             credit, None)
        raise TrackingError(f"credit must be a registered method name, a Method or a callable probe -> [a_0..a_L], "
                            f"got {type(credit).__name__}")

    def _baseline_acc(self, epoch: int, given: float | None) -> float | None:
        base = self._baseline
        if isinstance(base, (Sequence, Mapping)) and not isinstance(base, str):
            if given is not None:
                return given
            if isinstance(base, Mapping):
                value = base.get(epoch)
            else:
                value = base[epoch - 1] if 1 <= epoch <= len(base) else None
            return _number(value, f"the baseline accuracy of epoch {epoch}", 0.0, 1.0)
        if base == GIVEN_BASELINE:
            return given
        if given is not None:
            against = self.spec.baseline or f"frozen-s{self.seed}"
            raise TrackingError(f"{self.run_id} compares against the run {against}: baseline_acc= is only for runs "
                                "declared with baseline='given' (or a list of accuracies)",
                                "declare the run with baseline='given' to pass the baseline's accuracy each epoch")
        rid = baseline_run(self.tracker.audit.cfg, self.spec)
        return None if rid is None else self.tracker._accuracy(rid, epoch)

    def log(self, model: Any, credit: Credit = None, *, test_acc: float | None = None,
            test_loss: float | None = None, train_loss: float | None = None, lr: float | None = None,
            baseline_acc: float | None = None, epoch: int | None = None,
            train_s: float | None = None) -> Epoch | None:
        """Measure ``model`` after an epoch and append its record; returns the record (None once
        the run has ended: a diverged run is not measured again, as the engine stops it).

        ``credit``: a callable ``probe -> [a_0..a_L]`` (``engine.methods.Probe``: ``hs``,
        ``grads``, ``error``, ``logits``), a registered method name, or a ``Method``; default
        the run's (declared ``credit=``, else its method's name; a frozen run's is "bp").
        ``test_acc``/``test_loss``: your test set's (a fraction, 0.93); each one left out is the
        diagnostic set's, from the probe's forward pass. ``baseline_acc``: the frozen baseline's
        accuracy this epoch, for runs declared with ``baseline="given"``. ``epoch``: default the
        last one + 1. ``train_s``: default the seconds since the tracker last returned.
        """
        tracker = self.tracker
        if tracker.closed:
            raise TrackingError(f"the tracker of {tracker.path} is closed: {self.run_id} cannot be measured",
                                "log inside the `with Tracker(...)` block")
        if self.status is not None:
            if "ended" not in self._warned:
                self._warned.add("ended")
                warnings.warn(f"{self.run_id} ended ({self.status}) at epoch {self.epoch}: it is not measured "
                              "again", RuntimeWarning, stacklevel=2)
            return None
        epoch = self._next_epoch(epoch)
        check_model(model)
        acc = _number(test_acc, "test_acc", 0.0, 1.0)
        loss = _number(test_loss, "test_loss")
        x, y = tracker._placed(model)
        try:
            n_classes = prepare_model(model, x)
        except (TypeError, ValueError, IndexError, AttributeError, RuntimeError) as err:
            raise TrackingError(f"{type(model).__name__} cannot run the diagnostic set through hidden_states and "
                                f"forward_from: {type(err).__name__}: {err}", ADAPTER_HINT) from err
        if tracker.n_classes > n_classes:
            raise TrackingError(f"the diagnostic set has labels up to {tracker.n_classes - 1}, but "
                                f"{type(model).__name__} outputs {n_classes} classes",
                                "measure the model on a diagnostic set of its own task")
        meth = self._measured(model, credit)
        if self.method == "frozen":
            self._check_frozen(model)
        base = self._baseline_acc(epoch, _number(baseline_acc, "baseline_acc", 0.0, 1.0))
        if train_s is None:
            train_s = time.perf_counter() - max(tracker._returned, self._declared)
        cfg = tracker.audit.cfg
        settings = diagnostic_settings(cfg.model_copy(update={"epochs": self.epochs}), epoch)
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "diagnostics", epoch))
        rec = epoch_record(model, meth, [], x, y, settings, gen, cfg.thresholds, epoch=epoch, baseline_acc=base,
                           train_loss=_number(train_loss, "train_loss"), lr=_number(lr, "lr"),
                           train_s=_number(train_s, "train_s"), diagnostic_set_in_test=True)
        if acc is not None or loss is not None:  # your test set's numbers, (d) derived again from them
            mine = {k: v for k, v in (("test_acc", acc), ("test_loss", loss)) if v is not None}
            rec = evaluate(rec.model_copy(update=mine), cfg.thresholds, needs_baseline(self.method))
        alerts = new_alerts(self.run_id, self.records, rec, cfg.thresholds)
        rec = rec.model_copy(update={"time": now_iso()})  # when written: watch orders alerts by it
        self._writer.append(rec)
        self.records.append(rec)
        for alert in alerts:
            self.alerts.append(alert)
            if tracker.on_alert is not None:
                tracker.on_alert(alert)
        bad = _nonfinite(rec)
        if bad:  # as the trainer ends a run: the record is written, then the run ends diverged
            msg = f"non-finite values in {', '.join(bad)} at epoch {epoch}: training diverged"
            if bad == ["a_norm"]:
                msg += " (the credit holds NaN or ±inf)"
            self._end("diverged", msg)
        tracker._returned = time.perf_counter()
        return rec

    def _next_epoch(self, epoch: int | None) -> int:
        last = self.records[-1].epoch if self.records else None
        if epoch is None:
            epoch = 1 if last is None else last + 1
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)):
            raise TrackingError(f"epoch must be an int, got {type(epoch).__name__}")
        epoch = int(epoch)
        if epoch < 0 or (last is not None and epoch <= last):
            raise TrackingError(f"{self.run_id}: epoch {epoch} is not after the last one logged "
                                f"({last if last is not None else 'none yet'})", "log each epoch once, in order")
        if epoch > self.epochs:
            raise TrackingError(f"{self.run_id} was declared with {self.epochs} epochs; epoch {epoch} is past them",
                                "declare the run with the number of epochs your loop trains: "
                                "tracker.run(..., epochs=N)")
        return epoch

    def _check_frozen(self, model: Any) -> None:
        if "frozen" in self._warned or not hasattr(model, "block_parameters"):
            return
        if any(p.requires_grad for layer in range(1, model.depth + 1) for p in model.block_parameters(layer)):
            self._warned.add("frozen")
            warnings.warn(f"{self.run_id} is the frozen-blocks baseline, but the blocks of {type(model).__name__} "
                          "require gradients: call engine.tracker.freeze_blocks(model) before training it, or (d) "
                          "compares against a baseline whose blocks trained", RuntimeWarning, stacklevel=3)

    def _end(self, status: str, message: str = "", tb: str | None = None) -> None:
        if self.status is not None:
            return
        self.status = status
        try:
            self._writer.append(End(status=status, epoch=self.epoch, message=message, traceback=tb))
        except StoreError:
            pass  # the disk refused even that: the missing end line reads as "stopped"
        finally:
            self._writer.close()
            self._lock.release()

    def close(self) -> None:
        """End the run as finished (the tracker's ``close`` ends every run still open)."""
        short = f"the loop ended after epoch {self.epoch} of {self.epochs}" if self.epoch < self.epochs else ""
        self._end("finished", short)

    def __enter__(self) -> TrackedRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        else:
            self._end(*_outcome(exc_type, exc, tb, self))
        return False


def _outcome(exc_type, exc, tb, run: TrackedRun) -> tuple[str, str, str | None]:
    """How an exception leaving the user's loop ends a run: (status, message, traceback)."""
    if issubclass(exc_type, KeyboardInterrupt):
        return "stopped", f"interrupted (KeyboardInterrupt) after epoch {run.epoch}", None
    if issubclass(exc_type, SystemExit) and exc.code in (None, 0):
        return "finished", "", None
    msg = str(exc) if isinstance(exc, FaevalError) else f"{exc_type.__name__}: {exc}"
    return "failed", msg, "".join(traceback.format_exception(exc_type, exc, tb, limit=8))


def _device(model: Any, x: Tensor) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return x.device


class Tracker:
    """An audit directory that runs of your own training loop are measured into.

    ``x, y``: the fixed diagnostic set (a test split; its first ``diagnostics.n_samples``
    samples, or all of it rounded down to a multiple of ``stability_batches``, as the engine
    takes it). ``epochs``: how many epochs the runs train (a run may declare its own).
    ``audit``: the directory to create or add runs to; default a new ``<runs_dir>/<name>-<time>``.
    ``diagnostics``, ``thresholds``: the engine's config sections (dicts or models; default the
    protocol's). ``n_classes``: default the largest label + 1. ``dataset``: a name for the data,
    for the headers. ``script``: default the running script. ``on_alert``: called with each
    walk-back alert (default: a line on stderr; None: silent).

    Use it as a context manager: leaving the block ends every open run as finished, an
    exception ends them as failed with its message (KeyboardInterrupt: stopped) and goes on.
    """

    def __init__(self, x: Any, y: Any, *, epochs: int | None = None, runs_dir: Path | str = "runs",
                 name: str = "tracked", audit: Path | str | None = None, n_classes: int | None = None,
                 diagnostics: DiagnosticsConfig | Mapping[str, Any] | None = None,
                 thresholds: Thresholds | Mapping[str, Any] | None = None, dataset: str = "your data",
                 script: str | None = None, on_alert: Callable[[Alert], None] | None = print_alert) -> None:
        self.closed = True  # until the lock is held
        self.script = script or _script()
        self.dataset = dataset
        self.on_alert = on_alert
        self.runs: dict[str, TrackedRun] = {}
        self._returned = time.perf_counter()
        x, y = _as_tensor(x, "x"), _as_tensor(y, "y")
        if y.ndim != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise TrackingError(f"the diagnostic set's labels y must be a 1-d integer array, got shape "
                                f"{tuple(y.shape)} of {y.dtype}", "give y as class indices 0..C-1")
        if x.ndim < 2 or x.shape[0] != y.shape[0]:
            raise TrackingError(f"the diagnostic set's x has shape {tuple(x.shape)} for {y.shape[0]} labels",
                                "give x as (n, ...) with one row per label")
        if y.numel() and int(y.min()) < 0:
            raise TrackingError("the diagnostic set's labels must be class indices 0..C-1, not negative")
        y = y.long()
        given = (diagnostics, thresholds)
        path = Path(audit) if audit is not None else None
        if path is not None and (path / CONFIG).exists():
            self._reopen(path, x, y, epochs, given)
        else:
            if epochs is None:
                raise TrackingError("a new tracked audit needs epochs=: how many epochs your runs train",
                                    "Tracker(x, y, epochs=20, ...)")
            self._create(path, runs_dir, name, x, y, epochs, n_classes, given)
        self.closed = False

    # ---- the audit directory -------------------------------------------------------
    def _diagnostic_set(self, cfg: AuditConfig, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        dc = cfg.diagnostics
        m = diagnostic_n(dc.n_samples, dc.stability_batches, x.shape[0])
        need = max(MIN_DIAGNOSTIC_SAMPLES, dc.stability_batches)
        if m < need:
            raise TrackingError(f"the diagnostic set has {x.shape[0]} samples: {m} of them would be used (a multiple "
                                f"of diagnostics.stability_batches = {dc.stability_batches}), fewer than the {need} "
                                "the measurements need", "give more test samples (the thresholds assume 1024)")
        return x[:m], y[:m]

    def _create(self, path: Path | None, runs_dir, name: str, x: Tensor, y: Tensor, epochs: int,
                n_classes: int | None, given: tuple) -> None:
        diagnostics, thresholds = given
        data = {"name": name, "epochs": _int(epochs, "epochs"), "methods": ["frozen"], "download": False,
                "diagnostics": _section(diagnostics), "thresholds": _section(thresholds)}
        cfg = validate({**data, "dataset": "digits"}, "Tracker(...)")  # names, epochs and sections checked first
        x, y = self._diagnostic_set(cfg, x, y)
        classes = int(y.max()) + 1 if n_classes is None else int(n_classes)
        if classes < 2 or classes <= int(y.max()):
            raise TrackingError(f"n_classes = {classes}, but the diagnostic set's labels go up to {int(y.max())}")
        if path is None:
            path = new_audit_dir(runs_dir, cfg.name)
        else:
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StoreError(f"cannot create {path}: {err.strerror or err}",
                                 "choose a writable directory") from None
            if any(path.iterdir()):
                raise StoreError(f"{path} is not empty and not an audit directory (no {CONFIG})",
                                 "give a new or empty directory, or a tracked audit to add runs to")
        self.path = path
        self._lock = AuditLock(path, shared=True).acquire()
        try:
            buf = io.BytesIO()
            xs, ys = x.cpu().numpy(), y.cpu().numpy()
            np.savez(buf, x_train=np.zeros((0, *xs.shape[1:]), xs.dtype), y_train=np.zeros(0, ys.dtype),
                     x_test=xs, y_test=ys, n_classes=np.asarray(classes))
            atomic_write_bytes(path / DIAGNOSTIC_SET, buf.getvalue())
            digest = hashlib.sha256(buf.getvalue()).hexdigest()
            marker = {"source": SOURCE, "created": now_iso(), "script": self.script, "n_classes": classes,
                      "diagnostic_set": {"file": DIAGNOSTIC_SET, "n": int(x.shape[0]), "shape": list(x.shape[1:]),
                                         "fingerprint": _fingerprint(x, y)}}
            atomic_write_bytes(path / TRACKED, (json.dumps(marker, indent=2) + "\n").encode())
            desc = (f"tracked in your own training loop ({Path(self.script).name}) by engine.tracker: the model, "
                    "batch, lr and schedule keys of this config are the engine's defaults, not your network's")
            cfg = validate({**data, "dataset": "npz", "data_path": str((path / DIAGNOSTIC_SET).resolve()),
                            "data_sha256": digest, "description": desc}, "Tracker(...)")
            write_config(path, cfg.dump())
        except BaseException:
            self._lock.release()
            raise
        self.audit = Audit(path, cfg)
        self.x, self.y, self.n_classes = x, y, classes
        self._on_device: dict[torch.device, tuple[Tensor, Tensor]] = {}
        self._default_epochs = epochs

    def _reopen(self, path: Path, x: Tensor, y: Tensor, epochs: int | None, given: tuple) -> None:
        if not (path / TRACKED).is_file():
            raise StoreError(f"{path} is an audit the engine trains (faeval-tui run), not a tracked one",
                             "track your loop into a new directory (Tracker(..., runs_dir=...))")
        self.path = path
        self._lock = AuditLock(path, shared=True).acquire()
        try:
            audit = Audit.open(path)
            marker = json.loads((path / TRACKED).read_text(encoding="utf-8"))
            x, y = self._diagnostic_set(audit.cfg, x, y)
            if _fingerprint(x, y) != marker.get("diagnostic_set", {}).get("fingerprint"):
                raise TrackingError(f"{path} measured its runs on another diagnostic set (n = "
                                    f"{marker.get('diagnostic_set', {}).get('n')}; this one has {x.shape[0]})",
                                    "runs of one audit are compared on one fixed set: give the same x, y, or "
                                    "track into a new audit")
            for key, value, model in zip(("diagnostics", "thresholds"), given, (DiagnosticsConfig, Thresholds)):
                if value is not None and _full(model, value, key) != getattr(audit.cfg, key).model_dump():
                    raise TrackingError(f"{path} was measured under other {key} than the ones given",
                                        f"leave {key}= out to use the audit's, or track into a new audit")
        except (OSError, ValueError) as err:
            self._lock.release()
            if isinstance(err, FaevalError):
                raise
            raise StoreError(f"cannot read {path / TRACKED}: {err}", "the tracked audit is damaged") from None
        except BaseException:
            self._lock.release()
            raise
        self.audit = audit
        self.x, self.y = x, y
        self.n_classes = int(marker.get("n_classes") or int(y.max()) + 1)
        self._on_device = {}
        self._default_epochs = epochs

    def _placed(self, model: Any) -> tuple[Tensor, Tensor]:
        dev = _device(model, self.x)
        if dev not in self._on_device:
            self._on_device[dev] = (self.x.to(dev), self.y.to(dev))
        return self._on_device[dev]

    def _accuracy(self, rid: str, epoch: int) -> float | None:
        """Run ``rid``'s test accuracy at ``epoch``: from memory when this tracker writes it, else its records."""
        run = self.runs.get(rid)
        if run is not None:
            records = run.records
        else:
            try:
                records = read_run(safe_child(self.path, rid) / RECORDS).epochs
            except FaevalError:
                return None
        return next((r.test_acc for r in records if r.epoch == epoch), None)

    # ---- runs ----------------------------------------------------------------------
    def run(self, method: str, seed: int = 0, *, penalty: float = 0.0, baseline: Baseline = None,
            epochs: int | None = None, credit: Credit = None) -> TrackedRun:
        """Declare a run: its header and start line are written at once (``watch`` shows it).

        ``method``: your rule's name (``"frozen"`` is the frozen-blocks baseline). ``seed``, ``penalty``:
        what your run trained with (they name it: ``dfa-s0``, ``dfa-lam0.001-s0``). ``baseline``: (d)'s
        frozen baseline: a run of this tracker (or its id), a list of accuracies for epochs 1..E (or
        a dict epoch → accuracy), ``"given"`` (pass ``baseline_acc=`` to each ``log``), or None:
        the frozen run of the same seed, if the audit has one. ``epochs``: default the tracker's.
        ``credit``: the default credit of its ``log`` calls.
        """
        if self.closed:
            raise TrackingError(f"the tracker of {self.path} is closed", "declare runs inside the `with` block")
        spec = self._spec(method, seed, penalty, baseline)
        epochs = self._epochs(epochs)
        if spec.run_id in self.runs:
            raise StoreError(f"run {spec.run_id} is already tracked by this tracker",
                             "declare each run once; give another seed or method name for another run")
        run_dir = safe_child(self.path, spec.run_id)
        try:
            run_dir.mkdir(exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create {run_dir}: {err.strerror or err}",
                             "check the disk and permissions") from None
        lock = RunLock(run_dir).acquire()
        try:
            records = run_dir / RECORDS
            if records.exists() and records.stat().st_size > 0:
                old = read_run(records)
                what = (f"{old.end.status} at epoch {old.end.epoch}" if old.end else
                        f"{len(old.epochs)} epochs, no end line")
                raise StoreError(f"run {spec.run_id} of {self.path} already has records ({what})",
                                 "a run's records are written once: track it under another seed or method name, "
                                 "or into a new audit")
            self._note_run(spec, epochs)
            writer = RecordWriter(records)
            cfg = self.audit.cfg
            header = Header(run_id=spec.run_id, method=spec.method, seed=spec.seed, penalty=spec.penalty,
                            parent=spec.parent, epochs=epochs, dataset=self.dataset, config=cfg.dump(),
                            source=SOURCE, script=self.script, baseline=spec.baseline)
            try:
                writer.append(header)
                writer.append(Start(epoch=0))
            except BaseException:
                writer.close()
                raise
        except BaseException:
            lock.release()
            raise
        run = TrackedRun(self, spec, epochs, baseline, credit, writer, lock)
        self.runs[spec.run_id] = run
        return run

    def frozen(self, seed: int = 0, **kwargs: Any) -> TrackedRun:
        """``run("frozen", seed)``: the frozen-blocks baseline (train it after ``freeze_blocks``)."""
        return self.run("frozen", seed, **kwargs)

    def _spec(self, method: str, seed: int, penalty: float, baseline: Baseline) -> RunSpec:
        if not isinstance(method, str) or not _METHOD_NAME.fullmatch(method):
            raise TrackingError(f"method name {method!r} cannot name a run",
                                "use letters, digits, '_', '+' and '-', starting with a letter or digit")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
            raise TrackingError(f"seed must be an int in [0, 2^63), got {seed!r}")
        lam = _number(penalty, "penalty")
        if not (math.isfinite(lam) and lam >= 0):
            raise TrackingError(f"penalty must be finite and ≥ 0, got {penalty!r}")
        rid = run_id(method, int(seed), lam)
        named = parse_run_id(rid)
        if named is None or (named.method, named.seed, f"{named.penalty:g}") != (method, int(seed), f"{lam:g}"):
            raise TrackingError(f"method name {method!r} reads back as another run ({rid})",
                                "avoid names ending in -s<digits> or holding -lam")
        return RunSpec(rid, method, int(seed), lam, named.parent, None, self._baseline_name(method, baseline))

    def _baseline_name(self, method: str, baseline: Baseline) -> str | None:
        if baseline is None:
            return None
        if method == "frozen":
            raise TrackingError("a frozen run is the baseline itself: it has no baseline")
        if isinstance(baseline, TrackedRun):
            if baseline.tracker.path.resolve() != self.path.resolve():
                raise TrackingError(f"the baseline {baseline.run_id} belongs to another audit "
                                    f"({baseline.tracker.path})",
                                    "track the baseline in this audit, or pass its accuracies")
            return baseline.run_id
        if isinstance(baseline, str):
            if baseline != GIVEN_BASELINE and parse_run_id(baseline) is None:
                raise TrackingError(f"baseline {baseline!r} is neither a run id (frozen-s0) nor 'given'")
            return baseline
        if isinstance(baseline, (Sequence, Mapping)):
            values = baseline.values() if isinstance(baseline, Mapping) else baseline
            for v in values:
                _number(v, "a baseline accuracy", 0.0, 1.0)
            return GIVEN_BASELINE
        raise TrackingError(f"baseline must be a tracked run, a run id, 'given' or accuracies per epoch, got "
                            f"{type(baseline).__name__}")

    def _epochs(self, epochs: int | None) -> int:
        epochs = epochs if epochs is not None else getattr(self, "_default_epochs", None) or self.audit.cfg.epochs
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or not 1 <= int(epochs) <= 100_000:
            raise TrackingError(f"epochs must be an int in [1, 100000], got {epochs!r}")
        return int(epochs)

    def _note_run(self, spec: RunSpec, epochs: int) -> None:
        """config.yaml lists the audit's seeds, its registered methods and its longest run, so
        the report's header says what was tracked (a rewrite under an exclusive lock on
        tracked.json: two trackers of one audit never lose each other's runs)."""
        import fcntl

        fd = os.open(self.path / TRACKED, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = read_config(self.path)
            specs = [s for s in self.audit.planned() if s.run_id != spec.run_id] + [spec]
            headers = [read_run(self.path / s.run_id / RECORDS).header for s in specs if s is not spec]
            seeds = list(dict.fromkeys(s.seed for s in specs))
            known = set(available_methods())
            methods = list(dict.fromkeys(["frozen"] + [s.method for s in specs if s.method in known]))
            longest = max([epochs] + [h.epochs for h in headers if h is not None])
            cfg = validate({**data, "seeds": seeds, "methods": methods, "epochs": longest}, str(self.path / CONFIG))
            if cfg.dump() != self.audit.cfg.dump():
                write_config(self.path, cfg.dump())
                self.audit = Audit(self.path, cfg)
        finally:
            os.close(fd)  # drops the lock

    # ---- the end -------------------------------------------------------------------
    def close(self) -> None:
        """End every open run as finished and release the audit."""
        self._close(None, None, None)

    def _close(self, exc_type, exc, tb) -> None:
        if self.closed:
            return
        try:
            for run in self.runs.values():
                if run.status is None:
                    if exc_type is None:
                        run.close()
                    else:
                        run._end(*_outcome(exc_type, exc, tb, run))
        finally:
            self.closed = True
            self._lock.release()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._close(exc_type, exc, tb)
        return False  # an exception of the loop goes on to the caller

    def __repr__(self) -> str:
        return f"Tracker({str(self.path)!r}, {len(self.runs)} runs{', closed' if self.closed else ''})"


def _int(value: Any, what: str) -> Any:
    """A numpy or torch integer as an int (config validation is strict); anything else as it is."""
    if isinstance(value, (np.integer, Tensor)) and not isinstance(value, bool):
        try:
            return int(value)
        except (TypeError, ValueError, RuntimeError):
            raise TrackingError(f"{what} must be an int, got {value!r}") from None
    return value


def _full(model: type, value: Any, key: str) -> dict[str, Any]:
    """``value`` (a dict or a config model) as the whole config section ``model`` validates."""
    try:
        return model.model_validate(_section(value)).model_dump()
    except ValueError as err:
        raise TrackingError(f"{key}: {err}") from None


def _section(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if hasattr(value, "model_dump"):
        return value.model_dump()
    if isinstance(value, Mapping):
        return dict(value)
    raise TrackingError(f"diagnostics and thresholds are dicts or the engine's config models, got "
                        f"{type(value).__name__}")
