"""The four line types of a run's records.jsonl, typed: one definition for every path.

The trainer, ``engine.api``, the run store, the console, the tables and the test
fixtures build and read these models and nothing else, so a field that exists on one
path exists on all of them (``tests/test_records.py`` holds that).

    Header   who the run is and the whole config it trains under (first line); for a run
             measured in the user's own loop (``engine.tracker``) also the script and its baseline
    Start    training (re)starts after ``epoch`` (0, or a checkpoint's epoch)
    Epoch    one epoch's measurements: the protocol's per-layer lists and scalars
    End      how the run ended: finished, diverged, failed or stopped

JSON: each model has one way there (``to_json``/``dumps``) and one way back
(``parse_line``). Non-finite floats are written as the strings "NaN", "Infinity" and
"-Infinity", so every line is strict JSON.

``fired``, ``degenerate``, ``stability_mode`` and ``unmeasured`` of an ``Epoch`` are
*derived*: a function of the measurements and the thresholds (``verdicts.evaluate``). The
writer stores them under the audit's thresholds so a line reads on its own (jq, a
notebook), but every reader derives them again (``RunLog`` does, from the run's
thresholds): a hand-edited ``fired`` can never hide a walk-back.
"""
from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SCHEMA_VERSION = 1
Status = Literal["finished", "diverged", "failed", "stopped"]
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def encode(obj: Any) -> Any:
    """Plain JSON values with non-finite floats spelled as strings."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, dict):
        return {k: encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode(v) for v in obj]
    return obj


def decode(obj: Any) -> Any:
    """The inverse of ``encode``."""
    if isinstance(obj, str) and obj in _NONFINITE:
        return _NONFINITE[obj]
    if isinstance(obj, dict):
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    return obj


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Line(BaseModel):
    """Base of the record lines: unknown keys are refused, NaN and ±inf allowed."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=True)

    def to_json(self) -> dict[str, Any]:
        """Every field (None included, so each line has the same keys), non-finite floats encoded."""
        return encode(self.model_dump(mode="python", by_alias=True))

    def dumps(self) -> str:
        return json.dumps(self.to_json(), allow_nan=False, separators=(",", ":"), ensure_ascii=False)


class Header(Line):
    type: Literal["header"] = "header"
    schema_version: int = Field(SCHEMA_VERSION, alias="schema")
    run_id: str
    method: str
    seed: int
    penalty: float = 0.0
    parent: Optional[str] = None
    model: Optional[str] = None  # the network's name in an audit of several (config ``models``)
    epochs: int
    dataset: str
    created: str = Field(default_factory=now_iso)
    config: dict[str, Any] = Field(default_factory=dict)
    # who measured the run (optional, so lines written before they existed still read):
    # None, the engine trained it; "tracker", the user's own loop did and engine.tracker measured it
    source: Optional[str] = None
    script: Optional[str] = None  # the script that ran the user's loop (source "tracker")
    # (d)'s baseline: None, the frozen run of the same seed (the engine's pairing, plan.baseline_run);
    # a run id, that run; "given", each epoch's baseline_acc was recorded by the writer itself
    baseline: Optional[str] = None
    # the run directory whose finished records and checkpoint this run copies instead of training
    # (engine.reuse: an identical run of an audit under the same runs dir); None: trained here
    reused_from: Optional[str] = None


def _slurm_job() -> Optional[str]:
    return os.environ.get("SLURM_JOB_ID") or None


def _slurm_restarts() -> Optional[int]:
    count = os.environ.get("SLURM_RESTART_COUNT")
    return int(count) if count and count.isdigit() else (0 if os.environ.get("SLURM_JOB_ID") else None)


class Start(Line):
    type: Literal["start"] = "start"
    epoch: int = 0
    time: str = Field(default_factory=now_iso)
    # the SLURM job this (re)start ran in and how often SLURM had requeued it (executor: slurm; None elsewhere)
    job: Optional[str] = Field(default_factory=_slurm_job)
    job_restarts: Optional[int] = Field(default_factory=_slurm_restarts)


class Epoch(Line):
    """One epoch: accuracy, the per-layer lists indexed by layer 0..L, and the scalars."""

    type: Literal["epoch"] = "epoch"
    epoch: int
    test_acc: float
    test_loss: float
    train_loss: Optional[float] = None  # None when nothing trained (``engine.api.audit_model``)
    lr: Optional[float] = None
    h_norm: list[float]
    g_norm: list[float]
    a_norm: list[float]
    cos: list[float]
    cos_std: list[float]
    cos_excluded: list[int]
    rho: Optional[list[float]] = None  # None on epochs between ρ measurements
    null_mean: Optional[list[float]] = None  # None for methods without a null band, or off-cadence
    null_std: Optional[list[float]] = None
    growth: float
    g_L: float
    stability: float
    gamma: float
    deep_cos: float
    deep_rho: Optional[float] = None
    baseline_acc: Optional[float] = None  # the frozen run of the same seed at the same epoch
    # derived from the fields above and the thresholds (verdicts.evaluate); see the module docstring
    fired: list[str] = Field(default_factory=list)
    degenerate: bool = False
    stability_mode: Literal["drift", "noise", "unknown"] = "unknown"
    unmeasured: list[str] = Field(default_factory=list)  # "d" when a needed baseline is missing
    train_s: Optional[float] = None
    diag_s: dict[str, float] = Field(default_factory=dict)  # seconds per diagnostic
    time: Optional[str] = None  # UTC, when written

    @model_validator(mode="after")
    def _per_layer_lists_agree(self) -> Epoch:
        """Every per-layer list covers h_0..h_L (one entry per hidden state, at least one):
        a shortened or emptied list is a bad line, never an IndexError in a reader."""
        if self.epoch < 0:
            raise ValueError(f"epoch {self.epoch} is negative")
        n = len(self.h_norm)
        if n == 0:
            raise ValueError("h_norm is empty (it holds ‖h_l‖ for every layer 0..L)")
        for name in _PER_LAYER:
            values = getattr(self, name)
            if values is not None and len(values) != n:
                raise ValueError(f"{name} has {len(values)} entries, h_norm {n} (one per layer 0..L)")
        return self

    @property
    def layers(self) -> int:
        """L + 1: the number of hidden states h_0..h_L."""
        return len(self.h_norm)

    @property
    def h_L(self) -> float:
        return self.h_norm[-1]


_PER_LAYER = ("g_norm", "a_norm", "cos", "cos_std", "cos_excluded", "rho", "null_mean", "null_std")


def at_layer(values: list[Any] | None, layer: int) -> Any:
    """Layer ``layer`` of a per-layer list, or None where it is missing (off-cadence, shorter)."""
    return None if values is None or layer >= len(values) else values[layer]


class End(Line):
    type: Literal["end"] = "end"
    status: Status
    epoch: int = 0
    message: str = ""
    traceback: Optional[str] = None
    time: str = Field(default_factory=now_iso)


Record = Union[Header, Start, Epoch, End]
LINE_TYPES: dict[str, type[Line]] = {"header": Header, "start": Start, "epoch": Epoch, "end": End}
# epoch fields that differ between two runs of the same seed: wall-clock readings
VOLATILE = frozenset({"train_s", "diag_s", "time"})


class BadLine(ValueError):
    """A line that is JSON but not a record this version knows."""


def from_json(data: Any) -> Record:
    """A decoded JSON object as its record type; ``BadLine`` says what is wrong with it."""
    if not isinstance(data, dict):
        raise BadLine(f"a record line must be a JSON object, not {type(data).__name__}")
    kind = data.get("type")
    if kind == "resume":  # files written before 2026-11-22 call the start line "resume"
        data, kind = {**data, "type": "start"}, "start"
    if kind == "header":
        data = {k: v for k, v in data.items() if k not in ("device", "started")}  # pre-typed fixtures' extras
    model = LINE_TYPES.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise BadLine(f"unknown record type {kind!r}")
    try:
        return model.model_validate(decode(data))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(line)"
        raise BadLine(f"{kind} line: {where}: {first['msg']}") from None


def parse_line(raw: bytes | str) -> Record:
    """One JSONL line as a record (``ValueError`` for JSON that is torn or foreign)."""
    return from_json(json.loads(raw))


def stable(records: list[Epoch]) -> list[dict[str, Any]]:
    """Epoch records without their wall-clock fields: what two runs of one seed share."""
    return [r.model_dump(exclude=set(VOLATILE)) for r in records]
