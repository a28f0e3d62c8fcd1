"""What the engine tells its listener (the CLI's progress display, the console).

Plain dataclasses, no UI types: the console wraps each in a Textual message. A
listener is any callable taking one event; it is called from training threads.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Union

from .records import Epoch, Header
from .verdicts import Alert


@dataclass(frozen=True)
class RunStarted:
    run_id: str
    header: Header
    resumed_from: int = 0  # last completed epoch when resuming


@dataclass(frozen=True)
class BatchProgress:
    run_id: str
    epoch: int
    batch: int
    batches: int


@dataclass(frozen=True)
class EpochDone:
    """An epoch record, already durable on disk, and the walk-back alerts it raised."""

    run_id: str
    record: Epoch
    alerts: list[Alert] = field(default_factory=list)


@dataclass(frozen=True)
class RunEnded:
    run_id: str
    status: str  # finished | diverged | failed | stopped (records.Status)
    message: str = ""


Event = Union[RunStarted, BatchProgress, EpochDone, RunEnded]
Listener = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The listener for callers that only want the files."""
