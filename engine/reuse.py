"""Controls reused across audits: a finished run is copied, not trained again, into a later
audit under the same runs dir that would train an identical run (config ``reuse``, on by
default; ``--no-reuse`` is ``--set reuse=false``).

**The key** of a run is the SHA-256 of the canonical JSON (sorted keys, no spaces) of
``key_contents``: everything that decides the run's records.

    key          KEY_SCHEMA, the layout of this dict
    data         engine.data.task_fingerprint of the task the runner trains on (every tensor's
                 dtype, shape and bytes, n_classes, image_shape)
    network      the run's network, cfg.variant(spec.model), without its display name
    recipe       epochs, batch_size, lr, weight_decay, schedule, precision
    device       the resolved device type, "cpu" or "cuda" (their numerics differ)
    seed, method, penalty
    diagnostics  the whole diagnostics section (n_samples, stability_batches, rho_*, null_*)
    method_config  {section: settings} for a method that names a config_section (ep), else null
    code         {"faeval_tui": its version, "torch": torch's version, "sources": SHA-256 over
                 the files that decide records: engine/trainer.py, diagnostics.py, data.py,
                 model.py, methods/base.py, methods/feedback.py, models/*.py, and the module of
                 every Method class in the method's MRO (a plugin's own file)}
    baseline     for a run compared against a frozen baseline (plan.baseline_run), that run's
                 key (its epoch lines store baseline_acc read from it while training); else null

Not in it: the thresholds (every reader derives fired, degenerate and (d) again; the copy's
lines are re-derived under this audit's), threads and workers, the audit's name, methods,
seeds and penalties (which runs exist, not how one trains), the run id and model name.
A method whose code cannot be read (a class defined in a notebook) has no key: its runs are
neither reused nor offered. Code changed at run time (a monkeypatch) is not seen: turn
reuse off for that.

**The index** is ``<audit>/reuse.json``, one per audit, written (atomically, by the process
that holds the audit's lock) when one of its runs ends ``finished`` — trained or resumed by
``AuditRunner``, or reused itself; diverged, failed and stopped runs never are:

    {"schema": 1, "runs": {"<key>": {"run": "dfa-s42", "records_sha256": "…",
        "checkpoint_sha256": "…", "kept": {"epoch-0002.pt": "…"}, "time": "…",
        "faeval_tui": "0.1.0", "reused_from": null}}}

A lookup reads the index of every audit directory in the runs dir (the audit's parent):
entries live and go with their audit, and nothing but audits is added to the runs dir.

**A reuse** happens when the scheduler is about to train a run that is fresh (no records
beyond a queued header, no checkpoint) with ``reuse`` on. Each candidate (runs trained
there first, then copies; newest first) is verified and the first that passes is copied:

- records.jsonl and checkpoint.pt (and the kept checkpoints the entry lists) hash to the
  entry's SHA-256s: not modified, truncated or deleted since the run finished;
- the records read without problems, end ``finished`` at ``epochs`` with epochs 1..epochs,
  and the header's method, seed, penalty and epochs are the run's;
- the header's own config gives the same key contents (recipe, network, diagnostics,
  method settings) as this audit's;
- each epoch's ``baseline_acc`` is this audit's frozen run's ``test_acc`` at that epoch
  (None where it has none), so a method run is only reused beside the baseline it was
  measured against;
- the checkpoint loads (``weights_only``) at epoch ``epochs``, and every epoch this audit's
  ``keep_checkpoints`` keeps has a kept checkpoint in the source.

The copy: records.jsonl gets a new header (this audit's run id, model and config,
``reused_from`` = the source run directory), a start line, the source's epoch lines
(derived fields re-derived under this audit's thresholds; everything measured as it is),
then — after checkpoint.pt (and kept ones) are written with this run's id and config — the
end line ``finished``, message ``reused from <source>``. A crash part-way leaves a run that
reads as stopped and trains again on resume. The listener hears RunStarted, an EpochDone
per epoch (with its alerts) and RunEnded, as from training.

A candidate that fails verification is not reused: the reason goes to ``warn`` (stderr:
the terminal for ``faeval-tui run``, trainer.log for the console's trainer) and
``AuditRunner.not_reused``, and the run trains (or the next candidate is tried). Nothing in
this module raises past the scheduler.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from .audit import Audit
from .checkpoint import KEPT_DIR, keeps_epoch, kept_path, load_checkpoint
from .config import AuditConfig, validate
from .errors import FaevalError, StoreError
from .methods import Method, get_method
from .plan import RunSpec, make_header
from .records import End, Epoch, Header, Start, now_iso
from .runstore import CHECKPOINT, RECORDS, RunLog, append_line, atomic_write_bytes, read_run, safe_child
from .userdata import file_sha256, short
from .verdicts import evaluate, needs_baseline

INDEX = "reuse.json"
INDEX_SCHEMA = 1
KEY_SCHEMA = 1
RECIPE = ("epochs", "batch_size", "lr", "weight_decay", "schedule", "precision")
_ENGINE = Path(__file__).resolve().parent
# the engine's files that decide what a run's records hold (beside the method's own modules)
RECORD_CODE = ("trainer.py", "diagnostics.py", "data.py", "model.py", "methods/base.py", "methods/feedback.py",
               "models")


Warn = Callable[[str], None]  # where the reasons a candidate was refused go (AuditRunner's ``warn``)


class NotReusable(Exception):
    """Why a candidate source is not reused (the message is the reason, for the user)."""


# ---------------------------------------------------------------------------- the key

def tool_version() -> str:
    try:
        return version("faeval-tui")
    except PackageNotFoundError:
        return "unknown"


@cache
def _file_digest(path: str) -> str:
    """A source file's SHA-256, read once per process: the code as this process runs it."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _engine_files() -> Iterator[tuple[str, Path]]:
    for rel in RECORD_CODE:
        path = _ENGINE / rel
        for p in sorted(path.glob("*.py")) if path.is_dir() else [path]:
            yield f"engine/{p.relative_to(_ENGINE).as_posix()}", p


def code_version(method_cls: type[Method]) -> dict[str, str] | None:
    """faeval-tui's and torch's versions and one SHA-256 over the source files that decide a
    run's records (``RECORD_CODE`` and the module of every Method class in ``method_cls``'s
    MRO); None when one of them cannot be read."""
    files: dict[str, str] = {}
    try:
        for name, path in _engine_files():
            files[name] = _file_digest(str(path))
        for klass in method_cls.__mro__:
            if not (isinstance(klass, type) and issubclass(klass, Method)):
                continue
            module = sys.modules.get(klass.__module__)
            source = getattr(module, "__file__", None)
            if not source:
                return None
            files[f"module {klass.__module__}"] = _file_digest(str(source))
    except OSError:
        return None
    sources = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return {"faeval_tui": tool_version(), "torch": str(torch.__version__), "sources": sources}


def key_contents(cfg: AuditConfig, spec: RunSpec, data: str, device: str, baseline: str | None = None,
                 code: dict[str, str] | None = None) -> dict[str, Any]:
    """What the key of ``spec`` in ``cfg`` hashes (the module docstring lists it). ``data``: the
    task's fingerprint; ``device``: "cpu" or "cuda"; ``baseline``: the frozen baseline's key;
    ``code``: ``code_version`` of the method (looked up when not given)."""
    net = cfg.variant(spec.model).dump()
    net.pop("name", None)
    cls = get_method(spec.method)
    section = getattr(cls, "config_section", None)
    settings = getattr(cfg, section, None) if section else None
    return {
        "key": KEY_SCHEMA, "data": data, "network": net,
        "recipe": {k: getattr(cfg, k) for k in RECIPE}, "device": device,
        "seed": int(spec.seed), "method": spec.method, "penalty": float(spec.penalty),
        "diagnostics": cfg.diagnostics.model_dump(mode="json"),
        "method_config": {section: settings.model_dump(mode="json") if hasattr(settings, "model_dump")
                          else settings} if section else None,
        "code": code_version(cls) if code is None else code,
        "baseline": baseline,
    }


def canonical(contents: dict[str, Any]) -> bytes:
    return json.dumps(contents, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def key_of(contents: dict[str, Any]) -> str:
    """The key: the hex SHA-256 of ``canonical(contents)``."""
    return hashlib.sha256(canonical(contents)).hexdigest()


def run_key(cfg: AuditConfig, spec: RunSpec, data: str, device: str, baseline: str | None = None) -> str | None:
    """The run's key (``key_of(key_contents(…))``), or None when its method's code cannot be read."""
    contents = key_contents(cfg, spec, data, device, baseline)
    return None if contents["code"] is None else key_of(contents)


# ---------------------------------------------------------------------------- the index

_index_lock = threading.Lock()  # one read-modify-write of an audit's index at a time in this process


def read_index(audit_dir: Path) -> dict[str, dict[str, Any]]:
    """key → entry of ``<audit_dir>/reuse.json``; {} when it is missing or unreadable."""
    try:
        data = json.loads((audit_dir / INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    runs = data.get("runs") if isinstance(data, dict) and data.get("schema") == INDEX_SCHEMA else None
    return {k: v for k, v in runs.items() if isinstance(v, dict)} if isinstance(runs, dict) else {}


def entry_of(run_dir: Path, reused_from: str | None = None) -> dict[str, Any]:
    """The index entry of a finished run, from its files as they are now."""
    kept_dir = run_dir / KEPT_DIR
    kept = {p.name: file_sha256(p) for p in sorted(kept_dir.glob("epoch-*.pt")) if p.is_file()} \
        if kept_dir.is_dir() else {}
    return {"run": run_dir.name, "records_sha256": file_sha256(run_dir / RECORDS),
            "checkpoint_sha256": file_sha256(run_dir / CHECKPOINT), "kept": kept, "time": now_iso(),
            "faeval_tui": tool_version(), "reused_from": reused_from}


def remember(audit: Audit, spec: RunSpec, key: str, reused_from: str | None = None) -> None:
    """Add the finished run ``spec`` to its audit's index under ``key`` (StoreError, OSError
    when its files or the index cannot be read or written)."""
    entry = entry_of(audit.run_dir(spec.run_id), reused_from)
    with _index_lock:
        runs = read_index(audit.path)
        runs[key] = entry
        text = json.dumps({"schema": INDEX_SCHEMA, "runs": runs}, indent=1, sort_keys=True) + "\n"
        atomic_write_bytes(audit.path / INDEX, text.encode())


def candidates(runs_dir: Path, key: str, exclude: Path | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """(run directory, entry) of every run indexed under ``key`` in an audit of ``runs_dir``:
    runs trained there first, then copies of runs; newest first within each."""
    found = []
    try:
        audits = [p for p in runs_dir.iterdir() if (p / INDEX).is_file()]
    except OSError:
        return []
    for audit_dir in audits:
        entry = read_index(audit_dir).get(key)
        if entry is None:
            continue
        try:
            run_dir = safe_child(audit_dir, str(entry.get("run", "")))
        except StoreError:
            continue  # a damaged entry names no run: nothing to verify
        if exclude is not None and run_dir.resolve() == exclude.resolve():
            continue
        found.append((run_dir.absolute(), entry))
    found.sort(key=lambda c: str(c[1].get("time", "")), reverse=True)
    found.sort(key=lambda c: c[1].get("reused_from") is not None)
    return found


# ---------------------------------------------------------------------------- verification

def fresh(audit: Audit, spec: RunSpec) -> bool:
    """Nothing of the run is on disk but, at most, a queued header (``Audit.add_run``): no
    start, epoch or end line, no checkpoint, no kept checkpoint."""
    run_dir = audit.run_dir(spec.run_id)
    if (run_dir / CHECKPOINT).exists() or (run_dir / KEPT_DIR).exists():
        return False
    records = run_dir / RECORDS
    if not records.exists():
        return True
    try:
        log = read_run(records)
    except StoreError:
        return False
    return not (log.started or log.epochs or log.end is not None or log.problems)


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


def _check_hash(path: Path, expected: object, what: str) -> None:
    if not path.is_file():
        raise NotReusable(f"its {what} is gone")
    now = file_sha256(path)
    if now != expected:
        raise NotReusable(f"its {what} changed after the run finished (SHA-256 now {short(now)}, "
                          f"{short(expected if isinstance(expected, str) else None)} when it finished)")


@dataclass
class Source:
    """A verified source run: its records and the checkpoint states to copy."""

    run_dir: Path
    log: RunLog
    epochs: list[Epoch]  # re-derived under this audit's thresholds
    state: dict[str, Any]
    kept: dict[int, dict[str, Any]] = field(default_factory=dict)  # epoch → state, those this audit keeps


def verify(run_dir: Path, entry: dict[str, Any], cfg: AuditConfig, spec: RunSpec, contents: dict[str, Any],
           baseline_acc: dict[int, float] | None) -> Source:
    """The source at ``run_dir``, checked (the module docstring lists how); ``NotReusable``
    says why not. ``contents``: the key contents of the run to fill; ``baseline_acc``: this
    audit's frozen baseline's test_acc by epoch (None: the run has no baseline)."""
    records, ckpt = run_dir / RECORDS, run_dir / CHECKPOINT
    _check_hash(records, entry.get("records_sha256"), RECORDS)
    _check_hash(ckpt, entry.get("checkpoint_sha256"), CHECKPOINT)
    try:
        log = read_run(records)
    except StoreError as err:
        raise NotReusable(err.problem) from None
    if log.problems:
        raise NotReusable(f"its records read with problems: {log.problems[0]}")
    h = log.header
    if h is None:
        raise NotReusable(f"{records} has no header")
    said = {"method": h.method, "seed": h.seed, "penalty": float(h.penalty), "epochs": h.epochs}
    want = {"method": spec.method, "seed": spec.seed, "penalty": float(spec.penalty), "epochs": cfg.epochs}
    wrong = [f"{k} {said[k]!r} (this run's is {want[k]!r})" for k in said if said[k] != want[k]]
    if wrong:
        raise NotReusable(f"its header says {', '.join(wrong)}")
    if log.end is None or log.end.status != "finished" or log.end.epoch != cfg.epochs:
        how = "no end line" if log.end is None else f"{log.end.status} at epoch {log.end.epoch}"
        raise NotReusable(f"it did not finish its {cfg.epochs} epochs ({how})")
    if [e.epoch for e in log.epochs] != list(range(1, cfg.epochs + 1)):
        raise NotReusable(f"its records hold epochs {[e.epoch for e in log.epochs]}, not 1–{cfg.epochs}")
    _check_header_config(h, spec, contents)
    needed = needs_baseline(spec.method)
    for e in log.epochs:
        ours = None if baseline_acc is None else baseline_acc.get(e.epoch)
        if not _same(e.baseline_acc, ours):
            raise NotReusable(f"its epoch {e.epoch} was measured against a baseline accuracy of {e.baseline_acc}; "
                              f"this audit's frozen run has {ours} there")
    epochs = [evaluate(e, cfg.thresholds, needed) for e in log.epochs]
    state = _load(ckpt)
    if state.get("epoch") != cfg.epochs:
        raise NotReusable(f"its checkpoint {ckpt} is of epoch {state.get('epoch')!r}, not {cfg.epochs}")
    kept: dict[int, dict[str, Any]] = {}
    policy = getattr(cfg, "keep_checkpoints", None)
    listed = entry.get("kept") if isinstance(entry.get("kept"), dict) else {}
    for i, rec in enumerate(epochs):
        if policy is None or not keeps_epoch(policy, epochs[:i], rec):
            continue
        path = kept_path(run_dir, rec.epoch)
        if path.name not in listed:
            raise NotReusable(f"this audit keeps the checkpoint of epoch {rec.epoch} (keep_checkpoints); "
                              "the source did not keep it")
        _check_hash(path, listed[path.name], f"kept checkpoint {KEPT_DIR}/{path.name}")
        kept[rec.epoch] = _load(path)
    return Source(run_dir, log, epochs, state, kept)


def _check_header_config(h: Header, spec: RunSpec, contents: dict[str, Any]) -> None:
    """The source's header config gives the key contents that the config decides (recipe,
    network, diagnostics, method settings): the index is not taken on trust."""
    config = dict(h.config)
    config.update(methods=[spec.method], penalty_methods=[], penalties=[], seeds=[int(h.seed)])
    try:
        cfg = validate(config, f"the header of {h.run_id}")
        theirs = key_contents(cfg, RunSpec(h.run_id, h.method, h.seed, h.penalty, model=h.model),
                              contents["data"], contents["device"], contents["baseline"], contents["code"])
    except FaevalError as err:
        raise NotReusable(f"its header's config cannot be read: {err.problem}") from None
    except (KeyError, ValueError) as err:
        raise NotReusable(f"its header's config cannot be read: {err}") from None
    diff = [k for k in contents if theirs.get(k) != contents[k]]
    if diff:
        raise NotReusable(f"its header's config differs in {', '.join(diff)}")


def _load(path: Path) -> dict[str, Any]:
    try:
        return load_checkpoint(path)
    except StoreError as err:
        raise NotReusable(err.problem) from None


# ---------------------------------------------------------------------------- the copy

def _rewritten(state: dict[str, Any], spec: RunSpec, cfg: AuditConfig) -> bytes:
    """The checkpoint as this run's: its id and this audit's config (model, optimizer and
    method state as they are)."""
    buf = io.BytesIO()
    torch.save({**state, "run_id": spec.run_id, "config": cfg.dump()}, buf)
    return buf.getvalue()


def copy_run(audit: Audit, spec: RunSpec, source: Source) -> tuple[Header, list[Epoch]]:
    """Write the source's records and checkpoints into ``spec``'s run directory (the module
    docstring says in which order); on any failure what was written is taken back and the
    error raised."""
    cfg = audit.cfg
    run_dir = audit.run_dir(spec.run_id)
    records, ckpt = run_dir / RECORDS, run_dir / CHECKPOINT
    original = records.read_bytes() if records.exists() else None
    queued = read_run(records).header if original is not None else None
    header = (queued or make_header(cfg, spec)).model_copy(update={"reused_from": str(source.run_dir)})
    written: list[Path] = []
    try:
        run_dir.mkdir(exist_ok=True)
        lines = [header, Start(epoch=0), *source.epochs]
        atomic_write_bytes(records, "".join(r.dumps() + "\n" for r in lines).encode())
        for epoch, state in sorted(source.kept.items()):
            path = kept_path(run_dir, epoch)
            path.parent.mkdir(exist_ok=True)
            written.append(path)
            atomic_write_bytes(path, _rewritten(state, spec, cfg))
        written.append(ckpt)
        atomic_write_bytes(ckpt, _rewritten(source.state, spec, cfg))
        append_line(records, End(status="finished", epoch=cfg.epochs, message=f"reused from {source.run_dir}"))
    except BaseException:
        _take_back(records, original, written)
        raise
    return header, source.epochs


def _take_back(records: Path, original: bytes | None, written: list[Path]) -> None:
    for path in written:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass
    try:
        if original is None:
            records.unlink(missing_ok=True)
        else:
            atomic_write_bytes(records, original)
        kept_dir = records.parent / KEPT_DIR
        if kept_dir.is_dir() and not any(kept_dir.iterdir()):
            kept_dir.rmdir()
    except (OSError, StoreError):
        pass  # a half-copied run reads as stopped and trains again on resume


def stderr_warning(message: str) -> None:
    """The default ``warn``: one line on stderr (the terminal for ``faeval-tui run``, trainer.log
    for the console's trainer), never raising."""
    try:
        print(f"faeval-tui: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass
