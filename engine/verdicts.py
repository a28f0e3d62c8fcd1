"""Verdicts are pure functions of epoch records and the declared thresholds.

The chart lines, the alerts and the final verdict all read ``DIAGNOSTICS`` and a
``Thresholds`` instance, so a threshold is declared once.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .config import Thresholds
from .fmt import num, pct, pp
from .records import Epoch

WALK_BACK = ("a", "b", "d")  # (c) labels the sub-mode; it never walks a run back alone


@dataclass(frozen=True)
class Diagnostic:
    id: str
    name: str
    field: str
    comparison: str  # "above" or "below": the side on which it fires
    threshold_key: str
    meaning: str
    nan_fires: bool = True  # a NaN can never certify health; for the (c) label it is just unknown

    def threshold(self, th: Thresholds, record: Epoch | None = None) -> float | None:
        if self.id == "d":
            base = None if record is None else record.baseline_acc
            return None if base is None else base + th.depth_margin
        return getattr(th, self.threshold_key)

    def fires(self, record: Epoch, th: Thresholds) -> bool:
        value = getattr(record, self.field)
        limit = self.threshold(th, record)
        if value is None or limit is None:
            return False
        if math.isnan(value):
            return self.nan_fires
        return value > limit if self.comparison == "above" else value < limit


DIAGNOSTICS: dict[str, Diagnostic] = {
    "a": Diagnostic("a", "scale stability", "growth", "above", "growth",
                    "the hidden states are exploding: ‖h_l‖ grows without bound from layer to layer; with a "
                    "terminal LayerNorm that divides the reference gradient toward the floor, and the headline "
                    "numbers describe a failing network"),
    "b": Diagnostic("b", "reference validity", "g_L", "below", "g_floor",
                    "the BP reference gradient is at the numerical floor: every cosine from this epoch on is "
                    "measured against noise and is degenerate, not evidence of alignment"),
    "c": Diagnostic("c", "cross-batch stability", "stability", "above", "stability",
                    "the reference gradient points the same way across batches (drift), not noise",
                    nan_fires=False),
    "d": Diagnostic("d", "depth utility", "test_acc", "below", "depth_margin",
                    "the trained blocks do no better than blocks frozen at initialisation: the accuracy comes "
                    "from the embedding and head, not from the method training depth"),
}


def fired(record: Epoch, th: Thresholds) -> list[str]:
    """The diagnostics that fire on one epoch record (c included, as the drift label)."""
    return [k for k, diag in DIAGNOSTICS.items() if diag.fires(record, th)]


def needs_baseline(method: str) -> bool:
    """Every run but the frozen baseline itself needs a baseline for (d)."""
    return method != "frozen"


def evaluate(record: Epoch, th: Thresholds, baseline_needed: bool = True) -> Epoch:
    """The one place the derived fields are decided: ``fired``, ``degenerate``,
    ``stability_mode`` and ``unmeasured`` from the record's measurements under ``th``.

    ``unmeasured`` holds "d" when the run needs a baseline (``needs_baseline``) and the
    record has none: (d) could not be measured, so the run cannot read TRUSTWORTHY.
    The default assumes a baseline is needed: a caller that forgets gets UNVERIFIED,
    never a TRUSTWORTHY it did not earn."""
    hits = fired(record, th)
    mode = "drift" if "c" in hits else "unknown" if math.isnan(record.stability) else "noise"
    unmeasured = ["d"] if baseline_needed and record.baseline_acc is None else []
    return record.model_copy(update={"fired": hits, "degenerate": "b" in hits, "stability_mode": mode,
                                     "unmeasured": unmeasured})


def first_fire(records: Iterable[Epoch]) -> dict[str, int]:
    """Epoch at which each diagnostic first fired."""
    first: dict[str, int] = {}
    for rec in records:
        for k in rec.fired:
            first.setdefault(k, rec.epoch)
    return first


@dataclass(frozen=True)
class Verdict:
    walked_back: bool
    fired: tuple[str, ...]  # walk-back diagnostics firing at the last epoch
    submode: str  # "drift" or "noise"
    first_fire: dict[str, int]
    final_epoch: int | None
    unmeasured: tuple[str, ...] = ()  # walk-back diagnostics that could not be measured at the last epoch
    reached: int | None = None  # the epoch the run's end line says it reached, when past the last record read

    @property
    def label(self) -> str:
        if self.final_epoch is None:
            return "NO DATA"
        if self.walked_back:
            return "WALKED BACK via " + "+".join(f"({k})" for k in self.fired)
        if self.reached is not None:  # the last epochs' records are unreadable: nothing says they were fine
            return f"UNVERIFIED: records end at epoch {self.final_epoch} of {self.reached}"
        if self.unmeasured:  # nothing fired, but not everything was measured: never TRUSTWORTHY
            return "UNVERIFIED: no baseline for (d)"
        return "TRUSTWORTHY"

    def describe(self) -> str:
        if not self.walked_back:
            return self.label
        return f"{self.label}, {self.submode}"

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "walked_back": self.walked_back, "fired": list(self.fired),
                "submode": self.submode, "first_fire": self.first_fire, "final_epoch": self.final_epoch,
                "unmeasured": list(self.unmeasured), "reached": self.reached}


def verdict(records: list[Epoch], th: Thresholds | None = None, baseline_needed: bool = True,
            reached: int | None = None) -> Verdict:
    """Final verdict from the last epoch; re-evaluated when thresholds are given. ``reached``:
    the epoch the run's end line says it got to (``RunLog.reached``); past the last record,
    the verdict cannot be TRUSTWORTHY."""
    if th is not None:
        records = [evaluate(r, th, baseline_needed) for r in records]
    if not records:
        return Verdict(False, (), "noise", {}, None)
    last = records[-1]
    walk = tuple(k for k in WALK_BACK if k in last.fired)
    return Verdict(bool(walk), walk, last.stability_mode, first_fire(records), last.epoch, tuple(last.unmeasured),
                   reached if reached is not None and reached > last.epoch else None)


@dataclass(frozen=True)
class Alert:
    run_id: str
    epoch: int
    diagnostic: str
    value: float  # as the record holds it (an accuracy as a fraction): the hook's JSON carries it so
    threshold: float
    headline: str  # which diagnostic fired, when, value against threshold, as the tables print them
    meaning: str  # what it means for the run's headline numbers
    since: int | None = None  # the streak's first epoch, when the alert rule needed more than one

    @property
    def text(self) -> str:
        return f"{self.run_id}: {self.headline}. Walk back: {self.meaning}."


def streak(records: Sequence[Epoch], k: str) -> int:
    """Consecutive epochs, ending with the last record, on which ``k`` fired."""
    n, expect = 0, None
    for rec in reversed(records):
        if k not in rec.fired or (expect is not None and rec.epoch != expect):
            break
        n, expect = n + 1, rec.epoch - 1
    return n


def alert_epochs(records: Sequence[Epoch], th: Thresholds) -> dict[str, int]:
    """The epoch at which each walk-back diagnostic alerted under the rule (``th.persist``):
    the first epoch that completes a streak of that many consecutive fired epochs."""
    out: dict[str, int] = {}
    for i in range(len(records)):
        for k in WALK_BACK:
            if k not in out and streak(records[:i + 1], k) >= getattr(th.persist, k):
                out[k] = records[i].epoch
    return out


def pending(records: Sequence[Epoch], th: Thresholds) -> dict[str, int]:
    """Walk-back diagnostics firing on the last epoch that have not yet fired on the alert
    rule's number of consecutive epochs (``th.persist``): diagnostic → its streak so far."""
    if not records:
        return {}
    out = {}
    for k in WALK_BACK:
        if k in records[-1].fired and (n := streak(records, k)) < getattr(th.persist, k):
            out[k] = n
    return out


def live_label(records: Sequence[Epoch], th: Thresholds) -> str | None:
    """While a run trains: ``firing (d) 1/4`` when every walk-back diagnostic of its last
    epoch is still short of the alert rule (no alert yet), else None (the verdict's label
    stands). The final verdict reads the last epoch's fired set, whatever the streak."""
    v = verdict(list(records))
    waiting = pending(records, th)
    if not v.walked_back or set(v.fired) - set(waiting):
        return None
    return "firing " + " ".join(f"({k}) {n}/{getattr(th.persist, k)}" for k, n in waiting.items())


def alert_rule(th: Thresholds) -> str:
    """The alert rule in words, for reports."""
    p = th.persist
    return (f"a diagnostic alerts once it has fired on consecutive epochs: (a) {p.a}, (b) {p.b}, (d) {p.d}; "
            "the verdict reads the last epoch's fired set")


def comparison(k: str, record: Epoch, th: Thresholds) -> str:
    """What diagnostic ``k`` tested on ``record``, against its threshold, as an alert says it:
    ``growth = 300 > 50.0``, ``g_L = 1.00e-9 < 1.00e-7``; (d) in percent like the tables,
    ``accuracy 76.94% < frozen baseline 95.00%`` (the margin, when not 0, in percentage points)."""
    diag = DIAGNOSTICS[k]
    value, limit = getattr(record, diag.field), diag.threshold(th, record)
    side = ">" if diag.comparison == "above" else "<"
    if k != "d":
        return f"{diag.field} = {num(value)} {side} {num(limit)}"
    base = f"frozen baseline {pct(record.baseline_acc)}%"
    if not th.depth_margin:
        return f"accuracy {pct(value)}% {side} {base}"
    return f"accuracy {pct(value)}% {side} {pct(limit)}% ({base} {pp(th.depth_margin)} pp)"


def new_alerts(run_id: str, previous: list[Epoch], record: Epoch, th: Thresholds) -> list[Alert]:
    """Walk-back alerts raised by ``record``: diagnostics (a), (b), (d) that complete, with it,
    their first streak of ``th.persist`` consecutive fired epochs."""
    before = alert_epochs(previous, th)
    history = [*previous, record]
    alerts = []
    for k in WALK_BACK:
        need = getattr(th.persist, k)
        if k in record.fired and k not in before and streak(history, k) >= need:
            diag = DIAGNOSTICS[k]
            value, limit = getattr(record, diag.field), diag.threshold(th, record)
            since = f" (fired on every epoch since {record.epoch - need + 1})" if need > 1 else ""
            headline = f"({k}) {diag.name} fired at epoch {record.epoch}{since}: {comparison(k, record, th)}"
            alerts.append(Alert(run_id, record.epoch, k, value, limit, headline, diag.meaning,
                                record.epoch - need + 1 if need > 1 else None))
    return alerts

