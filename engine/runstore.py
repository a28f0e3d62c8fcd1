"""The audit directory on disk: the one place records live.

    <runs-dir>/<audit>/
        config.yaml              the resolved preset (defaults ← YAML ← --set)
        audit.lock               held by the process that trains (``watch`` never takes it)
        <run_id>/records.jsonl   header line, a start line each time training (re)starts,
                                 one line per epoch, an end line
        <run_id>/checkpoint.pt   model, optimizer, scheduler, RNG states, method state (B's)

The lines are the typed records of ``engine.records`` (non-finite floats written as
the strings "NaN", "Infinity" and "-Infinity", so every line is strict JSON). Each line
is appended, flushed and fsynced before anyone is told about it, and readers ignore a
last line that is still being written.
"""
from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import Thresholds
from .errors import StoreError
from .records import SCHEMA_VERSION, End, Epoch, Header, Line, Record, Start, parse_line
from .verdicts import evaluate

RECORDS = "records.jsonl"
CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
LOCK = "audit.lock"


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

    def append(self, record: Line) -> None:
        line = record.dumps() + "\n"
        try:
            self._fh.write(line)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as err:
            raise StoreError(f"cannot append to {self.path}: {err.strerror}",
                             "free disk space, then `faeval-tui resume` the audit directory") from None

    def close(self) -> None:
        self._fh.close()


def append_line(path: Path, record: Line) -> None:
    """Open, append one durable line, close."""
    writer = RecordWriter(path)
    try:
        writer.append(record)
    finally:
        writer.close()


class RecordReader:
    """Incremental reader of a records.jsonl that may still be growing.

    ``poll`` returns the complete new lines since the last call, typed; a trailing line
    without its newline is left for the next poll.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def poll(self) -> list[Record]:
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
                out.append(parse_line(raw))
            except ValueError:
                continue  # a torn line from a crash mid-write: the next epoch rewrites the truth
        return out


@dataclass
class RunLog:
    """Everything one run's records.jsonl says.

    Epochs are re-evaluated as they are added (``fired``, ``degenerate`` and
    ``stability_mode`` derived again) under ``thresholds``: the audit's when the caller
    gives them, else those in the header's config, else the stored values stand.
    """

    run_id: str
    header: Header | None = None
    epochs: list[Epoch] = field(default_factory=list)
    end: End | None = None
    started: bool = False  # training began at least once (a start line, or an epoch in older files)
    thresholds: Thresholds | None = None

    def add(self, rec: Record) -> None:
        if isinstance(rec, Header):
            self.header = rec
            if self.thresholds is None and isinstance(rec.config.get("thresholds"), dict):
                try:
                    self.thresholds = Thresholds.model_validate(rec.config["thresholds"])
                except ValueError:
                    pass  # a damaged header config: the stored fired sets stand
        elif isinstance(rec, Epoch):
            if self.thresholds is not None:
                rec = evaluate(rec, self.thresholds)
            # a resumed run may re-append an epoch after a crash: the later line wins
            self.epochs = [e for e in self.epochs if e.epoch < rec.epoch] + [rec]
            self.started = True
        elif isinstance(rec, End):
            self.end = rec
        elif isinstance(rec, Start):
            self.end = None
            self.started = True

    @property
    def method(self) -> str:
        return self.header.method if self.header else "?"

    @property
    def seed(self) -> int | None:
        return self.header.seed if self.header else None

    @property
    def penalty(self) -> float:
        return self.header.penalty if self.header else 0.0

    @property
    def total_epochs(self) -> int:
        return self.header.epochs if self.header else 0

    @property
    def final(self) -> Epoch | None:
        return self.epochs[-1] if self.epochs else None

    @property
    def unfinished(self) -> bool:
        """Not ended, or ended in a way ``resume`` continues (stopped, failed)."""
        return self.end is None or self.end.status in ("stopped", "failed")

    def status(self, live: bool) -> str:
        """finished / diverged / failed / stopped from the end line; without one, a run that
        never started is queued (while the audit trains) or not started, else running or stopped."""
        if self.end is not None:
            return self.end.status
        if not self.started:
            return "queued" if live else "not started"
        return "running" if live else "stopped"


def read_run(path: Path, thresholds: Thresholds | None = None) -> RunLog:
    log = RunLog(path.parent.name, thresholds=thresholds)
    for rec in RecordReader(path).poll():
        log.add(rec)
    if log.header is not None and log.header.schema_version > SCHEMA_VERSION:
        raise StoreError(f"{path} was written with schema version {log.header.schema_version}, "
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


class AuditLock:
    """An exclusive ``flock`` on ``audit.lock``: one training process per audit directory.

    The kernel drops the lock when its process dies, so a lock left by ``kill -9`` is
    simply free again; the pid inside is only for the message.
    """

    def __init__(self, audit_dir: Path) -> None:
        self.path = audit_dir / LOCK
        self._fd: int | None = None

    def acquire(self) -> AuditLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = self.path.read_text().strip() or "?"
            raise StoreError(f"{self.path.parent} is being trained by another process (pid {pid})",
                             f"follow it with `faeval-tui watch {self.path.parent}`, "
                             "or stop that process first") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> AuditLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    @staticmethod
    def is_held(audit_dir: Path) -> bool:
        """True while some process (this one included) trains the audit."""
        path = audit_dir / LOCK
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops the probe's shared lock
        return False
