"""The audit directory on disk: the one place records live.

    <runs-dir>/<audit>/
        config.yaml              the resolved preset (defaults ← YAML ← --set)
        audit.lock               held by the process that trains (``watch`` never takes it)
        <run_id>/records.jsonl   header line, a start line each time training (re)starts,
                                 one line per epoch, an end line
        <run_id>/checkpoint.pt   model, optimizer, scheduler, RNG states, method state (B's)

Records are JSON with non-finite floats written as the strings "NaN", "Infinity" and
"-Infinity" (plain JSON has no such numbers); ``decode`` turns them back into floats.
Each line is appended, flushed and fsynced before anyone is told about it, and
readers ignore a last line that is still being written.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from .errors import StoreError

SCHEMA_VERSION = 1
RECORDS = "records.jsonl"
CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
# epoch-record fields that differ between two runs of the same seed: wall-clock readings
VOLATILE = frozenset({"train_s", "diag_s", "time"})


def encode(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, dict):
        return {k: encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode(v) for v in obj]
    return obj


def decode(obj: Any) -> Any:
    if isinstance(obj, str) and obj in _NONFINITE:
        return _NONFINITE[obj]
    if isinstance(obj, dict):
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    return obj


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(encode(record), allow_nan=False, separators=(",", ":"))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def safe_child(parent: Path, name: str) -> Path:
    """``parent / name`` for a plain name that cannot escape ``parent``."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise StoreError(f"{name!r} is not a valid run or audit name", "use letters, digits, '-', '_' and '.'")
    return parent / name


class RecordWriter:
    """Append-only JSONL writer: each line is flushed and fsynced before ``append`` returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._fh = open(path, "a", encoding="utf-8")
        except OSError as err:
            raise StoreError(f"cannot open {path} for writing: {err.strerror}",
                             "check the runs directory is writable and the disk has space") from None

    def append(self, record: dict[str, Any]) -> None:
        line = dumps(record) + "\n"
        try:
            self._fh.write(line)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as err:
            raise StoreError(f"cannot append to {self.path}: {err.strerror}",
                             "free disk space, then `faeval-tui resume` the audit directory") from None

    def close(self) -> None:
        self._fh.close()


class RecordReader:
    """Incremental reader of a records.jsonl that may still be growing.

    ``poll`` returns the complete new lines since the last call; a trailing line
    without its newline is left for the next poll.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def poll(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")
        out = []
        for raw in lines:
            if not raw.strip():
                continue
            try:
                out.append(decode(json.loads(raw)))
            except ValueError:
                continue  # a torn line from a crash mid-write: the next epoch rewrites the truth
        return out


@dataclass
class RunLog:
    """Everything one run's records.jsonl says."""

    run_id: str
    header: dict[str, Any] | None = None
    epochs: list[dict[str, Any]] = field(default_factory=list)
    end: dict[str, Any] | None = None
    started: bool = False  # training began at least once (a start line, or an epoch in older files)

    def add(self, rec: dict[str, Any]) -> None:
        kind = rec.get("type")
        if kind == "header":
            self.header = rec
        elif kind == "epoch":
            # a resumed run may re-append an epoch after a crash: the later line wins
            self.epochs = [e for e in self.epochs if e["epoch"] < rec["epoch"]] + [rec]
            self.started = True
        elif kind == "end":
            self.end = rec
        elif kind in ("start", "resume"):  # "resume": the name files of before 2026-11-22 use
            self.end = None
            self.started = True

    @property
    def method(self) -> str:
        return (self.header or {}).get("method", "?")

    @property
    def seed(self) -> int | None:
        return (self.header or {}).get("seed")

    @property
    def penalty(self) -> float:
        return (self.header or {}).get("penalty", 0.0)

    @property
    def total_epochs(self) -> int:
        return (self.header or {}).get("epochs", 0)

    @property
    def unfinished(self) -> bool:
        """Not ended, or ended in a way ``resume`` continues (stopped, failed)."""
        return self.end is None or self.end["status"] in ("stopped", "failed")

    def status(self, live: bool) -> str:
        """finished / diverged / failed / stopped from the end line; without one, a run that
        never started is queued (while the audit trains) or not started, else running or stopped."""
        if self.end is not None:
            return self.end["status"]
        if not self.started:
            return "queued" if live else "not started"
        return "running" if live else "stopped"


def read_run(path: Path) -> RunLog:
    log = RunLog(path.parent.name)
    for rec in RecordReader(path).poll():
        log.add(rec)
    if log.header is not None and log.header.get("schema", 0) > SCHEMA_VERSION:
        raise StoreError(f"{path} was written with schema version {log.header['schema']}, "
                         f"newer than this faeval-tui understands ({SCHEMA_VERSION})",
                         "upgrade faeval-tui (pip install -U faeval-tui) to read this audit")
    return log


def write_config(audit_dir: Path, config: dict[str, Any]) -> None:
    text = yaml.safe_dump({"schema": SCHEMA_VERSION, **config}, sort_keys=False)
    atomic_write_bytes(audit_dir / CONFIG, text.encode())


def read_config(audit_dir: Path) -> dict[str, Any]:
    path = audit_dir / CONFIG
    if not path.is_file():
        raise StoreError(f"{audit_dir} is not an audit directory (no {CONFIG})",
                         "give the directory that `faeval-tui run` printed")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise StoreError(f"cannot read {path}: {err}", "the audit's config file is damaged") from None
    if not isinstance(data, dict):
        raise StoreError(f"{path} does not hold an audit configuration", "the audit's config file is damaged")
    schema = data.pop("schema", 0)
    if schema > SCHEMA_VERSION:
        raise StoreError(f"{audit_dir} was written with schema version {schema}, newer than this "
                         f"faeval-tui understands ({SCHEMA_VERSION})", "upgrade faeval-tui to read this audit")
    return data


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync, rename: readers see old or new, never half."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot write {path}: {err.strerror}",
                         "check the disk has space and the directory is writable; nothing was overwritten") from None


def list_runs(audit_dir: Path) -> list[Path]:
    """Run directories of an audit, in the order they were planned (by header start time)."""
    return sorted((p for p in audit_dir.iterdir() if (p / RECORDS).is_file()), key=lambda p: p.name)
