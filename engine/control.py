"""Controls that reach a trainer through its audit directory: stop, and new runs (penalty reruns).

The console trains an audit in a process of its own (detached from the terminal, so a
dropped SSH connection does not stop it), and any console following the audit may steer
it. Neither talks to the other directly: a request is a small JSON file, written
atomically, in ``<audit>/control/``, and every trainer (``faeval-tui run`` and ``resume``)
reads that folder every half second (``Inbox``).

    control/stop.json             stop every run at its next batch (each keeps its checkpoint)
    control/run-<run_id>.json     train this run: {"run_id", "method", "seed", "penalty",
                                  "parent", "model"}, one of the audit's own methods
    control/<name>.refused        a request the trainer could not honour, and why

A trainer takes a run request by writing the run's header (``Audit.add_run``) and queuing
it, then deletes the file; a request no trainer has taken stays until one does (the console
starts ``faeval-tui resume`` for it when nothing trains). A stop request older than the
trainer reading it was meant for an earlier one and is dropped.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from .errors import ConfigError
from .plan import RunSpec, run_id
from .records import now_iso
from .runstore import atomic_write_bytes

CONTROL = "control"
STOP = "stop.json"


def control_dir(audit_dir: Path | str) -> Path:
    return Path(audit_dir) / CONTROL


def _write(audit_dir: Path | str, name: str, data: dict) -> Path:
    folder = control_dir(audit_dir)
    folder.mkdir(exist_ok=True)
    path = folder / name
    atomic_write_bytes(path, (json.dumps(data) + "\n").encode())
    return path


def request_stop(audit_dir: Path | str) -> Path:
    """Ask the audit's trainer to stop every run at its next batch."""
    return _write(audit_dir, STOP, {"time": now_iso(), "at": time.time(), "pid": os.getpid()})


def check_spec(spec: RunSpec, methods: list[str] | None = None) -> None:
    """A run request names itself as ``plan.run_id`` would, with a finite λ ≥ 0 (ConfigError otherwise)."""
    if not (isinstance(spec.penalty, (int, float)) and math.isfinite(spec.penalty) and spec.penalty >= 0):
        raise ConfigError(f"run request {spec.run_id!r}: λ = {spec.penalty!r} is not a finite number ≥ 0",
                          "give λ > 0 for a penalty rerun")
    expected = run_id(spec.method, spec.seed, spec.penalty, spec.model)
    if spec.run_id != expected:
        raise ConfigError(f"run request {spec.run_id!r} does not name its method, seed and λ (expected {expected!r})",
                          "build the request with engine.plan.run_id")
    if methods is not None and spec.method not in methods:
        raise ConfigError(f"run request {spec.run_id!r}: method {spec.method!r} is not one of this audit's "
                          f"({', '.join(methods)})", "request a rerun of a method the audit trains")


def request_run(audit_dir: Path | str, spec: RunSpec) -> Path:
    """Ask the audit's trainer (or the next one) to train ``spec``."""
    check_spec(spec)
    return _write(audit_dir, f"run-{spec.run_id}.json", asdict(spec))


def requested_runs(audit_dir: Path | str) -> list[RunSpec]:
    """Run requests no trainer has taken yet (unreadable ones are left to the trainer to refuse)."""
    out = []
    for path in sorted(control_dir(audit_dir).glob("run-*.json")):
        try:
            out.append(RunSpec(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return out


class Inbox:
    """A trainer's side: what the control folder asks of it since it started."""

    def __init__(self, audit_dir: Path | str, methods: list[str]) -> None:
        self.folder = control_dir(audit_dir)
        self.methods = methods
        self.started = time.time()
        self.refused: list[str] = []  # what was refused, and why (the trainer prints it)

    def stop_requested(self) -> bool:
        path = self.folder / STOP
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return False
        except (OSError, ValueError):
            data = {}  # unreadable: it was written to stop someone, and this trainer is who reads it
        if isinstance(data, dict) and isinstance(data.get("at"), (int, float)) and data["at"] < self.started - 1.0:
            self._remove(path)  # meant for a trainer before this one
            return False
        self._remove(path)
        return True

    def take_runs(self, take: Callable[[RunSpec], None]) -> list[RunSpec]:
        """Hand each new run request to ``take`` (which puts it on disk and queues it), then
        remove its file: a trainer that dies in between leaves it for the next. A request that
        cannot be honoured is renamed .refused with why."""
        specs = []
        for path in sorted(self.folder.glob("run-*.json")):
            try:
                spec = RunSpec(**json.loads(path.read_text()))
                check_spec(spec, self.methods)
            except FileNotFoundError:
                continue
            except (OSError, ValueError, TypeError, ConfigError) as err:
                why = str(err) if isinstance(err, ConfigError) else f"not a run request: {err}"
                self.refused.append(f"{path.name}: {why}")
                try:
                    path.with_suffix(".refused").write_text(why + "\n")
                except OSError:
                    pass
                self._remove(path)
                continue
            take(spec)
            specs.append(spec)
            self._remove(path)
        return specs

    @staticmethod
    def _remove(path: Path) -> None:
        try:
            path.unlink()
        except OSError:
            pass
