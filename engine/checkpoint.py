"""What a run may resume from: its checkpoint, checked against its records and the config.

``resume_state`` refuses with a ``StoreError`` (nothing written) when a run's state
cannot be trusted: a checkpoint that is empty, damaged or another run's, a checkpoint
ahead of the records (the records are the source of truth: they are written first), or
a config.yaml that no longer matches the config a run's header or checkpoint says it was
trained under (``config_changes``: the one comparison).

Kept checkpoints (config ``keep_checkpoints``) are copies of an epoch's checkpoint.pt in
``<run>/checkpoints/epoch-0001.pt`` (``kept_path``), written before the rolling one and never
deleted by it; resume never reads them. ``faeval-tui measure`` (``engine.remeasure``) does.
"""
from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from .audit import Audit
from .config import UNCOMPARED, KeepCheckpoints, config_changes  # noqa: F401  (re-exported)
from .errors import StoreError
from .plan import RunSpec, identity_mismatch
from .records import SCHEMA_VERSION, Epoch
from .runstore import CHECKPOINT, CONFIG, RECORDS, RunLog, read_run
from .verdicts import WALK_BACK

_TORCH_ADVICE = re.compile(r"weights_only|trusted source|file an issue|documentation of torch\.load|safe_globals|"
                           r"internal miniz error|high likelihood|this can happen if|in pytorch 2\.\d", re.I)
_RESTART = "delete it to restart that run from scratch"
KEPT_DIR = "checkpoints"  # <run>/checkpoints/epoch-0001.pt: the kept checkpoints
_KEPT_NAME = re.compile(r"epoch-(\d{4,})\.pt")


def kept_path(run_dir: Path, epoch: int) -> Path:
    """Where the kept checkpoint of ``epoch`` lives: ``<run>/checkpoints/epoch-0001.pt``."""
    return run_dir / KEPT_DIR / f"epoch-{epoch:04d}.pt"


def kept_epochs(run_dir: Path) -> list[int]:
    """The epochs with a kept checkpoint in ``run_dir``, ascending (by file name)."""
    try:
        names = [p.name for p in (run_dir / KEPT_DIR).iterdir() if p.is_file()]
    except OSError:
        return []
    return sorted(int(m[1]) for m in map(_KEPT_NAME.fullmatch, names) if m is not None)


def keeps_epoch(policy: KeepCheckpoints, history: list[Epoch], rec: Epoch) -> bool:
    """Does ``rec``'s epoch keep a checkpoint under ``policy``? ``history``: the run's earlier
    epochs, which say whether a walk-back diagnostic (a), (b) or (d) fires for the first time."""
    seen = {k for e in history if e.epoch < rec.epoch for k in e.fired}
    first = any(k in WALK_BACK and k not in seen for k in rec.fired)
    return policy.keeps(rec.epoch, first)


def _load_reason(err: BaseException) -> str:
    """torch's reason for refusing a file, without its advice (never the unsafe retry)."""
    sentences = (p.strip().removeprefix("WeightsUnpickler error:").strip()
                 for p in re.split(r"(?<=[.!?:])\s+|\n+", str(err)))
    reason = " ".join(p for p in sentences if p and not _TORCH_ADVICE.search(p))
    if len(reason) > 200:
        reason = reason[:199] + "…"
    return reason or type(err).__name__


def load_checkpoint(path) -> dict[str, Any]:
    """Load with ``weights_only=True``: a checkpoint can hold tensors and plain data, never code."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as err:
        raise StoreError(f"cannot read checkpoint {path}: {err.strerror or err}",
                         "check the file's permissions and the disk") from None
    if size == 0:  # a copy or a write that never finished (checkpoints are written to a temporary file)
        raise StoreError(f"checkpoint {path} is empty or truncated (0 bytes)",
                         f"it was cut off before anything was written; {_RESTART}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt, cut-off or foreign files
        reason = _load_reason(err)
        refused = isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in str(err)
        if refused:
            raise StoreError(f"checkpoint {path} cannot be loaded: it is not a file of tensors and plain data "
                             f"({reason.removeprefix('Weights only load failed.').strip() or 'refused'})",
                             "it is corrupt or not a faeval-tui checkpoint (nothing in it was run); "
                             f"{_RESTART}") from None
        if isinstance(err, EOFError) or magic == b"PK\x03\x04":  # torch's zip format, cut off or damaged
            raise StoreError(f"checkpoint {path} is truncated or damaged ({size} bytes: {reason})",
                             f"it was cut off or changed after it was written (a full disk, an unfinished "
                             f"copy); {_RESTART}") from None
        raise StoreError(f"checkpoint {path} cannot be loaded: {reason}",
                         f"it is corrupt or not a faeval-tui checkpoint; {_RESTART}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise StoreError(f"{path} is not a faeval-tui checkpoint", "delete it to restart that run from scratch")
    if state.get("schema", 0) > SCHEMA_VERSION:
        raise StoreError(f"checkpoint {path} has schema {state['schema']}, newer than this faeval-tui",
                         "upgrade faeval-tui")
    return state


def check_owner(state: dict[str, Any], path, spec: RunSpec) -> None:
    if state.get("run_id") != spec.run_id:
        raise StoreError(f"checkpoint {path} belongs to another run ({state.get('run_id')!r}), not {spec.run_id!r}",
                         "move the foreign checkpoint away (the run then restarts from scratch)")


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value


def check_config(audit: Audit, run_id: str, trained: dict[str, Any], source: str) -> None:
    """Refuse to continue ``run_id`` when config.yaml no longer says what ``source`` (its
    records' header, its checkpoint) says it was trained under."""
    changes = config_changes(trained, audit.cfg.dump())
    if not changes:
        return
    listed = "; ".join(f"{key}: {_show(was)} in {source}, {_show(now)} in {CONFIG}" for key, was, now in changes)
    restore = ", ".join(f"{key}: {_show(was)}" for key, was, _ in changes)
    raise StoreError(f"{audit.path / CONFIG} no longer matches the config run {run_id} was trained under: {listed}",
                     f"restore config.yaml ({restore}) to resume this audit, or start a new audit for the new "
                     "values; an audit's runs all train under one config")


def check_audit_config(audit: Audit) -> None:
    """Every run of ``audit`` with records (finished ones too: the verdicts compare them with
    the runs still to train) was trained under config.yaml's values (``check_config``)."""
    for spec in audit.planned():
        path = audit.run_dir(spec.run_id) / RECORDS
        header = read_run(path).header if path.is_file() else None
        if header is not None:
            check_config(audit, spec.run_id, header.config, f"{spec.run_id}'s header")


def resume_state(audit: Audit, spec: RunSpec) -> tuple[RunLog | None, dict[str, Any] | None]:
    """The records and the checkpoint state (None: a fresh start) ``spec`` continues from,
    checked before anything is written; ``StoreError`` when they cannot be trusted.

    The records are the source of truth (an epoch's line is fsynced before its checkpoint
    is written). A checkpoint behind them (a crash between the two) is the normal case: the
    run continues from it and the re-run epochs' lines replace the old ones. A checkpoint
    ahead of them (its epoch past the last recorded one: records deleted, cut or restored
    from an older copy) would continue with epochs never recorded: it is refused.
    """
    run_dir = audit.run_dir(spec.run_id)
    records_path, ckpt_path = run_dir / RECORDS, run_dir / CHECKPOINT
    previous = read_run(records_path, audit.cfg.thresholds) if records_path.exists() else None
    state = None
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        check_owner(state, ckpt_path, spec)
    if previous is not None and previous.header is not None:
        wrong = identity_mismatch(previous.header, spec)
        if wrong:
            raise StoreError(f"{records_path}: its header says {wrong}",
                             f"restore the header line of {records_path} (it was edited), or move the run aside "
                             "to train it again")
        check_config(audit, spec.run_id, previous.header.config, "its records' header")
    if state is None:
        return previous, None
    check_config(audit, spec.run_id, state.get("config") or {}, "its checkpoint")
    try:
        epoch = int(state.get("epoch", 0))
    except (TypeError, ValueError):
        raise StoreError(f"{ckpt_path} is not a faeval-tui checkpoint (no epoch)", _RESTART.capitalize()) from None
    last = previous.epochs[-1].epoch if previous is not None and previous.epochs else 0
    if epoch > last:
        where = (f"{records_path} does not exist" if previous is None else
                 f"{records_path} records no epoch" if last == 0 else
                 f"{records_path} records epochs only up to epoch {last}")
        missing = f"epoch {epoch}" if epoch == last + 1 else f"epochs {last + 1}–{epoch}"
        raise StoreError(f"checkpoint {ckpt_path} is of epoch {epoch}, but {where}: {missing} of run "
                         f"{spec.run_id} would never be recorded",
                         f"the records are the source of truth: delete {ckpt_path} to restart that run from "
                         "scratch (or put back the records.jsonl that goes with it)")
    return previous, state


# atomic_write_bytes's temporary names: of checkpoint.pt in the run directory, of a kept one in checkpoints/
_CHECKPOINT_TMP = re.compile(rf"\.{re.escape(CHECKPOINT)}\.tmp(\d+)")
_KEPT_TMP = re.compile(r"\.epoch-\d{4,}\.pt\.tmp(\d+)")


def _alive(pid: int) -> bool:
    if pid <= 0 or pid == os.getpid():  # this process writes this run's checkpoint only after the cleanup
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_checkpoint_temps(run_dir: Path) -> None:
    """Remove ``.checkpoint.pt.tmp<pid>`` files a killed process left in ``run_dir`` and
    ``.epoch-0001.pt.tmp<pid>`` ones in its ``checkpoints/`` (only those exact names, only of
    processes that are gone)."""
    _remove_temps(run_dir, _CHECKPOINT_TMP)
    if (run_dir / KEPT_DIR).is_dir():
        _remove_temps(run_dir / KEPT_DIR, _KEPT_TMP)


def _remove_temps(folder: Path, pattern: re.Pattern[str]) -> None:
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for path in entries:
        m = pattern.fullmatch(path.name)
        if m is not None and not _alive(int(m[1])):
            try:
                if path.is_file() and not path.is_symlink():
                    path.unlink()
            except OSError:
                pass  # a leftover that cannot go (read-only disk) harms nothing
