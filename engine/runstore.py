"""The audit directory on disk: the one place records live.

    <runs-dir>/<audit>/
        config.yaml              the resolved preset (defaults ← YAML ← --set)
        audit.lock               held by the process that trains (``watch`` never takes it);
                                 shared by the processes that track an audit (``engine.tracker``)
        <run_id>/records.jsonl   header line, a start line each time training (re)starts,
                                 one line per epoch, an end line
        <run_id>/checkpoint.pt   model, optimizer, scheduler, RNG states, method state (B's);
                                 rewritten after every epoch (the rolling checkpoint resume reads)
        <run_id>/checkpoints/epoch-0001.pt
                                 a kept copy of that epoch's checkpoint.pt (config keep_checkpoints:
                                 listed epochs, every k-th, first fire of (a)/(b)/(d)); never deleted
                                 or read by training, only by `faeval-tui measure`; each is the size
                                 of checkpoint.pt (about 12 bytes a parameter: 0.5 MB for
                                 digits_default, 16 MB for cifar100_d256_L4)

An audit measured in the user's own training loop (``engine.tracker``) has no checkpoints;
it has instead

        tracked.json             what says so: the script, the diagnostic set's fingerprint
        diagnostic_set.npz       the fixed diagnostic set every run was measured on
        <run_id>/run.lock        held by the tracker writing that run (one writer per run)

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
from .records import SCHEMA_VERSION, BadLine, End, Epoch, Header, Line, Record, Start, parse_line
from .verdicts import evaluate, needs_baseline

RECORDS = "records.jsonl"
CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
LOCK = "audit.lock"
TRACKED = "tracked.json"
RUN_LOCK = "run.lock"


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
            # a crash mid-write leaves a line without its newline: start after it, never on it
            self._torn = self._fh.tell() > 0 and _last_byte(path) != b"\n"
        except OSError as err:
            raise StoreError(f"cannot open {path} for writing: {err.strerror}",
                             "check the runs directory is writable and the disk has space") from None

    def append(self, record: Line) -> None:
        line = ("\n" if self._torn else "") + record.dumps() + "\n"
        try:
            fault_point("line-before")
            if fault_armed("line-torn"):  # half the line durable, then the process dies
                self._fh.write(line[: len(line) // 2])
                self._fh.flush()
                os.fsync(self._fh.fileno())
                os._exit(137)
            self._fh.write(line)
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._torn = False
            fault_point("line-after")
        except OSError as err:
            self._torn = True  # part of the line may be on disk: the next one starts after it
            raise StoreError(f"cannot append to {self.path}: {err.strerror}",
                             "free disk space, then `faeval-tui resume` the audit directory") from None

    def close(self) -> None:
        """Close the file; never raises. ``append`` fsynced every line it returned from, so a
        close that fails (the last flush of a buffer a full disk refused) can only lose a line
        whose ``append`` already failed: it is reported once on stderr, and the run, and the
        audit's other runs, go on."""
        try:
            self._fh.close()
        except (OSError, ValueError) as err:
            if getattr(self, "_close_reported", False):
                return
            self._close_reported = True
            import sys

            reason = getattr(err, "strerror", None) or str(err)
            try:
                print(f"faeval-tui: closing {self.path} failed: {reason}; every line appended before "
                      "was already on disk", file=sys.stderr)
            except (OSError, ValueError):
                pass  # stderr is gone too: the records on disk stay the source of truth


# The fault-injection harness (tests/test_kill_points.py) kills a training process at an
# exact write: FAEVAL_FAULT=<point>@<n> makes the n-th pass through <point> end the process
# as kill -9 would (os._exit, no cleanup, no end line). Unset, the points cost one dict
# lookup per write.
FAULT_ENV = "FAEVAL_FAULT"
FAULT_POINTS = ("line-before", "line-torn", "line-after", "file-before-rename", "file-after-rename")
_fault_seen: dict[str, int] = {}


def fault_armed(point: str) -> bool:
    """Whether this pass through ``point`` is the one FAEVAL_FAULT names (counts the pass)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return False
    name, _, nth = spec.partition("@")
    if name != point:
        return False
    _fault_seen[point] = _fault_seen.get(point, 0) + 1
    return _fault_seen[point] == int(nth or 1)


def fault_point(point: str) -> None:
    """End the process here, as kill -9 would, when FAEVAL_FAULT names this pass."""
    if fault_armed(point):
        os._exit(137)


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1)


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
        self._line = 0
        self.problems: list[str] = []  # lines skipped, each with its number and why

    @property
    def lines(self) -> int:
        """Complete lines read so far."""
        return self._line

    @property
    def pending(self) -> bool:
        """A last line without its newline is held back for the next poll."""
        return bool(self._partial.strip())

    def poll(self) -> list[Record]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        except OSError as err:  # a directory, no permission, an I/O error: say so once, read nothing
            problem = f"{self.path} cannot be read: {err.strerror or err}"
            if problem not in self.problems:
                self.problems.append(problem)
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")
        out = []
        for raw in lines:
            self._line += 1
            if not raw.strip():
                continue
            try:
                out.append(parse_line(raw))
            except BadLine as err:  # JSON, but not a record: say so, never drop it silently
                self.problems.append(f"{self.path} line {self._line} skipped: {err}")
            except ValueError:  # a line torn by a crash mid-write; a resumed run rewrites that epoch
                self.problems.append(f"{self.path} line {self._line} skipped: not complete JSON "
                                     "(torn by a crash while it was written)")
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
    problems: list[str] = field(default_factory=list)  # what the reader could not use, for the user
    starts: list[Start] = field(default_factory=list)  # each (re)start, with its SLURM job when it had one

    def add(self, rec: Record) -> None:
        if isinstance(rec, Header):
            self.header = rec
            if self.thresholds is None and isinstance(rec.config.get("thresholds"), dict):
                try:
                    self.thresholds = Thresholds.model_validate(rec.config["thresholds"])
                except ValueError:
                    pass  # a damaged header config: the stored fired sets stand
        elif isinstance(rec, Epoch):
            if self.end is not None:  # training appends epochs only after a start line
                self.problems.append(f"an epoch {rec.epoch} line after the run's end line was skipped: no start "
                                     "line came between (a hand-edited or foreign line)")
                return
            if self.header is not None and rec.epoch > self.header.epochs:
                self.problems.append(f"an epoch {rec.epoch} line was skipped: the run trains "
                                     f"{self.header.epochs} epochs (a hand-edited or foreign line)")
                return
            if self.thresholds is not None:
                rec = evaluate(rec, self.thresholds, needs_baseline(self.method))
            # a resumed run may re-append an epoch after a crash: the later line wins
            self.epochs = [e for e in self.epochs if e.epoch < rec.epoch] + [rec]
            self.started = True
        elif isinstance(rec, End):
            if (rec.status == "finished" and not rec.message and self.header is not None
                    and rec.epoch < self.header.epochs):
                # the trainer ends a run "finished" only at its last epoch (a tracked loop that
                # ends early says so in the message): read as stopped, which resume continues
                self.problems.append(f"the end line says finished at epoch {rec.epoch} of {self.header.epochs}: "
                                     "read as stopped (a hand-edited line?); resume continues the run")
                rec = rec.model_copy(update={"status": "stopped"})
            self.end = rec
        elif isinstance(rec, Start):
            self.end = None
            self.started = True
            self.starts.append(rec)

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
    def has_lines(self) -> bool:
        """Anything at all was recorded (a header, a start, an epoch or an end)."""
        return self.header is not None or self.started or bool(self.epochs) or self.end is not None

    @property
    def final(self) -> Epoch | None:
        return self.epochs[-1] if self.epochs else None

    @property
    def reached(self) -> int | None:
        """The epoch the run's end line says it reached (None without an end line)."""
        return self.end.epoch if self.end is not None else None

    @property
    def unfinished(self) -> bool:
        """Not ended, or ended in a way ``resume`` continues (stopped, failed), or ended past its
        last readable epoch (a damaged line: resume must look at it, not pass it over)."""
        if self.end is not None and self.final is not None and self.end.epoch > self.final.epoch:
            return True
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
    reader = RecordReader(path)
    seen = 0
    for rec in reader.poll():
        if isinstance(rec, Epoch) and (log.header is None or rec.epoch <= log.header.epochs):
            seen = max(seen, rec.epoch)  # (an epoch past the run's end is skipped, and said, by add)
        log.add(rec)
    log.problems += reader.problems
    if reader.pending:  # read in one go, a last line without its newline was torn, or is being written
        log.problems.append(f"{path} line {reader.lines + 1} skipped: it has no end (torn by a crash, or "
                            "still being written)")
    if log.epochs and log.epochs[-1].epoch < seen:  # an epoch re-appended out of order dropped later ones
        log.problems.append(f"{path}: epochs {log.epochs[-1].epoch + 1}–{seen} were superseded by a later line "
                            f"for epoch {log.epochs[-1].epoch} (a resume in progress, or a duplicated or "
                            "reordered line); the run reads as having reached that epoch")
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
    # ValueError covers text that is not UTF-8 and scalars YAML cannot build (a bad date)
    except (OSError, ValueError, RecursionError, yaml.YAMLError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)[:200]
        raise StoreError(f"cannot read {path}: {reason}", "the audit's config file is damaged: restore it, "
                         "or start a new audit") from None
    if not isinstance(data, dict):
        raise StoreError(f"{path} does not hold an audit configuration", "the audit's config file is damaged")
    schema = data.pop("schema", 0)
    if not isinstance(schema, int) or isinstance(schema, bool):
        raise StoreError(f"{path} has schema {schema!r}, not a version number", "the audit's config file is "
                         f"damaged: restore `schema: {SCHEMA_VERSION}`, or start a new audit")
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
        fault_point("file-before-rename")
        os.replace(tmp, path)
        fault_point("file-after-rename")
    except OSError as err:
        try:  # never raise from the cleanup: on a read-only or failing disk the unlink fails too
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise StoreError(f"cannot write {path}: {err.strerror or err}",
                         "check the disk has space and the directory is writable; nothing was overwritten") from None


def list_runs(audit_dir: Path) -> list[Path]:
    """Run directories of an audit, in the order they were planned (by header start time)."""
    return sorted((p for p in audit_dir.iterdir() if (p / RECORDS).is_file()), key=lambda p: p.name)


class _Flock:
    """What both locks share once taken: releasing, and use as a context manager."""

    _fd: int | None = None
    path: Path

    def holder_pid(self) -> str:
        """The pid the holder wrote into the lock file ("" when none: not yet, or shared)."""
        try:
            return self.path.read_text().strip()
        except (OSError, UnicodeDecodeError):
            return ""

    def acquire(self):  # pragma: no cover - each lock takes its own
        raise NotImplementedError

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class AuditLock(_Flock):
    """An exclusive ``flock`` on ``audit.lock``: one training process per audit directory.

    The kernel drops the lock when its process dies, so a lock left by ``kill -9`` is
    simply free again; the pid inside is only for the message.

    ``shared``: the lock of a process that tracks runs of its own loop (``engine.tracker``):
    several of them may write one audit, each run guarded by its ``RunLock``, while the
    engine's exclusive lock is refused (and refuses them).
    """

    def __init__(self, audit_dir: Path, shared: bool = False) -> None:
        self.path = audit_dir / LOCK
        self.shared = shared
        self._fd: int | None = None

    def acquire(self) -> AuditLock:
        audit_dir = self.path.parent
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:  # a read-only file system, or a directory this user cannot write
            raise StoreError(f"cannot take the lock {self.path}: {(err.strerror or str(err)).lower()}",
                             "training writes into the audit directory, so it must be writable: copy the "
                             "audit to a writable disk and resume the copy, or follow it read-only with "
                             f"`faeval-tui watch {audit_dir}`") from None
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = self.holder_pid()
            # an empty file: the holder has not written its pid yet (or could not)
            who = f"another process (pid {pid})" if pid.isdigit() else "another process"
            raise StoreError(f"{audit_dir} is being trained by {who}",
                             f"follow it with `faeval-tui watch {audit_dir}`, "
                             "or stop that process first") from None
        except OSError as err:  # e.g. a network file system without locks
            os.close(fd)
            raise StoreError(f"cannot take the lock {self.path}: {(err.strerror or str(err)).lower()}",
                             "keep the audit on a local disk, or copy it to one and resume the copy") from None
        try:  # the pid is only for the message above: a disk too full to hold it does not matter
            os.ftruncate(fd, 0)  # shared: several holders, so no pid (an old one would mislead)
            if not self.shared:
                os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass
        self._fd = fd
        return self

    @staticmethod
    def is_held(audit_dir: Path) -> bool:
        """True while some process (this one included) trains the audit, or tracks it (a shared
        holder: the probe asks for the exclusive lock, which either kind refuses)."""
        path = audit_dir / LOCK
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops the probe's lock
        return False


class RunLock(_Flock):
    """An exclusive ``flock`` on ``<run>/run.lock``: one writer per run of a tracked audit, so
    two trackers (in one process or two) never append to the same records.jsonl. Dropped by
    the kernel when its process dies, as ``AuditLock`` is."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / RUN_LOCK
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        run_dir = self.path.parent
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise StoreError(f"cannot take the lock {self.path}: {(err.strerror or str(err)).lower()}",
                             "the audit directory must be writable") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = self.holder_pid()
            who = ("another tracker in this process" if pid == str(os.getpid()) else
                   f"another process (pid {pid})" if pid.isdigit() else "another process")
            raise StoreError(f"run {run_dir.name} of {run_dir.parent} is being written by {who}",
                             "one writer per run: close that tracker first, or track this run under "
                             "another seed or method name") from None
        except OSError as err:
            os.close(fd)
            raise StoreError(f"cannot take the lock {self.path}: {(err.strerror or str(err)).lower()}",
                             "keep the audit on a local disk") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass
        self._fd = fd
        return self
